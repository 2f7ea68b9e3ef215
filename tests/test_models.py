"""Generator of the Gaussian prior: shapes, determinism, a sensible untrained head,
gradients to every parameter through decode and the rasterizer, config validation.

A tiny configuration (R = 16, at most 16 channels) keeps every test at CPU speed;
one test builds the default size to check the real-time and file-size budgets.
"""
from __future__ import annotations

import math

import pytest
import torch

import dgtalker
from dgtalker import prior
from dgtalker.camera import orbit
from dgtalker.models import Generator, GeneratorConfig, build_template
from dgtalker.ops.latent import compose_latent

TINY = GeneratorConfig(z_dim=16, w_dim=16, mapping_layers=2, resolution=16, channel_base=64, channel_max=16)


@pytest.fixture(scope="module")
def tiny_template():
    return build_template(16, n_identities=4)


@pytest.fixture(scope="module")
def tiny(tiny_template):
    return Generator(TINY, template=tiny_template, seed=3)


def test_shapes_and_sizes(tiny):
    R, G, M = 16, TINY.gaussians_per_texel, tiny.num_texels
    w = prior.sample_w(3, tiny, seed=0)
    assert w.shape == (3, 16)
    raw = tiny(w)
    assert raw.shape == (3, 14 * G, R, R)
    assert tiny.num_styles == sum(tiny.style_dims) == tiny.affine_weight.shape[0] == tiny.affine_bias.shape[0]
    assert tiny.affine_weight.shape[1] == TINY.w_dim
    means, quats, scales, opacities, colors = tiny.gaussians(w)
    N = M * G
    assert tiny.num_gaussians == N
    assert means.shape == (3, N, 3) and quats.shape == (3, N, 4) and scales.shape == (3, N, 3)
    assert opacities.shape == (3, N) and colors.shape == (3, N, 3)


def test_default_size_budget():
    g = Generator()
    n_params = sum(p.numel() for p in g.parameters())
    n_bytes = sum(t.numel() * t.element_size() for t in g.state_dict().values())
    assert 20_000 < g.num_gaussians < 60_000  # real-time: tens of thousands
    assert n_params < 7_000_000 and n_bytes < 30_000_000
    assert g.config.resolution == 128 and g.config.gaussians_per_texel == 2


def test_same_seed_same_weights_and_output(tiny_template, tiny):
    a = Generator(TINY, template=tiny_template, seed=3)
    c = Generator(TINY, template=tiny_template, seed=4)
    sa, st, sc = a.state_dict(), tiny.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], st[k]) for k in sa)
    assert not torch.equal(sa["synthesis.const"], sc["synthesis.const"])
    w1, w2 = prior.sample_w(2, tiny, seed=5), prior.sample_w(2, tiny, seed=5)
    assert torch.equal(w1, w2)
    assert not torch.equal(w1, prior.sample_w(2, tiny, seed=6))
    with torch.no_grad():
        assert torch.equal(a(w1), tiny(w1))
    # construction leaves the global RNG alone
    torch.manual_seed(0)
    x = torch.rand(1)
    torch.manual_seed(0)
    Generator(TINY, template=tiny_template, seed=9)
    assert torch.equal(torch.rand(1), x)


def test_untrained_head_is_sensible(tiny, tiny_template):
    with torch.no_grad():
        means, quats, scales, opacities, colors = tiny.gaussians(prior.sample_w(4, tiny, seed=1))
    G = TINY.gaussians_per_texel
    pos = torch.as_tensor(tiny_template.position).repeat_interleave(G, 0)
    size = torch.as_tensor(tiny_template.log_size).exp().repeat_interleave(G, 0)
    # offsets within about a texel of the surface; tangent extent near the texel size
    assert ((means - pos).norm(dim=-1) / size).max() < 2.0
    tangent = scales[..., :2].max(-1).values / size
    assert 0.2 < tangent.median() < 1.5
    assert (scales[..., 2] < scales[..., :2].max(-1).values).float().mean() > 0.95  # flat discs on the surface
    assert 0.5 < opacities.min() and opacities.max() < 0.9
    assert 0.3 < colors.min() and colors.max() < 0.7
    torch.testing.assert_close(quats.norm(dim=-1), torch.ones_like(opacities), atol=1e-5, rtol=0)


def test_truncation(tiny):
    w_mean = tiny.mean_w()
    w0 = prior.sample_w(3, tiny, seed=2, truncation=0.0)
    torch.testing.assert_close(w0, w_mean.expand(3, -1))
    full = prior.sample_w(3, tiny, seed=2)
    half = prior.sample_w(3, tiny, seed=2, truncation=0.5)
    torch.testing.assert_close(half, w_mean + 0.5 * (full - w_mean))
    # once training tracks w_avg, truncation uses it
    g = Generator(TINY, template=_template_of(tiny), seed=3)
    g.update_w_avg(torch.ones(2, 16))
    torch.testing.assert_close(g.mean_w(), torch.ones(16))
    g.update_w_avg(torch.zeros(2, 16), beta=0.5)
    torch.testing.assert_close(g.mean_w(), torch.full((16,), 0.5))


