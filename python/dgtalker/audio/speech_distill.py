"""Distil the speech encoder into a smaller, faster one (measured, not shipped).

``dgtalker.lipsync`` reads speech through Whisper base's stem and first three blocks
(``audio.speech_encoder``), which run at 27-34x real time on a 2-core CPU without native
bfloat16. The student made here keeps that shape but runs its blocks on 25 frames per
second instead of 50 (means of two stem frames), keeps each block's attention heads and
MLP hidden units that carry most of the teacher's output (``--heads``, ``--mlp``),
factors the stem's second convolution (``--stem-rank``, from its SVD), and brings the
blocks' output back to 50 frames per second through a learned low-rank layer. It starts
from the teacher's weights and learns to reproduce the teacher's features on synthetic
speech, in both modes (offline, and causal with banded attention), weighted where the
lip-sync heads read them: the squared error of the standardised features projected on
each mode's heads' principal directions (``lipsync_model.HeadConfig.components``), plus
``--full-weight`` times that of all the standardised features. So the shipped heads read
the student's features unchanged. Speech is augmented on the fly (noise and babble at
0-30 dB SNR, a synthetic room, a smooth EQ, telephone band limits); teacher and student
hear the same audio.

The defaults cost 2.9x fewer operations than the teacher, and lose real-speech accuracy:
trained on synthetic speech alone the student follows the real clips' mouths at mean r
0.474 against the teacher's 0.518 (docs/lipsync.md), so it is not shipped. Use one with
``dgtalker.lipsync(..., encoder=PATH)`` or ``dgtalker lipsync --encoder PATH``.

    python -m dgtalker.audio.tts_corpus --out corpus.npz --minutes 150 --seed 0 --flite-share 0.3 --keep-audio
    python -m dgtalker.audio.speech_distill --corpus corpus.npz --out speech_encoder_small.safetensors --threads 2
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..io import report_trained, sha256_file
from .speech_encoder import RATE, SAMPLE_RATE, build_model, load_speech_encoder, save_speech_encoder

# the student's shape: blocks on means of 2 stem frames (the causal band, 1 s before and none
# after, counted in them), 6 of 8 heads, 768 of 2,048 MLP units, the stem factored through 128
STUDENT = {"pool": 2, "heads": 6, "head_dim": 64, "mlp": 768, "stem_rank": 128, "upsample_rank": 128,
           "band_past": 25, "band_future": 0}


def _init_from_teacher(teacher, student, mels) -> None:
    """Copies the teacher into the student, cut where the student is smaller: each block
    keeps the attention heads whose output (through the output projection) is largest and
    the MLP hidden units with the largest mean |GELU activation| x output-weight norm, over
    ``mels``; a factored stem convolution starts as the teacher's best low-rank one (SVD)."""
    import torch

    cfg = student.config
    t_state, s_state = teacher.state_dict(), student.state_dict()
    head_dim = teacher.config.width // teacher.config.heads
    mlp_score, head_score, hooks = {}, {}, []

    def on_fc1(i):
        return lambda _m, _inp, out: mlp_score.setdefault(i, []).append(torch.nn.functional.gelu(out).abs().mean((0, 1)))

    def on_proj(i, w):
        def hook(_m, inp, _out):
            a = inp[0].unflatten(-1, (teacher.config.heads, head_dim))               # [B, T, H, hd]
            c = torch.einsum("bthk,dhk->bthd", a, w.view(w.shape[0], teacher.config.heads, head_dim))
            head_score.setdefault(i, []).append(c.norm(dim=-1).mean((0, 1)))
        return hook

    for i, b in enumerate(teacher.blocks):
        hooks += [b.fc1.register_forward_hook(on_fc1(i)), b.proj.register_forward_hook(on_proj(i, b.proj.weight))]
    with torch.no_grad():
        for mel in mels:
            teacher(mel[None])
    for h in hooks:
        h.remove()
    units, heads = {}, {}
    for i, b in enumerate(teacher.blocks):
        score = torch.stack(mlp_score[i]).mean(0) * b.fc2.weight.norm(dim=0)
        units[i] = torch.sort(torch.topk(score, cfg.mlp or 4 * cfg.width).indices).values
        kept = torch.sort(torch.topk(torch.stack(head_score[i]).mean(0), cfg.heads).indices).values
        heads[i] = (kept[:, None] * head_dim + torch.arange(head_dim)).flatten()   # the kept heads' channels
    new = {}
    for k, v in s_state.items():
        if k not in t_state:  # the student's own layers (upsampling, the stem's factor)
            continue
        src = t_state[k]
        if k.startswith("blocks."):
            i = int(k.split(".")[1])
            if ".fc1." in k:
                src = src[units[i]]
            elif k.endswith("fc2.weight"):
                src = src[:, units[i]]
            elif ".qkv." in k:
                src = src.view(3, teacher.config.width, *src.shape[1:])[:, heads[i]].flatten(0, 1)
            elif k.endswith("proj.weight"):
                src = src[:, heads[i]]
        if k == "conv2.weight" and cfg.stem_rank:
            u, sv, vh = torch.linalg.svd(src.flatten(1), full_matrices=False)
            r = cfg.stem_rank
            new["conv2.weight"] = (sv[:r, None] * vh[:r]).view(r, *src.shape[1:])
            new["conv2_out.weight"], new["conv2_out.bias"] = u[:, :r], t_state["conv2.bias"]
            continue
        if k == "conv2.bias" and cfg.stem_rank:
            continue
        new[k] = src
    for k, v in new.items():
        s_state[k].copy_(v)


