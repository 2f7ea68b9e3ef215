"""``dgtalker.lipsync``'s model: the speech encoder's features -> what the mouth does.

Small temporal convolution heads read the features of ``audio.speech_encoder`` (the
first blocks of Whisper base, 50 frames/s; the shipped heads their 64 leading principal
directions, ``HeadConfig.components``): the offline heads read the whole clip's
features, the causal heads the causal ones (banded attention, level so far) and at most
``HeadConfig.ahead`` future frames. Each mode may hold several heads trained from their
own seeds (``HeadConfig.members``), whose outputs are averaged. Each mode gives per
frame the mouth opening and width (face-mesh unit, as ``audio.frontend``), viseme logits
and an ``embed``-dimensional embedding. Trained only on synthetic speech (``python -m
dgtalker.audio.lipsync_train``); the weights' SHA-256 is recorded in ``WEIGHTS_SHA256``
and checked on load.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .frontend import OPENING_MEAN, OPENING_SCALE, VISEMES, WIDTH_MEAN, WIDTH_SCALE, conv_layers, curves_at
from .speech_encoder import RATE, SAMPLE_RATE, SpeechEncoder, load_speech_encoder

FORMAT = "dgtalker-lipsync"
FORMAT_VERSION = 1
DEFAULT_WEIGHTS = Path(__file__).resolve().parents[1] / "models" / "assets" / "lipsync.safetensors"
# Encoder frames (0.5 s) of silence read before and after the audio, their outputs dropped:
# the heads learnt the mouth at rest from pauses of silence, never from the encoder's zero
# padding at a clip's edges (without them a silent clip's first frame opened to 0.026)
EDGE_FRAMES = 25
WEIGHTS_SHA256 = "6446d0abd98848e5677e91f740a320367b41868ddc3abceeb85a9460021b8cd1"
MODES = ("offline", "causal")


class LipSyncModelError(ValueError):
    """A missing, corrupt or mismatched lip-sync model file."""


@dataclass
class HeadConfig:
    channels: int = 128
    dilations: list = field(default_factory=lambda: [1, 2, 4, 1])
    ahead: list = field(default_factory=lambda: [1, 2, 4, 1])  # future frames each block's convolution reads
    embed: int = 32
    n_visemes: int = len(VISEMES)
    components: int = 0   # the features' leading principal directions the head reads (0: all the features)
    members: int = 1      # heads of this shape trained with their own seeds; the outputs are their mean

    def check(self) -> "HeadConfig":
        if len(self.dilations) != len(self.ahead) or not all(0 <= r <= 2 * d for d, r in zip(self.dilations, self.ahead)):
            raise ValueError(f"each block reads 0..2*dilation future frames: dilations {self.dilations}, "
                             f"ahead {self.ahead}")
        if not isinstance(self.components, int) or self.components < 0:
            raise ValueError(f"components must be a whole number >= 0, got {self.components!r}")
        if not isinstance(self.members, int) or isinstance(self.members, bool) or not 1 <= self.members <= 16:
            raise ValueError(f"members must be a whole number in 1..16, got {self.members!r}")
        return self

    @property
    def lookahead_frames(self) -> int:
        return int(sum(self.ahead))


def build_head(config: HeadConfig, width: int):
    """The head (torch.nn.Module): ``head(features [B, T, width])`` -> dict of ``opening
    [B, T]``, ``width [B, T]``, ``viseme_logits [B, V, T]``, ``embedding [B, D, T]``.
    With ``config.components`` k > 0 the standardised features are first projected on k
    directions (``projection [width, k]``, set by training: ``principal_projection``).
    With ``config.members`` m > 1 it holds m such heads (``members.i``) and gives the mean of
    their opening, width and viseme logits, and the first member's embedding (the members'
    embeddings are not aligned with each other)."""
    import torch

    nn, F = torch.nn, torch.nn.functional

    _, ChannelNorm, Block = conv_layers()

    class Head(nn.Module):
        def __init__(self, cfg):
            super().__init__()
            C = cfg.channels
            self.register_buffer("feature_mean", torch.zeros(width))
            self.register_buffer("feature_std", torch.ones(width))
            if cfg.components:
                self.register_buffer("projection", torch.eye(width, cfg.components))
            self.stem = nn.Conv1d(cfg.components or width, C, 1)
            self.blocks = nn.ModuleList(Block(C, d, r) for d, r in zip(cfg.dilations, cfg.ahead))
            self.norm = ChannelNorm(C)
            self.embed = nn.Conv1d(C, cfg.embed, 1)
            self.out = nn.Conv1d(cfg.embed, 2 + cfg.n_visemes, 1)

        def forward(self, features, dropout: float = 0.0):
            x = (features - self.feature_mean) / self.feature_std
            if hasattr(self, "projection"):
                x = x @ self.projection
            x = x.transpose(1, 2)
            h = self.stem(F.dropout(x, dropout, self.training))
            for b in self.blocks:
                h = b(h)
            e = self.embed(self.norm(h))
            y = self.out(F.gelu(e))
            return {"opening": y[:, 0] * OPENING_SCALE + OPENING_MEAN, "width": y[:, 1] * WIDTH_SCALE + WIDTH_MEAN,
                    "viseme_logits": y[:, 2:], "embedding": e}

    class Ensemble(nn.Module):
        def __init__(self, cfg):
            super().__init__()
            self.members = nn.ModuleList(Head(cfg) for _ in range(cfg.members))

        def forward(self, features, dropout: float = 0.0):
            ys = [m(features, dropout) for m in self.members]
            mean = {k: torch.stack([y[k] for y in ys]).mean(0) for k in ("opening", "width", "viseme_logits")}
            return {**mean, "embedding": ys[0]["embedding"]}

    config.check()
    return Head(config) if config.members == 1 else Ensemble(config)


def principal_projection(standardised: np.ndarray, k: int) -> np.ndarray:
    """``[width, k]``: the k leading principal directions of standardised features ``[N,
    width]``, each divided by its spread, so the projected features have unit variance.
    Heads trained on synthetic speech through the leading directions alone follow real
    mouths more closely than heads reading every feature (docs/lipsync.md)."""
    z = standardised - standardised.mean(0)
    _, s, vt = np.linalg.svd(z, full_matrices=False)
    return (vt[:k].T / (s[:k] / np.sqrt(len(z)) + 1e-6)).astype(np.float32)


class LipSyncModel:
    """Loaded model: ``model(samples_16k, fps, num_frames, causal)`` -> dict of numpy
    arrays at the video frames (``opening [T]``, ``width [T]``, ``visemes [T, V]``,
    ``embedding [T, D]``)."""

    def __init__(self, encoder: SpeechEncoder, heads: dict, configs: dict, meta=None, path: Path | None = None):
        self.encoder = encoder
        self.heads = {m: h.eval() for m, h in heads.items()}
        self.configs = configs
        self.meta = meta or {}
        self.path = path

    @property
    def embed(self) -> int:
        return self.configs["offline"].embed

    @property
    def lookahead_s(self) -> float:
        """How far past a frame's time its causal outputs read audio: the encoder's reach,
        the causal head's future frames, and one frame more where a video frame falls
        between two of them (16 kHz input; resampling adds its own few samples)."""
        return self.encoder.config.reach_s + (self.configs["causal"].lookahead_frames + 1) / RATE

    def outputs(self, samples, causal: bool = False) -> dict:
        """The 50 Hz outputs (torch, batch of one) of 16 kHz samples, frame j at time j / RATE."""
        import torch

        mode = "causal" if causal else "offline"
        pad = EDGE_FRAMES * SAMPLE_RATE // RATE
        x = np.pad(np.asarray(samples, np.float32), (pad, pad))
        with torch.inference_mode():
            y = self.heads[mode](self.encoder(x, causal)[None])
        end = max(y["opening"].shape[-1] - EDGE_FRAMES, EDGE_FRAMES + 1)  # audio under one frame (20 ms) keeps one
        return {k: v[..., EDGE_FRAMES:end] for k, v in y.items()}

    def __call__(self, samples, fps: float, num_frames: int, causal: bool = False) -> dict:
        return curves_at(self.outputs(samples, causal), np.arange(num_frames, dtype=np.float64) * (RATE / float(fps)))


def save_lipsync(path, heads: dict, configs: dict, extra: dict | None = None) -> Path:
    from ..checkpoint import write_checkpoint

    tensors = {f"{m}.{k}": v.detach().float() for m in MODES for k, v in heads[m].state_dict().items()}
    meta = {"config": json.dumps({m: asdict(configs[m]) for m in MODES}), "visemes": json.dumps(list(VISEMES)),
            "extra": json.dumps(extra or {})}
    return write_checkpoint(path, tensors, format=FORMAT, version=FORMAT_VERSION, meta=meta)


_cache = {}


def load_lipsync(path=None, *, verify: bool = True, encoder=None) -> LipSyncModel:
    """The model stored at ``path`` (default: the shipped one, whose SHA-256 must equal
    ``WEIGHTS_SHA256`` unless ``verify`` is False) over ``encoder``, a loaded
    ``SpeechEncoder`` (default: the shipped one; another must give the features the heads
    were trained on, as one distilled by ``audio.speech_distill`` does). Raises
    ``LipSyncModelError`` (or the encoder's ``SpeechEncoderError``)."""
    from ..checkpoint import read_weights

    default = path is None
    p = DEFAULT_WEIGHTS if default else Path(path)
    # another encoder is known by its identity, which the cached model keeps alive
    key = (str(p), verify, None if encoder is None else id(encoder))
    if default and key in _cache:
        return _cache[key]
    tensors, meta = read_weights(p, WEIGHTS_SHA256 if path is None and verify else None, format=FORMAT,
                                 max_version=FORMAT_VERSION, error=LipSyncModelError, what="lip-sync model",
                                 max_bytes=64 << 20)
    try:
        configs = {m: HeadConfig(**c).check() for m, c in json.loads(meta["config"]).items()}
        names = json.loads(meta.get("visemes", "[]"))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise LipSyncModelError(f"{p}: bad lip-sync config in the metadata ({exc})") from None
    if tuple(names) != VISEMES or set(configs) != set(MODES):
        raise LipSyncModelError(f"{p}: viseme classes {names} or heads {sorted(configs)} differ from this "
                                f"version's {list(VISEMES)}, {list(MODES)}")
    enc = load_speech_encoder() if encoder is None else encoder
    heads = {}
    for m in MODES:
        head = build_head(configs[m], enc.config.width)
        state = head.state_dict()
        mine = {k[len(m) + 1:]: v for k, v in tensors.items() if k.startswith(m + ".")}
        if set(mine) != set(state) or any(tuple(mine[k].shape) != tuple(state[k].shape) for k in state):
            raise LipSyncModelError(f"{p}: the {m} head's tensors do not match its config or the speech encoder "
                                    f"({enc.config.width} features)")
        head.load_state_dict({k: mine[k].float() for k in state})
        heads[m] = head
    model = LipSyncModel(enc, heads, configs, json.loads(meta.get("extra", "{}") or "{}"), p)
    if default:
        _cache[key] = model
    return model
