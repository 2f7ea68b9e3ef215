"""Pack a talking clip small enough to send to a GPU machine, and unpack it there.

    python benchmarks/clip_pack.py pack   data/id007 .pack/id007     # ~17 kB per 512^2 frame
    python benchmarks/clip_pack.py unpack .pack/id007 /tmp/id007     # a normal dataset again

``pack`` keeps meta.json, cameras, audio, splits and ground truth as they are, stores
frames as WebP (quality 85, ~41 dB PSNR to the original; or, with ``--video``, as one
h264 mp4 at CRF 17, much smaller for real footage, decoded with OpenCV on unpacking,
with the masks as a second mp4 at half resolution and the audio as FLAC: a real and a
synthetic pack then travel together) and masks quantized to 16 levels (lossless PNG), and
drops the novel views and previews (evaluation runs on the original dataset). ``unpack``
turns it back into a dataset directory (PNG frames and masks) that ``dgtalker.data.load``
reads. For training runs only: evaluate against the original frames.
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


def _pack_video(src: Path, dst: Path, meta: dict) -> None:
    import subprocess

    from dgtalker.data.format import ffmpeg_exe

    ext = meta.get("image_ext", "png")
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-framerate", "25", "-i", str(src / "frames" / f"%06d.{ext}"),
                    "-c:v", "libx264", "-crf", "17", "-preset", "slow", "-pix_fmt", "yuv444p",
                    str(dst / "frames.mp4")], check=True)


def _mask_mosaic(m: np.ndarray) -> np.ndarray:
    """A mask ``[H, W, 4]`` (head, lower face, upper face, foreground) at half resolution,
    its four channels tiled 2x2 in one grey image ``[H, W]``."""
    h, w = m.shape[0] // 2, m.shape[1] // 2
    half = np.asarray(Image.fromarray(m, "RGBA").resize((w, h), Image.BOX))
    return np.block([[half[..., 0], half[..., 1]], [half[..., 2], half[..., 3]]])


def _mask_from_mosaic(grey: np.ndarray, width: int, height: int) -> Image.Image:
    h, w = grey.shape[0] // 2, grey.shape[1] // 2
    q = (np.round(grey.astype(np.float32) / 17.0) * 17).clip(0, 255).astype(np.uint8)
    half = np.stack([q[:h, :w], q[:h, w:], q[h:, :w], q[h:, w:]], -1)
    return Image.fromarray(half, "RGBA").resize((width, height), Image.BILINEAR)


def _pack_video_masks(src: Path, dst: Path, meta: dict) -> None:
    """The masks as one near-lossless h264 mp4: each frame's four channels at half
    resolution, tiled 2x2 in the grey level (a mask is smooth: ~7x smaller than PNGs)."""
    import subprocess

    from dgtalker.data.format import ffmpeg_exe

    W, H = meta["width"], meta["height"]
    proc = subprocess.Popen([ffmpeg_exe(), "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "gray",
                             "-s", f"{W // 2 * 2}x{H // 2 * 2}", "-framerate", "25", "-i", "-", "-c:v", "libx264",
                             "-crf", "8", "-preset", "slow", "-pix_fmt", "yuv444p", str(dst / "masks.mp4")],
                            stdin=subprocess.PIPE)
    for i in range(meta["num_frames"]):
        m = np.asarray(Image.open(src / "masks" / f"{i:06d}.png").convert("RGBA"))
        proc.stdin.write(np.ascontiguousarray(_mask_mosaic(m)).tobytes())
    proc.stdin.close()
    if proc.wait() != 0:
        raise SystemExit("ffmpeg could not write masks.mp4")


def _pack_flac(src: Path, dst: Path) -> None:
    import soundfile

    audio, rate = soundfile.read(src / "audio.wav", dtype="int16")
    soundfile.write(dst / "audio.flac", audio, rate, format="FLAC")


def pack(src: Path, dst: Path, video: bool = False) -> None:
    meta = json.loads((src / "meta.json").read_text())
    if meta.get("frames", "frames") != "frames":
        raise SystemExit("pack reads datasets with a frames/ directory")
    (dst / "frames").mkdir(parents=True, exist_ok=True)
    (dst / "masks").mkdir(exist_ok=True)
    for f in KEEP:
        if (src / f).exists() and not (video and f == "audio.wav"):
            shutil.copy2(src / f, dst / f)
    meta.pop("novel", None)
    (dst / "meta.json").write_text(json.dumps(meta, indent=1))
    ext = meta.get("image_ext", "png")
    if video:
        _pack_video(src, dst, meta)
        _pack_video_masks(src, dst, meta)
        _pack_flac(src, dst)
        (dst / "masks").rmdir()
    else:
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
    if (src / "audio.flac").exists():
        import soundfile

        audio, rate = soundfile.read(src / "audio.flac", dtype="int16")
        soundfile.write(dst / "audio.wav", audio, rate, subtype="PCM_16")
    if (src / "frames.mp4").exists():
        import cv2

        cap = cv2.VideoCapture(str(src / "frames.mp4"))
        masks = cv2.VideoCapture(str(src / "masks.mp4")) if (src / "masks.mp4").exists() else None
        for i in range(meta["num_frames"]):
            ok, bgr = cap.read()
            if not ok:
                raise SystemExit(f"frames.mp4 ends after {i} frames")
            cv2.imwrite(str(dst / "frames" / f"{i:06d}.png"), bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
            if masks is not None:
                ok, mb = masks.read()
                if not ok:
                    raise SystemExit(f"masks.mp4 ends after {i} frames")
                m = _mask_from_mosaic(cv2.cvtColor(mb, cv2.COLOR_BGR2GRAY), meta["width"], meta["height"])
            else:  # packs made before the masks travelled as video
                m = Image.open(src / "masks" / f"{i:06d}.png").resize((meta["width"], meta["height"]), Image.BILINEAR)
            m.save(dst / "masks" / f"{i:06d}.png", compress_level=1)
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
