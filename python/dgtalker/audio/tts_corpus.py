"""The lip-sync front end's training corpus: synthetic speech with the mouth it implies.

Only material whose derived weights may be shipped is used:

* **espeak-ng** (GPL-3.0, Debian ``espeak-ng``): ~60 languages x ~90 voice variants,
  rate / pitch / pitch range / word gaps drawn per utterance. Phoneme timings come from
  the synthesiser itself: libespeak-ng's synchronous synth callback reports a phoneme
  event (IPA, with its sample position) for every phoneme it speaks (loaded with ctypes).
* **flite** (Debian ``flite``, CMU's free licence; voices kal, kal16, awb, rms, slt from
  the CMU ARCTIC / diphone databases under the same permissive terms): English;
  ``flite -psdur`` prints each segment with its end time.

Speech synthesised by a program is the program's output, not the program: neither
licence reaches weights trained on it. MBROLA voices are left out (their licence forbids
commercial use); so are festival's voices (not checked).

Text: the public-domain "Alice" excerpt shipped with flite for English; for every
language, numbers (each synthesiser reads them in its own language) and pseudo-words
built from syllables, which each language's spelling rules turn into its own phonemes.

Each phoneme maps to a mouth target (opening = inner-lip gap over the outer eye-corner
distance, the face-mesh unit of ``dgtalker.lipsync``; lip width = mouth-corner distance
in the same unit) and a viseme class. Targets are blended with a dominance model
(Cohen & Massaro): phoneme i pulls the mouth towards its target with weight
``alpha_i * exp(-|t - c_i| / tau_i)``; bilabials dominate strongly (the lips must close),
tongue consonants and sibilants raise the jaw (the gap nearly closes between vowels,
the syllable's open-close cycle), /h/ and the glottal stop hardly pull at all (the
mouth keeps the neighbouring vowels' shape); the mouth leads the sound by 50 ms, and a
20 ms Gaussian stands in for the articulators' inertia.

    python -m dgtalker.audio.tts_corpus --out corpus.npz --minutes 90 --seed 0

writes log-mel frames (the project's ``dgtalker.audio.log_mel``, quantised to uint8)
and 100 Hz targets, with each utterance's phoneme timings (``corpus_phones``: the targets
can be recomputed without synthesising again); ``dgtalker.audio.frontend_train`` trains on it.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import shutil
import subprocess
import sys
import tempfile
import time
import unicodedata
from pathlib import Path

import numpy as np

from ..io import atomic_save_npz
from .frontend import VISEMES

FRAME_RATE = 100  # targets per second, one per log-mel frame
MEL_Q_LO, MEL_Q_STEP = -10.0, 0.1  # uint8 code k <-> log-mel value LO + k * STEP (-10 .. 15.5), 1 dB steps

SIL = "sil"
# The lips move before the sound they shape: in connected speech visible articulation
# leads the acoustics by roughly 20-80 ms (Schwartz & Savariaux 2014, PLoS Comput Biol
# 10(7): e1003743); the targets take the middle of that range.
ANTICIPATION_S = 0.05
# IPA base symbol -> (viseme, opening, width, opening dominance, width dominance)
_V = {}


def _vowels(syms, vis, opening, width, a_open=1.0, a_width=1.0):
    for s in syms:
        _V[s] = (vis, opening, width, a_open, a_width)


_vowels("i", "EI", 0.035, 0.56, 1.0, 1.5)
_vowels("y", "OU", 0.035, 0.40, 1.0, 2.0)
_vowels("ɨɯ", "EI", 0.04, 0.52)
_vowels("ʉu", "OU", 0.035, 0.38, 1.0, 2.0)
_vowels("ɪ", "EI", 0.05, 0.54)
_vowels("ʏ", "OU", 0.05, 0.42, 1.0, 1.5)
_vowels("ʊ", "OU", 0.05, 0.41, 1.0, 1.5)
_vowels("e", "EI", 0.07, 0.55)
_vowels("ø", "OU", 0.07, 0.42, 1.0, 1.5)
_vowels("ɘɤ", "EI", 0.07, 0.50)
_vowels("ɵ", "OU", 0.07, 0.43)
_vowels("o", "OU", 0.075, 0.40, 1.0, 1.5)
_vowels("ə", "EI", 0.065, 0.50, 0.6, 0.5)
_vowels("ɚ", "EI", 0.065, 0.45, 0.6, 0.8)
_vowels("ɜɝ", "EI", 0.09, 0.48)
_vowels("ɞ", "OU", 0.09, 0.44)
_vowels("ɛ", "EI", 0.11, 0.54)
_vowels("œ", "OU", 0.11, 0.44)
_vowels("ʌ", "AA", 0.12, 0.50)
_vowels("ɔ", "OU", 0.12, 0.42)
_vowels("æ", "AA", 0.14, 0.55)
_vowels("ɐ", "AA", 0.11, 0.50, 0.8)
_vowels("aä", "AA", 0.16, 0.52)
_vowels("ɶ", "AA", 0.15, 0.45)
_vowels("ɑ", "AA", 0.17, 0.50)
_vowels("ɒ", "OU", 0.16, 0.44)
VOWELS = set(_V)

_C = {}


def _cons(syms, vis, opening, width, a_open, a_width):
    for s in syms:
        _C[s] = (vis, opening, width, a_open, a_width)


# Consonants: the jaw rises for most of them (sibilants most), so the inner-lip gap
# nearly closes between the vowels of a syllable chain; bilabials close it fully.
_cons("pbmɓʙɸβ", "PBM", 0.0, 0.47, 8.0, 0.3)
_cons("fvɱʋ", "FV", 0.012, 0.48, 3.0, 0.3)
_cons("θð", "TH", 0.03, 0.50, 1.0, 0.3)
_cons("sz", "SZ", 0.012, 0.50, 1.5, 0.5)
_cons("ʃʒɕʑʂʐ", "SH", 0.02, 0.43, 1.2, 1.5)
_cons("tdnlɾrɫɬɮʈɖɳɭɗɺɽ", "TDNL", 0.02, 0.50, 1.0, 0.2)
_cons("ɹɻ", "RW", 0.03, 0.44, 0.8, 0.8)
_cons("wʍɥ", "RW", 0.02, 0.38, 1.5, 2.0)
_cons("kgɡŋxɣqɢχʁħʕcɟçʝɲʎɰʀ", "KG", 0.035, 0.50, 0.6, 0.2)
_cons("hɦʔ", "KG", 0.05, 0.50, 0.1, 0.1)  # the mouth keeps the neighbouring vowel's shape
_cons("j", "KG", 0.03, 0.53, 0.6, 0.5)
SIL_TARGET = (SIL, 0.005, 0.47)

_ARPABET = {"aa": "ɑ", "ae": "æ", "ah": "ʌ", "ao": "ɔ", "aw": "aʊ", "ax": "ə", "ay": "aɪ", "eh": "ɛ", "er": "ɝ",
            "ey": "eɪ", "ih": "ɪ", "iy": "i", "ow": "oʊ", "oy": "ɔɪ", "uh": "ʊ", "uw": "u", "b": "b", "ch": "tʃ",
            "d": "d", "dh": "ð", "f": "f", "g": "g", "hh": "h", "jh": "dʒ", "k": "k", "l": "l", "m": "m", "n": "n",
            "ng": "ŋ", "p": "p", "r": "ɹ", "s": "s", "sh": "ʃ", "t": "t", "th": "θ", "v": "v", "w": "w", "y": "j",
            "z": "z", "zh": "ʒ", "pau": ""}


def _base(symbol: str) -> str:
    """IPA letters of a phoneme symbol: stress, length, ties and diacritics removed."""
    s = unicodedata.normalize("NFD", symbol)
    return "".join(ch for ch in s if unicodedata.category(ch) != "Mn" and ch not in "ˈˌːˑ.‿͡-_ʰʲʷˠˤ̃'\"^#123456789")


def phone_units(symbol: str) -> list:
    """One phoneme symbol -> a list of (viseme, opening, width, a_open, a_width) units
    spread evenly over its duration (diphthongs give two, affricates their fricative);
    [] when the symbol carries no articulation of its own (a modifier)."""
    b = _base(symbol)
    if not b:
        return []
    if b[0] in "td" and len(b) > 1 and b[1] in "ʃʒɕʑʂʐsz":
        return [_C[b[1]]]
    vs = [_V[ch] for ch in b if ch in _V]
    if vs:
        return vs[:2]
    for ch in b:
        if ch in _C:
            return [_C[ch]]
    return [_C["h"]]  # an unknown letter: a neutral consonant


def mouth_targets(phones, duration: float, rate: int = FRAME_RATE, lead: float = ANTICIPATION_S):
    """Per-frame (opening [M], width [M], viseme index [M]) at ``rate`` frames/s (frame
    j at time j / rate, M = 1 + floor(duration * rate)) from ``phones``: a list of
    (start s, end s, IPA symbol or '' for a pause). Unlisted time is a pause. The
    mouth runs ``lead`` seconds ahead of the sound (anticipation)."""
    M = 1 + int(np.floor(duration * rate + 1e-9))
    phones = [(s - lead, e - lead, sym) for s, e, sym in phones]
    t = np.arange(M) / rate
    units = []  # (centre, tau, viseme, opening, width, a_open, a_width)
    vis_idx = np.full(M, VISEMES.index(SIL), np.int64)
    # pauses before, between and after
    edges = [(-0.3, phones[0][0] if phones else duration)]
    for (s0, e0, _), (s1, _, _) in zip(phones[:-1], phones[1:]):
        if s1 > e0 + 1e-3:
            edges.append((e0, s1))
    if phones:
        edges.append((phones[-1][1], duration + 0.3))
    segs = [(s, e, "") for s, e in edges if e > s] + list(phones)
    for s, e, sym in segs:
        d = max(e - s, 1e-3)
        if not sym:
            a = 1.2 if d > 0.12 else 0.15
            units.append(((s + e) / 2, d / 2 + 0.03, SIL, SIL_TARGET[1], SIL_TARGET[2], a, a))
            continue
        us = phone_units(sym)
        k = len(us)
        for n, (vis, op, wd, ao, aw) in enumerate(us):
            ss, ee = s + d * n / k, s + d * (n + 1) / k
            if vis in ("PBM", "FV"):
                tau = (ee - ss) / 2 + 0.015
            elif _is_vowel_unit(vis):
                tau = (ee - ss) / 2 + 0.03
            else:
                tau = (ee - ss) / 2 + 0.025
            units.append(((ss + ee) / 2, tau, vis, op, wd, ao, aw))
            sel = (t >= ss) & (t < ee)
            vis_idx[sel] = VISEMES.index(vis)
    if not units:
        return np.full(M, SIL_TARGET[1], np.float32), np.full(M, SIL_TARGET[2], np.float32), vis_idx
    c = np.array([u[0] for u in units])[:, None]
    tau = np.array([u[1] for u in units])[:, None]
    op = np.array([u[3] for u in units])[:, None]
    wd = np.array([u[4] for u in units])[:, None]
    ao = np.array([u[5] for u in units])[:, None]
    aw = np.array([u[6] for u in units])[:, None]
    dist = np.abs(t[None, :] - c) / tau
    base = np.exp(-np.minimum(dist, 60.0)) + 1e-12
    d_o, d_w = ao * base, aw * base
    opening = (d_o * op).sum(0) / d_o.sum(0)
    width = (d_w * wd).sum(0) / d_w.sum(0)
    from scipy.ndimage import gaussian_filter1d

    sigma = 0.02 * rate
    opening = gaussian_filter1d(opening, sigma, mode="nearest")
    width = gaussian_filter1d(width, sigma, mode="nearest")
    return opening.astype(np.float32), width.astype(np.float32), vis_idx


def _is_vowel_unit(vis):
    return vis in ("AA", "EI", "OU")


# ----------------------------------------------------------------------------- espeak-ng


class _Event(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", ctypes.c_char * 8)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))
_EVENT_PHONEME = 7
_PARAM = {"rate": 1, "volume": 2, "pitch": 3, "range": 4, "wordgap": 7}


class Espeak:
    """libespeak-ng through ctypes: ``synth(text, voice, rate=, pitch=, range=, wordgap=)``
    -> (int16 samples, sample rate, [(start s, IPA phoneme)]). One per process."""

    def __init__(self):
        self.lib = None
        for name in ("libespeak-ng.so.1", "libespeak-ng.so"):
            try:
                self.lib = ctypes.CDLL(name)
                break
            except OSError:
                continue
        if self.lib is None:
            raise RuntimeError("libespeak-ng is not installed (Debian package espeak-ng)")
        # AUDIO_OUTPUT_SYNCHRONOUS; options: phoneme events, as IPA, don't exit on errors
        self.rate = self.lib.espeak_Initialize(2, 200, None, 0x8003)
        if self.rate <= 0:
            raise RuntimeError("espeak-ng failed to initialise")
        self._chunks, self._events = [], []
        self._cb = _CALLBACK(self._on_audio)
        self.lib.espeak_SetSynthCallback(self._cb)
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]

    def _on_audio(self, wav, n, events):
        if n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, (n,)).copy())
        i = 0
        while events[i].type != 0:
            e = events[i]
            if e.type == _EVENT_PHONEME:
                self._events.append((e.sample, e.id.decode("utf-8", errors="ignore")))
            i += 1
        return 0

    def synth(self, text: str, voice: str, rate: int = 175, pitch: int = 50, range_: int = 50, wordgap: int = 0):
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"espeak-ng has no voice {voice!r}")
        for k, v in (("rate", rate), ("pitch", pitch), ("range", range_), ("wordgap", wordgap)):
            self.lib.espeak_SetParameter(_PARAM[k], int(v), 0)
        self._chunks, self._events = [], []
        b = text.encode("utf-8")
        self.lib.espeak_Synth(ctypes.c_char_p(b), len(b) + 1, 0, 1, 0, 1, None, None)  # POS_CHARACTER, CHARS_UTF8
        self.lib.espeak_Synchronize()
        wav = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        phones = [(s / self.rate, sym) for s, sym in self._events if not sym.startswith("(")]
        return wav, self.rate, phones


def espeak_phones(events, duration):
    """(start, IPA) events -> (start, end, symbol) with modifier-only events (e.g. a
    palatalisation mark) merged into the phoneme before them and pauses as ''."""
    out = []
    for k, (s, sym) in enumerate(events):
        e = events[k + 1][0] if k + 1 < len(events) else duration
        if e <= s:
            continue
        if sym and not phone_units(sym) and out:
            ps, _, psym = out[-1]
            out[-1] = (ps, e, psym)
            continue
        out.append((s, e, sym if phone_units(sym) else ""))
    # merge consecutive pauses
    merged = []
    for s, e, sym in out:
        if merged and not sym and not merged[-1][2]:
            merged[-1] = (merged[-1][0], e, "")
        else:
            merged.append((s, e, sym))
    return merged


# ----------------------------------------------------------------------------- flite

FLITE_VOICES = ("kal", "kal16", "awb", "rms", "slt")


def flite_synth(text: str, voice: str, tmpdir: Path):
    """flite speech of ``text``: (float32 samples, rate, [(start, end, IPA)])."""
    import soundfile as sf

    exe = shutil.which("flite")
    if exe is None:
        raise RuntimeError("flite is not installed (Debian package flite)")
    wav = Path(tmpdir) / "flite.wav"
    res = subprocess.run([exe, "-voice", voice, "-psdur", "-t", text, "-o", str(wav)], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"flite failed: {res.stderr[-200:]}")
    a, sr = sf.read(str(wav), dtype="float32")
    phones, start = [], 0.0
    for tok in res.stdout.split():
        if ":" not in tok:
            continue
        name, end = tok.rsplit(":", 1)
        end = float(end)
        phones.append((start, end, _ARPABET.get(name, "h")))
        start = end
    return a, int(sr), phones


# ----------------------------------------------------------------------------- text

LANGUAGES = {
    # espeak voice: pseudo-word alphabet ("latin", "cyrillic", "greek" or None: numbers only)
    # (espeak-ng voice names: "en" is British English and "fr" French of France)
    "en-us": "latin", "en": "latin", "en-gb-scotland": "latin", "en-029": "latin", "fr": "latin",
    "fr-be": "latin", "de": "latin", "es": "latin", "es-419": "latin", "it": "latin", "pt": "latin",
    "pt-br": "latin", "nl": "latin", "pl": "latin", "cs": "latin", "sk": "latin", "sv": "latin", "nb": "latin",
    "da": "latin", "fi": "latin", "hu": "latin", "ro": "latin", "tr": "latin", "id": "latin", "ms": "latin",
    "sw": "latin", "hr": "latin", "sl": "latin", "et": "latin", "lv": "latin", "lt": "latin", "eo": "latin",
    "la": "latin", "af": "latin", "ca": "latin", "eu": "latin", "cy": "latin", "ga": "latin", "is": "latin",
    "sq": "latin", "vi": "latin", "haw": "latin", "mi": "latin", "ru": "cyrillic", "uk": "cyrillic",
    "bg": "cyrillic", "sr": "cyrillic", "el": "greek", "hi": None, "ar": None, "he": None, "fa": None, "ko": None,
    "ta": None, "bn": None, "ka": None, "hy": None, "th": None, "ja": None,
}
_MAJOR = ("en-us", "en", "fr", "de", "es", "it", "pt", "ru", "nl", "pl")
_ALPHABETS = {
    "latin": (["b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z", "ch", "sh",
               "th", "ph", "qu", "br", "pl", "st", "tr", "gr", "m", "p", "b", "l", "n", "s", "t", "d"],
              ["a", "e", "i", "o", "u", "a", "e", "o", "y", "ai", "ou", "ei", "au", "ie", "oo", "ee", "ea"],
              ["", "", "", "n", "r", "s", "t", "m", "l", "ck", "p", "b"]),
    "cyrillic": (list("бвгджзклмнпрстфхцчшщ") + ["м", "п", "б"], list("аеиоуыэюяао"), ["", "", "н", "р", "м", "т"]),
    "greek": (list("βγδζθκλμνξπρστφχψ") + ["μπ", "ντ"], list("αεηιουωαο"), ["", "", "ς", "ν"]),
}


def alice_sentences() -> list:
    """Sentences of the public-domain 'Alice' text that the flite package ships."""
    for p in (Path("/usr/share/doc/flite/examples/alice"),):
        if p.is_file():
            text = " ".join(p.read_text(errors="ignore").split())
            parts = [s.strip() for s in text.replace("!", ".").replace("?", ".").split(".")]
            return [s + "." for s in parts if 20 <= len(s) <= 220]
    return []


_EXTRA_EN = ["Please put the bag by the map, then wave goodbye.", "Peter picked a pepper from the big blue box.",
             "My mother and father moved to a farm by the bay.", "Why would you want to swim with whales at noon?",
             "She sells sea shells by the sea shore each summer.", "Bob bought a bottle of maple syrup and some bread.",
             "The weather will be fine over the weekend, I hope.", "I am ready to vote for the proposal right away."]


def make_text(rng, alphabet, english=None) -> str:
    """One utterance: real English, pseudo-words in an alphabet, and numbers."""
    parts = []
    n_chunks = rng.integers(2, 5)
    for _ in range(n_chunks):
        r = rng.random()
        if english is not None and r < 0.6:
            parts.append(english[rng.integers(len(english))])
        elif alphabet is not None and r < 0.85:
            cons, vows, codas = _ALPHABETS[alphabet]
            words = []
            for _ in range(rng.integers(2, 8)):
                w = "".join(cons[rng.integers(len(cons))] * (rng.random() < 0.85) + vows[rng.integers(len(vows))]
                            + (codas[rng.integers(len(codas))] if rng.random() < 0.4 else "")
                            for _ in range(rng.integers(1, 4)))
                words.append(w)
            parts.append(" ".join(words) + rng.choice([".", ",", "?", "!", ""]))
        else:
            parts.append(" ".join(str(rng.integers(0, 10 ** rng.integers(1, 5))) for _ in range(rng.integers(1, 4)))
                         + rng.choice([".", ","]))
    return " ".join(parts)


_VARIANT_SKIP = {"Demonic", "UniRobot", "anikaRobot", "whisper", "whisperf", "fast", "Mr serious"}


def espeak_variants() -> list:
    import glob

    names = set()
    for d in glob.glob("/usr/lib/*/espeak-ng-data/voices/!v") + glob.glob("/usr/share/espeak-ng-data/voices/!v"):
        names.update(p.name for p in Path(d).iterdir() if p.is_file())
    keep = sorted(n for n in names if n not in _VARIANT_SKIP and not n.startswith("robosoft") and " " not in n)
    return [""] + keep


# ----------------------------------------------------------------------------- build


def quantise_mel(mel: np.ndarray) -> np.ndarray:
    return np.clip(np.rint((mel - MEL_Q_LO) / MEL_Q_STEP), 0, 255).astype(np.uint8)


def dequantise_mel(q: np.ndarray) -> np.ndarray:
    return (q.astype(np.float32) * MEL_Q_STEP + MEL_Q_LO).astype(np.float32)


def build(minutes: float, seed: int = 0, flite_share: float = 0.2, log=print, keep_audio: bool = False) -> dict:
    """Synthesise ``minutes`` of speech; returns the arrays that ``--out`` stores. With
    ``keep_audio`` also each utterance's 16 kHz samples (``audio``, int16, concatenated;
    ``audio_offsets``), which the lip-sync model's training reads."""
    from . import SAMPLE_RATE, log_mel, resample

    rng = np.random.default_rng(seed)
    es = Espeak()
    variants = espeak_variants()
    english = alice_sentences() + _EXTRA_EN
    use_flite = shutil.which("flite") is not None
    langs = list(LANGUAGES)
    weights = np.array([4.0 if l in _MAJOR else 1.0 for l in langs])
    weights[langs.index("en-us")] = 8.0
    weights /= weights.sum()
    mels, opens, widths, vis, offsets, meta, audio, timings = [], [], [], [], [0], [], [], []
    total, t0 = 0.0, time.time()
    tmp = tempfile.mkdtemp(prefix="tts_corpus.")
    try:
        while total < minutes * 60:
            speed = float(rng.uniform(0.88, 1.15))  # resampling: tempo, pitch and formants together
            if use_flite and rng.random() < flite_share:
                voice = str(rng.choice(FLITE_VOICES))
                text = make_text(rng, None, english)
                if not any(ch.isalpha() for ch in text):
                    continue
                a, sr, phones = flite_synth(text, voice, tmp)
                engine = f"flite:{voice}"
            else:
                lang = str(rng.choice(langs, p=weights))
                var = str(rng.choice(variants))
                voice = lang + ("+" + var if var else "")
                text = make_text(rng, LANGUAGES[lang], english if lang == "en" or lang.startswith("en-") else None)
                try:
                    wav, sr, events = es.synth(text, voice, rate=int(rng.uniform(110, 260)),
                                               pitch=int(rng.uniform(15, 85)), range_=int(rng.uniform(10, 100)),
                                               wordgap=int(rng.integers(0, 5)) if rng.random() < 0.2 else 0)
                except ValueError:  # a variant this language's voice cannot take
                    continue
                a = wav.astype(np.float32) / 32768.0
                phones = espeak_phones(events, len(a) / sr)
                engine = f"espeak-ng:{voice}"
            if len(a) < sr * 0.3 or not any(p[2] for p in phones):
                continue
            # speed: play the samples at speed * sr; timings shrink by the same factor
            a16 = resample(a, int(round(sr * speed)), SAMPLE_RATE)
            if rng.random() < 0.15:  # telephone band: a real 8 kHz round trip
                a16 = resample(resample(a16, SAMPLE_RATE, 8000), 8000, SAMPLE_RATE)
            dur = len(a16) / SAMPLE_RATE
            ph = [(s / speed, e / speed, sym) for s, e, sym in phones]
            mel = log_mel(a16)
            o, w, v = mouth_targets(ph, dur)
            M = min(len(mel), len(o))
            mels.append(quantise_mel(mel[:M]))
            opens.append(o[:M].astype(np.float16))
            widths.append(w[:M].astype(np.float16))
            vis.append(v[:M].astype(np.uint8))
            offsets.append(offsets[-1] + M)
            meta.append(engine)
            timings.append([[round(s, 5), round(e, 5), sym] for s, e, sym in ph])
            if keep_audio:
                audio.append(np.clip(np.rint(a16 * 32767.0), -32768, 32767).astype(np.int16))
            total += dur
            if len(meta) % 200 == 0:
                log(f"{len(meta)} utterances, {total / 60:.1f} min of speech, {time.time() - t0:.0f} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    arrays = {"mel": np.concatenate(mels), "opening": np.concatenate(opens), "width": np.concatenate(widths),
              "viseme": np.concatenate(vis), "offsets": np.array(offsets, np.int64),
              "engines": np.frombuffer(json.dumps(meta).encode(), np.uint8),
              "phones": np.frombuffer(json.dumps(timings, ensure_ascii=False).encode(), np.uint8)}
    if keep_audio:
        arrays["audio"] = np.concatenate(audio)
        arrays["audio_offsets"] = np.cumsum([0] + [len(a) for a in audio]).astype(np.int64)
    return arrays


