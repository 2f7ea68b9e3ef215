"""Small file helpers shared by every part of dgtalker: atomic writes (temp file in
the same directory + rename, so a crash never leaves a half-written file) and image
encoding."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def atomic_save_npz(path: Path, **arrays) -> None:
    import io

    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def encode_image(img: np.ndarray, ext: str, quality: int = 95) -> bytes:
    """PNG (lossless, fast zlib level) or JPEG bytes of a uint8 [H, W, C] image."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    im = Image.fromarray(np.ascontiguousarray(img))
    if ext == "png":
        im.save(buf, format="PNG", compress_level=1)
    elif ext == "jpg":
        im.save(buf, format="JPEG", quality=quality, subsampling=0)
    else:
        raise ValueError(f"image format must be 'png' or 'jpg', got {ext!r}")
    return buf.getvalue()
