"""The mouth interior (dgtalker.models.mouth): it moves with the jaw, closed lips hide it
and parted lips show it, and a talker carrying it keeps its file round trip, its
training step and its exact resume."""
import numpy as np
import pytest
import torch
from test_talker import SAMPLE, tiny_config, tiny_generator

import dgtalker
from dgtalker.camera import intrinsics, look_at
from dgtalker.models.mouth import MOUTH_Y, PARTS, MouthInterior
from dgtalker.talker import Talker, TalkerConfig, load_talker, save_talker
from dgtalker.train import identity


def _mouth():
    return MouthInterior(tiny_generator().template_position)


def test_lower_teeth_and_tongue_follow_the_jaw_and_the_upper_teeth_stay():
    m = _mouth()
    means = m(torch.tensor([-1.0, 0.0, 2.0]))[0]  # shut, typical, wide (standardised opening)
    part = m.part
    upper, lower, tongue = (means[:, part == PARTS.index(p)] for p in ("upper_teeth", "lower_teeth", "tongue"))
    assert torch.equal(upper[0], upper[2])
    drop = lower[:, :, 1].mean(1)
    assert drop[0] > drop[1] > drop[2]                          # the jaw opens downwards ...
    assert float(drop[0] - drop[2]) > 0.004                    # ... by millimetres, not a rounding
    assert float(tongue[0, :, 1].mean() - tongue[2, :, 1].mean()) > 0.002
    assert torch.all(m.jaw_angle(torch.tensor([-1.0, 0.0, 2.0])).diff() > 0)


def test_the_interior_makes_no_tensor_from_host_data_per_call():
    """Every constant the forward needs is a buffer: a tensor made from Python data in the
    forward copies from the host on every call, which a CUDA graph capture of the frame
    path refuses (bench_render.py's graph replay)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Created(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    m = _mouth()
    opening = torch.tensor([-1.0, 0.5])
    with Created() as seen:
        out = m(opening)
    assert not [op for op in seen.ops if "lift_fresh" in op or "scalar_tensor" in op], seen.ops
    assert out[1].shape == (2, len(m), 4) and torch.equal(out[1][0, 0], torch.tensor([1.0, 0.0, 0.0, 0.0]))


def _render(gaussians, size=96):
    """Front view of the mouth region (head frame; camera 0.35 m in front of the lips)."""
    w2c = torch.as_tensor(look_at((0.0, MOUTH_Y, 0.45), (0.0, MOUTH_Y, 0.0)), dtype=torch.float32)
    K = torch.as_tensor(intrinsics(size, size, 12.0), dtype=torch.float32)
    means, quats, scales, opac, colors = gaussians
    img, alpha, _ = dgtalker.rasterize(means, quats, scales, opac, colors, w2c[None], K[None], size, size,
                                       background=torch.zeros(3))
    return img[0], alpha[0]


def _lips(z_front: float, gap: float):
    """An opaque skin-coloured sheet at the lips' depth with a horizontal slit ``gap`` high."""
    x, y = torch.meshgrid(torch.linspace(-0.04, 0.04, 41), torch.linspace(MOUTH_Y - 0.04, MOUTH_Y + 0.04, 41),
                          indexing="ij")
    keep = (y - MOUTH_Y).abs() >= gap / 2
    pts = torch.stack([x[keep], y[keep], torch.full_like(x[keep], z_front + 0.002)], -1)
    n = len(pts)
    return (pts, torch.tensor([1.0, 0, 0, 0]).expand(n, 4), torch.full((n, 3), 0.0025), torch.full((n,), 0.99),
            torch.tensor([0.8, 0.6, 0.5]).expand(n, 3))


def test_closed_lips_hide_the_interior_and_parted_lips_show_it():
    m = _mouth()
    z_front = float(m.rest[:, 2].max()) + 0.0075  # the upper teeth sit 7.5 mm behind the lips' front
    inner = tuple(t[0] for t in m(torch.tensor([2.0])))
    both = lambda lips: tuple(torch.cat([a, b]) for a, b in zip(lips, inner))  # noqa: E731
    shut, _ = _render(_lips(z_front, 0.0))
    shut_with, _ = _render(both(_lips(z_front, 0.0)))
    assert float((shut_with - shut).abs().max()) < 0.02      # behind shut lips: not seen
    parted, _ = _render(_lips(z_front, 0.016))
    parted_with, _ = _render(both(_lips(z_front, 0.016)))
    diff = (parted_with - parted).abs().sum(-1)
    assert float(diff.max()) > 0.3                            # through the slit: teeth and cavity
    rows = torch.nonzero(diff > 0.1)[:, 0]
    assert 30 < float(rows.float().mean()) < 66               # ... in the middle of the picture


