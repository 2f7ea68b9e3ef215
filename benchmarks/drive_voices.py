"""Lip sync of a talker driven by voices it never heard, against its own clip.

For each voice (other speakers, another language, synthetic speech), the talker renders
the speech from its own framing, the face mesh measures the render's mouth opening per
frame (inner-lip gap over the outer eye-corner distance: the unit ``dgtalker
preprocess`` tracks and ``dgtalker.lipsync`` predicts), and the table gives

- ``motion ratio``: the spread of that opening over the spread of the person's own
  tracked opening in the training clip (``gt.npz`` ``mouth_opening``; 1: moves as much as
  the person does, 0.17: barely moves);
- ``corr with lipsync``: the correlation (and best lag) of the render's opening with the
  speaker-independent front end's opening for the same speech, the nearest thing to a
  truth that a voice without video has;
- ``mean opening`` of render and clip, and how often the face mesh found the face.

Also the talker's own held-out audio, as the row to compare with.

    python benchmarks/drive_voices.py TALKER --data DATA VOICE [VOICE ...] [--size 256] [--json out.json]

A VOICE is an audio file, or ``tts:LANG:TEXT`` (espeak-ng speaks TEXT in voice LANG).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch


def tts(spec: str, tmp: Path) -> Path:
    _, lang, text = spec.split(":", 2)
    out = tmp / f"tts_{lang}.wav"
    subprocess.run(["espeak-ng", "-v", lang, "-w", str(out), text], check=True)
    return out


def render_openings(talker, samples, rate, size, device, detector):
    from dgtalker.data.face_mesh import mouth_opening

    video = talker.render((samples, rate), width=size, height=size, device=device, blink=None)
    out = []
    for f in video.frames.numpy():
        lm = detector.detect(f)
        out.append(float(mouth_opening(lm)) if lm is not None else float("nan"))
    return np.asarray(out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("talker", type=Path)
    ap.add_argument("voices", nargs="+", help="audio files or tts:LANG:TEXT")
    ap.add_argument("--data", type=Path, required=True, help="the talker's training clip (its tracked mouth)")
    ap.add_argument("--size", type=int, default=256, help="render size in pixels (default 256)")
    ap.add_argument("--seconds", type=float, default=20.0, help="use at most this much of each voice")
    ap.add_argument("--json", type=Path, help="write the table as JSON here")
    a = ap.parse_args(argv)

    import dgtalker
    from dgtalker import audio as A
    from dgtalker.data import load
    from dgtalker.eval.evaluate import lip_sync
    from dgtalker.eval.landmarks import FaceLandmarks
    from dgtalker.eval.metrics import best_lag, pearson
    from dgtalker.train.clip import mouth_measures

    device = "cuda" if torch.cuda.is_available() else "cpu"
    talker = dgtalker.load_talker(a.talker, device=device)
    ds = load(a.data)
    own = mouth_measures(ds)
    if own is None:
        raise SystemExit(f"{a.data} has no tracked mouth (gt.npz mouth_opening or mouth landmarks)")
    train = ds.splits["train"]
    own_std = float(np.nanstd(own[train, 0]))
    own_mean = float(np.nanmean(own[train, 0]))
    detector = FaceLandmarks()
    rows = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        sources = []
        held = ds.splits["heldout"]
        if held.size:
            samples, rate = ds.audio
            s0, s1 = int(held[0] / ds.fps * rate), int((held[-1] + 1) / ds.fps * rate)
            sources.append(("own held-out audio", (np.asarray(samples)[s0:s1], int(rate))))
        for v in a.voices:
            sources.append((v if not v.startswith("tts:") else v[:40], tts(v, tmp) if v.startswith("tts:") else Path(v)))
        for name, src in sources:
            samples, rate = A.speech(src)
            samples = samples[: int(a.seconds * rate)]
            opening = render_openings(talker, samples, rate, a.size, device, detector)
            ls = dgtalker.lipsync((samples, rate), fps=25.0).opening
            lag, best = best_lag(ls, opening)
            row = {"voice": name, "seconds": round(len(samples) / rate, 2),
                   "motion_ratio": float(np.nanstd(opening)) / own_std if own_std > 0 else float("nan"),
                   "corr_with_lipsync": pearson(ls, opening), "lag_vs_lipsync": int(lag), "best_corr": float(best),
                   "mean_opening_render": float(np.nanmean(opening)), "mean_opening_clip": own_mean,
                   "face_found": float(np.isfinite(opening).mean())}
            if name == "own held-out audio":
                tracked = own[held, 0][: len(opening)]
                row.update({f"vs_tracked_{k}": v for k, v in lip_sync(opening[: len(tracked)], tracked).items()})
            rows.append(row)
            print(json.dumps(row), flush=True)
    detector.close()
    print("\n| voice | s | motion ratio | corr with lipsync (lag) | mean opening render / clip | face found |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['voice']} | {r['seconds']} | {r['motion_ratio']:.2f} | {r['corr_with_lipsync']:.2f} "
              f"({r['lag_vs_lipsync']:+d}: {r['best_corr']:.2f}) | {r['mean_opening_render']:.3f} / "
              f"{r['mean_opening_clip']:.3f} | {100 * r['face_found']:.0f}% |")
    if a.json:
        from dgtalker.io import atomic_write_json

        atomic_write_json(a.json, {"talker": str(a.talker), "data": str(a.data), "size": a.size, "rows": rows})


if __name__ == "__main__":
    main()
