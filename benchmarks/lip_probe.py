"""Can a talker's audio encoder predict a real person's mouth from their own clip?

The lip path of a talker is audio encoder -> c_lip -> B_lip -> pixels. This probe
isolates the first link on a real clip (no rendering, CPU, minutes): the talker's audio
encoder architecture is trained ONLY to regress the tracked mouth (opening and width,
standardised: ``train.clip.mouth_targets``, what ``--lip-target`` pins) on the clip's
training frames, and scored on its held-out frames. Three inputs are compared:

- ``logmel``: the log-mel windows alone (talkers before the speech front end);
- ``frontend``: the log-mel plus the speech front end's channels (the shipped one, or
  ``--frontend WEIGHTS``);
- ``frontend_norm``: the same with the log-mel normalised as the front end reads it (each
  band's speech mean removed: ``TalkerConfig.normalised_mel``);
- ``frontend_raw``: the front end's own mouth opening, untrained on the person;
- ``frontend_adapted`` (``--adapt-steps N``): that opening after fitting the front end's
  output layers (its last norm, embedding and head) to the person's standardised
  tracked opening on the training frames, scored every N/4 steps (adapting the front
  end to the person, as a training run could).

Reported per input: Pearson correlation of the predicted and tracked opening on the
training and held-out frames (fit or generalisation?), the best lag within +-5 frames,
and the motion ratio (spread of the prediction over the truth's, in the standardised unit).
With ``--voices``, each trained encoder also reads voices it never heard (audio files, or
``tts:LANG:TEXT`` for espeak-ng) at every curve point and at the end: the spread of its
opening there over the tracked opening's on the training frames (1: moves as much as the
person does), its mean there minus the truth's training mean (in the truth's spread), and
its correlation with ``dgtalker.lipsync``'s opening of the same speech. This is where an
encoder that specialises to the one voice shows it: the clip's own held-out frames do not.

    python benchmarks/lip_probe.py data/me --steps 1500 --out lip_probe_me.json

Keep its JSON out of the repository when DATA is footage the project may not ship.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from dgtalker.eval.metrics import best_lag, pearson


def adapt_frontend(fe, mel, N, fps, target, train, held, steps, lr):
    """Fits the front end's output layers to the standardised tracked opening of the
    training frames (whole-clip normalisation); held-out correlation every steps/4."""
    import copy

    from dgtalker.audio.frontend import at_frames, frame_positions, normalise

    model = copy.deepcopy(fe.model).train()
    x = normalise(torch.as_tensor(np.ascontiguousarray(mel.T))[None], False)
    pos = frame_positions(N, fps)
    t = target.double()
    tr = torch.from_numpy(np.asarray(train))
    tr = tr[torch.isfinite(t[tr])]
    params = [p for n, p in model.named_parameters() if n.startswith(("head", "embed", "norm"))]
    opt = torch.optim.Adam(params, lr=lr)
    out = []
    for s in range(steps):
        o = at_frames(model(x)["opening"][0], pos).double()
        z = (o[tr] - o[tr].mean()) / o[tr].std()
        loss = (z - t[tr]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (s + 1) % max(1, steps // 4) == 0:
            with torch.no_grad():
                o = at_frames(model(x)["opening"][0], pos).numpy()
            tn = t.numpy()
            out.append({"step": s + 1, "train_corr": pearson(o[tr.numpy()], tn[tr.numpy()]),
                        "heldout_corr": pearson(o[held], tn[held])})
    return out


def augmented_coefficients(enc, windows, frames, N, a, g):
    """``speech_coefficients`` of a training batch with its input windows augmented
    (a masked band of channels, a masked stretch of time, noise; the mask sets the
    normalised input to 0, the mean) and its frame embeddings dropped out."""
    nb = enc.neighbours(frames, N)
    uniq, inv = torch.unique(nb, return_inverse=True)
    x = windows[uniq].clone()  # [U, 2h+1, C]
    U, L, C = x.shape
    mean, std = enc.mel_mean.reshape(1, 1, -1), enc.mel_std.reshape(1, 1, -1)
    keep = torch.ones_like(x, dtype=torch.bool)
    if a.mask_bands:
        w = torch.randint(0, a.mask_bands + 1, (U, 1, 1), generator=g)
        lo = (torch.rand(U, 1, 1, generator=g) * (C - w + 1)).long()
        c = torch.arange(C).reshape(1, 1, C)
        keep &= ~((c >= lo) & (c < lo + w))
    if a.mask_time:
        w = torch.randint(0, a.mask_time + 1, (U, 1, 1), generator=g)
        lo = (torch.rand(U, 1, 1, generator=g) * (L - w + 1)).long()
        t = torch.arange(L).reshape(1, L, 1)
        keep &= ~((t >= lo) & (t < lo + w))
    x = torch.where(keep, x, mean.expand_as(x))
    if a.noise > 0:
        x = x + a.noise * std * torch.randn(x.shape, generator=g)
    emb = enc.frame_embedding(x)
    if a.embed_dropout > 0:
        emb = torch.nn.functional.dropout(emb, a.embed_dropout, training=True)
    picked = torch.index_select(emb, 0, inv.flatten()).reshape(*inv.shape, emb.shape[-1])
    return enc.from_embeddings(picked)


def load_voices(specs, fps):
    """{voice: (log-mel [M, 80], lipsync opening [T] at fps)} of audio files or tts:LANG:TEXT."""
    import subprocess
    import tempfile

    import dgtalker
    from dgtalker import audio as A

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for spec in specs:
            path = spec
            if spec.startswith("tts:"):
                _, lang, text = spec.split(":", 2)
                path = str(Path(tmp) / f"tts_{lang}.wav")
                subprocess.run(["espeak-ng", "-v", lang, "-w", path, text], check=True)
            x, _ = A.load(path)
            name = f"tts_{spec.split(':')[1]}" if spec.startswith("tts:") else Path(spec).stem
            out[name] = (A.log_mel(x), dgtalker.lipsync((x, A.SAMPLE_RATE), fps=fps).opening)
    return out


@torch.no_grad()
def read_voices(enc, voice_windows, tracked_train):
    """The encoder's opening on each unseen voice: spread and mean shift against the
    tracked training opening, correlation with lipsync's opening (module docstring)."""
    out = {}
    sd, mu = float(np.nanstd(tracked_train)), float(np.nanmean(tracked_train))
    was = enc.training
    enc.eval()
    for v, (win, op) in voice_windows.items():
        _, cl = speech_coefficients_all(enc, win)
        p = cl[:, 0].numpy()
        out[f"voice_{v}"] = {"motion_ratio": round(float(p.std() / sd), 4), "mean_shift": round(float((p.mean() - mu) / sd), 4),
                             "corr_lipsync": round(float(pearson(p, op)), 4)}
    enc.train(was)
    return out


