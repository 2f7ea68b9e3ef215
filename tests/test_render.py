"""The inference API: talker.render / dgtalker.render, Video, streaming (CPU, tiny talker)."""
import dataclasses
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from priors import TINY

import dgtalker
from dgtalker.models.generator import Generator, GeneratorConfig
from dgtalker.render import RenderError, Video
from dgtalker.talker import Talker, TalkerConfig

RATE = 16000


@pytest.fixture(scope="module")
def talker():
    T = Talker(Generator(GeneratorConfig(**TINY), seed=0), TalkerConfig(k_exp=2, k_lip=2, width=32, height=32),
               residual_frames=50)
    vm, K = dgtalker.camera.orbit(0, 0, width=32, height=32)
    with torch.no_grad():
        T.default_w2c.copy_(vm)
        T.body_w2c.copy_(vm)
        T.default_K.copy_(K)
        T.residual_track.normal_()
        T.blink_map.normal_()
        T.blink_track.copy_((torch.arange(50) % 10 < 3).float())  # a blink every 10 frames
        T.background.fill_(0.25)
    return T.eval()


def speech_like(seconds=0.5, rate=RATE):
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def test_audio_forms_and_frame_count(talker, tmp_path):
    x = speech_like(0.5)
    v1 = talker.render((x, RATE))
    assert isinstance(v1, Video) and v1.frames.dtype == torch.uint8 and v1.frames.shape == (13, 32, 32, 3)
    assert len(v1) == math.ceil(0.5 * 25) and v1.alpha.shape == (13, 32, 32) and v1.fps == 25.0
    v2 = talker.render(x, sample_rate=RATE)
    assert torch.equal(v1.frames, v2.frames)
    sf.write(tmp_path / "s.wav", speech_like(0.5, 22050), 22050)
    v3 = talker.render(tmp_path / "s.wav", fps=30)
    assert len(v3) == math.ceil(0.5 * 30)
    assert v3.audio[1] == RATE


def _alpha_centroid(video):
    a = video.alpha.mean(0)
    H, W = a.shape
    ys, xs = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    return float((a * xs).sum() / a.sum()) / W, float((a * ys).sum() / a.sum()) / H


def test_camera_carries_its_size(talker):
    """A Camera renders at its own size with the head where its K puts it; a bare
    (viewmat, K) is refused without a size (it used to render at the talker's size with
    the head squeezed into a corner)."""
    x = speech_like(0.2)
    big = talker.render((x, RATE), dgtalker.camera.orbit(0, 0, width=64, height=48))
    assert big.frames.shape[1:] == (48, 64, 3)
    small = talker.render((x, RATE), dgtalker.camera.orbit(0, 0, width=32, height=24))
    assert small.frames.shape[1:] == (24, 32, 3)
    # the same framing at both sizes: the head's centroid at the same relative place
    assert np.allclose(_alpha_centroid(big), _alpha_centroid(small), atol=0.03)
    # an explicit size resizes the camera's intrinsics (same framing again)
    resized = talker.render((x, RATE), dgtalker.camera.orbit(0, 0, width=64, height=48), width=32, height=24)
    assert np.allclose(_alpha_centroid(resized), _alpha_centroid(small), atol=1e-3)
    vm, K = dgtalker.camera.orbit(0, 0, width=64, height=48)
    with pytest.raises(RenderError, match="carries no image size"):
        talker.render((x, RATE), (vm, K))
    bare = talker.render((x, RATE), (vm, K), width=64, height=48)
    assert torch.equal(bare.frames, big.frames)
    with pytest.raises(RenderError, match="both width and height"):
        talker.render((x, RATE), width=32)


def test_camera_forms(talker):
    x = speech_like(0.4)
    T = 10
    one = dgtalker.camera.orbit(20, 5, width=32, height=32)
    a = talker.render((x, RATE), one)
    vm, K = one
    same = dgtalker.camera.Camera(vm.expand(T, -1, -1), K.expand(T, -1, -1), 32, 32)
    assert torch.equal(a.frames, talker.render((x, RATE), same).frames)
    sp = dgtalker.camera.spiral(T, width=32, height=32)
    c = talker.render((x, RATE), sp)
    assert c.frames.shape == (T, 32, 32, 3)
    # frame k is seen by the spiral's camera k: equal to a render with that fixed camera
    for k in (0, 6):
        fixed = talker.render((x, RATE), dgtalker.camera.Camera(sp.viewmats[k], sp.Ks[k], 32, 32))
        assert torch.equal(c.frames[k], fixed.frames[k])
    assert not torch.equal(c.frames[0], c.frames[6])
    pth = dgtalker.camera.path([(-20, 0), (20, 0)], T, width=32, height=32)
    assert np.allclose(dgtalker.camera.orbit_angles(pth.viewmats)[[0, -1], 0], [-20.0, 20.0], atol=1e-3)


