"""The talker: blendshapes, audio encoder, torso skinning, checkpoints, and identity
training with masked cross-view supervision (tiny configuration, CPU)."""
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from priors import TINY

from dgtalker.models.audio_encoder import AudioEncoder, AudioEncoderConfig
from dgtalker.models.blendshapes import Blendshapes
from dgtalker.models.generator import Generator, GeneratorConfig
from dgtalker.talker import (Talker, TalkerCheckpointError, TalkerConfig, body_transforms, load_talker, mean_camera,
                             rigid_motion, save_talker, skin)
from dgtalker.train import clip, identity, losses, plate, sampler, state
from dgtalker.train.config import IdentityTrainConfig

SAMPLE = Path(__file__).parent / "data" / "sample"


def tiny_generator(seed=0):
    return Generator(GeneratorConfig(**TINY), seed=seed)


def tiny_config(**kw):
    base = dict(steps=4, resolution=64, pairs=2, k_exp=2, k_lip=3, invert_steps=2, invert_resolution=32,
                invert_views=4, checkpoint_every=100, preview_every=100, amp=False)
    base.update(kw)
    return IdentityTrainConfig(**base)


# -- blendshapes -------------------------------------------------------------------------
def test_blendshapes_stay_orthonormal_after_optimizer_steps():
    torch.manual_seed(0)
    bs = Blendshapes(64, 5, 7, seed=3)
    opt = torch.optim.Adam(bs.parameters(), lr=0.05)
    target = torch.randn(12, 64)
    for _ in range(50):
        B = bs.basis()
        loss = (B - target).pow(2).sum() + bs.log_scale.pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    B = bs.basis().detach()
    assert B.shape == (12, 64)
    assert bs.orthogonality_error() < 1e-5
    assert float((B @ B.T - torch.eye(12)).abs().max()) < 1e-5
    # the optimisation moved the subspace (the test is not vacuous)
    assert float((B - Blendshapes(64, 5, 7, seed=3).basis().detach()).abs().max()) > 0.1
    B_exp, B_lip = (b.detach() for b in bs.bases())
    assert B_exp.shape == (5, 64) and B_lip.shape == (7, 64)
    assert float((B_exp @ B_lip.T).abs().max()) < 1e-5


def test_blendshapes_reject_bad_sizes():
    with pytest.raises(ValueError, match="k_exp \\+ k_lip"):
        Blendshapes(4, 3, 2)
    with pytest.raises(ValueError, match="k_lip"):
        Blendshapes(16, 2, -1)


# -- audio encoder -----------------------------------------------------------------------
def test_audio_encoder_shapes_and_errors():
    enc = AudioEncoder(AudioEncoderConfig(k_exp=3, k_lip=4, channels=16, embed=16))
    w = torch.randn(11, 61, 80)
    ce, cl = enc(w)
    assert ce.shape == (11, 3) and cl.shape == (11, 4)
    assert torch.isfinite(ce).all() and torch.isfinite(cl).all()
    with pytest.raises(ValueError, match="windows must be"):
        enc(torch.randn(11, 60, 80))
    with pytest.raises(ValueError, match="windows must be"):
        enc(torch.randn(0, 61, 80))


def test_causal_encoder_look_ahead_is_bounded():
    cfg = AudioEncoderConfig(k_exp=2, k_lip=2, channels=16, embed=16).causal(0.2)
    assert cfg.lookahead_seconds() <= 0.2 + 1e-9
    assert cfg.lookahead_mel < cfg.half_window
    enc = AudioEncoder(cfg, seed=1)
    torch.manual_seed(0)
    T, t = 20, 9
    w = torch.randn(T, 61, 80)
    ce, cl = enc(w)
    # audio beyond the look-ahead: windows of later frames, and mel frames of frame t's
    # own (and its future neighbours') windows past the bound
    w2 = w.clone()
    w2[t + cfg.future + 1:] = torch.randn_like(w2[t + cfg.future + 1:])
    for k in range(t - cfg.past, t + cfg.future + 1):
        w2[k, cfg.half_window + cfg.lookahead_mel + 1:] = 5.0
    ce2, cl2 = enc(w2)
    assert torch.allclose(ce[t], ce2[t]) and torch.allclose(cl[t], cl2[t])
    # ... while audio inside the look-ahead does change it
    w3 = w.clone()
    w3[t, cfg.half_window + cfg.lookahead_mel] += 3.0
    ce3, cl3 = enc(w3)
    assert not torch.allclose(torch.cat([ce[t], cl[t]]), torch.cat([ce3[t], cl3[t]]))
    # the full encoder looks further ahead than the causal bound
    assert AudioEncoderConfig().lookahead_seconds() > 0.2


