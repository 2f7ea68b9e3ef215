"""The speech front end: log-mel -> what the mouth does, for any voice and language.

A small temporal convolution network over the project's log-mel (``dgtalker.audio``:
80 bands, 100 frames/s) trained only on synthetic speech (``dgtalker.audio.tts_corpus``,
``dgtalker.audio.frontend_train``). Per mel frame it gives

* ``opening``: the inner-lip gap (face-mesh points 13/14) over the outer eye-corner
  distance (points 33/263), the unit ``dgtalker.preprocess`` measures on real video;
* ``width``: the mouth-corner distance in the same unit;
* ``visemes``: probabilities of the classes in ``VISEMES``;
* ``embedding``: a ``EMBED``-dimensional vector from which the three above are read
  (a per-identity audio encoder can consume it).

Robustness to loudness and microphone: every mel band has its speech mean removed
(the mean over the frames within 35 dB of the loudest frame; offline over the whole
clip, causal over the frames heard so far) and values more than 50 dB below it are
clipped, so a gain or a fixed EQ changes nothing and silence reads the same at any
noise floor.

Causality: every convolution reads at most a fixed number of future mel frames
(``FrontEndConfig.lookahead_frames`` in all, 10); the causal normalisation reads none.
Video frame i at time t = i / fps interpolates the two mel frames around t, and mel
frame j's window ends 12.5 ms after j / 100 s, so a causal frame at time t depends on
no audio later than ``t + lookahead_s`` (0.1225 s for 16 kHz input; resampling other
rates adds the resampler's own few-sample reach). The offline mode uses the same
network with the whole clip's normalisation.

The shipped weights' SHA-256 is recorded here (``WEIGHTS_SHA256``) and checked on
load; a corrupt or replaced file raises ``FrontEndError`` naming it.
"""
from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

VISEMES = ("sil", "PBM", "FV", "TH", "SZ", "SH", "TDNL", "KG", "RW", "AA", "EI", "OU")
VISEME_HELP = {"sil": "silence, mouth at rest", "PBM": "lips closed (p b m)", "FV": "lower lip to teeth (f v)",
               "TH": "tongue between teeth (th)", "SZ": "s z", "SH": "rounded fricatives (sh zh ch j)",
               "TDNL": "tongue consonants (t d n l r)", "KG": "back consonants (k g ng h y)",
               "RW": "rounded glides (w, English r)", "AA": "open vowels (a)", "EI": "spread vowels (e i, schwa)",
               "OU": "rounded vowels (o u, ü ö)"}
FORMAT = "dgtalker-lipsync-frontend"
FORMAT_VERSION = 1
MEL_RATE = 100  # mel frames per second (dgtalker.audio: 160-sample hop at 16 kHz)
DEFAULT_WEIGHTS = Path(__file__).resolve().parents[1] / "models" / "assets" / "lipsync_frontend.safetensors"
# SHA-256 of the shipped weights file; checked on every load of the default weights
WEIGHTS_SHA256 = "98b4f186a62824ba50941c79145526f55bd7422f8ed076ddaec6eca17484ed81"
ACTIVE_RANGE = 3.5  # log10 power: frames within 35 dB of the loudest set the band means
CLIP_BELOW = -5.0   # ... and normalised values are clipped 50 dB below them
INPUT_SCALE = 2.0
_WINDOW_REACH_S = 0.0125  # a mel frame's 400-sample window ends 200 samples after its centre
OPENING_MEAN, OPENING_SCALE = 0.06, 0.06
WIDTH_MEAN, WIDTH_SCALE = 0.48, 0.05


class FrontEndError(ValueError):
    """Front-end weights that cannot be used: missing, corrupt, not matching the recorded
    checksum or of another kind. The message names the file."""


