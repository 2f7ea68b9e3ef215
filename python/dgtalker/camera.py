"""Cameras around the canonical head frame.

The head frame (see docs/data-format.md): metres, origin at the skull centre,
+x towards the subject's left, +y up, +z out of the face. Cameras follow OpenCV
(x right, y down, z forward) with world-to-camera matrices.
"""
from __future__ import annotations

import math

import numpy as np

class CameraError(ValueError):
    """A camera that cannot be used as given: the message says what is wrong and how to fix it."""


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
        raise CameraError(f"fov must be in (0, 180) degrees, got {fov_deg}")
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
    """The camera ``viewmat`` ([..., 4, 4] torch, or a ``Camera``: then a Camera of the
    same size and timing) moved around ``target`` (head frame; default the corpus'
    look-at point) by ``yaw`` and ``pitch`` degrees, as ``orbit`` counts them (yaw > 0
    sees more of the subject's left, pitch > 0 looks from above): e.g. a real talker's
    own framing seen from 20 degrees to the side, ``turn(talker.camera(), 20)``."""
    import torch

    if isinstance(viewmat, Camera):
        c = viewmat
        return Camera(turn(c.viewmats, yaw, pitch, target=target), c.Ks, c.width, c.height, fps=c.fps, times=c.times,
                      extend=c.extend, torso=c.torso, torso_offsets=c.torso_offsets)
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


EXTEND_MODES = ("refuse", "hold", "loop")


def check_size(width, height, what: str = "") -> tuple[int, int]:
    """``(width, height)`` as ints in [8, 4096]; anything else (0, 8.7, -1, True, None)
    raises CameraError naming the argument."""
    for name, v in (("width", width), ("height", height)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, (bool, np.bool_)) or not 8 <= int(v) <= 4096:
            raise CameraError(f"{what}{name} must be an int in [8, 4096], got {v!r}")
    return int(width), int(height)