# -- torso and cameras ---------------------------------------------------------------------
def test_skinning_moves_the_torso_with_the_body_and_keeps_the_head():
    G = tiny_generator()
    T = Talker(G, TalkerConfig(k_exp=1, k_lip=1, width=32, height=32))
    wgt = T.skin_weight
    assert float(wgt.max()) == 1.0 and float(wgt.min()) == 0.0
    means, quats, *_ = G.gaussians(G.mean_w()[None])
    body = torch.eye(4)[None].clone()
    c, s = np.cos(0.3), np.sin(0.3)
    body[0, :3, :3] = torch.tensor([[c, 0, s], [0, 1, 0], [-s, 0, c]], dtype=torch.float32)
    body[0, :3, 3] = torch.tensor([0.01, 0.02, 0.0])
    m2, q2 = skin(means, quats, wgt, body)
    head, torso = wgt == 0, wgt == 1
    assert torch.equal(m2[0, head], means[0, head])
    moved = means[0, torso] @ body[0, :3, :3].T + body[0, :3, 3]
    assert torch.allclose(m2[0, torso], moved, atol=1e-6)
    assert torch.allclose(q2.norm(dim=-1), torch.ones(q2.shape[:2]), atol=1e-5)
    m3, q3 = skin(means, quats, wgt, torch.eye(4)[None])
    assert torch.allclose(m3, means, atol=1e-7) and torch.allclose(q3, quats, atol=1e-6)


def test_rigid_motion_is_rodrigues_with_a_finite_gradient_at_zero():
    params = torch.tensor([[0.0, 0.3, 0.0, 0.01, -0.02, 0.03], [0.0] * 6, [1e-7, 0, 0, 0, 0, 0]])
    M = rigid_motion(params)
    c, s = np.cos(0.3), np.sin(0.3)
    expect = torch.tensor([[c, 0, s], [0, 1, 0], [-s, 0, c]], dtype=torch.float32)
    assert torch.allclose(M[0, :3, :3], expect, atol=1e-6)
    assert torch.allclose(M[0, :3, 3], params[0, 3:]) and torch.equal(M[:, 3], torch.tensor([[0, 0, 0, 1.0]] * 3))
    assert torch.allclose(M[1], torch.eye(4)) and torch.allclose(M[2], torch.eye(4), atol=1e-6)
    R = M[:, :3, :3]
    assert torch.allclose(R @ R.transpose(1, 2), torch.eye(3).expand(3, 3, 3), atol=1e-6)
    # the gradient at zero (where every correction starts) is finite and that of a small rotation
    p = torch.zeros(1, 6, requires_grad=True)
    rigid_motion(p)[0, 0, 1].backward()  # R01 = -rz for small rotations
    assert torch.isfinite(p.grad).all() and torch.allclose(p.grad[0], torch.tensor([0, 0, -1.0, 0, 0, 0]), atol=1e-5)


def test_a_head_motion_moves_the_head_and_not_the_shoulders():
    G = tiny_generator()
    T = Talker(G, TalkerConfig(k_exp=1, k_lip=1, width=32, height=32))
    head = rigid_motion(torch.tensor([[0, 0, 0, 0, 0, -0.005], [0, 0, 0, 0, 0, 0.015]]))
    with torch.no_grad():
        g = G.gaussians(G.mean_w()[None].expand(2, -1))
        w2c = torch.eye(4)[None].repeat(2, 1, 1)
        posed = T.pose_clip(g, w2c)
        moved = T.pose_clip(g, w2c, head=head)
    wgt = T.skin_weight
    still, whole = wgt == 1, wgt == 0
    assert torch.equal(moved[0][:, still], posed[0][:, still])
    shift = moved[0][:, whole] - posed[0][:, whole]
    assert torch.allclose(shift[..., 2], torch.tensor([-0.005, 0.015])[:, None], atol=1e-6)
    assert float(shift[..., :2].abs().max()) < 1e-6


def test_mean_camera_and_body_transforms():
    from dgtalker.camera import orbit

    cams = torch.stack([orbit(y, p, width=64, height=64).viewmats[0] for y, p in ((-10, 0), (10, 0), (0, 5), (0, -5))])
    mc = mean_camera(cams)
    assert torch.allclose(mc[:3, :3] @ mc[:3, :3].T, torch.eye(3), atol=1e-5)
    front = orbit(0, 0, width=64, height=64).viewmats[0]
    assert torch.allclose(mc[:3, :3], front[:3, :3], atol=1e-5)
    assert torch.allclose(mc[:3, 3], front[:3, 3], atol=1e-2)  # the mean of centres on a sphere lies inside it
    Tb = body_transforms(cams, mc)
    assert torch.allclose(cams @ Tb, mc.expand(4, -1, -1), atol=1e-5)  # the torso sees the body camera


