"""``preprocess(video, out)``: a talking-head clip in, a dataset (format version 1) out.

Two passes over the video keep memory small for any length: the first tracks the face
and segments the person in every frame (landmarks and a foreground mask of at most
640 px are kept; the two models run in parallel threads), the second crops, masks and
writes. In between, the clip's face shape, its registration to the head frame, the focal length,
the per-frame poses and one fixed crop are solved from the landmarks and from features
of the skin followed by optical flow.
"""
from __future__ import annotations

import hashlib
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..camera import DEFAULT_DISTANCE, DEFAULT_FOV_DEG, DEFAULT_TARGET
from ..data.face_mesh import LIP_CONTOUR, mouth_opening, mouth_width
from . import tracking, video as vid
from .masks import Segmenter, face_masks
from .tracking import MEDIAPIPE_LANDMARKS

# the corpus' framing (dgtalker.camera's defaults: a 36 degree vertical field of view
# at 0.55 m, centred 3.5 cm below the head frame's origin): real clips are cropped to
# match it where the frame allows, so a real head fills the picture as the prior's do
CORPUS_FOV_DEG, CORPUS_DISTANCE, LOOK_AT = DEFAULT_FOV_DEG, DEFAULT_DISTANCE, np.array(DEFAULT_TARGET)


class PreprocessError(ValueError):
    """The video cannot become a dataset (no face, too short, no sound, ...); the
    message says what was found and which option changes the decision."""


@dataclass
class Summary:
    out: str
    frames: int
    kept: int
    dropped: list = field(default_factory=list)
    seconds: float = 0.0
    source_fps: float = 0.0
    focal_px: float = 0.0
    focal_estimated: bool = True
    crop: list = field(default_factory=list)
    registration_rms_mm: float = 0.0
    reprojection_px: float = 0.0
    yaw_deg: list = field(default_factory=list)
    pitch_deg: list = field(default_factory=list)
    roll_deg: list = field(default_factory=list)
    faces_seen: int = 1
    elapsed_s: float = 0.0
    timings_s: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    def text(self) -> str:
        lines = [f"wrote {self.out}: {self.frames} frames ({self.seconds:.1f} s), kept {self.kept}, "
                 f"dropped {len(self.dropped)}" + (f" {self.dropped[:20]}{' ...' if len(self.dropped) > 20 else ''}"
                                                  if self.dropped else ""),
                 f"  head pose: yaw {self.yaw_deg[0]:+.1f}..{self.yaw_deg[1]:+.1f} deg, pitch "
                 f"{self.pitch_deg[0]:+.1f}..{self.pitch_deg[1]:+.1f}, roll {self.roll_deg[0]:+.1f}..{self.roll_deg[1]:+.1f}",
                 f"  focal {self.focal_px:.0f} px ({'estimated' if self.focal_estimated else 'given'}), "
                 f"crop {self.crop}, registration rms {self.registration_rms_mm:.1f} mm, "
                 f"reprojection {self.reprojection_px:.2f} px",
                 f"  {self.elapsed_s:.1f} s ({self.frames / max(self.elapsed_s, 1e-9):.1f} frames/s; "
                 + ", ".join(f"{k} {v:.1f} s" for k, v in self.timings_s.items()) + ")"]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _bar(total, desc, quiet):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="frame", disable=quiet, leave=False)


def head_angles(w2c: np.ndarray) -> np.ndarray:
    """(yaw, pitch, roll) in degrees of the head seen by each camera ``[F, 4, 4]``, in the
    corpus' convention (R = Ry(yaw) Rx(pitch) Rz(roll) relative to a frontal camera)."""
    from scipy.spatial.transform import Rotation

    frontal = np.diag([1.0, -1.0, -1.0])
    H = frontal.T @ w2c[:, :3, :3]
    return np.degrees(Rotation.from_matrix(H).as_euler("YXZ"))


def _crop_box(w2c, K, points, width, height):
    """One square crop ``(x0, y0, side)`` for the whole clip, in source pixels: the
    corpus' framing at the clip's median head distance (or as much of it as the frame
    holds), centred on the median image of the look-at point, and never smaller than
    what keeps every frame's face inside it."""
    c = w2c[:, :3, :3] @ LOOK_AT + w2c[:, :3, 3]
    uv = (c @ K.T)[:, :2] / c[:, 2:3]
    cx, cy = np.median(uv, 0)
    side = 2 * K[1, 1] * np.tan(np.radians(CORPUS_FOV_DEG) / 2) * np.median(c[:, 2]) / CORPUS_DISTANCE
    reach = max(np.abs(p[:, :2] - [cx, cy]).max() for p in points if p is not None)
    side = int(np.ceil(max(min(side, width, height), 2.2 * reach)))
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    # stay inside the frame where the crop fits; pad (edge colours) where it cannot
    x0 = min(max(x0, 0), width - side) if side <= width else int(round((width - side) / 2))
    y0 = min(max(y0, 0), height - side) if side <= height else int(round((height - side) / 2))
    return x0, y0, side


