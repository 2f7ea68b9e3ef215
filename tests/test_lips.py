"""Lips from the tracked face: the mouth measures in the face mesh's unit, the training
targets read from lip (and eye) points only, and eval's lip-sync figures."""
import numpy as np
import pytest
import torch

from dgtalker.data import face_mesh as FM


def _mesh(opening: float, width: float = 0.45, span: float = 100.0) -> np.ndarray:
    """478 points with the eye corners ``span`` px apart and the given mouth."""
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 200, size=(478, 2))
    p[33], p[263] = (50.0, 80.0), (50.0 + span, 80.0)
    p[13], p[14] = (100.0, 150.0), (100.0, 150.0 + opening * span)
    p[61], p[291] = (100.0 - width * span / 2, 155.0), (100.0 + width * span / 2, 155.0)
    return p


def test_mouth_measures_in_the_face_mesh_unit():
    for o, w, s in ((0.0, 0.4, 100.0), (0.12, 0.5, 100.0), (0.12, 0.5, 37.0)):
        p = _mesh(o, w, s)
        assert FM.mouth_opening(p) == pytest.approx(o, abs=1e-9)
        assert FM.mouth_width(p) == pytest.approx(w, abs=1e-9)
    stack = np.stack([_mesh(0.1), _mesh(0.2)])
    assert np.allclose(FM.mouth_opening(stack), [0.1, 0.2])
    assert len(set(FM.LIP_CONTOUR)) == 40 and {13, 14, 61, 291} <= set(FM.LIP_CONTOUR)


class _Clip:
    """The parts of a dataset the mouth targets read."""

    def __init__(self, gt, names):
        self.gt, self.landmark_names = gt, names


NAMES = ("mouth_corner_left", "mouth_corner_right", "upper_lip_mid", "lower_lip_mid", "upper_lid_left",
         "lower_lid_left", "upper_lid_right", "lower_lid_right", "nose_tip", "chin", "brow_inner_left",
         "brow_inner_right")


def _corpus_landmarks(n=20, seed=0):
    rng = np.random.default_rng(seed)
    L = np.zeros((n, 12, 2))
    L[:, 0], L[:, 1] = (80, 150), (120, 150)
    L[:, 2] = (100, 145)
    L[:, 3] = np.stack([np.full(n, 100.0), 145 + rng.uniform(0, 12, n)], 1)  # the jaw opens and closes
    L[:, 4], L[:, 5], L[:, 6], L[:, 7] = (70, 90), (70, 96), (130, 90), (130, 96)
    L[:, 8:] = rng.uniform(0, 200, (n, 4, 2))
    return L


def test_mouth_targets_see_only_lip_and_eye_points():
    from dgtalker.train.clip import mouth_measures, mouth_targets

    L = _corpus_landmarks()
    base = mouth_measures(_Clip({"landmarks_2d": L}, NAMES))
    gap = np.linalg.norm(L[:, 2] - L[:, 3], axis=-1) / 60.0  # eye centres 60 px apart
    assert np.allclose(base[:, 0], gap) and np.allclose(base[:, 1], 40 / 60)
    moved = L.copy()
    moved[:, 8:] += np.random.default_rng(1).normal(0, 20, moved[:, 8:].shape)  # nose, chin, brows
    assert np.array_equal(mouth_measures(_Clip({"landmarks_2d": moved}, NAMES)), base)
    lips = L.copy()
    lips[:, 3, 1] += 5.0
    assert not np.allclose(mouth_measures(_Clip({"landmarks_2d": lips}, NAMES))[:, 0], base[:, 0])
    # standardised over the training frames; a frame without a face gives NaN, not a target
    vis = np.ones((20, 12), bool)
    vis[4] = False  # no face on frame 4
    t = mouth_targets(_Clip({"landmarks_2d": L, "landmarks_visible": vis}, NAMES), np.arange(10))
    ok = np.isfinite(t[:10, 0])
    assert np.isnan(t[4]).all() and abs(t[:10][ok, 0].mean()) < 1e-5 and abs(t[:10][ok, 0].std() - 1) < 1e-4
    # real clips: the tracker's face-mesh measures win over the 12 landmarks
    gt = {"landmarks_2d": L, "mouth_opening": np.linspace(0, 0.2, 20), "mouth_width": np.full(20, 0.5)}
    assert np.allclose(mouth_measures(_Clip(gt, NAMES))[:, 0], np.linspace(0, 0.2, 20))
    assert mouth_measures(_Clip({"landmarks_2d": L[:, :4]}, NAMES[:4])) is None


def test_lip_sync_figures_have_known_answers():
    from dgtalker.eval.evaluate import lip_sync

    t = 0.05 + 0.04 * np.sin(np.arange(200) / 3.0) + 0.01 * np.random.default_rng(0).standard_normal(200)
    late = np.concatenate([np.full(2, t[0]), t[:-2]])  # two frames late, half the motion
    r = 0.03 + 0.5 * (late - t.mean())
    out = lip_sync(r, t)
    assert out["lip_motion_ratio"] == pytest.approx(0.5, abs=0.02)
    assert out["lip_lag_frames"] == 2 and out["lip_best_corr"] > 0.99 and out["lip_corr"] < out["lip_best_corr"]
    still = lip_sync(np.full(200, 0.03) + 1e-4 * np.random.default_rng(1).standard_normal(200), t)
    assert still["lip_motion_ratio"] < 0.05
    r_nan = r.copy()
    r_nan[::7] = np.nan  # frames without a face do not count
    assert lip_sync(r_nan, t)["lip_motion_ratio"] == pytest.approx(0.5, abs=0.03)


