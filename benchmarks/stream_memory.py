"""Memory of ``talker.stream`` over a long stream: resident memory (RSS) after every
minute of audio, fed in 40 ms chunks.

    python benchmarks/stream_memory.py [--minutes 10] [--talker T] [--size 32]

Without --talker a tiny untrained talker is used: the per-frame work differs, the
buffers kept between frames (mel ring, embeddings, frame state) are the same code.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--talker")
    ap.add_argument("--size", type=int, default=32)
    a = ap.parse_args()
    import torch

    from dgtalker.talker import Talker, TalkerConfig, load_talker

    if a.talker:
        T = load_talker(a.talker)
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        from priors import TINY

        from dgtalker.models.generator import Generator, GeneratorConfig

        T = Talker(Generator(GeneratorConfig(**TINY)), TalkerConfig(k_exp=2, k_lip=2, width=a.size, height=a.size))
        import dgtalker

        vm, K = dgtalker.camera.orbit(0, 0, width=a.size, height=a.size)
        with torch.no_grad():
            T.default_w2c.copy_(vm)
            T.body_w2c.copy_(vm)
            T.default_K.copy_(K)
    rate, chunk = 16000, 640
    total = int(a.minutes * 60 * rate)
    rng = np.random.default_rng(0)

    def chunks():
        t = 0
        while t < total:
            n = min(chunk, total - t)
            tt = (t + np.arange(n)) / rate
            yield (0.3 * np.sin(2 * np.pi * 150 * tt) * (0.5 + 0.5 * np.sin(2 * np.pi * 2.7 * tt))
                   + 0.01 * rng.standard_normal(n)).astype(np.float32)
            t += n

    marks = []
    start = time.perf_counter()
    frames_per_minute = 25 * 60
    for k, _ in enumerate(T.stream(chunks(), width=a.size, height=a.size), 1):
        if k % frames_per_minute == 0:
            marks.append((k // frames_per_minute, rss_mib(), time.perf_counter() - start))
            print(f"minute {marks[-1][0]:3d}: RSS {marks[-1][1]:8.1f} MiB, {marks[-1][2]:7.1f} s", flush=True)
    if len(marks) >= 2:
        print(f"RSS change from minute 1 to {marks[-1][0]}: {marks[-1][1] - marks[0][1]:+.1f} MiB")


if __name__ == "__main__":
    main()
