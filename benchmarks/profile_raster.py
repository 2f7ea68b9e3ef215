"""Runs a few forward+backward calls of one rasterizer on the benchmark head scene,
for kernel profilers (ncu, compute-sanitizer):

    ncu --kernel-name regex:blend_backward --launch-skip 3 --launch-count 1 \
        python benchmarks/profile_raster.py --lib dgtalker
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import raster_backends as rb  # noqa: E402
import raster_scene  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib", choices=["dgtalker", "gsplat"], default="dgtalker")
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--res", type=int, default=512)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--iters", type=int, default=6)
    args = ap.parse_args()
    backends, notes = rb.make_backends([args.lib])
    if not backends:
        sys.exit(f"{args.lib}: {notes}")
    backend = backends[0]
    scene = raster_scene.make_scene(args.n, args.res, args.batch, seed=0, device="cuda").requires_grad_(True)
    for _ in range(args.iters):
        image, alpha, _ = backend.render(scene)
        (image.sum() + alpha.sum()).backward()
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
