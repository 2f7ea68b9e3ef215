"""Pack a talking clip small enough to send to a GPU machine, and unpack it there.

    python benchmarks/clip_pack.py pack   data/id007 .pack/id007     # ~17 kB per 512^2 frame
    python benchmarks/clip_pack.py unpack .pack/id007 /tmp/id007     # a normal dataset again

``pack`` keeps meta.json, cameras, audio, splits and ground truth as they are, stores
frames as WebP (quality 85, ~41 dB PSNR to the original) and masks quantized to 16
levels (lossless PNG), and drops the novel views and previews (evaluation runs
on the original dataset). ``unpack`` turns it back into a dataset directory
(PNG frames and masks) that ``dgtalker.data.load`` reads. For training runs only:
evaluate against the original frames.
"""
from __future__ import annotations

import argparse
import io
import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

KEEP = ("cameras.npz", "audio.wav", "splits.json", "gt.npz")


def _pack_one(src: Path, dst: Path, i: int, ext: str) -> None:
    name = f"{i:06d}"
    Image.open(src / "frames" / f"{name}.{ext}").convert("RGB").save(dst / "frames" / f"{name}.webp", quality=85,
                                                                        method=4)
    m = np.asarray(Image.open(src / "masks" / f"{name}.png"))
    q = (np.round(m / 17.0) * 17).astype(np.uint8)
    Image.fromarray(q).save(dst / "masks" / f"{name}.png", optimize=True)


def pack(src: Path, dst: Path) -> None:
    meta = json.loads((src / "meta.json").read_text())
    if meta.get("frames", "frames") != "frames":
        raise SystemExit("pack reads datasets with a frames/ directory")
    (dst / "frames").mkdir(parents=True, exist_ok=True)
    (dst / "masks").mkdir(exist_ok=True)
    for f in KEEP:
        if (src / f).exists():
            shutil.copy2(src / f, dst / f)
    meta.pop("novel", None)
    (dst / "meta.json").write_text(json.dumps(meta, indent=1))
    ext = meta.get("image_ext", "png")
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: _pack_one(src, dst, i, ext), range(meta["num_frames"])))
    size = sum(p.stat().st_size for p in dst.rglob("*") if p.is_file())
    print(f"packed {meta['num_frames']} frames into {dst}: {size / 2**20:.1f} MiB")


def _unpack_one(src: Path, dst: Path, i: int) -> None:
    name = f"{i:06d}"
    im = Image.open(src / "frames" / f"{name}.webp").convert("RGB")
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=1)
    (dst / "frames" / f"{name}.png").write_bytes(buf.getvalue())
    shutil.copy2(src / "masks" / f"{name}.png", dst / "masks" / f"{name}.png")


def unpack(src: Path, dst: Path) -> None:
    meta = json.loads((src / "meta.json").read_text())
    (dst / "frames").mkdir(parents=True, exist_ok=True)
    (dst / "masks").mkdir(exist_ok=True)
    for f in KEEP:
        if (src / f).exists():
            shutil.copy2(src / f, dst / f)
    meta["image_ext"] = "png"
    (dst / "meta.json").write_text(json.dumps(meta, indent=1))
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: _unpack_one(src, dst, i), range(meta["num_frames"])))
    print(f"unpacked {meta['num_frames']} frames into {dst}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=("pack", "unpack"))
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    a = ap.parse_args()
    (pack if a.action == "pack" else unpack)(a.src, a.dst)


if __name__ == "__main__":
    main()