def test_training_step_pins_the_first_lip_coefficients_to_the_tracked_mouth():
    """The step reports the lip-target term; it is the squared distance of the first two
    lip coefficients of its own batch of training frames (``lip_batch`` of them, drawn
    apart from the rendered pairs) to their standardised tracked mouth, and off (absent)
    at weight 0."""
    from pathlib import Path

    import torch
    from test_talker import tiny_config, tiny_generator

    from dgtalker.data import load
    from dgtalker.talker import Talker, TalkerConfig
    from dgtalker.train import clip, identity, sampler, state
    from dgtalker.train.config import IdentityTrainConfig

    sample = Path(__file__).parent / "data" / "sample"
    ds = load(sample)
    data = clip.ClipFrames(ds, ds.splits["train"], 64, progress=False)
    assert data.mouth is not None and torch.isfinite(data.mouth).all()
    talker = Talker(tiny_generator(), TalkerConfig(k_exp=2, k_lip=3, width=96, height=96),
                    residual_frames=data.num_frames)
    cfg = IdentityTrainConfig(**{**tiny_config().__dict__, "lip_batch": 13})
    calls = []
    orig = sampler.speech_coefficients

    def spy(encoder, windows, frames, n, **kw):
        out = orig(encoder, windows, frames, n, **kw)
        if encoder is talker.encoder:
            calls.append((frames.clone(), out[1].detach().clone()))
        return out

    identity.speech_coefficients = spy
    try:
        out = identity.train_step(talker, None, state.make_optimizer(talker, cfg), data, 0, cfg)
    finally:
        identity.speech_coefficients = orig
    lip_calls = [c for c in calls if len(c[0]) == 13]
    assert len(lip_calls) == 1
    frames, cl = lip_calls[0]
    train = set(ds.splits["train"].tolist())
    assert set(frames.tolist()) <= train and len(set(frames.tolist())) > 1
    want = (cl[..., :2] - data.mouth[frames]).pow(2).mean()   # each member's [members, 13, Kl]
    assert out["lip_target"] == pytest.approx(float(want), rel=1e-5)
    off = identity.train_step(talker, None, state.make_optimizer(talker, cfg), data, 1,
                              IdentityTrainConfig(**{**cfg.__dict__, "lip_target": 0.0}))
    assert "lip_target" not in off


@pytest.mark.parametrize("from_picture", [False, True])
def test_pinned_lip_coefficients_learn_from_the_tracked_mouth_alone(from_picture):
    """By default no photometric gradient reaches the two pinned lip coefficients of the
    rendered frames (the tracked mouth alone trains them), while the free ones get it;
    ``lips_from_picture`` lets it through."""
    from pathlib import Path

    import torch
    from test_talker import tiny_config, tiny_generator

    from dgtalker.data import load
    from dgtalker.talker import Talker, TalkerConfig
    from dgtalker.train import clip, identity, sampler, state
    from dgtalker.train.config import IdentityTrainConfig

    ds = load(Path(__file__).parent / "data" / "sample")
    data = clip.ClipFrames(ds, ds.splits["train"], 64, progress=False)
    talker = Talker(tiny_generator(), TalkerConfig(k_exp=2, k_lip=3, width=96, height=96),
                    residual_frames=data.num_frames)
    cfg = IdentityTrainConfig(**{**tiny_config().__dict__, "lip_batch": 13, "lips_from_picture": from_picture})
    grads = []
    orig = sampler.speech_coefficients

    def spy(encoder, windows, frames, n, **kw):
        ce, cl = orig(encoder, windows, frames, n, **kw)
        if encoder is talker.encoder and len(frames) != 13:  # the rendered frames, not the lip batch
            cl.register_hook(lambda g: grads.append(g.detach().clone()))
        return ce, cl

    identity.speech_coefficients = spy
    try:
        identity.train_step(talker, None, state.make_optimizer(talker, cfg), data, 0, cfg)
    finally:
        identity.speech_coefficients = orig
    assert len(grads) == 1
    g = grads[0]
    assert g[:, 2:].abs().sum() > 0
    if from_picture:
        assert g[:, :2].abs().sum() > 0
    else:
        assert torch.equal(g[:, :2], torch.zeros_like(g[:, :2]))


def test_concordance_scores_agreement_in_correlation_mean_and_spread():
    """Lin's concordance: 1 for equal columns, the correlation discounted by a shrunk
    spread or a shifted mean, and rows marked invalid do not count."""
    import torch

    from dgtalker.train.losses import concordance

    g = torch.Generator().manual_seed(3)
    t = torch.randn(200, 2, generator=g)
    ok = torch.ones(200, dtype=torch.bool)
    assert torch.allclose(concordance(t, t, ok), torch.ones(2), atol=1e-5)
    # perfectly correlated but half the spread: 2 * 0.5 / (0.25 + 1) = 0.8
    assert torch.allclose(concordance(0.5 * (t - t.mean(0)) + t.mean(0), t, ok), torch.full((2,), 0.8), atol=1e-3)
    shifted = concordance(t + 1.0, t, ok)
    assert (shifted < 0.7).all() and (shifted > 0.3).all()
    wild = t.clone()
    wild[:20] = 1e3  # garbage rows, marked invalid
    mask = ok.clone()
    mask[:20] = False
    assert torch.allclose(concordance(wild, t, mask), concordance(t[20:], t[20:], ok[20:]), atol=1e-5)
    assert torch.isfinite(concordance(t, torch.full_like(t, float("nan")), mask)).all()


