"""Write synthetic talking-head datasets (see docs/data-format.md).

``generate_talking`` renders one identity talking (a selfie-style clip with a fixed
camera and a moving head) plus held-out novel views; ``generate_multi`` renders many
identities x expressions x views for the generative prior.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ... import camera
from ..format import DatasetWriter, tail_splits
from .drive import head_motion, head_pose_matrix, mouth_from_audio, emphasis_times, random_state, upper_face
from .head import LANDMARK_NAMES, STATE_KEYS, HeadModel, draw_identity
from .raster import Lighting, MeshRenderer

CAMERA_DISTANCE = camera.DEFAULT_DISTANCE  # metres from the look-at point: an arm's-length selfie
LOOK_AT = np.array(camera.DEFAULT_TARGET)  # head frame; frames the head and the shoulders


def intrinsics(size: int) -> np.ndarray:
    return camera.intrinsics(size, size)


def orbit_camera(yaw: float, pitch: float, distance: float = CAMERA_DISTANCE, target=LOOK_AT) -> np.ndarray:
    """World-to-camera (OpenCV) for a camera on a sphere around ``target`` looking at it.
    yaw > 0 moves the camera towards +x (the subject's left), pitch > 0 above; radians."""
    return camera.look_at(camera.orbit_position(yaw, pitch, distance, target), target)


def studio_lighting(rng: np.random.Generator) -> Lighting:
    """A key light from above one side, a dimmer fill, a rim light; world frame."""
    side = 1.0 if rng.uniform() < 0.5 else -1.0
    key = np.array([side * rng.uniform(0.4, 0.8), rng.uniform(0.4, 0.7), 0.7])
    fill = np.array([-side * 0.8, 0.0, 0.5])
    rim = np.array([0.0, 0.5, -0.9])
    dirs = np.stack([key, fill, rim])
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    warm = np.array([1.0, 0.96, 0.9]) * rng.uniform(2.0, 2.5)
    cols = np.stack([warm, np.array([0.75, 0.8, 0.9]) * rng.uniform(0.5, 0.8), np.full(3, 0.9)])
    return Lighting(dirs, cols, np.array([0.30, 0.32, 0.36]), np.array([0.16, 0.13, 0.11]))


def project(points: np.ndarray, K: np.ndarray, w2c: np.ndarray):
    """[..., 3] head-frame points -> pixel (u, v) [..., 2] and camera z [...]."""
    pc = points @ w2c[:3, :3].T + w2c[:3, 3]
    z = pc[..., 2]
    uv = (pc[..., :2] / z[..., None]) @ K[:2, :2].T + K[:2, 2]
    return uv, z


def _visible(uv, z, depth, tol=0.004):
    H, W = depth.shape
    j = np.floor(uv[:, 0]).astype(int)
    i = np.floor(uv[:, 1]).astype(int)
    inside = (i >= 0) & (i < H) & (j >= 0) & (j < W)
    vis = np.zeros(len(z), bool)
    ii, jj = np.clip(i, 0, H - 1), np.clip(j, 0, W - 1)
    # the nearest surface among the pixel and its neighbours (landmarks sit on edges)
    d = np.full(len(z), np.inf)
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            d = np.minimum(d, depth[np.clip(ii + di, 0, H - 1), np.clip(jj + dj, 0, W - 1)])
    vis[inside] = z[inside] <= d[inside] + tol
    return vis


def _progress(total, desc, enabled):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="frame", disable=not enabled, dynamic_ncols=True)


def _frame_gt(state, lm3, uv, vis, H, pose):
    g = {k: np.float32(state[k]) for k in STATE_KEYS}
    g.update({"landmarks_3d": lm3.astype(np.float32), "landmarks_2d": uv.astype(np.float32),
              "landmarks_visible": vis, "head_to_world": H.astype(np.float64),
              "mouth_opening_m": np.float32(np.linalg.norm(lm3[2] - lm3[3]))})
    g.update({k: np.float32(v) for k, v in pose.items()})
    return g


