"""Gaussian rasterizer benchmark: dgtalker side by side with gsplat, same process.

Scenes are synthetic heads (raster_scene.py): N Gaussians on a head-sized
ellipsoid shell filling ~80% of the frame height, seen by B frontal cameras.
For B > 1 two cases run: "shared" (one Gaussian set, B cameras with small yaw
offsets) and "per-image" (B different Gaussian sets, one per camera, as a
talking head changes every frame).

Per configuration and library it measures
  * wall time per call, median over --iters calls after --warmup calls, with CUDA
    events around the Python call and a synchronize after each call (so host
    overhead and any device->host sync inside the library count), for forward
    and for forward+backward (forward, fixed random-weighted sum of image and
    alpha, backward);
  * device kernel time per stage (projection, sort/binning, raster fwd,
    raster bwd, other) from torch.profiler, with the raw per-kernel table kept
    in the JSON so the name->stage map can be audited (--no-profile skips it);
  * peak allocated memory over one call (torch.cuda.max_memory_allocated after a
    reset), above what was allocated before the call;
  * agreement of the two libraries' images and alphas (mean/max abs difference).

Examples:
    python benchmarks/bench_raster.py                        # full sweep
    python benchmarks/bench_raster.py --quick                # 100k, 512², B=1
    python benchmarks/bench_raster.py --n 100000 --res 512 --batch 1 8
    python benchmarks/bench_raster.py --only gsplat          # peer only
    python benchmarks/bench_raster.py --peers none           # dgtalker only
"""
from __future__ import annotations

import argparse
import datetime
from pathlib import Path
import math
import os
import platform
import statistics
import subprocess
import sys
from typing import Any, Callable, Dict, List, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import raster_backends as rb  # noqa: E402
import raster_scene  # noqa: E402

_HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_JSON = os.path.join(_HERE, "results", "raster.json")

# Targets from the issue, checked at 100k Gaussians, 512², B=1 (dgtalker / gsplat).
TARGETS = {"fwd_wall": 0.5, "fb_wall": 0.5, "fb_kernel": 1.0}
TARGET_CONFIG = (100_000, 512, 1, "shared")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--n", type=int, nargs="+", default=[50_000, 100_000, 300_000], help="Gaussian counts")
    p.add_argument("--res", type=int, nargs="+", default=[512, 1024], help="square image sizes")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="images per call")
    p.add_argument("--sets", choices=["shared", "per-image", "both"], default="both",
                   help="for B>1: one Gaussian set for all cameras, one per image, or both")
    p.add_argument("--quick", action="store_true", help="only 100k, 512², B=1; fewer iterations")
    p.add_argument("--peers", nargs="+", default=["gsplat"], help="peer libraries: gsplat, or none")
    p.add_argument("--only", choices=["dgtalker", "gsplat"], default=None, help="run one library alone")
    p.add_argument("--gsplat-loop", action="store_true",
                   help="gsplat per-image sets as one call per image instead of batch dims")
    p.add_argument("--deterministic", action="store_true", help="dgtalker deterministic=True")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--profile-iters", type=int, default=10)
    p.add_argument("--no-profile", action="store_true", help="skip the per-kernel profile")
    p.add_argument("--no-compare", action="store_true", help="skip the image agreement check")
    p.add_argument("--no-graph", action="store_true",
                   help="skip the CUDA-graph replay timing of dgtalker (peers that sync cannot be captured)")
    p.add_argument("--rotate", type=int, default=2,
                   help="cycle over this many scenes (different seeds) so timings do not replay one cached input")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=DEFAULT_JSON, help=f"output JSON (default {DEFAULT_JSON})")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.res, args.batch = [100_000], [512], [1]
        args.iters = min(args.iters, 30)
    args.peers = [] if args.peers == ["none"] else args.peers
    for peer in args.peers:
        if peer not in ("gsplat",):
            p.error(f"--peers: unknown peer {peer!r} (known: gsplat, none)")
    if args.only:
        args.libs = [args.only]
    else:
        args.libs = ["dgtalker", *args.peers]
    if min(args.n) <= 0 or min(args.res) <= 0 or min(args.batch) <= 0:
        p.error("--n, --res and --batch must be positive")
    if args.iters < 1 or args.warmup < 0 or args.rotate < 1:
        p.error("--iters >= 1, --warmup >= 0, --rotate >= 1")
    return args