def test_lip_concordance_term_is_reported_and_trains_the_encoder():
    """With ``lip_concordance`` the step adds 1 - CCC of the lip batch and reports it; the
    encoder's parameters then get a different gradient than without it."""
    from pathlib import Path

    from test_talker import tiny_config, tiny_generator

    from dgtalker.data import load
    from dgtalker.talker import Talker, TalkerConfig
    from dgtalker.train import clip, identity, state
    from dgtalker.train.config import IdentityTrainConfig

    ds = load(Path(__file__).parent / "data" / "sample")
    data = clip.ClipFrames(ds, ds.splits["train"], 64, progress=False)
    outs, grads = [], []
    for w in (0.0, 1.0):
        talker = Talker(tiny_generator(), TalkerConfig(k_exp=2, k_lip=3, width=96, height=96),
                        residual_frames=data.num_frames)
        cfg = IdentityTrainConfig(**{**tiny_config().__dict__, "lip_batch": 13, "lip_concordance": w})
        opt = state.make_optimizer(talker, cfg)
        outs.append(identity.train_step(talker, None, opt, data, 0, cfg))
        grads.append(talker.encoder.head[-1].weight.grad.clone())
    assert "lip_ccc" not in outs[0]
    assert -1.0 <= outs[1]["lip_ccc"] <= 1.0
    assert (grads[0] - grads[1]).abs().max() > 1e-9


def test_mouth_boxes_surround_the_tracked_lips_at_training_size():
    """The training frames' mouth squares hold the tracked lip points (scaled to the
    training size) with a margin, are small against the frame, and the step's extra
    mouth term is the L1 inside them."""
    from pathlib import Path

    import numpy as np
    import torch
    from test_talker import tiny_config, tiny_generator

    from dgtalker.data import load
    from dgtalker.talker import Talker, TalkerConfig
    from dgtalker.train import clip, identity, state
    from dgtalker.train.config import IdentityTrainConfig

    ds = load(Path(__file__).parent / "data" / "sample")
    R = 64
    boxes = clip.mouth_boxes(ds, R)
    assert boxes is not None and boxes.shape == (len(ds), 4)
    names = list(ds.landmark_names)
    pts = np.asarray(ds.gt["landmarks_2d"])[:, [names.index("mouth_corner_left"), names.index("upper_lip_mid"),
                                                 names.index("lower_lip_mid"), names.index("mouth_corner_right")]]
    pts = pts * np.array([R / ds.width, R / ds.height])
    seen = boxes[:, 2] > boxes[:, 0]
    assert seen.sum() > 0
    assert (pts[seen, :, 0] > boxes[seen, None, 0]).all() and (pts[seen, :, 0] < boxes[seen, None, 2]).all()
    assert (pts[seen, :, 1] > boxes[seen, None, 1]).all() and (pts[seen, :, 1] < boxes[seen, None, 3]).all()
    m = clip.box_masks(torch.tensor([[10.0, 20.0, 30.0, 25.0]]), R)
    assert m.shape == (1, R, R) and int(m.sum()) == 20 * 5 and m[0, 20, 10] == 1 and m[0, 25, 10] == 0
    data = clip.ClipFrames(ds, ds.splits["train"], R, progress=False)
    mouth = data.mouth_masks(torch.arange(3))
    assert mouth.shape == (3, R, R) and 0 < mouth.sum() / mouth.numel() < 0.2
    talker = Talker(tiny_generator(), TalkerConfig(k_exp=2, k_lip=3, width=96, height=96),
                    residual_frames=data.num_frames)
    cfg = IdentityTrainConfig(**{**tiny_config().__dict__, "mouth_weight": 1.0})
    out = identity.train_step(talker, None, state.make_optimizer(talker, cfg), data, 0, cfg)
    assert out["mouth_l1"] > 0
    off = identity.train_step(talker, None, state.make_optimizer(talker, cfg), data, 1,
                              IdentityTrainConfig(**{**cfg.__dict__, "mouth_weight": 0.0}))
    assert "mouth_l1" not in off


def test_lip_holdback_leaves_out_spread_blocks_of_the_split():
    """The held-back frames are whole 2-second blocks spread over the split (at least 3
    where it has 12), about the asked share of it, and none for share 0."""
    from dgtalker.train import sampler

    held = sampler.lip_holdback(1132, 0.1, 25.0)
    assert len(held) == 150 and len(set(held.tolist())) == 150
    starts = held[::50]
    assert (np.diff(held.reshape(3, 50), axis=1) == 1).all()  # three contiguous 2 s blocks
    assert starts.min() > 100 and starts.max() < 1032 and np.diff(starts).min() > 300  # spread, not bunched
    assert len(sampler.lip_holdback(4500, 0.1, 25.0)) == 9 * 50
    assert len(sampler.lip_holdback(1132, 0.0, 25.0)) == 0
    small = sampler.lip_holdback(40, 0.1, 25.0)
    assert 0 < len(small) <= 10 and small.max() < 40


def test_lip_calibration_widens_inference_lips_within_the_tracked_range():
    """``forward`` and ``coefficients_at`` (inference) widen the lip coefficients about the
    centre by the gain and clamp them to the range; ``from_embeddings`` (training) is
    untouched, and a new encoder's calibration is the identity."""
    import torch

    from dgtalker.models.audio_encoder import AudioEncoder, AudioEncoderConfig

    enc = AudioEncoder(AudioEncoderConfig(k_exp=2, k_lip=3, half_window=8, lookahead_mel=8, past=1, future=1),
                       seed=0)
    with torch.no_grad():
        enc.head[-1].weight.mul_(30)  # coefficients of order one
    win = torch.randn(12, 17, 80)
    ce0, cl0 = enc(win)
    raw = enc.from_embeddings(enc.frame_embedding(win)[enc.neighbours(torch.arange(12), 12)])[1]
    assert torch.allclose(cl0, raw)
    centre = torch.tensor([0.1, -0.2, 0.0])
    enc.set_lip_calibration(centre, torch.tensor([2.0, 1.5, 1.0]), torch.tensor([-0.3, -1e4, -1e4]),
                            torch.tensor([0.4, 1e4, 1e4]))
    ce1, cl1 = enc(win)
    want = centre + torch.tensor([2.0, 1.5, 1.0]) * (raw - centre)
    want[:, 0] = want[:, 0].clamp(-0.3, 0.4)
    assert torch.equal(ce1, ce0) and torch.allclose(cl1, want, atol=1e-6)
    assert (cl1[:, 0] == 0.4).any() or (cl1[:, 0] == -0.3).any()  # the range binds somewhere
    assert torch.allclose(enc.from_embeddings(enc.frame_embedding(win)[enc.neighbours(torch.arange(12), 12)])[1], raw)