def _crop(img, x0, y0, side, size):
    from PIL import Image

    out = vid.square_window(img, x0, y0, side, edge=True)
    if side != size:
        out = np.asarray(Image.fromarray(out).resize((size, size), Image.BOX if side > size else Image.BICUBIC))
    return np.ascontiguousarray(out)


MASK_SIDE = 640  # the kept foreground masks' longest side (the segmenter works at 256)


def _small_foreground(seg, rgb) -> np.ndarray:
    """The frame's foreground coverage as uint8, downscaled to at most MASK_SIDE."""
    from PIL import Image

    m = Image.fromarray(np.round(seg(rgb) * 255).astype(np.uint8))
    k = MASK_SIDE / max(m.size)
    if k < 1:
        m = m.resize((max(1, round(m.width * k)), max(1, round(m.height * k))), Image.BOX)
    return np.asarray(m)


def _crop_mask(small: np.ndarray, width: int, x0, y0, side, size) -> np.ndarray:
    """The crop ``(x0, y0, side)`` (source pixels) of a downscaled mask, at ``size``
    (float32 coverage; outside the frame is background)."""
    from PIL import Image

    k = small.shape[1] / width
    h, w = small.shape
    if k == 1 and side == size and x0 >= 0 and y0 >= 0 and x0 + side <= w and y0 + side <= h:
        return small[y0:y0 + side, x0:x0 + side].astype(np.float32) * (1.0 / 255.0)
    box = (x0 * k, y0 * k, (x0 + side) * k, (y0 + side) * k)
    im = Image.fromarray(small)
    if box[0] >= 0 and box[1] >= 0 and box[2] <= w and box[3] <= h:
        m = im.resize((size, size), Image.BILINEAR, box=box)
    else:  # the crop leaves the frame: outside is background
        m = im.transform((size, size), Image.EXTENT, box, Image.BILINEAR)
    return np.asarray(m, np.float32) * (1.0 / 255.0)


