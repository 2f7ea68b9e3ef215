"""A trained talking identity: ``Talker``.

A talker is the prior's generator tuned to one person plus what drives it:

    w = w_can + (c_exp * s_exp) @ B_exp + (c_lip * s_lip) @ B_lip      (compose_latent kernel)
      -> styles -> synthesis -> decode kernel -> Gaussians -> rasterizer

- ``w_can [D]``: the identity's anchor latent (found by inversion, then trained);
- ``blendshapes``: orthonormal ``B_exp [Ke, D]`` (upper face) and ``B_lip [Kl, D]``
  (lips, jaw, mouth) with per-component scales (``dgtalker.models.blendshapes``);
- ``encoder``: speech windows -> ``c_lip`` and the speech-driven part of ``c_exp``
  (two-sided smoothing); ``causal_encoder``: the same with at most
  ``causal_encoder.lookahead_seconds()`` (<= 0.2 s) of look-ahead, for streaming;
- ``residual_track [T, Ke]``: the learned per-frame expression residual of the
  training clip (gaze, brow motion that speech does not determine). At inference
  ``c_exp = encoder(speech) + residual``; the residual is zero (the clip's mean
  expression), a seeded excerpt of this track (``sample_expression``: natural brow
  motion and blinks at the clip's own times and rates, different per seed), or set
  by the caller;
- the eyelid layer: ``blink_map [14 G, M_eye]``, a learned offset of the generator's
  raw maps on the template's eye texels, added ``b`` times per frame (``b`` in
  [0, 1], 1 closes both eyes) before the decode kernel. Blinks are too rare and too
  small for the latent blendshapes to learn; here each training frame's ``b`` is
  measured from the clip's eyelid landmarks (``blink_track [T]``), and the map learns
  what a closed eye looks like from those frames;
- the lip layer: ``lip_map [4, 14 G, M_mouth]``, learned raw-map offsets on the mouth
  texels, added per frame in proportion to the positive and negative parts of the two
  pinned lip coefficients (the tracked opening and width), beside ``B_lip``'s latent
  path, whose rendered opening saturates;
- the torso: template Gaussians of the shoulders follow a fixed *body camera*
  (the clip's mean camera), those of the head follow the head's camera, and the
  neck blends between the two by height (linear blend skinning), so a turning head
  does not swing the shoulders or tear the neck;
- ``background [H, W, 3]``: the plate estimated from the clip's pixels outside the
  foreground mask; renders are composited over it.

Checkpoints: one safetensors file (``save_talker`` / ``load_talker``), format
``dgtalker-talker``, with the tuned generator, everything above, the configs and what
the talker was trained on in its metadata. Never a pickle.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as Fn
from torch import Tensor, nn

from .models.audio_encoder import AudioEncoder, AudioEncoderConfig, steady_opening
from .models.blendshapes import Blendshapes

FORMAT = "dgtalker-talker"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class TalkerConfig:
    k_exp: int = 8
    k_lip: int = 8
    width: int = 512                 # the clip's frame size (background plate, default camera)
    height: int = 512
    fps: float = 25.0
    encoder: dict | None = None      # AudioEncoderConfig overrides (k_exp/k_lip/fps come from here)
    frontend: dict | None = None     # the speech front end's config (dgtalker.audio.frontend) if the encoder reads it
    max_lookahead_s: float = 0.2     # the causal encoder's bound
    mouth_interior: bool = False     # teeth, tongue and cavity on a jaw driven by c_lip[0] (dgtalker.models.mouth)
    normalised_mel: bool = False     # the encoders read the log-mel as the front end does (per-band speech mean
                                     # removed, audio.frontend.normalise): no microphone or level offset
    level_window: float = 0.0        # seconds: speech the talker is driven by is read passage by passage (this
                                     # long) at its own speech level (audio.frontend.level_gain; 0: the whole
                                     # clip's level only); its training clip was read at the clip's level
    motion_window: float = 0.0       # seconds: over each passage this long, the mouth opening moves as much as
                                     # the person's does (lip_motion; audio_encoder.steady_opening; 0: off)
    lip_motion: float = 0.0          # the person's: the tracked opening's typical spread over motion_window, in
                                     # the first lip coefficient's unit (training measures it; 0: off)

    def __post_init__(self):
        for name in ("k_exp", "k_lip", "width", "height"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < (0 if name.startswith("k_") else 1):
                raise ValueError(f"TalkerConfig.{name} must be a {'non-negative' if name.startswith('k_') else 'positive'} "
                                 f"int, got {v!r}")
        if self.k_exp + self.k_lip < 1 or self.k_exp + self.k_lip > 256:
            raise ValueError(f"TalkerConfig needs 1 <= k_exp + k_lip <= 256, got {self.k_exp} + {self.k_lip}")
        if self.width > 4096 or self.height > 4096:
            raise ValueError(f"TalkerConfig frame size must be <= 4096, got {self.width}x{self.height}")
        if not (isinstance(self.fps, (int, float)) and math.isfinite(self.fps) and 0 < self.fps <= 240):
            raise ValueError(f"TalkerConfig.fps must be in (0, 240], got {self.fps!r}")
        if not 0 < self.max_lookahead_s <= 1.0:
            raise ValueError(f"TalkerConfig.max_lookahead_s must be in (0, 1], got {self.max_lookahead_s!r}")
        if self.mouth_interior and self.k_lip < 1:
            raise ValueError("TalkerConfig.mouth_interior needs k_lip >= 1: its jaw follows the first lip coefficient")
        for name, top, unit in (("level_window", 60, "seconds"), ("motion_window", 60, "seconds"),
                                ("lip_motion", 100, "a spread")):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 <= v <= top):
                raise ValueError(f"TalkerConfig.{name} must be {unit} in [0, {top}], got {v!r}")
        if self.level_window and self.frontend is None:
            raise ValueError("TalkerConfig.level_window needs a speech front end (frontend): it is part of the "
                             "front end's normalisation")
        if (self.motion_window or self.lip_motion) and self.k_lip < 1:
            raise ValueError("TalkerConfig.motion_window and lip_motion need k_lip >= 1: they steady the first lip "
                             "coefficient, the mouth opening")
        if self.normalised_mel and self.frontend is None:
            raise ValueError("TalkerConfig.normalised_mel needs a speech front end (frontend): its normalisation "
                             "is the front end's")

    def frontend_config(self):
        if self.frontend is None:
            return None
        from .audio.frontend import FrontEndConfig

        return FrontEndConfig(**self.frontend).check()

    def encoder_config(self) -> AudioEncoderConfig:
        fe = self.frontend_config()
        extra = {} if fe is None else {"frontend": fe.embed + 2, "frontend_lookahead": fe.lookahead_frames}
        return AudioEncoderConfig(**{**(self.encoder or {}), "k_exp": self.k_exp, "k_lip": self.k_lip,
                                     "fps": float(self.fps), **extra})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TalkerConfig":
        known = {f.name for f in fields(cls)}
        if not isinstance(d, dict) or set(d) - known:
            raise ValueError(f"talker config must be an object with keys from {sorted(known)}")
        return cls(**d)


def normalise_speech(mel, causal: bool, level_window: float = 0.0):
    """Log-mel frames ``[M, 80]`` (numpy) as the speech front end reads them
    (``audio.frontend.normalise``)."""
    import numpy as np

    from .audio.frontend import normalise

    x = torch.as_tensor(np.ascontiguousarray(np.asarray(mel, np.float32).T))[None]
    return normalise(x, causal, level_window)[0].T.numpy()


def padding_silence(pad: int):
    """``(raw, normalised)`` rows ``[pad, 80]`` of the silence a clip is padded with. The
    speech is normalised before it is padded, so the padding never counts as speech in
    the running statistics of a causal normalisation (it would, at a stream's start)."""
    import numpy as np

    from . import audio as A
    from .audio.frontend import CLIP_BELOW, INPUT_SCALE

    return (np.full((pad, A.N_MELS), A.SILENCE_VALUE, np.float32),
            np.full((pad, A.N_MELS), CLIP_BELOW / INPUT_SCALE, np.float32))


def neck_skin_weights(generator) -> Tensor:
    """Per Gaussian ``[N]``: 1 for the shoulders (posed by the body camera), 0 for the
    head (posed by the head camera), a smooth ramp up the neck. From the template's
    UV rows, whose bands are torso, neck, head from the bottom (models/template.py)."""
    from .models.template import _band_rows

    R, G = generator.config.resolution, generator.config.gaussians_per_texel
    (_, _), (n0, nn_), (_, _) = _band_rows(R)
    row = (generator.template_texel_index // R).float()
    t = ((row + 0.5 - n0) / nn_).clamp(0, 1)  # 0 at the bottom of the neck band, 1 at its top
    w = 1 - t * t * (3 - 2 * t)               # smoothstep: shoulders 1, head 0
    return w.repeat_interleave(G)


# the template's eye region (head frame, metres): the corpus puts the eye centres at
# |x| 2.9-3.4 cm, y 1.4-2.2 cm (radius 1.2 cm) and the brows from y 3.8 cm
EYE_X, EYE_Y, EYE_FRONT_Z, EYE_RAMP = (0.007, 0.056), (-0.002, 0.036), 0.03, 0.004
# the mouth region: the corpus' mouth corners at |x| 2.5 cm, y -5.2 cm, the nose base near
# -3.5 cm; down to the chin, which drops with the jaw. Its |x| range starts a ramp below 0,
# so the window is 1 across the midline, where the lips part most
MOUTH_X, MOUTH_Y, MOUTH_FRONT_Z, MOUTH_RAMP = (-0.01, 0.048), (-0.100, -0.030), 0.03, 0.006
# the lip layer reads the pinned lip coefficients (tracked opening and width)
LIP_LAYER_INPUTS = 2


def template_region(generator, abs_x, y_range, front_z, ramp) -> tuple[Tensor, Tensor]:
    """``(texels [M], weight [M])``: flat UV indices of the template texels in a box of the
    head frame (``|x|`` within ``abs_x``, ``y`` within ``y_range``, ``z > front_z``) and a
    window weight that is 1 inside it and falls smoothly to 0 over its last ``ramp``
    metres, so a layer on those texels leaves no seam."""
    x, y, z = generator.template_position.unbind(-1)

    def inside(v, lo, hi):  # 0 outside [lo, hi], rising to 1 over `ramp` inside it
        t = torch.minimum(v - lo, hi - v).div(ramp).clamp(0, 1)
        return t * t * (3 - 2 * t)

    w = inside(x.abs(), *abs_x) * inside(y, *y_range) * (z > front_z)
    keep = w > 0
    return generator.template_texel_index[keep].clone(), w[keep].float()


def eye_region(generator) -> tuple[Tensor, Tensor]:
    """The texels of the eyelid layer (``template_region``): around both eye sockets."""
    return template_region(generator, EYE_X, EYE_Y, EYE_FRONT_Z, EYE_RAMP)


def mouth_region(generator) -> tuple[Tensor, Tensor]:
    """The texels of the lip layer (``template_region``): lips, mouth corners and chin."""
    return template_region(generator, MOUTH_X, MOUTH_Y, MOUTH_FRONT_Z, MOUTH_RAMP)


def add_on_texels(raw: Tensor, texels: Tensor, offset: Tensor) -> Tensor:
    """Raw maps ``[F, C, R, R]`` plus ``offset [F, C, M]`` on the flat UV ``texels [M]`` of a
    region (the eyelid and lip layers): only those texels are touched, no full-size map
    of zeros is built."""
    F, C, R, _ = raw.shape
    return raw.reshape(F, C, R * R).index_add(2, texels, offset).view(F, C, R, R)


def lip_layer_inputs(c_lip: Tensor) -> Tensor:
    """``[F, 2 k]`` of lip coefficients ``[F, Kl]``: the positive and negative parts of
    the first ``k`` (the pinned opening and width), so wider and narrower than the
    clip's mean mouth each get their own map."""
    c = c_lip[:, :LIP_LAYER_INPUTS].float()
    return torch.cat([c.clamp_min(0), (-c).clamp_min(0)], 1)


def _quat_mul(a: Tensor, b: Tensor) -> Tensor:
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
                        aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw], -1)