# -- training ------------------------------------------------------------------------------
def test_cross_batch_takes_lips_from_i_and_expression_from_j():
    ce_i, cl_i = torch.full((2, 2), 1.0), torch.full((2, 3), 2.0)
    ce_j, cl_j = torch.full((2, 2), 3.0), torch.full((2, 3), 4.0)
    c_exp, c_lip = sampler.compose_cross_batch(ce_i, cl_i, ce_j, cl_j)
    assert torch.equal(c_exp[4:], ce_j) and torch.equal(c_lip[4:], cl_i)
    assert torch.equal(c_exp[:2], ce_i) and torch.equal(c_lip[2:4], cl_j)


def test_cross_view_losses_see_only_their_masks():
    torch.manual_seed(0)
    H = 16
    r_i, r_j = torch.rand(2, H, H, 3), torch.rand(2, H, H, 3)
    lower = torch.zeros(2, H, H)
    lower[:, 10:14, 4:12] = 1.0
    upper = torch.zeros(2, H, H)
    upper[:, 2:6, 3:13] = 1.0
    bi = {"rgb": torch.rand(2, H, H, 3), "lower": lower, "upper": upper}
    bj = {"rgb": torch.rand(2, H, H, 3), "lower": lower, "upper": upper}
    lip, expr = losses.cross_view_losses(r_i, r_j, bi, bj)
    bi2 = dict(bi, rgb=torch.where(lower[..., None] > 0, bi["rgb"], torch.rand(2, H, H, 3)))
    bj2 = dict(bj, rgb=torch.where(upper[..., None] > 0, bj["rgb"], torch.rand(2, H, H, 3)))
    lip2, expr2 = losses.cross_view_losses(r_i, r_j, bi2, bj2)
    assert float(lip2) == pytest.approx(float(lip), abs=1e-7) and float(expr2) == pytest.approx(float(expr), abs=1e-7)
    # and pixels inside the masks do count
    bi3 = dict(bi, rgb=bi["rgb"] + 0.5 * lower[..., None])
    assert float(losses.cross_view_losses(r_i, r_j, bi3, bj)[0]) != pytest.approx(float(lip))


def test_leak_loss_compares_only_its_regions():
    """The cross latent's lower face against latent i, its upper face against latent j;
    Gaussians elsewhere (and the other pairing) do not count."""
    torch.manual_seed(0)
    P, N = 2, 40
    lower = torch.zeros(N, dtype=torch.bool)
    lower[:10] = True
    upper = torch.zeros(N, dtype=torch.bool)
    upper[10:20] = True
    own_i = [torch.rand(P, N, 3), None, None, torch.rand(P, N), torch.rand(P, N, 3)]
    own_j = [torch.rand(P, N, 3), None, None, torch.rand(P, N), torch.rand(P, N, 3)]

    def cross_from(lo, up, rest):
        return [torch.where(lower[None, :, None] if t.dim() == 3 else lower[None], a,
                            torch.where(upper[None, :, None] if t.dim() == 3 else upper[None], b, c))
                if t is not None else None for t, a, b, c in zip(own_i, lo, up, rest)]

    def loss(cross):
        g = [None if a is None else torch.cat([a, b, c]) for a, b, c in zip(own_i, own_j, cross)]
        return float(losses.leak_loss(g, P, lower, upper))

    noise = [torch.rand(P, N, 3), None, None, torch.rand(P, N), torch.rand(P, N, 3)]
    assert loss(cross_from(own_i, own_j, noise)) == pytest.approx(0.0, abs=1e-7)  # outside the regions: free
    assert loss(cross_from(own_j, own_j, noise)) > 0.5  # the expression moved the lower face
    assert loss(cross_from(own_i, own_i, noise)) > 0.5  # the lips moved the upper face
    # a ratio: branches that do less everywhere (every difference halved) score the same
    d_j, d_c = [torch.rand(P, N, 3), None, None, torch.rand(P, N), torch.rand(P, N, 3)], noise

    def scaled(k):
        g = [None if a is None else torch.cat([a, a + k * dj, a + k * dc]) for a, dj, dc in zip(own_i, d_j, d_c)]
        return float(losses.leak_loss(g, P, lower, upper))

    assert scaled(0.5) == pytest.approx(scaled(1.0), rel=0.01) and scaled(1.0) > 0.1


