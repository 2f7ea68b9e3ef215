"""Quality of the prior on identities it never saw: invert from a clip's training
frames, then measure PSNR/SSIM at the clip's held-out frames (the training camera)
and at its held-out novel views (a yaw/pitch grid), and the gap between them.

    python benchmarks/prior_quality.py --prior PRIOR --clips data/clip7 data/clip8 [--json out.json]
"""
from __future__ import annotations

import argparse
from pathlib import Path
import os
import sys
import time
from collections import defaultdict

import numpy as np
import torch



def main(argv=None) -> int:
    from dgtalker.checkpoint import load_prior
    from dgtalker.data import load
    from dgtalker.train.invert import InversionConfig, evaluate, invert, load_views

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prior", required=True)
    ap.add_argument("--clips", nargs="+", required=True, help="talking datasets of unseen identities")
    ap.add_argument("--res", type=int, default=256, help="evaluation/inversion image size")
    ap.add_argument("--frames", type=int, default=24, help="training frames used for the inversion")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--tune-steps", type=int, default=150)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    prior = load_prior(args.prior, device=device)
    results = []
    for clip in args.clips:
        ds = load(clip)
        train = list(ds.splits["train"])
        pick = [train[i] for i in np.linspace(0, len(train) - 1, min(args.frames, len(train))).round().astype(int)]
        fit_views = load_views(ds, pick, args.res)
        held = load_views(ds, ds.splits["heldout"], args.res)
        novel = load_views(ds, range(len(ds.novel)), args.res, novel=True) if ds.novel is not None else None
        yaw = np.asarray(ds.novel.extra["yaw_deg"]) if novel is not None else None
        rec = {"clip": clip}
        for name, cfg in (("w", InversionConfig(steps=args.steps)),
                          ("w+tuning", InversionConfig(steps=args.steps, tune_steps=args.tune_steps))):
            t0 = time.perf_counter()
            fit = invert(prior, fit_views, cfg, progress=False)
            took = time.perf_counter() - t0
            r = {"seconds": took, "fit_frames": evaluate(fit.generator, fit.w, fit_views.to(device)),
                 "heldout_frames": evaluate(fit.generator, fit.w, held.to(device))}
            if novel is not None:
                by_yaw = defaultdict(list)
                for i, y in enumerate(yaw):
                    by_yaw[int(round(abs(float(y))))].append(i)
                r["novel_by_abs_yaw"] = {str(k): evaluate(fit.generator, fit.w, novel.subset(v).to(device))
                                         for k, v in sorted(by_yaw.items())}
                r["novel_all"] = evaluate(fit.generator, fit.w, novel.to(device))
                r["gap_psnr"] = r["heldout_frames"]["psnr"] - r["novel_all"]["psnr"]
            rec[name] = r
        results.append(rec)
    print("| clip | fit | train-view PSNR (held-out frames) | novel PSNR (all) | " + " | ".join(
        f"novel |yaw|={k}°" for k in results[0]["w"].get("novel_by_abs_yaw", {})) + " | gap | SSIM train/novel |")
    print("|---|---|---|---|" + "---|" * len(results[0]["w"].get("novel_by_abs_yaw", {})) + "---|---|")
    for rec in results:
        for name in ("w", "w+tuning"):
            r = rec[name]
            ny = " | ".join(f"{v['psnr']:.2f}" for v in r.get("novel_by_abs_yaw", {}).values())
            print(f"| {os.path.basename(rec['clip'].rstrip('/'))} | {name} | {r['heldout_frames']['psnr']:.2f} | "
                  f"{r.get('novel_all', {}).get('psnr', float('nan')):.2f} | {ny} | {r.get('gap_psnr', float('nan')):.2f} | "
                  f"{r['heldout_frames']['ssim']:.3f} / {r.get('novel_all', {}).get('ssim', float('nan')):.3f} |")
    if args.json:
        from dgtalker.io import atomic_write_json

        atomic_write_json(Path(args.json), results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
