"""dgtalker.lipsync against the mouth tracked in real video (measurement only).

For each clip with sound in FOOTAGE (default ../shared/footage): mediapipe's face mesh
(0.10.14, refine_landmarks, video mode) tracks every frame; the tracked opening is the
inner-lip gap (points 13/14) over the outer eye-corner distance (33/263), the unit of
``dgtalker.lipsync``. The lip-sync model runs on the clip's sound track at the clip's fps.
Reported per clip: the Pearson correlation of tracked and predicted opening at lags
-5..5 frames (lag k compares tracked frame i with predicted frame i + k: a positive
best lag means the prediction runs late), the best lag, r at 0 and +-1, the same for
log loudness (the mean log-mel of the frame, the baseline), std of both curves, and
the model's speed (x real time, CPU, 2 torch threads, log-mel included, best of 3).

Nothing is fitted to these clips; they are never used for training. Two optional
measurements say what limits the lip-sync model on them:

* ``--readout``: a ridge regression from the model's per-frame outputs (opening,
  width, the 12 viseme probabilities) to the tracked opening, fitted on the other clips
  and scored on the one left out: how much of the real mouth those outputs carry, beyond
  what the model's own opening makes of them. Fitted on footage: a measurement only;
  nothing of it is kept or shipped.
* ``--phones``: the phones pocketsphinx recognises (``allphone`` search with its
  en-us acoustic model, trained on real speech; ``pip install pocketsphinx``) turned
  into an opening by the training corpus's own dominance model
  (``dgtalker.audio.tts_corpus.mouth_targets``): a recogniser of real speech in place
  of the model's network.
* ``--likelihoods``: pocketsphinx's per-frame acoustic scores instead of its decoded
  phones: every senone's score (all 5,126, logged by the decoder), the best of each of
  its 42 base phones, a softmax at temperature 3 -> phone posteriors [T, 42]. Scored as
  the expected opening of those posteriors under the corpus's phone openings (nothing
  fitted), and, with ``--readout``, as readouts of the posteriors alone, of the front
  end's outputs and the posteriors together, and of both with +-2 frames of context
  (beside the model's outputs with the same context): whether a real-speech acoustic
  model adds what the lip-sync model misses.

    python benchmarks/lipsync_real.py [--footage DIR] [--out lipsync_real.json] [--readout] [--phones]
                                      [--likelihoods]
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import numpy as np

CLIPS = ["macron_fr_50s", "german_news_20s", "senate_en_8s_a", "senate_en_8s_b", "interview_en_8s"]
LAGS = range(-5, 6)


def track_opening(video: Path):
    """(fps, tracked opening [T] with NaN where no face) of a video."""
    import av
    import mediapipe as mp

    mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=False, max_num_faces=1, refine_landmarks=True,
                                           min_detection_confidence=0.5, min_tracking_confidence=0.5)
    out = []
    with av.open(str(video)) as c:
        stream = c.streams.video[0]
        fps = float(stream.average_rate)
        for frame in c.decode(stream):
            img = frame.to_ndarray(format="rgb24")
            res = mesh.process(img)
            if not res.multi_face_landmarks:
                out.append(np.nan)
                continue
            H, W = img.shape[:2]
            lm = res.multi_face_landmarks[0].landmark
            p = lambda i: np.array([lm[i].x * W, lm[i].y * H])  # noqa: E731
            out.append(np.linalg.norm(p(13) - p(14)) / np.linalg.norm(p(33) - p(263)))
    mesh.close()
    return fps, np.array(out, np.float64)


def corr_at(track, pred, lag):
    """Pearson r of track[i] and pred[i + lag] over the frames where both exist."""
    n = min(len(track), len(pred))
    t, p = track[:n], pred[:n]
    if lag > 0:
        t, p = t[:-lag], p[lag:]
    elif lag < 0:
        t, p = t[-lag:], p[:lag]
    ok = np.isfinite(t) & np.isfinite(p)
    if ok.sum() < 10:
        return float("nan")
    return float(np.corrcoef(t[ok], p[ok])[0, 1])


def lag_table(track, pred):
    rs = {lag: corr_at(track, pred, lag) for lag in LAGS}
    best = max(rs, key=lambda k: -np.inf if not np.isfinite(rs[k]) else rs[k])
    return {"best_r": round(rs[best], 4), "best_lag": best, "r_lag0": round(rs[0], 4),
            "r_lag-1": round(rs[-1], 4), "r_lag+1": round(rs[1], 4),
            "by_lag": {str(k): round(v, 4) for k, v in rs.items()}}


READOUT_RIDGE = 300.0  # on standardised outputs, ~2,500 frames of four clips


def readout_table(tracks: dict, outputs: dict) -> dict:
    """Leave-one-clip-out ridge readout: for each clip, r (``lag_table``) of the tracked
    opening against the outputs [T, C] mapped by a linear readout fitted on the other clips."""
    result = {}
    for held in tracks:
        X = np.concatenate([outputs[c][np.isfinite(tracks[c])] for c in tracks if c != held])
        y = np.concatenate([tracks[c][np.isfinite(tracks[c])] for c in tracks if c != held])
        mu, sd = X.mean(0), X.std(0) + 1e-6
        Xn = (X - mu) / sd
        w = np.linalg.solve(Xn.T @ Xn + READOUT_RIDGE * np.eye(X.shape[1]), Xn.T @ (y - y.mean()))
        result[held] = lag_table(tracks[held], ((outputs[held] - mu) / sd) @ w)
    return result


def phone_opening(samples: np.ndarray, fps: float, num_frames: int, language_weight: float):
    """(opening [num_frames] from pocketsphinx's phones of 16 kHz ``samples``, seconds taken)."""
    import os

    from pocketsphinx import Decoder, get_model_path

    from dgtalker.audio.tts_corpus import _ARPABET, mouth_targets

    t0 = time.perf_counter()
    decoder = Decoder(allphone=os.path.join(get_model_path(), "en-us", "en-us-phone.lm.bin"), lm=None,
                      lw=language_weight, beam=1e-20, pbeam=1e-20, logfn=os.devnull)
    pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)
    decoder.start_utt()
    decoder.process_raw(pcm.tobytes(), full_utt=True)
    decoder.end_utt()
    phones = [(s.start_frame / 100, (s.end_frame + 1) / 100, _ARPABET.get(s.word.lower(), "h"))
              for s in decoder.seg() if s.word.lower() in _ARPABET]  # silence and noise units are pauses
    opening, _, _ = mouth_targets(phones, len(samples) / 16000)
    took = time.perf_counter() - t0
    return np.interp(np.arange(num_frames) / fps, np.arange(len(opening)) / 100, opening), took


