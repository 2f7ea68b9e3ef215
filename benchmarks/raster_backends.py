"""Rasterizers under benchmark, behind one call signature, and the map from
CUDA kernel names to pipeline stages.

Every backend renders a ``raster_scene.Scene`` and returns
``(image [B, H, W, C], alpha [B, H, W], depth [B, H, W])``, float32 on the GPU,
so the benchmark times and compares them the same way.
"""
from __future__ import annotations

import os
import re
import sys
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from raster_scene import Scene

Render = Tuple[Tensor, Tensor, Tensor]  # image [B,H,W,C], alpha [B,H,W], depth [B,H,W]

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Backend:
    """A rasterizer: ``render(scene)`` does layout only and calls the library once
    (or once per image where the library cannot batch the case, see ``note``)."""

    name = "?"

    def __init__(self) -> None:
        self.version = "?"
        self.note = ""

    def render(self, scene: Scene) -> Render:
        raise NotImplementedError

    def describe(self) -> Dict[str, str]:
        return {"name": self.name, "version": self.version, "note": self.note}


class DgtalkerBackend(Backend):
    """``dgtalker.rasterize``: Gaussians ``[N, ...]`` shared by ``B`` cameras, or
    ``[B, N, ...]`` one set per camera; returns image, alpha and depth directly."""

    name = "dgtalker"

    def __init__(self, deterministic: bool = False) -> None:
        super().__init__()
        try:
            import dgtalker  # noqa: F401
        except ImportError:
            sys.path.insert(0, os.path.join(_REPO, "python"))
            import dgtalker  # noqa: F401
        self._dgt = dgtalker
        self._rasterize = dgtalker.rasterize  # fails here, not mid-run, if the op is missing
        self.deterministic = deterministic
        self.version = getattr(dgtalker, "__version__", "?")
        try:
            self.build = str(dgtalker.build_info())
        except Exception as exc:  # build_info is optional for the benchmark
            self.build = f"unavailable: {exc}"
        if deterministic:
            self.note = "deterministic=True"

    def render(self, scene: Scene) -> Render:
        image, alpha, depth = self._rasterize(
            scene.means, scene.quats, scene.scales, scene.opacities, scene.colors,
            scene.viewmats, scene.Ks, scene.width, scene.height,
            near=0.01, far=100.0, background=None, deterministic=self.deterministic,
        )
        return image, alpha, depth

    def describe(self) -> Dict[str, str]:
        d = super().describe()
        d["build"] = self.build
        return d


class GsplatBackend(Backend):
    """``gsplat.rasterization`` with ``render_mode="RGB+ED"`` and ``packed=False``
    (its defaults otherwise: eps2d 0.3, classic mode, 16-pixel tiles).

    gsplat >= 1.5 takes leading batch dims: Gaussians ``[..., N, ...]`` with
    cameras ``[..., C, 4, 4]``. One shared set for B cameras is
    ``means [N,3]`` + ``viewmats [B,4,4]`` -> ``[B,H,W,4]``; B images each with its
    own set is ``means [B,N,3]`` + ``viewmats [B,1,4,4]`` -> ``[B,1,H,W,4]``.
    Its channel 4 is the expected depth (accumulated depth / alpha).
    ``loop=True`` instead calls it once per image (for comparison, or for
    versions without batch dims).
    """

    name = "gsplat"

    def __init__(self, loop: bool = False) -> None:
        super().__init__()
        import gsplat
        from gsplat.cuda import _backend

        self._gs = gsplat
        self.version = gsplat.__version__
        ext = getattr(_backend, "_C", None)
        self.extension = f"{getattr(ext, '__name__', None)} ({getattr(ext, '__file__', None)})"
        self.loop = loop
        self.batch_dims = _has_batch_dims(gsplat)
        if self.loop or not self.batch_dims:
            self.loop = True
            self.note = "per-image Gaussian sets: one call per image (loop)"
        else:
            self.note = "per-image Gaussian sets: one call, batch dims [B,N,..] x [B,1,4,4]"

    def _call(self, means, quats, scales, opacities, colors, viewmats, Ks, w, h):
        return self._gs.rasterization(
            means, quats, scales, opacities, colors, viewmats, Ks, w, h,
            near_plane=0.01, far_plane=100.0, render_mode="RGB+ED", packed=False,
        )

    def render(self, scene: Scene) -> Render:
        s = scene
        if not s.per_image:
            out, alphas, _ = self._call(s.means, s.quats, s.scales, s.opacities, s.colors,
                                        s.viewmats, s.Ks, s.width, s.height)
        elif not self.loop:
            out, alphas, _ = self._call(s.means, s.quats, s.scales, s.opacities, s.colors,
                                        s.viewmats[:, None], s.Ks[:, None], s.width, s.height)
            out, alphas = out.flatten(0, 1), alphas.flatten(0, 1)  # [B,1,H,W,.] -> [B,H,W,.]
        else:
            outs, alps = [], []
            for b in range(s.batch):
                o, a, _ = self._call(s.means[b], s.quats[b], s.scales[b], s.opacities[b], s.colors[b],
                                     s.viewmats[b : b + 1], s.Ks[b : b + 1], s.width, s.height)
                outs.append(o)
                alps.append(a)
            out, alphas = torch.cat(outs), torch.cat(alps)
        return out[..., :-1], alphas[..., 0], out[..., -1]

    def describe(self) -> Dict[str, str]:
        d = super().describe()
        d["extension"] = self.extension
        return d