class Camera:
    """Cameras that carry their image size: ``viewmats [N, 4, 4]`` (world(head)-to-camera,
    OpenCV axes), ``Ks [N, 3, 3]`` (pixels of a ``width x height`` image), and how the N
    cameras map to time:

    - N = 1: the same camera for every frame;
    - ``times [N]`` (seconds; a dataset's cameras) or ``fps`` (camera i at i / fps): frame
      time t takes the latest camera at or before t, so a video at any fps sees the same
      motion;
    - neither: one camera per output frame (N must equal the frame count).

    A camera track shorter than the speech is refused, unless ``extend`` is ``"hold"``
    (its last camera) or ``"loop"``. ``torso="clip"`` (dataset cameras) poses the torso
    where that clip had it, following the head's motion and, with ``torso_offsets [N, 2]``
    (the clip's tracked torso shift over the focal length, ``dataset_torso_offsets``), its
    own; ``"rest"`` keeps it at the talker's body pose. ``vm, K = camera`` unpacks the matrices (one camera: [4, 4] and
    [3, 3]). Every ``dgtalker.camera`` helper returns a Camera.
    """

    def __init__(self, viewmats, Ks, width: int, height: int, *, fps: float | None = None, times=None,
                 extend: str = "refuse", torso: str = "rest", torso_offsets=None):
        import torch

        self.width, self.height = check_size(width, height, "Camera ")
        vm = torch.as_tensor(np.asarray(viewmats) if not isinstance(viewmats, torch.Tensor) else viewmats,
                             dtype=torch.float32)
        K = torch.as_tensor(np.asarray(Ks) if not isinstance(Ks, torch.Tensor) else Ks, dtype=torch.float32)
        vm = vm[None] if vm.shape == (4, 4) else vm
        K = K[None] if K.shape == (3, 3) else K
        if vm.dim() != 3 or vm.shape[1:] != (4, 4) or vm.shape[0] < 1:
            raise CameraError(f"Camera viewmats must be [4, 4] or [N, 4, 4], got {list(vm.shape)}")
        if K.dim() != 3 or K.shape[1:] != (3, 3) or K.shape[0] not in (1, vm.shape[0]):
            raise CameraError(f"Camera Ks must be [3, 3], [1, 3, 3] or [{vm.shape[0]}, 3, 3], got {list(K.shape)}")
        if not bool(torch.isfinite(vm).all() and torch.isfinite(K).all()):
            raise CameraError("Camera viewmats or Ks contain NaN or inf")
        self.viewmats = vm.cpu().contiguous()
        self.Ks = K.expand(vm.shape[0], -1, -1).cpu().contiguous()
        if fps is not None and times is not None:
            raise CameraError("Camera takes fps= or times=, not both")
        if fps is not None:
            if isinstance(fps, bool) or not isinstance(fps, (int, float, np.number)) or not (0 < fps < float("inf")):
                raise CameraError(f"Camera fps must be a positive number, got {fps!r}")
            fps = float(fps)
        if times is not None:
            times = np.asarray(times, np.float64).reshape(-1)
            if len(times) != len(self) or not np.all(np.isfinite(times)) or np.any(np.diff(times) <= 0):
                raise CameraError(f"Camera times must be {len(self)} increasing finite seconds, got {len(times)}")
        if extend not in EXTEND_MODES:
            raise CameraError(f"Camera extend must be one of {EXTEND_MODES}, got {extend!r}")
        if torso not in ("rest", "clip"):
            raise CameraError(f"Camera torso must be 'rest' or 'clip', got {torso!r}")
        if torso_offsets is not None:
            torso_offsets = torch.as_tensor(np.asarray(torso_offsets) if not isinstance(torso_offsets, torch.Tensor)
                                            else torso_offsets, dtype=torch.float32).cpu().contiguous()
            if torso_offsets.shape != (len(self), 2) or not bool(torch.isfinite(torso_offsets).all()):
                raise CameraError(f"Camera torso_offsets must be [{len(self)}, 2] finite numbers, got "
                                  f"{list(torso_offsets.shape)}")
            if torso != "clip":
                raise CameraError("Camera torso_offsets need torso='clip'")
        self.fps, self.times, self.extend, self.torso = fps, times, extend, torso
        self.torso_offsets = torso_offsets

    @classmethod
    def from_dataset(cls, dataset, frames=None, *, extend: str = "refuse") -> "Camera":
        """A dataset's tracked cameras (``frames``: which ones, default all) at their own
        times (frame i of the selection at ``(frames[i] - frames[0]) / dataset.fps``), the
        torso following the clip's head motion and its own tracked motion, where the clip has it."""
        n = len(dataset.w2c)
        idx = np.arange(n) if frames is None else np.asarray(frames, np.int64).reshape(-1)
        if idx.size == 0 or idx.min() < 0 or idx.max() >= n:
            raise CameraError(f"frames must select among the dataset's {n} frames, got {idx.size} indices"
                              + (f" in [{idx.min()}, {idx.max()}]" if idx.size else ""))
        return cls(dataset.w2c[idx], dataset.K[idx], int(dataset.width), int(dataset.height),
                   times=(idx - idx[0]) / float(dataset.fps) if len(idx) > 1 else None, extend=extend, torso="clip",
                   torso_offsets=dataset_torso_offsets(dataset, idx))

    def __len__(self) -> int:
        return int(self.viewmats.shape[0])

    def __iter__(self):
        if len(self) == 1:
            return iter((self.viewmats[0], self.Ks[0]))
        return iter((self.viewmats, self.Ks))

    def __repr__(self) -> str:
        timing = (f"fps={self.fps:g}" if self.fps is not None else "times" if self.times is not None
                  else "per frame" if len(self) > 1 else "fixed")
        return f"Camera({len(self)} x {self.width}x{self.height}, {timing}, torso={self.torso})"

    def with_options(self, **kw) -> "Camera":
        """A copy with other ``fps``, ``times``, ``extend`` or ``torso``."""
        opts = {"fps": self.fps, "times": self.times, "extend": self.extend, "torso": self.torso,
                "torso_offsets": self.torso_offsets if kw.get("torso", self.torso) == "clip" else None, **kw}
        if "fps" in kw and kw["fps"] is not None:
            opts["times"] = None
        if "times" in kw and kw["times"] is not None:
            opts["fps"] = None
        return Camera(self.viewmats, self.Ks, self.width, self.height, **opts)

    def resized(self, width: int, height: int) -> "Camera":
        """The same cameras for images of ``width x height`` (intrinsics scaled)."""
        width, height = check_size(width, height)
        if (width, height) == (self.width, self.height):
            return self
        Ks = resize_intrinsics(self.Ks, self.width, self.height, width, height)
        return Camera(self.viewmats, Ks, width, height, fps=self.fps, times=self.times, extend=self.extend,
                      torso=self.torso, torso_offsets=self.torso_offsets)  # offsets over the focal: any size

    def duration(self) -> float | None:
        """Seconds of motion the track covers (None: fixed or one per frame)."""
        if len(self) == 1:
            return None
        if self.times is not None:
            step = float(np.median(np.diff(self.times)))
            return float(self.times[-1] - self.times[0]) + step
        return len(self) / self.fps if self.fps is not None else None

    def indices(self, num_frames: int, fps: float) -> np.ndarray:
        """Which camera each of ``num_frames`` output frames at ``fps`` takes."""
        n = len(self)
        if n > 1 and self.times is None and self.fps is None and n != num_frames:
            raise CameraError(f"camera holds {n} per-frame cameras but the speech makes {num_frames} frames at "
                              f"{fps:g} fps: pass one camera, {num_frames} cameras, or give the track its rate "
                              "(camera.with_options(fps=...)) so frames pick cameras by time")
        return self._at(np.arange(num_frames), fps)

    def index_at(self, frame: int, fps: float) -> int:
        """The camera of output frame ``frame`` at ``fps`` (a stream's frames one by one;
        a per-frame track without a rate must hold that frame)."""
        if len(self) > 1 and self.times is None and self.fps is None and frame >= len(self):
            raise CameraError(f"camera holds {len(self)} per-frame cameras but the stream reached frame {frame}; "
                              "pass one camera per frame of the whole stream, one camera, or a track with a rate")
        return int(self._at(np.array([frame]), fps)[0])

    def _at(self, frames: np.ndarray, fps: float) -> np.ndarray:
        n = len(self)
        if n == 1:
            return np.zeros(len(frames), np.int64)
        if self.times is None and self.fps is None:
            return frames.astype(np.int64)
        t = frames / float(fps)
        times = self.times - self.times[0] if self.times is not None else np.arange(n) / self.fps
        span = self.duration()
        if self.extend == "loop":
            t = np.mod(t, span)
        elif self.extend == "refuse" and len(t) and t.max() >= span - 1e-9:
            raise CameraError(f"camera covers {span:.2f} s but the speech lasts at least {t.max() + 1 / fps:.2f} s "
                              "(frame times past its end): use a shorter speech, or "
                              "camera.with_options(extend='hold') (keep its last camera) or extend='loop'")
        # the latest camera at or before the frame's time (as a video shows its last frame)
        return (np.searchsorted(times, t + 1e-6, side="right") - 1).clip(0, n - 1).astype(np.int64)


