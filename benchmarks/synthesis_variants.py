"""How fast can the talker's synthesis network run batched? The same styles through
variants of one network (bf16 autocast as shipped; channels-last memory; torch.compile),
each checked against the shipped path, timed with CUDA events (median of 50 after
warm-up).

    python benchmarks/synthesis_variants.py [--batch 32 64] [--json out.json]"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
import time

import torch

from bench_render import cuda_ms  # this folder is on sys.path when run as a script


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--json")
    a = ap.parse_args()
    from dgtalker.talker import load_talker

    dev = torch.device("cuda")
    T = load_talker(None, device=dev)
    G = T.generator
    print("generator:", G.config)
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": []}
    syn = G.synthesis
    compiled = torch.compile(syn, dynamic=False)  # max-autotune took over 5 minutes to compile here
    for B in a.batch:
        with torch.no_grad():
            w = T.w_can[None].expand(B, -1) + 0.3 * torch.randn(B, T.w_can.numel(), device=dev)
            styles = G.styles(w)

        def shipped():
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                return syn(styles)

        def channels_last():
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                return syn(styles)

        def comp():
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                return compiled(styles)

        ref = shipped().float()
        row = {"batch": B, "shipped_ms": cuda_ms(shipped)}
        t0 = time.perf_counter()
        out = comp().float()
        row["compile_s"] = time.perf_counter() - t0
        row["compiled_ms"] = cuda_ms(comp)
        row["compiled_max_rel"] = float((out - ref).abs().max() / ref.abs().max())
        syn.to(memory_format=torch.channels_last)
        row["channels_last_ms"] = cuda_ms(channels_last)
        row["channels_last_max_rel"] = float((channels_last().float() - ref).abs().max() / ref.abs().max())
        syn.to(memory_format=torch.contiguous_format)
        print(json.dumps(row), flush=True)
        res["rows"].append(row)
    if a.json:
        from dgtalker.io import atomic_write_json

        atomic_write_json(Path(a.json), res)


if __name__ == "__main__":
    main()
