"""`dgtalker demo`: the shipped demo talker speaks a sentence (espeak-ng when it is
installed, else a bundled recording) under a spiral camera -> an mp4 with the speech
and a contact sheet PNG: audio encoder, latent composition, synthesis, decode and
rasterizer end to end (CPU or CUDA).

`--prior` instead renders heads sampled from the shipped generative prior (or, with
`--procedural`, a procedural Gaussian head) from several viewpoints into one PNG.
"""
from __future__ import annotations

import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def gaussian_head(n: int = 40_000, seed: int = 0):
    """A stylised head in the canonical head frame: Gaussians on a skull-shaped
    shell, skin-coloured with noise, with eyes, brows, lips, a nose and hair."""
    import torch

    g = torch.Generator().manual_seed(seed)
    d = torch.randn(n, 3, generator=g)
    d = d / d.norm(dim=1, keepdim=True)
    x, y, z = d.unbind(1)
    radius = torch.stack([0.075 * torch.ones(n), 0.105 * torch.ones(n), 0.092 * torch.ones(n)], 1)
    # a narrower jaw and a nose bump on the front
    radius[:, 0] *= torch.where(y < -0.2, 1.0 + 0.35 * y, torch.ones(n))
    nose = torch.exp(-((x / 0.12) ** 2 + ((y + 0.08) / 0.22) ** 2)) * (z > 0)
    radius[:, 2] *= 1.0 + 0.22 * nose
    means = d * radius + torch.tensor([0.0, 0.005, 0.0])
    mx, my, mz = means.unbind(1)

    skin = torch.tensor([0.87, 0.66, 0.54]) * (0.93 + 0.07 * torch.rand(n, 1, generator=g))
    colors = skin.clone()
    front = mz > 0.03
    for side in (-1.0, 1.0):
        eye = ((mx - side * 0.032) ** 2 / 0.014 ** 2 + (my - 0.018) ** 2 / 0.008 ** 2 < 1) & front
        iris = ((mx - side * 0.032) ** 2 + (my - 0.018) ** 2 < 0.0055 ** 2) & front
        brow = ((mx - side * 0.033).abs() < 0.02) & ((my - 0.04).abs() < 0.004) & front
        colors[eye] = torch.tensor([0.95, 0.95, 0.93])
        colors[iris] = torch.tensor([0.25, 0.35, 0.55])
        colors[brow] = torch.tensor([0.30, 0.20, 0.14])
    lips = (mx.abs() < 0.024) & ((my + 0.052).abs() < 0.007 * (1 - (mx / 0.026) ** 2).clamp(min=0).sqrt()) & front
    colors[lips] = torch.tensor([0.72, 0.30, 0.32])
    hair = (my > 0.045 - 0.06 * (mz < 0) * (-mz / 0.09)) & ~(front & (my < 0.075))
    colors[hair] = torch.tensor([0.22, 0.14, 0.09]) * (0.8 + 0.4 * torch.rand(int(hair.sum()), 1, generator=g))

    spacing = math.sqrt(4 * math.pi * 0.09 ** 2 / n)
    scales = spacing * torch.exp(0.15 * torch.randn(n, 3, generator=g))
    scales[:, 2] *= 0.3  # flat splats along a random axis: surface-like
    quats = torch.randn(n, 4, generator=g)
    opacities = 0.85 + 0.15 * torch.rand(n, generator=g)
    return means, quats, scales, opacities, colors.clamp(0, 1)


DEFAULT_SENTENCE = "Hello! I am a talking head, made of three D Gaussians."
BUNDLED_SPEECH = Path(__file__).parent / "models" / "assets" / "demo_speech.wav"


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="demo.mp4",
                        help="video to write (default demo.mp4; with --prior a PNG, default demo.png); "
                             "the contact sheet goes next to it as .png")
    parser.add_argument("--text", default=DEFAULT_SENTENCE, help="what the talker says (needs espeak-ng)")
    parser.add_argument("--audio", help="speech file to use instead of --text")
    parser.add_argument("--talker", help="talker checkpoint (default: the shipped demo talker)")
    parser.add_argument("--size", type=int, default=256, help="width and height in pixels (default 256)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (CUDA when available)")
    parser.add_argument("--prior", action="store_true",
                        help="instead: render heads sampled from the shipped prior into a PNG")
    parser.add_argument("--views", default="-35,0,35", help="--prior: comma-separated camera yaws in degrees")
    parser.add_argument("--heads", type=int, default=3, help="--prior: heads sampled from the prior (rows)")
    parser.add_argument("--truncation", type=float, default=0.7,
                        help="--prior: sampling truncation, 0 = the mean head, 1 = full variety")
    parser.add_argument("--seed", type=int, default=0, help="--prior: seed of the sampled heads")
    parser.add_argument("--procedural", action="store_true",
                        help="--prior: render a procedural Gaussian head instead of the prior")
    parser.add_argument("--gaussians", type=int, default=40_000, help="--procedural: number of Gaussians")


