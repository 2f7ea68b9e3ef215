"""Differentiable Gaussian tile rasterizer over the compiled engine.

``rasterize`` validates at the boundary, sizes buffers from torch's allocator and
calls ``dgtalker._C`` once for the forward and once for the backward; each call runs
the whole pipeline (project, scan, emit, sort, tile ranges, blend) on CPU tensors
(the engine's thread pool) or CUDA tensors (the current stream of their device).

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

The deferred checks are thread-safe; each call's status copy and event go on the
stream of its tensors' device; a call never waits for the GPU because earlier calls
are still in flight (the ring of status slots grows instead). Calls captured into a
CUDA graph report through a ``GraphStatus`` open during the capture, which the
caller checks after replays (an overflow there means: re-capture).
"""
from __future__ import annotations

import os
import threading
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


class _CudaStatusBackend:
    """Where the status ring's host slots, events and streams come from (CUDA). Tests
    of the ring logic substitute a host-only stand-in."""

    def host_block(self, n: int) -> Tensor:
        return torch.zeros(n, _STATUS_WORDS, dtype=torch.int64, pin_memory=True)

    def event(self):
        return torch.cuda.Event()

    def stream(self, device: torch.device):
        return torch.cuda.current_stream(device)


class _StatusRing:
    """Pinned host slots for the status words of unchecked calls on one device, with
    their events, inspected oldest first.

    Slots come in blocks of ``BLOCK``, allocated once and reused: a fresh pinned
    allocation per call could itself synchronize. When every slot holds a call still
    in flight another block is added rather than waiting for the GPU, up to
    ``MAX_SLOTS`` calls in flight (then the oldest is waited for)."""

    BLOCK = 64
    MAX_SLOTS = 4096

    def __init__(self, device: torch.device, backend):
        self.device = device
        self.backend = backend
        self.host: list[Tensor] = []       # one [_STATUS_WORDS] row per slot
        self.events: list = []
        self.free: deque[int] = deque()
        self.pending: deque[tuple[int, tuple]] = deque()  # (slot, shape key), submission order

    def _add_block(self) -> None:
        block = self.backend.host_block(self.BLOCK)
        first = len(self.host)
        self.host.extend(block[j] for j in range(self.BLOCK))
        self.events.extend(self.backend.event() for _ in range(self.BLOCK))
        self.free.extend(range(first, first + self.BLOCK))

    def push(self, key: tuple, status: Tensor) -> bool:
        """Queues the asynchronous copy of ``status`` and its event on the stream of
        the ring's device. False when no slot is free (MAX_SLOTS in flight)."""
        if not self.free:
            if len(self.host) >= self.MAX_SLOTS:
                return False
            self._add_block()
        i = self.free.popleft()
        self.host[i].copy_(status, non_blocking=True)
        self.events[i].record(self.backend.stream(self.device))  # the stream the copy was queued on
        self.pending.append((i, key))
        return True


class _CapacityBook:
    """Intersection capacity per problem shape, and the deferred status checks.

    Thread-safe: the engine releases the GIL, so several threads may render at once;
    one lock guards the capacities and the rings (never held while waiting on the GPU,
    except beyond ``_StatusRing.MAX_SLOTS`` calls in flight on one device)."""

    def __init__(self, max_shapes: int = 64, backend=None):
        self.capacity: OrderedDict[tuple, int] = OrderedDict()
        self.max_shapes = max_shapes
        self.rings: dict[torch.device, _StatusRing] = {}
        self.backend = backend or _CudaStatusBackend()
        self.lock = threading.RLock()

    def get(self, key: tuple) -> int | None:
        with self.lock:
            cap = self.capacity.get(key)
            if cap is not None:
                self.capacity.move_to_end(key)
            return cap

    def grow(self, key: tuple, total: int) -> int:
        with self.lock:
            cap = max(self.capacity.get(key, 0), grown_capacity(total))
            self.capacity[key] = cap
            self.capacity.move_to_end(key)
            while len(self.capacity) > self.max_shapes:
                self.capacity.popitem(last=False)
            return cap

    def defer(self, device: torch.device, key: tuple, status: Tensor) -> None:
        with self.lock:
            ring = self.rings.get(device)
            if ring is None:
                ring = self.rings[device] = _StatusRing(device, self.backend)
            if not ring.push(key, status):  # MAX_SLOTS calls in flight: the oldest must finish first
                error, _ = self._drain(ring, wait=True, limit=1)
                ring.push(key, status)
                if error is not None:
                    raise error

    def settle(self, device: torch.device | None = None, wait: bool = False) -> int:
        """Inspects finished status copies, oldest first (all of them with ``wait``).
        Returns how many of the inspected calls overflowed; raises the first invalid
        input found."""
        with self.lock:
            rings = [r for dev, r in self.rings.items() if device is None or dev == device]
            waits = [r.events[i] for r in rings for i, _ in r.pending] if wait else []
        for event in waits:  # outside the lock: other threads keep rendering meanwhile
            event.synchronize()
        error, overflows = None, 0
        with self.lock:
            for ring in rings:
                e, n = self._drain(ring, wait=False)
                error = error or e
                overflows += n
        if error is not None:
            raise error
        return overflows

    def _drain(self, ring: _StatusRing, wait: bool, limit: int | None = None) -> tuple[RasterInputError | None, int]:
        """Inspects finished calls oldest first: (first invalid-input error, overflow count)."""
        error, done, overflows = None, 0, 0
        while ring.pending and (limit is None or done < limit):
            i, key = ring.pending[0]
            if wait:
                ring.events[i].synchronize()
            elif not ring.events[i].query():
                break  # later calls are queued behind this one
            ring.pending.popleft()
            e, overflowed = self._inspect(key, ring.host[i].tolist())
            ring.free.append(i)
            error = error or e
            overflows += overflowed
            done += 1
        return error, overflows

    def _inspect(self, key: tuple, words) -> tuple[RasterInputError | None, bool]:
        total, overflow, invalid = (int(v) for v in words[:3])
        if overflow:
            new_cap = self.grow(key, total)
            warnings.warn(f"rasterize: an earlier call needed {total} tile intersections but had room "
                          f"for fewer; its image missed some Gaussians. Capacity is now {new_cap}. "
                          f"Use checked=True to redo such calls at once.", RuntimeWarning, stacklevel=6)
        if invalid:
            return RasterInputError(_invalid_message(invalid) + " (found in an earlier CUDA call; "
                                    "pass checked=True to catch it in the offending call)"), bool(overflow)
        return None, bool(overflow)


