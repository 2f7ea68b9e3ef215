"""Latent blendshapes of a talking identity: ``B_exp [Ke, D]`` and ``B_lip [Kl, D]``.

All ``Ke + Kl`` rows are mutually orthonormal *exactly* (to float rounding), by
construction rather than by a penalty: the module holds an unconstrained matrix
``A [Ke + Kl, D]`` and the basis is the Q factor of its thin QR decomposition,
computed in float64 (signs fixed so that diag(R) > 0, which makes the map from A to
the basis smooth and unique). Gradient steps on A therefore move the subspace and
never break orthogonality.

Orthonormal rows have unit length, so the size of a motion lives in per-component
scales ``exp(log_scale)``: a frame's latent is

    w = w_can + (c_exp * s_exp) @ B_exp + (c_lip * s_lip) @ B_lip

with coefficients ``c`` of order one (the audio encoder's outputs). ``scaled()``
returns the coefficients multiplied by their scales, ready for ``compose_latent``.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class Blendshapes(nn.Module):
    """Orthonormal expression and lip bases with per-component scales.

    Args:
        dim: latent size D.
        k_exp, k_lip: number of expression (upper face) and lip (lower face) components;
            ``k_exp + k_lip <= dim``.
        init_scale: initial scale of every component (latent units per unit coefficient).
        seed: the initial A is drawn from a private RNG seeded with this.
    """

    def __init__(self, dim: int, k_exp: int, k_lip: int, *, init_scale: float = 0.5, seed: int = 0):
        super().__init__()
        for name, v in (("dim", dim), ("k_exp", k_exp), ("k_lip", k_lip)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{name} must be a non-negative int, got {v!r}")
        if dim < 1 or k_exp + k_lip < 1 or k_exp + k_lip > dim:
            raise ValueError(f"need 1 <= k_exp + k_lip <= dim, got k_exp={k_exp}, k_lip={k_lip}, dim={dim}")
        if not init_scale > 0:
            raise ValueError(f"init_scale must be > 0, got {init_scale!r}")
        self.dim, self.k_exp, self.k_lip = dim, k_exp, k_lip
        gen = torch.Generator().manual_seed(int(seed))
        self.A = nn.Parameter(torch.randn(k_exp + k_lip, dim, generator=gen) / dim ** 0.5)
        self.log_scale = nn.Parameter(torch.full((k_exp + k_lip,), float(torch.tensor(init_scale).log())))

    def basis(self) -> Tensor:
        """All rows ``[Ke + Kl, D]`` (expression rows first), orthonormal, float32."""
        q, r = torch.linalg.qr(self.A.double().T)  # [D, K], [K, K]
        sign = torch.sign(torch.diagonal(r))
        sign = torch.where(sign == 0, torch.ones_like(sign), sign)
        return (q * sign).T.float()

    def bases(self) -> tuple[Tensor, Tensor]:
        """``(B_exp [Ke, D], B_lip [Kl, D])``."""
        B = self.basis()
        return B[: self.k_exp], B[self.k_exp:]

    def scales(self) -> tuple[Tensor, Tensor]:
        s = self.log_scale.exp()
        return s[: self.k_exp], s[self.k_exp:]

    def scaled(self, c_exp: Tensor, c_lip: Tensor) -> tuple[Tensor, Tensor]:
        """Coefficients times their component scales (what ``compose_latent`` takes)."""
        s_exp, s_lip = self.scales()
        return c_exp * s_exp, c_lip * s_lip

    def orthogonality_error(self) -> float:
        """``max |B Bᵀ - I|`` of the current basis (float32)."""
        with torch.no_grad():
            B = self.basis()
            return float((B @ B.T - torch.eye(B.shape[0], device=B.device)).abs().max())
