"""Inversion: fit the prior to frames of an identity it has never seen.

Given frames with known cameras and foreground masks, find the latent ``w`` whose
Gaussians, rendered from those cameras, match the frames (the same L1 + SSIM + mask
loss as prior training, plus a pull towards the prior's mean latent). Optionally
then fine-tune the generator around that ``w`` ("pivotal tuning"), with a
regularizer that keeps its output unchanged for other latents, so the prior's 3D
structure survives. This is the first step of identity training.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..camera import view_tensors
from ..metrics import photometric_loss, psnr, ssim


@dataclass
class Views:
    """Images with cameras: ``rgb [V, H, W, 3]`` in [0, 1], ``fg [V, H, W]`` in [0, 1],
    ``viewmats [V, 4, 4]`` (world-to-camera, OpenCV), ``Ks [V, 3, 3]``."""
    rgb: Tensor
    fg: Tensor
    viewmats: Tensor
    Ks: Tensor

    def __post_init__(self):
        V = self.rgb.shape[0]
        if self.rgb.dim() != 4 or self.rgb.shape[-1] != 3:
            raise ValueError(f"rgb must have shape [V, H, W, 3], got {list(self.rgb.shape)}")
        if self.fg.shape != self.rgb.shape[:3]:
            raise ValueError(f"fg must have shape {list(self.rgb.shape[:3])}, got {list(self.fg.shape)}")
        if self.viewmats.shape != (V, 4, 4) or self.Ks.shape != (V, 3, 3):
            raise ValueError(f"viewmats/Ks must have shapes [{V}, 4, 4] / [{V}, 3, 3], got "
                             f"{list(self.viewmats.shape)} / {list(self.Ks.shape)}")

    def __len__(self) -> int:
        return self.rgb.shape[0]

    def to(self, device) -> "Views":
        return Views(self.rgb.to(device), self.fg.to(device), self.viewmats.to(device), self.Ks.to(device))

    def subset(self, idx) -> "Views":
        return Views(self.rgb[idx], self.fg[idx], self.viewmats[idx], self.Ks[idx])


def load_views(dataset, indices, resolution: int, *, novel: bool = False) -> Views:
    """Frames ``indices`` of a ``dgtalker.data`` dataset (or of its ``novel`` views),
    resized to ``resolution`` (square), with the intrinsics scaled to match."""
    src = dataset.novel if novel else dataset
    rgb, fg, vm, Ks = [], [], [], []
    for i in indices:
        i = int(i)
        img = torch.from_numpy(np.ascontiguousarray(src.image(i))).permute(2, 0, 1)[None].float() / 255
        m = torch.from_numpy(np.ascontiguousarray(src.masks(i)[..., 3]))[None, None].float()
        rgb.append(F.interpolate(img, size=(resolution, resolution), mode="area")[0].permute(1, 2, 0))
        fg.append(F.interpolate(m, size=(resolution, resolution), mode="area")[0, 0])
        v, k = view_tensors(src.w2c[i], src.K[i], dataset.width, dataset.height, resolution)
        vm.append(v[0])
        Ks.append(k[0])
    return Views(torch.stack(rgb), torch.stack(fg), torch.stack(vm), torch.stack(Ks))


@dataclass
class InversionConfig:
    steps: int = 300
    lr: float = 0.02
    w_reg: float = 1e-3              # weight of ||w - w_avg||^2 / D
    batch: int = 4                   # views per step
    tune_steps: int = 0              # pivotal tuning steps after the latent fit (0: off)
    tune_lr: float = 3e-4
    tune_reg: float = 1.0            # weight of the locality regularizer
    ssim_weight: float = 0.2
    mask_weight: float = 0.5
    background: tuple = (1.0, 1.0, 1.0)
    seed: int = 0


@dataclass
class InversionResult:
    w: Tensor                        # [1, D]
    generator: object                # the (possibly tuned) generator
    history: list = field(default_factory=list)


def render(generator, w: Tensor, views: Views, background) -> tuple[Tensor, Tensor]:
    """Images and alphas of latent ``w [1, D]`` from every view in one batched call.

    Checked (on CUDA it waits for the forward's status): a forward that ran out of
    intersection room is redone at once, so no fitting step and no metric ever uses
    an image that missed Gaussians."""
    import dgtalker

    means, quats, scales, opac, colors = generator.gaussians(w)
    R = views.rgb.shape[1]
    bg = torch.tensor(background, dtype=torch.float32, device=w.device)
    image, alpha, _ = dgtalker.rasterize(means[0], quats[0], scales[0], opac[0], colors[0], views.viewmats, views.Ks,
                                         views.rgb.shape[2], R, background=bg, checked=True)
    return image, alpha


def composite(views: Views, background) -> Tensor:
    bg = torch.tensor(background, dtype=torch.float32, device=views.rgb.device)
    return views.rgb * views.fg[..., None] + bg * (1 - views.fg[..., None])


@torch.no_grad()
def evaluate(generator, w: Tensor, views: Views, background=(1.0, 1.0, 1.0), chunk: int = 16) -> dict:
    """PSNR (whole image and foreground only) and SSIM against the composited frames."""
    ps, pf, ss, n = 0.0, 0.0, 0.0, 0
    for s in range(0, len(views), chunk):
        v = views.subset(slice(s, s + chunk))
        image, _ = render(generator, w, v, background)
        target = composite(v, background)
        k = len(v)
        ps += float(psnr(image, target)) * k
        pf += float(psnr(image, target, mask=v.fg)) * k
        ss += float(ssim(image, target)) * k
        n += k
    return {"psnr": ps / n, "psnr_fg": pf / n, "ssim": ss / n, "views": n}


def invert(generator, views: Views, cfg: InversionConfig | None = None, *, progress: bool = True) -> InversionResult:
    """Fits ``w`` (then optionally the generator) to ``views``; see the module docstring.

    ``generator`` is left as it came: its weights are never changed (pivotal tuning
    works on a copy) and every parameter's ``requires_grad`` is restored on return,
    also when the fit raises or is interrupted."""
    cfg = cfg or InversionConfig()
    if len(views) == 0:
        raise ValueError("views must hold at least one frame")
    device = next(generator.parameters()).device
    views = views.to(device)
    w_avg = (generator.w_avg if bool(generator.w_avg_valid) else generator.mean_w()).detach().to(device)[None]
    w = w_avg.clone().requires_grad_(True)
    rng = np.random.default_rng(cfg.seed)
    history = []
    D = w.shape[1]
    # the caller's generator is frozen while w is fitted, and given back as it came
    # (requires_grad of every parameter restored, also when fitting fails or is interrupted)
    trainable = [(p, p.requires_grad) for p in generator.parameters()]
    try:
        for p, _ in trainable:
            p.requires_grad_(False)
        return _fit(generator, views, cfg, w, w_avg, D, rng, history, device, progress)
    finally:
        for p, flag in trainable:
            p.requires_grad_(flag)


def _fit(generator, views, cfg, w, w_avg, D, rng, history, device, progress) -> InversionResult:
    from tqdm import tqdm

    opt = torch.optim.Adam([w], lr=cfg.lr)

    def step_loss(gen) -> Tensor:
        idx = torch.from_numpy(rng.choice(len(views), size=min(cfg.batch, len(views)), replace=False))
        v = views.subset(idx.to(device))
        image, alpha = render(gen, w, v, cfg.background)
        target = composite(v, cfg.background)
        return (photometric_loss(image, target, ssim_weight=cfg.ssim_weight)
                + cfg.mask_weight * (alpha - v.fg).abs().mean())

    for it in tqdm(range(cfg.steps), desc="inverting w", disable=not progress):
        loss = step_loss(generator) + cfg.w_reg * ((w - w_avg) ** 2).sum() / D
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.append({"stage": "w", "step": it, "loss": float(loss.detach())})

    tuned = generator
    if cfg.tune_steps > 0:
        tuned = copy.deepcopy(generator)
        for p in tuned.parameters():
            p.requires_grad_(True)
        w.requires_grad_(False)
        opt = torch.optim.Adam(tuned.parameters(), lr=cfg.tune_lr)
        g = torch.Generator(device="cpu").manual_seed(cfg.seed)
        for it in tqdm(range(cfg.tune_steps), desc="pivotal tuning", disable=not progress):
            # locality: the tuned generator must still produce the original's heads elsewhere
            z = torch.randn(2, generator.config.z_dim, generator=g).to(device)
            with torch.no_grad():
                w_other = generator.map(z)
                ref = generator(w_other)
            reg = (tuned(w_other) - ref).pow(2).mean()
            loss = step_loss(tuned) + cfg.tune_reg * reg
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            history.append({"stage": "tune", "step": it, "loss": float(loss.detach()), "reg": float(reg.detach())})
        for p in tuned.parameters():
            p.requires_grad_(False)
    return InversionResult(w=w.detach(), generator=tuned, history=history)
