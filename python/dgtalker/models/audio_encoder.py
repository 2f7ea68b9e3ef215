"""Speech -> blendshape coefficients.

Input: the log-mel windows of ``dgtalker.audio.features`` (``[T, 2h+1, 80]``, one
window of ±``h`` mel frames, 10 ms each, around every video frame). Output per video
frame: ``c_lip [Kl]`` and the speech-driven part of ``c_exp [Ke]``.

Two stages:

1. **Per frame**: the window is cut to the mel frames the encoder may see (all of it,
   or the past plus ``lookahead_mel`` future frames for the causal variant),
   normalized per mel band with the training clip's statistics, and run through a
   small strided 1-D convolution stack over time -> an embedding ``[E]``.
2. **Across frames** (the smoothing that keeps lips from jittering): the embeddings
   of frames ``t - past .. t + future`` are mixed by one learned temporal
   convolution, then a small MLP gives the coefficients of frame t. At the clip's
   ends the first/last embedding is repeated.

Trained, the lip coefficients a talker's lip target pins (the tracked mouth opening and
width) are calibrated: regression shrinks the prediction of unheard audio towards the
mean, so ``forward`` and ``coefficients_at`` (inference, not training) widen them about
``lip_centre`` by ``lip_gain``, measured on training frames the lip target held back
(``train.identity.fit_lip_calibration``), and keep them within the range the tracked
mouth reached (``lip_low``, ``lip_high``). A new or older encoder has gain 1.
On top of that, a talker can keep the mouth opening's motion steady over each passage
(``steady_opening``, ``TalkerConfig.motion_window``): the calibration's one gain is
measured on the clip's own speech, while softer speech, another voice or another
microphone shrinks or widens the prediction again, passage by passage.

The causal variant (``future`` and ``lookahead_mel`` small) sees at most
``lookahead_seconds()`` of audio after a frame's time: mel frames up to
``lookahead_mel`` hops later, each reaching half an FFT window (16 ms) further, plus
``future`` video frames. Streaming uses it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as Fn
from torch import Tensor, nn

from .. import audio as _audio


@dataclass(frozen=True)
class AudioEncoderConfig:
    k_exp: int = 8
    k_lip: int = 8
    half_window: int = 30           # h of the input windows (0.3 s of context at 100 mel frames/s)
    lookahead_mel: int = 30         # mel frames after the centre the encoder reads (<= half_window)
    past: int = 3                   # video frames of temporal context before ...
    future: int = 3                 # ... and after the frame
    channels: int = 128
    embed: int = 128
    fps: float = 25.0
    frontend: int = 0               # speech front-end channels per mel frame beside the 80 log-mel bands (0: none)
    frontend_lookahead: int = 0     # mel frames the front end reads ahead of the frame it describes
    members: int = 1                # networks of this shape, each trained on its own; their mean is the output

    def __post_init__(self):
        for name in ("k_exp", "k_lip", "half_window", "lookahead_mel", "past", "future", "channels", "embed",
                     "frontend", "frontend_lookahead", "members"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"AudioEncoderConfig.{name} must be a non-negative int, got {v!r}")
        if self.k_exp + self.k_lip < 1:
            raise ValueError("AudioEncoderConfig needs k_exp + k_lip >= 1")
        if self.lookahead_mel > self.half_window:
            raise ValueError(f"lookahead_mel ({self.lookahead_mel}) cannot exceed half_window ({self.half_window})")
        if not (1 <= self.channels <= 1024 and 1 <= self.embed <= 1024 and self.half_window <= 200
                and self.past <= 16 and self.future <= 16 and 1 <= self.members <= 16):
            raise ValueError("AudioEncoderConfig sizes out of range (channels/embed <= 1024, half_window <= 200, "
                             "past/future <= 16, members 1-16)")
        if not (isinstance(self.fps, (int, float)) and math.isfinite(self.fps) and 0 < self.fps <= 240):
            raise ValueError(f"AudioEncoderConfig.fps must be in (0, 240], got {self.fps!r}")

    @property
    def window(self) -> int:
        return 2 * self.half_window + 1

    @property
    def channels_in(self) -> int:
        """Features per mel frame: the 80 log-mel bands and the front end's outputs."""
        return _audio.N_MELS + self.frontend

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "AudioEncoderConfig":
        known = {f.name for f in fields(cls)}
        if not isinstance(d, dict) or set(d) - known:
            raise ValueError(f"audio encoder config must be an object with keys from {sorted(known)}")
        return cls(**d)

    def causal(self, max_lookahead_s: float = 0.2) -> "AudioEncoderConfig":
        """The streaming variant of this config: the largest look-ahead within
        ``max_lookahead_s`` (one future video frame of smoothing, the rest mel frames), one
        member (it learns the main encoder's output, not the target)."""
        future = 1
        budget = max_lookahead_s - future / self.fps - _audio.N_FFT / 2 / _audio.SAMPLE_RATE
        la = int(math.floor(budget * _audio.SAMPLE_RATE / _audio.HOP + 1e-9)) - self.frontend_lookahead
        if la < 0:
            future, la = 0, int(math.floor((max_lookahead_s - _audio.N_FFT / 2 / _audio.SAMPLE_RATE)
                                           * _audio.SAMPLE_RATE / _audio.HOP)) - self.frontend_lookahead
        if la < 0:
            raise ValueError(f"a look-ahead of {max_lookahead_s} s is shorter than the front end's own "
                             f"({self.frontend_lookahead} mel frames)")
        return AudioEncoderConfig(**{**self.to_dict(), "future": future, "lookahead_mel": min(la, self.half_window),
                                     "members": 1})

    def lookahead_seconds(self) -> float:
        """The most audio after a frame's time that can change its coefficients (the
        front end's features of a mel frame read ``frontend_lookahead`` frames further)."""
        return (self.future / self.fps + (self.lookahead_mel + self.frontend_lookahead) * _audio.HOP
                / _audio.SAMPLE_RATE + _audio.N_FFT / 2 / _audio.SAMPLE_RATE)


