"""UV attribute maps + head template -> rasterizer-ready Gaussians (the decode kernel).

``raw [F, 14 G, R, R]`` comes from the synthesis network; for every valid texel m of
the template and each of its G Gaussians (channels ``c = 14 g``):

    offset   = raw[c:c+3] * offset_scale * size_m     (in the texel's tangent frame)
    mean     = position_m + rotate(frame_m, offset)
    scale    = exp(raw[c+3:c+6] + log_size_m)
    quat     = frame_m (x) normalize(raw[c+6:c+10] + (1, 0, 0, 0))
    opacity  = sigmoid(raw[c+10]),   colour = sigmoid(raw[c+11:c+14])

Outputs are ``[F, M G, ...]`` in the order n = m G + g, ready for
:func:`dgtalker.rasterize`. One pass on CPU or CUDA; the backward gives dL/draw
(zero at texels outside the template). The template itself is not trained.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dgtalker._engine import engine

from ._engine_call import check_float, device_index, ptr, stream_handle
from .decode_ref import CHANNELS_PER_GAUSSIAN


@dataclass
class DecodeTemplate:
    """The template's valid texels, as the decode kernel reads them.

    Validated on construction, and again by ``decode_gaussians`` whenever one of its
    tensors was replaced or modified in place since (tracked by data pointer and
    torch's version counter, so the check, which reads values back, does not run
    per call). Every texel may appear once: the backward writes each raw entry's
    gradient once, so a repeated texel would lose all but one contribution."""
    texel_index: Tensor  # [M] int64, flat index into the R x R UV grid
    position: Tensor     # [M, 3] surface points, head frame, metres
    frame: Tensor        # [M, 4] unit quaternions (w, x, y, z): x = tangent (u), y = along v, z = outward normal
    log_size: Tensor     # [M] log of the texel footprint in metres
    resolution: int      # R
    gaussians_per_texel: int = 1  # G

    def __post_init__(self) -> None:
        self.validate()

    def to(self, device) -> "DecodeTemplate":
        return DecodeTemplate(self.texel_index.to(device), self.position.to(device), self.frame.to(device),
                              self.log_size.to(device), self.resolution, self.gaussians_per_texel)

    def _key(self) -> tuple:
        return (self.resolution, self.gaussians_per_texel) + tuple(
            (t.data_ptr(), t._version, t.device) if isinstance(t, Tensor) else id(t)
            for t in (self.texel_index, self.position, self.frame, self.log_size))

    def validate(self) -> None:
        """Raises ValueError/TypeError naming the field: shapes and dtypes, resolution
        and G, texel indices in [0, R*R) and distinct, finite positions and sizes,
        unit-norm frames (within 1e-3)."""
        for name in ("texel_index", "position", "frame", "log_size"):
            if not isinstance(getattr(self, name), Tensor):
                raise TypeError(f"template.{name} must be a torch.Tensor, got {type(getattr(self, name)).__name__}")
        M, R = self.texel_index.shape[0] if self.texel_index.dim() == 1 else -1, self.resolution
        if self.texel_index.dtype != torch.int64 or self.texel_index.dim() != 1:
            raise ValueError(f"template.texel_index must be a 1-D int64 tensor, got {self.texel_index.dtype} "
                             f"{list(self.texel_index.shape)}")
        for name, t, shape in (("position", self.position, (M, 3)), ("frame", self.frame, (M, 4)),
                               ("log_size", self.log_size, (M,))):
            if t.dtype != self.position.dtype or not t.is_floating_point() or tuple(t.shape) != shape:
                raise ValueError(f"template.{name} must be a floating tensor {list(shape)} of one dtype with "
                                 f"the others, got {t.dtype} {list(t.shape)}")
            if t.device != self.texel_index.device:
                raise ValueError(f"template.{name} is on {t.device} but template.texel_index is on "
                                 f"{self.texel_index.device}")
        for name in ("resolution", "gaussians_per_texel"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"template.{name} must be an int >= 1, got {v!r}")
        if M and (int(self.texel_index.min()) < 0 or int(self.texel_index.max()) >= R * R):
            raise ValueError(f"template.texel_index must lie in [0, R*R) = [0, {R * R})")
        if M:
            repeats = M - int(torch.unique(self.texel_index).numel())
            if repeats:
                raise ValueError(f"template.texel_index has {repeats} repeated texel(s); every texel may appear "
                                 f"once (the decode backward writes each texel's gradient once)")
        for name, t in (("position", self.position), ("log_size", self.log_size), ("frame", self.frame)):
            if t.numel() and not bool(torch.isfinite(t).all()):
                raise ValueError(f"template.{name} must be finite")
        if M:
            err = float((self.frame.norm(dim=1) - 1).abs().max())
            if err > 1e-3:
                raise ValueError(f"template.frame must hold unit quaternions; a norm differs from 1 by {err:.3g}")
        self._validated = self._key()


def _shape(F, M, G, R, offset_scale):
    s = engine().DecodeShape()
    s.frames, s.texels, s.per_texel, s.resolution, s.offset_scale = F, M, G, R, float(offset_scale)
    return s


def _template_ptrs(b, tpl: DecodeTemplate) -> None:
    b.texel_index, b.position, b.frame, b.log_size = (ptr(tpl.texel_index), ptr(tpl.position), ptr(tpl.frame),
                                                      ptr(tpl.log_size))


class _Decode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, raw, tpl: DecodeTemplate, offset_scale: float):
        C = engine()
        F, R = raw.shape[0], tpl.resolution
        M, G = tpl.texel_index.shape[0], tpl.gaussians_per_texel
        N = M * G
        out = [torch.empty(shape, dtype=torch.float32, device=raw.device)
               for shape in ((F, N, 3), (F, N, 4), (F, N, 3), (F, N), (F, N, 3))]
        b = C.DecodeBuffers()
        b.raw = ptr(raw)
        _template_ptrs(b, tpl)
        b.means, b.quats, b.scales, b.opacities, b.colors = (ptr(t) for t in out)
        C.decode_forward(_shape(F, M, G, R, offset_scale), device_index(raw), b, stream_handle(raw))
        ctx.tpl, ctx.offset_scale = tpl, offset_scale
        ctx.save_for_backward(raw)
        ctx.set_materialize_grads(False)
        return tuple(out)

    @staticmethod
    def backward(ctx, v_means, v_quats, v_scales, v_opacities, v_colors):
        C = engine()
        (raw,) = ctx.saved_tensors
        tpl = ctx.tpl
        F, R = raw.shape[0], tpl.resolution
        M, G = tpl.texel_index.shape[0], tpl.gaussians_per_texel
        v_raw = torch.zeros_like(raw)  # texels outside the template get no gradient
        b = C.DecodeBuffers()
        b.raw = ptr(raw)
        _template_ptrs(b, tpl)
        grads = [None if g is None else g.contiguous() for g in (v_means, v_quats, v_scales, v_opacities, v_colors)]
        b.v_means, b.v_quats, b.v_scales, b.v_opacities, b.v_colors = (ptr(g) for g in grads)
        b.v_raw = ptr(v_raw)
        C.decode_backward(_shape(F, M, G, R, ctx.offset_scale), device_index(raw), b, stream_handle(raw))
        return v_raw, None, None  # template and offset_scale: not trained


def decode_gaussians(raw: Tensor, template: DecodeTemplate, *, offset_scale: float):
    """Decodes raw UV maps ``[F, 14 G, R, R]`` into ``(means, quats, scales, opacities, colors)``,
    each ``[F, M G, ...]``; see the module docstring for the formulas."""
    raw = check_float("raw", raw, 4)
    R, G = template.resolution, template.gaussians_per_texel
    if raw.shape[1:] != (CHANNELS_PER_GAUSSIAN * G, R, R):
        raise ValueError(f"raw must have shape [F, {CHANNELS_PER_GAUSSIAN * G}, {R}, {R}] "
                         f"(14 channels x {G} Gaussians per texel, R = {R}), got {list(raw.shape)}")
    if template.position.dtype != torch.float32:
        raise TypeError(f"template tensors must be float32 for the engine, got {template.position.dtype}")
    if template.position.device != raw.device:
        raise ValueError(f"template is on {template.position.device} but raw is on {raw.device}")
    if getattr(template, "_validated", None) != template._key():
        template.validate()  # changed since it was last checked
    if not offset_scale > 0:
        raise ValueError(f"offset_scale must be > 0, got {offset_scale}")
    return _Decode.apply(raw, template, float(offset_scale))
