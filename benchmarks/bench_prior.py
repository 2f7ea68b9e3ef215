"""Speed of the whole frame path on the GPU: blendshape coefficients -> styles
(compose_latent) -> synthesis network -> decode -> rasterize, single-frame latency
per stage (eager and CUDA-graph replayed) and batched throughput.

    python benchmarks/bench_prior.py [--prior PRIOR] [--res 512] [--batch 1 8 32] [--json out.json]
"""
from __future__ import annotations

import argparse
from pathlib import Path
import statistics
import sys

import torch



def median_ms(fn, iters: int = 50, warmup: int = 10) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(iters):
        torch.cuda.synchronize()
        s.record()
        fn()
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e))
    return statistics.median(times)


def main(argv=None) -> int:
    import dgtalker
    from dgtalker.camera import orbit
    from dgtalker.checkpoint import load_prior
    from dgtalker.models.generator import Generator
    from dgtalker.ops.latent import compose_latent

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prior", default=None, help="a prior checkpoint (default: an untrained default-size generator)")
    ap.add_argument("--res", type=int, default=512)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--blendshapes", type=int, default=32, help="Ke = Kl")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    dev = torch.device("cuda")
    gen = load_prior(args.prior, device=dev) if args.prior else Generator().to(dev)
    gen.eval()
    for p in gen.parameters():
        p.requires_grad_(False)
    D, K, R = gen.config.w_dim, args.blendshapes, args.res
    g = torch.Generator().manual_seed(0)
    w_can = gen.mean_w().to(dev)
    B_exp = (0.3 * torch.randn(K, D, generator=g)).to(dev)
    B_lip = (0.3 * torch.randn(K, D, generator=g)).to(dev)
    vm, Km = orbit(10.0, 5.0, width=R, height=R)
    results = {"device": torch.cuda.get_device_name(), "gaussians": gen.num_gaussians, "res": R,
               "styles": gen.num_styles, "params": sum(p.numel() for p in gen.parameters()), "batches": {}}

    for F in args.batch:
        c_exp = torch.randn(F, K, generator=g).to(dev) * 0.5
        c_lip = torch.randn(F, K, generator=g).to(dev) * 0.5
        viewmats, Ks = vm[None].repeat(F, 1, 1).to(dev), Km[None].repeat(F, 1, 1).to(dev)
        bg = torch.ones(3, device=dev)
        state = {}

        def compose():
            state["styles"] = compose_latent(w_can, B_exp, B_lip, c_exp, c_lip, gen.affine_weight, gen.affine_bias)[1]

        def synth():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                state["raw"] = gen.synthesize(state["styles"])

        def decode():
            state["gauss"] = gen.decode(state["raw"].float())

        def raster():
            state["image"] = dgtalker.rasterize(*state["gauss"], viewmats, Ks, R, R, background=bg)[0]

        def frame():
            compose(); synth(); decode(); raster()

        with torch.no_grad():
            rec = {name: median_ms(fn) for name, fn in (("compose", compose), ("synthesis", synth),
                                                         ("decode", decode), ("rasterize", raster))}
            rec["end_to_end_eager"] = median_ms(frame)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    frame()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                frame()
            rec["end_to_end_graph"] = median_ms(graph.replay)
        rec["images_per_s_graph"] = 1000.0 * F / rec["end_to_end_graph"]
        rec["images_per_s_eager"] = 1000.0 * F / rec["end_to_end_eager"]
        results["batches"][str(F)] = rec
        del graph

    print(f"# {results['device']}: {results['gaussians']} Gaussians, {R}x{R}, {results['params'] / 1e6:.2f} M params")
    print("| B | compose | synthesis (bf16) | decode | rasterize | frame eager | frame graph | images/s (graph) |")
    print("|---|---|---|---|---|---|---|---|")
    for F, r in results["batches"].items():
        print(f"| {F} | {r['compose']:.3f} | {r['synthesis']:.3f} | {r['decode']:.3f} | {r['rasterize']:.3f} | "
              f"{r['end_to_end_eager']:.3f} | {r['end_to_end_graph']:.3f} | {r['images_per_s_graph']:.0f} |")
    print("ms, median of 50 after warm-up; stage times are each stage alone (CUDA events, synchronized).")
    if args.json:
        from dgtalker.io import atomic_write_json

        atomic_write_json(Path(args.json), results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
