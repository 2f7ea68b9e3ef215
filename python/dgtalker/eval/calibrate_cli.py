"""``dgtalker calibrate-lips``: ``eval.calibrate.calibrate_motion`` on a talker file.

    dgtalker calibrate-lips --data data/me --talker me.safetensors [--frames 60] [--out T]
"""
from __future__ import annotations

import sys
from pathlib import Path

from ..cli import int_at_least
from .calibrate import MIN_FRAMES


def add_arguments(p) -> None:
    p.add_argument("--data", required=True, help="the talker's training clip (a dgtalker preprocess dataset)")
    p.add_argument("--talker", required=True, help="the talker to calibrate; rewritten in place unless --out")
    p.add_argument("--out", help="write the calibrated talker here instead")
    p.add_argument("--frames", type=int_at_least(MIN_FRAMES), default=60,
                   help="training frames to render and measure, spread over the clip (default 60)")
    p.add_argument("--size", type=int_at_least(64), help="render size (default: the dataset's)")
    p.add_argument("--device", help="cuda or cpu (default: cuda if available)")


def run(args) -> int:
    from safetensors import safe_open

    from ..cli import check_device
    from ..data import load
    from ..talker import load_talker, save_talker
    from .calibrate import calibrate_motion

    try:
        device = check_device(args.device)
        src = Path(args.talker)
        if not src.is_file():
            raise FileNotFoundError(f"--talker {src}: no such file")
        talker = load_talker(src, device=device)  # validates the file; then its header says its precision
        with safe_open(str(src), "pt") as f:
            half = any(f.get_slice(k).get_dtype() == "F16" for k in f.keys())
        dataset = load(args.data)
        res = calibrate_motion(talker, dataset, frames=args.frames, size=args.size, device=device, progress=True)
        talker.source = {**talker.source, "motion_calibration": {**res, "data": str(Path(args.data).resolve())}}
        out = save_talker(args.out or src, talker, half=half)
    except (ValueError, OSError, RuntimeError) as exc:  # bad files and folders, no mediapipe, too few faces
        print(f"dgtalker calibrate-lips: error: {exc}", file=sys.stderr)
        return 2
    print(f"rendered mouth moved {res['motion_ratio']:.2f} as much as the person's on {res['frames']} training frames "
          f"(corr {res['corr']:.2f}): mouth motion {res['lip_motion_before']:.3f} -> {res['lip_motion']:.3f}; "
          f"wrote {out}")
    return 0
