"""Forward rasterization of CuPy arrays, straight over the engine (no torch involved).

The engine takes raw device buffers, so any CUDA array library can drive it; this
module is the CuPy binding. Forward only: for gradients use :func:`dgtalker.rasterize`
on torch tensors (CuPy arrays convert without copies through DLPack).
"""
from __future__ import annotations

from dgtalker._engine import engine

from ._inputs import _check_size, camera_checks, check_cameras_now, check_clip_planes
from ._raster_common import (RasterInputError, _invalid_message, grown_capacity, initial_capacity,
                             set_input_addresses)


def _check(name, a, shape, cp):
    if not isinstance(a, cp.ndarray):
        raise TypeError(f"{name} must be a cupy.ndarray, got {type(a).__name__}")
    if a.dtype != cp.float32:
        raise TypeError(f"{name} must have dtype float32, got {a.dtype}")
    if len(a.shape) != len(shape) or any(w is not None and s != w for s, w in zip(a.shape, shape)):
        want = "[" + ", ".join("*" if w is None else str(w) for w in shape) + "]"
        raise ValueError(f"{name} must have shape {want}, got {list(a.shape)}")
    return cp.ascontiguousarray(a)


def rasterize_cupy(means, quats, scales, opacities, colors, viewmats, Ks, width: int, height: int, *,
                   near: float = 0.01, far: float = 1e10, background=None):
    """CuPy twin of :func:`dgtalker.rasterize` (forward only), same conventions and outputs.

    Per-Gaussian arrays are ``[N, ...]`` (shared) or ``[B, N, ...]`` (per image); values are
    checked on the device and reported after the call (this call waits for the GPU).
    """
    import cupy as cp

    viewmats = _check("viewmats", viewmats, (None, 4, 4), cp)
    B = viewmats.shape[0]
    Ks = _check("Ks", Ks, (B, 3, 3), cp)
    per_image = means.ndim == 3
    lead = (B, None) if per_image else (None,)
    means = _check("means", means, lead + (3,), cp)
    N = means.shape[-2]
    lead = (B, N) if per_image else (N,)
    quats = _check("quats", quats, lead + (4,), cp)
    scales = _check("scales", scales, lead + (3,), cp)
    opacities = _check("opacities", opacities, lead, cp)
    colors = _check("colors", colors, lead + (None,), cp)
    C = colors.shape[-1]
    width, height = _check_size("width", width), _check_size("height", height)
    near, far = check_clip_planes(near, far)
    bg = None
    if background is not None:
        bg = cp.asarray(background, dtype=cp.float32)
        if bg.shape not in ((C,), (B, C)):
            raise ValueError(f"background must have shape [C] = [{C}] or [B, C] = [{B}, {C}], got {list(bg.shape)}")
        bg = cp.ascontiguousarray(cp.broadcast_to(bg.reshape(-1, C), (B, C)))
    # cameras are checked here, as dgtalker.rasterize checks them (the kernel does not)
    check_cameras_now(camera_checks(viewmats, Ks, bg, xp=cp))
    C_ = engine()
    cfg = C_.RasterConfig()
    cfg.batch, cfg.num_gaussians, cfg.channels, cfg.per_image = B, N, C, per_image
    cfg.width, cfg.height, cfg.near_plane, cfg.far_plane = width, height, near, far
    cfg.capacity = initial_capacity(B, N)
    device = means.device.id
    stream = cp.cuda.get_current_stream().ptr
    with cp.cuda.Device(device):
        while True:
            lay = C_.raster_layout(cfg, device)
            state = cp.empty(lay["state_bytes"], dtype=cp.uint8)
            scratch = cp.empty(lay["forward_scratch_bytes"], dtype=cp.uint8)
            image = cp.empty((B, height, width, C), dtype=cp.float32)
            alpha = cp.empty((B, height, width), dtype=cp.float32)
            depth = cp.empty((B, height, width), dtype=cp.float32)
            bufs = C_.ForwardBuffers()
            set_input_addresses(bufs, lambda a: a.data.ptr, means, quats, scales, opacities, colors, viewmats, Ks,
                                bg, state)
            bufs.scratch = scratch.data.ptr
            bufs.image, bufs.alpha, bufs.depth = image.data.ptr, alpha.data.ptr, depth.data.ptr
            C_.raster_forward(cfg, device, bufs, stream)
            off = lay["status_offset"]
            total, overflow, invalid, _ = (int(v) for v in state[off:off + 32].view(cp.int64).get())
            if invalid:
                raise RasterInputError(_invalid_message(invalid))
            if not overflow:
                break
            cfg.capacity = grown_capacity(total)
    return image, alpha, depth
