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
    with torch.no_grad():
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
    T.mouth.place(MOUTH_Y + 0.004, 0.09, 0.028)  # a person's mouth: the file keeps its anchor
    g_head = T.pose_torso(T.gaussians(torch.zeros(1, 2), torch.zeros(1, 2)), None)
    g_all = T.with_mouth(g_head, torch.zeros(1, 2))
    assert g_all[0].shape[1] == g_head[0].shape[1] + len(T.mouth)
    p = save_talker(tmp_path / "m.safetensors", T)
    L = load_talker(p)
    assert L.mouth is not None and L.config.mouth_interior
    for k, v in T.state_dict().items():
        assert torch.equal(v, L.state_dict()[k]), k
    assert torch.equal(L.mouth.rest, T.mouth.rest) and torch.equal(L.mouth.hinge, T.mouth.hinge)
    vm, K = T.camera()
    a, _ = T.frames(torch.zeros(1, 2), torch.full((1, 2), 2.0), vm[None], K[None], 64, 64)
    b, _ = L.frames(torch.zeros(1, 2), torch.full((1, 2), 2.0), vm[None], K[None], 64, 64)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="k_lip >= 1"):
        TalkerConfig(k_exp=2, k_lip=0, mouth_interior=True)


def test_a_head_motion_carries_the_interior_with_the_head():
    from dgtalker.talker import rigid_motion

    T = Talker(tiny_generator(), TalkerConfig(k_exp=2, k_lip=2, width=64, height=64, mouth_interior=True))
    with torch.no_grad():
        g = T.pose_torso(T.gaussians(torch.zeros(1, 2), torch.zeros(1, 2)), None)
        head = rigid_motion(torch.tensor([[0.0, 0.1, 0.0, 0.002, 0.0, -0.004]]))
        still = T.with_mouth(g, torch.zeros(1, 2))
        moved = T.with_mouth(g, torch.zeros(1, 2), head=head)
    n = len(T.mouth)
    expect = still[0][:, -n:] @ head[0, :3, :3].T + head[0, :3, 3]
    assert torch.allclose(moved[0][:, -n:], expect, atol=1e-6)
    assert torch.equal(moved[0][:, :-n], still[0][:, :-n])  # the face itself is moved by pose_clip


def test_a_mouth_talker_saved_before_placement_and_parting_loads_with_the_templates_mouth(tmp_path):
    """Files written before the interior was placed from the clip and parted the face lack
    its anchor, rest, hinge and gap: they load with the template's mouth and the initial
    gap (their renders differ from before: the face now parts)."""
    from dgtalker.checkpoint import read_checkpoint, write_checkpoint
    from dgtalker.talker import FORMAT, FORMAT_VERSION

    T = Talker(tiny_generator(), TalkerConfig(k_exp=2, k_lip=2, width=64, height=64, mouth_interior=True))
    p = save_talker(tmp_path / "new.safetensors", T)
    tensors, meta, version = read_checkpoint(p, format=FORMAT, max_version=FORMAT_VERSION)
    old = {k: v for k, v in tensors.items()
           if k not in ("mouth.anchor", "mouth.gap_logit", "mouth.gap_gain")}
    assert len(old) == len(tensors) - 3
    q = write_checkpoint(tmp_path / "old.safetensors", old, format=FORMAT, version=version, meta=meta)
    L = load_talker(q)
    fresh = MouthInterior(tiny_generator().template_position, L.generator.config.gaussians_per_texel)
    for k in ("anchor", "rest", "hinge", "gap_logit", "gap_gain"):
        assert torch.equal(getattr(L.mouth, k), getattr(fresh, k)), k


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
    # placed in the clip's mouth (its corpus landmarks), as the talker's source records
    placed = ta.source["mouth_interior"]["anchor"]
    fresh.place(placed["mouth_y"], placed["z_front"], placed["half_width"])
    np.testing.assert_allclose(ta.mouth.rest.numpy(), fresh.rest.numpy(), atol=1e-4)


def test_the_interior_stays_behind_the_lips_however_far_its_shift_is_trained():
    from dgtalker.models.mouth import SHIFT_HIGH, SHIFT_LOW

    m = _mouth()
    rest = m(torch.zeros(1))[0]
    lo, hi = torch.tensor(SHIFT_LOW), torch.tensor(SHIFT_HIGH)
    for unit in ([-3.0, 40.0, 300.0], [30.0, -40.0, -300.0]):  # an optimiser that ran away
        with torch.no_grad():
            m.shift_unit.copy_(torch.tensor(unit))
        moved = (m(torch.zeros(1))[0] - rest)[0]
        assert torch.all(moved >= lo - 1e-7) and torch.all(moved <= hi + 1e-7)
        assert torch.allclose(moved[0], torch.where(torch.tensor(unit) > 0, hi, lo), rtol=0, atol=5e-5)
    assert SHIFT_HIGH[2] <= 0.001      # forwards, in front of the lips, hardly at all


