"""Bad input gets an error that names the argument and what was expected."""
import pytest
import torch

import dgtalker
from dgtalker import reference
from scenes import scene


def good():
    return list(scene(batch=2, n=10, seed=1))


def call(args, fn=dgtalker.rasterize, width=48, height=40, **kw):
    return fn(*args, width, height, **kw)


@pytest.mark.parametrize("fn", [dgtalker.rasterize, reference.rasterize], ids=["engine", "reference"])
@pytest.mark.parametrize("index,bad,pattern", [
    (0, torch.rand(10, 2), r"means must have shape \[N, 3\] or \[B, N, 3\], got \[10, 2\]"),
    (0, torch.rand(3, 10, 3), r"means has 3 Gaussian sets but viewmats has 2 cameras"),
    (1, torch.rand(10, 3), r"quats must have shape \[10, 4\].*got \[10, 3\]"),
    (2, torch.rand(9, 3), r"scales must have shape \[10, 3\].*got \[9, 3\]"),
    (3, torch.rand(10, 1), r"opacities must have shape \[10\].*got \[10, 1\]"),
    (4, torch.rand(10), r"colors must have shape \[10, C\], got \[10\]"),
    (4, torch.rand(10, 33), r"colors must have 1 to 32 channels, got C = 33"),
    (5, torch.eye(4), r"viewmats must have shape \[B, 4, 4\], got \[4, 4\]"),
    (6, torch.rand(3, 3, 3), r"Ks must have shape \[B, 3, 3\] = \[2, 3, 3\].*got \[3, 3, 3\]"),
])
def test_wrong_shapes(fn, index, bad, pattern):
    args = good()
    args[index] = bad
    with pytest.raises(ValueError, match=pattern):
        call(args, fn)


@pytest.mark.parametrize("index,name", [(0, "means"), (2, "scales"), (4, "colors"), (5, "viewmats")])
def test_wrong_dtype(index, name):
    args = good()
    args[index] = args[index].double()
    with pytest.raises(TypeError, match=rf"{name} must have dtype torch.float32, got torch.float64"):
        call(args)


def test_integer_input_rejected_by_reference_too():
    args = good()
    args[4] = (args[4] * 255).to(torch.uint8)
    with pytest.raises(TypeError, match="colors must be a floating-point tensor"):
        call(args, reference.rasterize)


def test_not_a_tensor():
    args = good()
    args[0] = args[0].tolist()
    with pytest.raises(TypeError, match="means must be a torch.Tensor, got list"):
        call(args)


@pytest.mark.parametrize("index,value,pattern", [
    (0, float("nan"), "means must be finite"),
    (0, float("inf"), "means must be finite"),
    (2, -0.1, r"scales must be finite and >= 0"),
    (2, float("nan"), r"scales must be finite and >= 0"),
    (3, 1.5, r"opacities must be in \[0, 1\]"),
    (3, float("nan"), r"opacities must be in \[0, 1\]"),
    (4, float("inf"), "colors must be finite"),
])
def test_non_finite_and_out_of_range_values(index, value, pattern):
    args = good()
    args[index] = args[index].clone()
    args[index].view(-1)[3] = value
    with pytest.raises(ValueError, match=pattern):
        call(args)


def test_zero_quaternion():
    args = good()
    args[1] = args[1].clone()
    args[1][4] = 0.0
    with pytest.raises(ValueError, match="quats must be finite with a non-zero norm"):
        call(args)


def test_bad_intrinsics():
    args = good()
    args[6] = args[6].clone()
    args[6][1, 0, 0] = 0.0
    with pytest.raises(ValueError, match="Ks must be finite pinhole intrinsics"):
        call(args)


@pytest.mark.parametrize("kw,exc,pattern", [
    (dict(width=0), ValueError, r"width must be in \[1, 16384\], got 0"),
    (dict(height=20.5), TypeError, "height must be an int, got float"),
    (dict(near=0.0), ValueError, "need 0 < near < far"),
    (dict(near=5.0, far=1.0), ValueError, "need 0 < near < far"),
    (dict(background=torch.rand(4)), ValueError, r"background must have shape \[C\] = \[3\] or \[B, C\]"),
])
def test_bad_settings(kw, exc, pattern):
    args = good()
    width, height = kw.pop("width", 48), kw.pop("height", 40)
    with pytest.raises(exc, match=pattern):
        call(args, width=width, height=height, **kw)


def test_mixed_devices_named():
    args = good()
    args[6] = args[6].to("meta")
    with pytest.raises(ValueError, match="Ks is on meta but means is on cpu"):
        call(args)