def test_dataset_cameras_are_read_by_time_and_refused_when_short(talker):
    from dgtalker.data import load

    ds = load(__import__("pathlib").Path(__file__).parent / "data" / "sample")
    n = len(ds.w2c)
    cam = dgtalker.camera.Camera.from_dataset(ds)
    assert cam.torso == "clip" and len(cam) == n
    # output frames at twice the dataset's rate take each dataset camera twice
    idx = cam.indices(2 * n, 2 * ds.fps)
    assert idx.tolist() == np.repeat(np.arange(n), 2).tolist()
    fits = speech_like((n - 0.5) / ds.fps)
    v = talker.render((fits, RATE), ds, fps=ds.fps)
    assert len(v) == n and v.frames.shape[1:] == (ds.height, ds.width, 3)
    too_long = speech_like((n + 5) / ds.fps)
    with pytest.raises(RenderError, match="camera covers"):
        talker.render((too_long, RATE), ds, fps=ds.fps)
    held = talker.render((too_long, RATE), cam.with_options(extend="hold"), fps=ds.fps)
    assert len(held) == n + 5
    looped = dgtalker.camera.Camera.from_dataset(ds, extend="loop")
    assert looped.indices(n + 3, ds.fps).tolist() == list(range(n)) + [0, 1, 2]
    assert cam.with_options(extend="hold").indices(n + 3, ds.fps).tolist() == list(range(n)) + [n - 1] * 3


def test_frames_follow_time_at_any_fps(talker):
    """At 50 fps every other frame is the 25 fps frame of the same time: the encoder's
    neighbours, the sampled expression and blinks, and the cameras are read by time."""
    x = speech_like(1.0)
    cams = dgtalker.camera.spiral(25, width=32, height=32, fps=25)
    for kw in ({}, {"expression": "sample", "seed": 3}, {"causal": True}):
        v25 = talker.render((x, RATE), cams, fps=25, **kw)
        v50 = talker.render((x, RATE), cams, fps=50, **kw)
        assert len(v50) == 2 * len(v25)
        k = len(v25) - 4  # the last frames' neighbours reach the clip's end differently
        assert torch.equal(v50.frames[0:2 * k:2], v25.frames[:k]), kw
    # blinks come as often at 50 fps as at 25 (per second, not per frame)
    b25 = dgtalker.inference.sampled_tracks(talker, 250, 25.0, 0)[1]
    b50 = dgtalker.inference.sampled_tracks(talker, 500, 50.0, 0)[1]
    assert torch.equal(b50[::2], b25)


@pytest.mark.parametrize("fps", [10.0, 24.0, 25.0, 30.0, 50.0, 60.0])
def test_causal_lookahead_bound_at_any_fps(talker, fps):
    """Changing the audio after t + lookahead never changes frame t's coefficients, and
    the bound is <= 0.2 s at every fps."""
    from dgtalker.inference import speech_coefficients

    la = talker.causal_encoder.lookahead_seconds()
    assert la <= 0.2
    rng = np.random.default_rng(0)
    x = (0.2 * rng.standard_normal(RATE * 2)).astype(np.float32)
    T = dgtalker.audio.num_video_frames(len(x), RATE, fps)
    t = int(0.6 * fps)
    cut = int(np.ceil((t / fps + la) * RATE)) + 1
    y = x.copy()
    y[cut:] = (0.2 * rng.standard_normal(len(x) - cut)).astype(np.float32)
    a = speech_coefficients(talker, x, T, fps, causal=True)
    b = speech_coefficients(talker, y, T, fps, causal=True)
    assert torch.equal(a[1][t], b[1][t]) and torch.equal(a[0][t], b[0][t])
    # ... while a change 60 ms inside the bound can change it (the bound is not loose)
    z = x.copy()
    z[cut - int(0.06 * RATE):] = 0
    c = speech_coefficients(talker, z, T, fps, causal=True)
    assert not torch.equal(a[1][t], c[1][t])


def test_sampled_expression_comes_from_training_frames_only():
    """Held-out frames' residual codes are untrained and their blinks are ground truth:
    sampling never copies them."""
    T = Talker(Generator(GeneratorConfig(**TINY), seed=0), TalkerConfig(k_exp=2, k_lip=2, width=32, height=32),
               residual_frames=300)
    with torch.no_grad():
        T.residual_track.copy_(torch.randn(300, 2) * 0.1)
        T.residual_track[250:] = 1000.0  # the held-out tail
        T.blink_track[250:] = 1.0
        T.train_mask[250:] = False
    for seed in range(5):
        resid, blink = T.sample_expression(600, seed=seed)
        assert float(resid.abs().max()) < 10 and float(blink.max()) == 0.0, seed
    with torch.no_grad():
        T.train_mask[:] = True
    hits = [float(T.sample_expression(600, seed=s)[0].abs().max()) > 10 for s in range(5)]
    assert any(hits)  # the same draw over all frames does reach the tail: the test can fail


def test_train_mask_round_trips(tmp_path):
    from dgtalker.talker import load_talker, save_talker

    T = Talker(Generator(GeneratorConfig(**TINY), seed=0), TalkerConfig(k_exp=2, k_lip=2, width=32, height=32),
               residual_frames=20)
    with torch.no_grad():
        T.train_mask[15:] = False
    back = load_talker(save_talker(tmp_path / "t.safetensors", T))
    assert back.train_mask.dtype == torch.bool and back.train_mask.tolist() == T.train_mask.tolist()