def test_face_regions_of_the_template():
    g = tiny_generator()
    lower, upper = losses.face_regions(g.template_position)
    assert lower.sum() > 0 and upper.sum() > 0 and not (lower & upper).any()
    y = g.template_position[:, 1]
    assert float(y[lower].max()) < float(y[upper].min())


def test_cross_view_step_renders_one_latent_at_both_cameras(tmp_path, monkeypatch):
    """The step's rasterizer call gets 4P images; the last 2P are the cross latent's
    Gaussians (the same for camera i and camera j before torso posing)."""
    from dgtalker.data import load

    cfg = tiny_config()
    data = clip.ClipFrames(load(SAMPLE), load(SAMPLE).splits["train"], 64, progress=False)
    talker = Talker(tiny_generator(), TalkerConfig(k_exp=2, k_lip=3, width=96, height=96),
                    residual_frames=data.num_frames)
    seen = {}
    orig = sampler.gather

    def spy(gauss, idx):
        seen["latents"], seen["idx"] = gauss[0].shape[0], idx.clone()
        return orig(gauss, idx)

    monkeypatch.setattr(identity, "gather", spy)
    opt = state.make_optimizer(talker, cfg)
    identity.train_step(talker, None, opt, data, 0, cfg)
    P = cfg.pairs
    assert seen["latents"] == 3 * P
    assert torch.equal(seen["idx"], torch.cat([torch.arange(P), torch.arange(P, 2 * P), torch.arange(2 * P, 3 * P),
                                               torch.arange(2 * P, 3 * P)]))
    identity.train_step(talker, None, opt, data, 1, IdentityTrainConfig(**{**cfg.__dict__, "cross_view": False}))
    assert seen["latents"] == 2 * P


def test_random_background_composites_the_targets_and_the_renders(monkeypatch):
    """On a random-background step the frames are composited over one seeded colour by
    their foreground masks, and the renders over the same colour (not the plate)."""
    from dgtalker.data import load

    cfg = tiny_config(random_background=0.5)
    drawn = [plate.random_background(s, cfg, "cpu") for s in range(400)]
    share = np.mean([c is not None for c in drawn])
    assert 0.4 < share < 0.6, share
    assert all(plate.random_background(s, cfg, "cpu") is None for s in range(50) if drawn[s] is None)
    s = next(s for s, c in enumerate(drawn) if c is not None)
    assert torch.equal(plate.random_background(s, cfg, "cpu"), drawn[s])  # seeded by the step
    assert plate.random_background(s, tiny_config(random_background=0.0), "cpu") is None  # 0: always the plate

    data = clip.ClipFrames(load(SAMPLE), load(SAMPLE).splits["train"], 64, progress=False)
    batch = data.batch(torch.tensor([0, 1]))
    colour = torch.tensor([0.9, 0.1, 0.3])
    over = plate.over_background(batch, colour)
    fg = batch["fg"][..., None]
    assert torch.allclose(over["rgb"], batch["rgb"] * fg + colour * (1 - fg))
    far = batch["fg"] < 1e-3
    assert far.any() and torch.allclose(over["rgb"][far], colour.expand(int(far.sum()), 3))

    talker = Talker(tiny_generator(), TalkerConfig(k_exp=2, k_lip=3, width=96, height=96),
                    residual_frames=data.num_frames)
    seen = []
    orig = talker.rasterize

    def spy(*args, **kw):
        seen.append(kw.get("background"))
        return orig(*args, **kw)

    monkeypatch.setattr(talker, "rasterize", spy)
    cfg = tiny_config(random_background=1.0)
    identity.train_step(talker, None, state.make_optimizer(talker, cfg), data, 3, cfg)
    assert torch.equal(seen[-1], plate.random_background(3, cfg, "cpu"))
    with pytest.raises(ValueError, match="random_background"):
        tiny_config(random_background=1.5).validate()


