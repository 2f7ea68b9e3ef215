"""The torso's own motion: measured per frame (preprocess.torso), stored in gt.npz, and
the talker's shoulders moved by it in training, eval and dataset-camera renders."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from priors import TINY

import dgtalker
from dgtalker.camera import Camera, CameraError, dataset_torso_offsets
from dgtalker.models.generator import Generator, GeneratorConfig
from dgtalker.talker import Talker, TalkerConfig

SAMPLE = Path(__file__).parent / "data" / "sample"


class ShiftedClip:
    """A clip whose shoulders (a textured band under a head-shaped blob) are one picture
    moved by known sub-pixel shifts; the head and the background stay put."""

    def __init__(self, shifts, size=128, seed=0):
        from scipy.ndimage import gaussian_filter, shift

        rng = np.random.default_rng(seed)
        pad, big = 16, size + 32  # the shoulders go on below the frame: a shift brings new ones in
        texture = gaussian_filter(rng.random((big, big)), 2.0)
        texture = (texture - texture.min()) / (texture.max() - texture.min())
        yy, xx = np.mgrid[:big, :big] - pad
        torso = ((yy > 0.55 * size) & (np.abs(xx - size / 2) < 0.42 * size)).astype(np.float64)
        yy, xx = np.mgrid[:size, :size]
        head = ((yy - 0.35 * size) ** 2 + (xx - size / 2) ** 2 < (0.2 * size) ** 2).astype(np.float64)
        self.frames, self.fg = [], []
        crop = (slice(pad, pad + size), slice(pad, pad + size))
        for d in shifts:
            band = shift(texture * torso, (d[1], d[0]), order=3, mode="nearest")[crop]
            body = shift(torso, (d[1], d[0]), order=1, mode="nearest")[crop]
            img = 0.2 + 0.6 * band * body + 0.5 * head * (1 - body)
            self.frames.append((np.clip(img, 0, 1)[..., None].repeat(3, 2) * 255).round().astype(np.uint8))
            self.fg.append(np.clip(body + head, 0, 1))
        self.head = head
        self.width = self.height = size

    def __len__(self):
        return len(self.frames)

    def image(self, i):
        return self.frames[i]

    def masks(self, i):
        m = np.zeros((self.height, self.width, 4), np.float32)
        m[..., 0], m[..., 3] = self.head, self.fg[i]
        return m


def test_the_tracker_recovers_known_shoulder_shifts():
    from dgtalker.preprocess.torso import track_torso

    rng = np.random.default_rng(1)
    true = rng.uniform(-6, 6, (24, 2))
    clip = ShiftedClip(true)
    got = track_torso(clip, size=128, progress=False)
    want = true - np.median(true, 0)  # zero is the clip's median torso
    assert got.shape == (24, 2) and got.dtype == np.float32
    assert np.abs(got - want).max() < 0.5, np.abs(got - want).max()
    still = track_torso(ShiftedClip(np.zeros((6, 2))), size=128, progress=False)
    assert np.abs(still).max() < 0.05  # no motion invented


def tiny_talker():
    T = Talker(Generator(GeneratorConfig(**TINY), seed=0), TalkerConfig(k_exp=2, k_lip=2, width=64, height=64),
               residual_frames=4)
    vm, K = dgtalker.camera.orbit(0, 0, width=64, height=64)
    with torch.no_grad():
        T.default_w2c.copy_(vm)
        T.body_w2c.copy_(vm)
        T.default_K.copy_(K)
    return T.eval()


def test_torso_offsets_move_the_shoulders_and_leave_the_head():
    T = tiny_talker()
    vm, K = T.camera()
    c = torch.zeros(2, 2)
    w2c = vm.expand(2, 4, 4)
    offsets = torch.tensor([[4.0, -2.0], [0.0, 0.0]]) / K[0, 0]  # 4 px right, 2 px up; none
    with torch.no_grad():
        moved = T.clip_gaussians(c, c, w2c, torso=offsets)[0]
        rest = T.clip_gaussians(c[:1], c[:1], w2c[:1])[0]
    cam = (moved @ vm[:3, :3].T + vm[:3, 3])
    px = cam[..., :2] / cam[..., 2:3] * K[0, 0]
    cam0 = (rest[0] @ vm[:3, :3].T + vm[:3, 3])
    px0 = cam0[:, :2] / cam0[:, 2:3] * K[0, 0]
    body, head = T.skin_weight > 0.999, T.skin_weight < 1e-6
    assert body.any() and head.any()
    d = px[0] - px0
    # the shoulders land 4 px right and 2 px up (exactly at the head's depth, nearly elsewhere)
    assert torch.allclose(d[body].median(0).values, torch.tensor([4.0, -2.0]), atol=0.4)
    assert d[head].abs().max() < 1e-4 and (px[1] - px0).abs().max() < 1e-4


def test_dataset_cameras_carry_the_torso_track(tmp_path):
    from dgtalker.data import load
    from dgtalker.preprocess.torso import add_torso_track

    assert dataset_torso_offsets(load(SAMPLE), [0, 1]) is None  # a clip without the track
    root = shutil.copytree(SAMPLE, tmp_path / "clip")
    shift = add_torso_track(root, progress=False)
    ds = load(root)
    assert ds.gt["torso_shift"].shape == (len(ds), 2) and np.array_equal(ds.gt["torso_shift"], shift)
    cam = Camera.from_dataset(ds, frames=[3, 4, 5])
    want = shift[3:6] / np.stack([ds.K[3:6, 0, 0], ds.K[3:6, 1, 1]], 1)
    assert torch.allclose(cam.torso_offsets, torch.from_numpy(want).float())
    # over the focal length: the same offsets at any image size
    assert torch.equal(cam.resized(2 * ds.width, 2 * ds.height).torso_offsets, cam.torso_offsets)
    assert cam.with_options(torso="rest").torso_offsets is None
    with pytest.raises(CameraError, match=r"torso_offsets must be \[3, 2\]"):
        Camera(cam.viewmats, cam.Ks, ds.width, ds.height, torso="clip", torso_offsets=np.zeros((2, 2)))
    with pytest.raises(CameraError, match="torso_offsets need torso='clip'"):
        Camera(cam.viewmats, cam.Ks, ds.width, ds.height, torso_offsets=np.zeros((3, 2)))


def test_renders_of_a_clips_frames_follow_its_torso(tmp_path):
    """A dataset-camera render and eval pose the shoulders with the clip's track: a track
    moved 3 px to the right moves the rendered torso's edge with it."""
    from dgtalker.data import load
    from dgtalker.io import atomic_save_npz
    from dgtalker.talker import mean_camera

    T = tiny_talker()
    root = shutil.copytree(SAMPLE, tmp_path / "clip")
    ds = load(root)
    with torch.no_grad():  # the body camera of a talker trained on this clip
        T.body_w2c.copy_(mean_camera(torch.as_tensor(ds.w2c, dtype=torch.float32)))
    gt = dict(ds.gt)
    renders = []
    for dx in (0.0, 3.0):
        gt["torso_shift"] = np.tile(np.float32([dx, 0.0]), (len(ds), 1))
        atomic_save_npz(root / "gt.npz", **gt)
        cam = Camera.from_dataset(load(root), frames=[0])
        renders.append(T.render((np.zeros(1600, np.float32) + 0.01, 16000), cam, fps=ds.fps, blink=None).alpha[0])
    a0, a3 = (a.numpy() for a in renders)
    low = slice(int(0.75 * a0.shape[0]), None)  # the shoulders' rows
    x = np.arange(a0.shape[1], dtype=np.float64)

    def moved(a, s):  # rows of a slid s pixels to the right
        return np.stack([np.interp(x - s, x, row) for row in a])

    steps = np.arange(0, 6.01, 0.25)
    err = [np.abs(moved(a0[low], s) - a3[low]).mean() for s in steps]
    assert a0[low].sum() > 1 and abs(steps[int(np.argmin(err))] - 3.0) <= 0.5, dict(zip(steps, err))


