"""Differentiable Gaussian tile rasterizer over the compiled engine.

``rasterize`` validates at the boundary, sizes buffers from torch's allocator and
calls ``dgtalker._C`` once for the forward and once for the backward; each call runs
the whole pipeline (project, scan, emit, sort, tile ranges, blend) on CPU tensors
(OpenMP) or CUDA tensors (the caller's current stream).

Intersection capacity and synchronization (CUDA): the number of (tile, Gaussian)
intersections is only known on the device. The buffers for them are sized ahead
from a capacity kept per problem shape; the first call of a shape reads the count
back once to size it. Later calls never wait for the GPU: the device writes the
count, an overflow flag and invalid-input flags into a status word that is copied
to pinned memory asynchronously and inspected at a later call. An overflow found
there grows the capacity (with a warning: that one result missed intersections).
Invalid input found there raises. Pass ``checked=True`` (or set DGTALKER_CHECKED=1)
to wait for each call's status instead: then an overflow is redone at once and bad
values raise in the call that received them. On the CPU every call is checked.
"""
from __future__ import annotations

import os
import warnings
from collections import OrderedDict, deque

import torch
from torch import Tensor

from dgtalker._engine import engine

from ._engine_call import device_index, stream_handle
from ._raster_common import (RasterInputError, _invalid_message, grown_capacity, initial_capacity,
                             set_input_addresses)
from ._inputs import RasterInputs, prepare_inputs

_STATUS_WORDS = 4


class _StatusRing:
    """Pinned host slots for the status words of unchecked CUDA calls on one device,
    with their events, inspected oldest first. Allocated once: a fresh pinned
    allocation per call could itself synchronize."""

    def __init__(self, size: int):
        self.host = torch.zeros(size, _STATUS_WORDS, dtype=torch.int64, pin_memory=True)
        self.events = [torch.cuda.Event() for _ in range(size)]
        self.keys: list = [None] * size
        self.pending: deque[int] = deque()  # slot indices in submission order
        self.next = 0


class _CapacityBook:
    """Intersection capacity per problem shape, and the deferred status checks."""

    RING = 64

    def __init__(self, max_shapes: int = 64):
        self.capacity: OrderedDict[tuple, int] = OrderedDict()
        self.max_shapes = max_shapes
        self.rings: dict[torch.device, _StatusRing] = {}

    def get(self, key: tuple) -> int | None:
        cap = self.capacity.get(key)
        if cap is not None:
            self.capacity.move_to_end(key)
        return cap

    def grow(self, key: tuple, total: int) -> int:
        cap = max(self.capacity.get(key, 0), grown_capacity(total))
        self.capacity[key] = cap
        self.capacity.move_to_end(key)
        while len(self.capacity) > self.max_shapes:
            self.capacity.popitem(last=False)
        return cap

    def defer(self, device: torch.device, key: tuple, status: Tensor) -> None:
        ring = self.rings.get(device)
        if ring is None:
            ring = self.rings[device] = _StatusRing(self.RING)
        i = ring.next
        if ring.keys[i] is not None:  # a full ring: the oldest call must be done first
            error = self._drain(ring, wait=True, limit=1)
            if error is not None:
                raise error
        ring.host[i].copy_(status, non_blocking=True)
        ring.events[i].record()
        ring.keys[i] = key
        ring.pending.append(i)
        ring.next = (i + 1) % self.RING

    def settle(self, device: torch.device | None = None, wait: bool = False) -> None:
        """Inspects finished status copies, oldest first (all of them with ``wait``)."""
        error = None
        for dev, ring in self.rings.items():
            if device is None or dev == device:
                error = self._drain(ring, wait) or error
        if error is not None:
            raise error

    def _drain(self, ring: _StatusRing, wait: bool, limit: int | None = None) -> RasterInputError | None:
        error = None
        done = 0
        while ring.pending and (limit is None or done < limit):
            i = ring.pending[0]
            if wait:
                ring.events[i].synchronize()
            elif not ring.events[i].query():
                break  # later calls are queued behind this one
            ring.pending.popleft()
            error = self._inspect(ring, i) or error
            done += 1
        return error

    def _inspect(self, ring: _StatusRing, i: int) -> RasterInputError | None:
        key, ring.keys[i] = ring.keys[i], None
        total, overflow, invalid = (int(v) for v in ring.host[i, :3].tolist())
        if overflow:
            new_cap = self.grow(key, total)
            warnings.warn(f"rasterize: an earlier call needed {total} tile intersections but had room "
                          f"for fewer; its image missed some Gaussians. Capacity is now {new_cap}. "
                          f"Use checked=True to redo such calls at once.", RuntimeWarning, stacklevel=5)
        if invalid:
            return RasterInputError(_invalid_message(invalid) + " (found in an earlier CUDA call; "
                                    "pass checked=True to catch it in the offending call)")
        return None


_BOOK = _CapacityBook()


def check_status(wait: bool = True) -> None:
    """Inspects the status of earlier unchecked CUDA calls now.

    With ``wait`` it first waits for them to finish. Raises :class:`RasterInputError`
    if any of them received invalid values; warns (and grows the capacity) if any of
    them overflowed its intersection buffers.
    """
    _BOOK.settle(wait=wait)