def test_gradient_loss_sees_blur_that_the_l1_barely_does():
    """``metrics.gradient_l1``: zero for the target itself; a blurred copy, close to the
    target in L1, is far from it in gradients; the image loss adds it only when asked,
    and its weights are checked."""
    from dgtalker.metrics import gradient_l1, photometric_loss

    g = torch.Generator().manual_seed(3)
    target = torch.rand(2, 32, 32, 3, generator=g) * 0.2 + 0.4
    nchw = target.permute(0, 3, 1, 2)
    blurred = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(nchw, (1, 1, 1, 1), mode="replicate"), 3, 1)
    blurred = blurred.permute(0, 2, 3, 1)
    assert float(gradient_l1(target, target)) == 0.0
    l1 = float((blurred - target).abs().mean())
    assert float(gradient_l1(blurred, target)) > 2.5 * l1
    shifted = target + 0.05  # a flat change of level has no gradient
    assert float(gradient_l1(shifted, target)) < 1e-6
    base = photometric_loss(blurred, target)
    assert torch.equal(photometric_loss(blurred, target, grad_weight=0.0), base)
    assert torch.allclose(photometric_loss(blurred, target, grad_weight=0.5), base + 0.5 * gradient_l1(blurred, target))
    with pytest.raises(ValueError, match="ssim_weight"):
        tiny_config(ssim_weight=1.5).validate()
    with pytest.raises(ValueError, match="grad_weight"):
        tiny_config(grad_weight=-1.0).validate()


def test_side_silhouette_compares_outlines_with_the_prior_beyond_the_clip_views():
    """Side cameras are the clip's turned 20-45 degrees around the head (seeded); the loss
    is zero for the untuned prior, sees outlines only (not colours), and its gradient
    reaches the tuned synthesis."""
    import copy
    import math

    from dgtalker import camera
    from dgtalker.data import load

    cfg = tiny_config(side_silhouette=1.0, side_resolution=32)
    data = clip.ClipFrames(load(SAMPLE), load(SAMPLE).splits["train"], 64, progress=False)
    b = data.batch(torch.tensor([0, 1, 2, 3]))
    views = losses.side_cameras(b["w2c"], 7, cfg)
    assert torch.equal(views, losses.side_cameras(b["w2c"], 7, cfg))
    assert not torch.equal(views, losses.side_cameras(b["w2c"], 8, cfg))
    pivot = torch.tensor(camera.DEFAULT_TARGET, dtype=torch.float64)
    for k in range(4):
        c0 = torch.linalg.inv(b["w2c"][k].double())[:3, 3] - pivot
        c1 = torch.linalg.inv(views[k].double())[:3, 3] - pivot
        angle = math.degrees(math.acos(float(c0 @ c1 / (c0.norm() * c1.norm()))))
        assert losses.SIDE_YAW[0] - 0.5 < angle < math.hypot(losses.SIDE_YAW[1], losses.SIDE_PITCH) + 0.5, angle

    reference = tiny_generator()
    talker = Talker(copy.deepcopy(reference), TalkerConfig(k_exp=2, k_lip=3, width=96, height=96),
                    residual_frames=data.num_frames)
    ce, cl = torch.randn(4, 2), torch.randn(4, 3)

    def loss():
        g = talker.gaussians(ce, cl)
        return losses.side_silhouette_loss(talker, reference, g, ce, cl, b["w2c"], b["K"], 3, cfg)

    assert float(loss().detach()) < 1e-6  # the prior itself
    with torch.no_grad():
        bias = talker.generator.output_bias.view(-1, 14, *talker.generator.output_bias.shape[1:])
        bias[:, 11:14] += 2.0  # colours only
    assert float(loss().detach()) < 1e-6
    with torch.no_grad():
        bias[:, 0:3] += 0.5 * torch.randn_like(bias[:, 0:3])  # move the Gaussians
    value = loss()
    assert float(value.detach()) > 1e-3
    value.backward()
    grads = [p.grad for p in talker.generator.synthesis.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().max()) > 0 for g in grads)
    assert all(p.grad is None for p in reference.parameters())


def test_tiny_training_loss_falls_and_orthogonality_holds(tmp_path):
    # the tiny network fits mostly through its per-texel output bias (at the default rate);
    # every step over the plate, so the first and the last losses compare like with like
    cfg = tiny_config(steps=40, pairs=2, locality=0.0, distill_weight=0.0, lr_output_bias=1e-3,
                      random_background=0.0)
    out = tmp_path / "t.safetensors"
    identity.train_identity(SAMPLE, out, cfg, prior=tiny_generator(), device="cpu", progress=False)
    hist = json.loads((tmp_path / "t.safetensors.history.json").read_text())
    first = np.mean([h["photo"] for h in hist[:5]])
    last = np.mean([h["photo"] for h in hist[-5:]])
    assert last < 0.85 * first, (first, last)
    T = load_talker(out)
    assert T.blendshapes.orthogonality_error() < 1e-5
    assert T.source["train_frames"] == 40 and T.source["trained_steps"] == 40
    assert (tmp_path / "t.safetensors.preview.png").exists() is False  # preview_every=100 > steps


