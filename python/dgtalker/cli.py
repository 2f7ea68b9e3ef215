"""The ``dgtalker`` command.

Each subcommand lives next to the code it drives and exposes two functions,
``add_arguments(parser)`` and ``run(args) -> int``; this file only routes. Modules
are imported when their subcommand runs, so ``dgtalker --help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys


def int_at_least(low: int):
    """argparse type: a whole number >= ``low`` (``8.7`` and smaller numbers are refused by name)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be a whole number >= {low}, got {text!r}")
        return value
    return parse


positive_int = int_at_least(1)


def fraction(text: str) -> float:
    """argparse type: a number in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {text!r}")
    return value


def check_device(value: str | None) -> str:
    """The torch device a ``--device`` value names (None: cuda if there is one, else cpu);
    ValueError with what is available when it cannot be used here."""
    import torch

    from .inference import check_device as _check

    default = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return str(_check(value, default))
    except ValueError as exc:
        raise ValueError(f"--{exc}") from None


# name -> (module, one-line help)
SUBCOMMANDS = {
    "demo": ("dgtalker.demo", "the shipped demo talker says a sentence under a spiral camera (demo.mp4 + demo.png)"),
    "synth": ("dgtalker.data.synth_cli", "generate a synthetic talking-head dataset"),
    "preprocess": ("dgtalker.preprocess.preprocess_cli", "turn a video of a person talking into a dataset (face tracking, pose, masks)"),
    "render": ("dgtalker.render_cli", "render a talker speaking an audio file into an mp4"),
    "blendshapes": ("dgtalker.blendshapes_cli", "picture of what each expression and lip blendshape of a talker does"),
    "eval": ("dgtalker.eval.eval_cli", "measure a talker against a clip's ground truth (report.json, report.md, figures)"),
    "train": ("dgtalker.train.identity_cli", "train a talking head (a talker) on one person's clip"),
    "calibrate-lips": ("dgtalker.eval.calibrate_cli", "after training: make the rendered mouth move as much as the person's "
                                                  "(measured with the face mesh on training frames)"),
    "pretrain-prior": ("dgtalker.train.prior_cli", "train the Gaussian generative prior on a multi-identity corpus"),
    "lipsync": ("dgtalker.audio.lipsync_cli", "mouth curves of any speech (opening, width, visemes per frame) as CSV "
                                              "or JSON, from the speaker-independent front end"),
    "info": ("dgtalker.info", "print how the engine was built and which backends run here"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dgtalker",
        description="dgtalker: audio-driven 3D Gaussian talking heads. "
        "Run `dgtalker COMMAND --help` for the options of a command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        try:
            importlib.import_module(module).add_arguments(p)
        except ImportError as exc:  # keep the other commands usable
            p.set_defaults(_import_error=str(exc))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    if getattr(args, "_import_error", None):
        print(f"dgtalker {args.command}: unavailable ({args._import_error})", file=sys.stderr)
        return 1
    module = importlib.import_module(args._module)
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print(f"\ndgtalker {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
