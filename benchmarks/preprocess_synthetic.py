"""Preprocessing against exact truth: synthetic clips written as plain mp4s (h264 +
aac, what a user would film) go through `dgtalker preprocess`; the recovered head
rotations (relative to the first frame) and masks are compared with the generator's.

    dgtalker synth --identity 7 --seconds 8 --novel-frames 0 --out data/syn8
    dgtalker synth --identity 3 --seconds 6 --novel-frames 0 --out data/syn3
    python benchmarks/preprocess_synthetic.py data/syn8 data/syn3 --json benchmarks/results/preprocess_synthetic.json

Prints a markdown table (docs/preprocess.md) and writes the JSON."""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("datasets", nargs="+", type=Path, help="synthetic talking clips")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()

    import dgtalker
    from dgtalker.preprocess import preprocess
    from dgtalker.preprocess.validate import compare, write_video

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for d in a.datasets:
            truth = dgtalker.data.load(d)
            mp4 = write_video(truth, Path(tmp) / f"{d.name}.mp4")
            s = preprocess(mp4, Path(tmp) / d.name, quiet=True)
            rep = compare(truth, dgtalker.data.load(Path(tmp) / d.name))
            rep.update(clip=str(d), source=truth.meta.get("source"), seconds=s.seconds, elapsed_s=s.elapsed_s,
                       frames_per_s=round(s.frames / s.elapsed_s, 2), timings_s=s.timings_s, focal_px=s.focal_px,
                       true_focal_px=float(truth.K[0, 0, 0]), registration_rms_mm=s.registration_rms_mm)
            rows.append(rep)
    print("| clip | frames | rotation error median / p95 / max (°) | true rotation range (°) | IoU foreground / head / lower / upper | focal (true) px | frames/s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        e, i = r["rotation_deg"], r["iou"]
        print(f"| {Path(r['clip']).name} | {r['frames']} | {e['median']:.2f} / {e['p95']:.2f} / {e['max']:.2f} | "
              f"{r['true_rotation_range_deg']:.1f} | {i['foreground']:.3f} / {i['head']:.3f} / {i['lower_face']:.3f} / "
              f"{i['upper_face']:.3f} | {r['focal_px']:.0f} ({r['true_focal_px']:.0f}) | {r['frames_per_s']:.1f} |")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