def test_training_calibrates_the_lips_on_frames_the_lip_target_never_saw(tmp_path):
    """The lip target draws no held-back frame; at the end the talker's encoders carry a
    gain equal to the tracked over the predicted spread on those frames (recorded in the
    source with their r), and ``lip_holdback=0`` leaves the gain at 1."""
    from pathlib import Path

    import torch
    from test_talker import tiny_config, tiny_generator

    from dgtalker.data import load
    from dgtalker.talker import load_talker
    from dgtalker.train import clip, identity, sampler

    sample = Path(__file__).parent / "data" / "sample"
    ds = load(sample)
    data = clip.ClipFrames(ds, ds.splits["train"], 64, progress=False)
    data.hold_back_lips(sampler.lip_holdback(len(data), 0.1, data.fps))
    held = set(data.indices[data.lip_heldback].tolist())
    assert held
    cfg = tiny_config(steps=3, lip_batch=64)
    for step in range(20):
        assert not held & set(sampler.lip_target_frames(step, data, cfg).tolist())
    out = tmp_path / "t.safetensors"
    identity.train_identity(sample, out, tiny_config(steps=3), prior=tiny_generator(), device="cpu", progress=False)
    T = load_talker(out)
    cal = T.source["lip_calibration"]
    assert cal["frames"] == len(held) and len(cal["gain"]) == 2
    win = T.clip_windows(data.mel.numpy(), data.num_frames, data.fps)
    raw = sampler.speech_coefficients(T.encoder, win, torch.arange(data.num_frames), data.num_frames)[1]
    idx = torch.tensor(sorted(held))
    pred, truth = raw[idx, :2].double(), data.mouth[idx].double()
    ratio = truth.std(0) / pred.std(0)
    assert torch.allclose(T.encoder.lip_gain[:2].double(), ratio.clamp(1 / 3, 3), rtol=1e-4)
    assert torch.equal(T.causal_encoder.lip_gain, T.encoder.lip_gain)
    assert float(T.encoder.lip_gain[2]) == 1.0  # the unpinned coefficient stays as trained
    identity.train_identity(sample, tmp_path / "u.safetensors", tiny_config(steps=3, lip_holdback=0.0),
                            prior=tiny_generator(), device="cpu", progress=False)
    U = load_talker(tmp_path / "u.safetensors")
    assert U.source["lip_calibration"] is None and torch.equal(U.encoder.lip_gain, torch.ones(3))


def test_open_mouth_frames_get_their_share_of_lip_draws():
    import torch

    from dgtalker.train import sampler

    z = torch.full((100,), -0.3)
    z[:10] = 1.5  # wide open
    z[10] = float("nan")
    assert sampler.open_mouth_weights(z, 0.0) is None and sampler.open_mouth_weights(None, 0.5) is None
    p = sampler.open_mouth_weights(z, 0.4)
    assert p.sum() == pytest.approx(1.0) and p[:10].sum() == pytest.approx(0.4 + 0.6 * 0.1)
    i, j = sampler.sample_pairs(0, 100, 4000, 0, lip_weights=p)
    assert (i < 10).float().mean() == pytest.approx(0.46, abs=0.03)
    assert not (i == j).any()


def test_frontend_adaptation_keeps_the_trunk_and_stops_where_held_back_frames_say(tmp_path):
    """Adapting the front end to the person tunes its output layers only, keeps the check
    that predicts the held-back frames best (never worse than the shipped weights there),
    records it in the talker's source, and the talker's encoders read the adapted one."""
    from pathlib import Path

    import torch
    from test_talker import tiny_config, tiny_generator

    from dgtalker.audio.frontend import load_frontend
    from dgtalker.talker import load_talker
    from dgtalker.train import identity

    sample = Path(__file__).parent / "data" / "sample"
    out = tmp_path / "t.safetensors"
    identity.train_identity(sample, out, tiny_config(steps=2, adapt_frontend=30), prior=tiny_generator(),
                            device="cpu", progress=False)
    T = load_talker(out)
    rec = T.source["frontend_adaptation"]
    assert 0 <= rec["steps"] <= 30 and rec["stop_r"] >= rec["stop_r_before"]
    shipped = load_frontend().model.state_dict()
    mine = T.frontend.state_dict()
    for k, v in shipped.items():
        if k.startswith(("stem.", "blocks.")):
            assert torch.equal(mine[k].float(), v.float()), k
    changed = any(not torch.equal(mine[k].float(), shipped[k].float()) for k in shipped
                  if k.startswith(("norm.", "embed.", "head.")))
    assert changed == (rec["steps"] > 0)
    identity.train_identity(sample, tmp_path / "u.safetensors", tiny_config(steps=2), prior=tiny_generator(),
                            device="cpu", progress=False)
    assert "frontend_adaptation" not in load_talker(tmp_path / "u.safetensors").source


