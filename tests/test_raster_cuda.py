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


def _graph_step(params, cams, W, H):
    def step():
        for p in params:
            p.grad = None
        img, alpha, depth = dgtalker.rasterize(*params, *cams, W, H, deterministic=True)
        (img.square().sum() + alpha.sum() + 0.1 * depth.sum()).backward()
        return img, alpha, depth
    return step


def _capture(step, status):
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # warm-up sizes the capacity outside capture
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with status, torch.cuda.graph(graph):
        out = step()
    return graph, out


def test_cuda_graph_capture_matches_eager():
    """Replays with inputs other than the captured ones equal eager calls on them."""
    first = [a.cuda() for a in scene(batch=2, n=3000, width=128, height=96, seed=32, scale=(0.005, 0.05))]
    second = [a.cuda() for a in scene(batch=2, n=3000, width=128, height=96, seed=39, scale=(0.005, 0.05))]
    second[5:] = first[5:]  # the cameras are captured as they are
    params = [a.clone().requires_grad_(True) for a in first[:5]]
    step = _graph_step(params, first[5:], 128, 96)
    status = raster_ops.GraphStatus()
    graph, static_out = _capture(step, status)
    with torch.no_grad():  # new inputs, same buffers
        for p, a in zip(params, second[:5]):
            p.copy_(a)
    graph.replay()
    torch.cuda.synchronize()
    assert status.check() is False
    replay_out = [t.clone() for t in static_out]
    replay_grads = [p.grad.clone() for p in params]
    eager_out = [t.detach() for t in step()]  # the same new inputs, eagerly
    for a, b in zip(replay_out, eager_out):
        assert torch.equal(a, b)
    for p, g in zip(params, replay_grads):
        assert torch.equal(p.grad, g)
    assert not torch.equal(replay_out[0], _graph_first_image(first))  # the replay did use the new inputs


def _graph_first_image(args):
    return dgtalker.rasterize(*args, 128, 96, deterministic=True)[0].detach()


def test_graph_replay_reports_overflow_and_bad_input():
    """A replay whose inputs need more intersections than the capture had room for is
    detected by GraphStatus.check(), which grows the capacity; a re-capture then fits.
    Invalid values in a replay raise at the check."""
    small = [a.cuda() for a in scene(n=400, width=160, height=128, seed=40, scale=(0.002, 0.004))]
    params = [a.clone().requires_grad_(True) for a in small[:5]]
    step = _graph_step(params, small[5:], 160, 128)
    status = raster_ops.GraphStatus()
    graph, out = _capture(step, status)
    with torch.no_grad():
        params[2].mul_(60.0)  # same shapes, far more tile intersections
    graph.replay()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert status.check() is True  # reported here, not lost
    big = [p.detach().clone() for p in params]
    graph, out = _capture(step, status)  # re-capture with the grown capacity
    graph.replay()
    assert status.check() is False
    ref = dgtalker.rasterize(*big, *small[5:], 160, 128, deterministic=True, checked=True)
    assert torch.allclose(out[0], ref[0], atol=1e-5)
    with torch.no_grad():
        params[0][3, 0] = float("nan")
    graph.replay()
    with pytest.raises(raster_ops.RasterInputError, match="means.*CUDA-graph replay"):
        status.check()


def test_non_default_stream():
    """The inputs are written on a side stream behind a long queue: a kernel launched on
    any other stream would read them before they exist (zeros), and differ."""
    args = scene(batch=2, n=4000, width=128, height=96, seed=33, scale=(0.005, 0.05))
    ref = [t.detach().clone() for t in dgtalker.rasterize(*[a.cuda() for a in args], 128, 96)]
    gpu = [a.cuda() for a in args]
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    for checked in (True, False):
        with torch.cuda.stream(stream):
            xs = [torch.zeros_like(a) for a in gpu]
            busy = torch.randn(4096, 4096, device="cuda")
            for _ in range(20):  # ~tens of ms of queued work before the inputs are written
                busy = busy @ busy * 1e-3
            for x, a in zip(xs, gpu):
                x.copy_(a + 0 * busy[0, 0])
            out = dgtalker.rasterize(*xs, 128, 96, checked=checked)
            out = [t.clone() for t in out]
        stream.synchronize()
        for a, b in zip(out, ref):
            assert torch.allclose(a, b, atol=1e-6)
    raster_ops.check_status(wait=True)


def test_threads_render_concurrently_on_their_own_streams():
    """The engine releases the GIL: threads rendering unchecked on their own streams get
    the same images as one thread, and the deferred checks stay consistent."""
    args = [a.cuda() for a in scene(batch=2, n=2000, width=96, height=80, seed=41, scale=(0.005, 0.05))]
    ref = dgtalker.rasterize(*args, 96, 80, checked=True)[0]
    results, errors = [], []

    def worker():
        try:
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.default_stream())
            with torch.cuda.stream(s):
                for _ in range(100):  # more than the ring's first block in flight
                    img = dgtalker.rasterize(*args, 96, 80)[0]
            s.synchronize()
            results.append(img)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    import threading
    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert raster_ops.check_status(wait=True) == 0
    for img in results:
        assert torch.allclose(img, ref, atol=1e-6)
    for ring in raster_ops._BOOK.rings.values():
        assert not ring.pending


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


def test_cupy_forward_rejects_bad_cameras_and_sizes():
    cp = pytest.importorskip("cupy")
    from dgtalker.ops.raster_array import rasterize_cupy
    args = [cp.asarray(a.numpy()) for a in scene(n=100, seed=37)]
    bad_k = args[6].copy()
    bad_k[0, 0, 0] = -1.0
    with pytest.raises(ValueError, match="Ks must be finite pinhole"):
        rasterize_cupy(*args[:6], bad_k, 48, 40)
    bad_v = args[5].copy()
    bad_v[0, 1, 3] = float("nan")
    with pytest.raises(ValueError, match="viewmats must be finite"):
        rasterize_cupy(*args[:5], bad_v, args[6], 48, 40)
    with pytest.raises(ValueError, match="width"):
        rasterize_cupy(*args, 0, 40)
    with pytest.raises(ValueError, match="near"):
        rasterize_cupy(*args, 48, 40, near=0.0)
    with pytest.raises(ValueError, match="background"):
        rasterize_cupy(*args, 48, 40, background=cp.zeros(5, dtype=cp.float32))


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