def generate_talking(out, identity: int = 7, seconds: float = 60.0, fps: float = 25.0, size: int = 512,
                     audio_path=None, sentences=None, voice: dict | None = None,
                     heldout_fraction: float = 0.1, novel_frames: int = 4,
                     novel_yaw=(-45, -30, -15, 0, 15, 30, 45), novel_pitch=(-15, 0, 15),
                     image_ext: str = "png", supersample: int = 2, texture_size: int = 2048,
                     overwrite: bool = False, progress: bool = True) -> Path:
    """Render identity ``identity`` talking for ``seconds`` s into a dataset at ``out``.

    Speech comes from espeak-ng (seeded sentences and pauses) unless ``audio_path``
    gives a sound file (then the clip is as long as that file, capped at ``seconds``
    when given). The last ``heldout_fraction`` of the frames is held out; from it,
    ``novel_frames`` evenly spaced frames are also rendered from every (yaw, pitch) of
    the novel-view grid (degrees, camera orbit around the head).
    """
    from ... import audio as A

    t_start = time.time()
    if not np.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    if size < 32:
        raise ValueError(f"size must be at least 32 pixels, got {size}")
    if not 0.0 <= heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction!r}")
    ident = draw_identity(identity)
    rng_speech = np.random.default_rng([identity, 1])
    rng_face = np.random.default_rng([identity, 2])
    rng_head = np.random.default_rng([identity, 3])
    rng_light = np.random.default_rng([identity, 4])
    voice = dict(ident.voice if voice is None else voice)
    transcript = []
    if audio_path is not None:
        wav, sr = A.load(audio_path, sample_rate=None)
        if seconds is not None:
            wav = wav[: int(round(seconds * sr))]
        source = {"audio": str(audio_path)}
    else:
        from .speech import SPEECH_RATE, speak_for

        if seconds is None or not np.isfinite(seconds) or seconds <= 0:
            raise ValueError(f"seconds must be a positive number, got {seconds!r}")
        if progress:
            print(f"synthesizing {seconds:g} s of speech (espeak-ng, voice {voice['voice']})", flush=True)
        wav, transcript = speak_for(seconds, rng_speech, voice, sentences)
        sr = SPEECH_RATE
        source = {"voice": voice}
    n = int(np.floor(len(wav) / sr * fps + 1e-6))
    if n < 1:
        raise ValueError(f"the audio lasts {len(wav) / sr:.3f} s: shorter than one frame at {fps:g} fps")
    wav = wav[: int(round(n / fps * sr))]
    wav = np.pad(wav, (0, int(round(n / fps * sr)) - len(wav)))
    w16 = A.resample(wav, sr, A.SAMPLE_RATE)
    mouth = mouth_from_audio(w16, fps, n)
    emph = emphasis_times(w16)
    upper = upper_face(rng_face, fps, n, emph)
    headm = head_motion(rng_head, fps, n, emph)
    states = {**mouth, **upper}

    head = HeadModel(ident, texture_size=texture_size)
    light = studio_lighting(rng_light)
    renderer = MeshRenderer(head.meshes, head.textures, size, size, background=ident.background, supersample=supersample)
    K = intrinsics(size)
    cam = orbit_camera(0.0, np.deg2rad(2.0))  # the fixed selfie camera, world frame
    sp = tail_splits(range(n), heldout_fraction)
    train, held = sp["train"], sp["heldout"]
    n_held = len(held)
    meta = {"source": {"generator": "dgtalker.data.synthetic", "identity": int(identity), **source,
                       "camera_world_to_camera": cam.tolist(), "background": ident.background.tolist(),
                       "state_keys": list(STATE_KEYS)}}
    writer = DatasetWriter(out, size, size, kind="talking", fps=fps, image_ext=image_ext,
                           overwrite=overwrite, meta=meta)
    try:
        total = n + (min(novel_frames, n_held) * len(novel_yaw) * len(novel_pitch) if n_held else 0)
        bar = _progress(total, f"identity {identity}", progress)
        frame_geo = {}
        novel_at = set()
        if n_held and novel_frames > 0:
            novel_at = set(np.unique(np.linspace(held[0], held[-1], min(novel_frames, n_held)).round().astype(int)).tolist())
        for i in range(n):
            state = {k: float(v[i]) for k, v in states.items()}
            pose = {"head_yaw": headm["head_yaw"][i], "head_pitch": headm["head_pitch"][i],
                    "head_roll": headm["head_roll"][i]}
            H = head_pose_matrix(pose["head_yaw"], pose["head_pitch"], pose["head_roll"], headm["head_translation"][i])
            pos, lm3 = head.pose_geometry(state, H)
            nrm = head.normals(pos)
            renderer.update(pos, nrm)
            w2c = cam @ H  # head frame -> world -> camera
            r = renderer.render(K, w2c, light, H[:3, :3])
            uv, z = project(lm3, K, w2c)
            vis = _visible(uv, z, r["depth"])
            writer.add_frame(r["rgb"], r["labels"], K, w2c, gt={**_frame_gt(state, lm3, uv, vis, H, pose),
                                                                 "time": np.float32(i / fps)})
            if i in novel_at:
                frame_geo[i] = (state, H, pos, nrm, lm3)
            bar.update(1)
        for i in sorted(frame_geo):
            state, H, pos, nrm, lm3 = frame_geo[i]
            renderer.update(pos, nrm)
            for p in novel_pitch:
                for y in novel_yaw:
                    w2c = orbit_camera(np.deg2rad(y), np.deg2rad(p))
                    r = renderer.render(K, w2c, light, H[:3, :3])
                    uv, z = project(lm3, K, w2c)
                    vis = _visible(uv, z, r["depth"])
                    writer.add_novel_view(r["rgb"], r["labels"], K, w2c, frame_index=i,
                                          gt={"landmarks_2d": uv.astype(np.float32), "landmarks_visible": vis},
                                          yaw_deg=float(y), pitch_deg=float(p))
                    bar.update(1)
        bar.close()
        import json

        writer.add_file("transcript.json", (json.dumps(transcript, indent=1) + "\n").encode())
        writer.meta["source"]["seconds_to_generate"] = round(time.time() - t_start, 1)
        path = writer.close(audio=wav, sample_rate=sr, splits={"train": train, "heldout": held},
                            landmark_names=LANDMARK_NAMES)
    except BaseException:
        writer.abort()
        raise
    finally:
        renderer.release()
    return path


