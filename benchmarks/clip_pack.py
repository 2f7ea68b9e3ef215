"""Pack a talking clip small enough to send to a GPU machine, and unpack it there.

    python benchmarks/clip_pack.py pack   data/id007 .pack/id007     # ~17 kB per 512^2 frame
    python benchmarks/clip_pack.py unpack .pack/id007 /tmp/id007     # a normal dataset again

``pack`` keeps meta.json, cameras, audio, splits and ground truth as they are, stores
frames as WebP (quality 85, ~41 dB PSNR to the original; or, with ``--video``, as one
h264 mp4 at CRF 17, much smaller for real footage, decoded with OpenCV on unpacking,
with the masks at half resolution) and masks quantized to 16 levels (lossless PNG), and drops the novel views and previews (evaluation runs
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


def _pack_one(src: Path, dst: Path, i: int, ext: str, frame: bool = True) -> None:
    name = f"{i:06d}"
    if frame:
        Image.open(src / "frames" / f"{name}.{ext}").convert("RGB").save(dst / "frames" / f"{name}.webp", quality=85,
                                                                            method=4)
    m = Image.open(src / "masks" / f"{name}.png")
    if not frame:  # --video: masks at half resolution too (upsampled again on unpacking)
        m = m.resize((m.width // 2, m.height // 2), Image.BOX)
    m = np.asarray(m)
    q = (np.round(m / 17.0) * 17).astype(np.uint8)
    Image.fromarray(q).save(dst / "masks" / f"{name}.png", optimize=True)


def _pack_video(src: Path, dst: Path, meta: dict) -> None:
    import subprocess

    from dgtalker.data.format import ffmpeg_exe

    ext = meta.get("image_ext", "png")
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-framerate", "25", "-i", str(src / "frames" / f"%06d.{ext}"),
                    "-c:v", "libx264", "-crf", "17", "-preset", "slow", "-pix_fmt", "yuv444p",
                    str(dst / "frames.mp4")], check=True)


def pack(src: Path, dst: Path, video: bool = False) -> None:
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
    if video:
        _pack_video(src, dst, meta)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: _pack_one(src, dst, i, ext, not video), range(meta["num_frames"])))
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
    if (src / "frames.mp4").exists():
        import cv2

        cap = cv2.VideoCapture(str(src / "frames.mp4"))
        for i in range(meta["num_frames"]):
            ok, bgr = cap.read()
            if not ok:
                raise SystemExit(f"frames.mp4 ends after {i} frames")
            cv2.imwrite(str(dst / "frames" / f"{i:06d}.png"), bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
            m = Image.open(src / "masks" / f"{i:06d}.png")
            m.resize((meta["width"], meta["height"]), Image.BILINEAR).save(dst / "masks" / f"{i:06d}.png",
                                                                           compress_level=1)
    else:
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda i: _unpack_one(src, dst, i), range(meta["num_frames"])))
    print(f"unpacked {meta['num_frames']} frames into {dst}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=("pack", "unpack"))
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    ap.add_argument("--video", action="store_true", help="pack: frames as one mp4 (real footage)")
    a = ap.parse_args()
    pack(a.src, a.dst, a.video) if a.action == "pack" else unpack(a.src, a.dst)


if __name__ == "__main__":
    main()
