"""Synthetic head-like Gaussian scenes and cameras for the rasterizer benchmark.

A talking head is, to the rasterizer, a closed shell of small, fairly opaque
Gaussians about the size of a human head. This module draws such a shell with
fresh random values from a seed (never zeros, never a regular grid), and frontal
pinhole cameras that frame it at ~80% of the image height.

Conventions (shared by dgtalker.rasterize and gsplat.rasterization):
  * world units are metres;
  * cameras are OpenCV: x right, y down, z forward; ``viewmats`` map world to
    camera, ``[B, 4, 4]``; intrinsics ``Ks`` are ``[B, 3, 3]`` in pixels;
  * quaternions are (w, x, y, z), unit length; scales are standard deviations;
  * opacities and colours are already activated (in (0, 1)).

Everything is built on the CPU with a seeded ``torch.Generator`` so the same seed
gives the same scene on every machine, then moved to the requested device.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

# Head-sized ellipsoid, metres: half width (x), half height (y), half depth (z).
HEAD_SEMI_AXES: Tuple[float, float, float] = (0.09, 0.12, 0.10)
# Vertical field of view of the benchmark cameras.
FOV_Y_DEG: float = 30.0
# Fraction of the image height the head should fill.
FILL: float = 0.8


@dataclass
class Scene:
    """One benchmark input. Gaussian tensors are either shared by all images
    (``[N, ...]``) or per image (``[B, N, ...]``, see ``per_image``)."""

    means: Tensor  # [N, 3] or [B, N, 3]
    quats: Tensor  # [N, 4] or [B, N, 4], (w, x, y, z), unit length
    scales: Tensor  # [N, 3] or [B, N, 3], standard deviations, metres
    opacities: Tensor  # [N] or [B, N], in (0.05, 1)
    colors: Tensor  # [N, C] or [B, N, C], in (0, 1)
    viewmats: Tensor  # [B, 4, 4], world to camera
    Ks: Tensor  # [B, 3, 3]
    width: int
    height: int
    per_image: bool = False
    info: Dict[str, float] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.means.shape[-2])

    @property
    def batch(self) -> int:
        return int(self.viewmats.shape[0])

    def gaussian_tensors(self) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        return self.means, self.quats, self.scales, self.opacities, self.colors

    def requires_grad_(self, flag: bool = True) -> "Scene":
        for t in self.gaussian_tensors():
            t.requires_grad_(flag)
        return self


def ellipsoid_area(a: float, b: float, c: float) -> float:
    """Surface area of an ellipsoid (Knud Thomsen's approximation, ~1% error)."""
    p = 1.6075
    return 4.0 * math.pi * (((a * b) ** p + (a * c) ** p + (b * c) ** p) / 3.0) ** (1.0 / p)


def head_gaussians(
    n: int,
    *,
    seed: int = 0,
    semi_axes: Tuple[float, float, float] = HEAD_SEMI_AXES,
    radial_jitter: float = 0.03,
    scale_factor: float = 0.8,
    scale_spread: float = 1.0,
    channels: int = 3,
    generator: Optional[torch.Generator] = None,
) -> Dict[str, Tensor]:
    """Draw ``n`` Gaussians on a head-sized ellipsoid shell (CPU, float32).

    Means: a direction uniform on the unit sphere, stretched by ``semi_axes`` and
    by a radial factor in ``1 ± radial_jitter`` (a few mm of thickness).

    Scales: log-uniform per axis in ``s0 · [e^-spread, e^spread]``, where
    ``s0 = scale_factor · sqrt(shell area / n)`` is the mean spacing of the
    points; with the defaults this is ~1 mm at 100k Gaussians, a few mm at the
    largest axes, like a trained head, and the shell is covered without holes.

    Returns a dict with ``means [n,3], quats [n,4], scales [n,3],
    opacities [n], colors [n,channels]``.
    """
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    g = generator if generator is not None else torch.Generator().manual_seed(seed)
    a = torch.tensor(semi_axes, dtype=torch.float64)

    dirs = torch.randn(n, 3, generator=g, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    radial = 1.0 + radial_jitter * (2.0 * torch.rand(n, 1, generator=g, dtype=torch.float64) - 1.0)
    means = dirs * a * radial

    quats = torch.randn(n, 4, generator=g, dtype=torch.float64)
    quats = quats / quats.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    spacing = math.sqrt(ellipsoid_area(*semi_axes) / n)
    s0 = scale_factor * spacing
    log_s = math.log(s0) + scale_spread * (2.0 * torch.rand(n, 3, generator=g, dtype=torch.float64) - 1.0)
    scales = log_s.exp()

    opacities = 0.05 + 0.95 * torch.rand(n, generator=g, dtype=torch.float64)
    opacities = opacities.clamp(0.05 + 1e-6, 1.0 - 1e-6)
    colors = torch.rand(n, channels, generator=g, dtype=torch.float64).clamp(1e-6, 1.0 - 1e-6)

    return {
        "means": means.float(),
        "quats": quats.float(),
        "scales": scales.float(),
        "opacities": opacities.float(),
        "colors": colors.float(),
        "s0": torch.tensor(s0),
    }


def camera_distance(height_m: float, fov_y_deg: float = FOV_Y_DEG, fill: float = FILL) -> float:
    """Distance from the head centre at which an object ``height_m`` tall spans
    ``fill`` of the image height (pinhole, measured at the centre plane)."""
    return height_m / (2.0 * fill * math.tan(math.radians(fov_y_deg) / 2.0))


def front_cameras(
    batch: int,
    width: int,
    height: int,
    *,
    yaw_step_deg: float = 4.0,
    semi_axes: Tuple[float, float, float] = HEAD_SEMI_AXES,
    fov_y_deg: float = FOV_Y_DEG,
    fill: float = FILL,
) -> Tuple[Tensor, Tensor]:
    """``batch`` pinhole cameras looking at the head centre from the front.

    Camera ``i`` is rotated about the head's vertical (y) axis by a yaw of
    ``(i - (batch-1)/2) · yaw_step_deg`` (a single camera looks straight on).
    The head centre sits on the optical axis, at ``camera_distance``.
    The world frame is OpenCV-like (y down), so the unrotated camera is the
    identity rotation placed at ``(0, 0, -d)``.

    Returns ``viewmats [batch, 4, 4]`` (world to camera) and ``Ks [batch, 3, 3]``,
    float32 on the CPU.
    """
    if batch <= 0:
        raise ValueError(f"batch must be positive, got {batch}")
    d = camera_distance(2.0 * semi_axes[1], fov_y_deg, fill)
    f = 0.5 * height / math.tan(math.radians(fov_y_deg) / 2.0)
    viewmats = torch.zeros(batch, 4, 4, dtype=torch.float64)
    Ks = torch.zeros(batch, 3, 3, dtype=torch.float64)
    for i in range(batch):
        yaw = math.radians((i - (batch - 1) / 2.0) * yaw_step_deg)
        cy, sy = math.cos(yaw), math.sin(yaw)
        # Camera-to-world rotation: yaw about +y. World-to-camera is its transpose;
        # the camera centre is R_cw · (0, 0, -d), so t = -R_wc · centre = (0, 0, d).
        r_cw = torch.tensor([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]], dtype=torch.float64)
        viewmats[i, :3, :3] = r_cw.T
        viewmats[i, :3, 3] = torch.tensor([0.0, 0.0, d], dtype=torch.float64)
        viewmats[i, 3, 3] = 1.0
        Ks[i] = torch.tensor(
            [[f, 0.0, 0.5 * width], [0.0, f, 0.5 * height], [0.0, 0.0, 1.0]], dtype=torch.float64
        )
    return viewmats.float(), Ks.float()


def make_scene(
    n: int,
    res: int,
    batch: int = 1,
    *,
    per_image: bool = False,
    seed: int = 0,
    device: str | torch.device = "cpu",
    channels: int = 3,
    means_jitter: float = 1e-3,
    scale_jitter: float = 0.05,
) -> Scene:
    """A benchmark scene: ``n`` Gaussians, ``batch`` cameras of ``res × res``.

    ``per_image=False``: one Gaussian set seen by ``batch`` cameras (yaw offsets).
    ``per_image=True``: ``batch`` different Gaussian sets, one per camera, as a
    talking head changes every frame: image ``b`` jitters the means by
    ``N(0, means_jitter)`` metres and the scales by ``exp(N(0, scale_jitter))``;
    quaternions, opacities and colours also get small per-image changes.
    """
    g = torch.Generator().manual_seed(seed)
    base = head_gaussians(n, channels=channels, generator=g)
    viewmats, Ks = front_cameras(batch, res, res)
    info = {"s0_m": float(base["s0"]), "cam_distance_m": float(viewmats[0, 2, 3]), "fx_px": float(Ks[0, 0, 0])}
    if per_image:
        means = base["means"][None] + means_jitter * torch.randn(batch, n, 3, generator=g)
        scales = base["scales"][None] * torch.exp(scale_jitter * torch.randn(batch, n, 3, generator=g))
        quats = base["quats"][None] + 0.05 * torch.randn(batch, n, 4, generator=g)
        quats = quats / quats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        opacities = (base["opacities"][None] * torch.exp(0.05 * torch.randn(batch, n, generator=g))).clamp(
            0.05 + 1e-6, 1.0 - 1e-6
        )
        colors = (base["colors"][None] + 0.02 * torch.randn(batch, n, channels, generator=g)).clamp(1e-6, 1.0 - 1e-6)
    else:
        means, quats, scales = base["means"], base["quats"], base["scales"]
        opacities, colors = base["opacities"], base["colors"]
    dev = torch.device(device)
    return Scene(
        means=means.contiguous().to(dev),
        quats=quats.contiguous().to(dev),
        scales=scales.contiguous().to(dev),
        opacities=opacities.contiguous().to(dev),
        colors=colors.contiguous().to(dev),
        viewmats=viewmats.to(dev),
        Ks=Ks.to(dev),
        width=res,
        height=res,
        per_image=per_image,
        info=info,
    )


def projected_extent(scene: Scene) -> Tuple[float, float]:
    """Fraction of the image height and width spanned by the projected means of
    the first image (a CPU check that the head fills the frame as intended)."""
    means = scene.means if not scene.per_image else scene.means[0]
    vm, K = scene.viewmats[0].double().cpu(), scene.Ks[0].double().cpu()
    p = means.double().cpu() @ vm[:3, :3].T + vm[:3, 3]
    uv = p[:, :2] / p[:, 2:3] * torch.stack([K[0, 0], K[1, 1]]) + torch.stack([K[0, 2], K[1, 2]])
    h = float(uv[:, 1].max() - uv[:, 1].min()) / scene.height
    w = float(uv[:, 0].max() - uv[:, 0].min()) / scene.width
    return h, w
