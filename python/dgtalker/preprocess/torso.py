"""The torso's own motion in a clip: where the neck and shoulders sit in each frame.

The head's pose comes from the face mesh; the shoulders move on their own (a shrug, a
lean, the breath), and a talker whose torso stays at the clip's mean pose blurs them in
training and misplaces them on every frame that differs (on a real clip's held-out
frames, shifting the rendered torso by the best 2 to 9 pixels raised its PSNR by 6 dB).
``track_torso`` measures, per frame, the image shift ``(dx, dy)`` of the torso region
(foreground outside the head) against the clip's median torso: normalised
cross-correlation of band-passed images, the frame's torso against the reference's,
found with FFTs and refined to a tenth of a pixel. Zero is the clip's median position,
so a talker whose torso rests at the clip's mean pose needs no offset of its own.
"""
from __future__ import annotations

import numpy as np

MAX_SHIFT = 0.08      # the largest shift searched, as a share of the frame's width
WORK_SIZE = 256       # frames are measured at this size; shifts come back in the clip's pixels
MIN_TORSO = 0.02      # a frame whose torso covers less of the image gets no shift (0)


def _band_pass(img: np.ndarray, sigma: float) -> np.ndarray:
    """Edges and texture, without the shading that lighting changes."""
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(img, 1.0) - gaussian_filter(img, sigma)


def _frame(dataset, i: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(grey image, torso weight) of frame i at size x size."""
    import torch
    import torch.nn.functional as F

    img = torch.from_numpy(np.ascontiguousarray(dataset.image(i))).float().mean(-1)[None, None] / 255
    m = torch.from_numpy(np.ascontiguousarray(dataset.masks(i))).float()
    torso = (m[..., 3] - m[..., 0]).clamp(0, 1)[None, None]
    grey = F.interpolate(img, size=(size, size), mode="area")[0, 0].numpy()
    weight = F.interpolate(torso, size=(size, size), mode="area")[0, 0].numpy()
    return grey, weight


def _shift(ref_e: np.ndarray, ref_w: np.ndarray, e: np.ndarray, w: np.ndarray, reach: int) -> np.ndarray | None:
    """(dx, dy) with frame(x) ~ reference(x - d): the peak of the normalised cross-correlation
    of the weighted band-passed images within +-reach pixels, refined by a parabola."""
    n = ref_e.shape[0] + 2 * reach
    a = np.zeros((n, n), np.float64)
    b = np.zeros((n, n), np.float64)
    a[:ref_e.shape[0], :ref_e.shape[1]] = ref_e * ref_w
    b[:e.shape[0], :e.shape[1]] = e * w
    fa, fb = np.fft.rfft2(a), np.fft.rfft2(b)
    corr = np.fft.irfft2(np.conj(fa) * fb, s=(n, n))            # corr[d] = sum_x a(x) b(x + d)
    energy = np.fft.irfft2(np.conj(np.fft.rfft2((ref_w > 0).astype(np.float64), s=(n, n))) * np.fft.rfft2(b * b),
                           s=(n, n))
    d = np.r_[0:reach + 1, -reach:0]                            # the shifts searched, per axis
    corr = corr[np.ix_(d % n, d % n)]
    energy = energy[np.ix_(d % n, d % n)]
    score = corr / np.sqrt(np.maximum(energy, 1e-12) * max(float((a * a).sum()), 1e-12))
    iy, ix = np.unravel_index(int(np.argmax(score)), score.shape)

    def refine(c0, cm, cp):
        den = cm - 2 * c0 + cp
        return 0.0 if den >= 0 else float(np.clip(0.5 * (cm - cp) / den, -0.5, 0.5))

    ny = len(d)
    fy = refine(score[iy, ix], score[(iy - 1) % ny, ix], score[(iy + 1) % ny, ix])
    fx = refine(score[iy, ix], score[iy, (ix - 1) % ny], score[iy, (ix + 1) % ny])
    dy, dx = d[iy] + fy, d[ix] + fx
    if abs(d[iy]) == reach or abs(d[ix]) == reach:  # at the search's edge: no trustworthy peak
        return None
    return np.array([dx, dy])


def _warp(img: np.ndarray, d: np.ndarray) -> np.ndarray:
    """img moved by -d (so that a frame shifted by d lines up with the reference)."""
    from scipy.ndimage import shift

    return shift(img, (-d[1], -d[0]), order=1, mode="nearest")


def track_torso(dataset, *, size: int = WORK_SIZE, progress: bool = True, reference_frames: int = 120) -> np.ndarray:
    """Per-frame torso shift ``[N, 2]`` (dx, dy) in the clip's pixels (see the module doc);
    0 for a frame whose torso is too small to measure or whose peak lies at the search's edge."""
    from tqdm import tqdm

    N = len(dataset)
    reach = max(2, int(round(MAX_SHIFT * size)))
    sigma = size / 64
    pick = [int(i) for i in np.linspace(0, N - 1, min(reference_frames, N)).round()]
    frames = {i: _frame(dataset, i, size) for i in pick}

    def reference(shifts):  # the median torso of the sample, each frame moved back by its shift
        grey = np.median([_warp(frames[i][0], s) for i, s in zip(pick, shifts)], 0)
        weight = np.median([_warp(frames[i][1], s) for i, s in zip(pick, shifts)], 0)
        return _band_pass(grey, sigma), weight

    def measure(ref, g, w):
        return _shift(*ref, _band_pass(g, sigma), w, reach) if w.mean() >= MIN_TORSO else None

    # a first reference of the unaligned sample; the sample aligned to it, centred on its
    # median (so the search reaches either side), makes the reference every frame is measured on
    first = reference(np.zeros((len(pick), 2)))
    shifts = np.array([np.zeros(2) if (s := measure(first, *frames[i])) is None else s for i in pick])
    ref = reference(shifts - np.median(shifts, 0))
    out = np.zeros((N, 2))
    found = np.zeros(N, bool)
    for i in tqdm(range(N), desc="torso", unit="frame", disable=not progress):
        s = measure(ref, *(frames[i] if i in frames else _frame(dataset, i, size)))
        if s is not None:
            out[i], found[i] = s, True
    if found.any():
        out[found] -= np.median(out[found], 0)
    return (out * [dataset.width / size, dataset.height / size]).astype(np.float32)


def add_torso_track(root, *, progress: bool = True) -> np.ndarray:
    """Measures the torso track of the dataset at ``root`` and stores it in its ``gt.npz``
    as ``torso_shift [N, 2]`` (replacing an earlier one); returns it. Runs at the end of
    ``dgtalker preprocess``, and on datasets written before the track existed
    (``dgtalker preprocess --update-torso DIR``)."""
    from pathlib import Path

    from ..data import load
    from ..io import atomic_save_npz

    root = Path(root)
    dataset = load(root)
    if dataset.kind != "talking":
        raise ValueError(f"{root}: the torso track is for talking clips, this dataset's kind is {dataset.kind!r}")
    shift = track_torso(dataset, progress=progress)
    gt = dict(dataset.gt or {})
    gt["torso_shift"] = shift
    atomic_save_npz(root / "gt.npz", **gt)
    return shift
