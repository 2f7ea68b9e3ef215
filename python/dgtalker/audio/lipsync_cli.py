"""``dgtalker lipsync``: speech -> per-frame mouth curves (CSV or JSON)."""
from __future__ import annotations

import argparse
import sys
import time

DESCRIPTION = "per-frame mouth opening, lip width and visemes of any speech (speaker- and language-independent)"

EPILOG = """\
output (one row / entry per video frame, frame i at time i / fps):
  opening    inner-lip gap over the outer eye-corner distance (mediapipe face-mesh
             points 13/14 over 33/263): about 0 closed, 0.05 talking, 0.15+ wide open
  width      mouth-corner distance in the same unit
  viseme     the most likely mouth-shape class, and p_<class> the probability of each:
             sil PBM FV TH SZ SH TDNL KG RW AA EI OU
The file type follows --out's extension (.csv or .json); --embedding adds the model's
per-frame vector to a JSON file. The model: the first blocks of Whisper base (a speech
encoder trained on real speech) and heads trained on synthetic speech (docs/lipsync.md).

examples:
  dgtalker lipsync speech.wav --out curves.csv
  dgtalker lipsync talk.mp4 --fps 30 --out curves.json        # a video's sound track
  dgtalker lipsync live.wav --causal --out curves.csv          # <= 0.1725 s look-ahead per frame
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.description = DESCRIPTION
    p.epilog = EPILOG
    p.add_argument("speech", help="speech: wav/flac/ogg/mp3, or a video's sound track")
    p.add_argument("--out", required=True, help="file to write: .csv or .json")
    p.add_argument("--fps", type=float, default=25.0, help="frames per second of the curves (default 25)")
    p.add_argument("--causal", action="store_true",
                   help="use only audio up to 0.1725 s after each frame (as a live stream would)")
    p.add_argument("--embedding", action="store_true", help="include the per-frame embedding (JSON only)")
    p.add_argument("--weights", help="another lip-sync model file (default: the shipped one)")
    p.add_argument("--encoder", help="another speech encoder file (default: the shipped one; a smaller, faster "
                                      "and less accurate one: python -m dgtalker.audio.speech_distill)")


def run(args) -> int:
    from ..io import check_output_path
    from .lipsync import lipsync

    try:
        out = check_output_path(args.out, "--out", (".csv", ".json"))
    except (ValueError, FileNotFoundError, IsADirectoryError) as exc:
        print(f"dgtalker lipsync: {exc}", file=sys.stderr)
        return 2
    kind = out.suffix.lower().lstrip(".")
    if args.embedding and kind != "json":
        print("dgtalker lipsync: --embedding needs a .json output", file=sys.stderr)
        return 2
    try:
        start = time.perf_counter()
        res = lipsync(args.speech, fps=args.fps, causal=args.causal, weights=args.weights, encoder=args.encoder)
        took = time.perf_counter() - start
        if kind == "csv":
            res.to_csv(out)
        else:
            res.to_json(out, embedding=args.embedding)
    except (ValueError, FileNotFoundError, IsADirectoryError) as exc:  # the model's errors are ValueErrors
        print(f"dgtalker lipsync: {exc}", file=sys.stderr)
        return 2
    seconds = len(res) / res.fps
    print(f"{len(res)} frames ({seconds:.1f} s at {res.fps:g} fps) in {took:.2f} s, loading the model "
          f"included (speech encoder {res.encoder}) -> {out}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="dgtalker lipsync")
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