def configs(args: argparse.Namespace) -> List[Dict[str, Any]]:
    """All (N, res, B, set) combinations, the target configuration first."""
    out = []
    for n in args.n:
        for res in args.res:
            for b in args.batch:
                kinds = ["shared"] if b == 1 else (["shared", "per-image"] if args.sets == "both" else [args.sets])
                for kind in kinds:
                    out.append({"n": n, "res": res, "batch": b, "set": kind})
    out.sort(key=lambda c: (c["n"], c["res"], c["batch"], c["set"]) != TARGET_CONFIG)
    return out


# ----------------------------------------------------------------------------
# Timing


def wall_ms(fn: Callable[[], None], iters: int, before: Optional[Callable[[], None]] = None) -> List[float]:
    """Per-call wall times in ms: CUDA events around the Python call, a
    synchronize after each so every call starts on an idle device."""
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(iters):
        if before is not None:
            before()
        torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return times


def peak_mib(fn: Callable[[], None]) -> float:
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def summary(times: List[float]) -> Dict[str, float]:
    s = sorted(times)
    return {
        "median": statistics.median(s),
        "p10": s[int(0.1 * (len(s) - 1))],
        "p90": s[int(0.9 * (len(s) - 1))],
        "min": s[0],
        "n": len(s),
    }


class Case:
    """One library on one configuration: rotating scenes, fixed loss weights."""

    def __init__(self, backend: rb.Backend, scenes: List[raster_scene.Scene], weights):
        self.backend, self.scenes, self.weights = backend, scenes, weights
        self.i = 0

    def _next(self) -> raster_scene.Scene:
        s = self.scenes[self.i % len(self.scenes)]
        self.i += 1
        return s

    def fwd(self) -> None:
        with torch.no_grad():
            self.backend.render(self._next())

    def fwd_bwd(self) -> None:
        image, alpha, _depth = self.backend.render(self._next())
        w_img, w_alpha = self.weights
        loss = (image * w_img).sum() + (alpha * w_alpha).sum()
        loss.backward()

    def zero_grad(self) -> None:
        for s in self.scenes:
            for t in s.gaussian_tensors():
                t.grad = None


def graph_ms(case: Case, iters: int) -> Dict[str, Dict[str, float]]:
    """Forward, and forward+backward, captured once in a CUDA graph and replayed:
    the time a training or rendering loop pays once the host is out of the way."""
    scene = case.scenes[0]
    params = scene.gaussian_tensors()
    w_img, w_alpha = case.weights

    def fb() -> None:
        image, alpha, _ = case.backend.render(scene)
        ((image * w_img).sum() + (alpha * w_alpha).sum()).backward()

    def fwd() -> None:
        with torch.no_grad():
            case.backend.render(scene)

    out = {}
    for name, step in (("fwd_graph_ms", fwd), ("fb_graph_ms", fb)):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside capture sizes every buffer
            for _ in range(3):
                for t in params:
                    t.grad = None
                step()
        torch.cuda.current_stream().wait_stream(side)
        for t in params:
            t.grad = None
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        graph.replay()
        out[name] = summary(wall_ms(graph.replay, iters))
        del graph
        for t in params:
            t.grad = None
    return out


def run_case(case: Case, args: argparse.Namespace) -> Dict[str, Any]:
    rec: Dict[str, Any] = {}
    for _ in range(args.warmup):
        case.fwd()
        case.zero_grad()
        case.fwd_bwd()
    torch.cuda.synchronize()
    rec["fwd_wall_ms"] = summary(wall_ms(case.fwd, args.iters))
    rec["fb_wall_ms"] = summary(wall_ms(case.fwd_bwd, args.iters, before=case.zero_grad))
    case.zero_grad()
    rec["fwd_peak_mib"] = peak_mib(case.fwd)
    case.zero_grad()
    rec["fb_peak_mib"] = peak_mib(case.fwd_bwd)
    case.zero_grad()
    if not args.no_graph and case.backend.name == "dgtalker":
        rec.update(graph_ms(case, args.iters))
        case.zero_grad()
    if not args.no_profile:
        k_fwd = rb.kernel_times(case.fwd, args.profile_iters)

        def fb():
            case.zero_grad()
            case.fwd_bwd()

        k_fb = rb.kernel_times(fb, args.profile_iters)
        rec["fwd_stages_ms"] = rb.stage_totals(k_fwd)
        rec["fb_stages_ms"] = rb.stage_totals(k_fb)
        rec["fwd_kernels"] = k_fwd
        rec["fb_kernels"] = k_fb
        case.zero_grad()
    return rec


