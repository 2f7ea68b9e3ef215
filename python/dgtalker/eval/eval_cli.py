"""``dgtalker eval``: a talker measured against a clip's ground truth, as a report.

    dgtalker eval --data data/id007 [--talker T] [--all-frames] [--out report_dir]

Checks every argument, runs ``dgtalker.eval.evaluate`` and writes the report
(``dgtalker.eval.report``: report.json, report.md, sheet.png, mouth.png) to ``--out``.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from ..cli import positive_int

EPILOG = """\
settings (docs/benchmarks.md):
  self-driven                 dgtalker eval --data CLIP --talker T             (held-out frames)
  3D-aware self-driven        the same: a synthetic clip's novel/ views are evaluated too
  audio generalization        dgtalker synth --identity I --audio OTHER.wav --out NEW;
                              dgtalker eval --data NEW --talker T --all-frames
"""


def add_arguments(p) -> None:
    import argparse

    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    p.add_argument("--data", required=True, help="a talking-clip dataset directory with ground truth")
    p.add_argument("--talker", help="talker checkpoint (default: the shipped demo talker)")
    p.add_argument("--ablation", help="a talker trained on the same clip with --no-cross-view, as a baseline")
    p.add_argument("--all-frames", action="store_true",
                   help="evaluate every frame (a clip whose audio the talker never saw) instead of the held-out "
                        "split; a clip without held-out frames needs it. The report says which frames it scored "
                        "(training, held-out, or another clip's)")
    p.add_argument("--training-frames", type=positive_int, metavar="N",
                   help="evaluate N frames spread over the clip's training split instead of the held-out ones: "
                        "how well the talker renders what it trained on from the audio alone (beside the held-out "
                        "report, it separates fitting from generalising)")
    p.add_argument("--out", default="eval_report", help="report directory (default eval_report)")
    p.add_argument("--size", type=positive_int, help="evaluation image size (default: the dataset's)")
    p.add_argument("--device", help="cuda or cpu (default: cuda if available)")
    p.add_argument("--no-novel", action="store_true", help="skip the novel views")




def _command(args) -> str:
    parts = ["dgtalker eval", "--data", str(args.data)]
    for flag, value in (("--talker", args.talker), ("--ablation", args.ablation), ("--size", args.size),
                        ("--device", args.device), ("--training-frames", args.training_frames), ("--out", args.out)):
        if value is not None:
            parts += [flag, str(value)]
    parts += [f for f, on in (("--all-frames", args.all_frames), ("--no-novel", args.no_novel)) if on]
    return " ".join(parts)


def _commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None




def run(args) -> int:
    from ..checkpoint import CheckpointError
    from ..cli import check_device
    from ..data import DatasetError, load
    from ..io import atomic_write_bytes, atomic_write_json
    from ..talker import load_talker
    from .evaluate import clip_coefficients, evaluate, spiral_consistency, spread_frames
    from .report import clean, contact_sheet, detail_sheet, markdown, mouth_plot, render_speed

    out = Path(args.out)
    try:
        device = check_device(args.device)
        if out.exists() and not out.is_dir():
            raise FileExistsError(f"--out {out} exists and is not a directory")
        if not out.parent.is_dir():
            raise FileNotFoundError(f"--out {out}: its directory {out.parent} does not exist")
        for flag, path in (("--talker", args.talker), ("--ablation", args.ablation)):
            if path is not None and not Path(path).is_file():
                raise FileNotFoundError(f"{flag} {path}: no such file")
        dataset = load(args.data)
        if dataset.kind != "talking":
            raise ValueError(f"{args.data}: evaluation needs a talking clip, got a {dataset.kind!r} dataset")
        if args.all_frames and args.training_frames:
            raise ValueError("--all-frames and --training-frames each choose the frames: pass one of them")
        if args.all_frames:
            frames = np.arange(len(dataset))
        elif args.training_frames:
            train = np.asarray(dataset.splits["train"], np.int64)
            if train.size == 0:
                raise ValueError(f"{args.data} has no training frames (splits.json) for --training-frames")
            frames = spread_frames(train, args.training_frames)
        elif dataset.splits["heldout"].size:
            frames = dataset.splits["heldout"]
        else:
            raise ValueError(f"{args.data} has no held-out frames (splits.json); pass --all-frames to score every "
                             "frame (the report then says how many the talker trained on)")
        size = dataset.width if args.size is None else args.size
        talker = load_talker(args.talker, device=device)
        out.mkdir(exist_ok=True)
        coefficients = clip_coefficients(talker, dataset)  # once for the evaluation, the sheet and the spiral
        res = evaluate(talker, dataset, frames=frames, size=size, novel=not args.no_novel, device=device,
                       coefficients=coefficients)
        baselines = {"static (w_can only)": res["static"]}
        if args.ablation:
            abl = evaluate(load_talker(args.ablation, device=device), dataset, frames=frames, size=size,
                           novel=False, device=device, progress=False)
            baselines["ablation (no cross-view)"] = abl["frames"]
    except (ValueError, FileNotFoundError, FileExistsError, DatasetError, CheckpointError) as exc:
        print(f"dgtalker eval: {exc}", file=sys.stderr)
        return 2
    if res.get("landmarks"):
        lmd_note = ("mediapipe face mesh on render and ground truth alike: mean distance of the 40 lip-contour "
                    "points in pixels at the dataset's size; mouth_corr_landmarks correlates their inner-lip gaps")
    else:
        lmd_note = ("not measured: it needs mediapipe's face mesh (pip install \".[eval]\", Python <= 3.12); "
                    "mouth motion is compared with the mouth-interior measure only")
        for m in [res["frames"], *baselines.values()]:
            m["lmd_px"] = None
    rep = {"frames": res["frames"], "novel_views": res.get("novel_views"), "baselines": baselines,
           "talker_minus_static": res.get("talker_minus_static"), "loudness_lag": res["loudness_lag"],
           "spiral": (spiral_consistency(talker, dataset, frame=int(frames[0]), size=min(size, 256), device=device,
                                         coefficients=coefficients)
                      if not res.get("novel_views") else None),
           "speed": render_speed(talker, dataset, size, device),
           "command": _command(args),
           "commit": _commit(), "talker": {"path": args.talker or "demo talker", "source": talker.source},
           "data": {"path": str(args.data), "split": res["scored"]["label"], "scored": res["scored"],
                    "frame_indices": [int(i) for i in frames], "source": dataset.meta.get("source")},
           "lmd_note": lmd_note, "per_frame": res["per_frame"]}
    rep["worst_median_best"] = contact_sheet(talker, dataset, coefficients, res["per_frame"], frames, size,
                                             out / "sheet.png", device)
    picked = np.array([r["frame"] for r in rep["worst_median_best"]])
    rep["details_sheet"] = detail_sheet(talker, dataset, coefficients, picked, out / "details.png", device)
    rep["mouth_plot"] = mouth_plot(res["per_frame"], frames, dataset.fps, out / "mouth.png")
    rep = clean(rep)
    atomic_write_json(out / "report.json", rep)
    atomic_write_bytes(out / "report.md", markdown(rep).encode())
    m = rep["frames"]

    def f(x, d=2):
        return "n/a" if x is None else f"{x:.{d}f}"

    print(f"{m['frames']} frames: PSNR {f(m['psnr'])} dB (lower face {f(m['psnr_lower_face'])}), "
          f"mouth corr {f(m['mouth_corr'], 3)} at lag {m['mouth_lag_frames']} -> {out}/report.md")
    return 0