def test_controls_change_the_frames(talker):
    x = speech_like(0.4)
    base = talker.render((x, RATE))
    s1 = talker.render((x, RATE), expression="sample", seed=1)
    s1b = talker.render((x, RATE), expression="sample", seed=1)
    s2 = talker.render((x, RATE), expression="sample", seed=2)
    assert torch.equal(s1.frames, s1b.frames) and not torch.equal(s1.frames, s2.frames)
    assert not torch.equal(base.frames, s1.frames)
    assert not torch.equal(base.frames, talker.render((x, RATE), blink=1.0).frames)
    assert not torch.equal(base.frames, talker.render((x, RATE), lip_scale=3.0, exp_scale=0.0).frames)
    # fixed coefficients replace the speech-driven ones on every frame
    fixed = talker.render((x, RATE), expression=[0.5, -0.5], blink=None)
    per_frame = talker.render((x, RATE), expression=np.tile([0.5, -0.5], (len(base), 1)), blink=None)
    assert torch.equal(fixed.frames, per_frame.frames) and not torch.equal(fixed.frames, base.frames)
    # with both branches scaled to zero every frame is the neutral face of the frame path
    rest = talker.render((x, RATE), lip_scale=0.0, exp_scale=0.0, blink=None)
    vm, K = talker.camera()
    with torch.no_grad():
        img, _ = talker.frames(torch.zeros(1, 2), torch.zeros(1, 2), vm[None], K[None], 32, 32)
    assert torch.equal(rest.frames[3], (img[0].clamp(0, 1) * 255).round().to(torch.uint8))
    # numpy scalars are numbers too
    assert torch.equal(talker.render((x, RATE), lip_scale=np.float32(1.5)).frames,
                       talker.render((x, RATE), lip_scale=1.5).frames)


@pytest.mark.parametrize("kw,match", [
    ({"width": 0, "height": 32}, "width must be an int"),
    ({"width": 8.7, "height": 32}, "width must be an int"),
    ({"width": -32, "height": -32}, "width must be an int"),
    ({"batch": 0}, "batch must be a positive int"),
    ({"fps": 0}, "fps"),
    ({"blink": 5}, "blink amounts must be in"),
    ({"background": [255, 0, 0]}, "background values must be finite and in"),
    ({"background": np.zeros((5, 5, 3))}, "background must be"),
    ({"lip_scale": float("nan")}, "lip_scale"),
    ({"lip_scale": "big"}, "lip_scale"),
    ({"seed": 1.5}, "seed"),
    ({"expression": np.zeros(5)}, "expression"),
    ({"causal": "yes"}, "causal must be True or False"),
    ({"steady": 1}, "steady must be True or False"),
    ({"progress": None}, "progress must be True or False"),
])
def test_bad_options_are_named_before_any_work(talker, kw, match, monkeypatch):
    def no_work(*a, **k):
        raise AssertionError("audio was analysed before the arguments were checked")

    monkeypatch.setattr(dgtalker.inference, "speech", no_work)
    with pytest.raises(RenderError, match=match):
        talker.render((speech_like(0.2), RATE), **kw)


def test_cuda_device_without_cuda_is_named(talker):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(RenderError, match="no CUDA device"):
        talker.render((speech_like(0.2), RATE), device="cuda")
    with pytest.raises(RenderError, match="device must be"):
        talker.render((speech_like(0.2), RATE), device="tpu")


def test_default_render_blinks_with_the_persons_own_blinks(talker):
    """By default the eyelids follow blinks excerpted from the training clip (seeded, the
    same excerpts as expression="sample"); None keeps the eyes open; bad values are named."""
    x = speech_like(1.0)
    T = 25
    sampled = talker.sample_expression(T, seed=4)[1]
    assert float(sampled.max()) > 0.5  # the fixture's clip blinks every 10 frames
    default = talker.render((x, RATE), seed=4)
    assert torch.equal(default.frames, talker.render((x, RATE), blink=sampled).frames)
    assert not torch.equal(default.frames, talker.render((x, RATE), blink=None).frames)
    assert torch.equal(talker.render((x, RATE), blink=None).frames, talker.render((x, RATE), blink=0.0).frames)
    both = talker.render((x, RATE), expression="sample", seed=4)  # residual and blinks from one excerpt
    resid = talker.sample_expression(T, seed=4)[0]
    ce, _ = talker.coefficients(torch.from_numpy(
        dgtalker.audio.features(x, RATE, fps=25, context=talker.encoder.config.half_window / 100.0).windows))
    assert torch.equal(both.frames, talker.render((x, RATE), expression=(ce + resid).detach(), seed=4).frames)
    with pytest.raises(RenderError, match="blink"):
        talker.render((x, RATE), blink="often")
    with pytest.raises(RenderError, match="blink"):
        talker.render((x, RATE), blink=np.zeros(3))
    with pytest.raises(RenderError, match="blink"):
        list(talker.stream([x], blink="often"))
    with pytest.raises(RenderError, match="blink holds 3"):
        list(talker.stream([x], blink=np.zeros(3)))


