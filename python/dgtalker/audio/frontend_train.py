"""Train the lip-sync front end (``dgtalker.audio.frontend``) on the synthetic corpus.

    python -m dgtalker.audio.tts_corpus --out corpus.npz --minutes 90 --seed 0
    python -m dgtalker.audio.frontend_train --corpus corpus.npz --out lipsync_frontend.safetensors \\
        --steps 6000 --seed 0

Every batch is a fresh corruption of the clean synthetic speech, done on log-mel
frames in the power domain (so it runs on the GPU or CPU at no cost):

* speaking rate: a crop stretched by 0.8-1.25 in time (targets alike);
* vocal-tract length: the frequency axis warped by 0.85-1.18 (on top of the corpus'
  resampling, which moves pitch and formants together);
* microphone / room colouring: a random smooth EQ curve (+-8 dB) and tilt, gain of
  -30..+10 dB, band limits of telephone (3.4-4 kHz), 11 kHz and 16 kHz audio and a
  low cut;
* reverberation: exponentially decaying power tails, RT60 0.1-0.9 s, wet 5-100%;
* noise: coloured stationary noise with per-frame fluctuations, and babble (other
  utterances of the batch), at -5..30 dB SNR; a noise floor of -95..-60 dB; now and
  then (10% of crops) pure silence or noise alone (targets: mouth at rest).

Half the crops use the offline normalisation and half the causal one, so one network
serves both modes. Seeds are fixed (numpy and torch); on a GPU the last bits can
differ between runs. The SHA-256 of the written file is printed: record it in
``dgtalker.audio.frontend.WEIGHTS_SHA256`` when shipping it.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from ..io import report_trained, sha256_file
from .frontend import FrontEndConfig, VISEMES, build_model, normalise, save_frontend

SR = 16000


def _mel_hz(n_mels=80, fmin=55.0, fmax=7600.0):
    """Centre frequencies of the project's mel bands (librosa's Slaney mel scale)."""
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0

    def hz_to_mel(f):
        return f / f_sp if f < min_log_hz else min_log_mel + math.log(f / min_log_hz) / logstep

    def mel_to_hz(m):
        return m * f_sp if m < min_log_mel else min_log_hz * math.exp(logstep * (m - min_log_mel))

    mels = np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2)[1:-1]
    return np.array([mel_to_hz(m) for m in mels])


class Augmenter:
    def __init__(self, torch, device, seed):
        self.torch = torch
        self.dev = device
        self.hz = torch.tensor(_mel_hz(), dtype=torch.float32, device=device)
        self.g = torch.Generator(device=device)
        self.g.manual_seed(seed)

    def u(self, *shape, lo=0.0, hi=1.0):
        return lo + (hi - lo) * self.torch.rand(*shape, generator=self.g, device=self.dev)

    def warp(self, x, alpha):
        """Vocal-tract-length warp: band at f reads the clean spectrum at f / alpha."""
        torch = self.torch
        B, F, L = x.shape
        src = (self.hz[None, :] / alpha[:, None]).clamp(self.hz[0], self.hz[-1])  # [B, F]
        idx = torch.searchsorted(self.hz.contiguous(), src.contiguous()).clamp(1, F - 1)
        lo, hi = self.hz[idx - 1], self.hz[idx]
        w = ((src - lo) / (hi - lo)).clamp(0, 1)[..., None]
        a = torch.gather(x, 1, (idx - 1)[..., None].expand(B, F, L))
        b = torch.gather(x, 1, idx[..., None].expand(B, F, L))
        return a + (b - a) * w

    def __call__(self, x):
        """x: clean log-mel [B, 80, L] -> corrupted log-mel."""
        torch = self.torch
        F_ = torch.nn.functional
        B, F, L = x.shape
        dev = self.dev
        x = self.warp(x, self.u(B, lo=0.85, hi=1.18))
        p = 10.0 ** x  # power
        speech_level = (p.mean(1).amax(-1) + 1e-10)  # [B] loudest frame's mean band power
        # reverberation (power-domain decaying tail)
        rev = self.u(B) < 0.4
        if rev.any():
            K = 90
            k = torch.arange(1, K + 1, device=dev, dtype=torch.float32)
            rt = self.u(B, lo=0.1, hi=0.9)
            h = torch.exp(-6.9 * k[None] * 0.01 / rt[:, None])  # [B, K]
            h = h / h.sum(1, keepdim=True) * self.u(B, lo=0.05, hi=1.0)[:, None]
            # causal convolution over time, per batch element (groups = B)
            pp = F_.pad(p.reshape(1, B * F, L), (K, 0))
            kern = torch.flip(h, [1]).repeat_interleave(F, 0)[:, None, :]  # [B*F, 1, K]
            tail = F_.conv1d(pp[..., :-1], kern, groups=B * F)[..., :L].reshape(B, F, L)
            p = torch.where(rev[:, None, None], p + tail, p)
        # noise
        noisy = self.u(B) < 0.7
        snr_db = self.u(B, lo=-5.0, hi=30.0)
        bands = torch.linspace(-1, 1, F, device=dev)
        tilt = self.u(B, 1, lo=-2.0, hi=1.0) * bands[None]
        shape = tilt + 0.3 * torch.sin(bands[None] * self.u(B, 1, lo=1, hi=6) + self.u(B, 1, lo=0, hi=6.28))
        nspec = 10.0 ** shape  # [B, F]
        fluct = torch.distributions.Gamma(torch.tensor(6.0, device=dev), torch.tensor(6.0, device=dev)).sample((B, F, L))
        noise = nspec[..., None] * fluct
        babble_mix = self.u(B) < 0.35
        if babble_mix.any():
            bab = sum(torch.roll(p, s, dims=0) * self.u(B, 1, 1, lo=0.3, hi=1.0) for s in (1, 2, 3))
            bab = bab / (bab.mean((1, 2), keepdim=True) + 1e-12) * nspec.mean(1)[:, None, None]
            noise = torch.where(babble_mix[:, None, None], bab, noise)
        noise = noise / (noise.mean((1, 2), keepdim=True) + 1e-12)
        noise = noise * (speech_level * 10.0 ** (-snr_db / 10))[:, None, None]
        p = torch.where(noisy[:, None, None], p + noise, p)
        # pure silence / noise-only crops
        void = self.u(B) < 0.1
        p = torch.where(void[:, None, None], torch.where(noisy[:, None, None], noise, torch.zeros_like(p)), p)
        # microphone colouring: EQ, tilt, band limits (log domain)
        y = torch.log10(p + 1e-12)
        eq = sum(self.u(B, 1, lo=-0.25, hi=0.25) * torch.cos(math.pi * j * (bands[None] + 1) / 2
                                                                  + self.u(B, 1, lo=0, hi=6.28)) for j in (1, 2, 3, 4))
        eq = eq + self.u(B, 1, lo=-0.5, hi=0.5) * bands[None]
        y = y + eq[..., None]
        cut_hz = torch.tensor([3400.0, 4000.0, 5500.0, 7800.0, 20000.0], device=dev)
        cut = cut_hz[torch.randint(0, 5, (B,), generator=self.g, device=dev)]
        cut = torch.where(self.u(B) < 0.4, cut, torch.full_like(cut, 20000.0))
        roll = torch.sigmoid((self.hz[None] - cut[:, None]) / 150.0) * self.u(B, 1, lo=3.0, hi=6.0)
        low = torch.where(self.u(B) < 0.2, self.u(B, lo=100, hi=350), torch.zeros(B, device=dev))
        roll = roll + torch.sigmoid((low[:, None] - self.hz[None]) / 40.0) * 2.0
        y = y - roll[..., None]
        y = y + self.u(B, 1, 1, lo=-3.0, hi=1.0)  # gain
        floor = self.u(B, 1, 1, lo=-9.5, hi=-6.0)
        keep_digital = self.u(B) < 0.05
        y = torch.where(keep_digital[:, None, None], y, torch.logaddexp(y * math.log(10), floor * math.log(10)) / math.log(10))
        self.last_void = void  # crops with no speech left: their targets become the mouth at rest
        return y.clamp(min=-10.0)


def pearson(a, b, eps=1e-6):
    a = a - a.mean(-1, keepdim=True)
    b = b - b.mean(-1, keepdim=True)
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1) + eps)


def train(corpus: Path, out: Path, steps: int, seed: int, batch: int, crop: int, lr: float, device: str | None,
          threads: int | None, minutes: float | None = None, config: dict | None = None, log=print) -> dict:
    import torch

    from .. import checkpoint  # noqa: F401 - loaded now: the file is written at the end of a long run
    from .tts_corpus import MEL_Q_LO, MEL_Q_STEP

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    data = np.load(corpus)
    off = data["offsets"]
    n_utt = len(off) - 1
    order = rng.permutation(n_utt)
    val_ids = set(order[: max(1, n_utt // 50)].tolist())
    train_ids = np.array([i for i in range(n_utt) if i not in val_ids])
    mel = torch.as_tensor(data["mel"]).to(dev)  # uint8 [N, 80]
    opening = torch.as_tensor(data["opening"].astype(np.float32)).to(dev)
    width = torch.as_tensor(data["width"].astype(np.float32)).to(dev)
    vis = torch.as_tensor(data["viseme"].astype(np.int64)).to(dev)
    N = len(opening)
    starts = torch.as_tensor(off[:-1], device=dev)
    ends = torch.as_tensor(off[1:], device=dev)
    cfg = FrontEndConfig(**(config or {})).check()
    model = build_model(cfg).to(dev)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    budget = minutes * 60 if minutes else None

    def progress(step):
        frac = step / steps
        if budget:
            frac = max(frac, (time.time() - t0) / budget)
        return min(frac, 1.0)

    def set_lr(frac):
        scale = min(1.0, frac / 0.03) * 0.5 * (1 + math.cos(math.pi * frac))
        for g in opt.param_groups:
            g["lr"] = lr * max(scale, 0.01)
    aug = Augmenter(torch, dev, seed)
    sil = VISEMES.index("sil")
    log(f"corpus {corpus}: {n_utt} utterances, {N / 6000:.1f} min; model {n_params} parameters on {dev}; "
        f"look-ahead {cfg.lookahead_s * 1000:.1f} ms")

    def batch_of(ids, stretch):
        """Crops of `crop` frames (after time stretch) from utterances `ids`, padded with silence."""
        B = len(ids)
        span = (crop * stretch).round().long().clamp_min(2)  # source frames per crop
        s, e = starts[ids], ends[ids]
        lo = s - span // 3
        hi = torch.maximum(e - 2 * span // 3, lo + 1)
        st = lo + (torch.rand(B, device=dev) * (hi - lo).float()).long()
        pos = st[:, None].float() + torch.arange(crop, device=dev)[None].float() * stretch[:, None]
        i0 = pos.floor().long()
        frac = (pos - i0)[:, None, :]
        inside = (i0 >= s[:, None]) & (i0 + 1 < e[:, None])
        i0c, i1c = i0.clamp(0, N - 1), (i0 + 1).clamp(0, N - 1)
        m0 = mel[i0c].float().permute(0, 2, 1) * MEL_Q_STEP + MEL_Q_LO
        m1 = mel[i1c].float().permute(0, 2, 1) * MEL_Q_STEP + MEL_Q_LO
        x = m0 + (m1 - m0) * frac
        x = torch.where(inside[:, None, :], x, torch.full_like(x, -10.0))
        f2 = frac[:, 0]
        o = torch.where(inside, opening[i0c] + (opening[i1c] - opening[i0c]) * f2, torch.full_like(f2, 0.005))
        w = torch.where(inside, width[i0c] + (width[i1c] - width[i0c]) * f2, torch.full_like(f2, 0.47))
        v = torch.where(inside, vis[torch.where(f2 < 0.5, i0c, i1c)], torch.full_like(i0c, sil))
        return x, o, w, v

    def loss_fn(pred, o, w, v):
        lo_ = torch.nn.functional.smooth_l1_loss(pred["opening"] * 10, o * 10, beta=0.1)
        lw = torch.nn.functional.smooth_l1_loss(pred["width"] * 10, w * 10, beta=0.1)
        lv = torch.nn.functional.cross_entropy(pred["viseme_logits"], v, label_smoothing=0.1)
        has_var = (o.std(-1) > 1e-3).float()
        lr_ = ((1 - pearson(pred["opening"], o)) * has_var).sum() / has_var.sum().clamp_min(1)
        return lo_ + 0.5 * lw + 0.2 * lv + 0.5 * lr_, {"open": lo_.item(), "corr": 1 - lr_.item(), "vis": lv.item()}

    val_list = torch.as_tensor(sorted(val_ids), device=dev)
    gval = torch.Generator(device=dev)

    def validate():
        model.eval()
        gval.manual_seed(1234)
        with torch.no_grad():
            ids = val_list[torch.randint(0, len(val_list), (64,), generator=gval, device=dev)]
            x, o, w, v = batch_of(ids, torch.ones(64, device=dev))
            res = {}
            for name, xx in (("clean", x), ("augmented", aug(x))):
                for causal in (False, True):
                    pred = model(normalise(xx, causal))
                    r = pearson(pred["opening"], o)
                    res[f"{name}_{'causal' if causal else 'offline'}_r"] = round(float(r.mean()), 4)
        model.train()
        return res

    t0 = time.time()
    hist = []
    step = 0
    while progress(step) < 1.0:
        step += 1
        set_lr(progress(step - 1))
        ids = torch.as_tensor(train_ids[rng.integers(0, len(train_ids), batch)], device=dev)
        stretch = aug.u(batch, lo=0.8, hi=1.25)
        x, o, w, v = batch_of(ids, stretch)
        with torch.no_grad():
            x = aug(x)
            void = aug.last_void[:, None]
            o = torch.where(void, torch.full_like(o, 0.005), o)
            w = torch.where(void, torch.full_like(w, 0.47), w)
            v = torch.where(void, torch.full_like(v, sil), v)
            causal = aug.u(batch) < 0.5
            xn = torch.where(causal[:, None, None], normalise(x, True), normalise(x, False))
        pred = model(xn)
        loss, parts = loss_fn(pred, o, w, v)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 200 == 0 or progress(step) >= 1.0:
            v_ = validate()
            hist.append({"step": step, "loss": round(loss.item(), 4), **parts, **v_})
            log(f"step {step}/{steps} loss {loss.item():.4f} open {parts['open']:.4f} corr {parts['corr']:.3f} "
                f"vis {parts['vis']:.3f} val {v_} ({time.time() - t0:.0f} s)")
        if step % 1000 == 0:  # an interrupted run still leaves its latest weights
            save_frontend(out, model, cfg, {"steps": step, "seed": seed, "partial": True})
    model = model.cpu()
    extra = {"corpus": Path(corpus).name, "corpus_minutes": round(N / 6000, 1), "steps": step, "seed": seed,
             "batch": batch, "crop_frames": crop, "lr": lr, "device": str(dev), "seconds": round(time.time() - t0),
             "validation": hist[-1] if hist else {}}
    save_frontend(out, model, cfg, extra)
    return {"history": hist, "sha256": sha256_file(out), **extra}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m dgtalker.audio.frontend_train", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", required=True, help="corpus .npz from `python -m dgtalker.audio.tts_corpus`")
    p.add_argument("--out", required=True, help="weights .safetensors to write")
    p.add_argument("--steps", type=int, default=6000, help="optimiser steps (default 6000)")
    p.add_argument("--batch", type=int, default=64, help="crops per step (default 64)")
    p.add_argument("--crop", type=int, default=400, help="frames per crop, 100 per second (default 400)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default 2e-3)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--device", help="cuda or cpu (default: cuda if available)")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument("--minutes", type=float, help="stop after this many minutes of training (the learning-rate "
                                                  "schedule follows whichever of steps and time runs out first)")
    p.add_argument("--config", help="JSON of FrontEndConfig fields to change, e.g. '{\"channels\": 96}'")
    p.add_argument("--log", help="also write the training history (JSON) here")
    args = p.parse_args(argv)
    res = train(Path(args.corpus), Path(args.out), args.steps, args.seed, args.batch, args.crop, args.lr, args.device,
                args.threads, args.minutes, json.loads(args.config) if args.config else None)
    return report_trained(args.out, res, args.log)


if __name__ == "__main__":
    sys.exit(main())