_BOOK = _CapacityBook()


def check_status(wait: bool = True) -> int:
    """Inspects the status of earlier unchecked CUDA calls now.

    With ``wait`` it first waits for them to finish. Raises :class:`RasterInputError`
    if any of them received invalid values; warns (and grows the capacity) for each of
    them that overflowed its intersection buffers, and returns how many did (0 on a
    machine that made no unchecked CUDA call).
    """
    return _BOOK.settle(wait=wait)


_CAPTURE = threading.local()  # .collectors: the GraphStatus objects open on this thread
_WARNED_UNWATCHED_CAPTURE = False


class GraphStatus:
    """The status of rasterize calls captured into a CUDA graph, for its replays.

    A captured call cannot be checked by the wrapper (replays happen without it), so
    every call captured while a ``GraphStatus`` is open also captures three tiny
    kernels that fold its status words into this object's device buffer: the largest
    intersection count needed, the overflow flag and the invalid-input flags,
    accumulated over every replay until ``check()`` reads and clears them::

        status = GraphStatus()
        with status, torch.cuda.graph(graph):
            out = step()              # after one eager warm-up call per shape
        ...
        graph.replay()
        if status.check():            # one sync; raises RasterInputError on bad input
            ...                       # a replay overflowed: its images missed Gaussians.
                                      # Capacities have grown: capture the graph again.

    ``check()`` may run after every replay or every few (flags accumulate). Entering
    the object again (for a re-capture) clears what it held. A call captured while no
    ``GraphStatus`` is open warns once: its replays cannot report anything.

    Args:
        device: the CUDA device of the captured calls (default: the current one).
        slots: the most rasterize calls one capture may hold.
    """

    def __init__(self, device=None, slots: int = 256):
        self.device = torch.device("cuda", torch.cuda.current_device()) if device is None else torch.device(device)
        self.acc = torch.zeros(slots, _STATUS_WORDS, dtype=torch.int64, device=self.device)
        self.keys: list[tuple] = []

    def __enter__(self) -> "GraphStatus":
        if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
            raise RuntimeError("enter GraphStatus before the CUDA-graph capture begins, not inside it")
        self.keys.clear()
        self.acc.zero_()
        if not hasattr(_CAPTURE, "collectors"):
            _CAPTURE.collectors = []
        _CAPTURE.collectors.append(self)
        return self

    def __exit__(self, *exc) -> None:
        _CAPTURE.collectors.remove(self)

    def _record(self, key: tuple, status: Tensor) -> None:
        if status.device != self.acc.device:
            raise ValueError(f"rasterize captured on {status.device} but the open GraphStatus is for "
                             f"{self.acc.device}")
        i = len(self.keys)
        if i >= self.acc.shape[0]:
            raise RuntimeError(f"more than {self.acc.shape[0]} rasterize calls captured in one graph; "
                               f"use GraphStatus(slots=...)")
        self.keys.append(key)
        row = self.acc[i]
        torch.maximum(row[:2], status[:2], out=row[:2])  # intersections needed, overflow flag
        row[2:3].bitwise_or_(status[2:3])                # invalid-input bits

    def check(self) -> bool:
        """Reads what the replays since the last check recorded (waits for the
        current stream of the device) and clears it. Raises RasterInputError if a
        replay received invalid values; returns True if one overflowed, after growing
        the capacities so that a re-capture has room."""
        n = len(self.keys)
        if n == 0:
            return False
        words = self.acc[:n].tolist()
        self.acc.zero_()
        overflowed, invalid = False, 0
        for key, (total, overflow, flags, _) in zip(self.keys, words):
            if overflow:
                _BOOK.grow(key, total)
                overflowed = True
            invalid |= flags
        if invalid:
            raise RasterInputError(_invalid_message(invalid) + " (found in a CUDA-graph replay)")
        return overflowed


def _captured(key: tuple, status: Tensor) -> None:
    global _WARNED_UNWATCHED_CAPTURE
    collectors = getattr(_CAPTURE, "collectors", None)
    if collectors:
        collectors[-1]._record(key, status)
    elif not _WARNED_UNWATCHED_CAPTURE:
        _WARNED_UNWATCHED_CAPTURE = True
        warnings.warn("rasterize was captured into a CUDA graph with no dgtalker.ops.raster.GraphStatus open: "
                      "replays of that graph cannot report intersection overflows or invalid input",
                      RuntimeWarning, stacklevel=4)


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
                _captured(key, status)
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