def _quat_from_rotation(Rm: Tensor) -> Tensor:
    """Unit quaternions (w, x, y, z) of rotation matrices ``[..., 3, 3]`` near the identity."""
    w = torch.sqrt((1 + Rm[..., 0, 0] + Rm[..., 1, 1] + Rm[..., 2, 2]).clamp_min(1e-8)) / 2
    x = (Rm[..., 2, 1] - Rm[..., 1, 2]) / (4 * w)
    y = (Rm[..., 0, 2] - Rm[..., 2, 0]) / (4 * w)
    z = (Rm[..., 1, 0] - Rm[..., 0, 1]) / (4 * w)
    return Fn.normalize(torch.stack([w, x, y, z], -1), dim=-1)


def rigid_motion(params: Tensor) -> Tensor:
    """``[F, 4, 4]`` rigid motions of the head frame from ``params [F, 6]``: a rotation
    vector (radians) about the head's origin, then a translation (metres)."""
    rvec, t = params[:, :3], params[:, 3:]
    angle = rvec.norm(dim=1, keepdim=True).clamp_min(1e-12)
    k = rvec / angle
    zero = torch.zeros_like(k[:, 0])
    cross = torch.stack([zero, -k[:, 2], k[:, 1], k[:, 2], zero, -k[:, 0], -k[:, 1], k[:, 0], zero], 1).view(-1, 3, 3)
    sin, cos = angle.sin()[..., None], angle.cos()[..., None]
    eye3 = torch.eye(3, dtype=params.dtype, device=params.device)
    out = torch.eye(4, dtype=params.dtype, device=params.device).repeat(len(params), 1, 1)
    out[:, :3, :3] = eye3 + sin * cross + (1 - cos) * cross @ cross
    out[:, :3, 3] = t
    return out


