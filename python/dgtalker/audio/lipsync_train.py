"""Train the heads of ``dgtalker.lipsync`` (``audio.lipsync_model``) on synthetic speech.

The corpus (``python -m dgtalker.audio.tts_corpus --keep-audio``) holds speech from
espeak-ng and flite voices and the mouth each utterance implies. Its utterances are packed
into passages of 4-30 s, with pauses between some of them (up to 1.5 s of digital silence
or of noise 35-75 dB below the speech: the mouth at rest), and a few passages are noise
alone (the mouth at rest). Speech under noise is left to the encoder, which learnt it from
real recordings (a third of the passages under noise at 5-35 dB SNR moved the best lag on
two real clips from +1 to +2 frames at the same mean correlation, docs/lipsync.md).
The speech encoder (``audio.speech_encoder``, frozen) turns every passage into features
twice, offline and causal; each head learns its mode's features -> opening, width and
viseme class (targets at 50 frames/s), on random crops, the last 5% of the passages held
out for validation. The heads read the features' 64 leading principal directions over
the training passages (``--components``), not all 512. ``--members 3`` trains three heads
per mode from seeds seed, seed + 1, seed + 2; the model gives their mean.

    python -m dgtalker.audio.tts_corpus --out corpus.npz --minutes 150 --seed 0 --flite-share 0.3 --keep-audio
    python -m dgtalker.audio.lipsync_train --corpus corpus.npz --out lipsync.safetensors --steps 1500 --members 3 --threads 2

Seeds are fixed; the result depends on the machine's floating point only. Record the
written file's SHA-256 in ``dgtalker.audio.lipsync_model.WEIGHTS_SHA256`` when shipping it.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from .frontend import OPENING_MEAN, OPENING_SCALE, VISEMES, WIDTH_MEAN, WIDTH_SCALE
from .lipsync_model import MODES, HeadConfig, build_head, principal_projection, save_lipsync
from ..io import report_trained, sha256_file
from .speech_encoder import HOP, RATE, SAMPLE_RATE, load_speech_encoder
from .tts_corpus import SIL_TARGET, corpus_phones, mouth_targets

STEP = SAMPLE_RATE // RATE  # samples per encoder frame
CAUSAL_AHEAD = [1, 1, 1, 0]
# How far the heads' mouth runs ahead of the sound. With the corpus' own 50 ms (tts_corpus)
# heads reading 64 components peaked late on the real clips (+2 frames on one); with 90 ms
# every clip's best lag is -1 or 0 (docs/lipsync.md)
LEAD_S = 0.09


def passages(corpus: dict, rng, log=print) -> list:
    """``[(samples float32, opening [T], width [T], viseme [T])]`` at ``RATE`` frames/s."""
    audio, aoff, off = corpus["audio"], corpus["audio_offsets"], corpus["offsets"]
    n_utt = len(aoff) - 1
    sil = VISEMES.index(SIL_TARGET[0])
    out, i = [], 0
    while i < n_utt:
        if rng.random() < 0.03:  # noise alone: the mouth at rest
            n = int(rng.uniform(2, 6) * SAMPLE_RATE)
            x = coloured_noise(rng, n) * 10 ** rng.uniform(-4, -1)
            T = n // STEP + 1
            out.append((x.astype(np.float32), np.full(T, SIL_TARGET[1], np.float32),
                        np.full(T, SIL_TARGET[2], np.float32), np.full(T, sil, np.int64)))
            continue
        goal = rng.uniform(4, 30) * SAMPLE_RATE
        pieces, spans, length = [], [], 0  # spans: (start sample, utterance or -1 for a pause)
        while i < n_utt and (not pieces or length + aoff[i + 1] - aoff[i] <= goal):
            speech = audio[aoff[i]:aoff[i + 1]].astype(np.float32) / 32767.0
            if pieces and rng.random() < 0.5:
                gap = int(rng.uniform(0.05, 1.5) * SAMPLE_RATE)
                rms = float(np.sqrt(np.mean(speech ** 2)) + 1e-9)
                g = np.zeros(gap, np.float32) if rng.random() < 0.4 else \
                    coloured_noise(rng, gap) * rms * 10 ** (-rng.uniform(35, 75) / 20)
                spans.append((length, -1))
                pieces.append(g)
                length += gap
            spans.append((length, i))
            pieces.append(speech)
            length += len(speech)
            i += 1
        x = np.concatenate(pieces)
        T = len(x) // STEP + 1
        smp = STEP * np.arange(T)
        starts = np.array([s for s, _ in spans] + [len(x)])
        which = np.clip(np.searchsorted(starts, smp, side="right") - 1, 0, len(spans) - 1)
        o = np.full(T, SIL_TARGET[1], np.float32)
        w = np.full(T, SIL_TARGET[2], np.float32)
        v = np.full(T, sil, np.int64)
        for u, (s0, k) in enumerate(spans):
            if k < 0:
                continue
            m = which == u
            local = np.clip(np.rint((smp[m] - s0) / HOP).astype(np.int64), 0, off[k + 1] - off[k] - 1) + off[k]
            o[m], w[m], v[m] = corpus["opening"][local], corpus["width"][local], corpus["viseme"][local]
        out.append((x.astype(np.float32), o, w, v))
        if len(out) % 100 == 0:
            log(f"{len(out)} passages, {i}/{n_utt} utterances")
    return out


def coloured_noise(rng, n: int) -> np.ndarray:
    """Unit-RMS white or brown (1/f^2) noise."""
    x = rng.standard_normal(n)
    if rng.random() < 0.5:
        x = np.cumsum(x)
        x -= np.convolve(x, np.ones(801) / 801, mode="same")  # no drift below ~20 Hz
    return (x / (np.sqrt(np.mean(x ** 2)) + 1e-12)).astype(np.float32)


def retarget(corpus: dict, phones: list, lead: float) -> None:
    """Replaces the corpus' mouth targets (``opening``, ``width``, ``viseme``) with those
    its stored phoneme timings give when the mouth leads the sound by ``lead`` seconds."""
    off, aoff = corpus["offsets"], corpus["audio_offsets"]
    parts = {"opening": [], "width": [], "viseme": []}
    for i, ph in enumerate(phones):
        n = int(off[i + 1] - off[i])
        for k, v in zip(parts, mouth_targets(ph, (aoff[i + 1] - aoff[i]) / SAMPLE_RATE, lead=lead)):
            parts[k].append(v[:n])
    corpus.update({k: np.concatenate(v) for k, v in parts.items()})


def read_speech_corpus(path) -> dict:
    """The arrays of a corpus kept with its audio (``tts_corpus --keep-audio``) that
    ``passages`` reads; SystemExit where it holds no audio."""
    with np.load(path) as z:
        if "audio" not in z.files:
            raise SystemExit(f"{path} holds no audio: build it with `python -m dgtalker.audio.tts_corpus --keep-audio`")
        return {k: z[k] for k in ("audio", "audio_offsets", "offsets", "opening", "width", "viseme")}


def head_configs(components: int, members: int) -> dict:
    """Each mode's ``HeadConfig``; raises ValueError naming a bad ``components`` or ``members``."""
    return {"offline": HeadConfig(components=components, members=members).check(),
            "causal": HeadConfig(ahead=list(CAUSAL_AHEAD), components=components, members=members).check()}


