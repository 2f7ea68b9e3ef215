"""Random test scenes: fresh, non-zero values, small enough for the dense reference."""
from __future__ import annotations

import torch


def camera(batch: int, width: int, height: int, *, focal: float | None = None, spread: float = 0.15,
           generator: torch.Generator | None = None):
    """B cameras looking down +z at the origin region from slightly different places."""
    f = focal if focal is not None else 1.1 * max(width, height)
    viewmats = torch.eye(4).repeat(batch, 1, 1)
    if batch > 1:
        offsets = (torch.rand(batch, 3, generator=generator) - 0.5) * spread
        offsets[0] = 0
        viewmats[:, :3, 3] = offsets
    Ks = torch.tensor([[f, 0.0, width / 2 + 0.37], [0.0, f, height / 2 - 0.21], [0.0, 0.0, 1.0]]).repeat(batch, 1, 1)
    return viewmats, Ks


def gaussians(lead: tuple[int, ...], channels: int = 3, *, depth: float = 3.0, spread: float = 0.8,
              scale: tuple[float, float] = (0.02, 0.12), opacity: tuple[float, float] = (0.05, 0.95),
              generator: torch.Generator | None = None):
    """Gaussians in front of the camera, within about the field of view."""
    g = generator
    means = (torch.rand(*lead, 3, generator=g) - 0.5) * spread
    means[..., 2] = depth + (torch.rand(*lead, generator=g) - 0.5) * 1.5
    quats = torch.randn(*lead, 4, generator=g)
    scales = scale[0] + torch.rand(*lead, 3, generator=g) * (scale[1] - scale[0])
    opacities = opacity[0] + torch.rand(*lead, generator=g) * (opacity[1] - opacity[0])
    colors = torch.rand(*lead, channels, generator=g)
    return means, quats, scales, opacities, colors


def scene(batch: int = 1, n: int = 100, width: int = 48, height: int = 40, channels: int = 3,
          per_image: bool = False, seed: int = 0, **kwargs):
    g = torch.Generator().manual_seed(seed)
    lead = (batch, n) if per_image else (n,)
    viewmats, Ks = camera(batch, width, height, generator=g)
    return (*gaussians(lead, channels, generator=g, **kwargs), viewmats, Ks)