def test_talker_with_a_mouth_round_trips_and_renders_it(tmp_path):
    T = Talker(tiny_generator(), TalkerConfig(k_exp=2, k_lip=2, width=64, height=64, mouth_interior=True))
    with torch.no_grad():
        T.mouth.shift_unit.add_(0.1)
        T.mouth.colour_logit.add_(0.3)
    g_head = T.pose_torso(T.gaussians(torch.zeros(1, 2), torch.zeros(1, 2)), None)
    g_all = T.with_mouth(g_head, torch.zeros(1, 2))
    assert g_all[0].shape[1] == g_head[0].shape[1] + len(T.mouth)
    p = save_talker(tmp_path / "m.safetensors", T)
    L = load_talker(p)
    assert L.mouth is not None and L.config.mouth_interior
    for k, v in T.state_dict().items():
        assert torch.equal(v, L.state_dict()[k]), k
    vm, K = T.camera()
    a, _ = T.frames(torch.zeros(1, 2), torch.full((1, 2), 2.0), vm[None], K[None], 64, 64)
    b, _ = L.frames(torch.zeros(1, 2), torch.full((1, 2), 2.0), vm[None], K[None], 64, 64)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="k_lip >= 1"):
        TalkerConfig(k_exp=2, k_lip=0, mouth_interior=True)


def test_training_with_a_mouth_learns_it_and_resumes_exactly(tmp_path):
    with pytest.raises(ValueError, match="lip_target > 0"):
        tiny_config(mouth_interior=True, lip_target=0.0).validate()
    cfg = dict(steps=4, mouth_interior=True)
    a = tmp_path / "a.safetensors"
    identity.train_identity(SAMPLE, a, tiny_config(**cfg), prior=tiny_generator(), device="cpu", progress=False)
    b = tmp_path / "b.safetensors"
    identity.train_identity(SAMPLE, b, tiny_config(**{**cfg, "steps": 2}), prior=tiny_generator(), device="cpu",
                            progress=False)
    identity.train_identity(SAMPLE, b, tiny_config(**cfg), prior=tiny_generator(), device="cpu", progress=False)
    ta, tb = load_talker(a), load_talker(b)
    fresh = MouthInterior(tiny_generator().template_position)
    assert not torch.equal(ta.mouth.colour_logit, fresh.colour_logit)  # the photometric loss reached it
    for k, v in ta.state_dict().items():
        assert torch.equal(v, tb.state_dict()[k]), k
    np.testing.assert_array_equal(ta.mouth.rest.numpy(), fresh.rest.numpy())


def test_the_interior_stays_at_the_mouth_however_far_its_shift_is_trained():
    from dgtalker.models.mouth import MAX_SHIFT, MouthInterior

    m = MouthInterior(tiny_generator().template_position.detach().float())
    rest = m(torch.zeros(1))[0]
    with torch.no_grad():
        m.shift_unit.copy_(torch.tensor([-3.0, 40.0, -300.0]))  # an optimiser that ran away
    moved = m(torch.zeros(1))[0] - rest
    assert float(moved.abs().max()) <= MAX_SHIFT + 1e-7
    assert torch.allclose(moved[0, 0], MAX_SHIFT * torch.tanh(torch.tensor([-3.0, 40.0, -300.0])))


@pytest.mark.gpu
def test_a_talker_with_a_mouth_renders_in_a_cuda_graph():
    """The frame path with the interior captures into a CUDA graph (as bench_render.py
    replays it) and a replay with other coefficients equals the eager frames."""
    from dgtalker.ops.raster import GraphStatus

    T = Talker(tiny_generator(), TalkerConfig(k_exp=2, k_lip=2, width=64, height=64, mouth_interior=True)).cuda()
    vm, K = (x[None].cuda() for x in T.camera())
    ce, cl = torch.zeros(2, 2, device="cuda"), torch.zeros(2, 2, device="cuda")
    vms, Ks = vm.expand(2, -1, -1).contiguous(), K.expand(2, -1, -1).contiguous()

    def step():
        with torch.no_grad():
            return T.frames(ce, cl, vms, Ks, 64, 64)

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        step()
    torch.cuda.current_stream().wait_stream(s)
    graph, status = torch.cuda.CUDAGraph(), GraphStatus()
    with status, torch.cuda.graph(graph):
        out = step()
    cl.copy_(torch.tensor([[2.0, 0.5], [-1.0, 0.0]], device="cuda"))
    graph.replay()
    assert not status.check()
    eager = step()
    assert torch.allclose(out[0], eager[0], atol=1e-5)
