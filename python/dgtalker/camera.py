"""Cameras around the canonical head frame.

The head frame (see docs/data-format.md): metres, origin at the skull centre,
+x towards the subject's left, +y up, +z out of the face. Cameras follow OpenCV
(x right, y down, z forward) with world-to-camera matrices.
"""
from __future__ import annotations

import math

import numpy as np

# The framing the synthetic corpus is filmed with: an arm's-length selfie camera
# looking slightly below the skull centre, so head and shoulders fill the frame.
DEFAULT_DISTANCE = 0.55
DEFAULT_TARGET = (0.0, -0.035, 0.0)
DEFAULT_FOV_DEG = 2.0 * math.degrees(math.atan(0.18 / DEFAULT_DISTANCE))  # ~36.2 deg vertical


def look_at(eye, target, up=(0.0, 1.0, 0.0)) -> np.ndarray:
    """World-to-camera [4, 4] (float64, OpenCV axes) of a camera at ``eye`` facing ``target``."""
    eye, target = np.asarray(eye, np.float64), np.asarray(target, np.float64)
    fwd = target - eye
    norm = np.linalg.norm(fwd)
    if norm == 0:
        raise ValueError("look_at: eye and target coincide")
    fwd /= norm
    right = np.cross(fwd, np.asarray(up, np.float64))  # image x; y down = fwd x right
    if np.linalg.norm(right) < 1e-9:
        raise ValueError("look_at: the viewing direction is parallel to 'up'")
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    w2c = np.eye(4)
    w2c[:3, :3] = np.stack([right, down, fwd])
    w2c[:3, 3] = -w2c[:3, :3] @ eye
    return w2c


def orbit_position(yaw: float, pitch: float, distance: float, target=DEFAULT_TARGET) -> np.ndarray:
    """Point on a sphere around ``target``; angles in radians. yaw > 0 moves towards +x
    (the subject's left), pitch > 0 above; yaw = pitch = 0 is straight in front (+z)."""
    return np.asarray(target, np.float64) + distance * np.array(
        [math.cos(pitch) * math.sin(yaw), math.sin(pitch), math.cos(pitch) * math.cos(yaw)])


def intrinsics(width: int, height: int, fov_deg: float = DEFAULT_FOV_DEG) -> np.ndarray:
    """[3, 3] pinhole intrinsics with the given vertical field of view, centred principal point."""
    if not 0.0 < fov_deg < 180.0:
        raise ValueError(f"fov must be in (0, 180) degrees, got {fov_deg}")
    f = 0.5 * height / math.tan(math.radians(fov_deg) / 2.0)
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])


def resize_intrinsics(K, src_width: int, src_height: int, width: int, height: int):
    """Intrinsics ``[..., 3, 3]`` (a torch tensor) of the same camera for its image resized
    from ``src_width x src_height`` to ``width x height``: rows 0 and 1 scale with the
    image, so pixel centres stay at +0.5. Returns a new tensor."""
    K = K.clone()
    K[..., 0, :] *= width / src_width
    K[..., 1, :] *= height / src_height
    return K


def turn(viewmat, yaw: float, pitch: float = 0.0, *, target=None):
    """The camera ``viewmat`` ([..., 4, 4] torch) moved around ``target`` (head frame;
    default the corpus' look-at point) by ``yaw`` and ``pitch`` degrees, as ``orbit``
    counts them (yaw > 0 sees more of the subject's left, pitch > 0 looks from above):
    e.g. a real talker's own framing seen from 20 degrees to the side."""
    import torch

    p = torch.tensor(DEFAULT_TARGET if target is None else target, dtype=torch.float64)
    a, b = math.radians(-yaw), math.radians(pitch)
    Ry = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]], dtype=torch.float64)
    Rx = torch.tensor([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]], dtype=torch.float64)
    M = torch.eye(4, dtype=torch.float64)
    M[:3, :3] = Rx @ Ry  # the inverse of the camera's own move (yaw about +y, then pitch)
    M[:3, 3] = p - M[:3, :3] @ p
    return (viewmat.to(torch.float64) @ M.to(viewmat.device)).to(viewmat.dtype)


