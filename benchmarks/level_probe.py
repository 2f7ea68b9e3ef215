"""Does a talker's mouth follow how loud a passage is spoken rather than what is said?
(no rendering, no retraining; CPU is fine)

For a trained talker and its clip: the level of the speech on the training and the
held-out frames (the share of frames within 35 dB of the clip's loudest, the front
end's speech rule, and their mean level), and the talker's predicted mouth opening
(the first lip coefficient, calibrated, as rendered) against the tracked one on the
held-out frames:

- as trained;
- with the held-out audio made louder by each of ``--raise`` dB (a 0.5 s ramp into it),
  the rest of the clip unchanged: a mouth that opens wider for the same words spoken
  louder leans on the level;
- with each ``--windows`` level window (``TalkerConfig.level_window``) applied at
  inference only: every passage read at the clip's speech level.

    python benchmarks/level_probe.py TALKER --data DATA [--raise 3,6,12] [--windows 2,4,8]

Prints one JSON line per case: mean and spread of the prediction and of the truth
(standardised unit of the lip target), the spread ratio and Pearson r, and the same r
and spread on the training frames. Keep the output out of the repository when DATA is
footage the project may not ship.
"""
from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np
import torch


def speech_levels(mel: np.ndarray, fps: float, frames: np.ndarray) -> dict:
    """Share of ``frames`` whose mel frame is speech (within 35 dB of the loudest) and the
    mean level (dB) of those, of a log-mel ``[M, 80]`` (log10 power)."""
    from dgtalker.audio.frontend import ACTIVE_RANGE, frame_positions

    e = mel.mean(1)
    at = e[np.clip(np.round(frame_positions(int(frames.max()) + 1, fps)[frames]).astype(np.int64), 0, len(e) - 1)]
    speech = at > e.max() - ACTIVE_RANGE
    return {"speech_share": round(float(speech.mean()), 3),
            "speech_level_db": round(float(10 * at[speech].mean()), 2) if speech.any() else None}


def opening_figures(pred: np.ndarray, truth: np.ndarray) -> dict:
    ok = np.isfinite(truth)
    p, t = pred[ok], truth[ok]
    return {"pred_mean": round(float(p.mean()), 3), "pred_std": round(float(p.std()), 3),
            "truth_mean": round(float(t.mean()), 3), "truth_std": round(float(t.std()), 3),
            "spread_ratio": round(float(p.std() / t.std()), 3), "r": round(float(np.corrcoef(p, t)[0, 1]), 3)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("talker")
    p.add_argument("--data", required=True, help="the talker's clip (dgtalker preprocess)")
    p.add_argument("--raise", dest="raise_db", default="3,6,12", help="dB added to the held-out audio, comma-separated")
    p.add_argument("--windows", default="2,4,8", help="level windows (seconds) applied at inference, comma-separated")
    a = p.parse_args(argv)

    from dgtalker import audio as A
    from dgtalker.data import load
    from dgtalker.talker import load_talker
    from dgtalker.train.clip import mouth_targets

    ds = load(a.data)
    train, held = np.asarray(ds.splits["train"]), np.asarray(ds.splits["heldout"])
    truth = mouth_targets(ds, train)[:, 0]
    talker = load_talker(a.talker, device="cpu")
    samples, rate = ds.audio
    x = A.resample(A.to_mono(samples), int(rate), A.SAMPLE_RATE).astype(np.float32)
    mel0 = A.log_mel(x)
    print(json.dumps({"case": "levels", "train": speech_levels(mel0, ds.fps, train),
                      "heldout": speech_levels(mel0, ds.fps, held)}))

    def opening(t, mel):
        w = t.clip_windows(mel, len(ds), float(ds.fps))
        with torch.no_grad():
            _, cl = t.coefficients(w)
        return cl[:, 0].numpy()

    def report(case, pred):
        print(json.dumps({"case": case, "heldout": opening_figures(pred[held], truth[held]),
                          "train": opening_figures(pred[train], truth[train])}))

    report(f"as trained (level window {talker.config.level_window:g} s)", opening(talker, mel0))
    start = int(held[0] / ds.fps * A.SAMPLE_RATE)
    ramp = np.clip((np.arange(len(x)) - start + A.SAMPLE_RATE // 2) / (A.SAMPLE_RATE // 2), 0, 1)
    for db in (float(v) for v in a.raise_db.split(",") if v):
        louder = x * (1 + (10 ** (db / 20) - 1) * ramp).astype(np.float32)
        report(f"held-out audio +{db:g} dB", opening(talker, A.log_mel(louder)))
    if talker.config.frontend is not None:
        for s in (float(v) for v in a.windows.split(",") if v):
            talker.config = dataclasses.replace(talker.config, level_window=s)
            report(f"level window {s:g} s at inference", opening(talker, mel0))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
