"""Validation and normalization of rasterizer inputs, shared by the engine wrapper
and the dense reference so both accept and reject exactly the same things.

Values are checked the same way for every backend. The per-camera inputs (viewmats,
Ks: finite, fx, fy > 0, no skew, last row [0, 0, 1]; background: finite) are checked
here by ``camera_checks`` for CPU and CUDA alike: on the CPU each failed check raises
at once; on CUDA the same checks become a bit mask on the device
(``RasterInputs.invalid_flags``, no GPU->CPU sync, capturable in a CUDA graph) that
the wrapper ORs into the call's status word, reported like the engine's own flags.
Per-Gaussian values are checked here on the CPU and, with the same predicates, by the
engine's project stage on CUDA (``csrc/raster/raster_stages.h``)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

MAX_CHANNELS = 32
# Bits of the status word's invalid-input field (csrc/raster/raster_math.h, InvalidInput)
# that the per-camera checks set; INVALID_BACKGROUND is set by Python only.
INVALID_CAMERAS = 32
INVALID_BACKGROUND = 64


@dataclass
class RasterInputs:
    means: Tensor      # [S, N, 3], S = B when per_image else 1
    quats: Tensor      # [S, N, 4]
    scales: Tensor     # [S, N, 3]
    opacities: Tensor  # [S, N]
    colors: Tensor     # [S, N, C]
    viewmats: Tensor   # [B, 4, 4]
    Ks: Tensor         # [B, 3, 3]
    background: Tensor | None  # [B, C]
    batch: int
    num_gaussians: int
    channels: int
    per_image: bool
    width: int
    height: int
    near: float
    far: float
    # CUDA only: bit mask (0-dim int64 on the device) of failed per-camera checks, to be
    # ORed into the status word; None when the checks already ran (and raised) here
    invalid_flags: Tensor | None = None


def _shape(t: Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def _require_tensor(name: str, value) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def _check_values(name: str, t: Tensor, what: str, ok: Tensor) -> None:
    if t.numel() and not bool(ok.all()):
        bad = int((~ok).sum())
        raise ValueError(f"{name} must be {what}; {bad} value(s) are not")


def prepare_inputs(means, quats, scales, opacities, colors, viewmats, Ks, width, height, near,
                   far, background, *, dtype: torch.dtype | None = torch.float32,
                   check_values: bool = True) -> RasterInputs:
    """Checks shapes, dtypes, devices and (when ``check_values``) values.

    Per-Gaussian inputs are either one set shared by every image (``[N, ...]``) or
    one set per image (``[B, N, ...]``). Errors name the argument, what was expected
    and what arrived.
    """
    names = ("means", "quats", "scales", "opacities", "colors", "viewmats", "Ks")
    tensors = [_require_tensor(n, v) for n, v in zip(names, (means, quats, scales, opacities, colors, viewmats, Ks))]
    means, quats, scales, opacities, colors, viewmats, Ks = tensors

    for n, t in zip(names, tensors):
        if dtype is not None and t.dtype != dtype:
            raise TypeError(f"{n} must have dtype {dtype}, got {t.dtype}")
        if dtype is None and not t.is_floating_point():
            raise TypeError(f"{n} must be a floating-point tensor, got {t.dtype}")
    device = means.device
    for n, t in zip(names, tensors):
        if t.device != device:
            raise ValueError(f"{n} is on {t.device} but means is on {device}; all inputs must share one device")

    if viewmats.dim() != 3 or viewmats.shape[1:] != (4, 4):
        raise ValueError(f"viewmats must have shape [B, 4, 4], got {_shape(viewmats)}")
    B = viewmats.shape[0]
    if B < 1:
        raise ValueError("viewmats must hold at least one camera (B >= 1), got B = 0")
    if Ks.shape != (B, 3, 3):
        raise ValueError(f"Ks must have shape [B, 3, 3] = [{B}, 3, 3] to match viewmats, got {_shape(Ks)}")

    if means.dim() == 2:
        per_image = False
    elif means.dim() == 3:
        per_image = True
        if means.shape[0] != B:
            raise ValueError(f"means has {means.shape[0]} Gaussian sets but viewmats has {B} cameras; "
                             f"per-image means must have shape [B, N, 3] with B = {B}")
    else:
        raise ValueError(f"means must have shape [N, 3] or [B, N, 3], got {_shape(means)}")
    if means.shape[-1] != 3:
        raise ValueError(f"means must have shape [N, 3] or [B, N, 3], got {_shape(means)}")
    lead = tuple(means.shape[:-1])  # (N,) or (B, N)
    N = lead[-1]
    lead_str = "[N, ...]" if not per_image else "[B, N, ...]"

    def expect(n: str, t: Tensor, tail: tuple[int, ...], tail_str: str) -> None:
        if tuple(t.shape) != lead + tail:
            want = "[" + ", ".join([*(str(s) for s in lead), *tail_str.split(",")]).strip(", ") + "]"
            raise ValueError(f"{n} must have shape {want} (like means, {lead_str}), got {_shape(t)}")

    expect("quats", quats, (4,), "4")
    expect("scales", scales, (3,), "3")
    if tuple(opacities.shape) != lead:
        raise ValueError(f"opacities must have shape [{', '.join(map(str, lead))}] (like means without the "
                         f"last axis), got {_shape(opacities)}")
    if colors.dim() != len(lead) + 1 or tuple(colors.shape[:-1]) != lead:
        raise ValueError(f"colors must have shape [{', '.join(map(str, lead))}, C], got {_shape(colors)}")
    C = colors.shape[-1]
    if not 1 <= C <= MAX_CHANNELS:
        raise ValueError(f"colors must have 1 to {MAX_CHANNELS} channels, got C = {C}")

    width, height = _check_size("width", width), _check_size("height", height)
    near, far = check_clip_planes(near, far)

    if background is not None:
        background = _require_tensor("background", background)
        if background.device != device:
            raise ValueError(f"background is on {background.device} but means is on {device}")
        if not background.is_floating_point():
            raise TypeError(f"background must be a floating-point tensor, got {background.dtype}")
        if background.shape == (C,):
            background = background.unsqueeze(0).expand(B, C)
        elif background.shape != (B, C):
            raise ValueError(f"background must have shape [C] = [{C}] or [B, C] = [{B}, {C}], got {_shape(background)}")
        background = background.to(colors.dtype)

    if check_values:
        _check_values("means", means, "finite", torch.isfinite(means))
        qn = quats.norm(dim=-1)
        _check_values("quats", quats, "finite with a non-zero norm", torch.isfinite(qn) & (qn > 1e-12))
        _check_values("scales", scales, "finite and >= 0 (standard deviations)", torch.isfinite(scales) & (scales >= 0))
        _check_values("opacities", opacities, "in [0, 1] (already activated)", (opacities >= 0) & (opacities <= 1))
        _check_values("colors", colors, "finite", torch.isfinite(colors))
    checks = camera_checks(viewmats, Ks, background)
    invalid_flags = None
    if check_values:
        check_cameras_now(checks)
    else:
        invalid_flags = camera_flags(checks)

    S = B if per_image else 1
    return RasterInputs(
        means=means.reshape(S, N, 3), quats=quats.reshape(S, N, 4), scales=scales.reshape(S, N, 3),
        opacities=opacities.reshape(S, N), colors=colors.reshape(S, N, C), viewmats=viewmats, Ks=Ks,
        background=background, batch=B, num_gaussians=N, channels=C, per_image=per_image,
        width=width, height=height, near=near, far=far, invalid_flags=invalid_flags)


def camera_checks(viewmats: Tensor, Ks: Tensor, background: Tensor | None, xp=torch) -> list[tuple[str, str, Tensor, int]]:
    """The per-camera value checks, for every backend: ``(argument, requirement,
    ok [B] bool on the inputs' device, status bit)``. Nothing is read back. ``xp``: the
    arrays' library (torch, or numpy / cupy for ``raster_array``)."""
    finite_k = xp.isfinite(Ks).all(axis=(1, 2))
    k_ok = finite_k & (Ks[:, 0, 0] > 0) & (Ks[:, 1, 1] > 0) & (Ks[:, 0, 1] == 0) & (Ks[:, 1, 0] == 0)
    k_ok &= (Ks[:, 2, 0] == 0) & (Ks[:, 2, 1] == 0) & (Ks[:, 2, 2] == 1)
    checks = [("viewmats", "finite", xp.isfinite(viewmats).all(axis=(1, 2)), INVALID_CAMERAS),
              ("Ks", "finite pinhole intrinsics [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] with fx, fy > 0 (no skew)",
               k_ok, INVALID_CAMERAS)]
    if background is not None:
        checks.append(("background", "finite", xp.isfinite(background).all(axis=1), INVALID_BACKGROUND))
    return checks


def camera_flags(checks) -> Tensor:
    """The failed checks of ``camera_checks`` as a status bit mask: a 0-dim int64
    tensor on the inputs' device (no synchronization)."""
    flags = None
    for _, _, ok, bit in checks:
        f = (~ok).any().to(torch.int64) * bit
        flags = f if flags is None else flags | f
    return flags


def check_clip_planes(near, far) -> tuple[float, float]:
    near, far = float(near), float(far)
    if not (near > 0 and far > near and far < float("inf")):
        raise ValueError(f"need 0 < near < far < inf, got near={near}, far={far}")
    return near, far


def check_cameras_now(checks) -> None:
    """Raises for the first failed ``camera_checks`` entry (reads the flags back)."""
    for name, what, ok, _ in checks:
        if not bool(ok.all()):
            raise ValueError(f"{name} must be {what}; {int((~ok).sum())} camera(s) are not")


def _check_size(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            import numpy as np
            if isinstance(value, np.integer):
                value = int(value)
        except ImportError:
            pass
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not 1 <= value <= 16384:
        raise ValueError(f"{name} must be in [1, 16384], got {value}")
    return value