def test_update_torso_command(tmp_path, capsys):
    from dgtalker.cli import main
    from dgtalker.data import load

    root = shutil.copytree(SAMPLE, tmp_path / "clip")
    assert main(["preprocess", str(root), "--update-torso", "--quiet"]) == 0
    assert "torso track of 50 frames" in capsys.readouterr().out
    assert load(root).gt["torso_shift"].shape == (50, 2)
    assert main(["preprocess", str(tmp_path / "nope"), "--update-torso"]) == 2
    assert "needs a dataset directory" in capsys.readouterr().err
    assert main(["preprocess", str(root), "--update-torso", "--out", str(tmp_path / "x")]) == 2
    assert "takes no --out" in capsys.readouterr().err
    assert main(["preprocess", "clip.mp4"]) == 2
    assert "--out DIR is required" in capsys.readouterr().err


def test_training_poses_the_torso_with_the_clips_track(tmp_path, monkeypatch):
    """Every rendered training view carries its frame's torso offsets to the talker."""
    from test_splits import tiny_config, tiny_generator

    from dgtalker.preprocess.torso import add_torso_track
    from dgtalker.train import identity

    root = shutil.copytree(SAMPLE, tmp_path / "clip")
    add_torso_track(root, progress=False)
    seen = []
    pose = Talker.pose_clip

    def spy(self, gaussians, w2c, *, torso=None, head=None):
        seen.append(torso)
        return pose(self, gaussians, w2c, torso=torso, head=head)

    monkeypatch.setattr(Talker, "pose_clip", spy)
    identity.train_identity(root, tmp_path / "t.safetensors", tiny_config(steps=2), prior=tiny_generator(),
                            device="cpu", progress=False)
    assert seen and all(t is not None and t.shape[1] == 2 for t in seen)