def _has_batch_dims(gsplat_module) -> bool:
    import inspect

    try:
        src = inspect.getsource(gsplat_module.rasterization)
    except (OSError, TypeError):
        return False
    return "batch_dims" in src


def make_backends(names: List[str], *, gsplat_loop: bool = False, deterministic: bool = False
                  ) -> Tuple[List[Backend], List[str]]:
    """Instantiate the named backends; a missing one becomes a note, not an error."""
    backends: List[Backend] = []
    notes: List[str] = []
    for name in names:
        try:
            if name == "dgtalker":
                backends.append(DgtalkerBackend(deterministic=deterministic))
            elif name == "gsplat":
                backends.append(GsplatBackend(loop=gsplat_loop))
            else:
                notes.append(f"unknown backend {name!r}")
        except Exception as exc:  # ImportError, missing op, missing extension
            notes.append(f"{name} unavailable: {type(exc).__name__}: {exc}")
    return backends, notes


# ----------------------------------------------------------------------------
# Kernel name -> stage. First match wins, so the raster rules come before the
# generic sort/projection ones. Names are matched lower-case. Extend the lists
# as kernels are added; the raw per-kernel table is kept in the JSON to audit.
STAGES = ("projection", "sort/binning", "raster fwd", "raster bwd", "other")

_RASTER = r"(rasteri[sz]e|render|blend|splat_tile|composit|alpha_blend)"
_BWD = r"(bwd|backward|grad|_vjp)"
# dgtalker's own kernels (csrc/raster/raster_cuda.cu, namespace dgt::raster) by bare
# name, where the generic rules would guess wrong: the binning helpers, and the
# deterministic backward's slot reduction.
_DGT_KERNELS = {
    "total_kernel": "sort/binning", "emit_kernel": "sort/binning", "sentinel_kernel": "sort/binning",
    "ranges_kernel": "sort/binning", "slot_keys_kernel": "raster bwd", "reduce_slots_kernel": "raster bwd",
}
_DGT_NAME = re.compile(r"dgt::raster::(?:\(anonymous namespace\)::)?(\w+)")


def _dgt_stage(k: str) -> Optional[str]:
    m = _DGT_NAME.search(k)
    return _DGT_KERNELS.get(m.group(1)) if m else None


STAGE_RULES: List[Tuple[str, Callable[[str], bool]]] = [
    ("sort/binning", lambda k: _dgt_stage(k) == "sort/binning"),
    ("raster bwd", lambda k: _dgt_stage(k) == "raster bwd"),
    ("raster bwd", lambda k: bool(re.search(_RASTER, k) and re.search(_BWD, k))),
    ("raster fwd", lambda k: bool(re.search(_RASTER, k))),
    ("sort/binning", lambda k: bool(re.search(
        r"(cub::|cub\d*::|radix|onesweep|devicescan|scan_kernel|segmented|sort|"
        r"intersect|isect|tile_range|tile_offset|identify_tile|duplicate|bin(ning)?_|"
        r"_bin\b|key|offset_kernel|histogram)", k))),
    ("projection", lambda k: bool(re.search(
        r"(project|preprocess|quat_scale|covar|spherical_harmonics|sh_|ewa)", k))),
]


def stage_of(kernel_name: str) -> str:
    k = kernel_name.lower()
    if k.startswith(("memcpy", "memset")):
        return "other"
    for stage, rule in STAGE_RULES:
        if rule(k):
            return stage
    return "other"


def short_kernel_name(name: str, limit: int = 120) -> str:
    """Drop template arguments and parameter lists so names stay readable."""
    out, depth = [], 0
    for ch in name:
        if ch in "<(":
            if depth == 0:
                out.append("<>" if ch == "<" else "()")
            depth += 1
        elif ch in ">)":
            depth = max(0, depth - 1)
        elif depth == 0:
            out.append(ch)
    s = "".join(out).replace("void ", "").strip()
    return s[:limit]


def kernel_times(fn: Callable[[], None], iters: int) -> Dict[str, Dict[str, float]]:
    """Run ``fn`` ``iters`` times under torch.profiler (CUDA activity) and return,
    per kernel name, ``{"stage", "ms_per_call", "launches_per_call"}``."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    table: Dict[str, Dict[str, float]] = {}
    for evt in prof.events():
        if evt.device_type != DeviceType.CUDA or getattr(evt, "is_user_annotation", False):
            continue  # host events, and record_function ranges mirrored on the GPU timeline
        us = evt.time_range.elapsed_us()
        row = table.setdefault(evt.name, {"stage": stage_of(evt.name), "ms_per_call": 0.0, "launches_per_call": 0.0})
        row["ms_per_call"] += us / 1e3 / iters
        row["launches_per_call"] += 1.0 / iters
    return table


def stage_totals(table: Dict[str, Dict[str, float]]) -> Dict[str, float]:
    out = {s: 0.0 for s in STAGES}
    for row in table.values():
        out[row["stage"]] += row["ms_per_call"]
    out["total"] = sum(out[s] for s in STAGES)
    return out
