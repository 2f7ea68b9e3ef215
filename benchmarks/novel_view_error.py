"""Where a talker's novel-view error sits, per |yaw| (the synthetic clip's novel views):

- **never-seen surface**: which Gaussians the training cameras see at all. One
  backward pass of the rasterizer per batch of training frames gives, per Gaussian,
  the sum of its blending weights over their pixels (the gradient of the summed image
  with respect to its colour); below ``--seen`` it counts as never seen. A novel
  view's pixel is never-seen surface where such Gaussians make up most of its alpha;
- **outline band**: pixels within ``--band`` pixels of the ground truth's foreground
  outline (silhouette misplacement shows there).

For each, its share of the pixels and of the squared error, and the PSNR without it.
Also the outline error (mean |alpha - the truth's foreground|) of the talker and of the
untuned prior at the same latents (what the tuning does to the silhouette where the
clip shows it and beyond), the PSNR of every novel camera (signed yaw x pitch), and
how far the clip's own cameras turn around the head (``camera.orbit_angles``): views outside that range are
extrapolated. Both sides are composited over one grey, as ``dgtalker eval`` does for
novel views.

    python benchmarks/novel_view_error.py --talker T.safetensors --data data/id007 [--json OUT]
"""
from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def visibility(T, data, frames, ce, cl, size: int, batch: int = 9) -> torch.Tensor:
    """Per Gaussian: summed blending weight over the pixels of ``frames``' renders."""
    from dgtalker.eval.evaluate import view_cameras

    total = None
    for chunk in np.array_split(frames, max(1, len(frames) // batch)):
        w2c, K = view_cameras(data, chunk, size, data.width, data.height, "cpu")
        with torch.no_grad():
            g = T.clip_gaussians(ce[chunk], cl[chunk], w2c)
        colors = g[4].clone().requires_grad_(True)
        img, _ = T.rasterize((*g[:4], colors), w2c, K, size, size, background=torch.zeros(3))
        img.sum().backward()
        v = colors.grad.mean(-1).sum(0)
        total = v if total is None else total + v
    return total


def outline(mask: torch.Tensor, r: int) -> torch.Tensor:
    m = mask[None, None].float()
    grown = F.max_pool2d(m, 2 * r + 1, 1, r)
    shrunk = -F.max_pool2d(-m, 2 * r + 1, 1, r)
    return (grown - shrunk)[0, 0] > 0.5


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--talker", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True, help="a synthetic clip with novel/ views")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--every", type=int, default=25, help="every N-th training frame for the visibility pass")
    ap.add_argument("--seen", type=float, default=1e-3, help="summed blending weight below which a Gaussian is never seen")
    ap.add_argument("--band", type=int, default=3, help="outline band half-width in pixels at --size")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()

    from dgtalker.camera import orbit_angles
    from dgtalker.data import load
    from dgtalker.eval.evaluate import GroundTruth, clip_coefficients, novel_view_cameras
    from dgtalker.prior import load_prior
    from dgtalker.talker import load_talker

    T = load_talker(a.talker, device="cpu")
    untuned = copy.deepcopy(T)  # the same talker on the prior's own network
    untuned.generator.load_state_dict(load_prior(device="cpu").state_dict())
    data = load(a.data)
    nv = data.novel
    if nv is None:
        raise SystemExit(f"{a.data} has no novel views")
    ce, cl = clip_coefficients(T, data)
    train = np.asarray(data.splits["train"])[:: a.every]
    seen = (visibility(T, data, train, ce, cl, a.size) > a.seen).float()
    grey = torch.full((3,), 0.5)
    truth = GroundTruth(nv, a.size, "cpu")
    signed_yaw, pitch = np.asarray(nv.extra["yaw_deg"]), np.asarray(nv.extra.get("pitch_deg", np.zeros(len(nv))))
    yaw = np.abs(signed_yaw)
    rows: dict = {}
    grid: dict = {}
    for i in range(len(nv)):
        f, w2c, K, frame_w2c = novel_view_cameras(data, np.array([i]), a.size, "cpu")
        gt, m = truth([i])
        gt = gt * m[..., 3:4] + grey * (1 - m[..., 3:4])
        with torch.no_grad():
            g = T.clip_gaussians(ce[f], cl[f], frame_w2c)
            img, alpha = T.rasterize(g, w2c, K, a.size, a.size, background=grey)
            seen_alpha, _ = T.rasterize((*g[:4], seen[None, :, None].expand(1, -1, 3).contiguous()), w2c, K,
                                        a.size, a.size, background=torch.zeros(3))
            _, prior_alpha = untuned.rasterize(untuned.clip_gaussians(ce[f], cl[f], frame_w2c), w2c, K,
                                               a.size, a.size, background=grey)
        err = ((img.clamp(0, 1) - gt) ** 2).mean(-1)[0]
        regions = {"never_seen": (alpha[0] - seen_alpha[0, ..., 0]) > 0.5,
                   "outline": outline(m[0, ..., 3] > 0.5, a.band)}
        r = rows.setdefault(int(yaw[i]), {"mse": []})
        r["mse"].append(float(err.mean()))
        r.setdefault("alpha_error", []).append(float((alpha[0] - m[0, ..., 3]).abs().mean()))
        r.setdefault("prior_alpha_error", []).append(float((prior_alpha[0] - m[0, ..., 3]).abs().mean()))
        grid.setdefault((int(pitch[i]), int(signed_yaw[i])), []).append(float(err.mean()))
        for name, px in regions.items():
            r.setdefault(name + "_pixels", []).append(float(px.float().mean()))
            r.setdefault(name + "_error", []).append(float(err[px].sum() / err.sum()))
            r.setdefault("mse_without_" + name, []).append(float(err[~px].sum() / err.numel()))
    out = {}
    print("| |yaw| | PSNR | never-seen: pixels / error | PSNR without it | outline band: pixels / error | "
          "PSNR without it | outline error: talker / untuned prior |\n|---|---|---|---|---|---|---|")
    for b in sorted(rows):
        r = rows[b]
        db = lambda k: float(np.mean([-10 * np.log10(x) for x in r[k]]))  # noqa: E731
        pct = lambda k: 100 * float(np.mean(r[k]))  # noqa: E731
        out[b] = {"psnr": db("mse"), "views": len(r["mse"]), **{
            f"{n}_{q}": pct(f"{n}_{q}") for n in ("never_seen", "outline") for q in ("pixels", "error")},
            "psnr_without_never_seen": db("mse_without_never_seen"), "psnr_without_outline": db("mse_without_outline"),
            "alpha_error": pct("alpha_error"), "prior_alpha_error": pct("prior_alpha_error")}
        o = out[b]
        print(f"| {b}° | {o['psnr']:.2f} | {o['never_seen_pixels']:.1f}% / {o['never_seen_error']:.1f}% | "
              f"{o['psnr_without_never_seen']:.2f} | {o['outline_pixels']:.1f}% / {o['outline_error']:.1f}% | "
              f"{o['psnr_without_outline']:.2f} | {o['alpha_error']:.2f}% / {o['prior_alpha_error']:.2f}% |")
    print(f"never seen: {int((seen == 0).sum())} of {seen.numel()} Gaussians "
          f"({len(train)} training frames at {a.size}²)")
    yaws, pitches = sorted({k[1] for k in grid}), sorted({k[0] for k in grid})
    psnr_grid = {f"{p},{y}": float(np.mean([-10 * np.log10(x) for x in grid[(p, y)]])) for p, y in grid}
    print("\nPSNR per novel camera\n| pitch \\ yaw | " + " | ".join(f"{y}°" for y in yaws) + " |\n|"
          + "---|" * (len(yaws) + 1))
    for p in pitches:
        print(f"| {p}° | " + " | ".join(f"{psnr_grid.get(f'{p},{y}', float('nan')):.2f}" for y in yaws) + " |")
    ang = orbit_angles(data.w2c[np.asarray(data.splits["train"])])
    reach = {name: [float(v) for v in np.percentile(ang[:, k], [0, 5, 50, 95, 100])]
             for k, name in enumerate(("yaw", "pitch"))}
    print("training cameras around the head (min / 5% / median / 95% / max): "
          + "; ".join(f"{n} " + " / ".join(f"{v:.1f}°" for v in q) for n, q in reach.items()))
    if a.json:
        a.json.write_text(json.dumps({"talker": str(a.talker), "per_yaw": out,
                                      "psnr_per_camera": psnr_grid, "training_camera_angles": reach,
                                      "never_seen_gaussians": int((seen == 0).sum()),
                                      "gaussians": int(seen.numel())}, indent=1))


if __name__ == "__main__":
    main()