def orbit_angles(viewmats, target=None) -> np.ndarray:
    """``[..., 2]`` (yaw, pitch) in degrees of cameras ``[..., 4, 4]`` (numpy or torch) around
    ``target`` (head frame; default the corpus' look-at point), as ``orbit`` counts them:
    e.g. how far a clip's head turns relative to its camera."""
    v = np.asarray(viewmats.detach().cpu() if hasattr(viewmats, "detach") else viewmats, np.float64)
    centre = -np.einsum("...ji,...j->...i", v[..., :3, :3], v[..., :3, 3])
    d = centre - np.asarray(DEFAULT_TARGET if target is None else target, np.float64)
    yaw = np.degrees(np.arctan2(d[..., 0], d[..., 2]))
    pitch = np.degrees(np.arctan2(d[..., 1], np.hypot(d[..., 0], d[..., 2])))
    return np.stack([yaw, pitch], -1)


def orbit(yaw: float, pitch: float, *, distance: float | None = None, fov: float | None = None,
          width: int, height: int, target=None):
    """(viewmat [4, 4], K [3, 3]) float32 torch tensors of a camera looking at the head.

    ``yaw`` and ``pitch`` in degrees (yaw = pitch = 0: the frontal view; yaw > 0 sees
    more of the subject's left, pitch > 0 looks from above); ``distance`` in metres
    from ``target`` (default: the corpus' selfie framing); ``fov`` vertical, degrees.
    """
    import torch

    distance = DEFAULT_DISTANCE if distance is None else float(distance)
    if not distance > 0:
        raise ValueError(f"distance must be > 0, got {distance}")
    target = DEFAULT_TARGET if target is None else target
    eye = orbit_position(math.radians(yaw), math.radians(pitch), distance, target)
    w2c = look_at(eye, target)
    K = intrinsics(width, height, DEFAULT_FOV_DEG if fov is None else float(fov))
    return torch.tensor(w2c, dtype=torch.float32), torch.tensor(K, dtype=torch.float32)


def _check_size(width, height):
    for name, v in (("width", width), ("height", height)):
        if not isinstance(v, int) or isinstance(v, bool) or not 8 <= v <= 4096:
            raise ValueError(f"{name} must be an int in [8, 4096], got {v!r}")


def spiral(num_frames: int, *, width: int, height: int, yaw: float = 25.0, pitch: float = 10.0,
           turns: float = 1.0, distance: float | None = None, fov: float | None = None):
    """The 3D-aware demo camera: ``num_frames`` cameras circling the face on an ellipse
    of ``±yaw`` by ``±pitch`` degrees, ``turns`` times. Returns (viewmats [T, 4, 4],
    Ks [T, 3, 3]) float32 torch tensors."""
    import torch

    if not isinstance(num_frames, int) or isinstance(num_frames, bool) or num_frames < 1:
        raise ValueError(f"num_frames must be a positive int, got {num_frames!r}")
    _check_size(width, height)
    t = np.arange(num_frames) / max(num_frames, 1) * 2 * math.pi * turns
    vms, Ks = zip(*(orbit(yaw * math.sin(a), pitch * math.cos(a), distance=distance, fov=fov, width=width,
                          height=height) for a in t))
    return torch.stack(vms), torch.stack(Ks)


def path(keys, num_frames: int, *, width: int, height: int, distance: float | None = None, fov: float | None = None):
    """Cameras interpolated through key poses ``[(yaw, pitch), ...]`` in degrees (smooth
    cosine easing between consecutive keys, equal time per segment). Returns
    (viewmats [T, 4, 4], Ks [T, 3, 3])."""
    import torch

    keys = np.asarray(keys, np.float64)
    if keys.ndim != 2 or keys.shape[1] != 2 or len(keys) < 1 or not np.all(np.isfinite(keys)):
        raise ValueError(f"keys must be a list of (yaw, pitch) pairs in degrees, got {keys.tolist()!r}")
    if not isinstance(num_frames, int) or isinstance(num_frames, bool) or num_frames < 1:
        raise ValueError(f"num_frames must be a positive int, got {num_frames!r}")
    _check_size(width, height)
    if len(keys) == 1:
        keys = np.repeat(keys, 2, axis=0)
    u = np.linspace(0, len(keys) - 1, num_frames)
    k = np.minimum(np.floor(u).astype(int), len(keys) - 2)
    f = 0.5 - 0.5 * np.cos(np.pi * (u - k))
    yp = keys[k] * (1 - f[:, None]) + keys[k + 1] * f[:, None]
    vms, Ks = zip(*(orbit(y, p, distance=distance, fov=fov, width=width, height=height) for y, p in yp))
    return torch.stack(vms), torch.stack(Ks)
