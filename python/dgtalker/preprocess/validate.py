"""Checking preprocessing against exact truth: a synthetic clip written as a plain mp4
(``write_video``) goes through ``preprocess``; ``compare`` measures the recovered head
rotations and masks against the generator's. Used by the tests and by
``benchmarks/preprocess_synthetic.py``."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np


def write_video(dataset, path, crf: int = 16) -> Path:
    """A dataset's frames and sound as an h264 + aac mp4 (what a user would film)."""
    import os
    import tempfile

    from ..data.format import ffmpeg_exe

    path = Path(path)
    root = Path(dataset.root)
    ext = dataset.meta.get("image_ext", "png")
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmpdir:
        tmp = Path(tmpdir) / "video.mp4"
        cmd = [ffmpeg_exe(), "-v", "error", "-y", "-framerate", str(dataset.fps), "-i", str(root / "frames" / f"%06d.{ext}"),
               "-i", str(root / dataset.meta["audio"]["path"]), "-c:v", "libx264", "-crf", str(crf),
               "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "128k", "-shortest", "-f", "mp4", str(tmp)]
        subprocess.run(cmd, check=True, capture_output=True)
        os.replace(tmp, path)
    return path


def _iou(a, b):
    a, b = a > 0.5, b > 0.5
    return float((a & b).sum() / max((a | b).sum(), 1))


def rotation_errors(w2c_est: np.ndarray, w2c_true: np.ndarray) -> np.ndarray:
    """Degrees between the recovered and the true head rotation of each frame, both
    relative to the first frame (so the registration's choice of axes cancels)."""
    Re, Rt = w2c_est[:, :3, :3], w2c_true[:, :3, :3]
    rel_e = Re @ Re[0].T
    rel_t = Rt @ Rt[0].T
    D = np.einsum("fji,fjk->fik", rel_e, rel_t)
    cos = (np.trace(D, axis1=1, axis2=2) - 1) / 2
    return np.degrees(np.arccos(np.clip(cos, -1, 1)))


def distance_errors(w2c: np.ndarray, truth_w2c: np.ndarray) -> np.ndarray:
    """Per frame, how far the head's distance from the camera, over its mean in the
    clip, is from the truth's, in percent (scale-free: the tracked head and camera have
    their own units of size)."""
    def relative(v):
        d = np.linalg.norm(np.linalg.inv(v)[:, :3, 3], axis=1)  # the camera centre in the head frame
        return d / d.mean()
    return np.abs(relative(w2c) - relative(truth_w2c)) * 100


def compare(truth, pre, frames=None) -> dict:
    """Rotation errors over all frames and mask IoUs (threshold 0.5) on ``frames`` of the
    preprocessed dataset ``pre`` against the synthetic ``truth`` (same length and fps).
    The truth masks are cropped like the video was."""
    from .pipeline import _crop

    n = min(len(truth), len(pre))
    err = rotation_errors(pre.w2c[:n], truth.w2c[:n])
    x0, y0, side = pre.meta["source"]["tracking"]["crop"]
    frames = range(0, n, max(1, n // 10)) if frames is None else frames
    ious = {"foreground": [], "head": [], "lower_face": [], "upper_face": []}
    for i in frames:
        t = _crop(np.round(truth.masks(i) * 255).astype(np.uint8), x0, y0, side, pre.width).astype(np.float32) / 255
        p = pre.masks(i)
        for c, k in ((3, "foreground"), (0, "head"), (1, "lower_face"), (2, "upper_face")):
            ious[k].append(_iou(t[..., c], p[..., c]))
    dist = distance_errors(pre.w2c[:n], truth.w2c[:n])
    return {"rotation_deg": {"median": float(np.median(err)), "p95": float(np.percentile(err, 95)),
                             "max": float(err.max())},
            "distance_pct": {"median": float(np.median(dist)), "p95": float(np.percentile(dist, 95)),
                             "max": float(dist.max())},
            "true_rotation_range_deg": float(rotation_errors(truth.w2c[:n], truth.w2c[:n][:1].repeat(n, 0)).max()),
            "iou": {k: float(np.mean(v)) for k, v in ious.items()}, "frames": n}
