"""Smoke test of an installed gsplat on the GPU: it imports the ahead-of-time
built extension (no JIT), renders the benchmark head scene, and prints shapes,
a rough time per call and how well the scene covers the frame.

    python benchmarks/gsplat_smoke.py
"""
from __future__ import annotations

import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import raster_scene  # noqa: E402


def main() -> int:
    t0 = time.perf_counter()
    import gsplat
    from gsplat.cuda import _backend

    print(f"gsplat {gsplat.__version__} from {os.path.dirname(gsplat.__file__)}; import {time.perf_counter() - t0:.1f} s")
    ext = getattr(_backend, "_C", None)
    print(f"extension: {getattr(ext, '__name__', None)} at {getattr(ext, '__file__', None)}")
    if ext is None or getattr(ext, "__name__", "") != "gsplat.csrc":
        print("ERROR: the ahead-of-time extension gsplat.csrc was not loaded")
        return 1
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")

    for n, res, batch, per_image in [(100_000, 512, 1, False), (100_000, 512, 8, False), (100_000, 512, 8, True)]:
        sc = raster_scene.make_scene(n, res, batch, per_image=per_image, device="cuda").requires_grad_()
        if per_image:
            vm, Ks = sc.viewmats[:, None], sc.Ks[:, None]  # [B, 1, 4, 4]: one camera per Gaussian set
        else:
            vm, Ks = sc.viewmats, sc.Ks

        def call():
            return gsplat.rasterization(
                sc.means, sc.quats, sc.scales, sc.opacities, sc.colors, vm, Ks, res, res,
                near_plane=0.01, far_plane=100.0, render_mode="RGB+ED", packed=False,
            )

        for _ in range(5):
            img, alpha, meta = call()
            (img.sum() + alpha.sum()).backward()
        torch.cuda.synchronize()
        iters = 20
        t = time.perf_counter()
        for _ in range(iters):
            img, alpha, meta = call()
        torch.cuda.synchronize()
        fwd_ms = (time.perf_counter() - t) / iters * 1e3
        t = time.perf_counter()
        for _ in range(iters):
            img, alpha, meta = call()
            (img.sum() + alpha.sum()).backward()
        torch.cuda.synchronize()
        fb_ms = (time.perf_counter() - t) / iters * 1e3
        n_isect = int(meta["isect_ids"].numel())
        tiles = int(meta["tile_width"] * meta["tile_height"]) * batch
        offs = meta["isect_offsets"].flatten()
        counts = torch.diff(torch.cat([offs, offs.new_tensor([n_isect])]))
        busy = counts[counts > 0].float()
        a = alpha.detach().float()
        print(
            f"N={n} res={res} B={batch} per_image={per_image}: image {tuple(img.shape)} alpha {tuple(alpha.shape)} "
            f"fwd {fwd_ms:.2f} ms fwd+bwd {fb_ms:.2f} ms (host clock); "
            f"alpha>0.5 {float((a > 0.5).float().mean()):.3f}, mean {float(a.mean()):.3f}; "
            f"isects {n_isect} ({n_isect / n / batch:.2f}/Gaussian), busy tiles {busy.numel()}/{tiles}, "
            f"per busy tile mean {float(busy.mean()):.0f} max {float(busy.max()):.0f}; "
            f"finite {bool(torch.isfinite(img).all())}; scene {sc.info}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
