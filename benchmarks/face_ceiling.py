"""Where a real talker's blur comes from: the same frames fitted with more and more
freedom, scored per region (head, face, lower / upper face, rest of the head, torso,
background, whole frame; PSNR, SSIM and the detail ratio of ``dgtalker eval``), on
training and held-out frames.

    python benchmarks/face_ceiling.py DATA TALKER --json ceiling.json [--frames 40] [--steps 1500]

From least to most freedom, all with the talker's own cameras, torso pose and plate:

- ``audio``: the talker from each frame's audio alone (what a user gets);
- ``residual``: training frames with their learned expression residual and blink (what
  training fitted through the talker's per-frame paths);
- ``paths``: the talker's per-frame paths fitted to each frame, training or held-out
  (its speech-driven and residual coefficients ``c_exp``, ``c_lip`` and the blink amount
  free per frame, the network fixed): what those paths can express at all;
- ``rigid``: the audio-driven head with a rigid correction of each frame's head pose
  fitted to that frame (3 rotation and 3 translation parameters, the coefficients as
  from audio): what the tracked poses cost;
- ``shading``: the audio-driven render with a smooth colour change of each frame's head
  fitted to that frame in closed form (per channel, gain and offset linear in the image's
  x and y, inside the head mask): what light changing over the head (the head turning
  under a fixed light, exposure) costs; on held-out frames also ``shading_from_pose``, the
  same change predicted from the frame's head pose by a ridge regression fitted on the
  training frames' changes (what a pose-driven shading layer could recover), and
  ``shading_mean``, their mean change (what needs no pose);
- ``static``: ONE set of raw UV maps (no generator) fitted to all the training frames
  scored: the ceiling of a head that does not change from frame to frame;
- ``one``: the raw maps fitted to a single training frame, for ``--single`` frames each:
  what the representation can hold.

``static`` below ``residual`` or ``paths`` says the per-frame paths help; ``paths`` far
below ``one`` says they cannot express what changes between frames (brows, lids, lips,
hair, light); ``audio`` below ``paths`` on held-out frames is what speech does not
predict. Needs a GPU for the defaults (a few minutes on an H100); keep the output out
of the repository when DATA is footage the project may not ship.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from dgtalker.eval import metrics as M
from dgtalker.eval.evaluate import GroundTruth, clip_coefficients, clip_torso, spread_frames, view_cameras
from dgtalker.metrics import photometric_loss

FITS = ("audio", "residual", "rigid", "shading", "paths", "static", "one")


def scores(img: torch.Tensor, gt: torch.Tensor, masks: torch.Tensor) -> list[dict]:
    rows = []
    for r, g, m in zip(img.clamp(0, 1), gt, masks):
        row = {"whole_psnr": M.psnr(r, g), "whole_ssim": M.ssim(r, g), "head_psnr": M.psnr(r, g, m[..., 0])}
        for name, sc in M.region_scores(r, g, m).items():
            row.update({f"{name}_{q}": v for q, v in sc.items()})
        rows.append(row)
    return rows


def mean_rows(rows: list[dict]) -> dict:
    return {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0]} if rows else {}


class Frames:
    """Ground truth, cameras and the talker's coefficients of some frames, on the device."""

    def __init__(self, talker, dataset, idx, size, coefficients, device):
        self.idx = np.asarray(idx)
        self.gt, self.masks = GroundTruth(dataset, size, device)(self.idx)
        self.w2c, self.K = view_cameras(dataset, self.idx, size, dataset.width, dataset.height, device)
        ce, cl = coefficients
        self.ce, self.cl = ce[self.idx].to(device), cl[self.idx].to(device)
        i = torch.from_numpy(self.idx).to(device)
        self.residual = talker.residual_track.detach()[i]
        self.blink = talker.blink_track.detach()[i]
        self.torso = clip_torso(dataset, self.idx, device)

    def torso_of(self, k):
        """The tracked torso offsets of rows ``k`` (a slice or an index tensor), or None."""
        return None if self.torso is None else self.torso[k]

    def __len__(self):
        return len(self.idx)


def render_raw(talker, raw, w2c, K, size, torso=None):
    g = talker.pose_clip(talker.generator.decode(raw.contiguous()), w2c, torso=torso)
    return talker.rasterize(g, w2c, K, size, size, checked=True if raw.is_cuda else None)[0]