def test_open_and_closed_lower_face_split_by_the_truths_opening():
    from dgtalker.eval.evaluate import open_and_closed

    opening = np.linspace(0.0, 0.3, 30)
    rows = [{"opening_truth": o, "psnr_lower_face": 30.0 - 10 * o} for o in opening]
    rows[0]["opening_truth"] = np.nan  # a frame without landmarks does not count
    out = open_and_closed(rows)
    valid = opening[1:]
    lo, hi = np.quantile(valid, [1 / 3, 2 / 3])
    assert out["open_frames"] == int((valid >= hi).sum()) and out["closed_frames"] == int((valid <= lo).sum())
    assert out["psnr_lower_face_open"] == pytest.approx(30 - 10 * valid[valid >= hi].mean())
    assert out["psnr_lower_face_closed"] == pytest.approx(30 - 10 * valid[valid <= lo].mean())
    # without landmarks the dark fraction of the lower face decides
    dark = [{"mouth_truth": o, "psnr_lower_face": 20.0 + (o > 0.15)} for o in opening]
    assert open_and_closed(dark)["psnr_lower_face_open"] == 21.0
    assert open_and_closed(dark)["psnr_lower_face_closed"] == 20.0
    assert open_and_closed(rows[:4]) == {}


def test_teeth_pixels_count_pale_skin_bright_pixels_inside_the_opening_only():
    from dgtalker.eval.metrics import teeth_pixels
    from dgtalker.data.face_mesh import polygon

    H, W = 40, 60
    skin = torch.tensor([0.75, 0.55, 0.45])      # chroma 0.30, luminance ~0.6
    img = skin.expand(H, W, 3).clone()
    lower = torch.zeros(H, W)
    lower[10:, :] = 1
    opening = polygon(np.array([[20, 20], [40, 20], [40, 30], [20, 30]]), H, W, supersample=1) > 0.5
    assert opening.shape == (H, W) and 150 <= opening.sum() <= 260 and not opening[:15].any()
    img[21:30, 21:40] = torch.tensor([0.3, 0.1, 0.1])  # lips and cavity: dark and red
    assert teeth_pixels(img, opening, lower) == 0
    img[21:25, 21:40] = torch.tensor([0.80, 0.78, 0.72])  # a row of teeth: pale, skin-bright
    assert teeth_pixels(img, opening, lower) == 4 * 19
    img[2:6, 2:6] = torch.tensor([0.80, 0.78, 0.72])    # pale pixels outside the opening do not count
    assert teeth_pixels(img, opening, lower) == 4 * 19
    # the skin's own exposure scales the test: the same frame twice as dark counts the same
    assert teeth_pixels(img * 0.5, opening, lower) == 4 * 19
    assert teeth_pixels(img, np.zeros((H, W), bool), lower) == 0


def test_teeth_on_open_frames_compare_the_render_with_the_truth():
    from dgtalker.eval.evaluate import open_and_closed

    opening = np.linspace(0.0, 0.3, 30)
    rows = [{"opening_truth": o, "psnr_lower_face": 30.0, "teeth_truth": 10 * o, "teeth_render": 10 * o * (i % 2)}
            for i, o in enumerate(opening)]
    out = open_and_closed(rows)
    hi = np.quantile(opening, 2 / 3)
    opened = np.flatnonzero(opening >= hi)
    assert out["teeth_frames"] == len(opened)
    assert out["teeth_truth"] == pytest.approx(10 * opening[opened].mean())
    assert out["teeth_ratio"] == pytest.approx(sum(10 * opening[i] * (i % 2) for i in opened)
                                               / (10 * opening[opened].sum()))
    assert out["teeth_visible"] == pytest.approx(np.mean([i % 2 for i in opened]))
    no_teeth = [dict(r, teeth_truth=0.0) for r in rows]  # nothing to compare with: no teeth figures
    assert "teeth_ratio" not in open_and_closed(no_teeth)


def test_the_encoders_learn_nothing_from_the_held_back_frames_audio():
    """The lip calibration measures the encoder's shrinkage on the held-back frames, so no
    loss may train either encoder on their audio: with every frame held back, one step
    leaves both encoders without a gradient, while the maps still learn from the picture;
    with none held back the same step trains them."""
    from pathlib import Path

    import torch
    from test_talker import tiny_config, tiny_generator

    from dgtalker.data import load
    from dgtalker.talker import Talker, TalkerConfig
    from dgtalker.train import clip, identity, state
    from dgtalker.train.config import IdentityTrainConfig

    ds = load(Path(__file__).parent / "data" / "sample")
    cfg = IdentityTrainConfig(**{**tiny_config().__dict__, "lip_target": 0.0, "distill_weight": 1.0})

    def grads(all_unheard: bool):
        torch.manual_seed(0)
        data = clip.ClipFrames(ds, ds.splits["train"], 64, progress=False)
        talker = Talker(tiny_generator(), TalkerConfig(k_exp=2, k_lip=3, width=96, height=96),
                        residual_frames=data.num_frames)
        data.set_windows(talker, normalise_encoders=True)
        data.unheard[:] = all_unheard
        identity.train_step(talker, None, state.make_optimizer(talker, cfg), data, 0, cfg)

        def total(module):
            return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)
        return total(talker.encoder), total(talker.causal_encoder), total(talker.generator)

    enc, causal, gen = grads(True)
    assert enc == 0 and causal == 0 and gen > 0
    enc, causal, gen = grads(False)
    assert enc > 0 and causal > 0 and gen > 0