@dataclass
class FrontEndConfig:
    n_mels: int = 80
    channels: int = 96                # the shipped weights' width
    embed: int = 32
    stem_kernel: int = 5
    stem_lookahead: int = 2
    # (dilation, look-ahead in frames) of each residual block's kernel-3 convolution
    blocks: list = field(default_factory=lambda: [[1, 1], [2, 2], [4, 4], [8, 0], [16, 0], [1, 1]])
    n_visemes: int = len(VISEMES)

    @property
    def lookahead_frames(self) -> int:
        return int(self.stem_lookahead + sum(r for _, r in self.blocks))

    @property
    def lookahead_s(self) -> float:
        """Audio after a video frame's time that its causal output can depend on (16 kHz input)."""
        return (self.lookahead_frames + 1) / MEL_RATE + _WINDOW_REACH_S

    @property
    def history_frames(self) -> int:
        return int(self.stem_kernel - 1 - self.stem_lookahead + sum(2 * d - r for d, r in self.blocks))

    def check(self) -> "FrontEndConfig":
        ok = (self.n_mels > 0 and self.channels > 0 and self.embed > 0 and self.n_visemes == len(VISEMES)
              and 0 <= self.stem_lookahead < self.stem_kernel
              and all(len(b) == 2 and b[0] >= 1 and 0 <= b[1] <= 2 * b[0] for b in self.blocks))
        if not ok:
            raise FrontEndError(f"invalid front-end config {asdict(self)}")
        return self


def _torch():
    import torch

    return torch