def talker_renders(talker, fr: Frames, size, batch, *, residual: bool = False):
    """``(rows k, renders)`` of the frames, ``batch`` at a time: from audio alone, or with
    each training frame's learned residual and blink."""
    with torch.no_grad():
        for s in range(0, len(fr), batch):
            k = slice(s, s + batch)
            ce = fr.ce[k] + (fr.residual[k] if residual else 0)
            img, _ = talker.clip_frames(ce, fr.cl[k], fr.w2c[k], fr.K[k], size, size,
                                        blink=fr.blink[k] if residual else None, checked=True,
                                        torso=fr.torso_of(k))
            yield k, img


def render_talker(talker, fr: Frames, size, batch, *, residual: bool):
    rows = []
    for k, img in talker_renders(talker, fr, size, batch, residual=residual):
        rows += scores(img, fr.gt[k], fr.masks[k])
    return mean_rows(rows)


def _shading_design(img: torch.Tensor) -> torch.Tensor:
    """``[n, H, W, 3, 6]``: per pixel and channel the terms of a gain and an offset, each
    linear in the image's x and y (from -1 to 1)."""
    n, H, W, _ = img.shape
    v, u = torch.meshgrid(torch.linspace(-1, 1, H, device=img.device), torch.linspace(-1, 1, W, device=img.device),
                          indexing="ij")
    u, v = u[None, :, :, None].expand_as(img), v[None, :, :, None].expand_as(img)
    return torch.stack([img, img * u, img * v, torch.ones_like(img), u, v], -1)


IDENTITY_SHADING = torch.tensor([1.0, 0, 0, 0, 0, 0])