def test_encoder_noise_perturbs_training_inputs_reproducibly():
    """``--encoder-noise``: the training windows get Gaussian noise scaled per input
    channel, the same for the same step's generator (so a resumed run replays it), none
    at 0, and a negative level is refused."""
    import torch

    from dgtalker.models.audio_encoder import AudioEncoder, AudioEncoderConfig
    from dgtalker.train.config import IdentityTrainConfig
    from dgtalker.train.sampler import speech_coefficients

    torch.manual_seed(0)
    enc = AudioEncoder(AudioEncoderConfig(k_exp=2, k_lip=3, channels=16, embed=16))
    windows = torch.randn(40, enc.config.window, enc.config.channels_in)
    enc.set_normalization(windows.reshape(-1, enc.config.channels_in) * 3 + 1)
    frames = torch.tensor([3, 10, 30])
    clean = speech_coefficients(enc, windows, frames, 40)[1]
    assert torch.equal(clean, speech_coefficients(enc, windows, frames, 40, noise=0.0)[1])

    def noisy(level, seed):
        return speech_coefficients(enc, windows, frames, 40, noise=level,
                                   generator=torch.Generator().manual_seed(seed))[1]
    a = noisy(0.3, 5)
    assert torch.equal(a, noisy(0.3, 5)) and not torch.allclose(a, noisy(0.3, 6))
    # more noise moves the output further from the clean one
    assert (noisy(1.0, 5) - clean).abs().mean() > (a - clean).abs().mean() > 0
    with pytest.raises(ValueError, match="encoder_noise"):
        IdentityTrainConfig(encoder_noise=-0.1).validate()


@pytest.mark.parametrize("encoder_steps", [0, 1])
def test_encoder_steps_freeze_the_encoders_and_only_them(tmp_path, encoder_steps):
    """With --encoder-steps 1, steps after the first leave both audio encoders as they were
    while the rest of the talker goes on learning; with 0 the encoders keep learning."""
    from pathlib import Path

    import torch
    from test_talker import tiny_config, tiny_generator

    from dgtalker.train import identity
    from dgtalker.train.state import STATE_SUFFIX, load_training_state

    sample = Path(__file__).parent / "data" / "sample"
    out = tmp_path / "t.safetensors"
    kw = dict(prior=tiny_generator(), device="cpu", progress=False)
    states = []
    for steps in (1, 3):
        identity.train_identity(sample, out, tiny_config(steps=steps, encoder_steps=encoder_steps,
                                                         distill_weight=1.0), **kw)
        tensors, _ = load_training_state(out)
        states.append({k: v.clone() for k, v in tensors.items() if k.startswith("talker.")})
    assert (tmp_path / ("t.safetensors" + STATE_SUFFIX)).exists()
    enc = [k for k in states[0] if k.startswith(("talker.encoder.", "talker.causal_encoder."))
           and states[0][k].is_floating_point() and "calib" not in k and "lip_" not in k and "mel_" not in k]
    moved = {k for k in enc if not torch.equal(states[0][k], states[1][k])}
    assert enc and any(k.startswith("talker.causal_encoder.") for k in enc)
    if encoder_steps:
        assert not moved, sorted(moved)[:5]
    else:
        assert any(k.startswith("talker.encoder.") for k in moved) and any(k.startswith("talker.causal_encoder.")
                                                                          for k in moved)
    assert not torch.equal(states[0]["talker.w_can"], states[1]["talker.w_can"])  # the rest learns on


def test_an_ensemble_encoder_outputs_its_members_mean():
    """``members`` networks from different initial weights; the output is their mean, the
    first member is the single encoder of the same seed, and bad sizes are refused."""
    from dgtalker.models.audio_encoder import AudioEncoder, AudioEncoderConfig

    cfg = dict(k_exp=2, k_lip=3, channels=16, embed=16, past=2, future=2)
    ens = AudioEncoder(AudioEncoderConfig(**cfg, members=3), seed=4)
    one = AudioEncoder(AudioEncoderConfig(**cfg), seed=4)
    torch.manual_seed(0)
    windows = torch.randn(20, ens.config.window, ens.config.channels_in)
    with torch.no_grad():
        for e in (ens, one):
            e.head[-1].weight.mul_(30)  # coefficients of order one
        for m in ens.others:
            m.head[-1].weight.mul_(30)
        ce, cl = ens(windows)
        emb = ens.frame_embedding(windows)
        me, ml = ens.from_embeddings(emb[ens.neighbours(torch.arange(20), 20)], members=True)
    assert ml.shape == (3, 20, 3) and me.shape == (3, 20, 2)
    assert torch.allclose(ml.mean(0), cl, atol=1e-6) and torch.allclose(me.mean(0), ce, atol=1e-6)
    assert float((ml[0] - ml[1]).abs().max()) > 1e-2            # different initial weights
    assert torch.allclose(ml[0], one(windows)[1], atol=1e-6)
    assert AudioEncoderConfig(**cfg, members=3).causal().members == 1  # streaming distils the mean
    with pytest.raises(ValueError, match="members"):
        AudioEncoderConfig(**cfg, members=0)


def test_training_an_ensemble_encoder_trains_every_member_and_resumes_exactly(tmp_path):
    """``--encoder-members 2``: both members learn the lip target, the talker file keeps
    them, and a run resumed half way ends as the run without a break."""
    from pathlib import Path

    from test_talker import tiny_config, tiny_generator

    from dgtalker.models.audio_encoder import AudioEncoder
    from dgtalker.talker import load_talker
    from dgtalker.train import identity

    sample = Path(__file__).parent / "data" / "sample"
    kw = dict(prior=tiny_generator(), device="cpu", progress=False)
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    identity.train_identity(sample, a, tiny_config(steps=4, encoder_members=2), **kw)
    identity.train_identity(sample, b, tiny_config(steps=2, encoder_members=2), **kw)
    identity.train_identity(sample, b, tiny_config(steps=4, encoder_members=2), **kw)
    ta, tb = load_talker(a), load_talker(b)
    assert ta.encoder.config.members == 2 and len(ta.encoder.others) == 1
    assert ta.causal_encoder.config.members == 1
    fresh = AudioEncoder(ta.encoder.config, seed=0)
    for trained, start in zip(ta.encoder.networks(), fresh.networks()):
        assert not torch.equal(trained.head[-1].weight, start.head[-1].weight)
    for k, v in ta.state_dict().items():
        assert torch.equal(v, tb.state_dict()[k]), k
    with pytest.raises(ValueError, match="encoder_members"):
        tiny_config(encoder_members=0).validate()


