"""The report of ``dgtalker eval`` (the command: ``dgtalker.eval.eval_cli``).

It writes ``report.json`` (metrics, baselines, speed, provenance), ``report.md`` (the
tables), ``sheet.png`` (ground truth | render | error at the worst, median and best
frames), ``details.png`` (truth | render around the mouth and the eyes of those frames, at
full resolution) and ``mouth.png`` (mouth opening of truth and render over time). The
protocol is ``dgtalker.eval.evaluate``'s. Landmark distance (LMD) needs a face
landmark detector (mediapipe, the ``[preprocess]`` extra); without one it is null
and the report says why.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

def _float(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


def clean(obj):
    """``obj`` with numpy scalars as Python numbers and non-finite floats as None (JSON)."""
    if isinstance(obj, dict):
        return {k: clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        obj = obj.item()
    return _float(obj) if isinstance(obj, float) else obj


def render_speed(talker, dataset, size: int, device, frames: int = 16) -> dict:
    """Frames per second of audio -> frames (features, encoder, frame path) for a batch."""
    from .evaluate import clip_coefficients, clip_torso, view_cameras

    idx = np.arange(min(frames, len(dataset)))
    w2c, K = view_cameras(dataset, idx, size, dataset.width, dataset.height, device)
    torso = clip_torso(dataset, idx, device)

    def once():
        ce, cl = clip_coefficients(talker, dataset)
        with torch.no_grad():
            img, _ = talker.clip_frames(ce[idx].to(device), cl[idx].to(device), w2c, K, size, size, checked=True,
                                        torso=torso)
        if img.is_cuda:
            torch.cuda.synchronize()

    once()
    t = time.perf_counter()
    once()
    took = time.perf_counter() - t
    name = torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else "cpu"
    return {"fps": len(idx) / took, "frames": len(idx), "device": name,
            "note": "eager, one batch, audio features of the whole clip included"}


def _truth_and_render(talker, dataset, coefficients, frames, size: int, device):
    """(truth, masks, render clamped to [0, 1]) of clip ``frames`` at ``size`` squared, the
    render from their speech coefficients at their own cameras."""
    from .evaluate import GroundTruth, clip_torso, view_cameras

    w2c, K = view_cameras(dataset, frames, size, dataset.width, dataset.height, device)
    gt, masks = GroundTruth(dataset, size, device)(frames)
    ce, cl = coefficients
    with torch.no_grad():
        img, _ = talker.clip_frames(ce[frames].to(device), cl[frames].to(device), w2c, K, size, size, checked=True,
                                    torso=clip_torso(dataset, frames, device))
    return gt, masks, img.clamp(0, 1)


def contact_sheet(talker, dataset, coefficients, per_frame: list, frames: np.ndarray, size: int, path: Path,
                  device) -> list:
    """GT | render | error for the worst, median and best frames by PSNR (``coefficients``:
    the clip's ``clip_coefficients``)."""
    from ..io import atomic_write_bytes, encode_image

    ps = np.array([r["psnr"] for r in per_frame])
    order = np.argsort(ps)
    pick = [int(order[0]), int(order[len(order) // 2]), int(order[-1])]
    idx = frames[pick]
    gt, _, img = _truth_and_render(talker, dataset, coefficients, idx, size, device)
    err = ((img - gt).abs() * 4).clamp(0, 1)
    rows = [torch.cat([g, r, e], 1) for g, r, e in zip(gt, img, err)]
    atomic_write_bytes(path, encode_image((torch.cat(rows, 0) * 255).round().byte().cpu().numpy(), "png"))
    return [{"frame": int(i), "psnr": float(ps[k])} for i, k in zip(idx, pick)]


def region_box(mask: torch.Tensor, pad: float = 0.25) -> tuple[int, int, int] | None:
    """``(top, left, side)`` of a square around a soft mask ``[H, W]`` (its pixels above
    0.5, padded by ``pad`` of the larger extent, inside the image), or None if empty."""
    ys, xs = torch.nonzero(mask > 0.5, as_tuple=True)
    if len(ys) == 0:
        return None
    H, W = mask.shape
    cy, cx = (int(ys.min()) + int(ys.max())) / 2, (int(xs.min()) + int(xs.max())) / 2
    side = max(int(ys.max() - ys.min()), int(xs.max() - xs.min())) + 1
    side = min(int(round(side * (1 + 2 * pad))), H, W)
    top = int(round(min(max(cy - side / 2, 0), H - side)))
    left = int(round(min(max(cx - side / 2, 0), W - side)))
    return top, left, side


def detail_sheet(talker, dataset, coefficients, frames, path: Path, device) -> bool:
    """Truth | render around the mouth and around the eyes of clip ``frames`` at the clip's
    full resolution (squares around the truth's lower- and upper-face masks; smaller
    crops are enlarged to the largest by nearest neighbour), one row per frame;
    ``coefficients``: the clip's ``clip_coefficients``. False (nothing written) if a
    frame's mask lacks a region."""
    from ..data.format import MASK_CHANNELS
    from ..io import atomic_write_bytes, encode_image

    gt, masks, img = _truth_and_render(talker, dataset, coefficients, frames, max(dataset.width, dataset.height),
                                       device)
    crops = []  # per frame: [(truth, render)] for mouth and eyes
    for g, r, m in zip(gt, img, masks):
        row = []
        for channel in (MASK_CHANNELS.index("lower_face"), MASK_CHANNELS.index("upper_face")):
            box = region_box(m[..., channel].float())
            if box is None:
                return False
            t, left, side = box
            row.append((g[t:t + side, left:left + side], r[t:t + side, left:left + side]))
        crops.append(row)
    size = max(c.shape[0] for row in crops for pair in row for c in pair)

    def enlarge(c):  # nearest-neighbour, so the pixels stay visible
        return torch.nn.functional.interpolate(c.permute(2, 0, 1)[None], size=(size, size),
                                               mode="nearest")[0].permute(1, 2, 0)

    rows = [torch.cat([enlarge(c) for pair in row for c in pair], 1) for row in crops]
    atomic_write_bytes(path, encode_image((torch.cat(rows, 0) * 255).round().byte().cpu().numpy(), "png"))
    return True


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


def markdown(rep: dict) -> str:
    def f(x, d=2):
        return "–" if x is None else f"{x:.{d}f}"

    lines = [f"# Evaluation of {rep['talker']['path']}", "", f"Data: `{rep['data']['path']}` "
             f"({rep['data']['split']}); command: `{rep['command']}`", ""]
    fr = rep["frames"]
    if fr.get("lip_motion_ratio") is not None:
        # lip sync first: the mouth opening in the face mesh's unit (inner-lip gap over the eye corners)
        lines += ["| lip sync | motion ratio | inner-lip corr | best lag (corr) | LMD px |", "|---|---|---|---|---|"]
        for name, m in [("talker", fr)] + [(k, v) for k, v in rep["baselines"].items() if "lip_corr" in v]:
            lines.append(f"| {name} | {f(m['lip_motion_ratio'])} | {f(m['lip_corr'], 3)} | "
                         f"{m['lip_lag_frames']} ({f(m['lip_best_corr'], 3)}) | {f(m.get('lmd_px'))} |")
        d = rep.get("talker_minus_static") or {}
        if d:
            lines += ["", "Talker minus static head: " + ", ".join(f"{k} {v:+.3f}" for k, v in d.items()), ""]
    if fr.get("regions"):
        names = list(fr["regions"])
        lines += ["| regions (PSNR / SSIM / detail) | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for name, m in [("talker", fr)] + [(k, v) for k, v in rep["baselines"].items() if "regions" in v]:
            lines.append(f"| {name} | " + " | ".join(
                f"{f(m['regions'][n]['psnr'])} / {f(m['regions'][n]['ssim'], 3)} / {f(m['regions'][n].get('detail'))}"
                for n in names) + " |")
        lines += ["", "Detail: the render's finest texture (the luminance's Laplacian) over the truth's in the "
                      "region; 1 is as sharp as the truth, below 1 softer.", ""]
    lines += ["| | PSNR | PSNR head | PSNR lower face | SSIM | LMD px | mouth corr | lag |", "|---|---|---|---|---|---|---|---|"]
    for name, m in [("talker", rep["frames"])] + [(k, v) for k, v in rep["baselines"].items()]:
        lines.append(f"| {name} | {f(m['psnr'])} | {f(m['psnr_head'])} | {f(m['psnr_lower_face'])} | "
                     f"{f(m['ssim'], 4)} | {f(m.get('lmd_px'))} | {f(m['mouth_corr'], 3)} | {m['mouth_lag_frames']} |")
    if fr.get("psnr_lower_face_open") is not None:
        lines += ["", f"Lower face on open-mouth frames {f(fr['psnr_lower_face_open'])} dB "
                      f"({fr['open_frames']} frames, the truth's opening in its top third), on closed ones "
                      f"{f(fr['psnr_lower_face_closed'])} dB ({fr['closed_frames']}, bottom third): "
                      f"{f(fr['psnr_lower_face_closed'] - fr['psnr_lower_face_open'])} dB apart."]
    if fr.get("teeth_ratio") is not None:
        lines += ["", f"Teeth on open-mouth frames (pale, skin-bright pixels inside the truth's inner lip line): "
                      f"the render shows {f(fr['teeth_ratio'], 2)} of the truth's area; at least half of it on "
                      f"{100 * fr['teeth_visible']:.0f}% of the {fr['teeth_frames']} frames whose truth shows teeth."]
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
    if rep.get("details_sheet"):
        lines += ["![the same frames at full resolution: mouth truth | render, eyes truth | render](details.png)", ""]
    if rep.get("mouth_plot"):
        lines.append("![mouth opening over time](mouth.png)")
    return "\n".join(lines) + "\n"


