"""Edge cases of the rasterizer, each checked against the dense reference."""
import torch

import dgtalker
from raster_check import assert_matches_reference
from scenes import camera, scene


def test_zero_gaussians_gives_background():
    viewmats, Ks = camera(2, 33, 20)
    empty = (torch.zeros(0, 3), torch.zeros(0, 4), torch.zeros(0, 3), torch.zeros(0), torch.zeros(0, 3))
    bg = torch.tensor([0.2, 0.5, 0.9], requires_grad=True)
    img, alpha, depth = dgtalker.rasterize(*empty, viewmats, Ks, 33, 20, background=bg)
    assert torch.equal(img, bg.detach().expand(2, 20, 33, 3))
    assert torch.count_nonzero(alpha) == 0 and torch.count_nonzero(depth) == 0
    img.sum().backward()
    assert torch.allclose(bg.grad, torch.full((3,), 2.0 * 20 * 33))


def test_behind_camera_and_outside_frustum():
    means, quats, scales, opac, colors, viewmats, Ks = scene(n=60, seed=21)
    means[:20, 2] = -means[:20, 2]          # behind the camera
    means[20:30, 0] += 40.0                 # far to the right, in front
    means[30:35, 2] = 0.001                 # in front of the near plane
    args = (means, quats, scales, opac, colors, viewmats, Ks)
    _, grads = assert_matches_reference(args, 48, 40)
    assert grads[0][:20].abs().max() == 0 and grads[0][30:35].abs().max() == 0


def test_gaussian_covering_whole_image():
    means, quats, scales, opac, colors, viewmats, Ks = scene(n=30, seed=22)
    means[0] = torch.tensor([0.02, -0.03, 4.0])
    scales[0] = torch.tensor([3.0, 2.5, 1.0])
    opac[0] = 0.9
    assert_matches_reference((means, quats, scales, opac, colors, viewmats, Ks), 64, 48)


def test_degenerate_thin_scales():
    means, quats, scales, opac, colors, viewmats, Ks = scene(n=50, seed=23)
    scales[:10, 2] = 0.0          # flat discs
    scales[10:20, :2] = 1e-7      # needles
    scales[20:25] = 0.0           # points: the 0.3 low-pass keeps them a pixel wide
    out, grads = assert_matches_reference((means, quats, scales, opac, colors, viewmats, Ks), 48, 40)
    assert all(torch.isfinite(g).all() for g in grads)


def test_opacities_near_zero_and_one():
    means, quats, scales, opac, colors, viewmats, Ks = scene(n=60, seed=24)
    opac[:10] = 1e-5                      # below 1/255: skipped (peers crash on this)
    opac[10:15] = 1.0 / 255.0 + 1e-6      # just visible
    opac[15:20] = 0.0
    opac[20:30] = 1.0
    opac[30:35] = 0.99999
    _, grads = assert_matches_reference((means, quats, scales, opac, colors, viewmats, Ks), 48, 40)
    assert grads[3][:10].abs().max() == 0 and grads[3][15:20].abs().max() == 0


def test_unnormalized_quaternions():
    means, quats, scales, opac, colors, viewmats, Ks = scene(n=60, seed=25)
    unit = quats / quats.norm(dim=-1, keepdim=True)
    scaled = unit * (0.01 + 20 * torch.rand(60, 1))
    a = dgtalker.rasterize(means, unit, scales, opac, colors, viewmats, Ks, 48, 40)
    b = dgtalker.rasterize(means, scaled, scales, opac, colors, viewmats, Ks, 48, 40)
    for x, y in zip(a, b):
        assert torch.allclose(x, y, atol=1e-5)
    assert_matches_reference((means, scaled, scales, opac, colors, viewmats, Ks), 48, 40)


def test_early_termination_of_saturated_pixels():
    """Opaque layers saturate pixels; splats behind get no weight and no gradient."""
    means, quats, scales, opac, colors, viewmats, Ks = scene(n=40, seed=26)
    means[:4] = torch.tensor([0.0, 0.0, 2.0]) + torch.arange(4)[:, None] * torch.tensor([0.0, 0.0, 0.05])
    scales[:4] = 0.5
    opac[:4] = 0.999
    means[4] = torch.tensor([0.0, 0.0, 3.5])  # hidden straight behind the stack
    out, grads = assert_matches_reference((means, quats, scales, opac, colors, viewmats, Ks), 48, 40)
    assert out[1][0, 20, 24] > 0.99  # one layer left T ~ 3e-3; the next would pass 1e-4 and stops it
    assert grads[4][4].abs().max() < 1e-6


def test_extreme_but_valid_values_stay_finite():
    means, quats, scales, opac, colors, viewmats, Ks = scene(n=40, seed=27)
    scales[:5] = 1e4            # enormous
    means[5:10, 2] = 0.0101     # right at the near plane
    scales[10:15] = 1e-30       # vanishing
    img, alpha, depth = dgtalker.rasterize(means, quats, scales, opac, colors, viewmats, Ks, 48, 40)
    assert torch.isfinite(img).all() and torch.isfinite(alpha).all() and torch.isfinite(depth).all()