@functools.lru_cache(maxsize=1)
def _pocketsphinx_phones():
    """(base phone names [42], base phone of each senone [n_sen]) of pocketsphinx's en-us
    model, read from its binary model definition (bin_mdef: header, CI phone names, CD
    tree, phones with their senone sequence and, for a CD phone, its base phone)."""
    import os
    import struct

    from pocketsphinx import get_model_path

    b = open(os.path.join(get_model_path(), "en-us", "en-us", "mdef"), "rb").read()
    o = 12 + struct.unpack("<i", b[8:12])[0]  # byte-order marker, version, format text
    n_ci, n_phone, n_emit, _, n_sen, _, n_sseq, _, n_cd_tree, _ = struct.unpack("<10i", b[o:o + 40])
    o += 40
    names = []
    for _ in range(n_ci):
        end = b.index(b"\0", o)
        names.append(b[o:end].decode())
        o = end + 1
    o = ((o + 3) & ~3) + 8 * n_cd_tree
    phones = np.frombuffer(b, np.dtype([("ssid", "<i4"), ("tmat", "<i4"), ("info", "u1", 4)]), n_phone, o)
    o += 12 * n_phone + 4
    sseq = np.frombuffer(b, "<u2", n_sseq * n_emit, o).reshape(n_sseq, n_emit)
    base = np.where(np.arange(n_phone) < n_ci, np.arange(n_phone), phones["info"][:, 1])
    sen_phone = np.full(n_sen, -1)
    for p in range(n_phone):
        sen_phone[sseq[phones["ssid"][p]]] = base[p]
    assert (sen_phone >= 0).all()
    return names, sen_phone