def preprocess(video, out, *, fps: float = 25.0, size: int = 512, focal: float | None = None,
               image_format: str = "jpg", heldout: float = 0.1, allow_silent: bool = False,
               max_dropped: float = 0.25, min_seconds: float = 2.0, min_face_px: float = 40.0,
               smooth: float = 1.0, feature_rounds: int = 0, overwrite: bool = False,
               quiet: bool = False) -> Summary:
    """Turn a talking-head video into a dataset directory ``out`` (see the module doc
    and docs/preprocess.md). Raises :class:`PreprocessError` or ``video.VideoError``
    with a message that names the problem."""
    from ..data.format import DatasetWriter, tail_splits
    from ..data.synthetic.head import LANDMARK_NAMES
    from .torso import add_torso_track

    t_start = time.perf_counter()
    if not (np.isfinite(fps) and 1 <= fps <= 120):
        raise PreprocessError(f"fps must be between 1 and 120, got {fps}")
    if not (64 <= int(size) <= 2048):
        raise PreprocessError(f"size must be between 64 and 2048 pixels, got {size}")
    if focal is not None and not (np.isfinite(focal) and focal > 0):
        raise PreprocessError(f"focal must be a positive number of pixels, got {focal}")
    if not 0 <= heldout < 1:
        raise PreprocessError(f"heldout must be in [0, 1), got {heldout}")
    if isinstance(feature_rounds, bool) or not isinstance(feature_rounds, int) or not 0 <= feature_rounds <= 10:
        raise PreprocessError(f"feature_rounds must be an int in [0, 10], got {feature_rounds!r}")
    video, out = Path(video), Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (pass --overwrite to replace it)")
    info = vid.probe(video, fps)
    photo = info.still is not None
    if photo:
        allow_silent = True
        heldout = 0.0  # one frame: nothing to hold out (a photo is for inversion, not for held-out scores)
    elif info.duration < min_seconds:
        raise PreprocessError(f"video: {video} is {info.duration:.2f} s long; a talking-head clip needs at "
                              f"least {min_seconds:g} s (minutes are better)")
    if not info.has_audio and not allow_silent:
        raise PreprocessError(f"video: {video} has no sound track; the talking head learns from speech. "
                              "Pass --allow-silent to preprocess it anyway (for inversion only)")
    N = info.frames_at(fps)
    try:  # the split the clip allows, before minutes of tracking (dropped frames can only shrink it)
        tail_splits(range(N), heldout, min_train=1)
    except ValueError as exc:
        raise PreprocessError(f"--heldout: {exc}") from None
    notes = ["a photo: one frame, no sound (for inversion, or a look at the tracking)"] if photo else []
    # the sound first: a silent track fails before minutes of tracking, not after
    if info.has_audio:
        samples, rate = vid.audio(info, fps, N)
        if not np.any(np.abs(samples) > 1e-4) and not allow_silent:
            raise PreprocessError(f"video: the sound track of {video} is silent; pass --allow-silent to "
                                  "preprocess it anyway (for inversion only)")
    else:
        samples, rate = np.zeros(int(round(N / fps * 16000)), np.float32), 16000
        if not photo:
            notes.append("no sound track: wrote silence (--allow-silent)")

    # pass 1: the face and the person in every frame
    tracker, features, seg = tracking.FaceTracker(), tracking.FeatureTracker(), Segmenter()
    points, foreground = [None] * N, [None] * N
    with _bar(N, "tracking", quiet) as bar, ThreadPoolExecutor(1) as pool, ThreadPoolExecutor(1) as flow:
        flowing = None  # the optical flow of one frame runs beside the face mesh of the next
        for i, rgb in vid.prefetch(vid.frames(info, fps, N)):
            fg = pool.submit(_small_foreground, seg, rgb)
            points[i] = tracker.track(rgb)
            if flowing is not None:
                flowing.result()
            flowing = flow.submit(features.step, rgb, points[i])
            foreground[i] = fg.result()
            bar.update(1)
        if flowing is not None:
            flowing.result()
    tracker.close()
    seg.close()
    timings = {"tracking": time.perf_counter() - t_start}
    found = [i for i, p in enumerate(points) if p is not None]
    if not found:
        raise PreprocessError(f"video: no face was found in {video} ({N} frames searched)")
    if tracker.faces_seen > 1:
        notes.append(f"up to {tracker.faces_seen} faces in a frame: followed the largest face of the first "
                     "frame with a face")
    eye_chin = np.median([np.linalg.norm(points[i][152, :2] - points[i][[159, 386], :2].mean(0)) for i in found])
    if eye_chin < min_face_px:
        raise PreprocessError(f"video: the face in {video} is too small ({eye_chin:.0f} px from eyes to chin; "
                              f"need at least {min_face_px:.0f}); film closer or use a higher resolution")

    # the clip's face shape, its place in the head frame, the camera and the poses
    sample = [points[i] for i in np.asarray(found)[np.linspace(0, len(found) - 1, min(300, len(found))).astype(int)]]
    shape, weights = tracking.canonical_shape(sample)
    X, reg_rms = tracking.register_to_head(shape, weights)
    X, rv, tv, focal_px, err = tracking.bundle_adjust(X, points, weights, info.width, info.height, focal,
                                                      features=features.observations(),
                                                      feature_rounds=feature_rounds)
    K = tracking.intrinsics(focal_px, info.width, info.height)
    timings["pose"] = time.perf_counter() - t_start - timings["tracking"]
    med = float(np.nanmedian(err))
    bad = np.isfinite(err) & (err > max(4.0 * med, 3.0 * eye_chin / 100))  # tracker lost the face
    rv[bad], tv[bad] = np.nan, np.nan
    dropped = sorted(set(range(N)) - set(found) | set(np.flatnonzero(bad).tolist()))
    if len(dropped) > max_dropped * N:
        raise PreprocessError(f"video: no usable face in {len(dropped)} of {N} frames of {video} "
                              f"(more than --max-dropped {max_dropped:g}); first ones: {dropped[:10]}")
    w2c = tracking.fill_and_smooth(rv, tv, sigma=smooth)
    x0, y0, side = _crop_box(w2c, K, [points[i] for i in found], info.width, info.height)
    if side > min(info.width, info.height):
        notes.append(f"the head needs a {side} px crop but the frame is {info.width}x{info.height}: padded "
                     "with the edge colours")
    if side < size:
        notes.append(f"the crop is {side} px, upscaled to {size}: a closer or sharper shot trains better")
    scale = size / side
    Kc = K.copy()
    Kc[0, 2] -= x0
    Kc[1, 2] -= y0
    Kc[:2] *= scale

    # pass 2: crop, mask, write (decoding and encoding run in their own threads)
    writer = DatasetWriter(out, size, size, kind="talking", fps=fps, image_ext=image_format, overwrite=overwrite)
    names = list(LANDMARK_NAMES)
    lm_idx = [MEDIAPIPE_LANDMARKS[n] for n in names]
    drop = set(dropped)
    try:
        with ThreadPoolExecutor(2) as pool, _bar(N, "writing", quiet) as bar:
            pending = []  # (encoding, cameras, gt) in frame order
            for i, img in vid.prefetch(vid.frames(info, fps, N), lambda i, rgb: _crop(rgb, x0, y0, side, size)):
                fg = _crop_mask(foreground[i], info.width, x0, y0, side, size)
                foreground[i] = None
                if i in drop:
                    masks = np.zeros((size, size, 4), np.float32)
                    masks[..., 3] = fg
                    P = (tracking.CANONICAL_LANDMARKS @ w2c[i, :3, :3].T + w2c[i, :3, 3]) @ Kc.T
                    lm2 = P[:, :2] / P[:, 2:3]
                    lips, opening, width = np.full((len(LIP_CONTOUR), 2), np.nan), np.nan, np.nan
                else:
                    p = (points[i][:, :2] - [x0, y0]) * scale
                    masks = face_masks(p, fg)
                    lm2 = p[lm_idx]
                    lips, opening, width = p[list(LIP_CONTOUR)], mouth_opening(p), mouth_width(p)
                visible = np.full(len(names), i not in drop) & (lm2 >= 0).all(1) & (lm2 < size).all(1)
                gt = {"landmarks_2d": lm2.astype(np.float32), "landmarks_visible": visible,
                      "face_found": i not in drop, "lips_2d": lips.astype(np.float32),
                      "mouth_opening": np.float32(opening), "mouth_width": np.float32(width),
                      "tracking_error_px": np.float32(err[i] * scale if np.isfinite(err[i]) else np.nan)}
                pending.append((pool.submit(writer.encode_frame, img, masks), w2c[i], gt))
                while len(pending) > 8 or (pending and pending[0][0].done()):
                    enc, view, g = pending.pop(0)
                    writer.add_encoded_frame(enc.result(), Kc, view, g)
                bar.update(1)
            for enc, view, g in pending:
                writer.add_encoded_frame(enc.result(), Kc, view, g)
        timings["writing"] = time.perf_counter() - t_start - timings["tracking"] - timings["pose"]
        kept = [i for i in range(N) if i not in drop]
        try:
            splits = tail_splits(kept, heldout, min_train=1)
        except ValueError as exc:
            raise PreprocessError(f"--heldout: {exc} (after dropping {len(drop)} frames without a usable face)") \
                from None
        angles = head_angles(w2c[kept])
        summary = Summary(out=str(out), frames=N, kept=len(kept), dropped=dropped, seconds=N / fps,
                          source_fps=round(info.source_fps, 3), focal_px=round(focal_px, 1),
                          focal_estimated=focal is None, crop=[x0, y0, side],
                          registration_rms_mm=round(reg_rms * 1000, 2),
                          reprojection_px=round(med, 3),
                          yaw_deg=[float(angles[:, 0].min()), float(angles[:, 0].max())],
                          pitch_deg=[float(angles[:, 1].min()), float(angles[:, 1].max())],
                          roll_deg=[float(angles[:, 2].min()), float(angles[:, 2].max())],
                          faces_seen=tracker.faces_seen, notes=notes,
                          timings_s={k: round(v, 2) for k, v in timings.items()})
        writer.meta["source"] = {
            "kind": "photo" if photo else "video", "input": video.name, "sha256": _sha256(video),
            "settings": {"fps": fps, "size": size, "focal": focal, "image_format": image_format,
                         "heldout": heldout, "allow_silent": allow_silent, "smooth": smooth,
                         "feature_rounds": feature_rounds},
            "video": {"width": info.width, "height": info.height, "fps": round(info.source_fps, 3),
                      "frames": info.num_source_frames, "seconds": round(info.duration, 3),
                      "rotation": info.rotation, "audio_rate": info.audio_rate},
            "tracking": {k: v for k, v in asdict(summary).items() if k not in ("out", "elapsed_s")},
            "tracker": "mediapipe face mesh 0.10 (478 points) + selfie segmentation",
        }
        writer.close(audio=samples, sample_rate=rate, splits=splits, landmark_names=names)
    except BaseException:
        writer.abort()
        raise
    # the shoulders' own motion, measured on the written frames and masks (gt.npz torso_shift)
    add_torso_track(out, progress=not quiet)
    summary.timings_s["torso"] = round(time.perf_counter() - t_start - sum(timings.values()), 2)
    summary.elapsed_s = round(time.perf_counter() - t_start, 2)
    return summary