def skin(means: Tensor, quats: Tensor, weight: Tensor, body: Tensor | None) -> tuple[Tensor, Tensor]:
    """Poses the torso: ``body [F, 4, 4]`` moves the shoulders (weight 1) within the head
    frame; the neck blends linearly. ``None`` (or identity) leaves everything in place."""
    if body is None:
        return means, quats
    Rm, t = body[:, None, :3, :3], body[:, None, :3, 3]
    moved = (Rm @ means[..., None])[..., 0] + t
    wgt = weight[None, :, None]
    means = means + wgt * (moved - means)
    q_body = _quat_from_rotation(body[:, :3, :3])[:, None].expand_as(quats)
    quats = Fn.normalize(quats + wgt * (_quat_mul(q_body, quats) - quats), dim=-1)
    return means, quats


def body_transforms(w2c: Tensor, body_w2c: Tensor) -> Tensor:
    """``inv(w2c_f) @ body_w2c`` for cameras ``[F, 4, 4]``: where the torso sits in the head
    frame when the head is seen by w2c_f and the body by the body camera (``[4, 4]``, or one
    per frame)."""
    return torch.linalg.inv(w2c.double()).float() @ body_w2c.to(w2c)


def mean_camera(w2c: Tensor) -> Tensor:
    """The rigid mean of cameras ``[F, 4, 4]``: the rotation nearest the mean rotation
    matrix (SVD projection) and the mean camera centre."""
    w2c = torch.as_tensor(w2c, dtype=torch.float64)
    U, _, Vh = torch.linalg.svd(w2c[:, :3, :3].mean(0))
    Rm = U @ Vh
    if torch.det(Rm) < 0:
        U[:, -1] *= -1
        Rm = U @ Vh
    centres = -(w2c[:, :3, :3].transpose(1, 2) @ w2c[:, :3, 3:])[..., 0]
    out = torch.eye(4, dtype=torch.float64)
    out[:3, :3] = Rm
    out[:3, 3] = -Rm @ centres.mean(0)
    return out.float()