def generate_multi(out, identities: int = 8, first_identity: int = 1000, expressions: int = 6, views: int = 4,
                   size: int = 512, max_yaw_deg: float = 45.0, max_pitch_deg: float = 20.0,
                   heldout_identities: int | None = None, image_ext: str = "png", supersample: int = 2,
                   texture_size: int = 1024, overwrite: bool = False, progress: bool = True) -> Path:
    """Many identities x random expressions x random views, for the generative prior.

    Written as a ``kind: multiview`` dataset (same layout, no audio): item order is
    identity-major, then expression, then view. gt.npz adds ``identity`` and
    ``expression`` per item. The last ``heldout_identities`` identities (default: 10%,
    at least one when there are two or more) form the held-out split.
    """
    if identities < 1 or expressions < 1 or views < 1:
        raise ValueError(f"identities, expressions and views must be >= 1, got {identities}, {expressions}, {views}")
    if heldout_identities is None:
        heldout_identities = max(1, identities // 10) if identities >= 2 else 0
    K = intrinsics(size)
    meta = {"source": {"generator": "dgtalker.data.synthetic (multi-identity)", "first_identity": first_identity,
                       "identities": identities, "expressions": expressions, "views": views,
                       "state_keys": list(STATE_KEYS)}}
    writer = DatasetWriter(out, size, size, kind="multiview", image_ext=image_ext, overwrite=overwrite, meta=meta)
    bar = _progress(identities * expressions * views, "identities", progress)
    held_from = identities - heldout_identities
    train, held = [], []
    try:
        for k in range(identities):
            seed = first_identity + k
            ident = draw_identity(seed)
            head = HeadModel(ident, texture_size=texture_size)
            rng = np.random.default_rng([seed, 5])
            light = studio_lighting(np.random.default_rng([seed, 4]))
            renderer = MeshRenderer(head.meshes, head.textures, size, size, background=ident.background,
                                    supersample=supersample)
            try:
                for e in range(expressions):
                    state = random_state(rng)
                    H = np.eye(4)
                    pos, lm3 = head.pose_geometry(state, H)
                    renderer.update(pos, head.normals(pos))
                    for v in range(views):
                        yaw = np.deg2rad(rng.uniform(-max_yaw_deg, max_yaw_deg))
                        pitch = np.deg2rad(rng.uniform(-max_pitch_deg, max_pitch_deg))
                        w2c = orbit_camera(yaw, pitch)
                        r = renderer.render(K, w2c, light, H[:3, :3])
                        uv, z = project(lm3, K, w2c)
                        vis = _visible(uv, z, r["depth"])
                        gt = _frame_gt(state, lm3, uv, vis, H, {"head_yaw": 0.0, "head_pitch": 0.0, "head_roll": 0.0})
                        gt.update({"identity": np.int64(seed), "expression": np.int64(k * expressions + e),
                                   "view_yaw_deg": np.float32(np.rad2deg(yaw)), "view_pitch_deg": np.float32(np.rad2deg(pitch))})
                        (held if k >= held_from else train).append(len(writer))
                        writer.add_frame(r["rgb"], r["labels"], K, w2c, gt=gt)
                        bar.update(1)
            finally:
                renderer.release()
        bar.close()
        return writer.close(splits={"train": train, "heldout": held}, landmark_names=LANDMARK_NAMES)
    except BaseException:
        writer.abort()
        raise