def test_training_resumes_exactly(tmp_path):
    cfg = tiny_config(steps=6, focus=0.5)  # the error-driven sampler's state is resumed too
    a = tmp_path / "a.safetensors"
    identity.train_identity(SAMPLE, a, cfg, prior=tiny_generator(), device="cpu", progress=False)
    b = tmp_path / "b.safetensors"
    identity.train_identity(SAMPLE, b, tiny_config(steps=3, focus=0.5), prior=tiny_generator(), device="cpu", progress=False)
    identity.train_identity(SAMPLE, b, tiny_config(steps=6, focus=0.5), prior=tiny_generator(), device="cpu", progress=False)
    ta, tb = load_talker(a), load_talker(b)
    sa, sb = ta.state_dict(), tb.state_dict()
    assert set(sa) == set(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert tb.source["trained_steps"] == 6


def test_expression_frames_are_drawn_by_their_error():
    err = torch.full((100,), 0.01)
    err[7] = 0.5  # a blink the model does not render yet
    assert sampler.expression_weights(err, 0.0) is None
    p = sampler.expression_weights(err, 0.5)
    assert p.sum() == pytest.approx(1.0) and p[7] > 0.4 and p[0] == pytest.approx(p[1])
    counts = np.zeros(100)
    for step in range(200):
        i, j = sampler.sample_pairs(step, 100, 2, seed=0, weights=p)
        assert bool((i != j).all())
        counts += np.bincount(j.numpy(), minlength=100)
    assert counts[7] > 0.3 * counts.sum()


def test_existing_output_without_state_is_refused(tmp_path):
    out = tmp_path / "t.safetensors"
    out.write_bytes(b"x")
    with pytest.raises(FileExistsError, match="no training state"):
        identity.train_identity(SAMPLE, out, tiny_config(), prior=tiny_generator(), device="cpu", progress=False)


def test_multiview_corpus_is_refused(tmp_path):
    from priors import write_corpus

    corpus = write_corpus(tmp_path / "corpus")
    with pytest.raises(ValueError, match="talking clip"):
        identity.train_identity(corpus, tmp_path / "t.safetensors", tiny_config(), prior=tiny_generator(), device="cpu",
                         progress=False)


# -- checkpoints ---------------------------------------------------------------------------
def _tiny_talker():
    T = Talker(tiny_generator(), TalkerConfig(k_exp=2, k_lip=2, width=24, height=16), residual_frames=7, seed=2)
    with torch.no_grad():
        T.residual_track.normal_()
        T.background.uniform_()
    T.source = {"dataset": "x", "seconds": 1.0}
    return T


def test_checkpoint_round_trip_and_half(tmp_path):
    T = _tiny_talker()
    p = save_talker(tmp_path / "t.safetensors", T)
    U = load_talker(p)
    for k, v in T.state_dict().items():
        assert torch.equal(v, U.state_dict()[k]), k
    assert U.source == T.source and U.config == T.config
    h = save_talker(tmp_path / "h.safetensors", T, half=True)
    assert h.stat().st_size < 0.75 * p.stat().st_size
    V = load_talker(h)
    assert torch.equal(V.w_can, T.w_can)  # kept in float32
    c = torch.randn(3, 2)
    with torch.no_grad():
        a = T.gaussians(c, c)[0]
        b = V.gaussians(c, c)[0]
    assert float((a - b).abs().max()) < 1e-3


def test_bad_talker_files_get_clear_errors(tmp_path):
    from dgtalker.checkpoint import save_prior, write_checkpoint

    T = _tiny_talker()
    p = save_talker(tmp_path / "t.safetensors", T)
    data = p.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(TalkerCheckpointError, match="truncated"):
        load_talker(tmp_path / "trunc.safetensors")
    prior = save_prior(tmp_path / "prior.safetensors", tiny_generator())
    with pytest.raises(TalkerCheckpointError, match="dgtalker-talker"):
        load_talker(prior)
    with pytest.raises(FileNotFoundError):
        load_talker(tmp_path / "missing.safetensors")
    # hostile metadata: a config out of bounds, a huge residual track
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    for key, value in (("talker_config", json.dumps({**T.config.to_dict(), "k_exp": 10**6})),
                       ("residual_frames", "100000000000"), ("generator_config", "[]")):
        tensors = {k: v for k, v in T.state_dict().items()}
        meta = {k: v for k, v in header["__metadata__"].items() if k not in ("format", "version")}
        meta[key] = value
        bad = write_checkpoint(tmp_path / f"bad_{key}.safetensors", tensors, format="dgtalker-talker", version=1,
                               meta=meta)
        with pytest.raises(TalkerCheckpointError):
            load_talker(bad)


def test_sample_expression_is_seeded_and_keeps_blinks_with_their_residual():
    T = _tiny_talker()
    with torch.no_grad():
        T.blink_track.copy_(torch.tensor([0, 0, 1, 1, 0, 0, 0.5]))
        T.residual_track[:, 0] = T.blink_track * 10  # the excerpts must keep the two tracks aligned
    a, ba = T.sample_expression(20, seed=1)
    b, bb = T.sample_expression(20, seed=1)
    c, _ = T.sample_expression(20, seed=2)
    assert a.shape == (20, 2) and ba.shape == (20,) and torch.equal(a, b) and torch.equal(ba, bb)
    assert not torch.equal(a, c)
    assert torch.allclose(a[:, 0], ba * 10) and float(ba.max()) > 0
    # a longer draw starts with the shorter one (a stream extends its blinks this way)
    longer, blonger = T.sample_expression(47, seed=1)
    assert torch.equal(longer[:20], a) and torch.equal(blonger[:20], ba)


def test_eyelid_layer_moves_only_the_eyes():
    from dgtalker.prior import load_prior
    from dgtalker.talker import eye_region

    G = load_prior()
    texels, weight = eye_region(G)
    R = G.config.resolution
    # the region: both eyes of the template, in front, between the nose bridge and the temples
    pos = G.template_position[torch.isin(G.template_texel_index, texels)]
    assert 500 < texels.numel() < 2000 and float(weight.max()) == 1.0 and float(weight.min()) > 0
    assert float(pos[:, 2].min()) > 0.03 and (pos[:, 0] > 0).any() and (pos[:, 0] < 0).any()
    assert float(pos[:, 1].min()) > -0.005 and float(pos[:, 1].max()) < 0.04
    T = Talker(G, TalkerConfig(k_exp=2, k_lip=2), residual_frames=3)
    torch.manual_seed(0)
    with torch.no_grad():
        T.blink_map.normal_()
    c = torch.randn(2, 2)
    with torch.no_grad():
        none = T.gaussians(c, c)
        zero = T.gaussians(c, c, blink=torch.zeros(2))
        shut = T.gaussians(c, c, blink=torch.tensor([1.0, 0.0]))
    for a, b in zip(none, zero):
        assert torch.equal(a, b)
    Gp = G.config.gaussians_per_texel
    in_eye = torch.isin(G.template_texel_index, texels).repeat_interleave(Gp)
    moved = (shut[0][0] - none[0][0]).abs().sum(-1) + (shut[4][0] - none[4][0]).abs().sum(-1)
    assert float(moved[~in_eye].abs().max()) == 0.0 and float(moved[in_eye].mean()) > 1e-3
    assert torch.equal(shut[0][1], none[0][1])  # the frame with blink 0 is untouched
    assert R * R > int(texels.max())


def test_lip_layer_moves_only_the_mouth_by_the_sign_of_each_pinned_coefficient():
    from dgtalker.prior import load_prior
    from dgtalker.talker import mouth_region

    G = load_prior()
    texels, weight = mouth_region(G)
    # the region: lips, mouth corners and chin of the template, in front, below the nose
    pos = G.template_position[torch.isin(G.template_texel_index, texels)]
    assert 1000 < texels.numel() < 4000 and float(weight.max()) == 1.0 and float(weight.min()) > 0
    assert float(pos[:, 2].min()) > 0.03 and float(pos[:, 1].max()) < -0.03 and float(pos[:, 1].min()) > -0.1
    # full weight across the midline, where the lips part most; the window falls only at its edges
    assert torch.equal(G.template_texel_index[torch.isin(G.template_texel_index, texels)], texels)  # pos[i] is texel i's
    x, y = pos[:, 0], pos[:, 1]
    assert float(weight[(x.abs() < 0.005) & (y > -0.09) & (y < -0.04)].min()) == 1.0
    T = Talker(G, TalkerConfig(k_exp=2, k_lip=3), residual_frames=3)
    assert T.lip_map.shape == (4, G.output_bias.shape[0], texels.numel())
    c_exp = torch.randn(4, 2)
    # frames: the clip's mean mouth, wide open, shut tighter than the mean, and only the third
    # (unpinned) coefficient moved
    c_lip = torch.tensor([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.5]])
    with torch.no_grad():
        before = T.gaussians(c_exp, c_lip)
        torch.manual_seed(0)
        T.lip_map.normal_()
        after = T.gaussians(c_exp, c_lip)
        T.lip_map[2:].zero_()  # the negative parts' maps off: a narrower mouth than the mean moves nothing
        no_negative = T.gaussians(c_exp, c_lip)
    Gp = G.config.gaussians_per_texel
    in_mouth = torch.isin(G.template_texel_index, texels).repeat_interleave(Gp)

    def moved(a, b, f):
        return (a[0][f] - b[0][f]).abs().sum(-1) + (a[4][f] - b[4][f]).abs().sum(-1)

    for f in (0, 3):  # coefficients at the mean, or only unpinned ones: the layer adds nothing
        assert float(moved(after, before, f).max()) == 0.0
    for f in (1, 2):
        m = moved(after, before, f)
        assert float(m[~in_mouth].max()) == 0.0 and float(m[in_mouth].mean()) > 1e-3
    assert float(moved(no_negative, before, 2).max()) == 0.0 and float(moved(no_negative, after, 1).max()) == 0.0


