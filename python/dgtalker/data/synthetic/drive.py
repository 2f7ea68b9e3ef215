"""Per-frame animation of a synthetic talker: mouth from speech, upper face, head.

Mouth (``mouth_from_audio``) is a deterministic function of the sound within about
+-0.1 s of each frame, computed from acoustic features only, so audio from any
source (espeak, a recording, another voice) drives it the same way:

* loudness relative to the loudest speech in the surrounding +-1 s opens the jaw
  (vowels open, consonants less, silence closed); energy at 4-8 kHz (fricatives: s, f,
  sh) narrows it;
* the ratio of energy at 250-900 Hz to 900-2500 Hz tracks the second formant: low F2
  (oo, oh, w) rounds the lips, high F2 (ee, ay) spreads them;
* quiet stretches close the lips (``lip_close``), including the short closures of
  p, b, m inside words.

Upper face (``upper_face``) and head motion (``head_motion``) mix seeded randomness
with the emphasis of the speech (loudness peaks), so they correlate with the audio
only loosely and never through the mouth parameters.
"""
from __future__ import annotations

import numpy as np

from .head import euler_to_matrix

FEATURE_RATE = 100  # Hz, hop 10 ms
_SR = 16000
_WIN = 400
_HOP = _SR // FEATURE_RATE


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def acoustic_tracks(samples16k: np.ndarray) -> dict:
    """Band energies (dB) at 100 Hz, frame j centred at j / 100 s."""
    x = np.asarray(samples16k, np.float32)
    pad = np.zeros(256, np.float32)
    xp = np.concatenate([pad, x, pad])
    n = 1 + len(x) // _HOP
    idx = np.arange(n)[:, None] * _HOP + np.arange(512)[None, :]
    idx = np.minimum(idx, len(xp) - 1)
    win = np.zeros(512, np.float32)
    win[56:456] = np.hanning(_WIN)
    spec = np.abs(np.fft.rfft(xp[idx] * win, axis=1)) ** 2  # [n, 257]
    f = np.fft.rfftfreq(512, 1 / _SR)

    def band(lo, hi):
        return spec[:, (f >= lo) & (f < hi)].sum(axis=1) + 1e-10

    return {
        "total": 10 * np.log10(band(80, 8000) / 512.0),
        "low": band(250, 900), "mid": band(900, 2500), "high": band(4000, 8000),
        "lowmid": band(80, 2500),
    }


def _gauss(x, sigma):
    from scipy.ndimage import gaussian_filter1d

    return gaussian_filter1d(np.asarray(x, np.float64), sigma, mode="nearest") if sigma > 0 else x


def _at_frames(track, fps, n):
    t = np.arange(n) / fps * FEATURE_RATE
    return np.interp(t, np.arange(len(track)), track)


def mouth_from_audio(samples16k: np.ndarray, fps: float, num_frames: int) -> dict:
    """jaw_open, lip_round, lip_spread, lip_close in [0, 1] per video frame."""
    from scipy.ndimage import maximum_filter1d

    a = acoustic_tracks(samples16k)
    db = a["total"]
    ref = np.maximum(maximum_filter1d(db, size=2 * FEATURE_RATE + 1, mode="nearest"), -40.0)
    loud = np.clip((db - ref + 24.0) / 18.0, 0.0, 1.0) * (db > -60.0)
    fric = _sigmoid(2.2 * np.log10(a["high"] / a["lowmid"]) + 1.0)
    voiced = loud * (1.0 - fric)
    r = np.log10(a["low"] / a["mid"])
    jaw = 0.8 * loud ** 1.2 * (1.0 - 0.6 * fric)
    rnd = voiced * _sigmoid((r - 0.85) / 0.18)
    spr = voiced * _sigmoid((0.25 - r) / 0.18)
    close = np.clip(1.0 - loud / 0.3, 0.0, 1.0)
    # articulators move smoothly: ~30 ms blur, symmetric (the mouth leads the sound)
    tracks = {"jaw_open": jaw, "lip_round": rnd, "lip_spread": spr, "lip_close": close}
    return {k: np.clip(_at_frames(_gauss(v, 3.0), fps, num_frames), 0.0, 1.0) for k, v in tracks.items()}


def emphasis_times(samples16k: np.ndarray) -> np.ndarray:
    """Times (s) of stressed syllables: prominent peaks of the smoothed loudness."""
    from scipy.signal import find_peaks

    a = acoustic_tracks(samples16k)
    env = _gauss(np.maximum(a["total"], -60.0), 8.0)
    peaks, _ = find_peaks(env, prominence=5.0, distance=int(0.35 * FEATURE_RATE), height=-35.0)
    return peaks / FEATURE_RATE


def _pulse(t, t0, rise, fall):
    """0 -> 1 over ``rise`` s from t0, back to 0 over ``fall`` s (smooth)."""
    up = np.clip((t - t0) / rise, 0, 1)
    down = np.clip((t - t0 - rise) / fall, 0, 1)
    s = lambda u: u * u * (3 - 2 * u)  # noqa: E731
    return s(up) * (1 - s(down))


def _smooth_noise(rng, n, sigma_frames):
    x = _gauss(rng.normal(size=n + int(6 * sigma_frames)), sigma_frames)[int(3 * sigma_frames):][:n]
    return x / (x.std() + 1e-9)