def shade(img: torch.Tensor, head: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """``img`` with the colour change ``theta [n, 3, 6]`` applied inside the (soft) head mask."""
    changed = (_shading_design(img) * theta[:, None, None]).sum(-1)
    return img + head[..., None] * (changed - img)


def fit_shading(img: torch.Tensor, gt: torch.Tensor, head: torch.Tensor, ridge: float = 1e-3) -> torch.Tensor:
    """``theta [n, 3, 6]``: per frame and channel, the weighted least-squares change that
    takes the render closest to the truth inside the head mask (ridge towards no change)."""
    X = _shading_design(img) * head[..., None, None].sqrt()
    y = gt * head[..., None].sqrt()
    X, y = X.permute(0, 3, 1, 2, 4).flatten(2, 3), y.permute(0, 3, 1, 2).flatten(2)  # [n, 3, P, 6], [n, 3, P]
    A = X.transpose(-1, -2) @ X
    lam = ridge * A.diagonal(dim1=-2, dim2=-1).mean(-1, keepdim=True)[..., None] * torch.eye(6, device=img.device)
    b = (X.transpose(-1, -2) @ y[..., None])[..., 0] + (lam @ IDENTITY_SHADING.to(img.device))
    return torch.linalg.solve(A + lam, b)


def pose_features(w2c: torch.Tensor) -> torch.Tensor:
    """``[n, 12]``: each frame's head-to-camera rotation and translation (metres), flattened."""
    return torch.cat([w2c[:, :3, :3].flatten(1), w2c[:, :3, 3]], 1)


def render_shaded(talker, fr: Frames, size, batch, predictors=None):
    """Audio-driven renders, each rendered once, with each frame's own fitted colour change,
    and with the changes each of ``predictors`` (name: a function of pose features) gives.
    Returns ({"shading": scores, name: scores, ...}, the fitted changes [n, 3, 6])."""
    predictors = predictors or {}
    rows = {name: [] for name in ("shading", *predictors)}
    thetas = []
    for k, img in talker_renders(talker, fr, size, batch):
        img, head = img.clamp(0, 1), fr.masks[k][..., 0]
        theta = fit_shading(img, fr.gt[k], head)
        thetas.append(theta)
        features = pose_features(fr.w2c[k])
        for name in rows:
            change = theta if name == "shading" else predictors[name](features)
            rows[name] += scores(shade(img, head, change), fr.gt[k], fr.masks[k])
    return {name: mean_rows(r) for name, r in rows.items()}, torch.cat(thetas)


def pose_shading_predictor(features: torch.Tensor, thetas: torch.Tensor, ridge: float = 1.0):
    """A ridge regression from standardised pose features to colour changes."""
    mu, sd = features.mean(0), features.std(0) + 1e-6
    Z = torch.cat([(features - mu) / sd, torch.ones(len(features), 1, device=features.device)], 1)
    Y = thetas.flatten(1)
    reg = ridge * torch.eye(Z.shape[1], device=Z.device)
    reg[-1, -1] = 0
    W = torch.linalg.solve(Z.T @ Z + reg, Z.T @ Y)

    def predict(f):
        z = torch.cat([(f - mu) / sd, torch.ones(len(f), 1, device=f.device)], 1)
        return (z @ W).view(len(f), *thetas.shape[1:])
    return predict


def fit_paths(talker, fr: Frames, size, batch, steps, lr=0.05):
    """Per-frame ``c_exp``, ``c_lip`` and blink fitted to each frame, the talker fixed."""
    rows = []
    for s in range(0, len(fr), batch):
        k = slice(s, s + batch)
        ce = (fr.ce[k] + fr.residual[k]).clone().requires_grad_(True)
        cl = fr.cl[k].clone().requires_grad_(True)
        b = torch.full((ce.shape[0],), -2.0, device=ce.device, requires_grad=True)  # sigmoid: 0.12
        opt = torch.optim.Adam([ce, cl, b], lr=lr)
        for _ in range(steps):
            img, _ = talker.clip_frames(ce, cl, fr.w2c[k], fr.K[k], size, size, blink=torch.sigmoid(b),
                                        checked=True if ce.is_cuda else None, torso=fr.torso_of(k))
            loss = photometric_loss(img, fr.gt[k])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            img, _ = talker.clip_frames(ce, cl, fr.w2c[k], fr.K[k], size, size, blink=torch.sigmoid(b),
                                        checked=True, torso=fr.torso_of(k))
            rows += scores(img, fr.gt[k], fr.masks[k])
    return mean_rows(rows)


def fit_rigid(talker, fr: Frames, size, batch, steps, lr=2e-3):
    """Each frame's head moved by a rigid motion fitted to that frame, the coefficients as
    from its audio, the camera and the torso where the clip has them (the shoulders keep
    their place; the neck blends as the torso's skinning does)."""
    from dgtalker.talker import rigid_motion

    rows, moves = [], []
    for s in range(0, len(fr), batch):
        k = slice(s, s + batch)
        with torch.no_grad():
            g = talker.gaussians(fr.ce[k], fr.cl[k])
        # rotation vector (radians) and translation (metres), both small
        params = torch.zeros(g[0].shape[0], 6, device=g[0].device, requires_grad=True)
        opt = torch.optim.Adam([params], lr=lr)

        def frame(p, checked):
            head = rigid_motion(p)
            posed = talker.with_mouth(talker.pose_clip(g, fr.w2c[k], torso=fr.torso_of(k), head=head), fr.cl[k],
                                      head=head)
            return talker.rasterize(posed, fr.w2c[k], fr.K[k], size, size, checked=checked)[0]

        for _ in range(steps):
            loss = photometric_loss(frame(params, True if params.is_cuda else None), fr.gt[k])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            rows += scores(frame(params, True), fr.gt[k], fr.masks[k])
        p = params.detach().cpu()
        moves += [{"degrees": float(r.norm() * 180 / np.pi), "mm": float(t.norm() * 1000)}
                  for r, t in zip(p[:, :3], p[:, 3:])]
    out = mean_rows(rows)
    out["median_degrees"] = float(np.median([m["degrees"] for m in moves]))
    out["median_mm"] = float(np.median([m["mm"] for m in moves]))
    out["moves"] = moves
    return out


def fit_raw(talker, fr: Frames, which: np.ndarray, size, batch, steps, lr=5e-3):
    """One set of raw maps (starting from the talker's at the frames' mean coefficients)
    fitted to frames ``which`` of ``fr`` (cycled ``batch`` at a time)."""
    with torch.no_grad():
        raw0 = talker.raw_maps(fr.ce[which].mean(0, keepdim=True), fr.cl[which].mean(0, keepdim=True))
    raw = raw0.clone().requires_grad_(True)
    opt = torch.optim.Adam([raw], lr=lr)
    order = torch.as_tensor(which)
    for step in range(steps):
        k = order[torch.arange(step * batch, (step + 1) * batch) % len(order)]
        img = render_raw(talker, raw.expand(len(k), -1, -1, -1), fr.w2c[k], fr.K[k], size, fr.torso_of(k))
        loss = photometric_loss(img, fr.gt[k])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return raw.detach()


def score_raw(talker, raw, fr: Frames, which, size, batch):
    rows = []
    with torch.no_grad():
        for s in range(0, len(which), batch):
            k = torch.as_tensor(which[s:s + batch])
            img = render_raw(talker, raw.expand(len(k), -1, -1, -1), fr.w2c[k], fr.K[k], size, fr.torso_of(k))
            rows += scores(img, fr.gt[k], fr.masks[k])
    return mean_rows(rows)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", help="the talker's training clip (a dgtalker dataset)")
    ap.add_argument("talker")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--frames", type=int, default=40, help="training and held-out frames scored, each (default 40)")
    ap.add_argument("--single", type=int, default=3, help="frames fitted one at a time (default 3)")
    ap.add_argument("--steps", type=int, default=1500, help="steps of each raw-map fit (default 1500)")
    ap.add_argument("--path-steps", type=int, default=100,
                    help="steps of each per-frame path fit and rigid pose fit (default 100)")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--fits", default=",".join(FITS), help=f"which fits, comma-separated (default {','.join(FITS)})")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args(argv)
    from dgtalker.data import load
    from dgtalker.io import atomic_write_json
    from dgtalker.talker import load_talker

    fits = [f for f in a.fits.split(",") if f]
    if unknown := set(fits) - set(FITS):
        ap.error(f"--fits: unknown {sorted(unknown)}; choose from {FITS}")
    dataset = load(a.data)
    talker = load_talker(a.talker, device=a.device)
    mask = talker.train_mask.cpu().numpy().astype(bool)
    if len(mask) != len(dataset):  # the residual codes and blinks are per frame of the training clip
        raise SystemExit(f"{a.talker} was trained on a clip of {len(mask)} frames, {a.data} has {len(dataset)}: "
                         "the ceilings compare a talker with its own clip (or a copy of it)")
    coefficients = clip_coefficients(talker, dataset)
    sets = {"train": spread_frames(np.nonzero(mask)[0], a.frames),
            "heldout": spread_frames(dataset.splits["heldout"], a.frames)}
    out = {"data": str(a.data), "talker": str(a.talker), "size": a.size, "steps": a.steps,
           "path_steps": a.path_steps, "frames": {k: [int(i) for i in v] for k, v in sets.items()}, "fits": {}}
    for name, idx in sets.items():
        fr = Frames(talker, dataset, idx, a.size, coefficients, a.device)
        res = out["fits"].setdefault(name, {})
        every = np.arange(len(fr))
        t0 = time.time()
        if "audio" in fits:
            res["audio"] = render_talker(talker, fr, a.size, a.batch, residual=False)
        if "residual" in fits and name == "train":
            res["residual"] = render_talker(talker, fr, a.size, a.batch, residual=True)
        if "rigid" in fits:
            res["rigid"] = fit_rigid(talker, fr, a.size, a.batch, a.path_steps)
        if "shading" in fits:
            if name == "train":
                shaded, thetas = render_shaded(talker, fr, a.size, a.batch)
                mean_change = thetas.mean(0)
                carried = {"shading_mean": lambda f: mean_change.expand(len(f), -1, -1),
                           "shading_from_pose": pose_shading_predictor(pose_features(fr.w2c), thetas)}
            else:  # the training frames' changes carried over: their mean, and as the pose predicts them
                shaded, _ = render_shaded(talker, fr, a.size, a.batch, carried)
            res.update(shaded)
        if "paths" in fits:
            with torch.enable_grad():
                res["paths"] = fit_paths(talker, fr, a.size, a.batch, a.path_steps)
        if "static" in fits:
            if name == "train":
                static = fit_raw(talker, fr, every, a.size, a.batch, a.steps)
            res["static"] = score_raw(talker, static, fr, every, a.size, a.batch)
        if "one" in fits and name == "train":
            rows = []
            for k in spread_frames(every, a.single):
                raw = fit_raw(talker, fr, np.array([k]), a.size, 1, a.steps)
                rows.append(score_raw(talker, raw, fr, np.array([k]), a.size, 1))
            res["one"] = mean_rows(rows)
        print(f"{name}: {len(fr)} frames, {time.time() - t0:.0f} s", flush=True)
        if a.json:  # after each set, so a run cut short keeps what it measured
            atomic_write_json(a.json, out)
    print(table(out))


def table(out: dict) -> str:
    cols = ("head_psnr", "face_psnr", "lower_face_psnr", "upper_face_psnr", "head_rest_psnr", "torso_psnr",
            "background_psnr", "whole_psnr", "whole_ssim", "face_detail", "head_rest_detail")
    lines = ["| frames | fit | " + " | ".join(c.replace("_psnr", "").replace("_", " ") for c in cols) + " |",
             "|---" * (len(cols) + 2) + "|"]
    for name, res in out["fits"].items():
        for fit, row in res.items():
            lines.append(f"| {name} | {fit} | " + " | ".join(f"{row[c]:.2f}" if c.endswith("psnr") else f"{row[c]:.3f}"
                                                            for c in cols) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
