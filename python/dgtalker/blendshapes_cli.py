"""``dgtalker blendshapes``: what each blendshape of a talker does, as one picture."""
from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("talker", metavar="TALKER", help="talker checkpoint ('demo' for the shipped demo talker)")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--size", type=int, default=160, help="size of each tile in pixels")
    p.add_argument("--sigma", type=float, default=2.0,
                   help="how far each coefficient moves from the training clip's mean, in units of its spread "
                        "over that clip (default ±2)")


def run(args) -> int:
    from .checkpoint import CheckpointError
    from .talker import blendshape_sheet, load_talker

    try:
        talker = load_talker(None if args.talker == "demo" else args.talker)
        blendshape_sheet(talker, args.out, size=args.size, sigma=args.sigma, mean=talker.coef_mean.cpu(),
                         std=talker.coef_std.cpu())
    except (ValueError, FileNotFoundError, CheckpointError) as exc:
        print(f"dgtalker blendshapes: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: columns = {talker.config.k_exp} expression then {talker.config.k_lip} lip components; "
          f"rows = -{args.sigma:g}, 0, +{args.sigma:g}")
    return 0