def phone_posteriors(samples: np.ndarray, fps: float, num_frames: int, temperature: float = 3.0):
    """(phone posteriors [num_frames, 42], phone names, seconds taken) from pocketsphinx's
    senone scores of 16 kHz ``samples`` (module docstring, ``--likelihoods``)."""
    import os
    import tempfile

    from pocketsphinx import Decoder, get_model_path

    names, sen_phone = _pocketsphinx_phones()
    pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as logdir:
        decoder = Decoder(allphone=os.path.join(get_model_path(), "en-us", "en-us-phone.lm.bin"), lm=None,
                          beam=1e-20, pbeam=1e-20, logfn=os.devnull, senlogdir=logdir, compallsen=True)
        decoder.start_utt()
        decoder.process_raw(pcm.tobytes(), full_utt=True)
        decoder.end_utt()
        log = open(next(Path(logdir).glob("*.sen")), "rb").read()
    # a text header, a byte-order marker, then per frame: the senone count and each
    # senone's score (negated log-likelihood relative to the frame's best, in units of
    # 1024 steps of log base 1.0001)
    scores = np.frombuffer(log, "<i2", offset=log.index(b"endhdr\n") + 11).reshape(-1, len(sen_phone) + 1)[:, 1:]
    loglik = -scores.astype(np.float32) * (1024 * np.log(1.0001))
    per_phone = np.stack([loglik[:, sen_phone == k].max(1) for k in range(len(names))], 1) / temperature
    post = np.exp(per_phone - per_phone.max(1, keepdims=True))
    post /= post.sum(1, keepdims=True)
    took = time.perf_counter() - t0
    t = np.arange(num_frames) / fps
    centres = (np.arange(len(post)) + 0.5) / 100
    return np.stack([np.interp(t, centres, post[:, k]) for k in range(len(names))], 1), names, took


def expected_opening(post: np.ndarray, names: list, fps: float) -> np.ndarray:
    """The opening the corpus's phone targets give the posteriors on average, with the
    corpus's 50 ms anticipation (nothing fitted)."""
    from dgtalker.audio.tts_corpus import _ARPABET, ANTICIPATION_S, SIL_TARGET, phone_units

    opening = np.array([np.mean([u[1] for u in phone_units(_ARPABET[n.lower()])]) if _ARPABET.get(n.lower())
                        else SIL_TARGET[1] for n in names])
    e = post @ opening
    t = np.arange(len(e)) / fps
    return np.interp(t + ANTICIPATION_S, t, e)


def with_context(x: np.ndarray, k: int = 2) -> np.ndarray:
    """[T, C] -> [T, (2k + 1) C]: each frame beside its k neighbours on both sides (edges repeated)."""
    pad = np.pad(x, ((k, k), (0, 0)), mode="edge")
    return np.concatenate([pad[s:s + len(x)] for s in range(2 * k + 1)], 1)


