"""Human-viewable summaries of a dataset: a contact sheet PNG and an mp4 with sound."""
from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from .format import Dataset, atomic_write_bytes, encode_image, ffmpeg_exe

# mask overlay colours (head, lower face, upper face), display rgb
_MASK_COLORS = np.array([[0.25, 0.25, 0.25], [1.0, 0.35, 0.1], [0.1, 0.6, 1.0]], np.float32)


def mask_overlay(image: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Background greyed out, lower face tinted orange, upper face blue."""
    img = image.astype(np.float32) / 255.0
    fg = masks[..., 3:4]
    grey = img.mean(axis=2, keepdims=True) * 0.3
    out = img * fg + grey * (1 - fg)
    for c, col in ((1, _MASK_COLORS[1]), (2, _MASK_COLORS[2])):
        m = masks[..., c:c + 1] * 0.55
        out = out * (1 - m) + col * m
    return np.clip(out * 255, 0, 255).astype(np.uint8)


def _tile(img, size):
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((size, size), Image.LANCZOS))


def _label(img, text):
    from PIL import Image, ImageDraw

    im = Image.fromarray(img)
    d = ImageDraw.Draw(im)
    d.rectangle([0, 0, 8 + 6 * len(text), 14], fill=(0, 0, 0))
    d.text((3, 2), text, fill=(255, 255, 255))
    return np.asarray(im)


def _dots(img, pts, vis, scale):
    from PIL import Image, ImageDraw

    im = Image.fromarray(img)
    d = ImageDraw.Draw(im)
    for (u, v), ok in zip(np.asarray(pts) * scale, vis):
        if ok:
            d.ellipse([u - 2, v - 2, u + 2, v + 2], outline=(0, 255, 0))
    return np.asarray(im)


def contact_sheet(ds: Dataset, path, tile: int = 256, columns: int = 7) -> Path:
    """Rows: training frames (landmarks in green), their masks, then for one held-out
    frame its novel views across yaw (and their masks) for each pitch row."""
    n = len(ds)
    scale = tile / ds.width
    rows = []
    idx = np.linspace(0, max(ds.splits["train"].max() if ds.splits["train"].size else n - 1, 0), columns).round().astype(int)
    r1, r2 = [], []
    for i in idx:
        img = _tile(ds.image(int(i)), tile)
        if ds.gt is not None and "landmarks_2d" in ds.gt:
            img = _dots(img, ds.gt["landmarks_2d"][i], ds.gt["landmarks_visible"][i], scale)
        t = f"frame {i}" + (f"  {i / ds.fps:.1f}s" if ds.fps else "")
        r1.append(_label(img, t))
        r2.append(_label(_tile(mask_overlay(ds.image(int(i)), ds.masks(int(i))), tile), "masks"))
    rows += [np.concatenate(r1, 1), np.concatenate(r2, 1)]
    nv = ds.novel
    if nv is not None and len(nv):
        f0 = int(nv.frame_index[0])
        sel = np.where(nv.frame_index == f0)[0]
        yaws, pitches = nv.extra["yaw_deg"][sel], nv.extra["pitch_deg"][sel]
        for p in np.unique(pitches)[::-1]:
            row, mrow = [], []
            for j in sel[pitches == p][np.argsort(yaws[pitches == p])][:columns]:
                img = _tile(nv.image(int(j)), tile)
                if nv.gt is not None:
                    img = _dots(img, nv.gt["landmarks_2d"][j], nv.gt["landmarks_visible"][j], scale)
                row.append(_label(img, f"frame {f0} yaw {nv.extra['yaw_deg'][j]:+.0f} pitch {p:+.0f}"))
                mrow.append(_tile(mask_overlay(nv.image(int(j)), nv.masks(int(j))), tile))
            while len(row) < columns:
                row.append(np.zeros_like(row[0]))
                mrow.append(np.zeros_like(row[0]))
            rows.append(np.concatenate(row, 1))
            if p == 0:
                rows.append(np.concatenate(mrow, 1))
    sheet = np.concatenate(rows, 0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, encode_image(sheet, "png"))
    return path


def preview_video(ds: Dataset, path, progress: bool = True) -> Path:
    """H.264 mp4 of the training sequence with its sound track (AAC)."""
    from tqdm import tqdm

    if ds.fps is None:
        raise ValueError("preview_video needs a talking dataset (with fps and audio)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".mp4")
    os.close(fd)
    cmd = [ffmpeg_exe(), "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", f"{ds.width}x{ds.height}", "-r", f"{ds.fps:g}", "-i", "-", "-i", str(ds.audio_path),
           "-map", "0:v", "-map", "1:a", "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-c:v", "libx264", "-preset", "veryfast", "-crf", "20",
           "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "128k", "-shortest", "-movflags", "+faststart", tmp]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for i in tqdm(range(len(ds)), desc="preview.mp4", unit="frame", disable=not progress, dynamic_ncols=True):
            proc.stdin.write(ds.image(i).tobytes())
        proc.stdin.close()
        err = proc.stderr.read().decode(errors="replace")
        if proc.wait() != 0:
            raise RuntimeError(f"ffmpeg failed writing {path}: {err.strip()[-400:]}")
        os.replace(tmp, path)
    except BaseException:
        proc.kill()
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