def test_training_reads_its_clip_as_spoken_and_the_talker_reads_new_speech_at_its_level():
    """A talker with a level window trains on the clip's features read at the clip's level
    (the same windows as a talker without one), while the speech that drives it (here the
    same clip, a softer stretch made softer still) is read passage by passage at its level."""
    import dataclasses
    from pathlib import Path

    import numpy as np
    import torch
    from test_talker import tiny_generator

    from dgtalker.audio.frontend import load_frontend
    from dgtalker.data import load
    from dgtalker.talker import Talker, TalkerConfig
    from dgtalker.train import clip

    ds = load(Path(__file__).parent / "data" / "sample")
    cfg = dict(k_exp=2, k_lip=3, width=96, height=96, frontend=dataclasses.asdict(load_frontend().config),
               normalised_mel=True)
    windows = {}
    for level in (0.0, 4.0):
        torch.manual_seed(0)
        data = clip.ClipFrames(ds, ds.splits["train"], 32, progress=False)
        talker = Talker(tiny_generator(), TalkerConfig(**cfg, level_window=level), residual_frames=data.num_frames)
        data.set_windows(talker)
        windows[level] = (talker, data.windows.clone())
    torch.testing.assert_close(windows[4.0][1], windows[0.0][1])
    rng = np.random.default_rng(0)
    mel = rng.normal(-4, 1, (1600, 80)).astype(np.float32)
    mel[600:1100] -= 1.0                 # a stretch 10 dB softer
    soft = [windows[lv][0].speech_features(mel)[0][800 + 6:900 + 6, :80].mean() for lv in (0.0, 4.0)]
    assert soft[1] > soft[0] + 0.2


def _syllables(amplitudes, frames_each=100, period=10):
    """A mouth opening [sum] of syllable cycles, one passage per amplitude."""
    import torch

    t = torch.arange(frames_each, dtype=torch.float64)
    return torch.cat([a * torch.sin(2 * torch.pi * t / period) for a in amplitudes])


def test_steady_opening_moves_each_passage_as_much_as_the_person():
    """A passage predicted with 0.75 of the person's motion is widened to it, one with 0.4
    by STEADY_GAIN at most; the timing inside a passage, the passage's mean opening and the
    other coefficients stay, the range binds; causal, no later frame changes a frame."""
    import torch

    from dgtalker.models.audio_encoder import STEADY_GAIN, local_spread, steady_opening

    x = _syllables([1.0, 0.75, 0.4], 150) + 0.3
    c = torch.stack([x, torch.randn(len(x), dtype=torch.float64)], 1)
    person = float(local_spread(x[:150], 50, False)[1][75])
    y = steady_opening(c, 50, person, False)
    assert torch.equal(y[:, 1], c[:, 1])
    _, sd = local_spread(y[:, 0], 50, False)
    assert abs(float(sd[75]) - person) < 1e-3 * person        # already the person's: unchanged
    assert abs(float(sd[225]) - person) < 0.01 * person       # widened by 1 / 0.75
    assert abs(float(sd[375]) - 0.4 * STEADY_GAIN * person) < 0.01 * person  # the gain's bound
    mid = slice(160, 290)
    assert float(torch.corrcoef(torch.stack([y[mid, 0], x[mid]]))[0, 1]) > 0.999
    assert abs(float(y[mid, 0].mean() - x[mid].mean())) < 0.02
    assert float(steady_opening(c, 50, person, False, -0.2, 1.1)[:, 0].max()) == 1.1
    assert torch.allclose(steady_opening(c, 50, person, False, -0.2, 1.1)[:, 0].min(),
                          torch.tensor(-0.2, dtype=torch.float64))
    z = c.clone()
    z[300:] += 2.0
    assert torch.equal(steady_opening(z, 50, person, True)[:300], steady_opening(c, 50, person, True)[:300])
    assert not torch.equal(steady_opening(z, 50, person, False)[:300], steady_opening(c, 50, person, False)[:300])


def test_training_measures_the_persons_mouth_motion_on_training_frames_only():
    """``fit_lip_motion`` sets the talker's window and the median spread of the tracked
    opening over training frames' windows; held-out frames are not read, and without a
    window or a lip target the steady motion is off (and changes nothing)."""
    from pathlib import Path

    import torch
    from test_talker import tiny_config, tiny_generator

    from dgtalker.data import load
    from dgtalker.models.audio_encoder import local_spread
    from dgtalker.talker import Talker, TalkerConfig
    from dgtalker.train import clip, identity

    ds = load(Path(__file__).parent / "data" / "sample")
    data = clip.ClipFrames(ds, ds.splits["train"], 32, progress=False)
    talker = Talker(tiny_generator(), TalkerConfig(k_exp=2, k_lip=3, width=96, height=96),
                    residual_frames=data.num_frames)
    cfg = tiny_config(motion_window=0.8)
    spread = identity.fit_lip_motion(talker, data, cfg)
    train = data.indices
    x = data.mouth[:, 0].double()
    valid = torch.zeros(len(x), dtype=torch.bool)
    valid[train] = True
    valid &= torch.isfinite(x)
    _, sd = local_spread(torch.nan_to_num(x), 20, False, valid)
    assert spread > 0 and abs(spread - float(sd[valid].median())) < 1e-4
    assert talker.config.motion_window == 0.8 and talker.config.lip_motion == spread
    held = torch.tensor(sorted(set(range(data.num_frames)) - set(train.tolist())))
    data.mouth[held, 0] = 50.0
    assert identity.fit_lip_motion(talker, data, cfg) == spread
    for off in (tiny_config(motion_window=0.0), tiny_config(lip_target=0.0)):
        assert identity.fit_lip_motion(talker, data, off) == 0.0
        assert talker.config.lip_motion == 0.0 and talker.config.motion_window == 0.0
        c = torch.randn(30, 3)
        assert torch.equal(talker.steady_lips(c, 25.0), c)
    with pytest.raises(ValueError, match="motion_window"):
        TalkerConfig(motion_window=-1.0)
    for bad in (-1.0, 61.0, float("inf")):  # refused before training, not when it saves
        with pytest.raises(ValueError, match="motion_window"):
            tiny_config(motion_window=bad).validate()
    with pytest.raises(ValueError, match="lip_motion"):
        TalkerConfig(lip_motion=float("nan"))
    with pytest.raises(ValueError, match="k_lip >= 1"):
        TalkerConfig(k_exp=2, k_lip=0, motion_window=4.0)


