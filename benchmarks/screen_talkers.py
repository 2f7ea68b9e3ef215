"""Quick side-by-side screen of several talkers trained on one synthetic clip: held-out
frames (every ``--every``-th, audio only, at the talker's plate) and the clip's novel
views per |yaw|, with the 0°→30° gap on the whole frame and inside the head mask.
The same renders and metrics as ``dgtalker eval`` (which adds landmarks, baselines and
all held-out frames), in a few minutes per talker on a CPU.

    python benchmarks/screen_talkers.py --data data/id007 T1.safetensors T2.safetensors ... [--json OUT]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def screen(path: Path, data, every: int) -> dict:
    from dgtalker.eval import metrics as M
    from dgtalker.eval.evaluate import _GroundTruth, clip_coefficients, evaluate_novel, view_cameras
    from dgtalker.talker import body_transforms, load_talker

    T = load_talker(path, device="cpu")
    ce, cl = clip_coefficients(T, data)
    size = data.width
    truth = _GroundTruth(data, size, "cpu")
    held = np.asarray(data.splits["heldout"])[::every]
    whole, lower = [], []
    for s in range(0, len(held), 4):
        idx = held[s:s + 4]
        w2c, K = view_cameras(data, idx, size, data.width, data.height, "cpu")
        gt, masks = truth(idx)
        with torch.no_grad():
            img, _ = T.frames(ce[idx], cl[idx], w2c, K, size, size, body=body_transforms(w2c, T.body_w2c))
        for k in range(len(idx)):
            whole.append(M.psnr(img[k].clamp(0, 1), gt[k]))
            lower.append(M.psnr(img[k].clamp(0, 1), gt[k], masks[k, ..., 1]))
    out = {"heldout_frames": len(held), "psnr": float(np.mean(whole)), "psnr_lower_face": float(np.nanmean(lower))}
    if data.novel is not None:
        nv = evaluate_novel(T, data, ce, cl, size, 4, "cpu", False)
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