def dataset_torso_offsets(dataset, idx) -> np.ndarray | None:
    """``[n, 2]`` float32 offsets of the torso in frames ``idx`` of a clip: its tracked image
    shift (``gt.npz`` ``torso_shift``, pixels; ``preprocess.torso``) over the focal length,
    so that any image size and any talker's depth turn them into a move (None: the clip
    has no such track)."""
    gt = getattr(dataset, "gt", None)
    if not gt or "torso_shift" not in gt:
        return None
    idx = np.asarray(idx, np.int64).reshape(-1)
    K = np.asarray(dataset.K)[idx]
    shift = np.asarray(gt["torso_shift"], np.float64)[idx]
    return (shift / np.stack([K[:, 0, 0], K[:, 1, 1]], 1)).astype(np.float32)


def view_tensors(w2c, K, width: int, height: int, size, device=None):
    """``(viewmats [n, 4, 4], Ks [n, 3, 3])`` float32 torch tensors of stored cameras (a
    dataset's frames or novel views, numpy ``[n, 4, 4]`` / ``[n, 3, 3]`` or one of each) whose
    intrinsics are for ``width x height`` images, for renders of ``size`` (an int: square, or
    ``(width, height)``) on ``device``: the one conversion of stored cameras to tensors."""
    W, H = (size, size) if isinstance(size, (int, np.integer)) else size
    cam = Camera(w2c, K, int(width), int(height)).resized(int(W), int(H))
    return cam.viewmats.to(device), cam.Ks.to(device)


