"""Differentiable image losses and measures shared by training and evaluation.

Images are float ``[B, H, W, C]`` in [0, 1], masks ``[B, H, W]`` soft weights in [0, 1].
Training (``dgtalker.train``) optimises them; evaluation (``dgtalker.eval``) reports
them, so both layers import them from here, below both.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _gaussian_window(size: int, sigma: float, channels: int, like: Tensor) -> Tensor:
    x = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    g = torch.exp(-x * x / (2 * sigma * sigma))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(a: Tensor, b: Tensor, *, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Mean structural similarity of images ``[B, H, W, C]`` in [0, 1] (Gaussian 11x11
    window, the usual constants); differentiable. Images smaller than the window use a
    window as large as they are."""
    return ssim_map(a, b, window=window, sigma=sigma).mean()


def ssim_map(a: Tensor, b: Tensor, *, window: int = 11, sigma: float = 1.5, same: bool = False) -> Tensor:
    """Per-pixel structural similarity ``[B, H', W', C]`` of images ``[B, H, W, C]``: over
    the windows that fit (H' = H - window + 1), or with ``same`` at every pixel (the images
    reflected at their borders), for SSIM inside a region's mask."""
    x, y = a.permute(0, 3, 1, 2), b.permute(0, 3, 1, 2)
    C = x.shape[1]
    size = min(window, x.shape[-1], x.shape[-2])
    if same:
        p = size // 2
        x, y = F.pad(x, (p, size - 1 - p, p, size - 1 - p), mode="reflect"), F.pad(y, (p, size - 1 - p, p, size - 1 - p),
                                                                                    mode="reflect")
    w = _gaussian_window(size, sigma, C, x)
    mu_x, mu_y = F.conv2d(x, w, groups=C), F.conv2d(y, w, groups=C)
    sxx = F.conv2d(x * x, w, groups=C) - mu_x ** 2
    syy = F.conv2d(y * y, w, groups=C) - mu_y ** 2
    sxy = F.conv2d(x * y, w, groups=C) - mu_x * mu_y
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (sxx + syy + c2))
    return s.permute(0, 2, 3, 1)


def psnr(a: Tensor, b: Tensor, mask: Tensor | None = None) -> Tensor:
    """PSNR in dB of images in [0, 1] (optionally over a [B, H, W] mask)."""
    se = (a - b) ** 2
    if mask is not None:
        mse = (se * mask[..., None]).sum() / (mask.sum() * a.shape[-1]).clamp_min(1)
    else:
        mse = se.mean()
    return -10 * torch.log10(mse.clamp_min(1e-10))


def masked_l1(render: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean |render - target| over the pixels of ``mask [B, H, W]`` (soft weights); only
    those pixels affect the value or its gradient."""
    w = mask[..., None]
    return ((render - target).abs() * w).sum() / (w.sum() * render.shape[-1]).clamp_min(1.0)


def gradient_l1(render: Tensor, target: Tensor) -> Tensor:
    """Mean |difference of neighbouring pixels' differences| across and down ``[B, H, W, C]``
    images: an L1 on edges and fine texture, which the plain L1 lets blur."""
    dx = (render[:, :, 1:] - render[:, :, :-1]) - (target[:, :, 1:] - target[:, :, :-1])
    dy = (render[:, 1:] - render[:, :-1]) - (target[:, 1:] - target[:, :-1])
    return dx.abs().mean() + dy.abs().mean()


def photometric_loss(render: Tensor, target: Tensor, *, ssim_weight: float = 0.2, grad_weight: float = 0.0) -> Tensor:
    """(1 - w) L1 + w (1 - SSIM): the usual Gaussian-splatting image loss; with
    ``grad_weight`` also that times ``gradient_l1``."""
    loss = (1 - ssim_weight) * (render - target).abs().mean() + ssim_weight * (1 - ssim(render, target))
    return loss + grad_weight * gradient_l1(render, target) if grad_weight > 0 else loss


def teeth_mask(img: Tensor, opening: Tensor, skin_mask: Tensor, brightness: float = 0.85,
               colourfulness: float = 0.8) -> Tensor:
    """Which pixels of ``opening`` (bool ``[H, W]``: the mouth opening's outline, e.g.
    inside the inner lip ring) of ``img [H, W, 3]`` look like teeth: about as bright as
    the face's skin (luminance >= ``brightness`` x the median over ``skin_mask`` > 0.5,
    the lower face) and less colourful than it (max - min channel <= ``colourfulness`` x
    the skin's median). Lips are darker and redder, the cavity and tongue darker; on a
    real clip teeth measure about skin-bright at 0.6-0.8 of its colourfulness. Scaled by
    the frame's own skin, so exposure and white balance cancel. Bool ``[H, W]``, all
    False where the skin or the opening is empty."""
    x = img.float()
    skin = skin_mask.float() > 0.5
    inside = opening.bool()
    if int(skin.sum()) == 0 or int(inside.sum()) == 0:
        return torch.zeros(inside.shape, dtype=torch.bool, device=inside.device)
    y = 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]
    chroma = x.max(-1).values - x.min(-1).values
    bright = y >= brightness * y[skin].median()
    pale = chroma <= colourfulness * chroma[skin].median()
    return bright & pale & inside
