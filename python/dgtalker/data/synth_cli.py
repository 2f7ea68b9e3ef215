"""``dgtalker synth``: generate a synthetic talking-head dataset.

Top-level imports stay light (the command router imports this module to build
``dgtalker --help``); the generator is imported inside ``run``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from ..cli import int_at_least

EPILOG = """\
examples:
  dgtalker synth --identity 7 --seconds 60 --out data/id007
      one person talking for 60 s (25 fps, 512x512, espeak-ng speech), with held-out
      novel views, preview/contact_sheet.png and preview/preview.mp4
  dgtalker synth --identity 7 --seconds 3 --size 256 --out /tmp/tiny
      a quick 3-second clip
  dgtalker synth --identity 7 --audio speech.wav --out data/id007_newvoice
      the same person driven by any recording (wav, flac, mp3 or a video's sound)
  dgtalker synth --multi 50 --expressions 8 --views 4 --out data/prior
      50 identities x 8 expressions x 4 random views for the generative prior

The dataset layout is described in docs/data-format.md; load it with
dgtalker.data.load(DIR). Output is written to a temporary directory and renamed into
place at the end, so an interrupted run leaves nothing under DIR.
"""


def _positive(kind):
    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if not np.isfinite(v) or v <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
        return v
    return parse


def _degrees(text):
    try:
        vals = tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated degrees like -30,0,30, got {text!r}") from None
    if not vals:
        raise argparse.ArgumentTypeError("expected at least one angle")
    return vals


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.description = ("Render synthetic talking heads with exact ground truth (cameras, masks, mouth and "
                     "expression parameters, head pose, landmarks) into a dgtalker dataset directory.")
    p.epilog = EPILOG
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output dataset directory")
    p.add_argument("--identity", type=int_at_least(0), default=None, metavar="SEED",
                   help="which synthetic person (any integer >= 0; same seed, same person and clip). "
                        "Default 7; with --multi, the first of N consecutive seeds (default 1000)")
    p.add_argument("--seconds", type=_positive(float), default=None, metavar="S",
                   help="length of the clip in seconds (default 60; with --audio, the whole file)")
    p.add_argument("--audio", type=Path, default=None, metavar="FILE",
                   help="drive the head with this sound file instead of espeak-ng speech")
    p.add_argument("--voice", default=None, metavar="NAME",
                   help="espeak-ng voice (e.g. en-us+f3, en-gb-scotland+m3); default: the identity's own")
    p.add_argument("--speed", type=_positive(int), default=None, help="espeak-ng words per minute")
    p.add_argument("--pitch", type=int_at_least(0), default=None, help="espeak-ng pitch 0-99")
    p.add_argument("--sentences", type=Path, default=None, metavar="TXT",
                   help="text file with one sentence per line to speak (default: a built-in list)")
    p.add_argument("--fps", type=_positive(float), default=25.0, help="frame rate (default 25)")
    p.add_argument("--size", type=_positive(int), default=512, help="image width = height in pixels (default 512)")
    p.add_argument("--heldout", type=float, default=0.1, metavar="FRACTION",
                   help="fraction of frames at the end held out from training (default 0.1)")
    p.add_argument("--novel-frames", type=int_at_least(0), default=4, metavar="N",
                   help="held-out frames also rendered from the novel-view grid (default 4; 0: none)")
    p.add_argument("--novel-yaw", type=_degrees, default=(-45, -30, -15, 0, 15, 30, 45), metavar="DEG,...",
                   help="novel-view camera yaws in degrees; write --novel-yaw=-30,0,30 when the list starts with a minus (default -45,-30,-15,0,15,30,45)")
    p.add_argument("--novel-pitch", type=_degrees, default=(-15, 0, 15), metavar="DEG,...",
                   help="novel-view camera pitches in degrees (default -15,0,15)")
    p.add_argument("--multi", type=_positive(int), default=None, metavar="N",
                   help="multi-identity mode: N identities (seeds SEED..SEED+N-1, default first seed 1000) "
                        "x --expressions x --views, no audio")
    p.add_argument("--expressions", type=_positive(int), default=6, help="expressions per identity in --multi mode")
    p.add_argument("--views", type=_positive(int), default=4, help="random views per expression in --multi mode")
    p.add_argument("--image-format", choices=("png", "jpg"), default="png",
                   help="frame files: png (lossless, default) or jpg (quality 95, ~6x smaller)")
    p.add_argument("--supersample", type=_positive(int), default=2, metavar="K",
                   help="anti-aliasing: render KxK samples per pixel (default 2; 1 is ~3x faster and jagged)")
    p.add_argument("--texture-size", type=_positive(int), default=None, metavar="PX",
                   help="skin texture width (default 2048 for one identity, 1024 for --multi)")
    p.add_argument("--no-preview", action="store_true", help="skip preview/contact_sheet.png and preview/preview.mp4")
    p.add_argument("--overwrite", action="store_true", help="replace DIR if it already exists")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _fail(msg: str) -> int:
    print(f"dgtalker synth: error: {msg}", file=sys.stderr)
    return 2


def run(args) -> int:
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        return _fail(f"--out {out} already exists (add --overwrite to replace it)")
    if not 0.0 <= args.heldout < 1.0:
        return _fail(f"--heldout must be in [0, 1), got {args.heldout}")
    if args.audio is not None and args.multi:
        return _fail("--audio and --multi cannot be combined (the multi-identity corpus has no audio)")
    if args.audio is not None and not args.audio.is_file():
        return _fail(f"--audio {args.audio}: no such file")
    if args.size > 4096:
        return _fail(f"--size {args.size} is too large (at most 4096)")
    if args.size % 2:
        return _fail(f"--size must be even (video encoders need even sizes), got {args.size}")
    sentences = None
    if args.sentences is not None:
        try:
            sentences = [s.strip() for s in args.sentences.read_text().splitlines() if s.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            return _fail(f"--sentences {args.sentences}: cannot read ({exc})")
        if not sentences:
            return _fail(f"--sentences {args.sentences}: the file has no sentences")

    from ..audio import AudioError
    from .format import DatasetError
    from .synthetic import draw_identity, generate_multi, generate_talking
    from .synthetic.raster import MeshRenderer  # noqa: F401 - fail early if GL is missing

    t0 = time.time()
    identity = 7 if args.identity is None else args.identity
    try:
        if args.multi:
            path = generate_multi(out, identities=args.multi, first_identity=1000 if args.identity is None else args.identity,
                                  expressions=args.expressions, views=args.views, size=args.size,
                                  image_ext=args.image_format, supersample=args.supersample,
                                  texture_size=args.texture_size or 1024, overwrite=args.overwrite,
                                  progress=not args.quiet)
        else:
            voice = None
            if args.voice or args.speed or args.pitch is not None:
                voice = dict(draw_identity(identity).voice)
                voice.update({k: v for k, v in (("voice", args.voice), ("speed", args.speed), ("pitch", args.pitch)) if v is not None})
            seconds = args.seconds if args.seconds is not None else (None if args.audio else 60.0)
            path = generate_talking(out, identity=identity, seconds=seconds, fps=args.fps, size=args.size,
                                    audio_path=args.audio, sentences=sentences, voice=voice,
                                    heldout_fraction=args.heldout, novel_frames=args.novel_frames,
                                    novel_yaw=args.novel_yaw, novel_pitch=args.novel_pitch,
                                    image_ext=args.image_format, supersample=args.supersample,
                                    texture_size=args.texture_size or 2048, overwrite=args.overwrite,
                                    progress=not args.quiet)
    except (AudioError, DatasetError, ValueError, FileExistsError) as exc:
        return _fail(str(exc))
    except RuntimeError as exc:  # missing espeak-ng / OpenGL / ffmpeg: say what to install
        return _fail(str(exc))
    t_gen = time.time() - t0
    from . import load
    from .preview import contact_sheet, preview_video

    ds = load(path)
    if not args.no_preview:
        sheet = contact_sheet(ds, path / "preview" / "contact_sheet.png")
        print(f"contact sheet: {sheet}")
        if ds.fps is not None:
            try:
                vid = preview_video(ds, path / "preview" / "preview.mp4", progress=not args.quiet)
                print(f"preview video: {vid}")
            except RuntimeError as exc:
                print(f"dgtalker synth: warning: no preview video ({exc})", file=sys.stderr)
    print(f"wrote {ds} in {t_gen:.1f} s (+{time.time() - t0 - t_gen:.1f} s previews)")
    return 0
