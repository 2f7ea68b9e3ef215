"""The Gaussian generative prior G: latent w -> UV attribute maps -> 3D Gaussians.

    z [F, z_dim] --mapping--> w [F, D] --latent_styles--> styles [F, S]
      --synthesis--> raw [F, 14*G, R, R] --decode--> means, quats, scales, opacities, colors

The synthesis network follows StyleGAN2 (modulated/demodulated 3x3 convolutions, a
"skip" output branch summed over resolutions, equalized learning rate), with two
changes for this use:

- every layer's style comes from OUTSIDE the network: one stacked affine
  ``affine_weight [S, D]``, ``affine_bias [S]`` maps w to all styles at once
  (``dgtalker.ops.latent``), so blendshape composition and styles are one kernel and
  callers may drive the synthesis with styles directly (``synthesize``);
- no per-pixel noise inputs: w alone determines the head, which latent inversion
  and the blendshape model require.

Raw channels per Gaussian g (base 14*g) are those of ``dgtalker.ops.decode``:
offset xyz, log-scale xyz, rotation delta wxyz, opacity logit, colour logits rgb.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as Fn
from torch import Tensor, nn

RAW_CHANNELS = 14  # per Gaussian, see the module docstring
_SQRT2 = math.sqrt(2.0)

# Upper bounds of GeneratorConfig (a checkpoint's config is untrusted input). The
# default prior uses 256 / 256 / 4 / 128 / 2 / 4 / 4096 / 256: these leave room for
# far larger priors while keeping a hostile config from exhausting memory.
_INT_BOUNDS = {"z_dim": 4096, "w_dim": 4096, "mapping_layers": 16, "resolution": 1024,
               "gaussians_per_texel": 8, "base_resolution": 64, "channel_base": 1 << 20, "channel_max": 2048}
MAX_PARAMETERS = 1 << 28  # 268M parameters, 1 GiB as float32


@dataclass(frozen=True)
class GeneratorConfig:
    """Sizes of the prior. The default (R = 128, G = 2: 29.8k Gaussians; 5.0M
    parameters, 21 MB as a float32 checkpoint) trains on the synthetic corpus and
    renders in real time."""

    z_dim: int = 256
    w_dim: int = 256  # D
    mapping_layers: int = 4
    mapping_lr_mul: float = 0.01  # StyleGAN's slower mapping network
    resolution: int = 128  # R of the UV maps; the head template is fitted at this size
    gaussians_per_texel: int = 2  # G
    base_resolution: int = 4  # the learned constant input
    channel_base: int = 4096  # channels at resolution r: min(channel_max, channel_base // r)
    channel_max: int = 256
    offset_scale: float = 3.0  # raw offset 1 moves a Gaussian this many texel sizes
    output_gain: float = 0.1  # keeps the initial raw maps close to their bias (a smooth head)
    init_opacity: float = 0.75
    init_scale: float = 0.6  # initial tangent standard deviation, in texel sizes
    init_thickness: float = 0.2  # initial normal standard deviation, in texel sizes

    def __post_init__(self):
        # Every size is bounded and the parameter count is computed from the sizes,
        # so a config read from an untrusted file is refused before anything is allocated.
        for name, hi in _INT_BOUNDS.items():
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= hi:
                raise ValueError(f"GeneratorConfig.{name} must be a positive int <= {hi}, got {v!r}")
        r, b = self.resolution, self.base_resolution
        if b < 2 or r < b or r % b or (r // b) & (r // b - 1):
            raise ValueError(f"GeneratorConfig.resolution must be base_resolution ({b}) times a power of two, got {r}")
        for name in ("mapping_lr_mul", "offset_scale", "output_gain", "init_scale", "init_thickness"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0):
                raise ValueError(f"GeneratorConfig.{name} must be a finite number > 0, got {v!r}")
        v = self.init_opacity
        if not (isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 < v < 1.0):
            raise ValueError(f"GeneratorConfig.init_opacity must be in (0, 1), got {v!r}")
        n = self.num_parameters()
        if n > MAX_PARAMETERS:
            raise ValueError(f"GeneratorConfig describes {n:,} parameters, more than the {MAX_PARAMETERS:,} allowed")

    def num_parameters(self) -> int:
        """Parameters of the ``Generator`` this config builds (buffers not counted: the
        template holds at most R*R texels). Computed from the sizes alone."""
        out = RAW_CHANNELS * self.gaussians_per_texel
        dims = [self.z_dim] + [self.w_dim] * self.mapping_layers
        n = sum(a * b + b for a, b in zip(dims[:-1], dims[1:]))  # mapping
        b = self.base_resolution
        n += self.channels(b) * b * b  # learned constant
        styles, res, cin = 0, b, self.channels(b)
        while True:
            c = self.channels(res)
            convs = [(cin, c)] if res == b else [(cin, c), (c, c)]
            for i, o in convs:
                n += 9 * i * o + o
                styles += i
            n += c * out  # to-raw 1x1
            styles += c
            cin = c
            if res >= self.resolution:
                break
            res *= 2
        n += styles * self.w_dim + styles  # stacked style affine
        n += out * self.resolution ** 2  # output bias map
        return n

    def channels(self, res: int) -> int:
        return max(1, min(self.channel_max, self.channel_base // res))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GeneratorConfig":
        if not isinstance(d, dict):
            raise ValueError(f"generator config must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"generator config has unknown keys {unknown}")
        return cls(**d)


def _randn(gen, *shape):
    return torch.randn(*shape, generator=gen)


class _EqualLinear(nn.Module):
    """Linear layer with equalized learning rate (weights N(0,1)/lr_mul, scaled at run time)."""

    def __init__(self, fan_in, fan_out, gen, lr_mul=1.0, bias_init=0.0):
        super().__init__()
        self.weight = nn.Parameter(_randn(gen, fan_out, fan_in) / lr_mul)
        self.bias = nn.Parameter(torch.full((fan_out,), float(bias_init)))
        self.gain = lr_mul / math.sqrt(fan_in)
        self.lr_mul = lr_mul

    def forward(self, x):
        return Fn.linear(x, self.weight * self.gain, self.bias * self.lr_mul)


class MappingNetwork(nn.Module):
    """z [F, z_dim] -> w [F, D]: pixel-normalized z through an MLP with leaky ReLUs."""

    def __init__(self, cfg: GeneratorConfig, gen):
        super().__init__()
        dims = [cfg.z_dim] + [cfg.w_dim] * cfg.mapping_layers
        self.layers = nn.ModuleList(_EqualLinear(a, b, gen, lr_mul=cfg.mapping_lr_mul) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, z: Tensor) -> Tensor:
        x = z * torch.rsqrt(z.square().mean(1, keepdim=True) + 1e-8)
        for layer in self.layers:
            x = Fn.leaky_relu(layer(x), 0.2) * _SQRT2
        return x


def _modulated_conv(x, weight, styles, demodulate, padding):
    """x [F, I, H, W], weight [O, I, k, k], styles [F, I] -> [F, O, H, W].

    Equivalent to convolving each sample with its own modulated (and demodulated)
    weight, but computed as modulate-input -> one shared convolution -> scale the
    output: a plain batched convolution that the tensor cores run well, instead of
    a grouped convolution with one group per sample.
    """
    out = Fn.conv2d(x * styles[:, :, None, None].to(x.dtype), weight.to(x.dtype), padding=padding)
    if demodulate:
        # 1 / ||w_o * s||: sum_i s_i^2 sum_k w_oik^2 for every sample and output channel
        d = torch.rsqrt(styles.square() @ weight.square().sum((2, 3)).T + 1e-8)
        out = out * d[:, :, None, None].to(out.dtype)
    return out


class _StyledConv(nn.Module):
    """Modulated + demodulated 3x3 convolution, optional 2x bilinear upsampling first."""

    def __init__(self, cin, cout, gen, up=False):
        super().__init__()
        self.weight = nn.Parameter(_randn(gen, cout, cin, 3, 3))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.up = up
        self.style_dim = cin

    def forward(self, x, style):
        if self.up:
            x = Fn.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x = _modulated_conv(x, self.weight, style, True, 1)  # demodulation makes the weight gain irrelevant
        return Fn.leaky_relu(x + self.bias[None, :, None, None], 0.2) * _SQRT2


class _ToRaw(nn.Module):
    """Modulated 1x1 convolution (no demodulation) to the raw Gaussian channels."""

    def __init__(self, cin, cout, gen):
        super().__init__()
        self.weight = nn.Parameter(_randn(gen, cout, cin, 1, 1))
        self.gain = 1.0 / math.sqrt(cin)
        self.style_dim = cin

    def forward(self, x, style):
        return _modulated_conv(x, self.weight, style * self.gain, False, 0)


class SynthesisNetwork(nn.Module):
    """styles [F, S] -> raw maps [F, 14*G, R, R] (StyleGAN2 skip architecture)."""

    def __init__(self, cfg: GeneratorConfig, gen):
        super().__init__()
        b = cfg.base_resolution
        out_ch = RAW_CHANNELS * cfg.gaussians_per_texel
        self.const = nn.Parameter(_randn(gen, cfg.channels(b), b, b))
        self.layers = nn.ModuleList()  # in style order
        self.kinds = []  # ("conv" | "raw", resolution)
        res, cin = b, cfg.channels(b)
        while True:
            c = cfg.channels(res)
            if res == b:
                self._add(_StyledConv(cin, c, gen), "conv", res)
            else:
                self._add(_StyledConv(cin, c, gen, up=True), "conv", res)
                self._add(_StyledConv(c, c, gen), "conv", res)
            self._add(_ToRaw(c, out_ch, gen), "raw", res)
            cin = c
            if res == cfg.resolution:
                break
            res *= 2
        self.style_dims = [m.style_dim for m in self.layers]
        self.output_gain = cfg.output_gain

    def _add(self, module, kind, res):
        self.layers.append(module)
        self.kinds.append((kind, res))

    def forward(self, styles: Tensor) -> Tensor:
        F = styles.shape[0]
        per_layer = torch.split(styles, self.style_dims, dim=1)
        x = self.const[None].expand(F, -1, -1, -1)
        raw = None
        for layer, (kind, _), s in zip(self.layers, self.kinds, per_layer):
            if kind == "conv":
                x = layer(x, s)
            else:
                y = layer(x, s)
                raw = y if raw is None else Fn.interpolate(raw, scale_factor=2, mode="bilinear", align_corners=False) + y
        return raw * self.output_gain


class Generator(nn.Module):
    """The prior: mapping network, stacked style affine, synthesis network, head
    template (buffers, so a checkpoint carries the exact template it was trained
    with) and the decode step.

    Args:
        config: sizes (``GeneratorConfig``); default config if None.
        template: a ``HeadTemplate`` at ``config.resolution``; the committed/fitted one
            (``dgtalker.models.template.load_template``) if None.
        seed: initial weights are drawn from a private RNG seeded with this, so
            construction is deterministic and leaves torch's global RNG alone.
    """

    def __init__(self, config: GeneratorConfig | None = None, template=None, seed: int = 0):
        super().__init__()
        from .template import load_template

        cfg = config or GeneratorConfig()
        if not isinstance(cfg, GeneratorConfig):
            raise TypeError(f"config must be a GeneratorConfig, got {type(cfg).__name__}")
        self.config = cfg
        gen = torch.Generator().manual_seed(int(seed))
        self.mapping = MappingNetwork(cfg, gen)
        self.synthesis = SynthesisNetwork(cfg, gen)
        self.style_dims = list(self.synthesis.style_dims)
        S, D = sum(self.style_dims), cfg.w_dim
        # Plain (not equalized) so callers can pass the tensors straight to the
        # composition kernel; bias 1 starts every modulation at 1, as in StyleGAN2.
        self.affine_weight = nn.Parameter(_randn(gen, S, D) / math.sqrt(D))
        self.affine_bias = nn.Parameter(torch.ones(S))
        tpl = template if template is not None else load_template(cfg.resolution)
        if tpl.resolution != cfg.resolution:
            raise ValueError(f"template resolution {tpl.resolution} does not match config.resolution {cfg.resolution}")
        self.output_bias = nn.Parameter(self._initial_output_bias(tpl))
        self.register_buffer("template_texel_index", torch.as_tensor(tpl.texel_index, dtype=torch.int64).clone())
        self.register_buffer("template_position", torch.as_tensor(tpl.position, dtype=torch.float32).clone())
        self.register_buffer("template_frame", torch.as_tensor(tpl.frame, dtype=torch.float32).clone())
        self.register_buffer("template_log_size", torch.as_tensor(tpl.log_size, dtype=torch.float32).clone())
        # running mean of the mapping outputs (truncation); kept by prior training
        self.register_buffer("w_avg", torch.zeros(D))
        self.register_buffer("w_avg_valid", torch.zeros((), dtype=torch.bool))

    def _initial_output_bias(self, tpl) -> Tensor:
        """A learned per-texel bias map [14*G, R, R] (the prior's mean head in raw form).

        Initialized so the untrained generator decodes to a closed grey shell: the G
        Gaussians of a texel spread along u, flat discs whose extents along u and v
        follow the texel's own (the chart is anisotropic on the neck and the back of
        the head; the decode kernel's footprint is one isotropic size)."""
        cfg = self.config
        G, R = cfg.gaussians_per_texel, cfg.resolution
        M = len(tpl.texel_index)
        aspect = torch.as_tensor(tpl.log_axis, dtype=torch.float32) - torch.as_tensor(tpl.log_size, dtype=torch.float32)[:, None]
        b = torch.zeros(M, G, RAW_CHANNELS)
        spread = torch.exp(aspect[:, None, 0]) / cfg.offset_scale  # one texel along u, in raw offset units
        b[:, :, 0] = ((torch.arange(G) + 0.5) / G - 0.5)[None, :] * spread
        b[:, :, 3] = math.log(cfg.init_scale / G ** 0.5) + aspect[:, None, 0]
        b[:, :, 4] = math.log(cfg.init_scale) + aspect[:, None, 1]
        b[:, :, 5] = math.log(cfg.init_thickness)
        b[:, :, 10] = math.log(cfg.init_opacity / (1 - cfg.init_opacity))
        full = torch.zeros(R * R, G * RAW_CHANNELS)
        full[torch.as_tensor(tpl.texel_index, dtype=torch.int64)] = b.reshape(M, -1)
        return full.T.reshape(G * RAW_CHANNELS, R, R).contiguous()

    # -- sizes -----------------------------------------------------------------------
    @property
    def num_styles(self) -> int:
        return sum(self.style_dims)

    @property
    def num_texels(self) -> int:
        return int(self.template_texel_index.shape[0])

    @property
    def num_gaussians(self) -> int:
        return self.num_texels * self.config.gaussians_per_texel

    def decode_template(self):
        """The template buffers as a ``DecodeTemplate`` (cached: its validation reads
        values back, which would stall a CUDA stream on every call)."""
        from ..ops.decode import DecodeTemplate

        key = tuple(t.data_ptr() for t in (self.template_texel_index, self.template_position,
                                           self.template_frame, self.template_log_size))
        cached = getattr(self, "_decode_template_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        tpl = DecodeTemplate(texel_index=self.template_texel_index, position=self.template_position,
                              frame=self.template_frame, log_size=self.template_log_size,
                              resolution=self.config.resolution, gaussians_per_texel=self.config.gaussians_per_texel)
        self._decode_template_cache = (key, tpl)
        return tpl

    # -- the pipeline ----------------------------------------------------------------
    def _check_w(self, w: Tensor) -> Tensor:
        D = self.config.w_dim
        if not isinstance(w, Tensor) or w.dim() != 2 or w.shape[1] != D:
            got = tuple(w.shape) if isinstance(w, Tensor) else type(w).__name__
            raise ValueError(f"w must be a tensor of shape [F, {D}], got {got}")
        return w

    def map(self, z: Tensor) -> Tensor:
        """z [F, z_dim] -> w [F, D]."""
        if not isinstance(z, Tensor) or z.dim() != 2 or z.shape[1] != self.config.z_dim:
            got = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
            raise ValueError(f"z must be a tensor of shape [F, {self.config.z_dim}], got {got}")
        return self.mapping(z)

    def styles(self, w: Tensor) -> Tensor:
        """w [F, D] -> styles [F, S] through the stacked affine (a plain matrix product;
        ``dgtalker.ops.latent.compose_latent`` fuses it with the blendshapes)."""
        from ..ops.latent import latent_styles

        return latent_styles(self._check_w(w).contiguous(), self.affine_weight, self.affine_bias)

    def synthesize(self, styles: Tensor, network=None) -> Tensor:
        """styles [F, S] (from ``styles`` or ``compose_latent``) -> raw maps [F, 14*G, R, R].
        ``network``: another callable for ``self.synthesis`` (e.g. a compiled copy)."""
        if not isinstance(styles, Tensor) or styles.dim() != 2 or styles.shape[1] != self.num_styles:
            got = tuple(styles.shape) if isinstance(styles, Tensor) else type(styles).__name__
            raise ValueError(f"styles must be a tensor of shape [F, {self.num_styles}], got {got}")
        return (network or self.synthesis)(styles) + self.output_bias[None]

    def forward(self, w: Tensor) -> Tensor:
        """w [F, D] -> raw UV maps [F, 14*G, R, R]."""
        return self.synthesize(self.styles(w))

    def decode(self, raw: Tensor):
        """raw maps -> (means [F,N,3], quats [F,N,4], scales [F,N,3], opacities [F,N], colors [F,N,3])."""
        from ..ops.decode import decode_gaussians

        return decode_gaussians(raw, self.decode_template(), offset_scale=self.config.offset_scale)

    def gaussians(self, w: Tensor):
        """w [F, D] -> rasterizer-ready Gaussians (see ``decode``), N = ``num_gaussians``."""
        return self.decode(self.forward(w))

    def gaussians_from_styles(self, styles: Tensor):
        return self.decode(self.synthesize(styles))

    def sample_w(self, n: int, *, truncation: float = 1.0, seed: int | None = None, rng=None) -> Tensor:
        """``n`` latents ``w [n, D]`` of this prior.

        ``truncation`` psi pulls samples towards the mean latent,
        ``w = w_mean + psi * (mapping(z) - w_mean)``: 1 keeps the full distribution, 0
        gives the mean head, values in between trade variety for typicality. ``seed``
        (an int) or ``rng`` (a ``torch.Generator``) makes the draw reproducible."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        if not (isinstance(truncation, (int, float)) and math.isfinite(truncation) and truncation >= 0):
            raise ValueError(f"truncation must be a finite number >= 0, got {truncation!r}")
        if seed is not None and rng is not None:
            raise ValueError("pass either seed or rng, not both")
        if seed is not None:
            rng = torch.Generator().manual_seed(int(seed))
        z = torch.randn(n, self.config.z_dim, generator=rng).to(self.w_avg.device)
        with torch.no_grad():
            w = self.map(z)
            if truncation != 1.0:
                w_mean = self.mean_w()
                w = w_mean + truncation * (w - w_mean)
        return w

    # -- latent statistics -------------------------------------------------------------
    @torch.no_grad()
    def mean_w(self, num: int = 4096, seed: int = 0) -> Tensor:
        """The mean of the mapping outputs: the tracked ``w_avg`` once prior training has
        set it, otherwise an estimate from ``num`` seeded samples of z."""
        if bool(self.w_avg_valid):
            return self.w_avg.clone()
        gen = torch.Generator().manual_seed(int(seed))
        z = torch.randn(num, self.config.z_dim, generator=gen).to(self.w_avg.device)
        return self.mapping(z).mean(0)

    @torch.no_grad()
    def update_w_avg(self, w: Tensor, beta: float = 0.995) -> None:
        """Moving average of mapping outputs, called by prior training each step."""
        m = self._check_w(w).detach().mean(0)
        if bool(self.w_avg_valid):
            self.w_avg.lerp_(m, 1.0 - beta)
        else:
            self.w_avg.copy_(m)
            self.w_avg_valid.fill_(True)