class Talker(nn.Module):
    """A trained identity; see the module docstring. Build one with ``dgtalker train``
    (``dgtalker.train.identity``) and load it with ``load_talker``."""

    def __init__(self, generator, config: TalkerConfig | None = None, *, seed: int = 0, residual_frames: int = 1):
        super().__init__()
        cfg = config or TalkerConfig()
        self.config = cfg
        self.generator = generator
        D = generator.config.w_dim
        self.w_can = nn.Parameter(generator.mean_w().detach().clone().float())
        self.blendshapes = Blendshapes(D, cfg.k_exp, cfg.k_lip, seed=seed)
        enc = cfg.encoder_config()
        fe = cfg.frontend_config()
        if fe is not None:
            # the speech front end (dgtalker.lipsync's network) as a part of the talker, so the
            # file is whole; its per-mel-frame outputs are extra input channels of the encoders
            from .audio.frontend import build_model

            self.frontend = build_model(fe)
        else:
            self.frontend = None
        self.encoder = AudioEncoder(enc, seed=seed)
        self.causal_encoder = AudioEncoder(enc.causal(cfg.max_lookahead_s), seed=seed + 1)
        self.residual_track = nn.Parameter(torch.zeros(max(1, int(residual_frames)), cfg.k_exp))
        texels, weight = eye_region(generator)
        self.register_buffer("eye_texels", texels, persistent=False)
        self.register_buffer("eye_weight", weight, persistent=False)
        self.blink_map = nn.Parameter(torch.zeros(generator.output_bias.shape[0], texels.numel()))
        texels, weight = mouth_region(generator)
        self.register_buffer("mouth_texels", texels, persistent=False)
        self.register_buffer("mouth_weight", weight, persistent=False)
        self.lip_map = nn.Parameter(torch.zeros(2 * min(LIP_LAYER_INPUTS, cfg.k_lip), generator.output_bias.shape[0],
                                                texels.numel()))
        # the training clip's blink amount per frame, from its eyelid landmarks (zeros without them)
        self.register_buffer("blink_track", torch.zeros(max(1, int(residual_frames))))
        # which clip frames the talker was trained on (1) and which it never saw (0: held-out
        # frames, whose residual codes are untrained): sampled expressions and blinks come
        # from training frames only
        self.register_buffer("train_mask", torch.ones(max(1, int(residual_frames)), dtype=torch.bool))
        # the training clip's coefficient statistics ([c_exp + residual, c_lip]): what
        # "a typical motion of this component" is (blendshape sheets, disentanglement)
        self.register_buffer("coef_mean", torch.zeros(cfg.k_exp + cfg.k_lip))
        self.register_buffer("coef_std", torch.ones(cfg.k_exp + cfg.k_lip))
        self.register_buffer("background", torch.ones(cfg.height, cfg.width, 3))
        self.register_buffer("body_w2c", torch.eye(4))
        self.register_buffer("default_w2c", torch.eye(4))
        self.register_buffer("default_K", torch.eye(3))
        self.register_buffer("skin_weight", neck_skin_weights(generator), persistent=False)
        if cfg.mouth_interior:
            from .models.mouth import MouthInterior

            self.mouth = MouthInterior(generator.template_position.detach().float().cpu(),
                                       generator.config.gaussians_per_texel)
        else:
            self.mouth = None
        self.source: dict = {}
        self._fast_synthesis = None  # a torch.compile'd synthesis (Talker.fast), not a submodule

    def fast(self, compile: bool = False) -> "Talker":
        """Inference speed on a GPU (no effect on the CPU): the synthesis network's
        weights in channels-last memory, cuDNN's fast layout (load_talker does this on
        CUDA; synthesis 2.8x faster at B = 32 in bf16 on an H200), and with
        ``compile=True`` the network compiled by ``torch.compile`` for bf16 inference
        (``amp=True`` paths; 7x; about 17 s of compiling per batch size). Values
        agree to bf16 precision. Returns ``self``."""
        if self.device.type != "cuda":
            return self
        self.generator.synthesis.to(memory_format=torch.channels_last)
        if compile:
            # object.__setattr__: a compiled module must not become a submodule (checkpoint keys)
            object.__setattr__(self, "_fast_synthesis", torch.compile(self.generator.synthesis, dynamic=False))
        return self

    # -- coefficients ------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.w_can.device

    def coefficients(self, windows: Tensor, *, causal: bool = False) -> tuple[Tensor, Tensor]:
        """Speech-driven ``(c_exp [T, Ke], c_lip [T, Kl])`` of a clip's windows ``[T, 2h+1, C]``
        (``clip_windows``)."""
        enc = self.causal_encoder if causal else self.encoder
        return enc(windows.to(self.device, torch.float32))

    def steady_frames(self, fps: float) -> int:
        """Frames at ``fps`` in the steady mouth motion's window (``steady_lips``); 0 when the
        talker has none."""
        cfg = self.config
        if not (cfg.motion_window > 0 and cfg.lip_motion > 0):
            return 0
        return max(1, int(round(cfg.motion_window * float(fps))))

    def steady_lips(self, c_lip: Tensor, fps: float, *, causal: bool = False) -> Tensor:
        """Consecutive frames' lip coefficients ``[T, Kl]`` at ``fps`` (as the encoders give
        them) with the mouth opening's motion kept at the person's over each passage of
        ``config.motion_window`` seconds (``audio_encoder.steady_opening``; centred, or
        ``causal``: the window ends at the frame); unchanged when the talker has none."""
        frames = self.steady_frames(fps)
        if not frames:
            return c_lip
        enc = self.causal_encoder if causal else self.encoder
        return steady_opening(c_lip, frames, self.config.lip_motion, causal, enc.lip_low[0], enc.lip_high[0])

    @torch.no_grad()
    def speech_features(self, mel, *, causal: bool = False, level_window: float | None = None):
        """``(features [pad + M + pad, C], start)``: log-mel frames ``[M, 80]`` padded with
        silence by the encoder's half window at both ends (``start = -pad``: the absolute
        index of the first row), beside the speech front end's per-frame outputs on them
        (its embedding, mouth opening and width). The front end reads the log-mel with each
        band's speech mean removed (causal: by what came before, as a stream has it) and,
        with a ``level_window`` (default: the talker's ``config.level_window``), each
        passage brought to the speech's own level; so do the encoders where
        ``config.normalised_mel``, else they read it as it is. Without a front end: the
        log-mel itself, ``start = 0``."""
        import numpy as np

        mel = np.asarray(mel, np.float32)
        if self.frontend is None:
            return mel, 0
        pad = self.encoder.config.half_window
        raw_silence, normed_silence = padding_silence(pad)
        level = self.config.level_window if level_window is None else level_window
        normed = normalise_speech(mel, causal, level)
        normed = np.concatenate([normed_silence, normed, normed_silence])
        padded = normed if self.config.normalised_mel else np.concatenate([raw_silence, mel, raw_silence])
        return np.concatenate([padded, self.frontend_channels(normed)], 1), -pad

    @torch.no_grad()
    def frontend_channels(self, normed):
        """The front end's embedding, mouth opening and width ``[M, embed + 2]`` of
        normalised log-mel frames ``[M, 80]`` (``audio.frontend.normalise``)."""
        import numpy as np

        x = torch.as_tensor(np.ascontiguousarray(np.asarray(normed, np.float32).T))[None].to(self.device)
        out = self.frontend(x)
        return torch.cat([out["embedding"][0], out["opening"], out["width"]], 0).T.float().cpu().numpy()

    def clip_windows(self, mel, num_frames: int, fps: float, *, causal: bool = False) -> Tensor:
        """Feature windows ``[num_frames, 2h+1, C]`` of frames at ``i / fps`` of a clip's
        log-mel ``[M, 80]`` (each centred on the last mel frame at or before its time: at
        ``audio.features``'s windows, plus the front end's channels)."""
        return self.windows_of(*self.speech_features(mel, causal=causal), num_frames, fps)

    def windows_of(self, features, start: int, num_frames: int, fps: float) -> Tensor:
        """``clip_windows`` of features already made (``speech_features``'s pair)."""
        import numpy as np

        from . import audio as A

        centres = A.mel_index(np.arange(num_frames) / float(fps))
        return torch.from_numpy(A.windows_at(features, centres, self.encoder.config.half_window, start))

    def sample_expression(self, num_frames: int, seed: int | None = None) -> tuple[Tensor, Tensor]:
        """``(residual [T, Ke], blink [T])`` for a new clip at the talker's own frame rate:
        consecutive excerpts of the training clip's residual and blink tracks, chosen by
        ``seed`` among its training frames only (``train_mask``: held-out frames carry
        untrained codes and blinks the talker must not copy), joined with short
        crossfades, so blinks and brow motion keep the clip's timing and rates. A longer
        draw starts with a shorter one of the same seed."""
        track = torch.cat([self.residual_track.detach(), self.blink_track[:, None].to(self.residual_track)], 1)
        starts, seg = self._excerpt_starts()
        g = torch.Generator().manual_seed(0 if seed is None else int(seed))
        if seg < 2:
            out = track[starts[:1]].expand(num_frames, -1).clone()
            return out[:, :-1], out[:, -1]
        fade = min(5, seg // 2)
        out = torch.empty(num_frames, track.shape[1], device=track.device)
        t = 0
        prev = None
        while t < num_frames:
            s = int(starts[int(torch.randint(0, len(starts), (1,), generator=g))])
            piece = track[s:s + seg].clone()
            if prev is not None:  # crossfade into the new excerpt
                a = torch.linspace(0, 1, fade + 2, device=track.device)[1:-1, None]
                piece[:fade] = (1 - a) * prev + a * piece[:fade]
            k = min(seg, num_frames - t)
            out[t:t + k] = piece[:k]
            prev = piece[-fade:] if k == seg else None
            t += k
        return out[:, :-1], out[:, -1]

    def _excerpt_starts(self) -> tuple[Tensor, int]:
        """(first frames of every excerpt that lies wholly in training frames, excerpt length):
        ~4 s excerpts, shorter when the longest run of training frames is shorter."""
        mask = self.train_mask.bool().cpu()
        if not bool(mask.any()):
            raise ValueError("this talker records no training frames (train_mask is all False): nothing to sample")
        # length of the run of training frames starting at each frame
        run = torch.zeros(len(mask) + 1, dtype=torch.long)
        for i in range(len(mask) - 1, -1, -1):
            run[i] = run[i + 1] + 1 if mask[i] else 0
        longest = int(run.max())
        seg = max(2, min(longest // 2, int(4 * self.config.fps))) if longest >= 2 else 1
        return torch.nonzero(run[:-1] >= seg)[:, 0], seg

    # -- the frame path ----------------------------------------------------------------
    def latents(self, c_exp: Tensor, c_lip: Tensor) -> tuple[Tensor, Tensor]:
        """``(w [F, D], styles [F, S])`` of coefficients, through the compose_latent kernel."""
        from .ops.latent import compose_latent

        B_exp, B_lip = self.blendshapes.bases()
        se, sl = self.blendshapes.scaled(c_exp.float(), c_lip.float())
        G = self.generator
        return compose_latent(self.w_can, B_exp.contiguous(), B_lip.contiguous(), se.contiguous(), sl.contiguous(),
                              G.affine_weight, G.affine_bias)

    def gaussians(self, c_exp: Tensor, c_lip: Tensor, *, blink: Tensor | None = None, amp: bool = False):
        """Gaussians ``(means, quats, scales, opacities, colors)`` ``[F, N, ...]`` of the
        head at rest on its torso (use ``pose_torso`` for a moving head); ``blink [F]``
        closes the eyes by that amount (the eyelid layer; None: open)."""
        return self.generator.decode(self.raw_maps(c_exp, c_lip, blink=blink, amp=amp).contiguous())

    def raw_maps(self, c_exp: Tensor, c_lip: Tensor, *, blink: Tensor | None = None, amp: bool = False) -> Tensor:
        """The raw maps ``[F, 14 G, R, R]`` the decode kernel turns into ``gaussians``:
        the synthesis network's output, plus the eyelid and lip layers; float32."""
        _, styles = self.latents(c_exp, c_lip)
        use_amp = amp and styles.is_cuda
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_amp):
            raw = self.generator.synthesize(styles, network=self._fast_synthesis if use_amp else None)
        raw = raw.float()
        if blink is not None:
            raw = self.eyelid_layer(raw, blink)
        return self.with_lip_layer(raw, c_lip)

    def eyelid_layer(self, raw: Tensor, blink: Tensor) -> Tensor:
        """Raw maps ``[F, 14 G, R, R]`` plus the eyelid layer, ``blink [F]`` times the map of a
        fully closed eye on the eye texels."""
        offset = blink.to(raw)[:, None, None] * (self.blink_map * self.eye_weight)
        return add_on_texels(raw, self.eye_texels, offset)

    def with_lip_layer(self, raw: Tensor, c_lip: Tensor) -> Tensor:
        """Raw maps ``[F, 14 G, R, R]`` plus the lip layer of lip coefficients ``c_lip
        [F, Kl]``: on the mouth texels, a learned map per sign of each pinned coefficient,
        times that part (``lip_layer_inputs``). The latent path renders a wide-open mouth
        no wider than a half-open one (the opening per unit falls fivefold over the clip's
        range, benchmarks.md runs H); raw-map offsets are decoded linearly in position."""
        h = lip_layer_inputs(c_lip).to(raw)
        offset = torch.einsum("fk,kcm->fcm", h, self.lip_map * self.mouth_weight)
        return add_on_texels(raw, self.mouth_texels, offset)

    def clip_gaussians(self, c_exp: Tensor, c_lip: Tensor, w2c: Tensor, *, blink: Tensor | None = None,
                       amp: bool = False, torso: Tensor | None = None):
        """Gaussians ``[F, N, ...]`` of clip frames seen by their own head cameras ``w2c
        [F, 4, 4]``: the torso posed where that clip has it (``body_transforms`` against
        the body camera, moved by the clip's tracked ``torso`` offsets ``[F, 2]`` if given:
        ``body_cameras``). The one place that renders dataset frames with their torso."""
        g = self.gaussians(c_exp, c_lip, blink=blink, amp=amp)
        return self.with_mouth(self.pose_clip(g, w2c, torso=torso), c_lip)

    def pose_clip(self, gaussians, w2c: Tensor, *, torso: Tensor | None = None, head: Tensor | None = None):
        """Gaussians ``[F, N, ...]`` already made, with the torso posed where the clip has
        it for head cameras ``w2c [F, 4, 4]`` and torso offsets ``torso [F, 2]`` (a training
        step that shows one latent at two cameras poses it once per camera); ``head [F, 4,
        4]`` first moves the head (not the shoulders; the neck blends) by a rigid motion of
        the head frame (``rigid_motion``: benchmarks/face_ceiling.py measures what the
        tracked poses cost with it)."""
        if head is not None:
            means, quats, *rest = gaussians
            means, quats = skin(means, quats, 1 - self.skin_weight.to(means.device), head)
            gaussians = (means, quats, *rest)
        return self.pose_torso(gaussians, body_transforms(w2c, self.body_cameras(torso, w2c.device)))

    def body_cameras(self, torso: Tensor | None, device=None) -> Tensor:
        """The body camera ``[4, 4]``, or per frame ``[F, 4, 4]`` moved by torso offsets
        ``[F, 2]`` (a tracked image shift over the focal length,
        ``camera.dataset_torso_offsets``): the shoulders slide parallel to the image at the
        head's depth, so they land that many pixels away in any image of the clip's framing."""
        body = self.body_w2c.to(device if device is not None else self.body_w2c.device)
        if torso is None:
            return body
        torso = torso.to(body)
        move = torch.eye(4, dtype=body.dtype, device=body.device).repeat(torso.shape[0], 1, 1)
        move[:, :2, 3] = torso * body[2, 3]
        return move @ body

    def clip_frames(self, c_exp: Tensor, c_lip: Tensor, w2c: Tensor, Ks: Tensor, width: int, height: int, *,
                    blink: Tensor | None = None, background: Tensor | None = None, amp: bool = False,
                    checked: bool | None = None, torso: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``frames`` of clip frames at their own cameras, the torso following the clip's
        head motion and its tracked ``torso`` offsets (``clip_gaussians``); images ``[F, H,
        W, 3]`` and alphas ``[F, H, W]``."""
        g = self.clip_gaussians(c_exp, c_lip, w2c, blink=blink, amp=amp, torso=torso)
        return self.rasterize(g, w2c, Ks, width, height, background=background, checked=checked)

    def with_mouth(self, gaussians, c_lip: Tensor, *, head: Tensor | None = None):
        """Posed Gaussians ``[F, N, ...]`` with the mouth interior of lip coefficients
        ``c_lip [F, Kl]`` appended (rigid with the head, so after the torso is posed; moved
        by the head's motions ``head [F, 4, 4]`` as ``pose_clip`` moved the head) and the
        face parted at the lips to show it (``MouthInterior.part_face``); unchanged for a
        talker without one."""
        if self.mouth is None:
            return gaussians
        means, quats, scales, opac, colors = gaussians
        opening = c_lip[:, 0]
        # the face parts at the lips (head Gaussians only: the torso's follow them in the list)
        opac = self.mouth.part_face(opac, opening)
        inner = self.mouth(opening)
        if head is not None:
            whole = torch.ones(inner[0].shape[1], device=inner[0].device)
            inner = (*skin(inner[0], inner[1], whole, head.to(inner[0])), *inner[2:])
        return tuple(torch.cat([g, m.to(g)], 1) for g, m in zip((means, quats, scales, opac, colors), inner))

    def pose_torso(self, gaussians, body: Tensor | None):
        means, quats, scales, opac, colors = gaussians
        means, quats = skin(means, quats, self.skin_weight.to(means.device), body)
        return means, quats, scales, opac, colors

    def rasterize(self, gaussians, viewmats: Tensor, Ks: Tensor, width: int, height: int, *,
                  background: Tensor | None = None, checked: bool | None = None) -> tuple[Tensor, Tensor]:
        """Images ``[B, H, W, 3]`` composited over ``background`` (the plate resized to the
        image, if None; or a ``[3]`` colour, or ``[H, W, 3]`` / ``[B, H, W, 3]`` images) and
        alphas ``[B, H, W]``. ``gaussians`` have one set per image."""
        import dgtalker

        means, quats, scales, opac, colors = gaussians
        zero = torch.zeros(3, device=means.device)
        image, alpha, _ = dgtalker.rasterize(means, quats, scales, opac, colors, viewmats, Ks, width, height,
                                             background=zero, checked=checked)
        if background is None:
            background = self.plate(width, height)
        return image + (1 - alpha[..., None]) * background.to(image.device), alpha

    def plate(self, width: int, height: int) -> Tensor:
        """The background plate at ``width x height``."""
        bg = self.background
        if bg.shape[:2] == (height, width):
            return bg
        return Fn.interpolate(bg.permute(2, 0, 1)[None], size=(height, width), mode="area")[0].permute(1, 2, 0)

    def camera(self, width: int | None = None, height: int | None = None):
        """The training framing as a ``dgtalker.camera.Camera`` of ``width x height`` images
        (default: the clip's size); ``vm, K = talker.camera()`` gives its matrices."""
        from .camera import Camera

        cam = Camera(self.default_w2c.detach().cpu(), self.default_K.detach().cpu(), self.config.width,
                     self.config.height)
        if width is None and height is None:
            return cam
        return cam.resized(self.config.width if width is None else width, self.config.height if height is None else height)

    def frames(self, c_exp: Tensor, c_lip: Tensor, viewmats: Tensor, Ks: Tensor, width: int, height: int, *,
               body: Tensor | None = None, blink: Tensor | None = None, background: Tensor | None = None,
               amp: bool = False, checked: bool | None = None) -> tuple[Tensor, Tensor]:
        """Renders F frames from coefficients ``[F, K]`` and cameras ``[F, 4, 4]``/``[F, 3, 3]``;
        ``body [F, 4, 4]`` poses the torso (``body_transforms``), None keeps it at rest;
        ``blink [F]`` closes the eyes (0 open, 1 closed; None: open)."""
        g = self.with_mouth(self.pose_torso(self.gaussians(c_exp, c_lip, blink=blink, amp=amp), body), c_lip)
        return self.rasterize(g, viewmats, Ks, width, height, background=background, checked=checked)

    # -- the inference API (dgtalker.render) --------------------------------------------
    def render(self, audio, camera=None, *, fps: float = 25.0, expression=None, seed=None, blink="sample",
               lip_scale: float = 1.0, exp_scale: float = 1.0, background=None, device=None, **kw):
        """Speech -> ``dgtalker.render.Video`` (uint8 frames, alpha, fps, the speech).

        ``audio``: a path, ``(samples, rate)``, or an array with ``sample_rate=``.
        Frames come at ``fps`` for the whole speech (``ceil(duration * fps)`` frames).
        ``camera``: None (the training framing), a ``dgtalker.camera.Camera`` (what
        ``dgtalker.camera.orbit/spiral/path`` return: it carries its image size, which
        becomes the video's unless ``width``/``height`` are given), a dataset (its own
        tracked cameras, read at each frame's time; the torso follows that clip's head),
        or a bare ``(viewmat, K)`` with explicit ``width`` and ``height``. ``expression``: None (from speech), ``"sample"``
        (the residual and blinks sampled with ``seed``: other blinks and brow motion for
        the same speech), or coefficients ``[Ke]`` / ``[T, Ke]`` replacing ``c_exp``.
        ``blink``: ``"sample"`` (default: the person's own blinks from the training clip,
        excerpted with ``seed``, the same as ``expression="sample"`` carries), a number or
        ``[T]`` amounts of the eyelid layer (0 open, 1 closed), or None (eyes open).
        ``lip_scale`` / ``exp_scale`` exaggerate (> 1) or damp (< 1) the branches.
        ``background``: None (the plate estimated from the clip), an RGB colour or an image
        ``[H, W, 3]`` in [0, 1], or the path of an image or a video file (resized to the
        frame; a video plays at its own speed and loops). Further options:
        ``width``, ``height``, ``batch``, ``causal`` (the streaming encoder),
        ``steady`` (default True: the mouth opening keeps the person's motion over each
        passage, ``TalkerConfig.motion_window``; False: the encoders' opening as it is),
        ``progress``."""
        from .inference import render_talker

        return render_talker(self, audio, camera, fps=fps, expression=expression, seed=seed, blink=blink,
                             lip_scale=lip_scale, exp_scale=exp_scale, background=background, device=device, **kw)

    def stream(self, chunks, camera=None, **kw):
        """Yields uint8 frames ``[H, W, 3]`` as audio chunks arrive (``sample_rate``, default
        16 kHz, resampled by one stateful resampler; the causal encoder: each frame waits
        for at most ``causal_encoder.lookahead_seconds()`` of audio after its time, at any
        ``fps``); memory stays flat however long the stream. ``camera``, ``blink``,
        ``seed``, ``background``, ``width``, ``height``, ``device``, ``steady`` as for ``render``
        (``[N]`` amounts: one per frame of the stream). The frames equal
        ``render(..., causal=True)`` of the whole audio at any fps and sample rate."""
        from .inference import stream_talker

        return stream_talker(self, chunks, camera, **kw)

    # -- parameters by role (the trainer gives them different learning rates) ---------
    def parameter_groups(self) -> dict[str, list]:
        G = self.generator
        synth = [p for n, p in G.named_parameters() if not n.startswith("mapping.") and n != "output_bias"]
        return {"synthesis": synth, "output_bias": [G.output_bias], "w_can": [self.w_can],
                # the front end is not in any group: it stays as shipped
                "blendshapes": list(self.blendshapes.parameters()), "encoder": list(self.encoder.parameters()),
                "causal_encoder": list(self.causal_encoder.parameters()), "residual": [self.residual_track],
                "eyelid": [self.blink_map], "lip_layer": [self.lip_map],
                "mouth": [] if self.mouth is None else list(self.mouth.parameters())}


def blendshape_sheet(talker: Talker, path, *, size: int = 160, sigma: float = 2.0, mean=None, std=None):
    """A PNG of what each blendshape does: one column per component (expression first,
    then lips), rows at ``-sigma``, 0 and ``+sigma`` times its spread ``std`` (default 1:
    coefficients are O(1)) around ``mean`` (default 0), at the talker's own framing."""
    from .io import atomic_write_bytes, encode_image

    Ke, Kl = talker.config.k_exp, talker.config.k_lip
    K_all = Ke + Kl
    mean = torch.zeros(K_all) if mean is None else torch.as_tensor(mean, dtype=torch.float32)
    std = torch.ones(K_all) if std is None else torch.as_tensor(std, dtype=torch.float32)
    c = mean.repeat(3 * K_all, 1)
    for k in range(K_all):
        c[3 * k, k] -= sigma * std[k]
        c[3 * k + 2, k] += sigma * std[k]
    vm, K = talker.camera(size, size)
    dev = talker.device
    tiles = []
    for s in range(0, c.shape[0], 24):
        cc = c[s:s + 24].to(dev)
        m = cc.shape[0]
        with torch.no_grad():
            img, _ = talker.frames(cc[:, :Ke], cc[:, Ke:], vm.expand(m, -1, -1).to(dev), K.expand(m, -1, -1).to(dev),
                                   size, size)
        tiles.append(img.clamp(0, 1).cpu())
    img = torch.cat(tiles)  # [3 K_all, H, W, 3], component-major
    grid = torch.cat([torch.cat([img[3 * k + r] for k in range(K_all)], 1) for r in range(3)], 0)
    path = Path(path)
    atomic_write_bytes(path, encode_image((grid * 255).round().to(torch.uint8).numpy(), "png"))
    return path


# ----------------------------------------------------------------------------------
# checkpoints


from .checkpoint import CheckpointError  # noqa: E402


class TalkerCheckpointError(CheckpointError):
    """A talker file that cannot be read: truncated, not a talker, hostile or inconsistent.
    The message names the file and the problem."""


_OPTIONAL_BUFFERS = ("coef_mean", "coef_std", "blink_map", "lip_map", "blink_track", "train_mask",
                     *(f"{e}.lip_{b}" for e in ("encoder", "causal_encoder") for b in ("centre", "gain", "low", "high")),
                     # a mouth interior saved before it was placed from the clip: the template's mouth
                     "mouth.anchor", "mouth.gap_logit", "mouth.gap_gain")
# a residual direction that never closed the eyes (the eyelid layer replaced it); the mouth
# interior's rest positions and hinge, which follow from its anchor
_RETIRED = ("blink_direction", "mouth.rest", "mouth.hinge")
_KEEP_FLOAT32 = ("w_can", "blendshapes.", "body_w2c", "default_w2c", "default_K", "encoder.mel_", "causal_encoder.mel_",
                 "encoder.lip_", "causal_encoder.lip_",
                 "frontend.", "mouth.anchor")


def save_talker(path, talker: Talker, *, half: bool = False) -> Path:
    """Writes ``talker`` to ``path`` atomically (one safetensors file). ``half=True`` stores
    the generator, encoders and plate as float16 (about half the size; the latent
    anchor, bases and cameras stay float32)."""
    from .checkpoint import write_checkpoint

    if not isinstance(talker, Talker):
        raise TypeError(f"talker must be a dgtalker.talker.Talker, got {type(talker).__name__}")
    path = Path(path)
    tensors = {}
    for k, v in talker.state_dict().items():
        v = v.detach()
        if half and v.is_floating_point() and not k.startswith(_KEEP_FLOAT32):
            v = v.half()
        tensors[k] = v
    meta = {"talker_config": json.dumps(talker.config.to_dict(), sort_keys=True),
            "generator_config": json.dumps(talker.generator.config.to_dict(), sort_keys=True),
            "residual_frames": str(talker.residual_track.shape[0]),
            "source": json.dumps(talker.source, sort_keys=True)}
    return write_checkpoint(path, tensors, format=FORMAT, version=FORMAT_VERSION, meta=meta)


def read_talker_metadata(path) -> dict:
    """The talker's configs and training source, without building it."""
    from .checkpoint import read_checkpoint

    _, meta, version = read_checkpoint(path, format=FORMAT, max_version=FORMAT_VERSION, error=TalkerCheckpointError)
    return {"version": version, **{k: json.loads(v) for k, v in meta.items() if k != "format" and k != "version"}}


DEFAULT_TALKER_PATH = Path(__file__).parent / "models" / "assets" / "talker_demo.safetensors"


def load_talker(path=None, *, device=None) -> Talker:
    """Reads a talker written by ``save_talker`` (float32 in memory, eval mode, on
    ``device``); None loads the demo talker shipped with the package. Raises
    FileNotFoundError or ``TalkerCheckpointError``."""
    from .checkpoint import generator_from_tensors, read_checkpoint
    from .models.generator import GeneratorConfig

    if path is None:
        if not DEFAULT_TALKER_PATH.exists():
            raise FileNotFoundError(f"this installation ships no demo talker ({DEFAULT_TALKER_PATH}); pass the path "
                                    "of a talker trained with dgtalker train")
        path = DEFAULT_TALKER_PATH
    path = Path(path)
    tensors, meta, _ = read_checkpoint(path, format=FORMAT, max_version=FORMAT_VERSION, error=TalkerCheckpointError)
    try:
        cfg = TalkerConfig.from_dict(json.loads(meta["talker_config"]))
        gcfg = GeneratorConfig.from_dict(json.loads(meta["generator_config"]))
        n_res = int(meta["residual_frames"])
        source = json.loads(meta.get("source", "{}"))
        if not 1 <= n_res <= 10_000_000:
            raise ValueError(f"residual_frames {n_res} out of range")
    except (KeyError, ValueError, TypeError) as exc:
        raise TalkerCheckpointError(f"{path}: unreadable talker metadata ({exc})") from None
    gen_tensors = {k[len("generator."):]: v.float() if v.is_floating_point() else v
                   for k, v in tensors.items() if k.startswith("generator.")}
    generator = generator_from_tensors(path, gcfg, gen_tensors, error=TalkerCheckpointError)
    talker = Talker(generator, cfg, residual_frames=n_res)
    expected = talker.state_dict()
    rest = {k: v for k, v in tensors.items() if k not in _RETIRED}
    for k in _OPTIONAL_BUFFERS:  # files written before these existed keep their defaults
        if k not in rest and k in expected:
            rest[k] = expected[k]
    missing = sorted(set(expected) - set(rest))
    unexpected = sorted(set(rest) - set(expected))
    wrong = [k for k, v in expected.items() if k in rest and tuple(rest[k].shape) != tuple(v.shape)]
    if missing or unexpected or wrong:
        raise TalkerCheckpointError(f"{path} does not match its config: missing {missing[:6]}, unexpected "
                                    f"{unexpected[:6]}, wrong shapes {wrong[:6]}")
    talker.load_state_dict({k: v.to(expected[k].dtype) for k, v in rest.items()}, strict=True)
    talker.source = source if isinstance(source, dict) else {}
    talker.eval()
    for p in talker.parameters():
        p.requires_grad_(False)
    if device is not None:
        talker.to(device)
        talker.fast()
    return talker