def _speech(args, tmp: Path) -> tuple[Path, str]:
    if args.audio:
        return Path(args.audio), args.audio
    exe = shutil.which("espeak-ng")
    if exe and args.text:
        wav = tmp / "speech.wav"
        res = subprocess.run([exe, "-v", "en-us+m3", "-s", "165", "-w", str(wav), args.text], capture_output=True)
        if res.returncode == 0 and wav.exists() and wav.stat().st_size > 44:
            return wav, f"espeak-ng: {args.text!r}"
    return BUNDLED_SPEECH, f"the bundled recording ({DEFAULT_SENTENCE!r})"


def run(args) -> int:
    if args.prior or args.procedural:
        return run_prior(args)
    import torch

    from .camera import spiral
    from .checkpoint import CheckpointError
    from .inference import VIDEO_SUFFIXES
    from .io import check_output_path
    from .talker import load_talker

    if args.size < 16:
        raise SystemExit("dgtalker demo: --size must be >= 16")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    start = time.perf_counter()
    try:
        out = check_output_path(args.out, "--out", VIDEO_SUFFIXES)  # before any work
        talker = load_talker(args.talker, device=device)
        with tempfile.TemporaryDirectory() as tmp:
            wav, what = _speech(args, Path(tmp))
            from . import audio as A

            samples, rate = A.load(wav)
        n = A.num_video_frames(len(samples), rate, 25.0)
        t0 = time.perf_counter()
        video = talker.render((samples, rate), spiral(n, width=args.size, height=args.size), width=args.size,
                              height=args.size, device=device, progress=True)
        took = time.perf_counter() - t0
        video.save(out)
        sheet = video.contact_sheet(out.with_suffix(".png"))
    except (ValueError, FileNotFoundError, IsADirectoryError, CheckpointError, RuntimeError) as exc:
        # RuntimeError: ffmpeg missing or failing to write the mp4
        print(f"dgtalker demo: {exc}", file=sys.stderr)
        return 2
    print(f"the demo talker said {what}: {len(video)} frames at {args.size}x{args.size} on {device}, "
          f"{len(video) / took:.1f} FPS (audio to frames), {time.perf_counter() - start:.1f} s in all "
          f"-> {out} (+ {sheet.name})")
    return 0


def run_prior(args) -> int:
    import torch

    import dgtalker
    from dgtalker.camera import orbit
    from dgtalker.io import atomic_write_bytes, encode_image

    try:
        yaws = [float(v) for v in args.views.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"dgtalker demo: --views must be comma-separated numbers, got {args.views!r}")
    if not yaws or args.size < 16 or args.gaussians < 1 or args.heads < 1:
        raise SystemExit("dgtalker demo: need at least one view, --size >= 16, --heads >= 1 and --gaussians >= 1")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if args.procedural:
        heads = [[t.to(device) for t in gaussian_head(args.gaussians)]]
        cams = [orbit(yaw, 5.0, width=args.size, height=args.size, distance=0.45, target=(0.0, 0.0, 0.0))
                for yaw in yaws]
        what = f"a procedural head of {args.gaussians} Gaussians"
    else:
        from dgtalker import prior
        G = prior.load_prior(device=device)
        w = prior.sample_w(args.heads, G, truncation=args.truncation, seed=args.seed)
        with torch.no_grad():
            g = prior.gaussians(w, G)
        heads = [[t[i] for t in g] for i in range(args.heads)]
        cams = [orbit(yaw, 0.0, width=args.size, height=args.size) for yaw in yaws]
        what = f"{args.heads} heads of {G.num_gaussians} Gaussians sampled from the prior"
    viewmats = torch.stack([c[0] for c in cams]).to(device)
    Ks = torch.stack([c[1] for c in cams]).to(device)
    start = time.perf_counter()
    rows = []
    with torch.no_grad():
        for head in heads:
            image, _, _ = dgtalker.rasterize(*head, viewmats, Ks, args.size, args.size,
                                             background=torch.tensor([1.0, 1.0, 1.0], device=device))
            rows.append(np.concatenate(list((image.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()), axis=1))
    if device != "cpu":
        torch.cuda.synchronize()
    took = time.perf_counter() - start
    strip = np.concatenate(rows, axis=0)
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        out = out.with_suffix(".png")
    atomic_write_bytes(out, encode_image(strip, "png"))
    print(f"rendered {len(yaws)} views of {what} at {args.size}x{args.size} on {device} "
          f"in {took * 1000:.1f} ms -> {out}")
    return 0