def test_motion_gain_matches_the_renders_spread_to_the_truths():
    """The gain undoes the render's spread ratio (known answers), within MAX_GAIN, reads
    only frames where both mouths were found, and refuses too few frames or a still mouth."""
    from dgtalker.eval.calibrate import MAX_GAIN, MIN_FRAMES, motion_gain

    rng = np.random.default_rng(0)
    truth = 0.04 + 0.02 * rng.standard_normal(80)
    res = motion_gain(0.8 * truth + 0.01, truth)
    assert res["motion_ratio"] == pytest.approx(0.8, abs=1e-3) and res["gain"] == pytest.approx(1.25, abs=1e-3)
    assert res["corr"] == pytest.approx(1.0) and res["frames"] == 80
    render = 0.8 * truth
    render[:10] = np.nan
    assert motion_gain(render, truth)["frames"] == 70
    assert motion_gain(0.2 * truth, truth)["gain"] == pytest.approx(MAX_GAIN)
    assert motion_gain(4.0 * truth, truth)["gain"] == pytest.approx(1 / MAX_GAIN, abs=1e-4)
    with pytest.raises(ValueError, match=f"at least {MIN_FRAMES}"):
        motion_gain(truth[:MIN_FRAMES - 1], truth[:MIN_FRAMES - 1])
    with pytest.raises(ValueError, match="does not move"):
        motion_gain(truth, np.full_like(truth, 0.03))


def test_calibrate_lips_scales_the_steady_motion_and_rewrites_the_talker(tmp_path, monkeypatch, capsys):
    """``dgtalker calibrate-lips`` renders training frames only (evaluate stubbed with known
    openings), scales lip_motion by the gain, records it, keeps the file's precision, and
    refuses a talker without steady motion, a missing talker and too few frames by name."""
    import dataclasses
    from pathlib import Path

    from test_talker import tiny_generator

    from dgtalker.cli import main
    from dgtalker.data import load
    from dgtalker.eval import calibrate, evaluate, landmarks
    from dgtalker.talker import Talker, TalkerConfig, load_talker, read_talker_metadata, save_talker

    data = Path(__file__).parent / "data" / "sample"
    ds = load(data)
    talker = Talker(tiny_generator(), TalkerConfig(k_exp=2, k_lip=3, width=96, height=96, motion_window=4.0,
                                                   lip_motion=0.9), residual_frames=len(ds))
    path = save_talker(tmp_path / "t.safetensors", talker, half=True)
    seen = {}

    def fake_evaluate(t, dataset, *, frames, **kw):
        seen["frames"] = np.asarray(frames)
        truth = 0.04 + 0.02 * np.sin(np.arange(len(frames)))
        return {"per_frame": [{"opening_render": 0.75 * v, "opening_truth": v} for v in truth]}

    monkeypatch.setattr(evaluate, "evaluate", fake_evaluate)
    monkeypatch.setattr(landmarks, "available", lambda: True)
    assert main(["calibrate-lips", "--data", str(data), "--talker", str(path), "--frames", "16",
                 "--device", "cpu"]) == 0
    assert set(seen["frames"].tolist()) <= set(ds.splits["train"].tolist()) and len(seen["frames"]) == min(
        16, ds.splits["train"].size)
    cal = load_talker(path, device="cpu")
    assert cal.config.lip_motion == pytest.approx(0.9 / 0.75, abs=1e-3)
    meta = read_talker_metadata(path)
    assert meta["source"]["motion_calibration"]["gain"] == pytest.approx(1 / 0.75, abs=1e-3)
    assert "0.75 as much" in capsys.readouterr().out
    from dgtalker.checkpoint import read_checkpoint
    from dgtalker.talker import FORMAT, FORMAT_VERSION
    tensors, _, _ = read_checkpoint(path, format=FORMAT, max_version=FORMAT_VERSION)
    assert any(str(v.dtype).endswith("float16") for v in tensors.values())

    still = dataclasses.replace(talker.config, motion_window=0.0, lip_motion=0.0)
    talker.config = still
    plain = save_talker(tmp_path / "plain.safetensors", talker)
    assert main(["calibrate-lips", "--data", str(data), "--talker", str(plain), "--device", "cpu"]) == 2
    assert "no steady mouth motion" in capsys.readouterr().err
    assert main(["calibrate-lips", "--data", str(data), "--talker", str(tmp_path / "none.safetensors"),
                 "--device", "cpu"]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["calibrate-lips", "--data", str(data), "--talker", str(path), "--out",
                 str(tmp_path / "missing" / "t.safetensors"), "--device", "cpu"]) == 2
    assert "calibrate-lips: error" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["calibrate-lips", "--data", str(data), "--talker", str(path), "--frames", "3"])
    with pytest.raises(ValueError, match="frames must be"):
        calibrate.calibrate_motion(load_talker(path, device="cpu"), ds, frames=4)
