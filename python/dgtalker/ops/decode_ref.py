"""Dense PyTorch reference of :func:`dgtalker.ops.decode.decode_gaussians`."""
from __future__ import annotations

import torch
from torch import Tensor

from .raster_ref import quat_to_rotmat

CHANNELS_PER_GAUSSIAN = 14


def quat_multiply(a: Tensor, b: Tensor) -> Tensor:
    """Hamilton product of [..., 4] quaternions (w, x, y, z)."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
                        aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw], -1)


def decode_gaussians(raw: Tensor, template, *, offset_scale: float):
    """PyTorch implementation of `dgtalker.ops.decode.decode_gaussians()`."""
    F, _, R, _ = raw.shape
    G = template.gaussians_per_texel
    M = template.texel_index.shape[0]
    texels = raw.reshape(F, G, CHANNELS_PER_GAUSSIAN, R * R)[..., template.texel_index]  # [F, G, 14, M]
    r = texels.permute(0, 3, 1, 2).reshape(F, M * G, CHANNELS_PER_GAUSSIAN)          # n = m G + g
    pos = template.position.repeat_interleave(G, 0)
    frame = template.frame.repeat_interleave(G, 0)
    log_size = template.log_size.repeat_interleave(G, 0)
    offset = r[..., 0:3] * (offset_scale * torch.exp(log_size))[:, None]
    means = pos + (quat_to_rotmat(frame) @ offset.unsqueeze(-1)).squeeze(-1)
    scales = torch.exp(r[..., 3:6] + log_size[:, None])
    q = r[..., 6:10] + torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=raw.dtype, device=raw.device)
    quats = quat_multiply(frame.expand_as(q), q / q.norm(dim=-1, keepdim=True))
    return means, quats, scales, torch.sigmoid(r[..., 10]), torch.sigmoid(r[..., 11:14])
