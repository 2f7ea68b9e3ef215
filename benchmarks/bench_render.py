"""Speed of a talker's audio -> frame path, per stage (one GPU, or the CPU).

    python benchmarks/bench_render.py [--talker T] [--size 512] [--json out.json]

Stages: the audio front end (log-mel windows, CPU), the audio encoder, and the frame
path (compose_latent -> synthesis -> decode -> skinning -> rasterize -> composite)
eager and replayed from a captured CUDA graph (with ``GraphStatus`` checking every
replay batch for overflow), at B = 1 (one stream) and batched; plus the first-frame
latency of ``talker.stream``. Timings: CUDA events, warm-up first, the median of many
runs; FPS = frames per second of the whole audio -> frame path where stated.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np
import torch


def cuda_ms(fn, warmup=10, iters=50) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def cpu_ms(fn, warmup=1, iters=5) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t))
    return statistics.median(times)


def speech(seconds: float, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 160 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


SOURCE_SUFFIXES = (".py", ".cu", ".cuh", ".cpp", ".h", ".hpp")


def source_digest(root: Path) -> str:
    """SHA-256 over the relative paths and bytes of the source files under python/ and csrc/."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(p for d in ("python", "csrc") for p in (root / d).rglob("*")
                    if p.is_file() and p.suffix in SOURCE_SUFFIXES and "__pycache__" not in p.parts):
        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def main() -> None:
    from dgtalker import audio as A
    from dgtalker.ops.raster import GraphStatus
    from dgtalker.talker import load_talker

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--talker", help="talker checkpoint (default: the shipped demo talker)")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32, 64])
    ap.add_argument("--json")
    ap.add_argument("--compile", action="store_true",
                    help="Talker.fast(compile=True): the synthesis network through torch.compile")
    a = ap.parse_args()
    dev = torch.device("cuda")
    T = load_talker(a.talker, device=dev)  # synthesis weights channels-last (Talker.fast)
    if a.compile:
        T.fast(compile=True)
    S = a.size
    res: dict = {"size": S, "device": torch.cuda.get_device_name(), "torch": torch.__version__,
                 "host": platform.node(), "synthesis": "torch.compile + channels-last" if a.compile else "channels-last"}
    try:
        res["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        # a copied tree can carry a stale HEAD: say so when its sources are not that commit's
        if subprocess.run(["git", "status", "--porcelain", "--", "python", "csrc"], capture_output=True,
                          text=True).stdout.strip():
            res["commit"] += "+modified"
    except OSError:
        pass
    # what ran, whatever the copy's git metadata says (a copied tree can carry a stale HEAD):
    # the same digest of the sources at a commit identifies it
    res["source_sha256"] = source_digest(Path(__file__).resolve().parents[1])

    # audio features (log-mel, and the speech front end if the talker has one): 10 s of speech
    x = speech(10.0)
    mel_of = lambda: A.log_mel(x)  # noqa: E731
    res["audio_features_ms_per_frame"] = cpu_ms(lambda: T.clip_windows(mel_of(), 250, 25.0)) / 250
    res["speech_frontend"] = T.frontend is not None
    win = T.clip_windows(mel_of(), 250, 25.0).to(dev)
    with torch.no_grad():
        res["encoder_ms_per_frame_batched"] = cuda_ms(lambda: T.encoder(win)) / len(win)
    c_exp, c_lip = (t.contiguous() for t in T.coefficients(win))
    vm, K = T.camera(S, S)
    vm, K = vm.to(dev), K.to(dev)

    rows = []
    for B in a.batch:
        ce, cl = c_exp[:B].clone(), c_lip[:B].clone()
        vms, Ks = vm.expand(B, -1, -1).contiguous(), K.expand(B, -1, -1).contiguous()

        def step():
            with torch.no_grad():
                return T.frames(ce, cl, vms, Ks, S, S, amp=True)

        def synth_only():
            with torch.no_grad():
                _, styles = T.latents(ce, cl)
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    if T._fast_synthesis is not None:
                        return T._fast_synthesis(styles)
                    return T.generator.synthesize(styles)

        eager = cuda_ms(step)
        synth = cuda_ms(synth_only)
        step()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        status = GraphStatus()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            step()
        torch.cuda.current_stream().wait_stream(s)
        with status, torch.cuda.graph(graph):
            out = step()
        replay = cuda_ms(graph.replay)
        overflow = status.check()
        ref = step()[0]
        same = float((out[0] - ref).abs().max())
        rows.append({"batch": B, "eager_ms": eager, "graph_ms": replay, "synthesis_eager_ms": synth,
                     "graph_fps": 1000 * B / replay, "eager_fps": 1000 * B / eager, "graph_overflow": bool(overflow),
                     "graph_vs_eager_max_abs": same})
        print(f"B={B:3d}: eager {eager:7.3f} ms ({1000 * B / eager:7.0f} FPS), graph {replay:7.3f} ms "
              f"({1000 * B / replay:7.0f} FPS), synthesis alone {synth:6.3f} ms", flush=True)
    res["frame_path"] = rows

    # the cost of rendering checked (training never applies a step from an overflowed forward)
    import dgtalker

    B = 8
    with torch.no_grad():
        g = [t.detach() for t in T.gaussians(c_exp[:B], c_lip[:B])]
    g = [t.clone().requires_grad_(t.is_floating_point()) for t in g]
    vms, Ks = vm.expand(B, -1, -1).contiguous(), K.expand(B, -1, -1).contiguous()
    zero = torch.zeros(3, device=dev)

    def fwd_bwd(checked):
        img, alpha, _ = dgtalker.rasterize(*g, vms, Ks, S, S, background=zero, checked=checked)
        (img.mean() + alpha.mean()).backward()

    res["raster_fwd_bwd_b8_ms"] = {"unchecked": cuda_ms(lambda: fwd_bwd(False)),
                                   "checked": cuda_ms(lambda: fwd_bwd(True))}
    print("rasterize forward+backward, B=8:", res["raster_fwd_bwd_b8_ms"], flush=True)

    # first-frame latency of streaming: 40 ms chunks, wall time from the first chunk
    x = speech(2.0)
    chunks = [x[i:i + 640] for i in range(0, len(x), 640)]
    for _ in range(2):
        t0 = time.perf_counter()
        it = T.stream(iter(chunks), width=S, height=S)
        first = next(it)
        torch.cuda.synchronize()
        latency = time.perf_counter() - t0
        rest = sum(1 for _ in it)
    res["stream_first_frame_ms_compute"] = 1000 * latency
    res["stream_lookahead_s"] = T.causal_encoder.lookahead_seconds()
    res["stream_frames"] = 1 + rest
    del first
    print(json.dumps({k: v for k, v in res.items() if k != "frame_path"}, indent=1))
    if a.json:
        from dgtalker.io import atomic_write_json

        atomic_write_json(Path(a.json), res)


if __name__ == "__main__":
    main()
