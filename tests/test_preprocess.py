"""Real video in (``dgtalker preprocess``): checked against a synthetic clip's exact
truth written as a plain mp4, plus the video plumbing (frame-rate resampling, sound
sync, rotation), a real photo (scikit-image's astronaut) and bad input.

Nothing here reads the real footage the project develops with: a user's clone does
not have it.
"""
from __future__ import annotations

import importlib.util
import shutil
import subprocess

import numpy as np
import pytest

from dgtalker.data import load


def _missing() -> str:
    for mod in ("mediapipe", "av", "cv2", "moderngl", "skimage"):
        if importlib.util.find_spec(mod) is None:
            return f"{mod} is not installed (pip install '.[test]')"
    if shutil.which("espeak-ng") is None or shutil.which("ffmpeg") is None:
        return "espeak-ng and ffmpeg are needed (Debian packages)"
    return ""


MISSING = _missing()
pytestmark = pytest.mark.skipif(bool(MISSING), reason=MISSING)
if not MISSING:
    from dgtalker.preprocess import PreprocessError, VideoError, preprocess
    from dgtalker.preprocess import video as vid
    from dgtalker.preprocess.validate import compare, write_video


def _ffmpeg(*args):
    subprocess.run(["ffmpeg", "-v", "error", "-y", *map(str, args)], check=True, capture_output=True)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A 4 s synthetic clip (512 px, identity 3), its mp4, and the preprocessed dataset."""
    from dgtalker.data.synthetic import generate_talking

    root = tmp_path_factory.mktemp("pre")
    truth = load(generate_talking(root / "truth", identity=3, seconds=4.0, size=512, texture_size=1024,
                                  supersample=1, heldout_fraction=0.1, novel_frames=0, progress=False))
    mp4 = write_video(truth, root / "clip.mp4")
    summary = preprocess(mp4, root / "pre", quiet=True)
    return truth, load(root / "pre"), summary


def test_canonical_landmarks_are_the_corpus_mean():
    from dgtalker.data.synthetic.head import HeadModel, draw_identity, neutral_state
    from dgtalker.preprocess.tracking import CANONICAL_LANDMARKS

    lm = [HeadModel(draw_identity(s), texture_size=16).pose_geometry(neutral_state(), np.eye(4))[1]
          for s in range(1000, 1040)]
    assert np.abs(np.mean(lm, 0) - CANONICAL_LANDMARKS).max() < 2e-4


def test_face_mesh_points_are_the_corpus_landmarks(synthetic):
    """The mediapipe indices name the right points (left is the subject's left)."""
    truth, pre, _ = synthetic
    x0, y0, side = pre.meta["source"]["tracking"]["crop"]
    scale = pre.width / side
    gt = (truth.gt["landmarks_2d"] - [x0, y0]) * scale
    dist = np.linalg.norm(pre.gt["landmarks_2d"] - gt, axis=-1)  # [N, 12], pixels of the crop
    # the chin differs most: the corpus' chin point sits under the jaw, mediapipe's on its front
    limit = np.where(np.array(truth.landmark_names) == "chin", 0.05, 0.03) * pre.width
    assert (np.median(dist, 0) < limit).all(), dict(zip(truth.landmark_names, np.median(dist, 0)))
    # and not mirrored: each left landmark is nearer its own truth than the right one's
    names = list(truth.landmark_names)
    for n in names:
        if n.endswith("_left"):
            k, m = names.index(n), names.index(n.replace("_left", "_right"))
            swapped = np.linalg.norm(pre.gt["landmarks_2d"][:, k] - gt[:, m], axis=-1)
            assert np.median(swapped) > 2 * np.median(dist[:, k]), n


def test_synthetic_truth_rotations_and_masks(synthetic):
    truth, pre, summary = synthetic
    rep = compare(truth, pre)
    assert rep["true_rotation_range_deg"] > 5  # the clip does move
    # a regression guard, not the target (median <= 2): measured 2.5-3.2 on three clips (docs/preprocess.md)
    assert rep["rotation_deg"]["median"] <= 4.0, rep
    assert rep["rotation_deg"]["p95"] <= 5.0, rep
    assert rep["iou"]["foreground"] >= 0.9, rep
    assert rep["iou"]["lower_face"] >= 0.7, rep
    assert rep["iou"]["head"] >= 0.8, rep


def test_dataset_is_complete_and_in_sync(synthetic):
    truth, pre, summary = synthetic
    assert len(pre) == len(truth) and pre.fps == 25
    samples, rate = pre.audio
    assert abs(len(samples) / rate - len(pre) / pre.fps) < 1.0 / pre.fps
    # the sound is the same sound, at the same time (aac delays and pads; the reader aligns it)
    t_samples, t_rate = truth.audio
    import soxr

    a = soxr.resample(samples, rate, t_rate)[: len(t_samples)]
    b = t_samples[: len(a)]
    lags = range(-200, 201, 10)
    corr = [np.corrcoef(np.roll(a, k), b)[0, 1] for k in lags]
    assert max(corr) > 0.9 and abs(list(lags)[int(np.argmax(corr))]) <= 0.01 * t_rate
    src = pre.meta["source"]
    assert src["kind"] == "video" and len(src["sha256"]) == 64 and src["settings"]["fps"] == 25
    assert set(pre.splits["train"]).isdisjoint(pre.splits["heldout"]) and len(pre.splits["heldout"]) > 0
    assert summary.kept == len(pre) and not summary.dropped
    m = pre.masks(0)
    assert (m[..., 1] <= m[..., 0] + 1e-6).all() and (m[..., 2] <= m[..., 0] + 1e-6).all()
    assert (m[..., 0] <= m[..., 3] + 1e-6).all()


def _counter_video(path, fps, seconds, vfr=False, audio_delay=0.0):
    """Frames whose grey level encodes their index modulo 25 (steps of 10) and a 1 kHz
    beep from 1.0 s to 1.2 s."""
    vf = "format=gray,geq=lum='20+10*mod(N\\,22)',format=yuv420p"
    if vfr:  # every 5th frame shown three times as long
        vf += ",setpts='(N+2*floor(N/5))/(%g*TB)'" % fps
    _ffmpeg("-f", "lavfi", "-i", f"color=c=black:s=64x64:r={fps}:d={seconds}",
            "-itsoffset", audio_delay, "-f", "lavfi", "-i",
            f"sine=f=1000:d={seconds}:sample_rate=16000,volume='between(t,1.0,1.2)':eval=frame",
            "-vf", vf, "-c:v", "libx264", "-qp", "0", "-fps_mode", "vfr" if vfr else "cfr",
            "-c:a", "aac", "-shortest", path)
    return path


def _index(img):
    return int(round((float(img[24:40, 24:40].mean()) - 20) / 10))


def test_frame_rate_is_resampled_by_timestamps(tmp_path):
    info = vid.probe(_counter_video(tmp_path / "c30.mp4", 30, 3))
    assert abs(info.source_fps - 30) < 0.1
    got = [_index(img) for _, img in vid.frames(info, 25)]
    want = [int(np.floor(i * 30 / 25 + 1e-6)) % 22 for i in range(len(got))]
    assert len(got) == info.frames_at(25) == 75
    assert np.mean(np.array(got) == np.array(want)) > 0.95, (got[:20], want[:20])


def test_variable_frame_rate(tmp_path):
    info = vid.probe(_counter_video(tmp_path / "vfr.mp4", 25, 2, vfr=True))
    got = np.array([_index(img) for _, img in vid.frames(info, 25)])
    # source frame n is shown from (n + 2 floor(n/5)) / 25 s: output frame i shows the last one started
    starts = np.array([n + 2 * (n // 5) for n in range(50)])
    want = np.array([np.flatnonzero(starts <= i)[-1] % 22 for i in range(len(got))])
    assert np.mean(got == want) > 0.95


def test_sound_is_kept_in_sync(tmp_path):
    for delay in (0.0, 0.4):
        info = vid.probe(_counter_video(tmp_path / f"d{delay}.mp4", 25, 3, audio_delay=delay))
        x, rate = vid.audio(info, 25, info.frames_at(25))
        env = np.convolve(np.abs(x), np.ones(160) / 160, "same")
        onset = np.flatnonzero(env > 0.5 * env.max())[0] / rate
        assert abs(onset - (1.0 + delay)) < 0.03, (delay, onset)


def test_rotated_phone_video_is_turned_upright(tmp_path):
    """A phone's portrait clip: landscape frames plus a rotation tag. The frames come
    out as ffmpeg itself displays them (its autorotation)."""
    src = tmp_path / "land.mp4"
    _ffmpeg("-f", "lavfi", "-i", "testsrc=s=96x64:r=25:d=1", "-c:v", "libx264", "-qp", "0", src)
    _ffmpeg("-i", src, "-c", "copy", "-metadata:s:v:0", "rotate=90", tmp_path / "rot.mp4")
    _ffmpeg("-i", tmp_path / "rot.mp4", "-frames:v", 1, tmp_path / "shown.png")
    from PIL import Image

    shown = np.asarray(Image.open(tmp_path / "shown.png").convert("RGB")).astype(float)
    info = vid.probe(tmp_path / "rot.mp4")
    assert (info.width, info.height) == (64, 96) and vid.probe(src).rotation == 0
    first = next(vid.frames(info, 25))[1].astype(float)
    assert first.shape == shown.shape and np.abs(first - shown).mean() < 3


def test_astronaut_photo(tmp_path):
    from PIL import Image
    from skimage import data

    Image.fromarray(data.astronaut()).save(tmp_path / "astronaut.png")
    s = preprocess(tmp_path / "astronaut.png", tmp_path / "ds", size=256, quiet=True)
    ds = load(tmp_path / "ds")
    assert len(ds) == 1 and ds.meta["source"]["kind"] == "photo" and s.kept == 1
    m = ds.masks(0)
    assert m[..., 3].mean() > 0.1 and m[..., 0].sum() > 0.02 * 256 * 256
    assert m[..., 1].sum() > 0 and m[..., 2].sum() > 0
    lm = ds.gt["landmarks_2d"][0]
    assert ds.gt["landmarks_visible"][0].all() and (lm > 0).all() and (lm < 256).all()
    # her face is turned a little to her left, upright: a plausible pose
    yaw, pitch, roll = (s.yaw_deg[0], s.pitch_deg[0], s.roll_deg[0])
    assert abs(yaw) < 35 and abs(pitch) < 30 and abs(roll) < 20
    # the head sits in front of the camera, the face towards it
    w2c = ds.w2c[0]
    assert 0.2 < w2c[2, 3] < 2.0 and w2c[2, 2] < -0.8


def test_two_faces_follows_the_larger(tmp_path):
    from PIL import Image
    from skimage import data

    a = data.astronaut()
    canvas = np.full((512, 900, 3), 200, np.uint8)
    canvas[:, 388:] = a  # the main face, right
    small = np.asarray(Image.fromarray(a).resize((256, 256)))
    canvas[128:384, 40:296] = small
    Image.fromarray(canvas).save(tmp_path / "two.png")
    _ffmpeg("-loop", 1, "-i", tmp_path / "two.png", "-f", "lavfi", "-i", "sine=f=300:d=2.5:sample_rate=16000",
            "-t", 2.5, "-r", 25, "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", tmp_path / "two.mp4")
    s = preprocess(tmp_path / "two.mp4", tmp_path / "ds", size=128, quiet=True)
    x0, y0, side = s.crop
    assert x0 + side / 2 > 450, s.crop  # centred on the big face on the right
    assert s.kept == s.frames


@pytest.mark.parametrize("case,message", [
    ("missing", "does not exist"), ("empty", "empty"), ("text", "not a readable video"),
    ("audio_only", "no video stream"), ("directory", "directory")])
def test_bad_files_are_named(tmp_path, case, message):
    p = tmp_path / "in.mp4"
    if case == "empty":
        p.write_bytes(b"")
    elif case == "text":
        p.write_text("not a video\n" * 100)
    elif case == "audio_only":
        p = tmp_path / "in.wav"
        _ffmpeg("-f", "lavfi", "-i", "sine=d=1", p)
    elif case == "directory":
        p.mkdir()
    with pytest.raises(VideoError, match=message) as e:
        preprocess(p, tmp_path / "out", quiet=True)
    assert str(p) in str(e.value)
    assert not (tmp_path / "out").exists()


def test_decisions_are_explained(tmp_path):
    silent = tmp_path / "silent.mp4"
    _ffmpeg("-f", "lavfi", "-i", "color=c=gray:s=96x96:r=25:d=3", "-c:v", "libx264", silent)
    with pytest.raises(PreprocessError, match="no sound track.*--allow-silent"):
        preprocess(silent, tmp_path / "a", quiet=True)
    with pytest.raises(PreprocessError, match="no face was found"):
        preprocess(silent, tmp_path / "a", allow_silent=True, quiet=True)
    short = tmp_path / "short.mp4"
    _ffmpeg("-f", "lavfi", "-i", "color=c=gray:s=96x96:r=25:d=1", "-f", "lavfi", "-i", "sine=d=1",
            "-c:v", "libx264", "-c:a", "aac", "-shortest", short)
    with pytest.raises(PreprocessError, match="1.0. s long"):
        preprocess(short, tmp_path / "a", quiet=True)
    for kw, msg in ((dict(fps=0), "fps"), (dict(size=16), "size"), (dict(focal=-1), "focal")):
        with pytest.raises(PreprocessError, match=msg):
            preprocess(short, tmp_path / "a", quiet=True, **kw)
    assert not (tmp_path / "a").exists()


def test_face_too_small_and_frames_without_a_face(synthetic, tmp_path):
    truth, _, _ = synthetic
    mp4 = tmp_path / "clip.mp4"
    write_video(truth, mp4)
    with pytest.raises(PreprocessError, match="too small"):
        preprocess(mp4, tmp_path / "a", min_face_px=400, quiet=True)
    # blank out the first 30% of the picture: more than --max-dropped 0.25 fails, a higher limit keeps them out of the splits
    cut = tmp_path / "cut.mp4"
    _ffmpeg("-i", mp4, "-vf", "drawbox=enable='lt(t,1.2)':x=0:y=0:w=iw:h=ih:color=black:t=fill",
            "-c:v", "libx264", "-c:a", "copy", cut)
    with pytest.raises(PreprocessError, match="no usable face in"):
        preprocess(cut, tmp_path / "a", quiet=True)
    s = preprocess(cut, tmp_path / "b", max_dropped=0.5, quiet=True)
    ds = load(tmp_path / "b")
    assert 25 <= len(s.dropped) <= 35 and len(ds) == len(truth)
    assert not set(s.dropped) & (set(ds.splits["train"]) | set(ds.splits["heldout"]))
    assert not ds.gt["face_found"][s.dropped].any() and ds.gt["face_found"][40:].all()


def test_cli(synthetic, tmp_path, capsys):
    from dgtalker.cli import main

    truth, _, _ = synthetic
    mp4 = write_video(truth, tmp_path / "clip.mp4")
    assert main(["preprocess", str(mp4), "--out", str(tmp_path / "ds"), "--size", "128", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "kept 100" in out and "frames/s" in out and "yaw" in out
    assert main(["preprocess", str(mp4), "--out", str(tmp_path / "ds"), "--quiet"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["preprocess", str(tmp_path / "nope.mp4"), "--out", str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err
