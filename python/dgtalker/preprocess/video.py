"""Reading a user's video: frames resampled to a fixed frame rate by their timestamps,
and the sound track cut to match (PyAV, which bundles ffmpeg's libraries).

Frame ``i`` of the output is the source frame on screen at time ``t0 + i / fps``, where
``t0`` is the first frame's timestamp: a 30 fps clip becomes 25 fps by dropping frames,
a variable-frame-rate phone clip by showing each frame for as long as it was shown.
The audio is read from the same ``t0`` (silence is added where the sound track starts
later than the picture), so sound and picture stay in sync.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


class VideoError(ValueError):
    """The input is not a readable video (or lacks what was asked of it); the message
    names the file."""


def _open(path: Path):
    try:
        import av
    except ImportError as exc:  # pragma: no cover - the extra is missing
        raise ImportError('reading videos needs PyAV: pip install ".[preprocess]"') from exc
    if not path.exists():
        raise VideoError(f"video: {path} does not exist")
    if path.is_dir():
        raise VideoError(f"video: {path} is a directory, not a video file")
    if path.stat().st_size == 0:
        raise VideoError(f"video: {path} is empty (0 bytes)")
    try:
        return av.open(str(path))
    except Exception as exc:  # noqa: BLE001 - PyAV raises many error types
        raise VideoError(f"video: {path} is not a readable video ({type(exc).__name__}: {exc})") from None


@dataclass
class VideoInfo:
    path: Path
    width: int            # as displayed (after any rotation the container asks for)
    height: int
    source_fps: float     # average frame rate of the file
    duration: float       # seconds of picture, from the first frame's timestamp
    start: float          # first frame's timestamp (s)
    num_source_frames: int
    rotation: int         # degrees the frames are turned for display (0, 90, 180, 270)
    has_audio: bool
    audio_rate: int | None
    audio_start: float | None
    still: np.ndarray | None = None  # a photo: its pixels (one frame, no sound)

    def frames_at(self, fps: float) -> int:
        """How many frames the clip has at ``fps``."""
        return max(0, int(np.floor(self.duration * fps + 1e-6)))


def _rotation(frame) -> int:
    """Clockwise display rotation of a frame in degrees (phones store portrait clips
    as landscape frames plus a display matrix; PyAV reports it counter-clockwise)."""
    rot = getattr(frame, "rotation", 0) or 0
    return int(round(-float(rot) / 90.0)) * 90 % 360


PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def _frame_times(path: Path) -> list[float]:
    """Every frame's timestamp (s), from the packets (no decoding); containers whose
    packets carry no timestamps are decoded instead. Containers' own frame counts and
    durations are often missing or wrong for variable frame rates."""
    with _open(path) as c:
        vs = c.streams.video[0]
        packets = [p for p in c.demux(vs) if p.size]
        if packets and all(p.pts is not None for p in packets):
            return [float(p.pts * vs.time_base) for p in packets]
    with _open(path) as c:
        vs = c.streams.video[0]
        vs.thread_type = "AUTO"
        times = []
        try:
            for frame in c.decode(vs):
                times.append(float(frame.time) if frame.time is not None else (times[-1] + 1 / 25 if times else 0.0))
        except Exception:  # noqa: BLE001 - a damaged tail: keep the frames before it
            pass
        return times


def probe(path, fps: float = 25.0) -> VideoInfo:
    """Open ``path``: its size, rotation, exact frame timestamps and sound track. A
    photo (by its suffix) becomes a one-frame clip without sound."""
    path = Path(path)
    if path.suffix.lower() in PHOTO_SUFFIXES and path.is_file():
        from PIL import Image, ImageOps, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                rgb = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
        except (UnidentifiedImageError, OSError) as exc:
            raise VideoError(f"video: {path} is not a readable image ({exc})") from None
        return VideoInfo(path=path, width=rgb.shape[1], height=rgb.shape[0], source_fps=fps, duration=1.0 / fps,
                         start=0.0, num_source_frames=1, rotation=0, has_audio=False, audio_rate=None,
                         audio_start=None, still=rgb)
    with _open(path) as c:
        if not c.streams.video:
            raise VideoError(f"video: {path} has no video stream"
                             + (" (it is an audio file)" if c.streams.audio else ""))
        vs = c.streams.video[0]
        try:
            first = next(c.decode(vs), None)
        except Exception as exc:  # noqa: BLE001
            raise VideoError(f"video: {path}: no frame could be decoded ({exc})") from None
        if first is None:
            raise VideoError(f"video: {path} has a video stream but no frames")
        w, h, rot = first.width, first.height, _rotation(first)
        a = c.streams.audio[0] if c.streams.audio else None
        audio_rate = int(a.rate) if a is not None else None
        audio_start = None
        if a is not None and a.start_time is not None and a.time_base is not None:
            audio_start = float(a.start_time * a.time_base)
    times = np.sort(np.asarray(_frame_times(path)))
    if not len(times):
        raise VideoError(f"video: {path} has a video stream but no frames")
    dts = np.diff(times)
    step = float(np.median(dts)) if len(dts) else 1 / 25
    if rot in (90, 270):
        w, h = h, w
    return VideoInfo(path=path, width=int(w), height=int(h), source_fps=float(1.0 / step) if step > 0 else 25.0,
                     duration=float(times[-1] - times[0] + step), start=float(times[0]),
                     num_source_frames=len(times), rotation=rot, has_audio=a is not None,
                     audio_rate=audio_rate, audio_start=audio_start)


def square_window(img: np.ndarray, x0: int, y0: int, side: int, *, edge: bool = False) -> np.ndarray:
    """The ``side`` x ``side`` window of ``img [H, W, C]`` whose top-left corner is
    ``(x0, y0)`` (may lie outside the frame): padded with zeros, or with the edge
    colours when ``edge`` (a crop that is kept should not show black borders)."""
    H, W = img.shape[:2]
    pad = max(0, -x0, -y0, x0 + side - W, y0 + side - H)
    if pad:
        img = np.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode="edge" if edge else "constant")
    return img[y0 + pad:y0 + pad + side, x0 + pad:x0 + pad + side]


def _turn(img: np.ndarray, rotation: int) -> np.ndarray:
    """The frame as displayed: turned ``rotation`` degrees clockwise."""
    return np.ascontiguousarray(np.rot90(img, -(rotation // 90))) if rotation else img


def frames(info: VideoInfo, fps: float, count: int | None = None):
    """Yield ``(i, rgb uint8 [H, W, 3])`` for output frames ``0..count-1`` at ``fps``:
    each is the source frame shown at ``start + i / fps`` (the latest frame whose
    timestamp is not after that time, with half a millisecond of slack for rounding)."""
    n = info.frames_at(fps) if count is None else int(count)
    if n <= 0:
        return
    if info.still is not None:
        for i in range(n):
            yield i, info.still
        return
    with _open(info.path) as c:
        vs = c.streams.video[0]
        vs.thread_type = "AUTO"
        i, held = 0, None
        for frame in c.decode(vs):
            t = float(frame.time) if frame.time is not None else None
            while i < n and t is not None and t > info.start + i / fps + 5e-4:
                if held is None:  # the very first frame is later than its slot
                    held = _turn(frame.to_ndarray(format="rgb24"), info.rotation)
                yield i, held
                i += 1
            if i >= n:
                return
            held = _turn(frame.to_ndarray(format="rgb24"), info.rotation)
        while i < n and held is not None:  # the last frame stays on screen to the end
            yield i, held
            i += 1


def prefetch(items, transform=None, depth: int = 6):
    """Iterate ``items`` (e.g. ``frames(...)``) in a background thread, applying
    ``transform(i, img)`` there, ``depth`` ahead: decoding (which releases the GIL)
    overlaps with the caller's work on the other core."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def work():
        try:
            for i, img in items:
                if stop.is_set():
                    return
                q.put((i, transform(i, img) if transform else img))
            q.put(done)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            q.put(exc)

    t = threading.Thread(target=work, daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while t.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                t.join(0.05)


def audio(info: VideoInfo, fps: float, count: int):
    """The sound track from the first frame's time for ``count / fps`` seconds, mono
    float32 at the track's own rate: ``(samples, rate)``."""
    import av

    rate = int(info.audio_rate)
    want = int(round(count / fps * rate))
    chunks = []
    with _open(info.path) as c:
        a = c.streams.audio[0]
        res = av.AudioResampler(format="flt", layout="mono", rate=rate)
        first_time = None
        try:
            for frame in c.decode(a):
                if first_time is None and frame.time is not None:
                    first_time = float(frame.time)
                for out in res.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in res.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
        except Exception as exc:  # noqa: BLE001
            if not chunks:
                raise VideoError(f"video: {info.path}: its sound track could not be decoded ({exc})") from None
    x = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    first_time = info.audio_start if first_time is None else first_time
    offset = int(round(((first_time or info.start) - info.start) * rate))  # >0: sound starts late
    if offset > 0:
        x = np.concatenate([np.zeros(offset, np.float32), x])
    elif offset < 0:
        x = x[-offset:]
    if len(x) < want:
        x = np.concatenate([x, np.zeros(want - len(x), np.float32)])
    return x[:want], rate
