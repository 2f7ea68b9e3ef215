"""Identity training: a talking clip -> a ``Talker`` (dgtalker.talker).

Stages:

1. **Inversion**: the shipped (or given) prior's latent ``w`` is fitted to a few
   training frames (``dgtalker.invert``); it seeds ``w_can``.
2. **Joint training** of everything at once: the generator (synthesis, style
   affines and the per-texel output bias: pivotal tuning with a locality
   regulariser that keeps the *synthesis* close to the prior's for other latents,
   while the output bias is free to hold the person's detail), ``w_can``, the
   orthonormal blendshapes, the audio encoder, the per-frame expression residual
   and, distilled from the main encoder, the causal encoder.

A step takes ``pairs`` pairs of training frames (i, j) with different audio and
renders, in one rasterizer call:

- frame i with its own coefficients at camera i, frame j likewise (full
  reconstruction: L1 + SSIM over the whole frame composited over the background
  plate, plus |alpha - foreground|);
- **masked cross-view supervision**: ONE latent with the lip coefficients of audio
  i and the expression coefficients of audio j (plus j's residual), rendered at
  camera i and at camera j; the lower-face mask of frame i supervises the first
  render (its lips must match audio i), the upper-face mask of frame j the second
  (its expression must match frame j). ``cross_view=False`` drops these two images.

Regularisers: the residual codes' size and frame-to-frame change, the coefficients'
frame-to-frame change (no jitter), the causal encoder's distance to the main one;
optionally the prior's outlines at side views (``side_silhouette``).

Every step's frames come from a seeded RNG of (seed, step), so a resumed run is the
same run. ``OUT`` is the talker (safetensors), ``OUT.state.safetensors`` the
training state (talker in float32, optimizer, step, history; no pickle), both
written atomically, the state first; Ctrl-C saves before exiting. On CUDA the
rasterizer runs checked: a forward that overflowed its intersection buffers is
redone before the step's gradient is applied.
"""
from __future__ import annotations

import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..camera import resize_intrinsics
from ..io import atomic_write_bytes, atomic_write_json, encode_image
from .losses import photometric_loss, psnr

STATE_SUFFIX = ".state.safetensors"
STATE_FORMAT = "dgtalker-talker-training"
STATE_VERSION = 1


