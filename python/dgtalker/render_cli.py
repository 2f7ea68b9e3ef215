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
  DATASET_DIR      a dataset's own tracked cameras at their own times (self-driven); the video
                   comes at the dataset's frame size unless --size is given, and a dataset
                   shorter than the speech is refused unless --camera-end hold|loop

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
    p.add_argument("--out", required=True, help="video to write: .mp4, .m4v or .mov (h264 + aac, the speech in sync)")
    p.add_argument("--camera", default="front", help="front | spiral | orbit:YAW,PITCH | DATASET_DIR (see below)")
    p.add_argument("--camera-end", choices=("refuse", "hold", "loop"), default="refuse",
                   help="when a dataset's cameras end before the speech: refuse (default), hold the last "
                        "camera, or loop them")
    p.add_argument("--expression", choices=("speech", "sample"), default="speech",
                   help="upper face from speech alone (default) or with the expression residual sampled "
                        "from the training clip (brow motion at the person's own times)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled blinks and of --expression sample")
    p.add_argument("--blink", type=float, metavar="AMOUNT",
                   help="hold the eyelids at AMOUNT on every frame (0 open, 1 closed) instead of the person's "
                        "own blinks (by default sampled from the training clip)")
    p.add_argument("--lip-scale", type=float, default=1.0, help="exaggerate (>1) or damp (<1) the lips")
    p.add_argument("--exp-scale", type=float, default=1.0, help="exaggerate (>1) or damp (<1) the upper face")
    p.add_argument("--no-steady", action="store_true",
                   help="the mouth opening as the audio encoders predict it, without keeping the person's own "
                        "motion over each passage (the talker's motion window; by default kept)")
    p.add_argument("--background", metavar="IMAGE|VIDEO",
                   help="composite the head over this image or video (resized to the frame; a video loops) "
                        "instead of the background plate estimated from the training clip")
    p.add_argument("--size", type=int, help="frame width = height in pixels (default: the talker's)")
    p.add_argument("--fps", type=float, default=25.0, help="frames per second (default 25)")
    p.add_argument("--device", help="cuda or cpu (default: cuda if available)")
    p.add_argument("--sheet", help="also write a contact sheet PNG here")


def _camera(spec: str, num_frames: int, size: int, end: str = "refuse"):
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

        return camera.Camera.from_dataset(load(spec, verify="none"), extend=end)
    raise ValueError(f"--camera must be front, spiral, orbit:YAW,PITCH or a dataset directory, got {spec!r}")


def run(args) -> int:
    import torch

    from . import audio as A
    from .checkpoint import CheckpointError
    from .inference import VIDEO_SUFFIXES, check_device, check_fps, check_output_path
    from .talker import load_talker

    try:
        # every argument before any work: a bad --out or --size must not cost a render
        out = check_output_path(args.out, "--out", VIDEO_SUFFIXES)
        sheet = None if args.sheet is None else check_output_path(args.sheet, "--sheet", (".png",))
        if args.size is not None and not 8 <= args.size <= 4096:
            raise ValueError(f"--size must be in [8, 4096] pixels, got {args.size}")
        fps = check_fps(args.fps)
        device = check_device(args.device, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
        talker = load_talker(args.talker, device=device)
        size = talker.config.width if args.size is None else args.size
        samples, rate = A.load(args.audio)
        n = A.num_video_frames(len(samples), rate, fps)
        cam = _camera(args.camera, n, size, args.camera_end)
        start = time.perf_counter()
        video = talker.render((samples, rate), cam, fps=fps,
                              expression="sample" if args.expression == "sample" else None, seed=args.seed,
                              blink="sample" if args.blink is None else args.blink,
                              lip_scale=args.lip_scale, exp_scale=args.exp_scale, background=args.background,
                              steady=not args.no_steady,
                              **({} if args.size is None else {"width": size, "height": size}),
                              device=device, progress=True)
        took = time.perf_counter() - start
        video.save(out)
        if sheet is not None:
            video.contact_sheet(sheet)
    except (ValueError, FileNotFoundError, IsADirectoryError, CheckpointError, RuntimeError) as exc:
        # RuntimeError: ffmpeg missing or failing to write the mp4
        print(f"dgtalker render: {exc}", file=sys.stderr)
        return 2
    H, W = video.frames.shape[1:3]
    print(f"rendered {len(video)} frames at {W}x{H} on {device} in {took:.1f} s "
          f"({len(video) / took:.1f} FPS, audio to frames) -> {out}")
    return 0
