"""``dgtalker eval``: a talker measured against a clip's ground truth, as a report.

    dgtalker eval --data data/id007 [--talker T] [--all-frames] [--out report_dir]

Writes ``report.json`` (metrics, baselines, speed, provenance), ``report.md`` (the
tables), ``sheet.png`` (ground truth | render | error at the worst, median and best
frames) and ``mouth.png`` (mouth opening of truth and render over time). The
protocol is ``dgtalker.eval.evaluate``'s. Landmark distance (LMD) needs a face
landmark detector (mediapipe, the ``[preprocess]`` extra); without one it is null
and the report says why.
"""
from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

EPILOG = """\
settings (docs/benchmarks.md):
  self-driven                 dgtalker eval --data CLIP --talker T             (held-out frames)
  3D-aware self-driven        the same: a synthetic clip's novel/ views are evaluated too
  audio generalization        dgtalker synth --identity I --audio OTHER.wav --out NEW;
                              dgtalker eval --data NEW --talker T --all-frames
"""


def add_arguments(p) -> None:
    import argparse

    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    p.add_argument("--data", required=True, help="a talking-clip dataset directory with ground truth")
    p.add_argument("--talker", help="talker checkpoint (default: the shipped demo talker)")
    p.add_argument("--ablation", help="a talker trained on the same clip with --no-cross-view, as a baseline")
    p.add_argument("--all-frames", action="store_true",
                   help="evaluate every frame (a clip whose audio the talker never saw) instead of the held-out split")
    p.add_argument("--out", default="eval_report", help="report directory (default eval_report)")
    p.add_argument("--size", type=int, help="evaluation image size (default: the dataset's)")
    p.add_argument("--device", help="cuda or cpu (default: cuda if available)")
    p.add_argument("--no-novel", action="store_true", help="skip the novel views")


