"""Dense PyTorch reference of the Gaussian rasterizer.

Mirrors ``dgtalker.ops.raster.rasterize`` (the tiled CPU/CUDA engine): every Gaussian
is evaluated at every pixel, Gaussians are sorted globally by camera depth, and no
tiles, bounds or sorting tricks are involved. Slow and memory-hungry
(O(B * N * H * W)), obviously correct, differentiable by autograd; it runs in the
dtype of its inputs, so float64 inputs give a high-precision check.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ._inputs import prepare_inputs

LOW_PASS = 0.3
ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.999
TRANSMITTANCE_MIN = 1e-4
FRUSTUM_MARGIN = 0.15
DEPTH_ALPHA_MIN = 1e-6


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """[..., 4] (w, x, y, z), normalized inside -> [..., 3, 3]."""
    w, x, y, z = (quats / quats.norm(dim=-1, keepdim=True)).unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(quats.shape[:-1] + (3, 3))


def project(means: Tensor, quats: Tensor, scales: Tensor, viewmat: Tensor, K: Tensor,
            width: int, height: int):
    """EWA projection of [N] Gaussians for one camera.

    Returns (mean2d [N, 2], cov2d [N, 2, 2] with the low-pass, depth [N]).
    """
    R, t = viewmat[:3, :3], viewmat[:3, 3]
    p = means @ R.T + t
    x, y, z = p.unbind(-1)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    rot = quat_to_rotmat(quats)
    M = rot * scales.unsqueeze(-2)                      # R diag(s)
    cov_cam = R @ (M @ M.transpose(-1, -2)) @ R.T
    lim_x_pos = (width - cx) / fx + FRUSTUM_MARGIN * width / fx
    lim_x_neg = cx / fx + FRUSTUM_MARGIN * width / fx
    lim_y_pos = (height - cy) / fy + FRUSTUM_MARGIN * height / fy
    lim_y_neg = cy / fy + FRUSTUM_MARGIN * height / fy
    tx = z * torch.minimum(torch.maximum(x / z, -lim_x_neg), lim_x_pos)
    ty = z * torch.minimum(torch.maximum(y / z, -lim_y_neg), lim_y_pos)
    zero = torch.zeros_like(z)
    J = torch.stack([fx / z, zero, -fx * tx / z**2, zero, fy / z, -fy * ty / z**2], -1).reshape(-1, 2, 3)
    cov2d = J @ cov_cam @ J.transpose(-1, -2) + LOW_PASS * torch.eye(2, dtype=means.dtype, device=means.device)
    mean2d = torch.stack([fx * x / z + cx, fy * y / z + cy], -1)
    return mean2d, cov2d, z


def _render_one(means, quats, scales, opacities, colors, viewmat, K, width, height, near, far):
    mean2d, cov2d, depth = project(means, quats, scales, viewmat, K, width, height)
    a, b, c = cov2d[:, 0, 0], cov2d[:, 0, 1], cov2d[:, 1, 1]
    det = a * c - b * b
    conic = torch.stack([c / det, -b / det, a / det], -1)
    visible = (depth >= near) & (depth <= far) & (opacities >= ALPHA_MIN) & (det > 0)

    dev, dt = means.device, means.dtype
    jj, ii = torch.meshgrid(torch.arange(width, device=dev, dtype=dt) + 0.5,
                            torch.arange(height, device=dev, dtype=dt) + 0.5, indexing="xy")
    pix = torch.stack([jj.reshape(-1), ii.reshape(-1)], -1)        # [HW, 2]
    d = pix[None] - mean2d[:, None]                                  # [N, HW, 2]
    dx, dy = d[..., 0], d[..., 1]
    power = 0.5 * (conic[:, 0:1] * dx * dx + conic[:, 2:3] * dy * dy) + conic[:, 1:2] * dx * dy
    alpha = torch.clamp(opacities[:, None] * torch.exp(-power), max=ALPHA_MAX)
    keep = visible[:, None] & (power >= 0) & (alpha >= ALPHA_MIN)
    alpha = torch.where(keep, alpha, torch.zeros_like(alpha))

    order = torch.sort(torch.where(visible, depth, torch.full_like(depth, float("inf"))), stable=True).indices
    alpha, col, z = alpha[order], colors[order], depth[order]
    # a splat counts while the transmittance after it stays >= 1e-4 (a prefix, as T only falls)
    T_after = torch.cumprod(1 - alpha, dim=0)
    alpha = torch.where(T_after.detach() >= TRANSMITTANCE_MIN, alpha, torch.zeros_like(alpha))
    T_after = torch.cumprod(1 - alpha, dim=0)
    T_before = torch.cat([torch.ones_like(T_after[:1]), T_after[:-1]], 0)
    w = alpha * T_before                                             # [N, HW]
    image = (w.T @ col).reshape(height, width, -1)
    depth_sum = (w * z[:, None]).sum(0).reshape(height, width)
    T_final = T_after[-1] if len(T_after) else torch.ones(height * width, device=dev, dtype=dt)
    return image, 1 - T_final.reshape(height, width), depth_sum


def finish_outputs(raw_image: Tensor, alpha: Tensor, depth_sum: Tensor,
                   background: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Composites the background and turns the accumulated depth into expected depth.

    The engine does the same inside its blend kernel: ``image = sum(c w) + (1 - alpha) bg`` and
    ``depth = sum(z w) / alpha`` (0 where nothing was hit).
    """
    if background is not None:
        raw_image = raw_image + (1.0 - alpha).unsqueeze(-1) * background[:, None, None, :]
    hit = alpha > DEPTH_ALPHA_MIN
    depth = torch.where(hit, depth_sum / torch.where(hit, alpha, torch.ones_like(alpha)), torch.zeros_like(depth_sum))
    return raw_image, alpha, depth


def rasterize(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
              viewmats: Tensor, Ks: Tensor, width: int, height: int, *, near: float = 0.01,
              far: float = 1e10, background: Tensor | None = None, **unused) -> tuple[Tensor, Tensor, Tensor]:
    """Dense PyTorch reference of :func:`dgtalker.rasterize`; same arguments and outputs.

    Extra keyword arguments of the engine (``deterministic``, ``checked``) are accepted
    and ignored, so a call can be switched between the two by name alone.
    """
    inp = prepare_inputs(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                         near, far, background, dtype=None)
    images, alphas, depths = [], [], []
    for b in range(inp.batch):
        s = b if inp.per_image else 0
        if inp.num_gaussians == 0:
            H, W = inp.height, inp.width
            img = inp.colors.new_zeros(H, W, inp.channels)
            al, dp = inp.colors.new_zeros(H, W), inp.colors.new_zeros(H, W)
        else:
            img, al, dp = _render_one(inp.means[s], inp.quats[s], inp.scales[s], inp.opacities[s],
                                      inp.colors[s], inp.viewmats[b], inp.Ks[b], inp.width, inp.height,
                                      inp.near, inp.far)
        images.append(img)
        alphas.append(al)
        depths.append(dp)
    return finish_outputs(torch.stack(images), torch.stack(alphas), torch.stack(depths), inp.background)