def test_save_writes_mp4_with_audio(talker, tmp_path):
    """Without a system ffmpeg the bundled one (imageio-ffmpeg) writes the file; PyAV reads it back."""
    av = pytest.importorskip("av")
    v = talker.render((speech_like(1.0), RATE))
    p = v.save(tmp_path / "talk.mp4")
    with av.open(str(p)) as c:
        kinds = {s.type: float(s.duration * s.time_base) for s in c.streams if s.duration is not None}
        frames = sum(1 for _ in c.decode(video=0))
    assert set(kinds) == {"video", "audio"}, kinds
    assert abs(kinds["video"] - 1.0) < 0.05 and abs(kinds["audio"] - 1.0) < 0.1 and frames == len(v)
    assert not list(tmp_path.glob(".talk.mp4*"))  # no temporary left behind
    v.contact_sheet(tmp_path / "sheet.png")
    assert (tmp_path / "sheet.png").stat().st_size > 0


def test_stream_equals_offline_causal_render(talker):
    x = speech_like(0.8)
    offline = talker.render((x, RATE), causal=True)
    chunks = [x[i:i + 1234] for i in range(0, len(x), 1234)]
    frames = list(talker.stream(chunks))
    assert len(frames) == len(offline)
    diff = max(int((a.int() - b.int()).abs().max()) for a, b in zip(frames, offline.frames))
    assert diff <= 2  # rounding of one-frame vs batched float math


@pytest.mark.parametrize("rate,fps", [(44100, 25.0), (22050, 30.0), (8000, 50.0), (16000, 12.5)])
def test_stream_equals_offline_at_any_rate_and_fps(talker, rate, fps):
    """One stateful resampler: the same frame count and the same pixels as the offline
    causal render (per-chunk resampling gave 51 frames for 50 and drifted)."""
    x = speech_like(2.0, rate)
    offline = talker.render((x, rate), causal=True, fps=fps, blink=None)
    chunks = [x[i:i + 1777] for i in range(0, len(x), 1777)]
    frames = list(talker.stream(chunks, sample_rate=rate, fps=fps, blink=None))
    assert len(frames) == len(offline) == math.ceil(2.0 * fps)
    assert max(int((a.int() - b.int()).abs().max()) for a, b in zip(frames, offline.frames)) <= 2


def test_stream_with_per_frame_cameras_and_too_few_of_them(talker):
    x = speech_like(0.4)
    cams = dgtalker.camera.spiral(10, width=32, height=32)
    frames = list(talker.stream([x], cams))
    offline = talker.render((x, RATE), cams, causal=True)
    assert len(frames) == 10
    assert max(int((a.int() - b.int()).abs().max()) for a, b in zip(frames, offline.frames)) <= 2
    short = dgtalker.camera.spiral(4, width=32, height=32)
    with pytest.raises(RenderError, match="4 per-frame cameras but the stream reached frame 4"):
        list(talker.stream([x], short))


def test_stream_yields_before_the_audio_ends(talker):
    x = speech_like(1.0)
    chunks = [x[i:i + 1600] for i in range(0, len(x), 1600)]  # 0.1 s each
    got = []

    def feed():
        for k, c in enumerate(chunks):
            got.append(("chunk", k))
            yield c

    for _ in talker.stream(feed()):
        got.append(("frame",))
    first = got.index(("frame",))
    # the first frame (t = 0) needs at most the look-ahead (<= 0.2 s) plus one chunk
    assert sum(1 for g in got[:first] if g[0] == "chunk") <= 4


@pytest.mark.parametrize("audio,kw,match", [
    (np.zeros(0, np.float32), {"sample_rate": RATE}, "empty"),
    (np.full(1000, np.nan, np.float32), {"sample_rate": RATE}, "NaN"),
    (np.zeros(100, np.float32), {"sample_rate": RATE}, "shorter than one video frame"),
    (np.zeros(1000, np.float32), {}, "sample_rate"),
])
def test_bad_audio_is_named(talker, audio, kw, match):
    with pytest.raises(ValueError, match=match):
        talker.render(audio, **kw)


