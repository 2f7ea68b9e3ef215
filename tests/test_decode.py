"""decode_gaussians: the engine (CPU, and CUDA when present) against the dense reference."""
import pytest
import torch

import dgtalker
from dgtalker import reference
from dgtalker.ops.decode import DecodeTemplate, decode_gaussians


def template(R=12, G=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    valid = torch.rand(R * R, generator=g) < 0.6
    idx = torch.nonzero(valid).squeeze(1)
    M = idx.numel()
    frame = torch.randn(M, 4, generator=g)
    return DecodeTemplate(texel_index=idx, position=torch.randn(M, 3, generator=g) * 0.1,
                          frame=frame / frame.norm(dim=1, keepdim=True),
                          log_size=torch.log(0.002 + 0.003 * torch.rand(M, generator=g)),
                          resolution=R, gaussians_per_texel=G)


def run(fn, raw, tpl, device, dtype):
    tpl = DecodeTemplate(tpl.texel_index.to(device), tpl.position.to(device, dtype), tpl.frame.to(device, dtype),
                         tpl.log_size.to(device, dtype), tpl.resolution, tpl.gaussians_per_texel)
    x = raw.detach().to(device, dtype).requires_grad_(True)
    outs = fn(x, tpl, offset_scale=0.7)
    g = torch.Generator().manual_seed(5)
    loss = sum((o * torch.randn(o.shape, generator=g).to(device, dtype)).sum() for o in outs)
    loss.backward()
    return [o.detach().double().cpu() for o in outs], x.grad.double().cpu()


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("F,R,G", [(1, 8, 1), (3, 12, 2), (2, 16, 3)])
def test_matches_reference(device, F, R, G):
    tpl = template(R, G, seed=R + G)
    raw = torch.randn(F, 14 * G, R, R, generator=torch.Generator().manual_seed(F)) * 0.8
    out_e, grad_e = run(decode_gaussians, raw, tpl, device, torch.float32)
    ref_tpl = DecodeTemplate(tpl.texel_index, tpl.position.double(), tpl.frame.double(), tpl.log_size.double(),
                             R, G)
    out_r, grad_r = run(reference.decode_gaussians, raw, ref_tpl, "cpu", torch.float64)
    for name, a, b in zip(("means", "quats", "scales", "opacities", "colors"), out_e, out_r):
        assert a.shape == b.shape, name
        assert (a - b).abs().max() <= 1e-5 * max(1.0, b.abs().max().item()), name
    assert ((grad_e - grad_r).norm() / grad_r.norm()) < 1e-5
    # texels outside the template get exactly zero gradient
    mask = torch.ones(R * R, dtype=torch.bool)
    mask[tpl.texel_index] = False
    assert grad_e.reshape(F, -1, R * R)[..., mask].abs().max() == 0


def test_decoded_gaussians_render():
    """The decode output feeds the rasterizer as is, and gradients flow back to raw."""
    tpl = template(16, 1, seed=3)
    tpl.position[:, 2] += 1.0  # in front of the camera
    raw = (torch.randn(1, 14, 16, 16) * 0.5).requires_grad_(True)
    means, quats, scales, opac, colors = decode_gaussians(raw, tpl, offset_scale=1.0)
    viewmats = torch.eye(4)[None]
    Ks = torch.tensor([[[80.0, 0, 24], [0, 80.0, 24], [0, 0, 1]]])
    img, alpha, _ = dgtalker.rasterize(means, quats, scales, opac, colors, viewmats, Ks, 48, 48)
    img.sum().backward()
    assert raw.grad.abs().sum() > 0 and torch.isfinite(raw.grad).all()


@pytest.mark.parametrize("shape,pattern", [((1, 13, 8, 8), r"raw must have shape \[F, 14, 8, 8\]"),
                                           ((1, 14, 8), "raw must have 4 dimensions")])
def test_bad_raw_shape(shape, pattern):
    with pytest.raises(ValueError, match=pattern):
        decode_gaussians(torch.randn(shape), template(8, 1), offset_scale=1.0)


def test_template_validation():
    tpl = template(8, 1)
    tpl.texel_index = tpl.texel_index.clone()
    tpl.texel_index[0] = 64
    with pytest.raises(ValueError, match=r"texel_index must lie in \[0, R\*R\)"):
        tpl.validate()


def test_repeated_texels_are_refused():
    """A repeated texel gets two Gaussians from one raw entry: the reference sums their
    gradients, the kernel's backward writes each raw entry once. Such templates are
    refused at construction and, if a template is changed afterwards, at the call."""
    tpl = template(8, 1)
    dup = tpl.texel_index.clone()
    dup[1] = dup[0]
    with pytest.raises(ValueError, match=r"template.texel_index has 1 repeated texel\(s\)"):
        DecodeTemplate(dup, tpl.position, tpl.frame, tpl.log_size, 8, 1)
    raw = torch.randn(1, 14, 8, 8)
    decode_gaussians(raw, tpl, offset_scale=1.0)
    tpl.texel_index[1] = tpl.texel_index[0]  # in place, after validation
    with pytest.raises(ValueError, match="repeated texel"):
        decode_gaussians(raw, tpl, offset_scale=1.0)
    tpl.texel_index = dup.clone()  # replaced
    with pytest.raises(ValueError, match="repeated texel"):
        decode_gaussians(raw, tpl, offset_scale=1.0)


@pytest.mark.parametrize("device", DEVICES)
def test_distinct_texels_in_any_order_match_the_reference(device):
    """The engine's gradient equals the reference's for a template listing its texels
    out of order (the backward's one write per raw entry is exact when texels are distinct)."""
    tpl = template(10, 2, seed=7)
    perm = torch.randperm(tpl.texel_index.numel(), generator=torch.Generator().manual_seed(1))
    shuffled = DecodeTemplate(tpl.texel_index[perm], tpl.position[perm], tpl.frame[perm], tpl.log_size[perm], 10, 2)
    raw = torch.randn(2, 28, 10, 10, generator=torch.Generator().manual_seed(2))
    out_e, grad_e = run(decode_gaussians, raw, shuffled, device, torch.float32)
    ref = DecodeTemplate(shuffled.texel_index, shuffled.position.double(), shuffled.frame.double(),
                         shuffled.log_size.double(), 10, 2)
    out_r, grad_r = run(reference.decode_gaussians, raw, ref, "cpu", torch.float64)
    assert ((grad_e - grad_r).norm() / grad_r.norm()) < 1e-5
    for a, b in zip(out_e, out_r):
        assert (a - b).abs().max() <= 1e-5 * max(1.0, b.abs().max().item())


def test_template_values_are_checked():
    tpl = template(8, 1)
    with pytest.raises(ValueError, match="template.frame must hold unit quaternions"):
        DecodeTemplate(tpl.texel_index, tpl.position, tpl.frame * 1.5, tpl.log_size, 8, 1)
    pos = tpl.position.clone()
    pos[0, 0] = float("inf")
    with pytest.raises(ValueError, match="template.position must be finite"):
        DecodeTemplate(tpl.texel_index, pos, tpl.frame, tpl.log_size, 8, 1)