def agreement(backends: List[rb.Backend], scene: raster_scene.Scene) -> Dict[str, Any]:
    """Mean/max abs difference of image and alpha between the first backend and
    each other one (dgtalker vs gsplat), on one scene, without gradients."""
    out: Dict[str, Any] = {}
    with torch.no_grad():
        ref_img, ref_alpha, _ = backends[0].render(scene)
        for be in backends[1:]:
            img, alpha, _ = be.render(scene)
            if img.shape != ref_img.shape or alpha.shape != ref_alpha.shape:
                out[be.name] = {"error": f"shapes differ: {tuple(ref_img.shape)} vs {tuple(img.shape)}"}
                continue
            di, da = (img - ref_img).abs(), (alpha - ref_alpha).abs()
            out[be.name] = {
                "image_mean_abs": float(di.mean()), "image_max_abs": float(di.max()),
                "alpha_mean_abs": float(da.mean()), "alpha_max_abs": float(da.max()),
            }
    return out


# ----------------------------------------------------------------------------
# Report


def _fmt(x: Optional[float], nd: int = 2) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def _get(rec: Dict[str, Any], *path: str) -> Optional[float]:
    cur: Any = rec
    for k in path:
        if not isinstance(cur, dict) or k not in cur:
            return None
        cur = cur[k]
    return cur