def corpus_phones(corpus) -> list:
    """Each utterance's phonemes, ``[(start s, end s, IPA symbol or '')]`` at the stored
    speed (what ``mouth_targets`` read when the corpus was built), from a loaded corpus."""
    if "phones" not in corpus:
        raise ValueError("this corpus keeps no phoneme timings: rebuild it with this version")
    return [[tuple(p) for p in u] for u in json.loads(bytes(np.asarray(corpus["phones"], np.uint8)).decode())]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m dgtalker.audio.tts_corpus", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="the corpus .npz to write")
    p.add_argument("--minutes", type=float, default=90.0, help="minutes of speech to synthesise (default 90)")
    p.add_argument("--seed", type=int, default=0, help="seed of texts, voices and prosody (default 0)")
    p.add_argument("--flite-share", type=float, default=0.2, help="share of utterances spoken by flite (default 0.2)")
    p.add_argument("--keep-audio", action="store_true",
                   help="also store the 16 kHz speech (int16; what `python -m dgtalker.audio.lipsync_train` reads)")
    args = p.parse_args(argv)
    arrays = build(args.minutes, args.seed, args.flite_share, keep_audio=args.keep_audio)
    atomic_save_npz(Path(args.out), **arrays)
    n = len(arrays["offsets"]) - 1
    print(f"wrote {args.out}: {n} utterances, {len(arrays['mel']) / 6000:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
