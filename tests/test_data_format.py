"""Dataset format: write -> load round trip, and the loader's errors on bad pieces."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PIL")
sf = pytest.importorskip("soundfile")

from dgtalker.data import DatasetError, DatasetWriter, load  # noqa: E402

SAMPLE = Path(__file__).parent / "data" / "sample"
N, H, W, FPS, SR = 12, 24, 32, 25.0, 16000


def _rig(i):
    a = 0.1 * i
    R = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = [0.01 * i, -0.02, 0.5]
    return T


def _make(out, n=N, fps=FPS, seed=0):
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, (n, H, W, 3), dtype=np.uint8)
    masks = rng.integers(0, 256, (n, H, W, 4), dtype=np.uint8)
    K = np.array([[40.0, 0, W / 2], [0, 40.0, H / 2], [0, 0, 1]])
    audio = (0.3 * np.sin(np.arange(int(n / fps * SR)) * 0.05)).astype(np.float32)
    gt = rng.normal(size=(n, 5, 2)).astype(np.float32)
    w = DatasetWriter(out, W, H, kind="talking", fps=fps)
    for i in range(n):
        w.add_frame(imgs[i], masks[i], K, _rig(i), gt={"landmarks_2d": gt[i], "jaw_open": np.float32(i / n)})
    w.add_novel_view(imgs[0], masks[0], K, _rig(3), frame_index=n - 1, yaw_deg=30.0)
    w.close(audio=audio, sample_rate=SR, splits={"train": list(range(n - 3)), "heldout": list(range(n - 3, n))},
            landmark_names=["a", "b", "c", "d", "e"])
    return imgs, masks, K, audio, gt


def test_round_trip_identical(tmp_path):
    out = tmp_path / "ds"
    imgs, masks, K, audio, gt = _make(out)
    ds = load(out)
    assert len(ds) == N and ds.fps == FPS and (ds.width, ds.height) == (W, H)
    for i in range(N):
        fr = ds[i]
        np.testing.assert_array_equal(fr.image, imgs[i])
        np.testing.assert_array_equal(np.rint(fr.masks * 255).astype(np.uint8), masks[i])
        np.testing.assert_array_equal(fr.K, K)
        np.testing.assert_array_equal(fr.w2c, _rig(i))
        assert fr.time == pytest.approx(i / FPS)
    np.testing.assert_array_equal(ds.gt["landmarks_2d"], gt)
    np.testing.assert_array_equal(ds.splits["heldout"], [N - 3, N - 2, N - 1])
    samples, rate = ds.audio
    assert rate == SR
    # PCM16 storage: error at most half a quantisation step
    assert np.max(np.abs(samples - audio)) <= 1.0 / 32767
    assert ds.landmark_names == ("a", "b", "c", "d", "e")
    assert len(ds.novel) == 1 and ds.novel.frame_index.tolist() == [N - 1]
    np.testing.assert_array_equal(ds.novel.image(0), imgs[0])
    assert ds.novel.extra["yaw_deg"].tolist() == [30.0]


def test_frames_are_cached_lazily(tmp_path):
    out = tmp_path / "ds"
    _make(out)
    ds = load(out, cache_size=4)
    for i in range(N):
        ds.image(i)
        ds.masks(i)
    assert len(ds._cache.d) <= 4  # bounded, not all frames in memory


def test_writer_is_atomic(tmp_path):
    out = tmp_path / "ds"
    w = DatasetWriter(out, W, H, fps=FPS)
    w.add_frame(np.zeros((H, W, 3), np.uint8), np.zeros((H, W, 4), np.uint8), np.eye(3), np.eye(4))
    assert not out.exists()  # nothing under the final name until close()
    w.abort()
    assert not out.exists() and not list(tmp_path.iterdir())
    _make(out)
    with pytest.raises(FileExistsError, match="overwrite"):
        DatasetWriter(out, W, H, fps=FPS)


def test_writer_rejects_bad_frames(tmp_path):
    w = DatasetWriter(tmp_path / "ds", W, H, fps=FPS)
    with pytest.raises(ValueError, match="image must be uint8"):
        w.add_frame(np.zeros((H, W + 1, 3), np.uint8), np.zeros((H, W, 4)), np.eye(3), np.eye(4))
    with pytest.raises(ValueError, match="masks must be"):
        w.add_frame(np.zeros((H, W, 3), np.uint8), np.zeros((H, W, 3)), np.eye(3), np.eye(4))
    w.abort()
    with pytest.raises(ValueError, match="fps"):
        DatasetWriter(tmp_path / "x", W, H, fps=0)


@pytest.fixture()
def good(tmp_path):
    out = tmp_path / "ds"
    _make(out)
    return out


def test_missing_audio(good):
    (good / "audio.wav").unlink()
    with pytest.raises(DatasetError, match=r"missing audio file .*audio\.wav"):
        load(good)


def test_camera_count_mismatch(good):
    with np.load(good / "cameras.npz") as z:
        K, w2c = z["K"], z["w2c"]
    np.savez(good / "cameras.npz", K=K[:-1], w2c=w2c[:-1])
    with pytest.raises(DatasetError, match=rf"K has {N - 1} cameras but there are {N} frames"):
        load(good)


def test_corrupt_image(good):
    (good / "frames" / "000005.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    with pytest.raises(DatasetError, match=r"corrupt or unreadable image .*000005\.png"):
        load(good)
    # even unverified, reading that frame names the file instead of a PIL traceback
    ds = load(good, verify="none")
    with pytest.raises(DatasetError, match="000005.png"):
        ds.image(5)


def test_missing_image(good):
    (good / "masks" / "000003.png").unlink()
    with pytest.raises(DatasetError, match=r"missing image file .*masks.*000003\.png"):
        load(good)


def test_wrong_fps(good):
    meta = json.loads((good / "meta.json").read_text())
    meta["fps"] = 30.0
    (good / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=r"fps=30 with 12 frames .* audio audio\.wav lasts 0\.480 s"):
        load(good)
    meta["fps"] = -1
    (good / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="'fps' must be a positive number"):
        load(good)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.pop("num_frames"), "'num_frames' must be a positive integer"),
    (lambda m: m.update(format="something"), "'format' must be"),
    (lambda m: m.update(version=99), "unsupported version 99"),
    (lambda m: m.update(kind="movie"), "'kind' must be one of"),
    (lambda m: m.update(audio={"path": "audio.wav", "sample_rate": 8000}), "sample rate 16000 Hz, meta.json says 8000"),
])
def test_malformed_meta(good, edit, message):
    meta = json.loads((good / "meta.json").read_text())
    edit(meta)
    (good / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=message):
        load(good)


def test_unparseable_meta_and_missing_dir(good, tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load(tmp_path / "nope")
    (good / "meta.json").write_text("{not json")
    with pytest.raises(DatasetError, match="malformed .*meta.json"):
        load(good)
    (good / "meta.json").unlink()
    with pytest.raises(DatasetError, match="not a dgtalker dataset"):
        load(good)


def test_bad_splits_and_gt(good):
    (good / "splits.json").write_text(json.dumps({"train": [0, 1, 99], "heldout": []}))
    with pytest.raises(DatasetError, match=r"'train' has indices outside \[0, 12\)"):
        load(good)
    (good / "splits.json").write_text(json.dumps({"train": [0, 1], "heldout": [1]}))
    with pytest.raises(DatasetError, match="share frames"):
        load(good)
    (good / "splits.json").write_text(json.dumps({"train": [0], "heldout": [1]}))
    np.savez(good / "gt.npz", jaw_open=np.zeros(5))
    with pytest.raises(DatasetError, match="'jaw_open' has leading size"):
        load(good)


def test_bad_extrinsics(good):
    with np.load(good / "cameras.npz") as z:
        K, w2c = z["K"], z["w2c"].copy()
    w2c[2, :3, :3] *= 2.0
    np.savez(good / "cameras.npz", K=K, w2c=w2c)
    with pytest.raises(DatasetError, match="not orthonormal"):
        load(good)
    w2c[2, :3, :3] = np.nan
    np.savez(good / "cameras.npz", K=K, w2c=w2c)
    with pytest.raises(DatasetError, match="NaN"):
        load(good)


def test_frames_from_mp4(tmp_path):
    from dgtalker.data.format import ffmpeg_exe

    try:
        exe = ffmpeg_exe()
    except RuntimeError:
        pytest.skip("ffmpeg not installed")
    import subprocess

    out = tmp_path / "ds"
    imgs, *_ = _make(out)
    smooth = np.repeat(np.repeat(imgs[:, ::8, ::8], 8, 1), 8, 2)[:, :H, :W]  # blocky: codec-friendly
    raw = np.ascontiguousarray(smooth).tobytes()
    subprocess.run([exe, "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{W}x{H}", "-r", "25",
                    "-i", "-", "-c:v", "libx264rgb", "-qp", "0", str(out / "frames.mp4")], input=raw, check=True)
    shutil.rmtree(out / "frames")
    meta = json.loads((out / "meta.json").read_text())
    meta["frames"] = "frames.mp4"
    (out / "meta.json").write_text(json.dumps(meta))
    ds = load(out)
    for i in (0, 7, N - 1):
        np.testing.assert_array_equal(ds.image(i), smooth[i])  # lossless rgb encode
    meta["num_frames"] = N + 1  # more frames claimed than the video has
    (out / "meta.json").write_text(json.dumps(meta))
    shutil.rmtree(out / ".cache")
    with pytest.raises(DatasetError):
        load(out, verify="none").image(0)


def test_committed_sample_loads():
    ds = load(SAMPLE)
    assert ds.kind == "talking" and ds.fps == 25.0 and len(ds) >= 25
    assert ds.gt is not None and ds.gt["landmarks_2d"].shape == (len(ds), len(ds.landmark_names), 2)
    assert ds.novel is not None and len(ds.novel) > 0
    fr = ds[0]
    assert fr.image.shape == (ds.height, ds.width, 3) and fr.masks.shape == (ds.height, ds.width, 4)


@pytest.mark.parametrize("shape", [(7, 5), (6, 9, 1), (5, 3, 2), (17, 11, 3), (12, 31, 4)])
def test_png_bytes_round_trip(shape):
    """The dataset's PNG writer: what Pillow reads back is exactly what was written,
    for every channel count (random values, so the row filter wraps around 256)."""
    import io as _io

    from PIL import Image

    from dgtalker.io import png_bytes

    img = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    back = np.asarray(Image.open(_io.BytesIO(png_bytes(img))))
    assert back.shape == (shape[:2] if len(shape) == 2 or shape[2] == 1 else shape)
    np.testing.assert_array_equal(back, img.reshape(back.shape))


def test_png_bytes_rejects_what_png_cannot_hold():
    from dgtalker.io import png_bytes

    with pytest.raises(ValueError, match="uint8"):
        png_bytes(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match=r"\[H, W, 1-4\]"):
        png_bytes(np.zeros((4, 4, 5), np.uint8))