def _template_of(g):
    import numpy as np

    from dgtalker.models.template import HeadTemplate

    M = g.num_texels
    return HeadTemplate(g.template_texel_index.numpy(), g.template_position.numpy(), g.template_frame.numpy(),
                        g.template_log_size.numpy(), np.zeros((M, 2), np.float32), np.zeros(M, np.int8), 16)


def test_styles_from_compose_latent_drive_the_same_synthesis(tiny):
    # The talker composes w and styles in one kernel and feeds the styles directly.
    gen = torch.Generator().manual_seed(0)
    w_can = torch.randn(16, generator=gen)
    B_exp, B_lip = torch.randn(3, 16, generator=gen) * 0.1, torch.randn(2, 16, generator=gen) * 0.1
    c_exp, c_lip = torch.randn(4, 3, generator=gen), torch.randn(4, 2, generator=gen)
    w, styles = compose_latent(w_can, B_exp, B_lip, c_exp, c_lip, tiny.affine_weight, tiny.affine_bias)
    with torch.no_grad():
        # float32 matmul order differs between the kernel and torch: 1e-5 relative
        torch.testing.assert_close(tiny.synthesize(styles), tiny(w), atol=1e-4, rtol=1e-4)


def test_gradient_reaches_every_parameter(tiny_template):
    g = Generator(TINY, template=tiny_template, seed=3)
    z = torch.randn(2, 16, generator=torch.Generator().manual_seed(0))
    means, quats, scales, opacities, colors = g.gaussians(g.map(z))
    vm0, K0 = orbit(0, 0, width=32, height=32)
    vm1, K1 = orbit(60, 10, width=32, height=32)
    image, alpha, _ = dgtalker.rasterize(means, quats, scales, opacities, colors, torch.stack([vm0, vm1]),
                                         torch.stack([K0, K1]), 32, 32, near=0.05, far=5.0,
                                         background=torch.ones(3))
    assert alpha.max() > 0.5  # the head is in view
    loss = (image - 0.3).square().mean() + alpha.mean()
    loss.backward()
    names = [n for n, _ in g.named_parameters()]
    assert len(names) > 10
    for name, p in g.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("bad, message", [
    (dict(resolution=24), "resolution must be base_resolution"),
    (dict(w_dim=0), "w_dim must be a positive int"),
    (dict(init_opacity=1.0), "init_opacity must be in"),
    (dict(offset_scale=math.inf), "offset_scale must be a finite number"),
])
def test_config_errors_name_the_field(bad, message):
    with pytest.raises(ValueError, match=message):
        GeneratorConfig(**bad)


def test_input_errors_name_the_argument(tiny, tiny_template):
    with pytest.raises(ValueError, match=r"w must be a tensor of shape \[F, 16\], got \(2, 8\)"):
        tiny(torch.zeros(2, 8))
    with pytest.raises(ValueError, match=r"z must be a tensor of shape \[F, 16\]"):
        tiny.map(torch.zeros(16))
    with pytest.raises(ValueError, match=r"styles must be a tensor of shape \[F, %d\]" % tiny.num_styles):
        tiny.synthesize(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="template resolution 16 does not match config.resolution 32"):
        Generator(GeneratorConfig(resolution=32, channel_max=8), template=tiny_template)
    with pytest.raises(ValueError, match="truncation must be"):
        prior.sample_w(1, tiny, truncation=-1.0)
    with pytest.raises(ValueError, match="n must be a positive int"):
        prior.sample_w(0, tiny)


def test_modulated_conv_equals_per_sample_weights():
    """The batched form equals convolving every sample with its own modulated weight."""
    import torch.nn.functional as Fn

    from dgtalker.models.generator import _modulated_conv

    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 8, 9, 9, generator=g)
    weight = torch.randn(5, 8, 3, 3, generator=g)
    styles = torch.randn(3, 8, generator=g)
    for demod in (True, False):
        ref = []
        for f in range(3):
            w = weight * styles[f][None, :, None, None]
            if demod:
                w = w * torch.rsqrt(w.square().sum((1, 2, 3), keepdim=True) + 1e-8)
            ref.append(Fn.conv2d(x[f:f + 1], w, padding=1))
        assert torch.allclose(_modulated_conv(x, weight, styles, demod, 1), torch.cat(ref), atol=1e-4, rtol=1e-4)
