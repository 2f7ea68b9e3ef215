"""``dgtalker preprocess VIDEO --out DIR``: a talking-head video -> a dataset."""
from __future__ import annotations

import sys

from ..cli import fraction, positive_int


def add_arguments(p) -> None:
    p.description = (
        "Turn a video of one person talking into a dgtalker dataset (the format `dgtalker train` reads): "
        "frames at a fixed rate with the sound in sync, a stable square crop around the head, per-frame "
        "head pose (face mesh + bundle adjustment, registered to the prior's head frame), masks "
        "(foreground, head, lower and upper face) and the tracked landmarks. Runs offline on the CPU. "
        'Needs pip install ".[preprocess]" (mediapipe 0.10.14: Python 3.9-3.12).')
    p.epilog = ("example: dgtalker preprocess talk.mp4 --out data/me && dgtalker train data/me --out me.safetensors\n"
                "Film 1-5 minutes, face the camera, keep the head in the picture and the background still.")
    p.add_argument("video", metavar="VIDEO", help="the clip: any container and codec ffmpeg reads (mp4, mov, mkv, webm, "
                                                  "...); with --update-torso, a dataset directory")
    p.add_argument("--out", metavar="DIR", help="dataset directory to write (required unless --update-torso)")
    p.add_argument("--update-torso", action="store_true",
                   help="measure the torso's own motion (gt.npz torso_shift: the shoulders' image shift per frame, "
                        "which training and eval pose the torso with) in the existing dataset VIDEO, in place: for "
                        "datasets written before preprocess measured it")
    p.add_argument("--fps", type=float, default=25.0,
                   help="frame rate of the dataset; the video is resampled by its timestamps (default 25)")
    p.add_argument("--size", type=positive_int, default=512, help="width = height of the cropped frames in pixels (default 512)")
    p.add_argument("--focal", type=float, default=None, metavar="PX",
                   help="the camera's focal length in pixels of the input video, if known "
                        "(default: estimated for the clip, with a weak 30 degree field-of-view prior)")
    p.add_argument("--image-format", choices=("jpg", "png"), default="jpg",
                   help="frame images: jpg (default; the source is compressed video already) or png")
    p.add_argument("--heldout", type=fraction, default=0.1,
                   help="fraction of frames at the end held out for evaluation, in [0, 1) (default 0.1; 0: none). "
                        "Refused when it would hold out no frame or leave none for training")
    p.add_argument("--max-dropped", type=float, default=0.25,
                   help="fail if more than this fraction of frames has no usable face (default 0.25); "
                        "dropped frames stay in the clip (the sound stays in sync) but out of the splits")
    p.add_argument("--smooth", type=float, default=1.0,
                   help="head-pose smoothing, the sigma of a two-sided Gaussian in frames (no lag; 0 = off; default 1)")
    p.add_argument("--feature-rounds", type=int, default=0, metavar="N",
                   help="rounds of placing the tracked skin features by their own views and solving the poses "
                        "again (default 0: placed on the face mesh; 2 brought synthetic clips' head rotations "
                        "and distances closer to the truth, docs/preprocess.md)")
    p.add_argument("--allow-silent", action="store_true",
                   help="accept a video without sound (writes silence; useful for inversion only)")
    p.add_argument("--overwrite", action="store_true", help="replace DIR if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args) -> int:
    if args.update_torso:
        return update_torso(args)
    if not args.out:
        print("dgtalker preprocess: --out DIR is required (the dataset directory to write)", file=sys.stderr)
        return 2
    try:
        from . import PreprocessError, VideoError, preprocess
    except ImportError as exc:
        print(f'dgtalker preprocess: {exc}; install the extra: pip install ".[preprocess]"', file=sys.stderr)
        return 1
    try:
        summary = preprocess(args.video, args.out, fps=args.fps, size=args.size, focal=args.focal,
                             image_format=args.image_format, heldout=args.heldout, allow_silent=args.allow_silent,
                             max_dropped=args.max_dropped, smooth=args.smooth,
                             feature_rounds=args.feature_rounds, overwrite=args.overwrite,
                             quiet=args.quiet)
    except (PreprocessError, VideoError, FileExistsError) as exc:
        print(f"dgtalker preprocess: {exc}", file=sys.stderr)
        return 2
    print(summary.text())
    return 0


def update_torso(args) -> int:
    from pathlib import Path

    import numpy as np

    from ..data import DatasetError
    from .torso import add_torso_track

    if args.out:
        print("dgtalker preprocess: --update-torso rewrites the dataset VIDEO in place; it takes no --out",
              file=sys.stderr)
        return 2
    if not Path(args.video).is_dir():
        print(f"dgtalker preprocess: --update-torso needs a dataset directory, got {args.video}", file=sys.stderr)
        return 2
    try:
        shift = add_torso_track(args.video, progress=not args.quiet)
    except (DatasetError, ValueError) as exc:
        print(f"dgtalker preprocess: {exc}", file=sys.stderr)
        return 2
    spread = np.percentile(shift, [5, 95], axis=0)
    print(f"{args.video}: torso track of {len(shift)} frames; 90% of the shifts within x {spread[0, 0]:+.1f}.."
          f"{spread[1, 0]:+.1f} px, y {spread[0, 1]:+.1f}..{spread[1, 1]:+.1f} px of the clip's median torso")
    return 0
