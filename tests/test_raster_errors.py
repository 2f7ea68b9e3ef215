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


# One case per distinct check (the engine and the reference share prepare_inputs, so
# the reference is called once to show it; quats and scales share one shape check).
@pytest.mark.parametrize("index,bad,pattern", [
    (0, torch.rand(10, 2), r"means must have shape \[N, 3\] or \[B, N, 3\], got \[10, 2\]"),
    (0, torch.rand(3, 10, 3), r"means has 3 Gaussian sets but viewmats has 2 cameras"),
    (1, torch.rand(10, 3), r"quats must have shape \[10, 4\].*got \[10, 3\]"),
    (3, torch.rand(10, 1), r"opacities must have shape \[10\].*got \[10, 1\]"),
    (4, torch.rand(10), r"colors must have shape \[10, C\], got \[10\]"),
    (4, torch.rand(10, 33), r"colors must have 1 to 32 channels, got C = 33"),
    (5, torch.eye(4), r"viewmats must have shape \[B, 4, 4\], got \[4, 4\]"),
    (6, torch.rand(3, 3, 3), r"Ks must have shape \[B, 3, 3\] = \[2, 3, 3\].*got \[3, 3, 3\]"),
])
def test_wrong_shapes(index, bad, pattern):
    args = good()
    args[index] = bad
    with pytest.raises(ValueError, match=pattern):
        call(args)


def test_reference_validates_like_the_engine():
    args = good()
    args[1] = torch.rand(10, 3)
    with pytest.raises(ValueError, match=r"quats must have shape \[10, 4\].*got \[10, 3\]"):
        call(args, reference.rasterize)


def test_wrong_dtype():
    args = good()
    args[2] = args[2].double()
    with pytest.raises(TypeError, match=r"scales must have dtype torch.float32, got torch.float64"):
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


# The per-camera checks are one set for both backends: the CPU raises from them at
# once; CUDA turns the same checks into status bits on the device (checked on the GPU
# in test_raster_cuda.py::test_camera_and_background_checked_like_the_cpu).
BAD_CAMERAS = [
    ("skew", lambda vm, K, bg: K.__setitem__((1, 0, 1), 3.0), "Ks must be finite pinhole intrinsics", 32),
    ("K row 2", lambda vm, K, bg: K.__setitem__((0, 2, 0), 0.5), "Ks must be finite pinhole intrinsics", 32),
    ("K[2,2]", lambda vm, K, bg: K.__setitem__((1, 2, 2), 2.0), "Ks must be finite pinhole intrinsics", 32),
    ("fx = 0", lambda vm, K, bg: K.__setitem__((1, 0, 0), 0.0), "Ks must be finite pinhole intrinsics", 32),
    ("fy < 0", lambda vm, K, bg: K.__setitem__((1, 1, 1), -5.0), "Ks must be finite pinhole intrinsics", 32),
    ("viewmat nan", lambda vm, K, bg: vm.__setitem__((0, 3, 3), float("nan")), "viewmats must be finite", 32),
    ("background inf", lambda vm, K, bg: bg.__setitem__((1, 2), float("inf")), "background must be finite", 64),
]


@pytest.mark.parametrize("case,spoil,pattern,bit", BAD_CAMERAS, ids=[c[0] for c in BAD_CAMERAS])
def test_camera_checks_are_shared_by_both_backends(case, spoil, pattern, bit):
    from dgtalker.ops._inputs import prepare_inputs

    args = [a.clone() for a in good()]
    bg = torch.rand(2, 3)
    spoil(args[5], args[6], bg)
    for fn in (dgtalker.rasterize, reference.rasterize):  # the CPU path raises, naming the argument
        with pytest.raises(ValueError, match=pattern):
            call(args, fn, background=bg)
    # the CUDA path's checks: the same predicates as a bit mask, computed without reading anything back
    inp = prepare_inputs(*args, 48, 40, 0.01, 1e10, bg, check_values=False)
    assert int(inp.invalid_flags) == bit
    ok = prepare_inputs(*good(), 48, 40, 0.01, 1e10, torch.rand(2, 3), check_values=False)
    assert int(ok.invalid_flags) == 0
    # the CuPy path runs the same predicates through numpy's API: here on numpy arrays
    import numpy as np

    from dgtalker.ops._inputs import camera_checks, check_cameras_now

    with pytest.raises(ValueError, match=pattern):
        check_cameras_now(camera_checks(args[5].numpy(), args[6].numpy(), bg.numpy(), xp=np))
    check_cameras_now(camera_checks(good()[5].numpy(), good()[6].numpy(), np.random.rand(2, 3), xp=np))


def test_status_names_the_camera_and_background_bits():
    from dgtalker.ops._raster_common import _invalid_message

    assert "skew" in _invalid_message(32) and "background (non-finite)" in _invalid_message(64)