LIP_BOUND = 1e4  # the uncalibrated range: no bound in practice
STEADY_GAIN = 1.5  # the most steady_opening widens (or 1/STEADY_GAIN narrows) a passage's mouth motion


def local_spread(x: Tensor, frames: int, causal: bool, valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation of ``x [T]`` over each frame's window of ``frames``
    frames: centred on it, or (``causal``) ending at it, so no later frame is read. Windows
    are cut at the clip's ends; ``valid [T]`` (bool) leaves frames out (a window without
    any has mean and spread NaN). Running sums in float64: memory O(T) for any window."""
    if x.dim() != 1 or frames < 1:
        raise ValueError(f"local_spread needs x [T] and frames >= 1, got {list(x.shape)} and {frames}")
    from ..audio.frontend import window_sums

    before = frames - 1 if causal else (frames - 1) // 2
    ok = torch.ones_like(x, dtype=torch.float64) if valid is None else valid.to(torch.float64)
    v = torch.where(ok > 0, x.double(), torch.zeros((), dtype=torch.float64, device=x.device))
    n = window_sums(ok, before, frames)
    mean = window_sums(v, before, frames) / n
    var = (window_sums(v * v, before, frames) / n - mean * mean).clamp_min(0)
    return mean.to(x.dtype), var.sqrt().to(x.dtype)


def steady_opening(c_lip: Tensor, frames: int, spread: float, causal: bool, low=-LIP_BOUND,
                   high=LIP_BOUND) -> Tensor:
    """``c_lip [T, Kl]`` with the first coefficient's (the mouth opening's) motion brought
    to ``spread``: about its mean over each frame's window of ``frames`` frames (centred,
    or ending at the frame: ``causal``), its deviation is scaled by ``spread`` over the
    window's own spread, within ``1 / STEADY_GAIN .. STEADY_GAIN``, and kept within
    ``low .. high``. Where the person's mouth moves with a steady spread while they speak,
    a regression's prediction of unfamiliar speech (softer, another voice or microphone)
    moves less, or more, by passage; the window's mean, and so the timing, stays."""
    if c_lip.shape[0] < 2 or c_lip.shape[1] < 1:
        return c_lip
    x = c_lip[:, 0]
    mean, sd = local_spread(x, frames, causal)
    gain = (spread / sd.clamp_min(1e-6)).clamp(1 / STEADY_GAIN, STEADY_GAIN)
    opening = torch.minimum(torch.maximum(mean + gain * (x - mean), torch.as_tensor(low, dtype=x.dtype)),
                            torch.as_tensor(high, dtype=x.dtype))
    return torch.cat([opening[:, None], c_lip[:, 1:]], 1)


