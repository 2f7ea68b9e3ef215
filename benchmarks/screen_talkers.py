"""Quick side-by-side screen of several talkers trained on one synthetic clip: held-out
frames (every ``--every``-th, audio only, at the talker's plate) and the clip's novel
views per |yaw|, with the 0°→30° gap on the whole frame and inside the head mask.
``dgtalker.eval.evaluate`` without landmarks and baselines (``dgtalker eval`` adds
them and uses all held-out frames), in a few minutes per talker on a CPU.

    python benchmarks/screen_talkers.py --data data/id007 T1.safetensors T2.safetensors ... [--json OUT]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def screen(path: Path, data, every: int) -> dict:
    from dgtalker.eval.evaluate import evaluate
    from dgtalker.talker import load_talker

    held = np.asarray(data.splits["heldout"])[::every]
    rep = evaluate(load_talker(path, device="cpu"), data, frames=held, landmarks=False, baselines=False,
                   progress=False)
    f = rep["frames"]
    out = {"heldout_frames": len(held), "psnr": f["psnr"], "psnr_lower_face": f["psnr_lower_face"]}
    nv = rep.get("novel_views")
    if nv:
        out["novel"] = nv
        if "0" in nv and "30" in nv:
            out["gap_0_30"] = nv["0"]["psnr"] - nv["30"]["psnr"]
            out["gap_0_30_head"] = nv["0"]["psnr_head"] - nv["30"]["psnr_head"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("talkers", type=Path, nargs="+")
    ap.add_argument("--data", type=Path, required=True, help="the synthetic clip they were trained on")
    ap.add_argument("--every", type=int, default=3, help="every N-th held-out frame (default 3)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    from dgtalker.data import load

    data = load(a.data)
    res = {}
    print("| talker | held-out PSNR | lower face | novel 0° / 15° / 30° / 45° | gap 0→30° whole / head |\n"
          "|---|---|---|---|---|")
    for p in a.talkers:
        r = res[str(p)] = screen(p, data, a.every)
        nv = r.get("novel", {})
        angles = " / ".join(f"{nv[b]['psnr']:.2f}" for b in ("0", "15", "30", "45") if b in nv)
        gap = f"{r['gap_0_30']:.2f} / {r['gap_0_30_head']:.2f}" if "gap_0_30" in r else "–"
        print(f"| {p} | {r['psnr']:.2f} | {r['psnr_lower_face']:.2f} | {angles or '–'} | {gap} |", flush=True)
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