def _project(points, w2c, K):
    cam = points @ w2c[:3, :3].T + w2c[:3, 3]
    uv = cam @ K.T
    return uv[:, :2] / uv[:, 2:]


def test_the_interior_is_placed_in_the_persons_mouth_from_the_tracked_points():
    """mouth_anchor finds a mouth 4 mm above the template's and 3 mm wider from its
    projections in frames of a slightly turning head; place moves the teeth there."""
    from dgtalker.models.mouth import HALF_WIDTH, mouth_anchor

    tpl = tiny_generator().template_position.detach().float()
    front = tpl[tpl[:, 2] > 0.03]

    def on_face(x, y):  # the template's front point nearest to (x, y)
        return front[((front[:, 0] - x) ** 2 + (front[:, 1] - y) ** 2).argmin()]

    true = torch.stack([on_face(-HALF_WIDTH - 0.003, MOUTH_Y + 0.004), on_face(HALF_WIDTH + 0.003, MOUTH_Y + 0.004),
                        on_face(0.0, MOUTH_Y + 0.006), on_face(0.0, MOUTH_Y + 0.002)])
    my, hw = float(true[2:, 1].mean()), float((true[1, 0] - true[0, 0]) / 2)
    assert my > MOUTH_Y + 0.002 and hw > HALF_WIDTH + 0.001     # the mouth to find is not the template's
    K = torch.as_tensor(intrinsics(512, 512, 20.0), dtype=torch.float32)
    w2cs, pts = [], []
    for yaw in np.linspace(-0.15, 0.15, 7):
        eye = (0.5 * np.sin(yaw), MOUTH_Y, 0.5 * np.cos(yaw))
        w2c = torch.as_tensor(look_at(eye, (0.0, MOUTH_Y, 0.0)), dtype=torch.float32)
        w2cs.append(w2c)
        pts.append(_project(true, w2c, K))
    pts = torch.stack(pts)
    pts[0] = float("nan")                                       # a frame without a face
    y, z, half = mouth_anchor(tpl, pts, torch.stack(w2cs), K.expand(7, 3, 3))
    assert abs(y - my) < 1e-4 and abs(half - hw) < 1e-4
    m = _mouth()
    upper = m.part == PARTS.index("upper_teeth")
    before = m.rest[upper].clone()
    m.place(y, z, half)
    assert torch.allclose(m.anchor, torch.tensor([y, z, half]))
    assert abs(float((m.rest[upper, 1] - before[:, 1]).mean()) - (y - MOUTH_Y)) < 1e-5
    assert float(m.rest[upper, 0].abs().max()) > float(before[:, 0].abs().max())   # wider mouth, wider arc
    with pytest.raises(ValueError, match="no frame has a tracked mouth"):
        mouth_anchor(tpl, torch.full((2, 4, 2), float("nan")), torch.stack(w2cs[:2]), K.expand(2, 3, 3))


def test_an_open_mouth_parts_the_face_at_the_lips_and_a_shut_one_does_not():
    """The decoded face is one sheet across the mouth: as the first lip coefficient
    rises, the Gaussians at the lip line turn transparent (so the interior shows); shut,
    they stay as decoded, and no Gaussian outside the lips ever changes."""
    from dgtalker.models.mouth import GAP_DEPTH, GAP_FLOOR, HALF_WIDTH, initial_gap

    T = Talker(tiny_generator(), TalkerConfig(k_exp=2, k_lip=2, width=64, height=64, mouth_interior=True))
    m = T.mouth
    assert len(m.gap_gaussians) > 0
    with torch.no_grad():
        m.gap_logit.fill_(2.0)                                       # a gap trained wide
    g = T.gaussians(torch.zeros(3, 2), torch.zeros(3, 2))
    opening = torch.tensor([-1.5, 0.0, 2.0])
    with torch.no_grad():
        parted = T.with_mouth(g, torch.stack([opening, torch.zeros(3)], 1))[3]
    N = g[3].shape[1]
    ratio = parted[:, :N] / g[3].detach()
    idx = m.gap_gaussians
    assert float((1 - ratio[0, idx]).max()) < 0.05                  # shut: as decoded
    assert float((1 - ratio[2, idx]).min()) > 0.7                   # wide open: the gap parts ...
    assert torch.all(ratio[2, idx] < ratio[1, idx])                 # ... more the wider
    others = torch.ones(N, dtype=torch.bool)
    others[idx] = False
    assert torch.equal(parted[:, :N][:, others], g[3].detach()[:, others])
    # where it parts at first: the lip line between the corners, hardly elsewhere
    pts = torch.tensor([[0.0, MOUTH_Y, 0.09], [0.0, MOUTH_Y + 0.012, 0.09], [HALF_WIDTH + 0.005, MOUTH_Y, 0.08]])
    share = initial_gap(pts, MOUTH_Y, HALF_WIDTH)
    assert abs(float(share[0]) - GAP_DEPTH) < 1e-6 and torch.allclose(share[1:], torch.tensor(GAP_FLOOR))


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
