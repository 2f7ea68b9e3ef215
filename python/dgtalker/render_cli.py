"""``dgtalker render``: speech -> an mp4 of a talker."""
from __future__ import annotations

import argparse
import sys
import time

EPILOG = """\
cameras:
  front            the talker's training framing (default)
  spiral           circles the face (±25° yaw, ±10° pitch), the 3D-aware demo camera
  orbit:YAW,PITCH  a fixed camera at YAW and PITCH degrees (e.g. orbit:30,5)
  DATASET_DIR      a dataset's own tracked cameras, frame by frame (self-driven)

examples:
  dgtalker render --audio speech.wav --out talk.mp4                       # the demo talker
  dgtalker render --talker id007.safetensors --audio speech.wav --camera spiral --out talk.mp4
  dgtalker render --talker id007.safetensors --audio speech.wav --expression sample --seed 3 --out talk.mp4
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    p.add_argument("--talker", help="talker checkpoint (default: the demo talker shipped with dgtalker)")
    p.add_argument("--audio", required=True, help="speech: wav/flac/mp3, or a video's sound track")
    p.add_argument("--out", required=True, help="mp4 to write (h264 + aac, the speech in sync)")
    p.add_argument("--camera", default="front", help="front | spiral | orbit:YAW,PITCH | DATASET_DIR (see below)")
    p.add_argument("--expression", choices=("speech", "sample"), default="speech",
                   help="upper face from speech alone (default) or with the expression residual sampled "
                        "from the training clip (brow motion at the person's own times)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled blinks and of --expression sample")
    p.add_argument("--blink", type=float, metavar="AMOUNT",
                   help="hold the eyelids at AMOUNT on every frame (0 open, 1 closed) instead of the person's "
                        "own blinks (by default sampled from the training clip)")
    p.add_argument("--lip-scale", type=float, default=1.0, help="exaggerate (>1) or damp (<1) the lips")
    p.add_argument("--exp-scale", type=float, default=1.0, help="exaggerate (>1) or damp (<1) the upper face")
    p.add_argument("--size", type=int, help="frame width = height in pixels (default: the talker's)")
    p.add_argument("--fps", type=float, default=25.0, help="frames per second (default 25)")
    p.add_argument("--device", help="cuda or cpu (default: cuda if available)")
    p.add_argument("--sheet", help="also write a contact sheet PNG here")


def _camera(spec: str, num_frames: int, size: int):
    from . import camera

    if spec == "front":
        return None
    if spec == "spiral":
        return camera.spiral(num_frames, width=size, height=size)
    if spec.startswith("orbit:"):
        try:
            yaw, pitch = (float(v) for v in spec[len("orbit:"):].split(","))
        except ValueError:
            raise ValueError(f"--camera orbit:YAW,PITCH needs two numbers, got {spec!r}") from None
        return camera.orbit(yaw, pitch, width=size, height=size)
    from pathlib import Path

    if Path(spec).is_dir():
        from .data import load

        return load(spec, verify="none")
    raise ValueError(f"--camera must be front, spiral, orbit:YAW,PITCH or a dataset directory, got {spec!r}")


def run(args) -> int:
    import torch

    from . import audio as A
    from .checkpoint import CheckpointError
    from .talker import load_talker

    try:
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        talker = load_talker(args.talker, device=device)
        size = args.size or talker.config.width
        samples, rate = A.load(args.audio)
        n = A.num_video_frames(len(samples), rate, args.fps)
        cam = _camera(args.camera, n, size)
        start = time.perf_counter()
        video = talker.render((samples, rate), cam, fps=args.fps,
                              expression="sample" if args.expression == "sample" else None, seed=args.seed,
                              blink="sample" if args.blink is None else args.blink,
                              lip_scale=args.lip_scale, exp_scale=args.exp_scale, width=size, height=size,
                              device=device, progress=True)
        took = time.perf_counter() - start
        video.save(args.out)
        if args.sheet:
            video.contact_sheet(args.sheet)
    except (ValueError, FileNotFoundError, IsADirectoryError, CheckpointError, RuntimeError) as exc:
        # RuntimeError: ffmpeg missing or failing to write the mp4
        print(f"dgtalker render: {exc}", file=sys.stderr)
        return 2
    print(f"rendered {len(video)} frames at {size}x{size} on {device} in {took:.1f} s "
          f"({len(video) / took:.1f} FPS, audio to frames) -> {args.out}")
    return 0
