"""Figures of a trained talker (for docs/talker.md):

    python benchmarks/talker_figures.py --talker id007.safetensors --data data/id007 --out docs/images/talker

- PREFIX_expression.png: one stretch of the clip's speech (rows: frames in time),
  rendered with the expression residual at zero (speech alone), with two seeded
  samples of the residual and the clip's blinks, and with every other frame's eyes
  closed by hand (``blink=1``; columns);
- PREFIX_components.png: what each blendshape does: every B_exp / B_lip component at
  -2σ, the clip's mean and +2σ of its coefficient over the clip.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from dgtalker.data import load
from dgtalker.eval.evaluate import clip_coefficients
from dgtalker.io import atomic_write_bytes, encode_image
from dgtalker.talker import load_talker


def _grid(rows):  # rows of [N, H, W, 3] tiles
    return torch.cat([torch.cat(list(r), 1) for r in rows], 0)


def _save(img, path: Path):
    atomic_write_bytes(path, encode_image((img.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy(), "png"))


def expression_figure(T, ds, out: Path, start: int, frames: int, stride: int, size: int):
    ce, cl = clip_coefficients(T, ds)
    idx = torch.arange(start, start + frames * stride, stride)
    vm, K = T.camera(size, size)
    n = len(idx)
    vm, K = vm.expand(n, -1, -1), K.expand(n, -1, -1)
    cols = []
    zero = torch.zeros(n, T.config.k_exp)
    by_hand = (torch.arange(n) % 2 == 0).float()  # every other frame closed
    variants = [(zero, None)]
    for seed in (1, 2):
        r, b = T.sample_expression(frames * stride, seed=seed)
        variants.append((r[::stride], b[::stride]))
    variants.append((zero, by_hand))
    for residual, blink in variants:
        with torch.no_grad():
            img, _ = T.frames(ce[idx] + residual, cl[idx], vm, K, size, size, blink=blink)
        cols.append(img)
    # rows = frames, columns = variants
    rows = [torch.stack([c[k] for c in cols]) for k in range(n)]
    _save(_grid(rows), out)


def components_figure(T, ds, out: Path, size: int, sigma: float = 2.0):
    from dgtalker.talker import blendshape_sheet

    ce, cl = clip_coefficients(T, ds)
    c = torch.cat([ce + T.residual_track.detach()[: len(ce)], cl], 1)
    blendshape_sheet(T, out, size=size, sigma=sigma, mean=c.mean(0), std=c.std(0))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--talker", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True, help="output prefix")
    ap.add_argument("--start", type=int, default=1350)
    ap.add_argument("--frames", type=int, default=6)
    ap.add_argument("--stride", type=int, default=5)
    ap.add_argument("--size", type=int, default=192)
    a = ap.parse_args()
    T = load_talker(a.talker)
    ds = load(a.data)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    expression_figure(T, ds, a.out.with_name(a.out.name + "_expression.png"), a.start, a.frames, a.stride, a.size)
    components_figure(T, ds, a.out.with_name(a.out.name + "_components.png"), a.size)
    print("wrote", a.out.with_name(a.out.name + "_expression.png"), a.out.with_name(a.out.name + "_components.png"))


if __name__ == "__main__":
    main()
