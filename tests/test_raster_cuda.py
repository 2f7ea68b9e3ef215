"""CUDA backend: against the reference and the CPU backend, determinism, graph
capture, streams, CuPy, and device-side input checks. Skipped without a GPU."""
import warnings

import pytest
import torch

import dgtalker
from dgtalker.ops import raster as raster_ops
from raster_check import GRAD_RTOL, assert_matches_reference, rel_err, run
from scenes import camera, scene

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("batch,per_image,channels,width,height,n", [
    (1, False, 3, 48, 40, 150),
    (1, False, 1, 70, 45, 200),
    (2, True, 3, 33, 17, 120),
    (3, False, 16, 40, 36, 100),
    (2, True, 32, 48, 40, 80),
])
def test_cuda_matches_reference(batch, per_image, channels, width, height, n):
    args = scene(batch=batch, n=n, width=width, height=height, channels=channels, per_image=per_image,
                 seed=n + channels)
    assert_matches_reference(args, width, height, device="cuda", background=torch.rand(channels) + 0.1)


@pytest.mark.parametrize("deterministic", [False, True])
def test_cuda_matches_cpu_backend_at_scale(deterministic):
    args = scene(batch=2, n=20000, width=256, height=192, per_image=True, seed=77, scale=(0.003, 0.02),
                 spread=1.2)
    out_c, grad_c = run(dgtalker.rasterize, args, 256, 192, torch.float32, "cpu")
    out_g, grad_g = run(dgtalker.rasterize, args, 256, 192, torch.float32, "cuda", deterministic=deterministic)
    for a, b in zip(out_g, out_c):
        assert (a - b).abs().max() < 1e-4
    for a, b in zip(grad_g, grad_c):
        assert rel_err(a, b) < GRAD_RTOL


def _grads(args, **kw):
    xs = [a.detach().cuda().requires_grad_(i < 5) for i, a in enumerate(args)]
    img, alpha, depth = dgtalker.rasterize(*xs, 128, 96, **kw)
    (img.square().sum() + alpha.sum() + 0.1 * depth.sum()).backward()
    return [x.grad for x in xs[:5]]


def test_deterministic_mode_is_bit_identical():
    args = scene(batch=2, n=5000, width=128, height=96, seed=31, scale=(0.005, 0.05))
    first = _grads(args, deterministic=True)
    for _ in range(3):
        again = _grads(args, deterministic=True)
        for a, b in zip(first, again):
            assert torch.equal(a, b)
    fast = _grads(args, deterministic=False)
    for a, b in zip(first, fast):
        assert rel_err(a.double(), b.double()) < 1e-4


def test_cuda_graph_capture_matches_eager():
    args = [a.cuda() for a in scene(batch=2, n=3000, width=128, height=96, seed=32, scale=(0.005, 0.05))]
    params = [a.clone().requires_grad_(True) for a in args[:5]]
    cams = args[5:]

    def step():
        for p in params:
            p.grad = None
        img, alpha, depth = dgtalker.rasterize(*params, *cams, 128, 96, deterministic=True)
        (img.square().sum() + alpha.sum() + 0.1 * depth.sum()).backward()
        return img, alpha, depth

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # warm-up sizes the capacity outside capture
            step()
    torch.cuda.current_stream().wait_stream(side)
    eager_out = [t.detach().clone() for t in step()]
    eager_grads = [p.grad.clone() for p in params]

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = step()
    with torch.no_grad():  # new inputs, same buffers
        for p, a in zip(params, args[:5]):
            p.copy_(a)
    graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(static_out, eager_out):
        assert torch.equal(a, b)
    for p, g in zip(params, eager_grads):
        assert torch.equal(p.grad, g)


def test_non_default_stream():
    args = scene(batch=2, n=4000, width=128, height=96, seed=33, scale=(0.005, 0.05))
    ref = [t.detach().clone() for t in dgtalker.rasterize(*[a.cuda() for a in args], 128, 96)]
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        xs = [a.cuda(non_blocking=True) for a in args]
        # a long queue on the stream first, so a wrong-stream launch would read stale data
        busy = torch.randn(4096, 4096, device="cuda")
        for _ in range(10):
            busy = busy @ busy * 1e-3
        out = dgtalker.rasterize(*xs, 128, 96)
    stream.synchronize()
    for a, b in zip(out, ref):
        assert torch.allclose(a, b, atol=1e-6)