def _float(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


def _clean(obj):
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        obj = obj.item()
    return _float(obj) if isinstance(obj, float) else obj


def render_speed(talker, dataset, size: int, device, frames: int = 16) -> dict:
    """Frames per second of audio -> frames (features, encoder, frame path) for a batch."""
    from .evaluate import clip_coefficients, view_cameras

    idx = np.arange(min(frames, len(dataset)))
    w2c, K = view_cameras(dataset, idx, size, dataset.width, dataset.height, device)

    def once():
        ce, cl = clip_coefficients(talker, dataset)
        with torch.no_grad():
            img, _ = talker.frames(ce[idx].to(device), cl[idx].to(device), w2c, K, size, size)
        if img.is_cuda:
            torch.cuda.synchronize()

    once()
    t = time.perf_counter()
    once()
    took = time.perf_counter() - t
    name = torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else "cpu"
    return {"fps": len(idx) / took, "frames": len(idx), "device": name,
            "note": "eager, one batch, audio features of the whole clip included"}


def contact_sheet(talker, dataset, coefficients, per_frame: list, frames: np.ndarray, size: int, path: Path,
                  device) -> list:
    """GT | render | error for the worst, median and best frames by PSNR (``coefficients``:
    the clip's ``clip_coefficients``)."""
    from ..io import atomic_write_bytes, encode_image
    from ..talker import body_transforms
    from .evaluate import _GroundTruth, view_cameras

    ps = np.array([r["psnr"] for r in per_frame])
    order = np.argsort(ps)
    pick = [int(order[0]), int(order[len(order) // 2]), int(order[-1])]
    idx = frames[pick]
    ce, cl = coefficients
    w2c, K = view_cameras(dataset, idx, size, dataset.width, dataset.height, device)
    gt, _ = _GroundTruth(dataset, size, device)(idx)
    with torch.no_grad():
        img, _ = talker.frames(ce[idx].to(device), cl[idx].to(device), w2c, K, size, size,
                               body=body_transforms(w2c, talker.body_w2c))
    err = ((img - gt).abs() * 4).clamp(0, 1)
    rows = [torch.cat([g, r.clamp(0, 1), e], 1) for g, r, e in zip(gt, img, err)]
    atomic_write_bytes(path, encode_image((torch.cat(rows, 0) * 255).round().byte().cpu().numpy(), "png"))
    return [{"frame": int(i), "psnr": float(ps[k])} for i, k in zip(idx, pick)]


def mouth_plot(per_frame: list, frames: np.ndarray, fps: float, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    t = frames / fps
    fig, ax = plt.subplots(figsize=(8, 2.8), dpi=110)
    ax.plot(t, [r["mouth_truth"] for r in per_frame], label="ground truth")
    ax.plot(t, [r["mouth_render"] for r in per_frame], label="render (from audio)")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("mouth opening (dark fraction)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def _command(args) -> str:
    parts = ["dgtalker eval", "--data", str(args.data)]
    for flag, value in (("--talker", args.talker), ("--ablation", args.ablation), ("--size", args.size),
                        ("--device", args.device), ("--out", args.out)):
        if value is not None:
            parts += [flag, str(value)]
    parts += [f for f, on in (("--all-frames", args.all_frames), ("--no-novel", args.no_novel)) if on]
    return " ".join(parts)


def _commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def markdown(rep: dict) -> str:
    def f(x, d=2):
        return "–" if x is None else f"{x:.{d}f}"

    lines = [f"# Evaluation of {rep['talker']['path']}", "", f"Data: `{rep['data']['path']}` "
             f"({rep['frames']['frames']} frames, {rep['data']['split']}); command: `{rep['command']}`", "",
             "| | PSNR | PSNR head | PSNR lower face | SSIM | LMD px | mouth corr | lag |", "|---|---|---|---|---|---|---|---|"]
    for name, m in [("talker", rep["frames"])] + [(k, v) for k, v in rep["baselines"].items()]:
        lines.append(f"| {name} | {f(m['psnr'])} | {f(m['psnr_head'])} | {f(m['psnr_lower_face'])} | "
                     f"{f(m['ssim'], 4)} | {f(m.get('lmd_px'))} | {f(m['mouth_corr'], 3)} | {m['mouth_lag_frames']} |")
    if rep.get("novel_views"):
        lines += ["", "| novel views, abs(yaw) | PSNR | PSNR head | SSIM | views |", "|---|---|---|---|---|"]
        for b, m in rep["novel_views"].items():
            lines.append(f"| {b}° | {f(m['psnr'])} | {f(m['psnr_head'])} | {f(m['ssim'], 4)} | {m['views']} |")
    sp = rep["speed"]
    if rep["frames"].get("mouth_corr_landmarks") is not None:
        lines += ["", f"Mouth opening from landmarks (inner-lip gap): correlation "
                      f"{f(rep['frames']['mouth_corr_landmarks'], 3)}; landmarks found on "
                      f"{100 * rep['frames']['landmarks_found_render']:.0f}% of renders and "
                      f"{100 * rep['frames']['landmarks_found_truth']:.0f}% of ground-truth frames."]
    ll = rep["loudness_lag"]
    lines += ["", f"Mouth opening against audio loudness: best lag {ll['lag_frames']} frames (correlation "
                  f"{f(ll['corr'], 3)}; the ground truth's own best lag: {ll['truth_lag_frames']})."]
    if rep.get("spiral"):
        spr = rep["spiral"]
        lines.append(f"No novel-view ground truth: along a spiral camera the face is found in "
                     f"{100 * spr.get('found', 0):.0f}% of {spr.get('views', 0)} views; mouth opening varies by "
                     f"{f(spr.get('lip_gap_cv'), 3)} (coefficient of variation) across them. {spr.get('note', '')}")
    lines += ["", f"Speed: {f(sp['fps'], 1)} frames/s on {sp['device']} ({sp['note']}).",
              f"LMD: {rep['lmd_note']}", "", "![worst, median, best: truth | render | error ×4](sheet.png)", ""]
    if rep.get("mouth_plot"):
        lines.append("![mouth opening over time](mouth.png)")
    return "\n".join(lines) + "\n"


def run(args) -> int:
    from ..checkpoint import CheckpointError
    from ..data import DatasetError, load
    from ..io import atomic_write_bytes, atomic_write_json
    from ..talker import load_talker
    from .evaluate import clip_coefficients, evaluate, spiral_consistency

    out = Path(args.out)
    try:
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        dataset = load(args.data)
        if dataset.kind != "talking":
            raise ValueError(f"{args.data}: evaluation needs a talking clip, got a {dataset.kind!r} dataset")
        talker = load_talker(args.talker, device=device)
        frames = np.arange(len(dataset)) if args.all_frames or not dataset.splits["heldout"].size \
            else dataset.splits["heldout"]
        size = args.size or dataset.width
        out.mkdir(parents=True, exist_ok=True)
        coefficients = clip_coefficients(talker, dataset)  # once for the evaluation, the sheet and the spiral
        res = evaluate(talker, dataset, frames=frames, size=size, novel=not args.no_novel, device=device,
                       coefficients=coefficients)
        baselines = {"static (w_can only)": res["static"]}
        if args.ablation:
            abl = evaluate(load_talker(args.ablation, device=device), dataset, frames=frames, size=size,
                           novel=False, device=device, progress=False)
            baselines["ablation (no cross-view)"] = abl["frames"]
    except (ValueError, FileNotFoundError, DatasetError, CheckpointError) as exc:
        print(f"dgtalker eval: {exc}", file=sys.stderr)
        return 2
    if res.get("landmarks"):
        lmd_note = ("mediapipe face mesh on render and ground truth alike: mean distance of the 40 lip-contour "
                    "points in pixels at the dataset's size; mouth_corr_landmarks correlates their inner-lip gaps")
    else:
        lmd_note = ("not measured: it needs mediapipe's face mesh (pip install \".[eval]\", Python <= 3.12); "
                    "mouth motion is compared with the mouth-interior measure only")
        for m in [res["frames"], *baselines.values()]:
            m["lmd_px"] = None
    rep = {"frames": res["frames"], "novel_views": res.get("novel_views"), "baselines": baselines,
           "loudness_lag": res["loudness_lag"],
           "spiral": (spiral_consistency(talker, dataset, frame=int(frames[0]), size=min(size, 256), device=device,
                                         coefficients=coefficients)
                      if not res.get("novel_views") else None),
           "speed": render_speed(talker, dataset, size, device),
           "command": _command(args),
           "commit": _commit(), "talker": {"path": args.talker or "demo talker", "source": talker.source},
           "data": {"path": str(args.data), "split": "all frames" if args.all_frames else "held-out frames",
                    "source": dataset.meta.get("source")},
           "lmd_note": lmd_note, "per_frame": res["per_frame"]}
    rep["worst_median_best"] = contact_sheet(talker, dataset, coefficients, res["per_frame"], frames, size,
                                             out / "sheet.png", device)
    rep["mouth_plot"] = mouth_plot(res["per_frame"], frames, dataset.fps, out / "mouth.png")
    rep = _clean(rep)
    atomic_write_json(out / "report.json", rep)
    atomic_write_bytes(out / "report.md", markdown(rep).encode())
    m = rep["frames"]

    def f(x, d=2):
        return "n/a" if x is None else f"{x:.{d}f}"

    print(f"{m['frames']} frames: PSNR {f(m['psnr'])} dB (lower face {f(m['psnr_lower_face'])}), "
          f"mouth corr {f(m['mouth_corr'], 3)} at lag {m['mouth_lag_frames']} -> {out}/report.md")
    return 0