def speech_coefficients_all(enc, win):
    from dgtalker.train.sampler import speech_coefficients

    return speech_coefficients(enc, win, torch.arange(len(win)), len(win))


def augmented_clip_windows(T, mel, N, fps, copies, seed):
    """``copies`` versions of the clip's feature windows, each read from its log-mel
    through the front end's training corruptions (``frontend_train.Augmenter``: another
    vocal tract, microphone, room and noise per copy; copies it turned into noise alone are
    drawn again), stacked [copies, N, 2h+1, C]."""
    from dgtalker.audio.frontend_train import Augmenter

    aug = Augmenter(torch, torch.device("cpu"), seed)
    out = []
    while len(out) < copies:
        with torch.no_grad():
            m = aug(torch.as_tensor(np.ascontiguousarray(mel.T), dtype=torch.float32)[None])[0].T.numpy()
        if not bool(aug.last_void[0]):
            out.append(T.clip_windows(np.ascontiguousarray(m), N, fps))
    return torch.stack(out)


def train_lip_encoder(enc, win, pool, target, ok, held, tracked, voice_windows, train, N, a, seed, name):
    """Trains ``enc`` on the lip target alone (``a.steps`` batches of ``pool`` frames drawn
    with ``seed``); returns the last loss and the curve (``--curve-every``)."""
    from dgtalker.train.losses import concordance
    from dgtalker.train.sampler import speech_coefficients

    opt = (torch.optim.AdamW(enc.parameters(), lr=5e-4, weight_decay=a.weight_decay) if a.weight_decay > 0
           else torch.optim.Adam(enc.parameters(), lr=5e-4))
    g = torch.Generator().manual_seed(seed)
    enc.train()
    curve = []
    augmenting = a.mask_bands or a.mask_time or a.noise > 0 or a.embed_dropout > 0
    for step in range(a.steps):
        f = pool[torch.randint(0, len(pool), (a.batch,), generator=g)]
        if a.audio_augment and torch.rand((), generator=g) < a.augment_share:
            # one augmented copy of the clip per step: its windows at the batch's frames
            k = int(torch.randint(0, a.aug_windows.shape[0], (), generator=g))
            _, cl = speech_coefficients(enc, a.aug_windows[k], f, N)
        elif augmenting:
            _, cl = augmented_coefficients(enc, win, f, N, a, g)
        else:
            _, cl = speech_coefficients(enc, win, f, N)
        loss = (cl[:, :2] - target[f]).pow(2).mean()
        if a.concordance > 0:
            loss = loss + a.concordance * (1 - concordance(cl[:, :2], target[f], ok[f])).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if a.curve_every and (step + 1) % a.curve_every == 0:
            with torch.no_grad():
                _, cl = speech_coefficients(enc, win, torch.from_numpy(held), N)
            p = cl[:, 0].numpy()
            curve.append({"step": step + 1, "heldout_corr": pearson(p, tracked[held]),
                          "heldout_motion_ratio": float(np.nanstd(p) / np.nanstd(tracked[held])),
                          **read_voices(enc, voice_windows, tracked[train])})
            print(name, seed, json.dumps(curve[-1]), flush=True)
    enc.eval()
    return loss, curve


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", help="a talking-clip dataset with tracked mouths (dgtalker preprocess)")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--inputs", default="logmel,frontend", help="which encoder inputs to train (default both)")
    ap.add_argument("--encoder", default=None,
                    help="JSON of AudioEncoderConfig fields to change, e.g. '{\"past\": 6, \"future\": 6}'")
    ap.add_argument("--concordance", type=float, default=0.0,
                    help="weight of 1 - CCC beside the squared error (training's --lip-concordance)")
    ap.add_argument("--curve-every", type=int, default=0,
                    help="also score the held-out frames every this many steps (does longer training overfit?)")
    ap.add_argument("--adapt-steps", type=int, default=0, help="also adapt the front end's output layers this long")
    ap.add_argument("--adapt-lr", type=float, default=3e-4)
    ap.add_argument("--holdback", type=float, default=0.0,
                    help="leave training's held-back lip blocks (train.sampler.lip_holdback) out of the encoders' "
                         "training frames too")
    ap.add_argument("--adapt-frontend", type=int, default=0, metavar="STEPS",
                    help="the 'frontend' encoder reads a front end adapted to the person as training's "
                         "--adapt-frontend does (stop on the held-back blocks; needs --holdback)")
    ap.add_argument("--mask-bands", type=int, default=0, metavar="W",
                    help="augment: per training window, one random band of up to W input channels set to its mean")
    ap.add_argument("--mask-time", type=int, default=0, metavar="W",
                    help="augment: per training window, one random stretch of up to W mel frames set to the mean")
    ap.add_argument("--noise", type=float, default=0.0,
                    help="augment: Gaussian noise of this many standard deviations on the normalised input")
    ap.add_argument("--embed-dropout", type=float, default=0.0, help="dropout on the frame embeddings while training")
    ap.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (0: Adam)")
    ap.add_argument("--audio-augment", type=int, default=0, metavar="K",
                    help="augment: K copies of the clip's audio through the front end's corruptions (other vocal "
                         "tracts, microphones, rooms, noise); a step draws one with --augment-share")
    ap.add_argument("--augment-share", type=float, default=0.5, help="share of steps reading an augmented copy")
    ap.add_argument("--voices", nargs="*", default=[], metavar="VOICE",
                    help="unseen voices to read at every curve point: audio files or tts:LANG:TEXT (espeak-ng)")
    ap.add_argument("--ensemble", type=int, default=1, metavar="K",
                    help="train K encoders per input (seeds SEED..SEED+K-1) and score the mean of their openings "
                         "(each member's held-out figures too)")
    ap.add_argument("--save-openings", metavar="NPZ",
                    help="also write the predicted and tracked openings of every frame (NPZ, _INPUT appended)")
    ap.add_argument("--frontend", metavar="WEIGHTS",
                    help="another speech front end's weights (default: the shipped one), e.g. a candidate from "
                         "benchmarks/train_frontend_gpu.sh")
    ap.add_argument("--out", help="JSON to write")
    a = ap.parse_args(argv)
    torch.manual_seed(a.seed)
    torch.set_num_threads(2)

    from dgtalker import audio as A
    from dgtalker.audio.frontend import load_frontend
    from dgtalker.io import sha256_file
    from dgtalker.data import load
    from dgtalker.prior import load_prior
    from dgtalker.talker import Talker, TalkerConfig
    from dgtalker.train.clip import mouth_targets
    from dgtalker.train.adapt import adapt_frontend as adapt
    from dgtalker.train.sampler import lip_holdback
    from dgtalker.train.sampler import speech_coefficients

    ds = load(a.data)
    train, held = ds.splits["train"], ds.splits["heldout"]
    target = torch.from_numpy(mouth_targets(ds, train))
    keep = np.ones(len(train), bool)
    keep[lip_holdback(len(train), a.holdback, float(ds.fps))] = False
    if a.adapt_frontend > 0 and keep.all():
        ap.error("--adapt-frontend stops on the held-back blocks: pass --holdback too")
    samples, rate = ds.audio
    mel = A.log_mel(A.resample(A.to_mono(samples), int(rate), A.SAMPLE_RATE))
    fe = load_frontend(a.frontend)
    G = load_prior()
    N = len(ds)
    res = {"data": str(ds.root), "frames": N, "train": int(len(train)), "heldout": int(len(held)),
           "steps": a.steps, "batch": a.batch, "seed": a.seed, "ensemble": a.ensemble, "fps": float(ds.fps),
           "frontend_sha256": sha256_file(fe.path), "encoder": a.encoder, "concordance": a.concordance,
           "holdback_frames": int((~keep).sum()),
           "augment": {"mask_bands": a.mask_bands, "mask_time": a.mask_time, "noise": a.noise,
                       "embed_dropout": a.embed_dropout, "weight_decay": a.weight_decay,
                       "audio_augment": a.audio_augment, "augment_share": a.augment_share}}
    # the front end's own opening, untrained on the person
    raw = fe(mel, float(ds.fps), N)["opening"]
    tracked = target[:, 0].numpy()
    res["frontend_raw"] = {"train_corr": pearson(raw[train], tracked[train]),
                           "heldout_corr": pearson(raw[held], tracked[held]),
                           "heldout_best_lag": best_lag(tracked[held], raw[held])}
    if a.adapt_steps > 0:
        res["frontend_adapted"] = adapt_frontend(fe, mel, N, float(ds.fps), target[:, 0], train, held, a.adapt_steps,
                                                 a.adapt_lr)
        print("frontend_adapted", json.dumps(res["frontend_adapted"]), flush=True)
        fe = load_frontend(a.frontend)  # the encoders below read the front end as it was
    voices = load_voices(a.voices, float(ds.fps))
    for name, use_fe, normed in (("logmel", False, False), ("frontend", True, False), ("frontend_norm", True, True)):
        if name not in a.inputs.split(","):
            continue
        cfg = TalkerConfig(k_exp=2, k_lip=2, fps=float(ds.fps), frontend=asdict(fe.config) if use_fe else None,
                           encoder=json.loads(a.encoder) if a.encoder else None, normalised_mel=normed)
        T = Talker(G, cfg, seed=a.seed, residual_frames=N)
        if use_fe:
            T.frontend.load_state_dict(fe.model.state_dict())
            if a.adapt_frontend > 0:
                res["adapt_frontend"] = adapt(T.frontend, mel, float(ds.fps), N, target, torch.from_numpy(train[keep]),
                                              torch.from_numpy(train[~keep]), steps=a.adapt_frontend)
                print("adapt_frontend", json.dumps(res["adapt_frontend"]), flush=True)
        feats, start = T.speech_features(mel)
        speech_feats = torch.from_numpy(feats[-start:len(feats) + start] if start else feats)
        T.encoder.set_normalization(speech_feats)
        win = T.clip_windows(mel, N, float(ds.fps))
        if a.audio_augment:
            a.aug_windows = augmented_clip_windows(T, mel, N, float(ds.fps), a.audio_augment, a.seed)
        voice_windows = {v: (T.clip_windows(vm, len(op), float(ds.fps)), op) for v, (vm, op) in voices.items()}
        ok = torch.isfinite(target).all(1)
        pool = torch.from_numpy(train[keep])[ok[torch.from_numpy(train[keep])]]
        t0 = time.perf_counter()
        members, preds = [], []
        for k in range(a.ensemble):
            # member k: the same encoder, its own initialisation and batches (seed + k)
            enc = T.encoder if k == 0 else Talker(G, cfg, seed=a.seed + k, residual_frames=N).encoder
            enc.set_normalization(speech_feats)
            loss, curve = train_lip_encoder(enc, win, pool, target, ok, held, tracked, voice_windows, train, N, a,
                                            a.seed + k, name)
            with torch.no_grad():
                _, cl = speech_coefficients(enc, win, torch.arange(N), N)
            preds.append(cl[:, 0].numpy())
            members.append({"seed": a.seed + k, "heldout_corr": pearson(preds[-1][held], tracked[held]),
                            "heldout_motion_ratio": float(np.nanstd(preds[-1][held]) / np.nanstd(tracked[held]))})
        p = np.mean(preds, 0)  # the ensemble's opening: its members' mean
        if a.save_openings:
            np.savez(a.save_openings.replace(".npz", f"_{name}.npz"), predicted=p, tracked=tracked, train=train,
                     held=held, pool=pool.numpy())
        res[name] = {"train_corr": pearson(p[train], tracked[train]), "heldout_corr": pearson(p[held], tracked[held]),
                     "heldout_best_lag": best_lag(tracked[held], p[held]),
                     "heldout_motion_ratio": float(np.nanstd(p[held]) / np.nanstd(tracked[held])),
                     "final_loss": float(loss.detach()), "seconds": round(time.perf_counter() - t0, 1),
                     **(read_voices(enc, voice_windows, tracked[train]) if a.ensemble == 1 else {}),
                     **({"members": members} if a.ensemble > 1 else {}),
                     **({"curve": curve} if curve else {})}
        print(name, json.dumps(res[name]), flush=True)
    print(json.dumps(res, indent=1))
    if a.out:
        from dgtalker.io import atomic_write_json

        atomic_write_json(Path(a.out), res)


if __name__ == "__main__":
    main()