def _build_layers(net: nn.Module, cfg: AudioEncoderConfig, gen: torch.Generator) -> None:
    """Gives ``net`` one encoder network's layers (``convs``, ``flat``, ``temporal``,
    ``head``), initialised from ``gen``."""
    L = cfg.half_window + 1 + cfg.lookahead_mel
    C = cfg.channels
    net.convs = nn.ModuleList([nn.Conv1d(cfg.channels_in, C, 3, padding=1)])
    n = L
    while n > 8:
        net.convs.append(nn.Conv1d(C, C, 3, stride=2, padding=1))
        n = (n - 1) // 2 + 1
    net.flat = nn.Linear(C * n, cfg.embed)
    net.temporal = nn.Conv1d(cfg.embed, cfg.embed, cfg.past + 1 + cfg.future)
    net.head = nn.Sequential(nn.Linear(cfg.embed, cfg.embed), nn.GELU(), nn.Linear(cfg.embed, cfg.k_exp + cfg.k_lip))
    with torch.no_grad():
        for m in (net.convs, net.flat, net.temporal, net.head):
            for p in m.parameters():
                if p.dim() > 1:
                    fan_in = p[0].numel()
                    p.copy_(torch.randn(p.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
                else:
                    p.zero_()
        net.head[-1].weight.mul_(0.1)  # start near zero coefficients: the neutral face


def _embed(net: nn.Module, x: Tensor) -> Tensor:
    """Normalised feature windows ``[B, channels_in, L]`` -> embeddings ``[B, E]`` of one network."""
    for conv in net.convs:
        x = Fn.gelu(conv(x))
    return net.flat(x.flatten(1))


def _coefficients(net: nn.Module, emb: Tensor) -> Tensor:
    """Neighbour embeddings ``[B, past + 1 + future, E]`` -> ``[B, Ke + Kl]`` of one network."""
    return net.head(Fn.gelu(net.temporal(emb.transpose(1, 2)))[..., 0])


class _Member(nn.Module):
    """A further network of an ensemble encoder (the first is the encoder's own layers)."""

    def __init__(self, cfg: AudioEncoderConfig, gen: torch.Generator):
        super().__init__()
        _build_layers(self, cfg, gen)


class AudioEncoder(nn.Module):
    """log-mel windows -> (c_exp, c_lip); see the module docstring. With ``members`` > 1 it
    is an ensemble: that many networks of the same shape from different initial weights,
    each trained on the targets on its own (``from_embeddings(..., members=True)``); the
    output is their mean, which correlates with the tracked mouth better than a member
    does (docs/benchmarks.md)."""

    def __init__(self, config: AudioEncoderConfig | None = None, seed: int = 0):
        super().__init__()
        cfg = config or AudioEncoderConfig()
        self.config = cfg
        gen = torch.Generator().manual_seed(int(seed))  # leaves torch's global RNG alone
        _build_layers(self, cfg, gen)
        self.others = nn.ModuleList([_Member(cfg, gen) for _ in range(cfg.members - 1)])
        self.register_buffer("mel_mean", torch.zeros(cfg.channels_in))
        self.register_buffer("mel_std", torch.ones(cfg.channels_in))
        # the lip calibration (module docstring); identity until training measures it
        self.register_buffer("lip_centre", torch.zeros(cfg.k_lip))
        self.register_buffer("lip_gain", torch.ones(cfg.k_lip))
        self.register_buffer("lip_low", torch.full((cfg.k_lip,), -LIP_BOUND))
        self.register_buffer("lip_high", torch.full((cfg.k_lip,), LIP_BOUND))

    def networks(self) -> list[nn.Module]:
        return [self, *self.others]

    # -- statistics ------------------------------------------------------------------
    @torch.no_grad()
    def set_normalization(self, mel: Tensor) -> None:
        """Per-channel mean and spread of a clip's feature frames ``[M, channels_in]``
        (log-mel bands, then the front end's outputs if any)."""
        mel = torch.as_tensor(mel, dtype=torch.float32)
        self.mel_mean.copy_(mel.mean(0).to(self.mel_mean.device))
        self.mel_std.copy_(mel.std(0).clamp_min(1e-2).to(self.mel_std.device))

    @torch.no_grad()
    def set_lip_calibration(self, centre: Tensor, gain: Tensor, low: Tensor, high: Tensor) -> None:
        """Sets the lip calibration (module docstring), each ``[k_lip]``; coefficients no
        target pins keep gain 1 and the open range."""
        for buf, v in ((self.lip_centre, centre), (self.lip_gain, gain), (self.lip_low, low), (self.lip_high, high)):
            buf.copy_(torch.as_tensor(v, dtype=buf.dtype).to(buf.device))

    def calibrated(self, c_lip: Tensor) -> Tensor:
        """Lip coefficients ``[..., Kl]`` as inference uses them: widened about the centre by
        the gain, within the tracked range."""
        c = self.lip_centre + self.lip_gain * (c_lip - self.lip_centre)
        return torch.minimum(torch.maximum(c, self.lip_low), self.lip_high)

    # -- stages ----------------------------------------------------------------------
    def _check_windows(self, windows: Tensor) -> Tensor:
        cfg = self.config
        C = cfg.channels_in
        if not isinstance(windows, Tensor) or windows.dim() < 3 or windows.shape[-2:] != (cfg.window, C):
            got = list(windows.shape) if isinstance(windows, Tensor) else type(windows).__name__
            raise ValueError(f"windows must be [..., {cfg.window}, {C}] feature windows (Talker.clip_windows; "
                             f"log-mel of dgtalker.audio.features with context {cfg.half_window / 100:g} s"
                             f"{' and the front end' if cfg.frontend else ''}), got {got}")
        return windows

    def frame_embedding(self, windows: Tensor) -> Tensor:
        """``[..., 2h+1, 80]`` -> ``[..., members x E]``, one window at a time (the members'
        embeddings side by side)."""
        cfg = self.config
        windows = self._check_windows(windows)
        lead = windows.shape[:-2]
        L = cfg.half_window + 1 + cfg.lookahead_mel  # the past, the centre and the look-ahead
        x = windows[..., :L, :].reshape(-1, L, cfg.channels_in)
        x = ((x - self.mel_mean) / self.mel_std).transpose(1, 2)  # [B, 80, L]
        x = torch.cat([_embed(net, x) for net in self.networks()], -1)
        return x.reshape(*lead, -1)

    def from_embeddings(self, emb: Tensor, *, members: bool = False) -> tuple[Tensor, Tensor]:
        """``[B, past + 1 + future, members x E]`` embeddings around B frames -> (c_exp [B, Ke],
        c_lip [B, Kl]), uncalibrated (what training fits): the members' mean, or with
        ``members`` each one's ``[members, B, K]`` (each learns the targets on its own)."""
        cfg = self.config
        parts = emb.split(cfg.embed, -1)
        out = torch.stack([_coefficients(net, e) for net, e in zip(self.networks(), parts)])
        if not members:
            out = out.mean(0)
        return out[..., : cfg.k_exp], out[..., cfg.k_exp:]

    def neighbours(self, frames: Tensor, num_frames: int) -> Tensor:
        """Indices ``[B, past + 1 + future]`` of the frames around ``frames``, clamped to the clip."""
        cfg = self.config
        off = torch.arange(-cfg.past, cfg.future + 1, device=frames.device)
        return (frames[:, None] + off[None]).clamp(0, num_frames - 1)

    def forward(self, windows: Tensor) -> tuple[Tensor, Tensor]:
        """All frames of a clip: ``windows [T, 2h+1, 80]`` -> (c_exp [T, Ke], c_lip [T, Kl]), calibrated."""
        windows = self._check_windows(windows)
        if windows.dim() != 3 or windows.shape[0] < 1:
            raise ValueError(f"windows must be [T, {self.config.window}, {self.config.channels_in}] with T >= 1, "
                             f"got {list(windows.shape)}")
        T = windows.shape[0]
        emb = self.frame_embedding(windows)
        idx = self.neighbours(torch.arange(T, device=windows.device), T)
        c_exp, c_lip = self.from_embeddings(emb[idx])
        return c_exp, self.calibrated(c_lip)

    # -- any output rate --------------------------------------------------------------
    def neighbour_times(self, times, t_last: float | None):
        """Times ``[T, past + 1 + future]`` (seconds) of the neighbours whose embeddings the
        temporal stage mixes for frames at ``times``: spaced at the encoder's own (training)
        frame rate whatever the output rate, clamped to ``[0, t_last]`` (the clip's ends,
        as in training; ``t_last`` None: no end yet, e.g. a stream)."""
        import numpy as np

        cfg = self.config
        off = np.arange(-cfg.past, cfg.future + 1) / cfg.fps
        nt = np.asarray(times, np.float64)[:, None] + off[None]
        return np.clip(nt, 0.0, np.inf if t_last is None else t_last)

    def coefficients_at(self, mel, times, t_last: float, *, mel_start: int = 0, mel_limit: int | None = None):
        """``(c_exp [T, Ke], c_lip [T, Kl])`` of frames at ``times`` (seconds, any rate) from
        log-mel frames ``mel [M, 80]`` (absolute frames ``mel_start ..``; frames at or past
        ``mel_limit`` read as silence; ``mel`` may carry the front end's channels too, then
        padded so that no window leaves it: ``Talker.speech_features``). Each neighbour's window is centred on the last mel
        frame at or before its time (``audio.mel_index``), so the look-ahead stays
        ``lookahead_seconds()`` at any fps; at the encoder's own fps this equals ``forward``
        on ``audio.features`` windows (calibrated lips, like it)."""
        import numpy as np

        nt = self.neighbour_times(times, t_last)
        centres = _audio.mel_index(nt)
        uniq, inv = np.unique(centres, return_inverse=True)
        win = _audio.windows_at(mel, uniq, self.config.half_window, mel_start, mel_limit)
        dev = self.mel_mean.device
        emb = self.frame_embedding(torch.from_numpy(win).to(dev))
        c_exp, c_lip = self.from_embeddings(emb[torch.from_numpy(inv.reshape(centres.shape)).to(dev)])
        return c_exp, self.calibrated(c_lip)

    def lookahead_seconds(self) -> float:
        return self.config.lookahead_seconds()