def markdown(results: List[Dict[str, Any]], libs: List[str]) -> str:
    head = ("| N | res | B | set | lib | fwd wall ms | fwd+bwd wall ms | fwd kernel ms | fwd+bwd kernel ms "
            "| proj | sort/bin | rast fwd | rast bwd | other | peak MiB fwd | peak MiB f+b "
            "| graph fwd ms | graph f+b ms |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        c = r["config"]
        key = f"| {c['n'] // 1000}k | {c['res']} | {c['batch']} | {c['set']} "
        for lib in libs:
            rec = r["libs"].get(lib)
            if rec is None:
                continue
            if "error" in rec:
                lines.append(key + f"| {lib} | error: {rec['error'][:80]} |" + " |" * 13)
                continue
            st = rec.get("fb_stages_ms", {})
            lines.append(key + "| " + " | ".join([
                lib, _fmt(_get(rec, "fwd_wall_ms", "median")), _fmt(_get(rec, "fb_wall_ms", "median")),
                _fmt(_get(rec, "fwd_stages_ms", "total"), 3), _fmt(st.get("total"), 3),
                _fmt(st.get("projection"), 3), _fmt(st.get("sort/binning"), 3), _fmt(st.get("raster fwd"), 3),
                _fmt(st.get("raster bwd"), 3), _fmt(st.get("other"), 3),
                _fmt(rec.get("fwd_peak_mib"), 1), _fmt(rec.get("fb_peak_mib"), 1),
                _fmt(_get(rec, "fwd_graph_ms", "median")), _fmt(_get(rec, "fb_graph_ms", "median"))]) + " |")
        ratio = r.get("ratio")
        if ratio:
            lines.append(key + "| " + " | ".join([
                "**dgt/gsplat**", _fmt(ratio.get("fwd_wall")), _fmt(ratio.get("fb_wall")),
                _fmt(ratio.get("fwd_kernel")), _fmt(ratio.get("fb_kernel")), "", "", "", "", "",
                _fmt(ratio.get("fwd_peak")), _fmt(ratio.get("fb_peak")), "", ""]) + " |")
    lines.append("")
    lines.append("Stage columns: kernel ms per forward+backward call. Wall: median per call, CUDA events, "
                 "synchronized after each call. Peak: allocated above the pre-call level. Graph: the same "
                 "call captured once in a CUDA graph and replayed (dgtalker only: gsplat reads a count back "
                 "to the host every call, so it cannot be captured).")
    return "\n".join(lines)


def ratios(a: Dict[str, Any], b: Dict[str, Any]) -> Dict[str, Optional[float]]:
    def r(*path):
        x, y = _get(a, *path), _get(b, *path)
        return None if x is None or not y else x / y
    return {
        "fwd_wall": r("fwd_wall_ms", "median"), "fb_wall": r("fb_wall_ms", "median"),
        "fwd_kernel": r("fwd_stages_ms", "total"), "fb_kernel": r("fb_stages_ms", "total"),
        "fwd_peak": r("fwd_peak_mib"), "fb_peak": r("fb_peak_mib"),
    }


def target_lines(results: List[Dict[str, Any]]) -> List[str]:
    for r in results:
        c = r["config"]
        if (c["n"], c["res"], c["batch"], c["set"]) == TARGET_CONFIG and r.get("ratio"):
            out = []
            for key, limit in TARGETS.items():
                v = r["ratio"].get(key)
                verdict = "n/a" if v is None else ("PASS" if v <= limit else "FAIL")
                out.append(f"target {key} dgtalker/gsplat <= {limit}: {_fmt(v)} {verdict}")
            return out
    return ["targets: not checked (needs dgtalker and gsplat at 100k, 512², B=1)"]


def environment(backends: List[rb.Backend], notes: List[str]) -> Dict[str, Any]:
    try:
        commit = subprocess.run(["git", "-C", _HERE, "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:
        commit = ""
    env = {
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(), "python": platform.python_version(), "torch": torch.__version__,
        "cuda": torch.version.cuda, "commit": commit,
        "backends": [b.describe() for b in backends], "notes": notes,
    }
    if torch.cuda.is_available():
        prop = torch.cuda.get_device_properties(0)
        env["device"] = prop.name
        env["sm_count"] = prop.multi_processor_count
    return env


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_raster: needs a CUDA device (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    backends, notes = rb.make_backends(args.libs, gsplat_loop=args.gsplat_loop, deterministic=args.deterministic)
    for n in notes:
        print(f"note: {n}")
    if not backends:
        print("bench_raster: no rasterizer available", file=sys.stderr)
        return 2
    libs = [b.name for b in backends]
    env = environment(backends, notes)
    print(f"# {env.get('device')} torch {env['torch']} | " + ", ".join(
        f"{b.name} {b.version}" + (f" ({b.note})" if b.note else "") for b in backends))

    results = []
    for cfg in configs(args):
        scenes = [raster_scene.make_scene(cfg["n"], cfg["res"], cfg["batch"], per_image=cfg["set"] == "per-image",
                                          seed=args.seed + i, device="cuda").requires_grad_()
                  for i in range(args.rotate)]
        s0 = scenes[0]
        g = torch.Generator(device="cuda").manual_seed(args.seed + 12345)
        weights = (torch.rand(s0.batch, s0.height, s0.width, s0.colors.shape[-1], device="cuda", generator=g),
                   torch.rand(s0.batch, s0.height, s0.width, device="cuda", generator=g))
        entry: Dict[str, Any] = {"config": cfg, "scene": s0.info, "libs": {}}
        for be in backends:
            try:
                entry["libs"][be.name] = run_case(Case(be, scenes, weights), args)
            except Exception as exc:  # e.g. OOM or an op error: report and go on
                entry["libs"][be.name] = {"error": f"{type(exc).__name__}: {exc}"}
            torch.cuda.empty_cache()
        if len(backends) > 1 and not args.no_compare:
            try:
                entry["agreement"] = agreement(backends, s0)
            except Exception as exc:
                entry["agreement"] = {"error": f"{type(exc).__name__}: {exc}"}
        a, b = entry["libs"].get("dgtalker"), entry["libs"].get("gsplat")
        if a and b and "error" not in a and "error" not in b:
            entry["ratio"] = ratios(a, b)
        results.append(entry)
        short = "  ".join(f"{lib}: fwd {_fmt(_get(rec, 'fwd_wall_ms', 'median'))} f+b {_fmt(_get(rec, 'fb_wall_ms', 'median'))} ms"
                          if "error" not in rec else f"{lib}: {rec['error'][:100]}"
                          for lib, rec in entry["libs"].items())
        print(f"{cfg['n']:>7} {cfg['res']:>5} B={cfg['batch']} {cfg['set']:<9} {short}", flush=True)
        del scenes, weights
        torch.cuda.empty_cache()

    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    from dgtalker.io import atomic_write_json

    atomic_write_json(Path(args.json), {"env": env, "args": dict(vars(args)), "targets": TARGETS, "results": results})
    print()
    print(markdown(results, libs))
    for line in target_lines(results):
        print(line)
    for r in results:
        for lib, d in r.get("agreement", {}).items():
            print(f"agreement {r['config']}: {lib} {d}")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