def test_bad_audio_files_are_named(talker, tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        talker.render(tmp_path / "empty.wav")
    (tmp_path / "text.wav").write_text("not audio\n" * 100)
    with pytest.raises(ValueError, match="text.wav"):
        talker.render(tmp_path / "text.wav")


def test_bad_cameras_are_named(talker):
    x = speech_like(0.4)
    vm, K = dgtalker.camera.orbit(0, 0, width=32, height=32)
    size = {"width": 32, "height": 32}
    with pytest.raises(RenderError, match="viewmats must be"):
        talker.render((x, RATE), (vm[:3], K), **size)
    with pytest.raises(RenderError, match="NaN"):
        talker.render((x, RATE), (vm * float("nan"), K), **size)
    behind = vm.clone()
    behind[2, 3] = -0.5
    with pytest.raises(RenderError, match="behind"):
        talker.render((x, RATE), (behind, K), **size)
    with pytest.raises(RenderError, match="3 per-frame cameras but the speech makes 10 frames"):
        talker.render((x, RATE), (vm.expand(3, -1, -1), K.expand(3, -1, -1)), **size)
    with pytest.raises(RenderError, match="expression"):
        talker.render((x, RATE), expression="happy")


def test_a_video_is_saved_only_under_a_name_its_format_fits(talker, tmp_path):
    """Video.save writes an mp4 (h264 + aac): .mp4, .m4v or .mov (any case) take it; any other
    name is refused by name before ffmpeg runs; the contact sheet is a PNG, so .png only."""
    video = talker.render((speech_like(0.3), RATE), width=24, height=24, device="cpu")
    for name in ("a.mp4", "b.MOV", "c.m4v"):
        assert video.save(tmp_path / name).stat().st_size > 0
    for name in ("d.txt", "e.webm", "f"):
        with pytest.raises(ValueError, match=r"the video path must end in \.mp4, \.m4v or \.mov"):
            video.save(tmp_path / name)
        assert not (tmp_path / name).exists()
    assert video.contact_sheet(tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="must end in .png"):
        video.contact_sheet(tmp_path / "s.jpg")


def test_commands_end_to_end(talker, tmp_path):
    from dgtalker.cli import main
    from dgtalker.talker import save_talker

    tpath = save_talker(tmp_path / "tiny.safetensors", talker)
    sf.write(tmp_path / "s.wav", speech_like(0.6), RATE)
    assert main(["demo", "--talker", str(tpath), "--audio", str(tmp_path / "s.wav"), "--size", "32",
                 "--out", str(tmp_path / "demo.mp4"), "--device", "cpu"]) == 0
    assert (tmp_path / "demo.mp4").stat().st_size > 0 and (tmp_path / "demo.png").stat().st_size > 0
    assert main(["render", "--talker", str(tpath), "--audio", str(tmp_path / "s.wav"), "--camera", "orbit:20,5",
                 "--expression", "sample", "--seed", "3", "--size", "32", "--out", str(tmp_path / "r.mp4")]) == 0
    assert (tmp_path / "r.mp4").stat().st_size > 0
    assert main(["blendshapes", str(tpath), "--out", str(tmp_path / "b.png"), "--size", "24"]) == 0
    from PIL import Image

    assert Image.open(tmp_path / "b.png").size == (24 * 4, 24 * 3)
    assert main(["render", "--talker", str(tpath), "--audio", str(tmp_path / "missing.wav"),
                 "--out", str(tmp_path / "x.mp4")]) == 2
    # bad options fail before anything is rendered (the render itself would raise)
    import dgtalker.inference as inference

    def no_render(*a, **k):
        raise AssertionError("rendered before the options were checked")

    real = inference.render_talker
    inference.render_talker = no_render
    try:
        for bad in (["--out", str(tmp_path / "nodir" / "o.mp4")], ["--out", str(tmp_path)],
                    ["--out", str(tmp_path / "o.mp4"), "--size", "0"], ["--out", str(tmp_path / "o.mp4"), "--fps", "0"],
                    ["--out", str(tmp_path / "o.mp4"), "--sheet", str(tmp_path / "nodir" / "s.png")],
                    ["--out", str(tmp_path / "o.txt")], ["--out", str(tmp_path / "o.gif")],
                    ["--out", str(tmp_path / "o.mp4"), "--sheet", str(tmp_path / "s.jpg")]):
            assert main(["render", "--talker", str(tpath), "--audio", str(tmp_path / "s.wav")] + bad) == 2, bad
        assert main(["demo", "--talker", str(tpath), "--audio", str(tmp_path / "s.wav"), "--out",
                     str(tmp_path / "demo.webm"), "--device", "cpu"]) == 2
        if not torch.cuda.is_available():
            assert main(["render", "--talker", str(tpath), "--audio", str(tmp_path / "s.wav"), "--device", "cuda",
                         "--out", str(tmp_path / "o.mp4")]) == 2
    finally:
        inference.render_talker = real
    assert main(["render", "--talker", str(tmp_path / "s.wav"), "--audio", str(tmp_path / "s.wav"),
                 "--out", str(tmp_path / "x.mp4")]) == 2


def test_package_exposes_the_api():
    assert callable(dgtalker.render) and callable(dgtalker.load_talker)
    assert callable(dgtalker.camera.spiral) and callable(dgtalker.camera.orbit)
    from dgtalker.render import Video as V  # importing the module keeps dgtalker.render callable

    assert V is Video and callable(dgtalker.render)
    assert isinstance(dgtalker.camera.orbit(0, 0, width=16, height=16), dgtalker.camera.Camera)


def _mouth_darkness(frames, talker, size):
    """Dark-pixel fraction in a box around the mouth (projected from the head frame)."""
    vm, K = talker.camera(size, size)
    centre = torch.tensor([0.0, -0.058, 0.095, 1.0])
    p = vm @ centre
    u, v = (K[:2, :2] @ (p[:2] / p[2]) + K[:2, 2]).tolist()
    r = int(0.025 * K[0, 0] / p[2])
    crop = frames[:, int(v) - r:int(v) + r, int(u) - r:int(u) + r].float() / 255
    y = 0.299 * crop[..., 0] + 0.587 * crop[..., 1] + 0.114 * crop[..., 2]
    med = y.flatten(1).median(1).values
    return (y < 0.45 * med[:, None, None]).float().mean((1, 2))


def test_shipped_demo_talker_opens_its_mouth_for_speech_only():
    from dgtalker.talker import DEFAULT_TALKER_PATH, load_talker

    assert DEFAULT_TALKER_PATH.stat().st_size < 25 * 2**20
    T = load_talker()
    assert T.source.get("dataset_source", {}).get("identity") == 7
    assert T.blendshapes.orthogonality_error() < 1e-5
    from dgtalker.demo import BUNDLED_SPEECH

    size = 128
    speech_video = T.render(BUNDLED_SPEECH, width=size, height=size)
    silent = T.render((np.zeros(RATE, np.float32), RATE), width=size, height=size)
    talking, quiet = _mouth_darkness(speech_video.frames, T, size), _mouth_darkness(silent.frames, T, size)
    # a trained talker's mouth stays shut in silence and opens (dark interior) on some
    # speech frames, not all. The shipped talker: 0.00 in silence, up to 0.06 on speech,
    # open on 7% of its frames. An untrained talker on the same prior and framing
    # (default blendshapes and encoder, the mean head) fails all three: 0.055 in
    # silence, 0.12 on speech, "open" on every frame.
    assert float(quiet.max()) < 0.01, quiet.max()
    assert float(talking.max()) > 0.03, talking.max()
    assert 0 < float((talking > 0.02).float().mean()) < 0.9, talking


def _eye_colour_share(frames, talker, size):
    """Share of pixels around both eyes (projected from the head frame) whose colour is
    not skin's (red not above green: sclera, iris, pupil)."""
    vm, K = talker.camera(size, size)
    shares = []
    for side in (-1.0, 1.0):
        p = vm @ torch.tensor([0.031 * side, 0.018, 0.065, 1.0])
        u, v = (K[:2, :2] @ (p[:2] / p[2]) + K[:2, 2]).tolist()
        r = int(0.012 * K[0, 0] / p[2])
        crop = frames[:, int(v) - r:int(v) + r, int(u) - r:int(u) + r].float() / 255
        shares.append((crop[..., 0] - crop[..., 1] < 0.08).float().mean((1, 2)))
    return torch.stack(shares).mean(0)


def test_shipped_demo_talker_blinks_on_request():
    from dgtalker.talker import load_talker

    T = load_talker()
    size = 128
    quiet = (np.zeros(RATE // 5, np.float32), RATE)
    opened = _eye_colour_share(T.render(quiet, width=size, height=size, blink=0.0).frames, T, size)
    shut = _eye_colour_share(T.render(quiet, width=size, height=size, blink=1.0).frames, T, size)
    half = _eye_colour_share(T.render(quiet, width=size, height=size, blink=0.5).frames, T, size)
    # the shipped talker: eye colours on 0.41 of the crops open, 0.28 half shut, 0.18 shut (the
    # lid line stays). A talker without a trained eyelid layer (the one before it) renders
    # 0.34 at every amount
    assert float(opened.min()) > 0.2 and float(shut.max()) < 0.6 * float(opened.min()), (opened, shut)
    assert float(shut.max()) <= float(half.min()) and float(half.max()) <= float(opened.max())
    # its clip blinks, and sampled expressions carry those blinks
    assert float((T.blink_track >= 0.5).float().mean()) > 0.02
    _, blinks = T.sample_expression(250, seed=0)
    assert float(blinks.max()) > 0.5


def test_camera_turn_orbits_the_framing():
    """camera.turn moves a given camera around the look-at point exactly as orbit counts
    angles: turning the frontal orbit camera gives the orbit camera at that yaw/pitch."""
    import torch

    front, _ = dgtalker.camera.orbit(0, 0, width=32, height=32)
    assert torch.allclose(dgtalker.camera.turn(front, 0, 0), front)
    for yaw, pitch in ((20, 0), (-35, 10)):
        want, _ = dgtalker.camera.orbit(yaw, pitch, width=32, height=32)
        assert torch.allclose(dgtalker.camera.turn(front, yaw, pitch), want, atol=1e-5), (yaw, pitch)
        assert np.allclose(dgtalker.camera.orbit_angles(want), (yaw, pitch), atol=1e-4)  # its inverse
    turned = dgtalker.camera.turn(dgtalker.camera.orbit(0, 0, width=48, height=32), 20)
    assert isinstance(turned, dgtalker.camera.Camera) and (turned.width, turned.height) == (48, 32)
    assert np.allclose(dgtalker.camera.orbit_angles(turned.viewmats[0]), (20, 0), atol=1e-4)
    # a camera at another distance keeps its distance to the target
    far = front.clone()
    far[2, 3] += 0.3
    centre = lambda v: -(v[:3, :3].T @ v[:3, 3])  # noqa: E731
    target = torch.tensor(dgtalker.camera.DEFAULT_TARGET)
    d0 = (centre(far) - target).norm()
    assert torch.allclose((centre(dgtalker.camera.turn(far, 30)) - target).norm(), d0, atol=1e-5)


def frontend_talker(normalised_mel: bool, level_window: float = 0.0, motion_window: float = 0.0):
    """A tiny talker whose encoders read the shipped speech front end's channels beside
    the log-mel (as it is, or normalised as the front end reads it; with a level window,
    each passage at the speech's own level; with a motion window, the mouth opening kept
    moving by a person's spread over each passage)."""
    from dataclasses import asdict

    from dgtalker.audio.frontend import load_frontend

    fe = load_frontend()
    T = Talker(Generator(GeneratorConfig(**TINY), seed=0),
               TalkerConfig(k_exp=2, k_lip=2, width=32, height=32, frontend=asdict(fe.config),
                            normalised_mel=normalised_mel, level_window=level_window,
                            motion_window=motion_window, lip_motion=2.0 if motion_window else 0.0),
               residual_frames=50)
    T.frontend.load_state_dict(fe.model.state_dict())
    vm, K = dgtalker.camera.orbit(0, 0, width=32, height=32)
    with torch.no_grad():
        T.default_w2c.copy_(vm)
        T.body_w2c.copy_(vm)
        T.default_K.copy_(K)
        for enc in (T.encoder, T.causal_encoder):  # coefficients that react to the front end's channels
            enc.convs[0].weight.mul_(3.0)
    return T.eval()


@pytest.fixture(scope="module", params=[(False, 0.0), (True, 0.0), (True, 1.0), (True, 1.0, 0.5)],
                ids=["raw_mel", "normalised_mel", "level_window", "motion_window"])
def fe_talker(request):
    return frontend_talker(*request.param)


def test_a_normalised_mel_talker_ignores_the_recording_level():
    """The encoders of a normalised-mel talker read each band relative to the speech's own
    mean, as the front end does: the same speech recorded 12 dB quieter gives the same
    coefficients (the raw-mel talker's move, which this test would not tell apart if the
    level reached neither)."""
    from dgtalker.inference import speech_coefficients

    rng = np.random.default_rng(0)
    x = speech_like(1.5) + (0.05 * rng.standard_normal(int(1.5 * RATE))).astype(np.float32)  # every band above the floor
    T = dgtalker.audio.num_video_frames(len(x), RATE, 25.0)
    moved = {}
    for normalised in (False, True):
        talker = frontend_talker(normalised)
        for causal in (False, True):
            loud = torch.cat(speech_coefficients(talker, x, T, 25.0, causal=causal), 1)
            quiet = torch.cat(speech_coefficients(talker, x / 4, T, 25.0, causal=causal), 1)
            moved[normalised, causal] = float((loud - quiet).abs().max() / loud.abs().max())
    assert moved[True, False] < 1e-4 and moved[True, True] < 1e-4, moved
    assert moved[False, False] > 1e-2 and moved[False, True] > 1e-2, moved


def test_normalised_mel_needs_a_front_end():
    with pytest.raises(ValueError, match="normalised_mel needs a speech front end"):
        TalkerConfig(normalised_mel=True)


def test_frontend_talker_stream_equals_offline_and_keeps_its_lookahead(fe_talker):
    from dgtalker.inference import speech_coefficients

    enc = fe_talker.causal_encoder
    assert enc.config.frontend == fe_talker.config.frontend_config().embed + 2
    la = enc.lookahead_seconds()
    assert la <= 0.2 and enc.config.frontend_lookahead > 0
    rng = np.random.default_rng(0)
    x = (0.2 * rng.standard_normal(RATE * 3) * (np.arange(RATE * 3) % 4000 < 2500)).astype(np.float32)
    x *= np.linspace(0.2, 1.0, len(x), dtype=np.float32)  # louder as it goes: a level window has work to do
    if fe_talker.config.level_window:
        mel = dgtalker.audio.log_mel(x)
        assert not np.allclose(fe_talker.speech_features(mel, causal=True)[0],
                               fe_talker.speech_features(mel, causal=True, level_window=0.0)[0])
    if fe_talker.config.motion_window:  # the steady motion has work to do
        T = dgtalker.audio.num_video_frames(len(x), RATE, 25.0)
        cl = speech_coefficients(fe_talker, x, T, 25.0, causal=True)[1]
        fe_talker.config, kept = dataclasses.replace(fe_talker.config, lip_motion=0.0), fe_talker.config
        try:
            without = speech_coefficients(fe_talker, x, T, 25.0, causal=True)[1]
        finally:
            fe_talker.config = kept
        assert not torch.allclose(cl, without)
        # steady=False: the encoders' opening as it is, offline and streamed alike
        assert torch.equal(speech_coefficients(fe_talker, x, T, 25.0, causal=True, steady=False)[1], without)
        raw = fe_talker.render((x, RATE), causal=True, blink=None, steady=False)
        frames = list(fe_talker.stream([x[i:i + 2345] for i in range(0, len(x), 2345)], blink=None, steady=False))
        assert max(int((a.int() - b.int()).abs().max()) for a, b in zip(frames, raw.frames)) <= 2
        assert not torch.equal(raw.frames, fe_talker.render((x, RATE), causal=True, blink=None).frames)
        with pytest.raises(RenderError, match="steady"):
            fe_talker.render((x, RATE), steady="no")
        with pytest.raises(RenderError, match="steady"):
            fe_talker.stream([x], steady=1)
    for rate, fps in ((RATE, 25.0), (44100, 30.0)):
        y = dgtalker.audio.resample(x, RATE, rate) if rate != RATE else x
        offline = fe_talker.render((y, rate), causal=True, fps=fps, blink=None)
        chunks = [y[i:i + 2345] for i in range(0, len(y), 2345)]
        frames = list(fe_talker.stream(chunks, sample_rate=rate, fps=fps, blink=None))
        assert len(frames) == len(offline)
        assert max(int((a.int() - b.int()).abs().max()) for a, b in zip(frames, offline.frames)) <= 2, (rate, fps)
    # audio after t + lookahead never changes frame t (the front end's reach included)
    T = dgtalker.audio.num_video_frames(len(x), RATE, 25.0)
    t = 30
    cut = int(np.ceil((t / 25.0 + la) * RATE)) + 1
    z = x.copy()
    z[cut:] = (0.3 * rng.standard_normal(len(x) - cut)).astype(np.float32)
    a = speech_coefficients(fe_talker, x, T, 25.0, causal=True)[1][t]
    b = speech_coefficients(fe_talker, z, T, 25.0, causal=True)[1][t]
    assert torch.allclose(a, b, atol=1e-6)


def test_frontend_talker_round_trips(fe_talker, tmp_path):
    from dgtalker.talker import load_talker, save_talker

    back = load_talker(save_talker(tmp_path / "fe.safetensors", fe_talker))
    assert back.config.frontend == fe_talker.config.frontend
    for k, v in fe_talker.frontend.state_dict().items():
        assert torch.equal(back.frontend.state_dict()[k], v)
    x = speech_like(0.6)
    assert torch.equal(back.render((x, RATE), blink=None).frames, fe_talker.render((x, RATE), blink=None).frames)


@pytest.mark.gpu
def test_cuda_render_and_stream_match_the_cpu(fe_talker):
    """On CUDA (checked renders) the offline and streaming paths, front end included, give
    the CPU's frames up to float rounding."""
    import copy

    x = speech_like(1.0)
    cpu = fe_talker.render((x, RATE), dgtalker.camera.spiral(25, width=32, height=32), causal=True, blink=None)
    gpu_talker = copy.deepcopy(fe_talker).to("cuda")
    gpu = gpu_talker.render((x, RATE), dgtalker.camera.spiral(25, width=32, height=32), causal=True, blink=None)
    assert (gpu.frames.int() - cpu.frames.int()).abs().max() <= 3
    frames = list(gpu_talker.stream([x[i:i + 3000] for i in range(0, len(x), 3000)],
                                    dgtalker.camera.spiral(25, width=32, height=32), blink=None))
    assert max(int((a.int() - b.int()).abs().max()) for a, b in zip(frames, gpu.frames)) <= 2


def test_background_image_and_video_files(talker, tmp_path):
    """background= takes the path of an image (resized to the frame) or of a video (frame
    i shows the video at time i / fps, looping), and refuses a bad file by name."""
    from PIL import Image

    from dgtalker.data.format import ffmpeg_exe

    x = speech_like(2.0)
    Image.fromarray(np.full((64, 48, 3), (200, 30, 60), np.uint8)).save(tmp_path / "bg.png")
    v = talker.render((x, RATE), background=tmp_path / "bg.png", blink=None)
    far = v.alpha < 1e-3  # pixels the head does not cover show the image
    assert far.any()
    assert (v.frames[far].int() - torch.tensor([200, 30, 60])).abs().max() <= 2
    # a 1 s video at 12.5 fps: red for its first 6 frames (0.48 s), then blue; the render is
    # 2 s at 25 fps, so each video frame shows twice and the video loops once
    seq = np.zeros((12, 32, 32, 3), np.uint8)
    seq[:6, ..., 0], seq[6:, ..., 2] = 255, 255
    clip = tmp_path / "bg.mp4"
    import subprocess

    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "32x32", "-r", "12.5",
                    "-i", "-", "-c:v", "libx264", "-pix_fmt", "yuv444p", "-qp", "0", str(clip)],
                   input=seq.tobytes(), check=True)
    vid = talker.render((x, RATE), background=clip, blink=None)
    corner = vid.frames[:, 0, 0].int()  # the head never reaches the corner
    assert (vid.alpha[:, 0, 0] < 1e-3).all()
    reds = corner[:, 0] > 200
    want = (np.arange(len(vid)) % 24) < 12
    assert reds.tolist() == want.tolist(), reds.tolist()
    streamed = list(talker.stream([x], background=clip, blink=None))
    assert [bool(f[0, 0, 0] > 200) for f in streamed] == reds.tolist()
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "junk.mp4").write_text("not a video")
    for bad, match in (("missing.png", "no such file"), ("empty.png", "empty"), ("junk.mp4", "not a readable")):
        with pytest.raises(RenderError, match=f"background .*{match}"):
            talker.render((x, RATE), background=tmp_path / bad)