class Augmenter:
    """Random acoustic conditions for a batch of 16 kHz crops (numpy, float32)."""

    def __init__(self, rng, pool: list):
        self.rng, self.pool = rng, pool

    def noise(self, n: int) -> np.ndarray:
        """Unit-RMS babble (other speech, summed), white or brown noise."""
        from .lipsync_train import coloured_noise

        if self.rng.random() >= 0.3:
            return coloured_noise(self.rng, n)
        x = sum(self._speech(n) for _ in range(self.rng.integers(1, 4)))
        return (x / (np.sqrt(np.mean(x ** 2)) + 1e-9)).astype(np.float32)

    def _speech(self, n: int) -> np.ndarray:
        src = self.pool[self.rng.integers(len(self.pool))]
        if len(src) <= n:
            return np.resize(src, n)
        s = self.rng.integers(0, len(src) - n)
        return src[s:s + n]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        r, n = self.rng, len(x)
        if r.random() < 0.3:  # a room: exponentially decaying noise, RT60 0.1-0.8 s
            rt = r.uniform(0.1, 0.8)
            t = np.arange(int(rt * SAMPLE_RATE)) / SAMPLE_RATE
            ir = r.standard_normal(len(t)) * np.exp(-6.9 * t / rt)
            ir[0] = 1.0 / r.uniform(0.3, 1.0)  # direct sound against the reverberation
            x = np.fft.irfft(np.fft.rfft(x, 2 * n) * np.fft.rfft(ir, 2 * n), 2 * n)[:n]
        if r.random() < 0.4:  # a smooth EQ of +-8 dB, sometimes a telephone band
            f = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
            knots = r.uniform(-8, 8, 6)
            gain_db = np.interp(np.log2(f + 50), np.linspace(np.log2(50), np.log2(8050), 6), knots)
            if r.random() < 0.3:
                lo, hi = r.uniform(100, 400), r.uniform(3000, 7500)
                gain_db = np.where((f < lo) | (f > hi), -60.0, gain_db)
            x = np.fft.irfft(np.fft.rfft(x) * 10 ** (gain_db / 20), n)
        if r.random() < 0.5:
            snr = r.uniform(0, 30)
            rms = np.sqrt(np.mean(x ** 2)) + 1e-9
            x = x + self.noise(n) * rms * 10 ** (-snr / 20)
        return (x * 10 ** r.uniform(-1.5, 0.5)).astype(np.float32)


