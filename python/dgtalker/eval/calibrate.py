"""A trained talker's mouth made to move, in its own renders, as much as the person's mouth
moves in the clip (``dgtalker calibrate-lips``, ``calibrate_cli``).

Training keeps the opening coefficient's motion at the person's over each passage
(``TalkerConfig.lip_motion``, ``Talker.steady_lips``), but the rendered mouth, measured
with the face mesh the way ``dgtalker eval`` measures the truth, moves less than the
coefficient says: on a real clip 0.85 as much on the very frames it trained on
(docs/benchmarks.md, runs X). Training cannot measure that (it has no face mesh); this
does, after training, on training frames only:

1. renders ``frames`` training frames spread over the clip from their audio, as
   ``dgtalker eval --training-frames`` does, and measures the inner-lip gap of render and
   truth (mediapipe's face mesh, points 13/14 over 33/263);
2. scales ``lip_motion`` by the truth's spread over the render's (within
   ``1 / MAX_GAIN .. MAX_GAIN``), and records what it measured in the talker's source
   (``motion_calibration``; a second run measures again and multiplies).

    dgtalker calibrate-lips --data data/me --talker me.safetensors [--frames 60]
"""
from __future__ import annotations

import dataclasses

import numpy as np

MAX_GAIN = 1.5     # the most one calibration widens (or narrows) the motion by
MIN_FRAMES = 16    # frames where the face mesh found both mouths, for a spread to mean something


def motion_gain(render: np.ndarray, truth: np.ndarray) -> dict:
    """What ``calibrate_motion`` reads from per-frame mouth openings (NaN where the face mesh
    found no face): the render's spread over the truth's (``motion_ratio``) and the gain that
    undoes it, within ``1 / MAX_GAIN .. MAX_GAIN``. ValueError where too few frames have both."""
    render, truth = np.asarray(render, np.float64), np.asarray(truth, np.float64)
    ok = np.isfinite(render) & np.isfinite(truth)
    if int(ok.sum()) < MIN_FRAMES:
        raise ValueError(f"the face mesh found the mouth in render and truth on {int(ok.sum())} of {len(ok)} frames; "
                         f"at least {MIN_FRAMES} are needed (more --frames, or a talker whose renders show a face)")
    sd_t, sd_r = float(truth[ok].std()), float(render[ok].std())
    if sd_t <= 1e-9:
        raise ValueError("the tracked mouth does not move on these frames: there is no motion to match")
    ratio = sd_r / sd_t
    gain = float(np.clip(1.0 / max(ratio, 1e-9), 1.0 / MAX_GAIN, MAX_GAIN))
    return {"frames": int(ok.sum()), "motion_ratio": round(ratio, 4), "gain": round(gain, 4),
            "corr": round(float(np.corrcoef(render[ok], truth[ok])[0, 1]), 4)}


def calibrate_motion(talker, dataset, *, frames: int = 60, size: int | None = None, device=None,
                     progress: bool = False) -> dict:
    """Measures (``motion_gain``) the rendered mouth's motion on ``frames`` training frames of
    ``dataset`` (the talker's training clip) and scales ``talker.config.lip_motion`` by the
    gain; returns what it measured plus ``lip_motion`` before and after. ValueError for a
    talker without steady mouth motion, a clip without training frames, or too few faces;
    RuntimeError without mediapipe."""
    from . import landmarks as L
    from .evaluate import evaluate, spread_frames

    cfg = talker.config
    if not (cfg.motion_window > 0 and cfg.lip_motion > 0):
        raise ValueError("this talker keeps no steady mouth motion (TalkerConfig.lip_motion: trained without a lip "
                         "target or motion window, or before them): there is nothing to calibrate")
    if isinstance(frames, bool) or not isinstance(frames, (int, np.integer)) or frames < MIN_FRAMES:
        raise ValueError(f"frames must be a whole number >= {MIN_FRAMES}, got {frames!r}")
    train = dataset.splits["train"]
    if train.size == 0:
        raise ValueError(f"{dataset.root} has no training frames (splits.json): calibrate on the talker's own "
                         "training clip")
    if not L.available():
        raise RuntimeError('calibrating the lips needs mediapipe\'s face mesh: pip install ".[eval]"')
    report = evaluate(talker, dataset, frames=spread_frames(train, frames), size=size, novel=False, device=device,
                      progress=progress, landmarks=True, baselines=False)
    rows = report["per_frame"]
    out = motion_gain([r["opening_render"] for r in rows], [r["opening_truth"] for r in rows])
    before = cfg.lip_motion
    after = round(before * out["gain"], 4)
    talker.config = dataclasses.replace(cfg, lip_motion=min(after, 100.0))
    return {**out, "lip_motion_before": before, "lip_motion": talker.config.lip_motion}
