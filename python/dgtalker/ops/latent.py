"""Blendshape latent composition fused with the synthesis network's style affines.

For F frames: ``w = w_can + c_exp @ B_exp + c_lip @ B_lip`` and
``styles = w @ affine_weight.T + affine_bias``, where ``affine_weight [S, D]`` stacks
the style affines of every synthesis layer (they are linear in w, so one small
kernel turns coefficients into all the layers' styles). CPU and CUDA; differentiable
in every input; deterministic backward.
"""
from __future__ import annotations

import torch
from torch import Tensor

from dgtalker._engine import engine

from ._engine_call import check_float, device_index, ptr, stream_handle


def _shape(F, D, Ke, Kl, S):
    s = engine().LatentShape()
    s.frames, s.dim, s.k_exp, s.k_lip, s.styles = F, D, Ke, Kl, S
    return s


class _ComposeLatent(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w_can, B_exp, B_lip, c_exp, c_lip, weight, bias):
        C = engine()
        F, Ke, Kl, S, D = c_exp.shape[0], B_exp.shape[0], B_lip.shape[0], weight.shape[0], w_can.shape[0]
        w = torch.empty(F, D, dtype=torch.float32, device=w_can.device)
        styles = torch.empty(F, S, dtype=torch.float32, device=w_can.device)
        b = C.LatentBuffers()
        b.w_can, b.b_exp, b.b_lip, b.c_exp, b.c_lip = ptr(w_can), ptr(B_exp), ptr(B_lip), ptr(c_exp), ptr(c_lip)
        b.weight, b.bias, b.w, b.styles = ptr(weight), ptr(bias), ptr(w), ptr(styles)
        C.compose_forward(_shape(F, D, Ke, Kl, S), device_index(w_can), b, stream_handle(w_can))
        ctx.save_for_backward(w_can, B_exp, B_lip, c_exp, c_lip, weight, bias, w)
        ctx.set_materialize_grads(False)
        return w, styles

    @staticmethod
    def backward(ctx, v_w, v_styles):
        C = engine()
        w_can, B_exp, B_lip, c_exp, c_lip, weight, bias, w = ctx.saved_tensors
        F, Ke, Kl, S, D = c_exp.shape[0], B_exp.shape[0], B_lip.shape[0], weight.shape[0], w_can.shape[0]
        dev = w_can.device
        if v_styles is None:
            v_styles = torch.zeros(F, S, dtype=torch.float32, device=dev)
        v_styles = v_styles.contiguous()
        v_w = None if v_w is None else v_w.contiguous()
        grads = {name: torch.empty(shape, dtype=torch.float32, device=dev) for name, shape in (
            ("v_w", (F, D)), ("v_w_can", (D,)), ("v_b_exp", (Ke, D)), ("v_b_lip", (Kl, D)),
            ("v_c_exp", (F, Ke)), ("v_c_lip", (F, Kl)), ("v_weight", (S, D)), ("v_bias", (S,)))}
        b = C.LatentBuffers()
        b.w_can, b.b_exp, b.b_lip, b.c_exp, b.c_lip = ptr(w_can), ptr(B_exp), ptr(B_lip), ptr(c_exp), ptr(c_lip)
        b.weight, b.bias, b.w = ptr(weight), ptr(bias), ptr(w)
        b.v_styles, b.v_w_out = ptr(v_styles), ptr(v_w)
        for name, t in grads.items():
            setattr(b, name, ptr(t))
        C.compose_backward(_shape(F, D, Ke, Kl, S), device_index(w_can), b, stream_handle(w_can))
        return (grads["v_w_can"], grads["v_b_exp"], grads["v_b_lip"], grads["v_c_exp"], grads["v_c_lip"],
                grads["v_weight"], grads["v_bias"])


def compose_latent(w_can: Tensor, B_exp: Tensor, B_lip: Tensor, c_exp: Tensor, c_lip: Tensor,
                   affine_weight: Tensor, affine_bias: Tensor) -> tuple[Tensor, Tensor]:
    """Composes per-frame latents and all layers' styles.

    Args:
        w_can: ``[D]`` canonical (neutral) latent of the identity.
        B_exp: ``[Ke, D]`` expression blendshapes (Ke may be 0).
        B_lip: ``[Kl, D]`` lip blendshapes (Kl may be 0).
        c_exp: ``[F, Ke]`` and c_lip: ``[F, Kl]`` per-frame coefficients.
        affine_weight: ``[S, D]`` and affine_bias: ``[S]``, the stacked style affines.

    Returns:
        ``w [F, D]`` and ``styles [F, S]``. float32, all on one device (CPU or CUDA; on CUDA
        D <= 1024).
    """
    w_can = check_float("w_can", w_can, 1)
    dev, D = w_can.device, w_can.shape[0]
    B_exp = check_float("B_exp", B_exp, 2, dev)
    B_lip = check_float("B_lip", B_lip, 2, dev)
    c_exp = check_float("c_exp", c_exp, 2, dev)
    c_lip = check_float("c_lip", c_lip, 2, dev)
    affine_weight = check_float("affine_weight", affine_weight, 2, dev)
    affine_bias = check_float("affine_bias", affine_bias, 1, dev)
    F = c_exp.shape[0]
    for name, t, want in (("B_exp", B_exp, (B_exp.shape[0], D)), ("B_lip", B_lip, (B_lip.shape[0], D)),
                          ("c_exp", c_exp, (F, B_exp.shape[0])), ("c_lip", c_lip, (F, B_lip.shape[0])),
                          ("affine_weight", affine_weight, (affine_weight.shape[0], D)),
                          ("affine_bias", affine_bias, (affine_weight.shape[0],))):
        if tuple(t.shape) != want:
            raise ValueError(f"{name} must have shape {list(want)} (D = {D} from w_can, F = {F} from c_exp, "
                             f"Ke/Kl from the bases, S from affine_weight), got {list(t.shape)}")
    if D == 0:
        raise ValueError("w_can must not be empty")
    if dev.type == "cuda" and D > 1024:
        raise ValueError(f"compose_latent on CUDA supports a latent size D <= 1024, got {D}")
    return _ComposeLatent.apply(w_can, B_exp, B_lip, c_exp, c_lip, affine_weight, affine_bias)


def latent_styles(w: Tensor, affine_weight: Tensor, affine_bias: Tensor) -> Tensor:
    """Styles of given latents ``w [F, D]`` (no blendshapes): ``w @ affine_weight.T + affine_bias``.

    This is the second half of ``compose_latent`` on its own: a plain matrix product,
    which torch's GEMM already does well, so no engine kernel is involved.
    """
    return torch.addmm(affine_bias, w, affine_weight.T)