def distil(corpus_path: Path, out: Path, steps: int, seed: int, batch: int = 8, lr: float = 3e-4,
           shape: dict | None = None, full_weight: float = 0.3, threads: int | None = None, log=print) -> dict:
    import torch

    from .lipsync_model import load_lipsync
    from .lipsync_train import passages, read_speech_corpus

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    t0 = time.time()
    ps = passages(read_speech_corpus(corpus_path), rng, log=lambda *_: None)
    held = max(1, len(ps) // 20)
    train_ps, val_ps = [p[0] for p in ps[:-held]], ps[-held:]
    teacher = load_speech_encoder()
    lips = load_lipsync()
    cfg = replace(teacher.config, **{**STUDENT, **(shape or {})})
    student = build_model(cfg)
    _init_from_teacher(teacher.model, student, [teacher.log_mel(x) for x in train_ps[:40]])
    # each mode's standardisation and principal directions, as its heads read them
    heads = {m: (lips.heads[m].members[0] if hasattr(lips.heads[m], "members") else lips.heads[m]) for m in lips.heads}
    read = {m: (h.feature_mean, h.feature_std, h.projection) for m, h in heads.items()}
    bands = {"offline": None, "causal": (cfg.band_past, cfg.band_future)}
    t_bands = {"offline": None, "causal": (teacher.config.band_past, teacher.config.band_future)}
    aug = Augmenter(rng, train_ps)
    opt = torch.optim.AdamW(student.parameters(), lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.05)
    bf16 = torch.autocast("cpu", dtype=torch.bfloat16)

    def loss_of(fs, ft, mode):
        mean, std, proj = read[mode]
        z = (fs - ft) / std
        projected = (z @ proj).pow(2).mean()
        return projected + full_weight * z.pow(2).mean(), projected

    def validate() -> dict:
        """Relative error on the heads' directions, and the heads' opening r against the
        corpus targets, on the held-out passages (augmented with fixed draws)."""
        student.eval()
        vr = np.random.default_rng(seed + 999)
        vaug = Augmenter(vr, train_ps)
        res = {}
        with torch.no_grad():
            for mode in ("offline", "causal"):
                errs, preds, targets = [], [], []
                for x, o, _, _ in val_ps:
                    x, o = x[:29 * SAMPLE_RATE], o[:29 * RATE]  # within Whisper's 30 s of positions
                    xa = vaug(x) if vr.random() < 0.5 else x
                    mel = teacher.log_mel(xa, mode == "causal")[None]
                    with bf16:
                        ft = teacher.model(mel, t_bands[mode]).float()
                        fs = student(mel, bands[mode]).float()
                    errs.append(loss_of(fs, ft, mode)[1].item())
                    preds.append(lips.heads[mode](fs)["opening"][0].numpy()[:len(o)])
                    targets.append(o[:len(preds[-1])])
                res[mode] = {"projected_mse": round(float(np.mean(errs)), 4),
                             "opening_r": round(float(np.corrcoef(np.concatenate(preds), np.concatenate(targets))[0, 1]), 4)}
        student.train()
        return res

    log(f"{len(train_ps)} training passages, {len(val_ps)} held out; before training: {validate()} "
        f"({time.time() - t0:.0f} s)")
    long_ps = [x for x in train_ps if len(x) >= 6 * SAMPLE_RATE] or train_ps  # shorter crops are padded with silence
    for step in range(steps):
        mode = ("offline", "causal")[step % 2]
        n = int(rng.uniform(6, 12) * SAMPLE_RATE)
        xs = []
        for _ in range(batch):
            x = long_ps[rng.integers(len(long_ps))]
            s = rng.integers(0, max(1, len(x) - n))
            c = np.zeros(n, np.float32)
            seg = x[s:s + n]
            c[:len(seg)] = seg
            xs.append(aug(c) if rng.random() < 0.7 else c)
        mel = torch.stack([teacher.log_mel(x, mode == "causal") for x in xs])
        with torch.no_grad(), bf16:
            ft = teacher.model(mel, t_bands[mode]).float()
        with bf16:
            fs = student(mel, bands[mode]).float()
        loss, proj_mse = loss_of(fs, ft, mode)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0:
            log(f"step {step}/{steps} {mode} loss {loss.item():.4f} projected {proj_mse.item():.4f} "
                f"({time.time() - t0:.0f} s)")
    record = validate()
    log(f"after {steps} steps: {record} ({time.time() - t0:.0f} s)")
    extra = {"source": "distilled from " + teacher.meta.get("source", "the speech encoder"),
             "licence": "MIT, (c) 2022 OpenAI (the teacher's weights it starts from)",
             "teacher_sha256": sha256_file(teacher.path), "heads_sha256": sha256_file(lips.path),
             "corpus": Path(corpus_path).name, "steps": steps, "seed": seed, "batch": batch, "lr": lr,
             "full_weight": full_weight, "seconds": round(time.time() - t0), "validation": record}
    save_speech_encoder(out, student.state_dict(), teacher.mel_filters, cfg, extra)
    return {"sha256": sha256_file(out), **extra}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m dgtalker.audio.speech_distill", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", required=True, help="corpus .npz from `python -m dgtalker.audio.tts_corpus --keep-audio`")
    p.add_argument("--out", required=True, help="weights .safetensors to write")
    p.add_argument("--steps", type=int, default=1200, help="optimiser steps (default 1200)")
    p.add_argument("--batch", type=int, default=8, help="crops of 6-12 s per step (default 8)")
    p.add_argument("--lr", type=float, default=3e-4, help="peak learning rate (default 3e-4)")
    p.add_argument("--mlp", type=int, default=STUDENT["mlp"],
                   help=f"hidden units kept in each block's MLP (default {STUDENT['mlp']}; the teacher's 2048)")
    p.add_argument("--heads", type=int, default=STUDENT["heads"],
                   help=f"attention heads kept in each block (default {STUDENT['heads']}; the teacher's 8)")
    p.add_argument("--stem-rank", type=int, default=STUDENT["stem_rank"],
                   help=f"channels the stem's second convolution is factored through (default {STUDENT['stem_rank']})")
    p.add_argument("--full-weight", type=float, default=0.3,
                   help="weight of all standardised features' error beside the heads' directions (default 0.3)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument("--log", help="also write the training record (JSON) here")
    a = p.parse_args(argv)
    shape = {"mlp": a.mlp, "heads": a.heads, "stem_rank": a.stem_rank}
    res = distil(Path(a.corpus), Path(a.out), a.steps, a.seed, a.batch, a.lr, shape, a.full_weight, a.threads)
    return report_trained(a.out, res, a.log)


if __name__ == "__main__":
    sys.exit(main())
