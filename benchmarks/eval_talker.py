"""Measure a trained talker against the synthetic clip's ground truth (the identity
issue's targets), and write JSON + a Markdown table + figures.

    python benchmarks/eval_talker.py --talker id007.safetensors --data data/id007 \
        --voice data/id007_voice2 [--ablation id007_nocross.safetensors] --out benchmarks/results/talker

Settings: self-driven held-out frames of the training clip (and, with --fit-upper,
the upper face fitted per frame), its novel views per |yaw|, the same identity
driven by a voice it never heard (--voice: `dgtalker synth --identity 7 --voice ...`,
all frames), disentanglement, orthogonality, and the learned coefficients' spectrum
(how many components carry the motion: the measurement behind k_exp and k_lip).
With the training history next to the talker (OUT.history.json), also held-out PSNR
against training minutes.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from dgtalker.data import load
from dgtalker.eval.evaluate import clip_coefficients, disentanglement, evaluate
from dgtalker.talker import load_talker


def spectrum(talker, dataset) -> dict:
    """Share of the latent motion variance carried by each principal direction of the
    scaled coefficients (speech + residual for c_exp), per branch."""
    ce, cl = clip_coefficients(talker, dataset)
    ce = ce + talker.residual_track.detach().cpu()[: len(ce)]
    se, sl = talker.blendshapes.scaled(ce, cl)
    out = {}
    for name, c in (("exp", se), ("lip", sl)):
        c = c.detach().double()
        ev = torch.linalg.eigvalsh(torch.cov(c.T)).flip(0).clamp_min(0)
        share = (ev / ev.sum()).tolist()
        cum = np.cumsum(share)
        out[name] = {"variance_share": [round(x, 4) for x in share],
                     "components_for_95": int(np.searchsorted(cum, 0.95) + 1),
                     "components_for_99": int(np.searchsorted(cum, 0.99) + 1)}
    return out


def history_curve(path: Path, png: Path) -> list:
    hist = json.loads(path.read_text())
    rows = [(h["minutes"], h["val_psnr"], h["val_psnr_lower"]) for h in hist if "val_psnr" in h]
    if not rows:
        return []
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        m, p, pl = zip(*rows)
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
        ax.plot(m, p, label="held-out PSNR (whole frame)")
        ax.plot(m, pl, label="held-out PSNR (lower face)")
        ax.axhline(32, ls="--", c="C0", lw=0.8)
        ax.axhline(28, ls="--", c="C1", lw=0.8)
        ax.set_xlabel("training minutes (one GPU, inversion included)")
        ax.set_ylabel("dB (audio only, 512²)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(png)
    except ImportError:
        pass
    return [{"minutes": a, "val_psnr": b, "val_psnr_lower": c} for a, b, c in rows]


def run_one(talker_path: Path, data, voice, fit_upper: int, device) -> dict:
    T = load_talker(talker_path, device=device)
    t0 = time.time()
    out = {"talker": str(talker_path), "source": T.source}
    out["self_driven"] = evaluate(T, data, fit_upper_steps=fit_upper, fit_every=6, device=device)
    if voice is not None:
        out["new_voice"] = evaluate(T, voice, frames=np.arange(len(voice)), novel=False, device=device)
    out["disentanglement"] = disentanglement(T, data, device=device)
    out["spectrum"] = spectrum(T, data)
    out["seconds"] = round(time.time() - t0, 1)
    for r in ("self_driven", "new_voice"):
        if r in out:
            out[r].pop("per_frame", None)
    return out


def markdown(res: dict) -> str:
    def f(x, d=2):
        return "–" if x is None else f"{x:.{d}f}"

    lines = ["| setting | PSNR | PSNR head | PSNR lower face | PSNR upper face | PSNR torso | SSIM | mouth corr | lag |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label, key in (("talker", None), ("ablation (no cross-view)", "ablation")):
        r = res if key is None else res.get(key)
        if not r:
            continue
        rows = [("self-driven, held-out (audio only)", r["self_driven"]["frames"]),
                ("  static baseline (w_can only)", r["self_driven"]["static"]),
                ("  torso carried by the head camera", r["self_driven"]["torso_rigid"])]
        if "fit_upper" in r["self_driven"]:
            rows.append(("  upper face fitted per frame", r["self_driven"]["fit_upper"]))
        if "new_voice" in r:
            rows.append(("unseen voice (all frames)", r["new_voice"]["frames"]))
        for name, m in rows:
            lines.append(f"| {label}: {name} | {f(m['psnr'])} | {f(m['psnr_head'])} | {f(m['psnr_lower_face'])} | "
                         f"{f(m['psnr_upper_face'])} | {f(m.get('psnr_torso'))} | {f(m['ssim'], 4)} | "
                         f"{f(m['mouth_corr'], 3)} | {m['mouth_lag_frames']} |")
    lines += ["", "| novel views |yaw| | PSNR | PSNR head | PSNR lower face | SSIM | views |", "|---|---|---|---|---|---|"]
    for b, m in res["self_driven"].get("novel_views", {}).items():
        lines.append(f"| {b}° | {f(m['psnr'])} | {f(m['psnr_head'])} | {f(m['psnr_lower_face'])} | {f(m['ssim'], 4)} | "
                     f"{m['views']} |")
    d = res["disentanglement"]
    lines += ["", f"Disentanglement: c_exp moves the lower face by {f(100 * d['lower_leak'], 1)}% of what c_lip "
                  f"moves it; c_lip moves the upper face by {f(100 * d['upper_leak'], 1)}% of what c_exp moves it. "
                  f"max |B Bᵀ − I| = {d['orthogonality_error']:.1e}."]
    if "ablation" in res:
        a = res["ablation"]["disentanglement"]
        lines.append(f"Without cross-view: {f(100 * a['lower_leak'], 1)}% and {f(100 * a['upper_leak'], 1)}%.")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--talker", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True, help="the training clip (held-out frames, novel views)")
    ap.add_argument("--voice", type=Path, help="the same identity driven by another voice")
    ap.add_argument("--ablation", type=Path, help="a talker trained with --no-cross-view on the same clip")
    ap.add_argument("--fit-upper", type=int, default=30, help="test-time c_exp fit steps (0: skip)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, required=True, help="output prefix (writes PREFIX.json, .md, _minutes.png)")
    a = ap.parse_args()
    data = load(a.data)
    voice = load(a.voice) if a.voice else None
    res = run_one(a.talker, data, voice, a.fit_upper, a.device)
    if a.ablation:
        res["ablation"] = run_one(a.ablation, data, voice, 0, a.device)
    hist = a.talker.with_name(a.talker.name + ".history.json")
    if hist.exists():
        res["minutes_curve"] = history_curve(hist, a.out.with_name(a.out.name + "_minutes.png"))
    try:
        res["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        pass
    res["device"] = a.device
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps(res, indent=1, default=float))
    md = markdown(res)
    a.out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