_LAYOUTS: dict[tuple, dict] = {}


def _config(inp: RasterInputs, capacity: int, deterministic: bool):
    C = engine()
    cfg = C.RasterConfig()
    cfg.batch, cfg.num_gaussians, cfg.channels = inp.batch, inp.num_gaussians, inp.channels
    cfg.per_image, cfg.width, cfg.height = inp.per_image, inp.width, inp.height
    cfg.near_plane, cfg.far_plane = inp.near, inp.far
    cfg.capacity, cfg.deterministic = capacity, deterministic
    return cfg


def _layout(cfg, device: int) -> dict:
    key = (cfg.batch, cfg.num_gaussians, cfg.channels, cfg.per_image, cfg.width, cfg.height,
           cfg.capacity, cfg.deterministic, device)
    lay = _LAYOUTS.get(key)
    if lay is None:
        if len(_LAYOUTS) > 256:
            _LAYOUTS.clear()
        lay = _LAYOUTS[key] = engine().raster_layout(cfg, device)
    return lay


def _run_forward(inp: RasterInputs, background: Tensor | None, capacity: int, deterministic: bool):
    C = engine()
    dev = inp.means.device
    index = device_index(inp.means)
    cfg = _config(inp, capacity, deterministic)
    lay = _layout(cfg, index)
    state = torch.empty(lay["state_bytes"], dtype=torch.uint8, device=dev)
    scratch = torch.empty(lay["forward_scratch_bytes"], dtype=torch.uint8, device=dev)
    B, H, W = inp.batch, inp.height, inp.width
    image = torch.empty(B, H, W, inp.channels, dtype=torch.float32, device=dev)
    alpha = torch.empty(B, H, W, dtype=torch.float32, device=dev)
    depth = torch.empty(B, H, W, dtype=torch.float32, device=dev)
    bufs = C.ForwardBuffers()
    set_input_addresses(bufs, Tensor.data_ptr, inp.means, inp.quats, inp.scales, inp.opacities, inp.colors,
                        inp.viewmats, inp.Ks, background, state)
    bufs.scratch = scratch.data_ptr()
    bufs.image, bufs.alpha, bufs.depth = image.data_ptr(), alpha.data_ptr(), depth.data_ptr()
    C.raster_forward(cfg, index, bufs, stream_handle(inp.means))
    off = lay["status_offset"]
    status = state[off:off + 8 * _STATUS_WORDS].view(torch.int64)
    if inp.invalid_flags is not None:  # the per-camera checks of _inputs, on the same stream
        status[2:3].bitwise_or_(inp.invalid_flags)
    return cfg, state, status, image, alpha, depth


def _shape_key(inp: RasterInputs) -> tuple:
    return (str(inp.means.device), inp.batch, inp.num_gaussians, inp.per_image, inp.width, inp.height)