@dataclass
class IdentityTrainConfig:
    steps: int = 6000
    minutes: float = 0.0              # wall-clock budget (0: none); stops at whichever comes first
    resolution: int = 512             # training image size (square crops of the clip are resized)
    pairs: int = 2                    # frame pairs per step (3 latents and 4 images each)
    k_exp: int = 8
    k_lip: int = 8
    cross_view: bool = True
    lr_synthesis: float = 5e-4
    lr_output_bias: float = 2e-4      # much slower than the network: better side views (benchmarks.md, runs I, N1)
    lr_w: float = 1e-3
    lr_blendshapes: float = 3e-3
    lr_encoder: float = 5e-4
    lr_residual: float = 5e-2          # per-frame codes: each is drawn only every few hundred steps
    lr_eyelid: float = 1e-2           # the eyelid layer (raw-map offsets on the eye texels)
    blink_share: float = 0.1          # share of expression frames drawn among the clip's closed-eye frames
    ssim_weight: float = 0.2
    mask_weight: float = 0.5
    cross_weight: float = 1.0
    leak_weight: float = 0.05         # each branch's change on the wrong face region over its change on its own
    residual_reg: float = 1e-3        # mean ||residual||^2
    residual_smooth: float = 1e-3     # mean ||residual_t - residual_t+1||^2 (blinks last ~4 frames)
    coef_smooth: float = 1e-2         # mean ||c_t - c_t+1||^2 of the speech-driven coefficients
    coef_reg: float = 1e-4            # mean ||c||^2 (keeps coefficients O(1); the scales carry the size)
    locality: float = 1.0             # weight of the pivotal-tuning locality regulariser
    locality_every: int = 4
    distill_weight: float = 1.0       # causal encoder -> main encoder
    focus: float = 0.0                # share of expression frames drawn by their upper-face error (0: uniform)
    aniso_reg: float = 0.0            # penalty on needles (largest / middle axis above 4, or above 3 cm)
    side_silhouette: float = 0.0      # weight of the prior's silhouettes at side views the clip does not show
    side_resolution: int = 128        # image size of those side views
    random_background: float = 0.5    # share of steps composited over a random colour instead of the plate
    invert_steps: int = 150
    invert_resolution: int = 256
    invert_views: int = 16
    amp: bool = True                  # bf16 synthesis on CUDA
    seed: int = 0
    checkpoint_every: int = 500
    preview_every: int = 500
    half: bool = False                # store OUT's generator in float16 (the state stays float32)
    validate_every: int = 0           # steps between held-out checks (PSNR from audio alone; 0: off)
    validate_frames: int = 8          # held-out frames used by that check

    def validate(self) -> None:
        for name in ("steps", "resolution", "pairs", "checkpoint_every", "preview_every", "locality_every",
                     "side_resolution"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        for name in ("k_exp", "k_lip", "invert_steps", "invert_views", "validate_every", "validate_frames"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{name} must be a non-negative int, got {v!r}")
        if self.resolution > 2048 or self.invert_resolution > 2048 or self.invert_resolution < 8:
            raise ValueError("resolution and invert_resolution must be in [8, 2048]")
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, float) and (not math.isfinite(v) or v < 0):
                raise ValueError(f"{f.name} must be a finite number >= 0, got {v!r}")
        for name in ("focus", "random_background", "blink_share"):
            if getattr(self, name) > 1:
                raise ValueError(f"{name} is a share of steps or frames, in [0, 1]; got {getattr(self, name)!r}")


# ----------------------------------------------------------------------------------
# the clip in memory


def background_plate(images: np.ndarray, fg: np.ndarray, threshold: float = 0.02) -> np.ndarray:
    """The static background of a clip: per pixel, the median over the frames where it
    is not foreground; pixels that are always covered are filled by diffusing their
    neighbours' values. ``images [T, H, W, 3]`` uint8, ``fg [T, H, W]`` in [0, 1] ->
    float32 ``[H, W, 3]`` in [0, 1]."""
    imgs = images.astype(np.float32) / 255.0
    free = fg < threshold
    stack = np.where(free[..., None], imgs, np.nan)
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            plate = np.nanmedian(stack, axis=0)
    known = free.any(0)
    if not known.any():
        return np.full(images.shape[1:], 0.5, np.float32)
    plate[~known] = plate[known].mean(0)
    # diffuse into the never-seen region so it continues the surrounding colours
    t = torch.from_numpy(np.ascontiguousarray(plate)).permute(2, 0, 1)[None]
    m = torch.from_numpy(~known)[None, None]
    kernel = torch.full((3, 1, 3, 3), 1 / 9.0)
    for _ in range(64):
        blurred = F.conv2d(F.pad(t, (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
        t = torch.where(m, blurred, t)
    return t[0].permute(1, 2, 0).numpy().astype(np.float32)


class ClipFrames:
    """A talking clip's frames (a split), masks, cameras and audio windows, resized to
    ``resolution`` and kept in memory (uint8; on the GPU if ``device`` is one).
    ``share``: another ClipFrames of the same clip whose audio windows and background
    plate this one uses instead of computing them again (the held-out frames of a run)."""

    def __init__(self, dataset, indices, resolution: int, *, context: float = 0.3, device="cpu",
                 progress: bool = True, workers: int = 8, share: "ClipFrames | None" = None):
        from tqdm import tqdm

        from .. import audio as A

        if dataset.kind != "talking":
            raise ValueError(f"{dataset.root}: identity training needs a talking clip (kind 'talking'), got "
                             f"{dataset.kind!r}")
        idx = np.asarray(list(indices), np.int64)
        if idx.size < 2:
            raise ValueError(f"{dataset.root}: identity training needs at least 2 training frames, got {idx.size}")
        R = resolution
        self.indices = torch.from_numpy(idx)
        self.num_frames = len(dataset)
        self.fps = float(dataset.fps)
        self.width, self.height = dataset.width, dataset.height

        def load_one(i):
            img = torch.from_numpy(np.ascontiguousarray(dataset.image(int(i)))).permute(2, 0, 1)[None].float()
            m = torch.from_numpy(np.ascontiguousarray(dataset.masks(int(i)))).permute(2, 0, 1)[None]
            img = F.interpolate(img, size=(R, R), mode="area")[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8)
            m = (F.interpolate(m, size=(R, R), mode="area")[0].permute(1, 2, 0) * 255).round().to(torch.uint8)
            return img, m

        rgb = torch.empty(len(idx), R, R, 3, dtype=torch.uint8)
        masks = torch.empty(len(idx), R, R, 4, dtype=torch.uint8)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for k, (img, m) in enumerate(tqdm(pool.map(load_one, idx), total=len(idx), desc="loading clip",
                                              unit="frame", disable=not progress)):
                rgb[k], masks[k] = img, m
        self.rgb, self.masks = rgb.to(device), masks.to(device)
        self.K = resize_intrinsics(torch.as_tensor(dataset.K[idx], dtype=torch.float32), dataset.width,
                                   dataset.height, R, R).to(device)
        self.w2c = torch.as_tensor(dataset.w2c[idx], dtype=torch.float32).to(device)
        self.mean_K = torch.as_tensor(dataset.K[idx], dtype=torch.float32).mean(0)  # at the clip's own size
        if share is not None:
            self.mel, self.windows, self.plate = share.mel, share.windows.to(device), share.plate
        else:
            samples, rate = dataset.audio
            feats = A.features(samples, rate, fps=self.fps, context=context, num_frames=self.num_frames)
            self.mel = torch.from_numpy(feats.mel)
            self.windows = torch.from_numpy(feats.windows).to(device)
            # the plate at the clip's own size, from up to 150 frames spread over the split
            pick = idx[np.linspace(0, len(idx) - 1, min(150, len(idx))).round().astype(int)]
            imgs = np.stack([dataset.image(int(i)) for i in pick])
            fgs = np.stack([dataset.masks(int(i))[..., 3] for i in pick])
            self.plate = torch.from_numpy(background_plate(imgs, fgs))
        self.source = {"dataset": str(dataset.root), "dataset_source": dataset.meta.get("source"),
                       "train_frames": int(len(idx)), "seconds": round(len(idx) / self.fps, 3),
                       "fps": self.fps, "size": [dataset.width, dataset.height]}
        openness = _eye_openness(dataset)
        b = None if openness is None else blink_amounts(openness)
        self.blink = None if b is None else torch.from_numpy(b).to(device)  # per clip frame, 0 open .. 1 closed
        self.upper_error = torch.ones(len(idx))  # last upper-face error per frame (the sampler's state)
        self.split_blink = None if self.blink is None else self.blink[self.indices.to(self.blink.device)].cpu()
        self.device = torch.device(device)

    def __len__(self) -> int:
        return len(self.indices)

    def batch(self, k: torch.Tensor) -> dict:
        k = k.to(self.rgb.device)
        m = self.masks[k].float() / 255
        return {"rgb": self.rgb[k].float() / 255, "head": m[..., 0], "lower": m[..., 1], "upper": m[..., 2],
                "fg": m[..., 3], "K": self.K[k], "w2c": self.w2c[k]}


def _eye_openness(dataset) -> np.ndarray | None:
    """Per frame eyelid distance (pixels) from the clip's landmarks, if it has them."""
    names = list(dataset.landmark_names)
    need = ("upper_lid_left", "lower_lid_left", "upper_lid_right", "lower_lid_right")
    if dataset.gt is None or "landmarks_2d" not in dataset.gt or not all(n in names for n in need):
        return None
    L = dataset.gt["landmarks_2d"]
    a = [names.index(n) for n in need]
    d = np.linalg.norm(L[:, a[0]] - L[:, a[1]], axis=-1) + np.linalg.norm(L[:, a[2]] - L[:, a[3]], axis=-1)
    return (d / 2).astype(np.float32)


def blink_amounts(openness: np.ndarray, open_below: float = 0.15, closed_from: float = 0.75) -> np.ndarray:
    """Per frame eyelid closure in [0, 1] from the eyelid distance: 0 while the eyes are
    less than ``open_below`` closed relative to the clip's median opening (landmark
    jitter and squints stay 0), rising linearly to 1 at ``closed_from`` (a closed lid's
    landmarks keep some distance). On identity 7 this gives 0.89-1 (median 1) on the
    frames whose truth is shut and 0 on every frame whose truth is open."""
    closure = 1 - openness / max(float(np.median(openness)), 1e-6)
    return np.clip((closure - open_below) / (closed_from - open_below), 0, 1).astype(np.float32)


# ----------------------------------------------------------------------------------
# losses


def masked_l1(render: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean |render - target| over the pixels of ``mask [B, H, W]`` (soft weights); only
    those pixels affect the value or its gradient."""
    w = mask[..., None]
    return ((render - target).abs() * w).sum() / (w.sum() * render.shape[-1]).clamp_min(1.0)


def cross_view_losses(render_at_i: torch.Tensor, render_at_j: torch.Tensor, batch_i: dict, batch_j: dict):
    """(lip loss, expression loss) of the shared cross latent's two renders: the first
    against frame i inside its lower-face mask, the second against frame j inside its
    upper-face mask."""
    return (masked_l1(render_at_i, batch_i["rgb"], batch_i["lower"]),
            masked_l1(render_at_j, batch_j["rgb"], batch_j["upper"]))


# the template's face regions in the head frame (metres; the corpus landmarks put the
# mouth corners at y = -5.2 cm, the nose base near -3.5 cm, the lids at +1.3..2.3 cm and
# the brows at +4.2 cm; the face's front is at z > 3 cm)
LOWER_FACE_Y, UPPER_FACE_Y, FACE_FRONT_Z, FACE_HALF_WIDTH = (-0.11, -0.036), (-0.005, 0.07), 0.03, 0.07


def face_regions(position: torch.Tensor, per_texel: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean masks ``(lower, upper) [M * per_texel]`` of the Gaussians whose template
    texel's position ``[M, 3]`` (head frame) lies on the lower face (lips, jaw, chin)
    or the upper face (brows, eyes, lids); a texel's Gaussians are consecutive."""
    x, y, z = position.unbind(-1)
    front = (z > FACE_FRONT_Z) & (x.abs() < FACE_HALF_WIDTH)
    lower = front & (y > LOWER_FACE_Y[0]) & (y < LOWER_FACE_Y[1])
    upper = front & (y > UPPER_FACE_Y[0]) & (y < UPPER_FACE_Y[1])
    return lower.repeat_interleave(per_texel), upper.repeat_interleave(per_texel)


def leak_loss(gaussians, P: int, lower: torch.Tensor, upper: torch.Tensor, eps: float = 0.05) -> torch.Tensor:
    """Disentanglement in the Gaussians themselves. The cross latents ``[2P:3P]`` (lips
    of i, expression of j) differ from their own latent i ``[:P]`` only in the
    expression: that change must show on the upper face, not the lower one. From their
    own latent j ``[P:2P]`` they differ only in the lips: that must show on the lower
    face, not the upper one. Each term is the ratio of the change on the wrong region
    to the change on the right one (mean L1 of positions in millimetres, colours and
    opacities), so shrinking a branch everywhere does not lower it: only moving its
    effect off the wrong region does. ``eps`` keeps a branch that does nothing yet
    from dividing by zero."""
    means, _, _, opac, colors = gaussians

    def gap(a: slice, b: slice, region: torch.Tensor) -> torch.Tensor:
        dm = (means[a][:, region] - means[b][:, region]).abs().sum(-1) * 1e3
        dc = (colors[a][:, region] - colors[b][:, region]).abs().sum(-1)
        do = (opac[a][:, region] - opac[b][:, region]).abs()
        return (dm + dc + do).sum() / max(dm.numel(), 1)  # an empty region costs nothing

    cross, own_i, own_j = slice(2 * P, 3 * P), slice(0, P), slice(P, 2 * P)
    expression_leak = gap(cross, own_i, lower) / (gap(cross, own_i, upper) + eps)
    lip_leak = gap(cross, own_j, upper) / (gap(cross, own_j, lower) + eps)
    return expression_leak + lip_leak


def compose_cross_batch(c_exp_i, c_lip_i, c_exp_j, c_lip_j):
    """Coefficients of the step's latents: [own i; own j; cross] where cross takes the lips
    of i and the expression of j. Returns (c_exp [3P, Ke], c_lip [3P, Kl])."""
    return torch.cat([c_exp_i, c_exp_j, c_exp_j]), torch.cat([c_lip_i, c_lip_j, c_lip_i])


# ----------------------------------------------------------------------------------
# the step


def sample_pairs(step: int, n: int, pairs: int, seed: int, weights=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions (into the training split) of a step's frames i and j, i != j. ``weights``
    (probabilities over the split) bias the choice of j, the expression frame."""
    rng = np.random.default_rng([seed, step])
    i = rng.integers(0, n, size=pairs)
    if weights is None:
        j = (i + rng.integers(1, n, size=pairs)) % n  # never equal to i
    else:
        j = rng.choice(n, size=pairs, p=weights)
        j = np.where(j == i, (j + 1) % n, j)
    return torch.from_numpy(i), torch.from_numpy(j)


def expression_weights(upper_error: torch.Tensor, focus: float, blink: torch.Tensor | None = None,
                       blink_share: float = 0.0) -> np.ndarray | None:
    """Sampling probabilities of the expression frame (None: uniform). A share ``focus``
    goes in proportion to the squared upper-face error last seen on each frame, and a
    share ``blink_share`` to the frames whose eyes are closed (``blink`` >= 0.5 per
    training frame): blinks cover about 3% of a clip's frames, too few for the eyelid
    layer to learn from uniform draws."""
    n = len(upper_error)
    p = np.full(n, 1.0 / n)
    used = False
    if focus > 0:
        e = upper_error.double().numpy() ** 2
        p = (1 - focus) * p + focus * e / max(e.sum(), 1e-12)
        used = True
    if blink is not None and blink_share > 0:
        shut = (blink.detach().cpu().numpy() >= 0.5).astype(np.float64)
        if shut.any():
            p = (1 - blink_share) * p + blink_share * shut / shut.sum()
            used = True
    return p / p.sum() if used else None


def _gather(gaussians, idx):
    return tuple(t[idx] for t in gaussians)


def speech_coefficients(encoder, windows: torch.Tensor, frames: torch.Tensor, num_frames: int):
    """(c_exp, c_lip) of clip frames ``frames [B]`` (global indices), computing each
    needed window's embedding once."""
    nb = encoder.neighbours(frames, num_frames)
    uniq, inv = torch.unique(nb, return_inverse=True)
    emb = encoder.frame_embedding(windows[uniq])
    return encoder.from_embeddings(emb[inv])


def train_step(talker, reference, opt, data: ClipFrames, step: int, cfg: IdentityTrainConfig) -> dict:
    from ..talker import body_transforms

    dev = talker.device
    P, R = cfg.pairs, cfg.resolution
    weights = expression_weights(data.upper_error, cfg.focus if cfg.cross_view else 0.0, data.split_blink,
                                 cfg.blink_share)
    pi, pj = sample_pairs(step, len(data), P, cfg.seed, weights)
    bi, bj = data.batch(pi), data.batch(pj)
    background = random_background(step, cfg, dev)
    if background is not None:
        bi, bj = over_background(bi, background), over_background(bj, background)
    fi, fj = data.indices[pi].to(dev), data.indices[pj].to(dev)
    N = data.num_frames
    nxt = lambda f: (f + 1).clamp(max=N - 1)  # noqa: E731
    frames = torch.cat([fi, fj, nxt(fi), nxt(fj)])
    ce, cl = speech_coefficients(talker.encoder, data.windows, frames, N)
    res = talker.residual_track[frames]
    ce_full = ce + res
    c_exp, c_lip = compose_cross_batch(ce_full[:P], cl[:P], ce_full[P:2 * P], cl[P:2 * P])
    blink = None
    if data.blink is not None:  # the cross latent's eyes are frame j's (they are expression)
        blink = data.blink[torch.cat([fi, fj, fj])]
    if not cfg.cross_view:
        c_exp, c_lip = c_exp[:2 * P], c_lip[:2 * P]
        blink = None if blink is None else blink[:2 * P]
    gauss = talker.gaussians(c_exp, c_lip, blink=blink, amp=cfg.amp)
    # images: own i @ i, own j @ j (, cross @ i, cross @ j)
    lat = [torch.arange(P), torch.arange(P, 2 * P)]
    views = [bi, bj]
    if cfg.cross_view:
        lat += [torch.arange(2 * P, 3 * P)] * 2
        views += [bi, bj]
    lat = torch.cat(lat).to(dev)
    w2c = torch.cat([v["w2c"] for v in views])
    Ks = torch.cat([v["K"] for v in views])
    g = talker.pose_torso(_gather(gauss, lat), body_transforms(w2c, talker.body_w2c))
    checked = True if dev.type == "cuda" else None
    image, alpha = talker.rasterize(g, w2c, Ks, R, R, checked=checked, background=background)
    own_img, own_a = image[:2 * P], alpha[:2 * P]
    target = torch.cat([bi["rgb"], bj["rgb"]])
    fg = torch.cat([bi["fg"], bj["fg"]])
    photo = photometric_loss(own_img, target, ssim_weight=cfg.ssim_weight)
    mask = (own_a - fg).abs().mean()
    loss = photo + cfg.mask_weight * mask
    out = {}
    if cfg.cross_view:
        lip, expr = cross_view_losses(image[2 * P:3 * P], image[3 * P:], bi, bj)
        loss = loss + cfg.cross_weight * (lip + expr)
        if cfg.focus > 0:  # per expression frame, for the sampler (a small device-to-host copy)
            w = bj["upper"][..., None]
            per = ((image[3 * P:] - bj["rgb"]).abs() * w).sum((1, 2, 3)) / (w.sum((1, 2, 3)) * 3).clamp_min(1.0)
            data.upper_error[pj] = per.detach().float().cpu()
        out.update(cross_lip=float(lip.detach()), cross_exp=float(expr.detach()))
        if cfg.leak_weight > 0:
            tpl = talker.generator.template_position
            lower, upper = face_regions(tpl, gauss[0].shape[1] // tpl.shape[0])
            leak = leak_loss(gauss, P, lower, upper)
            loss = loss + cfg.leak_weight * leak
            out["leak"] = float(leak.detach())
    # regularisers
    if cfg.aniso_reg > 0:
        loss = loss + cfg.aniso_reg * needle_penalty(gauss[2])
    loss = loss + cfg.residual_reg * res[:2 * P].pow(2).sum(-1).mean()
    loss = loss + cfg.residual_smooth * (res[:2 * P] - res[2 * P:]).pow(2).sum(-1).mean()
    c_all = torch.cat([ce, cl], 1)
    loss = loss + cfg.coef_smooth * (c_all[:2 * P] - c_all[2 * P:]).pow(2).sum(-1).mean()
    loss = loss + cfg.coef_reg * c_all.pow(2).sum(-1).mean()
    if cfg.distill_weight > 0:
        cce, ccl = speech_coefficients(talker.causal_encoder, data.windows, frames[:2 * P], N)
        distill = (cce - ce[:2 * P].detach()).pow(2).mean() + (ccl - cl[:2 * P].detach()).pow(2).mean()
        loss = loss + cfg.distill_weight * distill
        out["distill"] = float(distill.detach())
    if reference is not None and cfg.locality > 0 and step % cfg.locality_every == 0:
        loss = loss + cfg.locality * locality_loss(talker.generator, reference, step, cfg)
    if reference is not None and cfg.side_silhouette > 0:
        side = side_silhouette_loss(talker, reference, _gather(gauss, torch.arange(P, device=dev)),
                                    c_exp[:P], c_lip[:P], bi["w2c"], bi["K"], step, cfg)
        loss = loss + cfg.side_silhouette * side
        out["side_silhouette"] = float(side.detach())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    with torch.no_grad():
        p = psnr(own_img.clamp(0, 1), target)
    out.update(loss=float(loss.detach()), photo=float(photo.detach()), mask=float(mask.detach()), psnr=float(p))
    return out


def random_background(step: int, cfg: IdentityTrainConfig, device) -> torch.Tensor | None:
    """This step's background: None (the clip's plate) or, on a seeded ``random_background``
    share of the steps, one random colour. Over the plate, a Gaussian at the silhouette
    that takes the background's colour costs nothing but the alpha loss, and such
    background-coloured fringes and floaters show from other views; over a colour that
    changes every step they cannot hide."""
    if cfg.random_background <= 0:
        return None
    g = torch.Generator().manual_seed(cfg.seed * 1_000_033 + step)
    if float(torch.rand((), generator=g)) >= cfg.random_background:
        return None
    return torch.rand(3, generator=g).to(device)


def over_background(batch: dict, colour: torch.Tensor) -> dict:
    """The batch with its frames composited over ``colour`` by their foreground masks."""
    fg = batch["fg"][..., None]
    return batch | {"rgb": batch["rgb"] * fg + colour * (1 - fg)}


def needle_penalty(scales: torch.Tensor, max_ratio: float = 4.0, max_size: float = 0.03) -> torch.Tensor:
    """Mean excess of log(largest / middle axis) over log(max_ratio), plus that of
    log(largest axis) over log(max_size metres): Gaussians that the training cameras
    only see edge-on can grow into long needles that show up from the side."""
    s = scales.sort(dim=-1).values
    big = torch.log(s[..., 2].clamp_min(1e-9))
    return (F.relu(big - torch.log(s[..., 1].clamp_min(1e-9)) - math.log(max_ratio))
            + F.relu(big - math.log(max_size))).mean()


def locality_loss(generator, reference, step: int, cfg: IdentityTrainConfig, n: int = 2) -> torch.Tensor:
    """Pivotal tuning's locality: for latents of other heads, the tuned synthesis (without
    the per-texel output bias, which holds this person's detail) must stay the prior's."""
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    dev = generator.w_avg.device
    z = torch.randn(n, reference.config.z_dim, generator=g).to(dev)
    with torch.no_grad():
        w = reference.map(z)
        ref = reference.synthesis(reference.styles(w))
    use_amp = cfg.amp and w.is_cuda
    with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_amp):
        out = generator.synthesis(generator.styles(w))
    return (out.float() - ref.float()).pow(2).mean()


# side views: a talking-head clip turns the head by about +-15 degrees; beyond that the
# tuned head's outline drifts from the prior's (measured on identity 7: the prior's
# silhouette at 30-45 degrees was closer to the truth than a tuned head's). Pulling
# towards it did not raise the side views (docs/benchmarks.md, run M0): off by default.
SIDE_YAW = (20.0, 45.0)
SIDE_PITCH = 15.0


def side_cameras(w2c: torch.Tensor, step: int, cfg: IdentityTrainConfig) -> torch.Tensor:
    """Each camera ``[n, 4, 4]`` turned around the head by a seeded yaw of 20-45 degrees to
    either side and a pitch within +-15 degrees."""
    from ..camera import turn

    g = torch.Generator().manual_seed(cfg.seed * 1_000_037 + step)
    n = w2c.shape[0]
    yaw = torch.empty(n).uniform_(*SIDE_YAW, generator=g) * (torch.randint(0, 2, (n,), generator=g) * 2 - 1)
    pitch = torch.empty(n).uniform_(-SIDE_PITCH, SIDE_PITCH, generator=g)
    return torch.stack([turn(w2c[k], float(yaw[k]), float(pitch[k])) for k in range(n)])


def side_silhouette_loss(talker, reference, gaussians, c_exp, c_lip, w2c, K, step: int,
                         cfg: IdentityTrainConfig) -> torch.Tensor:
    """Mean |alpha| difference between the tuned head (``gaussians``, the latents of
    ``c_exp, c_lip``) and the prior's head at the same latents, seen from side cameras
    (``side_cameras`` of ``w2c``) at ``side_resolution``. Only outlines are compared: the
    prior's colours are not the person's."""
    from ..camera import resize_intrinsics
    from ..talker import body_transforms

    R, S = cfg.resolution, cfg.side_resolution
    views = side_cameras(w2c, step, cfg)
    Ks = resize_intrinsics(K, R, R, S, S)
    body = body_transforms(w2c, talker.body_w2c)  # the torso where frame i has it
    black, checked = torch.zeros(3, device=w2c.device), (True if w2c.is_cuda else None)
    with torch.no_grad():
        w, _ = talker.latents(c_exp, c_lip)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=cfg.amp and w.is_cuda):
            raw = reference.synthesize(reference.styles(w))
        prior_g = talker.pose_torso(reference.decode(raw.float().contiguous()), body)
        _, target = talker.rasterize(prior_g, views, Ks, S, S, background=black, checked=checked)
    _, alpha = talker.rasterize(talker.pose_torso(gaussians, body), views, Ks, S, S, background=black,
                                checked=checked)
    return (alpha - target).abs().mean()


@torch.no_grad()
def validate_heldout(talker, val: ClipFrames, cfg: IdentityTrainConfig) -> dict:
    """PSNR (whole frame and lower face) of held-out frames rendered from their audio
    alone (residual zero), at training resolution."""
    from ..talker import body_transforms

    k = torch.arange(len(val))
    b = val.batch(k)
    f = val.indices.to(talker.device)
    ce, cl = speech_coefficients(talker.encoder, val.windows, f, val.num_frames)
    body = body_transforms(b["w2c"], talker.body_w2c)
    img, _ = talker.frames(ce, cl, b["w2c"], b["K"], cfg.resolution, cfg.resolution, body=body, amp=cfg.amp)
    img = img.clamp(0, 1)
    return {"val_psnr": float(psnr(img, b["rgb"])), "val_psnr_lower": float(psnr(img, b["rgb"], mask=b["lower"]))}


# ----------------------------------------------------------------------------------
# optimizer, state, previews


def make_optimizer(talker, cfg: IdentityTrainConfig):
    groups = talker.parameter_groups()
    lrs = {"synthesis": cfg.lr_synthesis, "output_bias": cfg.lr_output_bias, "w_can": cfg.lr_w,
           "blendshapes": cfg.lr_blendshapes, "encoder": cfg.lr_encoder, "causal_encoder": cfg.lr_encoder,
           "residual": cfg.lr_residual, "eyelid": cfg.lr_eyelid}
    return torch.optim.Adam([{"params": groups[k], "lr": lrs[k], "name": k} for k in lrs], betas=(0.9, 0.99))


def _state_path(out: Path) -> Path:
    return out.with_name(out.name + STATE_SUFFIX)


def save_training(out: Path, talker, opt, step: int, cfg: IdentityTrainConfig, history: list, elapsed: float,
                  data=None) -> None:
    """The training state (no pickle), then the talker."""
    from ..checkpoint import write_checkpoint
    from ..talker import save_talker

    tensors = {f"talker.{k}": v for k, v in talker.state_dict().items()}
    if data is not None:
        tensors["sampler.upper_error"] = data.upper_error
    sd = opt.state_dict()
    for pid, st in sd["state"].items():
        for name, v in st.items():
            tensors[f"opt.{pid}.{name}"] = torch.as_tensor(v).reshape(-1) if name == "step" else v
    groups = [{k: v for k, v in g.items()} for g in sd["param_groups"]]
    meta = {"step": str(step), "config": json.dumps(asdict(cfg), sort_keys=True),
            "param_groups": json.dumps(groups), "history": json.dumps(history[-5000:]),
            "elapsed": repr(float(elapsed)), "talker_config": json.dumps(talker.config.to_dict()),
            "residual_frames": str(talker.residual_track.shape[0]), "source": json.dumps(talker.source)}
    write_checkpoint(_state_path(out), tensors, format=STATE_FORMAT, version=STATE_VERSION, meta=meta)
    save_talker(out, talker, half=cfg.half)
    atomic_write_json(out.with_name(out.name + ".history.json"), history)


def load_training_state(out: Path):
    """(tensors, meta) of a run's state, or None if there is none."""
    from ..checkpoint import read_checkpoint

    path = _state_path(out)
    if not path.exists():
        if out.exists():
            raise FileExistsError(f"{out} exists but has no training state ({path.name}); choose another --out "
                                  "or remove it to train from scratch")
        return None
    tensors, meta, _ = read_checkpoint(path, format=STATE_FORMAT, max_version=STATE_VERSION)
    return tensors, meta


def _restore_optimizer(opt, tensors: dict, meta: dict) -> None:
    groups = json.loads(meta["param_groups"])
    state: dict = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v.reshape(()) if name == "step" else v
    opt.load_state_dict({"state": state, "param_groups": groups})


def save_preview(path: Path, talker, data: ClipFrames, cfg: IdentityTrainConfig) -> None:
    """Top: four training frames; middle: their renders from their own audio; bottom: the
    cross latent (lips of the frame above, expression of the next one) at the same camera."""
    from ..talker import body_transforms

    with torch.no_grad():
        k = torch.linspace(0, len(data) - 1, 4).round().long()
        b = data.batch(k)
        f = data.indices[k].to(talker.device)
        ce, cl = speech_coefficients(talker.encoder, data.windows, f, data.num_frames)
        ce = ce + talker.residual_track[f]
        perm = torch.roll(torch.arange(4), -1)
        c_exp = torch.cat([ce, ce[perm]])
        c_lip = torch.cat([cl, cl])
        blink = None if data.blink is None else torch.cat([data.blink[f], data.blink[f][perm]])
        w2c, Ks = torch.cat([b["w2c"]] * 2), torch.cat([b["K"]] * 2)
        g = talker.pose_torso(talker.gaussians(c_exp, c_lip, blink=blink, amp=cfg.amp),
                              body_transforms(w2c, talker.body_w2c))
        img, _ = talker.rasterize(g, w2c, Ks, cfg.resolution, cfg.resolution)
    rows = [torch.cat(list(b["rgb"]), 1), torch.cat(list(img[:4].clamp(0, 1)), 1), torch.cat(list(img[4:].clamp(0, 1)), 1)]
    grid = torch.cat(rows, 0)
    atomic_write_bytes(path, encode_image((grid * 255).round().to(torch.uint8).cpu().numpy(), "png"))


# ----------------------------------------------------------------------------------
# driver


def _initial_talker(prior, data: ClipFrames, dataset, cfg: IdentityTrainConfig, device, progress):
    import copy

    from ..invert import InversionConfig, invert, load_views
    from ..talker import Talker, TalkerConfig, mean_camera

    generator = copy.deepcopy(prior)
    tcfg = TalkerConfig(k_exp=cfg.k_exp, k_lip=cfg.k_lip, width=data.width, height=data.height, fps=data.fps)
    talker = Talker(generator, tcfg, seed=cfg.seed, residual_frames=data.num_frames)
    talker.encoder.set_normalization(data.mel)
    talker.causal_encoder.set_normalization(data.mel)
    with torch.no_grad():
        talker.background.copy_(data.plate)
        talker.body_w2c.copy_(mean_camera(data.w2c.cpu()))
        talker.default_w2c.copy_(talker.body_w2c)
        talker.default_K.copy_(data.mean_K)
        if data.blink is not None:
            talker.blink_track.copy_(data.blink.cpu())
    talker.to(device)
    if cfg.invert_steps > 0:
        idx = data.indices[torch.linspace(0, len(data) - 1, min(cfg.invert_views, len(data))).round().long()].numpy()
        views = load_views(dataset, idx, cfg.invert_resolution)
        fit = invert(generator, views, InversionConfig(steps=cfg.invert_steps, seed=cfg.seed), progress=progress)
        with torch.no_grad():
            talker.w_can.copy_(fit.w[0])
    for p in talker.parameters():
        p.requires_grad_(True)
    for p in talker.generator.mapping.parameters():  # w_can is a w: the mapping network is not used
        p.requires_grad_(False)
    return talker


@torch.no_grad()
def fit_coefficient_stats(talker, data: ClipFrames) -> None:
    """Mean and spread over the training frames of ``[c_exp + residual, c_lip]``."""
    f = data.indices.to(talker.device)
    ce, cl = [], []
    for s in range(0, len(f), 256):
        e, l_ = speech_coefficients(talker.encoder, data.windows, f[s:s + 256], data.num_frames)
        ce.append(e + talker.residual_track[f[s:s + 256]])
        cl.append(l_)
    c = torch.cat([torch.cat(ce), torch.cat(cl)], 1)
    talker.coef_mean.copy_(c.mean(0))
    talker.coef_std.copy_(c.std(0).clamp_min(1e-6) if c.shape[0] > 1 else torch.ones_like(c[0]))


def train_identity(data_dir, out, cfg: IdentityTrainConfig, *, prior=None, device=None, progress: bool = True,
                   log=print) -> dict:
    """Trains (or resumes) a talker on the clip in ``data_dir``; returns the last metrics
    plus ``step`` and ``minutes``."""
    from tqdm import tqdm

    from ..data import load
    from ..prior import load_prior as load_default_prior
    from ..talker import Talker, TalkerConfig

    cfg.validate()
    out = Path(out)
    if out.is_dir():
        raise IsADirectoryError(f"--out must be a file path, got the directory {out}")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"the directory of --out does not exist: {out.parent}")
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    state = load_training_state(out)
    if state is not None:
        saved = json.loads(state[1]["config"])
        # the run's shape comes from the state; only the budget may change
        cfg = IdentityTrainConfig(**{**saved, "steps": cfg.steps, "minutes": cfg.minutes})
    dataset = load(data_dir)
    split = dataset.splits["train"] if dataset.splits["train"].size else np.arange(len(dataset))
    data = ClipFrames(dataset, split, cfg.resolution, device=device, progress=progress)
    val = None
    held = dataset.splits["heldout"]
    if cfg.validate_every > 0 and held.size >= 2 and cfg.validate_frames >= 2:
        pick = held[np.linspace(0, held.size - 1, min(cfg.validate_frames, held.size)).round().astype(int)]
        val = ClipFrames(dataset, pick, cfg.resolution, device=device, progress=False, share=data)
    reference = prior if prior is not None else load_default_prior()
    reference = reference.to(device).eval()
    for p in reference.parameters():
        p.requires_grad_(False)
    t_start = time.perf_counter()
    elapsed0 = 0.0
    if state is None:
        talker = _initial_talker(reference, data, dataset, cfg, device, progress)
        history: list = []
        start = 0
    else:
        import copy

        tensors, meta = state
        tcfg = TalkerConfig.from_dict(json.loads(meta["talker_config"]))
        talker = Talker(copy.deepcopy(reference), tcfg, residual_frames=int(meta["residual_frames"]))
        talker.load_state_dict({k[len("talker."):]: v for k, v in tensors.items() if k.startswith("talker.")})
        talker.to(device)
        for p in talker.parameters():
            p.requires_grad_(True)
        for p in talker.generator.mapping.parameters():
            p.requires_grad_(False)
        history = json.loads(meta["history"])
        if "sampler.upper_error" in tensors and tensors["sampler.upper_error"].shape == data.upper_error.shape:
            data.upper_error.copy_(tensors["sampler.upper_error"])
        start = int(meta["step"])
        elapsed0 = float(meta["elapsed"])
        log(f"resuming {out} at step {start} of {cfg.steps}")
    talker.source = {**data.source, "cross_view": cfg.cross_view, "train_config": asdict(cfg)}
    talker.train()
    opt = make_optimizer(talker, cfg)
    if state is not None:
        _restore_optimizer(opt, state[0], state[1])
    budget = cfg.minutes * 60.0 if cfg.minutes > 0 else math.inf
    step = start
    metrics: dict = {}
    bar = tqdm(total=cfg.steps, initial=start, desc="training talker", disable=not progress, unit="step")

    def elapsed():
        return elapsed0 + time.perf_counter() - t_start

    def finish_and_save():
        fit_coefficient_stats(talker, data)
        talker.source.update(trained_steps=step, minutes=round(elapsed() / 60, 3))
        save_training(out, talker, opt, step, cfg, history, elapsed(), data)

    try:
        while step < cfg.steps and elapsed() < budget:
            metrics = train_step(talker, reference if cfg.locality > 0 or cfg.side_silhouette > 0 else None, opt,
                                 data, step, cfg)
            if not math.isfinite(metrics["loss"]):
                raise FloatingPointError(f"loss became {metrics['loss']} at step {step}; lower the learning rates")
            step += 1
            row = {"step": step, "minutes": round(elapsed() / 60, 4), **{k: round(v, 5) for k, v in metrics.items()}}
            if val is not None and (step % cfg.validate_every == 0 or step == 1):
                row.update(validate_heldout(talker, val, cfg))
            history.append(row)
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}", psnr=f"{metrics['psnr']:.2f}")
            if step % cfg.checkpoint_every == 0:
                finish_and_save()
            if step % cfg.preview_every == 0:
                save_preview(out.with_name(out.name + ".preview.png"), talker, data, cfg)
        finish_and_save()
    except KeyboardInterrupt:
        finish_and_save()
        log(f"\ninterrupted: saved step {step} to {out}; run the same command again to resume")
        raise
    finally:
        bar.close()
    return {"step": step, "minutes": elapsed() / 60, **metrics}