@functools.lru_cache(maxsize=None)
def conv_layers():
    """The layers the front end and ``dgtalker.lipsync``'s heads are built of:
    ``(Conv, ChannelNorm, Block)``. ``Conv``: a 1-D convolution reading ``ahead`` future
    frames and the rest from the past; ``ChannelNorm``: layer norm over each frame's
    channels alone (a norm over time would read the future); ``Block``: residual norm ->
    ``Conv`` (kernel 3) -> GELU -> 1x1 convolution."""
    torch = _torch()
    nn = torch.nn
    F = torch.nn.functional

    class Conv(nn.Module):
        def __init__(self, cin, cout, k, dilation=1, ahead=0):
            super().__init__()
            self.conv = nn.Conv1d(cin, cout, k, dilation=dilation)
            self.pad = ((k - 1) * dilation - ahead, ahead)

        def forward(self, x):
            return self.conv(F.pad(x, self.pad))

    class ChannelNorm(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.norm = nn.LayerNorm(c)

        def forward(self, x):
            return self.norm(x.transpose(1, 2)).transpose(1, 2)

    class Block(nn.Module):
        def __init__(self, c, d, r):
            super().__init__()
            self.norm = ChannelNorm(c)
            self.conv = Conv(c, c, 3, d, r)
            self.mix = nn.Conv1d(c, c, 1)

        def forward(self, x):
            return x + self.mix(F.gelu(self.conv(self.norm(x))))

    return Conv, ChannelNorm, Block


def build_model(config: FrontEndConfig):
    """The network (a torch.nn.Module): ``model(x [B, n_mels, M])`` -> dict of 100 Hz
    outputs ``opening [B, M]``, ``width [B, M]``, ``viseme_logits [B, V, M]``,
    ``embedding [B, D, M]``; ``x`` is normalised log-mel (``normalise``)."""
    torch = _torch()
    nn = torch.nn
    F = torch.nn.functional
    Conv, ChannelNorm, Block = conv_layers()

    class FrontEnd(nn.Module):
        def __init__(self, cfg):
            super().__init__()
            C = cfg.channels
            self.stem = Conv(cfg.n_mels, C, cfg.stem_kernel, 1, cfg.stem_lookahead)
            self.blocks = nn.ModuleList(Block(C, d, r) for d, r in cfg.blocks)
            self.norm = ChannelNorm(C)
            self.embed = nn.Conv1d(C, cfg.embed, 1)
            self.head = nn.Conv1d(cfg.embed, 2 + cfg.n_visemes, 1)

        def forward(self, x):
            return self.outputs(self.trunk(x))

        def trunk(self, x):
            """Normalised log-mel ``[B, n_mels, M]`` -> the features the output layers read."""
            h = self.stem(x)
            for b in self.blocks:
                h = b(h)
            return h

        def outputs(self, h):
            """The output layers (norm, embedding, head: what adapting to a person tunes)."""
            e = self.embed(self.norm(h))
            y = self.head(F.gelu(e))
            return {"opening": y[:, 0] * OPENING_SCALE + OPENING_MEAN, "width": y[:, 1] * WIDTH_SCALE + WIDTH_MEAN,
                    "viseme_logits": y[:, 2:], "embedding": e}

    return FrontEnd(config.check())


LEVEL_RANGE = 1.2       # log10 power: the level correction moves a passage by at most 12 dB ...
LEVEL_MIN_SPEECH = 50   # ... and only where its window holds this many speech frames (0.5 s)


def window_sums(y, before: int, frames: int):
    """The sum of ``y [..., M]`` over each frame's window along the last axis: the
    ``frames`` frames starting ``before`` frames ahead of it, cut at the ends. From
    running sums in float64 (minutes of frames stay exact), so any window costs O(M)."""
    torch = _torch()
    y = y.double()
    c = torch.cat([torch.zeros_like(y[..., :1]), torch.cumsum(y, -1)], -1)  # sums before each index
    M = y.shape[-1]
    j = torch.arange(M, device=y.device)
    lo, hi = (j - before).clamp(0, M), (j - before + frames).clamp(0, M)
    return c[..., hi] - c[..., lo]


def level_gain(e, w, causal: bool, window: int):
    """The level correction ``[..., 1, M]`` (log10 power) of frames with levels ``e`` and
    speech flags ``w`` (both ``[..., 1, M]``): the clip's speech level (causal: so far) minus
    the speech level of the ``window`` frames around each frame (causal: ending at it),
    within +-``LEVEL_RANGE``; zero where that window holds too little speech (pauses stay
    pauses). A passage spoken softer or louder than the rest then reads as the rest does."""
    torch = _torch()
    dtype, ew, w = e.dtype, e.double() * w.double(), w.double()
    if causal:
        ref = torch.cumsum(ew, -1) / torch.cumsum(w, -1).clamp_min(1.0)
        before, frames = window - 1, window
    else:
        ref = ew.sum(-1, keepdim=True) / w.sum(-1, keepdim=True).clamp_min(1.0)
        before, frames = window // 2, 2 * (window // 2) + 1
    count = window_sums(w, before, frames)
    local = window_sums(ew, before, frames) / count.clamp_min(1.0)
    gain = (ref - local).clamp(-LEVEL_RANGE, LEVEL_RANGE)
    return torch.where(count >= LEVEL_MIN_SPEECH, gain, torch.zeros_like(gain)).to(dtype)


def normalise(mel, causal: bool, level_window: float = 0.0):
    """Per-band speech-mean removal of log-mel ``[..., n_mels, M]`` (torch), see the
    module doc; causal: frame j uses only frames 0..j. ``level_window`` (seconds, 0: off)
    also brings each passage of that length to the clip's speech level (``level_gain``):
    the clip-wide mean alone leaves a softly spoken stretch reading as a half-shut mouth."""
    torch = _torch()
    e = mel.mean(-2, keepdim=True)  # [..., 1, M] frame level
    if causal:
        top = torch.cummax(e, dim=-1).values
        w = (e > top - ACTIVE_RANGE).to(mel.dtype)
        mean = torch.cumsum(mel * w, -1) / torch.cumsum(w, -1).clamp_min(1.0)
    else:
        w = (e > e.amax(-1, keepdim=True) - ACTIVE_RANGE).to(mel.dtype)
        mean = (mel * w).sum(-1, keepdim=True) / w.sum(-1, keepdim=True).clamp_min(1.0)
    if level_window > 0:
        mean = mean - level_gain(e, w, causal, level_frames(level_window))
    return torch.clamp(mel - mean, min=CLIP_BELOW) / INPUT_SCALE


def level_frames(level_window: float) -> int:
    """Mel frames (100 per second) of a level window in seconds."""
    return max(1, int(round(float(level_window) * MEL_RATE)))


class RunningNormaliser:
    """``normalise(causal=True, level_window=...)`` for a stream: log-mel rows ``[m, n_mels]``
    (numpy) arrive a few at a time and come back normalised as if the whole stream had
    been passed at once, keeping only the running loudest level, the speech-frame sums and
    (with a level window) the last window's frame levels."""

    def __init__(self, n_mels: int, level_window: float = 0.0):
        self.top, self.sum_mw, self.sum_w = -np.inf, np.zeros(n_mels, np.float64), 0.0
        self.window = level_frames(level_window) if level_window > 0 else 0
        self.sum_ew = 0.0
        self.tail_ew, self.tail_w = np.zeros(0), np.zeros(0)  # the last window - 1 frames' e * w and w

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        if not len(rows):
            return np.zeros((0, rows.shape[1]), np.float32)
        e = rows.mean(1).astype(np.float64)
        top = np.maximum.accumulate(np.maximum(e, self.top))
        w = (e > top - ACTIVE_RANGE).astype(np.float64)
        cs_mw = self.sum_mw + np.cumsum(rows * w[:, None], 0)
        cs_w = self.sum_w + np.cumsum(w)
        mean = cs_mw / np.maximum(cs_w, 1.0)[:, None]
        if self.window:
            ew = e * w
            cs_ew = self.sum_ew + np.cumsum(ew)
            ref = cs_ew / np.maximum(cs_w, 1.0)
            all_ew, all_w = np.concatenate([self.tail_ew, ew]), np.concatenate([self.tail_w, w])
            c_ew, c_w = np.concatenate([[0.0], np.cumsum(all_ew)]), np.concatenate([[0.0], np.cumsum(all_w)])
            hi = len(self.tail_w) + np.arange(1, len(e) + 1)
            lo = np.maximum(hi - self.window, 0)
            count = c_w[hi] - c_w[lo]
            local = (c_ew[hi] - c_ew[lo]) / np.maximum(count, 1.0)
            gain = np.where(count >= LEVEL_MIN_SPEECH, np.clip(ref - local, -LEVEL_RANGE, LEVEL_RANGE), 0.0)
            mean = mean - gain[:, None]
            self.sum_ew = float(cs_ew[-1])
            cut = max(len(all_w) - (self.window - 1), 0)
            self.tail_ew, self.tail_w = all_ew[cut:], all_w[cut:]
        self.top, self.sum_mw, self.sum_w = float(top[-1]), cs_mw[-1], float(cs_w[-1])
        return (np.maximum(rows - mean, CLIP_BELOW) / INPUT_SCALE).astype(np.float32)


def frame_positions(num_frames: int, fps: float) -> np.ndarray:
    """Where video frame i (time i / fps) falls on the 100 Hz mel axis."""
    return np.arange(num_frames, dtype=np.float64) * (MEL_RATE / float(fps))


def at_frames(series, positions: np.ndarray):
    """Linear interpolation of ``series [..., M]`` (torch) at fractional ``positions``;
    positions past the end read the last frame."""
    torch = _torch()
    M = series.shape[-1]
    p = np.clip(positions, 0, M - 1)
    i0 = np.floor(p).astype(np.int64)
    i1 = np.minimum(i0 + 1, M - 1)
    f = torch.as_tensor(p - i0, dtype=series.dtype, device=series.device)
    a = series[..., torch.as_tensor(i0, device=series.device)]
    b = series[..., torch.as_tensor(i1, device=series.device)]
    return a + (b - a) * f


def curves_at(out: dict, positions: np.ndarray) -> dict:
    """Per-frame outputs (torch, batch of one: ``opening``, ``width``, ``viseme_logits``,
    ``embedding``) at fractional ``positions`` -> numpy ``opening [T]`` (not below 0),
    ``width [T]``, ``visemes [T, V]`` (probabilities), ``embedding [T, D]``."""
    torch = _torch()
    with torch.inference_mode():
        op = at_frames(out["opening"][0], positions)
        wd = at_frames(out["width"][0], positions)
        vis = torch.softmax(at_frames(out["viseme_logits"][0], positions), dim=0).T
        emb = at_frames(out["embedding"][0], positions).T
    return {"opening": op.clamp_min(0).numpy().astype(np.float32), "width": wd.numpy().astype(np.float32),
            "visemes": vis.numpy().astype(np.float32), "embedding": emb.numpy().astype(np.float32)}


class FrontEnd:
    """Loaded front end: ``frontend(mel [M, 80], fps, num_frames, causal)`` -> dict of
    numpy arrays at the video frames (``opening [T]``, ``width [T]``, ``visemes [T, V]``,
    ``embedding [T, D]``)."""

    def __init__(self, model, config: FrontEndConfig, meta: dict | None = None, path: Path | None = None):
        self.model = model.eval()
        self.config = config
        self.meta = meta or {}
        self.path = path

    @property
    def lookahead_s(self) -> float:
        return self.config.lookahead_s

    def run_mel(self, mel: np.ndarray, causal: bool = False) -> dict:
        """The 100 Hz outputs (torch tensors, batch of one) of log-mel ``[M, n_mels]``."""
        torch = _torch()
        x = torch.as_tensor(np.ascontiguousarray(np.asarray(mel, np.float32).T))[None]
        with torch.inference_mode():
            return self.model(normalise(x, causal))

    def __call__(self, mel: np.ndarray, fps: float, num_frames: int, causal: bool = False) -> dict:
        return curves_at(self.run_mel(mel, causal), frame_positions(num_frames, fps))


def save_frontend(path, model, config: FrontEndConfig, extra: dict | None = None) -> Path:
    from ..checkpoint import write_checkpoint

    tensors = {k: v.detach().float() for k, v in model.state_dict().items()}
    meta = {"config": json.dumps(asdict(config)), "visemes": json.dumps(list(VISEMES)),
            "extra": json.dumps(extra or {})}
    return write_checkpoint(path, tensors, format=FORMAT, version=FORMAT_VERSION, meta=meta)


_cache = {}


def load_frontend(path=None, *, verify: bool = True) -> FrontEnd:
    """The front end stored at ``path`` (default: the shipped weights, whose SHA-256 must
    equal ``WEIGHTS_SHA256`` unless ``verify`` is False). Raises ``FrontEndError``."""
    from ..checkpoint import read_weights

    default = path is None
    p = DEFAULT_WEIGHTS if default else Path(path)
    key = (str(p), verify)
    if default and key in _cache:
        return _cache[key]
    tensors, meta = read_weights(p, WEIGHTS_SHA256 if default and verify else None, format=FORMAT,
                                 max_version=FORMAT_VERSION, error=FrontEndError, what="lip-sync front end",
                                 max_bytes=64 << 20)
    try:
        config = FrontEndConfig(**json.loads(meta["config"])).check()
        names = json.loads(meta.get("visemes", "[]"))
    except (KeyError, TypeError, ValueError) as exc:
        raise FrontEndError(f"{p}: bad front-end config in the metadata ({exc})") from None
    if tuple(names) != VISEMES:
        raise FrontEndError(f"{p}: viseme classes {names} differ from this version's {list(VISEMES)}")
    model = build_model(config)
    state = model.state_dict()
    missing = sorted(set(state) - set(tensors))
    unexpected = sorted(set(tensors) - set(state))
    wrong = [k for k in state if k in tensors and tuple(tensors[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or wrong:
        raise FrontEndError(f"{p}: tensors do not match the front-end config (missing {missing[:3]}, unexpected "
                            f"{unexpected[:3]}, wrong shapes {wrong[:3]})")
    model.load_state_dict({k: tensors[k].float() for k in state})
    fe = FrontEnd(model, config, json.loads(meta.get("extra", "{}") or "{}"), p)
    if default:
        _cache[key] = fe
    return fe
