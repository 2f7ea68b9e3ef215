"""``dgtalker.lipsync``: speech -> per-frame mouth curves, for any voice and language.

    import dgtalker
    ls = dgtalker.lipsync("speech.wav", fps=25)
    ls.opening      # [T] inner-lip gap / outer eye-corner distance (face-mesh unit)
    ls.width        # [T] mouth-corner distance, same unit
    ls.visemes      # [T, 12] class probabilities; ls.viseme_names
    ls.embedding    # [T, 32] the model's per-frame representation
    ls.to_csv("curves.csv"); ls.to_json("curves.json")

``T = ceil(duration * fps)`` like ``dgtalker.audio.features``; frame i describes the
time i / fps. The model (``audio.lipsync_model``): the first blocks of Whisper base, a
speech encoder trained on real speech, and heads trained on synthetic speech.
``causal=True`` reads no audio later than ``lookahead_s`` (0.1725 s) after each
frame's time, so it can run on a live stream.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io import check_output_path
from .frontend import VISEMES
from .lipsync_model import load_lipsync
from .speech_encoder import load_speech_encoder


@dataclass
class LipSync:
    opening: np.ndarray      # float32 [T]
    width: np.ndarray        # float32 [T]
    visemes: np.ndarray      # float32 [T, C], rows sum to 1
    embedding: np.ndarray    # float32 [T, D]
    fps: float
    causal: bool
    lookahead_s: float       # how far past a frame's time its outputs may read (causal mode)
    viseme_names: tuple = VISEMES
    encoder: str = "speech_encoder.safetensors"  # the speech encoder's file (another: lipsync(encoder=...))

    def __len__(self) -> int:
        return int(self.opening.shape[0])

    @property
    def times(self) -> np.ndarray:
        return (np.arange(len(self)) / self.fps).astype(np.float64)

    @property
    def viseme(self) -> list:
        """The most likely viseme class of each frame."""
        return [self.viseme_names[i] for i in np.argmax(self.visemes, axis=1)]

    def rows(self) -> list:
        return [{"frame": i, "time": round(float(t), 6), "opening": round(float(o), 5), "width": round(float(w), 5),
                 "viseme": v, **{f"p_{n}": round(float(p), 4) for n, p in zip(self.viseme_names, ps)}}
                for i, (t, o, w, v, ps) in enumerate(zip(self.times, self.opening, self.width, self.viseme,
                                                          self.visemes))]

    def to_csv(self, path) -> Path:
        """One row per frame: frame, time, opening, width, viseme, p_<class>... (atomic write)."""
        import csv
        import io

        from ..io import atomic_write_bytes

        path = check_output_path(path)
        rows = self.rows()
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["frame"], lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        atomic_write_bytes(path, buf.getvalue().encode())
        return path

    def to_json(self, path, embedding: bool = False) -> Path:
        """fps, unit, class names and per-frame lists (atomic write); ``embedding=True``
        adds the [T, D] embedding."""
        from ..io import atomic_write_bytes

        path = check_output_path(path)
        obj = {"fps": self.fps, "frames": len(self), "causal": self.causal, "encoder": self.encoder,
               "unit": "inner-lip gap (face-mesh points 13/14) and mouth width over the outer eye-corner distance "
                       "(points 33/263)",
               "viseme_names": list(self.viseme_names), "opening": [round(float(x), 5) for x in self.opening],
               "width": [round(float(x), 5) for x in self.width],
               "visemes": np.round(self.visemes, 4).tolist()}
        if embedding:
            obj["embedding"] = np.round(self.embedding, 4).tolist()
        atomic_write_bytes(path, (json.dumps(obj) + "\n").encode())
        return path


def lipsync(audio, fps: float = 25.0, sample_rate: int | None = None, causal: bool = False, *,
            weights=None, encoder=None) -> LipSync:
    """Mouth curves of speech (see the module doc).

    ``audio``: a path (wav/flac/mp3/... or a video's sound track), ``(samples, rate)``,
    or an array (``[S]``, ``[S, C]`` or ``[C, S]``, float in [-1, 1] or integer PCM)
    with ``sample_rate=``; the same checks and errors as ``dgtalker.render`` (``dgtalker.audio.speech``).
    ``weights``: another lip-sync model file (default: the shipped one, checksum-verified).
    ``encoder``: another speech encoder, a path or a loaded ``speech_encoder.SpeechEncoder``
    (default: the shipped one; e.g. a smaller one from ``python -m dgtalker.audio.speech_distill``,
    faster and less accurate: docs/lipsync.md).
    """
    from .. import audio as A
    from . import speech

    fps = A._check_fps(fps)
    if not isinstance(causal, (bool, np.bool_)):
        raise A.AudioError(f"causal must be True or False, got {causal!r}")
    causal = bool(causal)
    samples, rate = speech(audio, sample_rate)
    n = A.check_duration(len(samples), rate, fps)
    if isinstance(encoder, (str, Path)):
        encoder = _encoder_file(encoder)
    model = load_lipsync(weights, encoder=encoder)
    x = A.resample(samples, rate, A.SAMPLE_RATE) if rate != A.SAMPLE_RATE else samples
    out = model(x, fps, n, causal=causal)
    return LipSync(out["opening"], out["width"], out["visemes"], out["embedding"], fps, causal, model.lookahead_s,
                   encoder=Path(str(model.encoder.path)).name)


_encoders = {}


def _encoder_file(path):
    """A speech encoder file, loaded once per path."""
    key = str(Path(path).resolve())
    if key not in _encoders:
        _encoders[key] = load_speech_encoder(path)
    return _encoders[key]