def upper_face(rng: np.random.Generator, fps: float, num_frames: int, emphasis: np.ndarray) -> dict:
    """brow_raise, brow_furrow, blinks and gaze per frame."""
    n = num_frames
    t = np.arange(n) / fps
    raise_ = 0.12 * np.clip(_smooth_noise(rng, n, 2.5 * fps), 0, None)
    for te in emphasis:  # eyebrows flash on about half of the stressed syllables
        if rng.uniform() < 0.5:
            raise_ += rng.uniform(0.4, 1.0) * _pulse(t, te - 0.1, 0.15, rng.uniform(0.3, 0.7))
    furrow = np.clip(_smooth_noise(rng, n, 3.0 * fps) * 0.5 - 0.2, 0, None)
    # blinks: a Poisson process (about one every 3-4 s), 80 ms close, ~170 ms open
    blink = np.zeros(n)
    tb = rng.uniform(0.3, 2.0)
    while tb < t[-1] + 1 if n else False:
        blink = np.maximum(blink, _pulse(t, tb, 0.08, 0.17))
        tb += max(0.6, rng.exponential(3.2))
    # gaze: fixations with small saccades between them
    gy, gp = np.zeros(n), np.zeros(n)
    ts = 0.0
    cur = (0.0, 0.0)
    while ts < (t[-1] if n else 0) + 1:
        dur = rng.uniform(0.4, 2.5)
        cur = (0.6 * cur[0] + rng.normal(0, 0.12), 0.6 * cur[1] + rng.normal(0, 0.06))
        sel = (t >= ts) & (t < ts + dur)
        gy[sel], gp[sel] = cur
        ts += dur
    gy, gp = _gauss(gy, 0.03 * fps), _gauss(gp, 0.03 * fps)
    return {"brow_raise": np.clip(raise_, 0, 1), "brow_furrow": np.clip(furrow, 0, 1),
            "blink_left": np.clip(blink, 0, 1), "blink_right": np.clip(blink, 0, 1),
            "gaze_yaw": np.clip(gy, -0.35, 0.35), "gaze_pitch": np.clip(gp, -0.2, 0.2)}


NECK_PIVOT = np.array([0.0, -0.09, -0.02])  # head rotates about the top of the neck


def head_pose_matrix(yaw, pitch, roll, translation=(0.0, 0.0, 0.0)) -> np.ndarray:
    """4x4 head -> world for a rotation about ``NECK_PIVOT`` plus a translation."""
    R = euler_to_matrix(yaw, pitch, roll)
    H = np.eye(4)
    H[:3, :3] = R
    H[:3, 3] = NECK_PIVOT - R @ NECK_PIVOT + np.asarray(translation)
    return H


def head_motion(rng: np.random.Generator, fps: float, num_frames: int, emphasis: np.ndarray,
                max_yaw_deg: float = 15.0, max_pitch_deg: float = 10.0, max_roll_deg: float = 3.0) -> dict:
    """Smooth, bounded head turns and nods (radians) and small sways (metres)."""
    n = num_frames
    t = np.arange(n) / fps
    yaw = np.deg2rad(max_yaw_deg) * np.tanh(0.9 * _smooth_noise(rng, n, 1.2 * fps))
    nod = np.zeros(n)
    for te in emphasis:
        if rng.uniform() < 0.4:
            nod += rng.uniform(0.3, 1.0) * _pulse(t, te - 0.05, 0.15, 0.35)
    pitch_raw = 0.8 * _smooth_noise(rng, n, 1.5 * fps) + 0.8 * nod
    pitch = np.deg2rad(max_pitch_deg) * np.tanh(pitch_raw)
    roll = np.deg2rad(max_roll_deg) * np.tanh(_smooth_noise(rng, n, 2.0 * fps))
    sway = 0.006 * np.stack([_smooth_noise(rng, n, 2.0 * fps), 0.5 * _smooth_noise(rng, n, 2.0 * fps),
                             _smooth_noise(rng, n, 2.0 * fps)], 1)
    return {"head_yaw": yaw, "head_pitch": pitch, "head_roll": roll, "head_translation": sway}


def random_state(rng: np.random.Generator) -> dict:
    """One random expression (mouth and upper face), for the multi-identity corpus."""
    jaw = rng.uniform() ** 1.5 * 0.9
    shape = rng.uniform()
    return {
        "jaw_open": jaw,
        "lip_round": rng.uniform(0.3, 1.0) if shape < 0.3 else 0.0,
        "lip_spread": rng.uniform(0.3, 1.0) if 0.3 <= shape < 0.6 else 0.0,
        "lip_close": rng.uniform(0.5, 1.0) if jaw < 0.15 and rng.uniform() < 0.5 else 0.0,
        "brow_raise": rng.uniform() ** 2,
        "brow_furrow": rng.uniform() ** 2 if rng.uniform() < 0.4 else 0.0,
        "blink_left": 1.0 if rng.uniform() < 0.1 else rng.uniform(0, 0.3),
        "blink_right": 1.0 if rng.uniform() < 0.1 else rng.uniform(0, 0.3),
        "gaze_yaw": rng.normal(0, 0.15), "gaze_pitch": rng.normal(0, 0.07),
    }
