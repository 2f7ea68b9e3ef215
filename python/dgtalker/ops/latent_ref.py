"""Dense PyTorch reference of :func:`dgtalker.ops.latent.compose_latent`."""
from __future__ import annotations

from torch import Tensor


def compose_latent(w_can: Tensor, B_exp: Tensor, B_lip: Tensor, c_exp: Tensor, c_lip: Tensor,
                   affine_weight: Tensor, affine_bias: Tensor) -> tuple[Tensor, Tensor]:
    """PyTorch implementation of `dgtalker.ops.latent.compose_latent()`."""
    w = w_can + c_exp @ B_exp + c_lip @ B_lip
    return w, w @ affine_weight.T + affine_bias