def main(argv=None) -> int:
    here = Path(__file__).resolve().parent
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--footage", default=str(here.parent.parent / "shared" / "footage"))
    p.add_argument("--out", default="lipsync_real.json",
                   help="JSON to write (keep it out of the repository: it is measured on footage the project may not ship)")
    p.add_argument("--cache", default="/tmp/lipsync_real_tracks.json",
                   help="tracked curves are kept here between runs (the face mesh is the slow part)")
    p.add_argument("--weights", help="lip-sync model weights (default: the shipped ones)")
    p.add_argument("--readout", action="store_true",
                   help="also score a linear readout of the model's outputs fitted on the other clips "
                        "(leave one clip out; a measurement of what they carry, never shipped)")
    p.add_argument("--phones", action="store_true",
                   help="also score the opening of pocketsphinx's recognised phones (needs pocketsphinx)")
    p.add_argument("--phones-lw", type=float, default=1.0,
                   help="pocketsphinx's language weight for --phones (default 1.0)")
    p.add_argument("--likelihoods", action="store_true",
                   help="also score pocketsphinx's per-frame phone posteriors (needs pocketsphinx; "
                        "with --readout, their readouts beside the model's)")
    p.add_argument("--precision", choices=("auto", "float32", "bfloat16"), default="auto",
                   help="the speech encoder's precision (default auto: bfloat16 where the CPU computes it natively)")
    p.add_argument("--encoder", help="another speech encoder file (python -m dgtalker.audio.speech_distill; "
                                      "default: the shipped one)")
    args = p.parse_args(argv)

    import torch

    import dgtalker
    from dgtalker import audio as A
    from dgtalker.audio.lipsync_model import DEFAULT_WEIGHTS, load_lipsync
    from dgtalker.audio.speech_encoder import load_speech_encoder, native_bfloat16
    from dgtalker.io import sha256_file

    torch.set_num_threads(2)
    encoder = load_speech_encoder(args.encoder)
    encoder.precision = args.precision  # the loaded encoder is the one dgtalker.lipsync reads through
    footage = Path(args.footage)
    cache_path = Path(args.cache)
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    rows, tracks, outputs, posteriors = [], {}, {}, {}
    for name in CLIPS:
        video = footage / f"{name}.mp4"
        if not video.is_file():
            print(f"{name}: not found in {footage}, skipped", file=sys.stderr)
            continue
        if name not in cache:
            t0 = time.time()
            fps, tr = track_opening(video)
            cache[name] = {"fps": fps, "opening": [None if not np.isfinite(v) else float(v) for v in tr]}
            cache_path.write_text(json.dumps(cache))
            print(f"{name}: tracked {len(tr)} frames in {time.time() - t0:.0f} s", file=sys.stderr)
        fps = cache[name]["fps"]
        track = np.array([np.nan if v is None else v for v in cache[name]["opening"]], np.float64)
        samples, rate = A.load(video)
        run = functools.partial(dgtalker.lipsync, (samples, rate), fps=fps, weights=args.weights, encoder=encoder)
        run()  # warm-up
        took = np.inf
        for _ in range(3):  # the best of three: the machine's other work only ever adds time
            t0 = time.perf_counter()
            res = run()
            took = min(took, time.perf_counter() - t0)
        causal = run(causal=True)
        feats = A.features(samples, rate, fps=fps, context=0.0)
        loud = feats.windows[:, 0, :].mean(1).astype(np.float64)
        pred = res.opening.astype(np.float64)
        row = {"clip": name, "fps": fps, "frames_video": len(track), "frames_audio": len(pred),
               "tracked_frames": int(np.isfinite(track).sum()),
               "track_std": round(float(np.nanstd(track)), 4), "track_mean": round(float(np.nanmean(track)), 4),
               "pred_std": round(float(pred.std()), 4), "pred_mean": round(float(pred.mean()), 4),
               "lipsync": lag_table(track, pred), "lipsync_causal": lag_table(track, causal.opening.astype(np.float64)),
               "loudness": lag_table(track, loud),
               "speed_x_realtime": round(len(samples) / rate / took, 1)}
        if args.phones:
            ph, took_ph = phone_opening(samples, fps, len(pred), args.phones_lw)
            row["phones"] = lag_table(track, ph)
            row["phones_speed_x_realtime"] = round(len(samples) / rate / took_ph, 1)
        n = min(len(track), len(pred))
        if args.likelihoods:
            post, names, took_post = phone_posteriors(samples, fps, len(pred))
            row["likelihoods"] = lag_table(track, expected_opening(post, names, fps))
            row["likelihoods_speed_x_realtime"] = round(len(samples) / rate / took_post, 1)
            posteriors[name] = post[:n]
        tracks[name] = track[:n]
        outputs[name] = np.c_[res.opening, res.width, res.visemes][:n].astype(np.float64)
        rows.append(row)
    if args.readout and len(rows) > 2:
        readouts = {"readout": outputs}
        if posteriors:
            readouts.update({
                "readout_posteriors": posteriors,
                "readout_both": {c: np.c_[outputs[c], posteriors[c]] for c in tracks},
                "readout_both_context": {c: with_context(np.c_[outputs[c], posteriors[c]]) for c in tracks},
                "readout_context": {c: with_context(outputs[c]) for c in tracks}})
        for key, feats_by_clip in readouts.items():
            for r, lt in zip(rows, readout_table(tracks, feats_by_clip).values()):
                r[key] = lt
    if not rows:
        print("no clips found", file=sys.stderr)
        return 1
    mean = lambda key, sub: round(float(np.mean([r[key][sub] for r in rows])), 4)  # noqa: E731
    summary = {"clips": len(rows), "lipsync_best_r_mean": mean("lipsync", "best_r"),
               "lipsync_r_lag0_mean": mean("lipsync", "r_lag0"),
               "lipsync_causal_best_r_mean": mean("lipsync_causal", "best_r"),
               "loudness_best_r_mean": mean("loudness", "best_r"),
               "lipsync_best_r_min": round(min(r["lipsync"]["best_r"] for r in rows), 4),
               "speed_x_realtime_min": min(r["speed_x_realtime"] for r in rows)}
    scored = ("readout", "phones", "likelihoods", "readout_posteriors", "readout_both", "readout_both_context",
              "readout_context")
    for key in scored:
        if key in rows[0]:
            summary[f"{key}_best_r_mean"] = mean(key, "best_r")
            summary[f"{key}_best_r_min"] = round(min(r[key]["best_r"] for r in rows), 4)
    weights = Path(args.weights) if args.weights else DEFAULT_WEIGHTS
    model = load_lipsync(args.weights, encoder=encoder)
    result = {"rows": rows, "summary": summary, "weights": weights.name, "weights_sha256": sha256_file(weights),
              "model_extra": model.meta, "speech_encoder": Path(encoder.path).name,
              "speech_encoder_sha256": sha256_file(model.encoder.path), "speech_encoder_extra": encoder.meta,
              "torch_threads": torch.get_num_threads(), "cpu": _cpu(), "precision": args.precision,
              "native_bfloat16": native_bfloat16()}
    print("| clip | fps | r best (lag) | r lag -1 / 0 / +1 | causal r best (lag) | loudness r best (lag) | "
          "std track / pred | x real time |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        f, c, l = r["lipsync"], r["lipsync_causal"], r["loudness"]
        print(f"| {r['clip']} | {r['fps']:g} | {f['best_r']:.3f} ({f['best_lag']:+d}) | {f['r_lag-1']:.3f} / "
              f"{f['r_lag0']:.3f} / {f['r_lag+1']:.3f} | {c['best_r']:.3f} ({c['best_lag']:+d}) | "
              f"{l['best_r']:.3f} ({l['best_lag']:+d}) | {r['track_std']:.3f} / {r['pred_std']:.3f} | "
              f"{r['speed_x_realtime']:.0f} |")
    print(f"| mean | | {summary['lipsync_best_r_mean']:.3f} | lag 0: {summary['lipsync_r_lag0_mean']:.3f} | "
          f"{summary['lipsync_causal_best_r_mean']:.3f} | {summary['loudness_best_r_mean']:.3f} | | |")
    described = {"readout": "readout of the outputs, fitted on the other clips",
                 "phones": f"pocketsphinx phones (lw {args.phones_lw:g})",
                 "likelihoods": "pocketsphinx phone posteriors, expected opening",
                 "readout_posteriors": "readout of the phone posteriors",
                 "readout_both": "readout of the outputs and the phone posteriors",
                 "readout_both_context": "readout of both, +-2 frames",
                 "readout_context": "readout of the outputs, +-2 frames"}
    for key in scored:
        if key in rows[0]:
            speed = f"{key}_speed_x_realtime"
            print(f"{described[key]}: " + ", ".join(f"{r['clip']} {r[key]['best_r']:.3f} ({r[key]['best_lag']:+d})"
                                                   for r in rows)
                  + f"; mean {summary[key + '_best_r_mean']:.3f}"
                  + (f", x{min(r[speed] for r in rows):.0f} real time" if speed in rows[0] else ""))
    from dgtalker.io import atomic_write_json

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(args.out), result)
    print(f"wrote {args.out}")
    return 0


def _cpu():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    sys.exit(main())