def test_lip_layer_learns_in_training_and_a_rate_of_zero_keeps_it_off(tmp_path):
    out = tmp_path / "t.safetensors"
    identity.train_identity(SAMPLE, out, tiny_config(steps=3), prior=tiny_generator(), device="cpu", progress=False)
    T = load_talker(out)
    assert T.lip_map.shape[0] == 4 and float(T.lip_map.abs().max()) > 0
    identity.train_identity(SAMPLE, tmp_path / "u.safetensors", tiny_config(steps=3, lr_lip_layer=0.0),
                            prior=tiny_generator(), device="cpu", progress=False)
    assert float(load_talker(tmp_path / "u.safetensors").lip_map.abs().max()) == 0.0


def test_blink_amounts_from_eyelid_distance():
    open_ = np.full(40, 10.0)
    open_[::7] = 9.0       # landmark jitter: 10% closed stays open
    open_[20:23] = (5.0, 2.0, 1.0)
    b = clip.blink_amounts(open_)
    assert b[0] == 0 and b[7] == 0
    assert 0.4 < b[20] < 0.7 and b[21] == pytest.approx(1.0) and b[22] == 1.0


def test_blink_frames_are_drawn_for_the_eyelid_layer(tmp_path):
    blink = torch.zeros(100)
    blink[40:43] = 1.0
    p = sampler.expression_weights(torch.ones(100), 0.0, blink, 0.2)
    assert p[40] == pytest.approx(0.8 / 100 + 0.2 / 3) and p[0] == pytest.approx(0.8 / 100)
    assert sampler.expression_weights(torch.ones(100), 0.0, torch.zeros(100), 0.2) is None  # no blinks: uniform
    # the sample clip blinks at frames 43-46 (held out there: here they are trained on); training learns an
    # eyelid layer from them and keeps the clip's blink track
    import shutil

    clip = shutil.copytree(SAMPLE, tmp_path / "clip")
    (clip / "splits.json").write_text(json.dumps({"train": list(range(48)), "heldout": [48, 49]}))
    cfg = tiny_config(steps=6, locality=0.0, distill_weight=0.0, blink_share=0.5)
    out = tmp_path / "t.safetensors"
    identity.train_identity(clip, out, cfg, prior=tiny_generator(), device="cpu", progress=False)
    T = load_talker(out)
    assert float(T.blink_map.abs().max()) > 0
    assert float(T.blink_track[44]) == 1.0 and float(T.blink_track[:40].max()) == 0.0


def test_novel_views_preset_sets_the_rates_an_explicit_option_overrides():
    import argparse

    from dgtalker.train import identity_cli
    from dgtalker.train.config import NOVEL_VIEWS

    p = argparse.ArgumentParser()
    identity_cli.add_arguments(p)
    d = IdentityTrainConfig()
    cfg = identity_cli.train_config(p.parse_args(["data", "--out", "t"]))
    assert (cfg.lr_output_bias, cfg.random_background) == (d.lr_output_bias, d.random_background)
    cfg = identity_cli.train_config(p.parse_args(["data", "--out", "t", "--novel-views"]))
    assert (cfg.lr_output_bias, cfg.random_background) == (NOVEL_VIEWS["lr_output_bias"],
                                                           NOVEL_VIEWS["random_background"])
    assert NOVEL_VIEWS["lr_output_bias"] != d.lr_output_bias and NOVEL_VIEWS["random_background"] != d.random_background
    cfg = identity_cli.train_config(p.parse_args(["data", "--out", "t", "--novel-views", "--random-background", "0"]))
    assert (cfg.lr_output_bias, cfg.random_background) == (NOVEL_VIEWS["lr_output_bias"], 0.0)