def train(corpus_path: Path, out: Path, steps: int, seed: int, batch: int = 32, crop: int = 200, lr: float = 1e-3,
          components: int = 64, lead: float | None = LEAD_S, members: int = 1, threads: int | None = None,
          log=print) -> dict:
    import torch
    import torch.nn.functional as F

    if threads:
        torch.set_num_threads(threads)
    configs = head_configs(components, members)  # a bad value fails here, before minutes of features
    rng = np.random.default_rng(seed)
    corpus = read_speech_corpus(corpus_path)
    if lead is not None:
        with np.load(corpus_path) as z:
            if "phones" not in z.files:
                raise SystemExit(f"{corpus_path} keeps no phoneme timings to place the mouth {lead * 1000:g} ms "
                                 f"ahead of the sound: build it with this version's tts_corpus")
            retarget(corpus, corpus_phones(z), lead)
    t0 = time.time()
    ps = passages(corpus, rng, log)
    enc = load_speech_encoder()
    feats = {m: [] for m in MODES}
    for n, (x, o, _, _) in enumerate(ps):
        for m in MODES:
            # float32, as the shipped heads were trained (running, the encoder may use bfloat16)
            f = enc(x, causal=m == "causal", precision="float32").numpy().astype(np.float16)
            feats[m].append(f[:len(o)])
        if n % 100 == 0:
            log(f"features of {n}/{len(ps)} passages ({time.time() - t0:.0f} s)")
    lengths = np.array([len(f) for f in feats["offline"]])
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    held = max(1, len(ps) // 20)
    train_end = int(bounds[-1 - held])
    if train_end <= crop:
        raise SystemExit(f"{corpus_path} is too small: {len(ps)} passages, {train_end} training frames for crops of "
                         f"{crop}")
    Y = {"opening": np.concatenate([p[1][:n] for p, n in zip(ps, lengths)]),
         "width": np.concatenate([p[2][:n] for p, n in zip(ps, lengths)]),
         "viseme": np.concatenate([p[3][:n] for p, n in zip(ps, lengths)])}
    heads, record = {}, {}
    for m in MODES:
        X = np.concatenate(feats[m])
        sample = X[:train_end:7] if train_end >= 14 * components else X[:train_end]
        if len(sample) <= components:
            raise SystemExit(f"{corpus_path} is too small: {train_end} training frames for {components} components")
        sample = sample.astype(np.float32)
        mean, std = sample.mean(0), sample.std(0) + 1e-3
        projection = principal_projection((sample - mean) / std, components) if components else None
        val_idx = np.arange(train_end, len(X))
        x_val = torch.from_numpy(X[val_idx].astype(np.float32))[None]

        def validate(head):
            head.eval()
            with torch.no_grad():
                pred = head(x_val)["opening"][0].numpy()
            head.train()
            return round(float(np.corrcoef(pred, Y["opening"][val_idx])[0, 1]), 4)

        torch.manual_seed(seed)  # the members' initial weights (torch's own generator is seeded at random)
        heads[m] = build_head(configs[m], enc.config.width)
        singles = list(heads[m].members) if members > 1 else [heads[m]]
        record[m] = {}
        for i, head in enumerate(singles):
            torch.manual_seed(seed + i)
            head.feature_mean.copy_(torch.from_numpy(mean))
            head.feature_std.copy_(torch.from_numpy(std))
            if projection is not None:
                head.projection.copy_(torch.from_numpy(projection))
            opt = torch.optim.AdamW(head.parameters(), lr, weight_decay=1e-2)
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.05)
            what = f"{m} head" + (f" {i + 1}/{members}" if members > 1 else "")
            for step in range(steps):
                s = rng.integers(0, train_end - crop, batch)[:, None] + np.arange(crop)
                x = torch.from_numpy(X[s].astype(np.float32))
                y = head(x, dropout=0.1)
                o = (torch.from_numpy(Y["opening"][s]) - OPENING_MEAN) / OPENING_SCALE
                w = (torch.from_numpy(Y["width"][s]) - WIDTH_MEAN) / WIDTH_SCALE
                loss = F.mse_loss((y["opening"] - OPENING_MEAN) / OPENING_SCALE, o) \
                    + F.mse_loss((y["width"] - WIDTH_MEAN) / WIDTH_SCALE, w) \
                    + 0.2 * F.cross_entropy(y["viseme_logits"], torch.from_numpy(Y["viseme"][s]), label_smoothing=0.1)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
                opt.step()
                sched.step()
                if step % 500 == 0 or step == steps - 1:
                    val_r = validate(head)
                    log(f"{what}: step {step}/{steps} loss {loss.item():.4f} validation r {val_r} "
                        f"({time.time() - t0:.0f} s)")
            key = f"member{i}_" if members > 1 else ""
            record[m].update({f"{key}validation_r": val_r, f"{key}final_loss": round(loss.item(), 4)})  # last step's
        if members > 1:
            record[m]["validation_r"] = validate(heads[m])
            log(f"{m} heads: the {members} members' mean, validation r {record[m]['validation_r']}")
        heads[m].eval()
    extra = {"corpus": Path(corpus_path).name, "corpus_minutes": round(len(corpus["audio"]) / SAMPLE_RATE / 60, 1),
             "passages": len(ps), "steps": steps, "seed": seed, "batch": batch, "crop_frames": crop, "lr": lr,
             "components": components, "lead_s": lead, "members": members,
             "seconds": round(time.time() - t0), "speech_encoder_sha256": sha256_file(enc.path), **record}
    save_lipsync(out, heads, configs, extra)
    return {"sha256": sha256_file(out), **extra}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m dgtalker.audio.lipsync_train", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", required=True, help="corpus .npz from `python -m dgtalker.audio.tts_corpus --keep-audio`")
    p.add_argument("--out", required=True, help="weights .safetensors to write")
    p.add_argument("--steps", type=int, default=1500, help="optimiser steps per head (default 1500)")
    p.add_argument("--batch", type=int, default=32, help="crops per step (default 32)")
    p.add_argument("--crop", type=int, default=200, help="frames per crop, 50 per second (default 200)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    p.add_argument("--components", type=int, default=64,
                   help="leading principal directions of the features the heads read (0: all; default 64)")
    p.add_argument("--lead", type=float, default=LEAD_S,
                   help=f"seconds the mouth targets run ahead of the sound, recomputed from the corpus' phoneme "
                        f"timings (default {LEAD_S})")
    p.add_argument("--members", type=int, default=1,
                   help="heads per mode, each trained with its own seed (seed, seed + 1, ...); the model gives "
                        "their mean (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument("--log", help="also write the training record (JSON) here")
    a = p.parse_args(argv)
    try:
        head_configs(a.components, a.members)
    except ValueError as exc:
        p.error(f"--{exc}")
    res = train(Path(a.corpus), Path(a.out), a.steps, a.seed, a.batch, a.crop, a.lr, a.components, a.lead, a.members,
                a.threads)
    return report_trained(a.out, res, a.log)


if __name__ == "__main__":
    sys.exit(main())