def orbit(yaw: float, pitch: float, *, distance: float | None = None, fov: float | None = None,
          width: int, height: int, target=None) -> Camera:
    """One camera looking at the head, as a ``Camera`` of ``width x height`` images
    (``vm, K = orbit(...)`` gives its [4, 4] and [3, 3] float32 matrices).

    ``yaw`` and ``pitch`` in degrees (yaw = pitch = 0: the frontal view; yaw > 0 sees
    more of the subject's left, pitch > 0 looks from above); ``distance`` in metres
    from ``target`` (default: the corpus' selfie framing); ``fov`` vertical, degrees.
    """
    w2c, K = _orbit_matrices(yaw, pitch, distance=distance, fov=fov, width=width, height=height, target=target)
    return Camera(w2c, K, width, height)


def _orbit_matrices(yaw, pitch, *, distance, fov, width, height, target=None):
    width, height = check_size(width, height)
    distance = DEFAULT_DISTANCE if distance is None else float(distance)
    if not distance > 0:
        raise CameraError(f"distance must be > 0, got {distance}")
    target = DEFAULT_TARGET if target is None else target
    eye = orbit_position(math.radians(yaw), math.radians(pitch), distance, target)
    return look_at(eye, target), intrinsics(width, height, DEFAULT_FOV_DEG if fov is None else float(fov))


def _check_count(num_frames):
    if not isinstance(num_frames, (int, np.integer)) or isinstance(num_frames, bool) or num_frames < 1:
        raise CameraError(f"num_frames must be a positive int, got {num_frames!r}")
    return int(num_frames)


def spiral(num_frames: int, *, width: int, height: int, yaw: float = 25.0, pitch: float = 10.0,
           turns: float = 1.0, distance: float | None = None, fov: float | None = None,
           fps: float | None = None) -> Camera:
    """The 3D-aware demo camera: ``num_frames`` cameras circling the face on an ellipse
    of ``±yaw`` by ``±pitch`` degrees, ``turns`` times: one per output frame, or, with
    ``fps``, camera i at time i / fps."""
    num_frames = _check_count(num_frames)
    t = np.arange(num_frames) / num_frames * 2 * math.pi * turns
    vms, Ks = zip(*(_orbit_matrices(yaw * math.sin(a), pitch * math.cos(a), distance=distance, fov=fov,
                                    width=width, height=height) for a in t))
    return Camera(np.stack(vms), np.stack(Ks), width, height, fps=fps)


def path(keys, num_frames: int, *, width: int, height: int, distance: float | None = None, fov: float | None = None,
         fps: float | None = None) -> Camera:
    """Cameras interpolated through key poses ``[(yaw, pitch), ...]`` in degrees (smooth
    cosine easing between consecutive keys, equal time per segment): one per output
    frame, or, with ``fps``, camera i at time i / fps."""
    keys = np.asarray(keys, np.float64)
    if keys.ndim != 2 or keys.shape[1] != 2 or len(keys) < 1 or not np.all(np.isfinite(keys)):
        raise CameraError(f"keys must be a list of (yaw, pitch) pairs in degrees, got {keys.tolist()!r}")
    num_frames = _check_count(num_frames)
    if len(keys) == 1:
        keys = np.repeat(keys, 2, axis=0)
    u = np.linspace(0, len(keys) - 1, num_frames)
    k = np.minimum(np.floor(u).astype(int), len(keys) - 2)
    f = 0.5 - 0.5 * np.cos(np.pi * (u - k))
    yp = keys[k] * (1 - f[:, None]) + keys[k + 1] * f[:, None]
    vms, Ks = zip(*(_orbit_matrices(y, p, distance=distance, fov=fov, width=width, height=height) for y, p in yp))
    return Camera(np.stack(vms), np.stack(Ks), width, height, fps=fps)