def test_cupy_forward_matches_torch():
    cp = pytest.importorskip("cupy")
    from dgtalker.ops.raster_array import rasterize_cupy
    args = scene(batch=2, n=3000, width=96, height=80, per_image=True, seed=34, scale=(0.005, 0.05))
    bg = torch.rand(3)
    ref = dgtalker.rasterize(*[a.cuda() for a in args], 96, 80, background=bg.cuda())
    out = rasterize_cupy(*[cp.asarray(a.numpy()) for a in args], 96, 80, background=cp.asarray(bg.numpy()))
    for a, b in zip(out, ref):
        assert isinstance(a, cp.ndarray)
        assert torch.allclose(torch.as_tensor(cp.asnumpy(a)), b.cpu(), atol=1e-5)


def test_invalid_values_found_on_device():
    args = [a.cuda() for a in scene(n=100, seed=35)]
    dgtalker.rasterize(*args, 48, 40)  # sizes this shape, so later calls do not wait
    args[0][7, 1] = float("nan")
    with pytest.raises(raster_ops.RasterInputError, match="means"):
        dgtalker.rasterize(*args, 48, 40, checked=True)
    img, _, _ = dgtalker.rasterize(*args, 48, 40)  # unchecked: the bad Gaussian is dropped, no NaN
    assert torch.isfinite(img).all()
    with pytest.raises(raster_ops.RasterInputError, match="means"):
        raster_ops.check_status(wait=True)


def test_overflow_is_grown_and_redone():
    viewmats, Ks = camera(1, 200, 160)
    small = scene(n=200, width=200, height=160, seed=36, scale=(0.002, 0.004))
    big = list(small)
    big[2] = big[2] * 60.0  # same shape, far more tile intersections
    xs = lambda a: [t.cuda() for t in a]
    dgtalker.rasterize(*xs(small), 200, 160)  # sizes the capacity for the small scene
    assert_matches_reference(big, 200, 160, device="cuda", checked=True)  # redone at once
    dgtalker.rasterize(*xs(small), 200, 160)
    dgtalker.rasterize(*xs([a * 1 for a in small[:2]] + [small[2] * 200.0] + list(small[3:])), 200, 160)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        raster_ops.check_status(wait=True)
    assert any("Capacity is now" in str(w.message) for w in caught)


def test_mixed_devices_named_on_cuda():
    args = [a.cuda() for a in scene(n=10, seed=37)]
    args[6] = args[6].cpu()
    with pytest.raises(ValueError, match="Ks is on cpu but means is on cuda"):
        dgtalker.rasterize(*args, 48, 40)


@pytest.mark.parametrize("what", ["skew", "K row 2", "background"])
def test_camera_and_background_checked_like_the_cpu(what):
    """Inputs the CPU refuses (tests/test_raster_errors.py) are reported on CUDA too:
    in the call with checked=True, at the next check otherwise."""
    args = [a.cuda() for a in scene(batch=2, n=100, seed=38)]
    bg = torch.rand(2, 3, device="cuda")
    dgtalker.rasterize(*args, 48, 40, background=bg)  # sizes this shape
    raster_ops.check_status(wait=True)
    if what == "skew":
        args[6][1, 0, 1] = 2.0
    elif what == "K row 2":
        args[6][0, 2, 0] = 0.5
    else:
        bg[1, 0] = float("nan")
    name = "background" if what == "background" else "viewmats/Ks"
    with pytest.raises(raster_ops.RasterInputError, match=name):
        dgtalker.rasterize(*args, 48, 40, background=bg, checked=True)
    dgtalker.rasterize(*args, 48, 40, background=bg)  # deferred
    with pytest.raises(raster_ops.RasterInputError, match=name):
        raster_ops.check_status(wait=True)