class _Rasterize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, quats, scales, opacities, colors, viewmats, Ks, background,
                inp: RasterInputs, deterministic: bool, checked: bool):
        key = _shape_key(inp)
        on_cpu = inp.means.device.type == "cpu"
        capturing = not on_cpu and torch.cuda.is_current_stream_capturing()
        if not on_cpu and not capturing:
            _BOOK.settle(inp.means.device)
        capacity = _BOOK.get(key)
        sized = capacity is not None
        if capacity is None:
            if capturing:
                raise RuntimeError("rasterize: run this problem shape once outside CUDA-graph capture "
                                   "first, so its intersection capacity is known")
            capacity = initial_capacity(inp.batch, inp.num_gaussians)
        while True:
            cfg, state, status, image, alpha, depth = _run_forward(inp, background, capacity, deterministic)
            if capturing:
                break
            if on_cpu or checked or not sized:
                total, overflow, invalid = (int(v) for v in status[:3].tolist())  # waits on CUDA
                if invalid:
                    raise RasterInputError(_invalid_message(invalid))
                if overflow or not sized:
                    new_cap = _BOOK.grow(key, total)
                    sized = True
                    if overflow:
                        capacity = new_cap
                        continue
            else:
                _BOOK.defer(inp.means.device, key, status)
            break
        ctx.set_materialize_grads(False)
        ctx.cfg = cfg
        ctx.shape = (inp.batch, inp.num_gaussians, inp.channels, inp.per_image, inp.height, inp.width)
        ctx.has_background = background is not None
        ctx.save_for_backward(means, quats, scales, opacities, colors, viewmats, Ks, background, state)
        return image, alpha, depth

    @staticmethod
    def backward(ctx, v_image, v_alpha, v_depth):
        C = engine()
        means, quats, scales, opacities, colors, viewmats, Ks, background, state = ctx.saved_tensors
        cfg = ctx.cfg
        B, N, Ch, per_image, H, W = ctx.shape
        dev = means.device
        index = device_index(means)
        P = B * N
        lay = _layout(cfg, index)
        K = lay["grad2d_stride"]

        if v_image is None:
            v_image = torch.zeros(B, H, W, Ch, dtype=torch.float32, device=dev)
        v_image = v_image.contiguous()
        v_alpha = None if v_alpha is None else v_alpha.contiguous()  # None: zero, skipped
        v_depth = None if v_depth is None else v_depth.contiguous()
        grad2d = torch.empty(P, K, dtype=torch.float32, device=dev)
        v_means = torch.empty(P, 3, dtype=torch.float32, device=dev)
        v_quats = torch.empty(P, 4, dtype=torch.float32, device=dev)
        v_scales = torch.empty(P, 3, dtype=torch.float32, device=dev)
        scratch = torch.empty(lay["backward_scratch_bytes"], dtype=torch.uint8, device=dev)
        bufs = C.BackwardBuffers()
        set_input_addresses(bufs, Tensor.data_ptr, means, quats, scales, opacities, colors, viewmats, Ks,
                            background, state)
        bufs.scratch = scratch.data_ptr()
        bufs.v_image = v_image.data_ptr()
        bufs.v_alpha = 0 if v_alpha is None else v_alpha.data_ptr()
        bufs.v_depth = 0 if v_depth is None else v_depth.data_ptr()
        bufs.grad2d, bufs.v_means = grad2d.data_ptr(), v_means.data_ptr()
        bufs.v_quats, bufs.v_scales = v_quats.data_ptr(), v_scales.data_ptr()
        C.raster_backward(cfg, index, bufs, stream_handle(means))

        v_background = None
        if background is not None and ctx.needs_input_grad[7]:  # T_final-weighted sum, in torch
            off = lay["transmittance_offset"]
            T_final = state[off:off + 4 * B * H * W].view(torch.float32).view(B, H, W, 1)
            v_background = (v_image * T_final).sum((1, 2))

        def per_set(g: Tensor, tail: tuple[int, ...]) -> Tensor:
            g = g.reshape((B, N) + tail)
            return g if per_image or B == 1 else g.sum(0, keepdim=True)

        return (per_set(v_means, (3,)), per_set(v_quats, (4,)), per_set(v_scales, (3,)),
                per_set(grad2d[:, 5], ()), per_set(grad2d[:, 6:6 + Ch], (Ch,)),
                None,  # viewmats: camera gradients are not computed
                None,  # Ks
                v_background,
                None,  # inp
                None,  # deterministic
                None)  # checked


def rasterize(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
              viewmats: Tensor, Ks: Tensor, width: int, height: int, *, near: float = 0.01,
              far: float = 1e10, background: Tensor | None = None, deterministic: bool = False,
              checked: bool | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Renders B images of 3D Gaussians in one call; differentiable.

    Args:
        means: ``[N, 3]`` (one set shared by all images) or ``[B, N, 3]`` (one set per image), world space.
        quats: ``[N, 4]`` / ``[B, N, 4]`` rotations (w, x, y, z); normalized inside.
        scales: ``[N, 3]`` / ``[B, N, 3]`` standard deviations along the rotated axes (>= 0).
        opacities: ``[N]`` / ``[B, N]`` in [0, 1] (already activated).
        colors: ``[N, C]`` / ``[B, N, C]`` features, 1 <= C <= 32 (already activated).
        viewmats: ``[B, 4, 4]`` world-to-camera, OpenCV axes (x right, y down, z forward).
        Ks: ``[B, 3, 3]`` pinhole intrinsics in pixels; pixel (i, j) is centred at (j + 0.5, i + 0.5).
        width, height: image size in pixels.
        near, far: Gaussians whose mean has camera depth outside [near, far] are skipped.
        background: ``[C]`` or ``[B, C]``, composited as ``(1 - alpha) * background``; differentiable.
        deterministic: bit-identical gradients across runs (CUDA; slower backward). The CPU
            backward is always deterministic.
        checked: on CUDA, wait for this call's status (one GPU->CPU sync) so that bad values
            raise here and a capacity overflow is redone at once. Default: the DGTALKER_CHECKED
            environment variable, else False.

    Returns:
        ``image [B, H, W, C]``, ``alpha [B, H, W]`` (accumulated opacity) and
        ``depth [B, H, W]`` (expected camera depth of what was hit, 0 where nothing was).

    Gradients flow to means, quats, scales, opacities, colors and background (not to the
    cameras). float32 only; all inputs on one device (CPU or CUDA).
    """
    inp = prepare_inputs(means, quats, scales, opacities, colors, viewmats, Ks, width, height, near,
                         far, background, check_values=means.device.type == "cpu" if isinstance(means, Tensor) else True)
    if checked is None:
        checked = os.environ.get("DGTALKER_CHECKED", "0") not in ("", "0", "false", "False")
    cont = [t.contiguous() for t in (inp.means, inp.quats, inp.scales, inp.opacities, inp.colors, inp.viewmats, inp.Ks)]
    inp.means, inp.quats, inp.scales, inp.opacities, inp.colors, inp.viewmats, inp.Ks = cont
    background = None if inp.background is None else inp.background.float().contiguous()
    return _Rasterize.apply(*cont, background, inp, bool(deterministic), bool(checked))
