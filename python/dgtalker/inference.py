"""How a talker turns speech into frames: offline (``render_talker``) and streaming
(``stream_talker``), with every argument checked before any work.

``Talker.render`` / ``Talker.stream`` call these, and ``dgtalker.render`` (the verb)
wraps them; this module imports neither, so imports run one way (talker.py and
render.py import this module, never the reverse).

Time, not frame index: output frame i is at ``i / fps``. The audio encoder reads its
neighbour frames at its own training spacing (``AudioEncoder.coefficients_at``), and
sampled expressions, blinks and dataset cameras are read at ``t`` times their own rate,
so a video at 50 fps blinks as often as one at 25 fps, and the causal look-ahead is
``causal_encoder.lookahead_seconds()`` (<= 0.2 s) at any fps.
"""
from __future__ import annotations

import numbers
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import audio as A
from .camera import Camera, CameraError, check_size
from .io import check_output_path


class RenderError(ValueError):
    """Bad input to render: the message names the argument and the problem."""


VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov")  # the containers Video.save's mp4 (h264 + aac) is valid as


@dataclass
class Video:
    frames: torch.Tensor            # uint8 [T, H, W, 3]
    alpha: torch.Tensor             # float32 [T, H, W]
    fps: float
    audio: tuple                    # (float32 samples [S], rate)

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    def save(self, path, *, crf: int = 18) -> Path:
        """Writes an mp4 (h264 video, aac audio of the speech) atomically; ``path`` ends in
        one of ``VIDEO_SUFFIXES``."""
        from .data.format import ffmpeg_exe

        path = check_output_path(path, "the video path", VIDEO_SUFFIXES)
        import soundfile as sf

        T, H, W, _ = self.frames.shape
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmp:
            wav = Path(tmp) / "audio.wav"
            samples, rate = self.audio
            sf.write(str(wav), np.clip(np.asarray(samples, np.float32), -1, 1), int(rate), subtype="PCM_16")
            out = Path(tmp) / "video.mp4"
            cmd = [ffmpeg_exe(), "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{W}x{H}",
                   "-r", f"{self.fps:g}", "-i", "-", "-i", str(wav), "-c:v", "libx264", "-pix_fmt", "yuv420p",
                   "-crf", str(crf), "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-c:a", "aac", "-b:a", "128k",
                   "-shortest", "-movflags", "+faststart", str(out)]
            res = subprocess.run(cmd, input=self.frames.cpu().numpy().tobytes(), capture_output=True)
            if res.returncode != 0:
                raise RuntimeError(f"ffmpeg could not write {path}: {res.stderr.decode(errors='replace')[-300:]}")
            os.chmod(out, 0o644)
            os.replace(out, path)
        return path

    def contact_sheet(self, path, *, count: int = 8, columns: int = 4) -> Path:
        """A PNG of ``count`` frames spread over the video."""
        from .io import atomic_write_bytes, encode_image

        path = check_output_path(path, "the contact sheet's path", (".png",))
        T = len(self)
        idx = np.linspace(0, T - 1, min(count, T)).round().astype(int)
        tiles = [self.frames[i] for i in idx]
        while len(tiles) % columns:
            tiles.append(torch.full_like(tiles[0], 255))
        rows = [torch.cat(tiles[r:r + columns], 1) for r in range(0, len(tiles), columns)]
        atomic_write_bytes(path, encode_image(torch.cat(rows, 0).cpu().numpy(), "png"))
        return path


# ----------------------------------------------------------------------------------
# argument checks (all of them run before any audio is analysed or frame rendered)


speech = A.speech  # (16 kHz samples, 16000) of any accepted speech; errors name the argument


def check_fps(fps) -> float:
    if isinstance(fps, (bool, np.bool_)) or not isinstance(fps, numbers.Real) or not 0 < float(fps) <= 240:
        raise RenderError(f"fps must be a number in (0, 240], got {fps!r}")
    return float(fps)


def check_number(name: str, v, lo: float | None = None, hi: float | None = None) -> float:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real) or not np.isfinite(float(v)):
        raise RenderError(f"{name} must be a finite number, got {v!r}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise RenderError(f"{name} must be in [{lo:g}, {hi:g}], got {v!r}")
    return float(v)


def check_flag(name: str, v) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        raise RenderError(f"{name} must be True or False, got {v!r}")
    return bool(v)


def check_positive_int(name: str, v) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < 1:
        raise RenderError(f"{name} must be a positive int, got {v!r}")
    return int(v)


def check_device(device, default: torch.device) -> torch.device:
    """``device`` as a torch.device that exists on this machine (None: ``default``)."""
    if device is None:
        return default
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise RenderError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RenderError(f"device {device!r}: this machine has no CUDA device (torch.cuda.is_available() is "
                              "False); use device='cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise RenderError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif dev.type != "cpu":
        raise RenderError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return dev


IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}


class BackgroundVideo:
    """A background video decoded at the render's size and frame rate (uint8 frames; frame
    i is the video at time i / fps; a video shorter than the speech loops)."""

    def __init__(self, path: Path, width: int, height: int, fps: float):
        from .data.format import ffmpeg_exe

        cmd = [ffmpeg_exe(), "-v", "error", "-i", str(path), "-an", "-vf",
               f"fps={fps:g},scale={width}:{height}:flags=area", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
        res = subprocess.run(cmd, capture_output=True)
        n = len(res.stdout) // (width * height * 3)
        if res.returncode != 0 or n == 0:
            why = res.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no video frames"]
            raise RenderError(f"background {path}: not a readable image or video ({why[0][:200]})")
        self.frames = torch.from_numpy(np.frombuffer(res.stdout, np.uint8)[: n * width * height * 3]
                                       .reshape(n, height, width, 3).copy())
        self.path = path

    def __len__(self) -> int:
        return len(self.frames)

    def at(self, frames, device) -> torch.Tensor:
        """Backgrounds ``[B, H, W, 3]`` in [0, 1] of output frames ``frames`` (ints)."""
        idx = torch.as_tensor(np.asarray(frames, np.int64) % len(self.frames))
        return self.frames[idx].to(device).float() / 255


def load_background_image(path: Path, width: int, height: int) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)
            return torch.from_numpy(np.asarray(im, np.float32) / 255)
    except (UnidentifiedImageError, OSError) as exc:
        raise RenderError(f"background {path}: not a readable image ({exc})") from None


def check_background(background, width: int, height: int, fps: float = 25.0):
    """None (the talker's plate), an RGB colour ``[3]`` or an image ``[H, W, 3]`` in [0, 1],
    or the path of an image or a video (resized to the frame; a video plays at its own
    speed and loops; ``BackgroundVideo``)."""
    if background is None:
        return None
    if isinstance(background, (str, os.PathLike)):
        path = Path(background)
        if not path.is_file():
            raise RenderError(f"background {path}: no such file" if not path.exists() else
                              f"background {path}: not a file")
        if path.stat().st_size == 0:
            raise RenderError(f"background {path}: the file is empty")
        if path.suffix.lower() in IMAGE_EXTS:
            return load_background_image(path, width, height)
        return BackgroundVideo(path, width, height, fps)
    try:
        bg = torch.as_tensor(np.asarray(background, np.float32))
    except (TypeError, ValueError):
        raise RenderError(f"background must be an RGB colour [3] or an image [{height}, {width}, 3] in [0, 1], "
                          f"got {type(background).__name__}") from None
    if bg.shape not in ((3,), (height, width, 3)):
        raise RenderError(f"background must be an RGB colour [3] or an image [{height}, {width}, 3] in [0, 1], "
                          f"got shape {list(bg.shape)}")
    if not bool(torch.isfinite(bg).all()) or bool((bg < 0).any() or (bg > 1).any()):
        raise RenderError(f"background values must be finite and in [0, 1] (got {float(bg.min()):g} to "
                          f"{float(bg.max()):g}; divide 8-bit colours by 255)")
    return bg


def blink_setting(blink):
    """``render``'s and ``stream``'s ``blink`` checked: ``"sample"`` (the training clip's
    blinks, excerpted with ``seed`` as ``Talker.sample_expression`` does, so they match
    ``expression="sample"`` of the same seed), None (no eyelid layer: the eyes stay
    open), or amounts in [0, 1]: one number, or one per frame (0 open, 1 closed)."""
    if blink is None or (isinstance(blink, str) and blink == "sample"):
        return blink
    if isinstance(blink, str):
        raise RenderError(f"blink must be 'sample', None, a number or per-frame amounts, got {blink!r}")
    try:
        b = torch.as_tensor(np.asarray(blink, np.float32))
    except (TypeError, ValueError):
        raise RenderError(f"blink must be 'sample', None, a number or per-frame amounts, got "
                          f"{type(blink).__name__}") from None
    if b.dim() > 1 or not bool(torch.isfinite(b).all()):
        raise RenderError(f"blink must be a finite number or per-frame amounts [N] (0 open, 1 closed), got "
                          f"{list(b.shape)}")
    if bool((b < 0).any() or (b > 1).any()):
        raise RenderError(f"blink amounts must be in [0, 1] (0 open, 1 closed), got {float(b.min()):g} to "
                          f"{float(b.max()):g}")
    return b


def check_seed(seed):
    if seed is not None and (isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer))):
        raise RenderError(f"seed must be None or an int, got {seed!r}")
    return None if seed is None else int(seed)


def check_expression(expression, k_exp: int):
    """None, ``"sample"`` or finite coefficients ``[Ke]`` / ``[T, Ke]`` (T checked later)."""
    if expression is None or (isinstance(expression, str) and expression == "sample"):
        return expression
    if isinstance(expression, str):
        raise RenderError(f"expression must be None, 'sample' or coefficients [{k_exp}] / [T, {k_exp}], "
                          f"got {expression!r}")
    try:
        e = torch.as_tensor(np.asarray(expression.detach().cpu() if isinstance(expression, torch.Tensor)
                                       else expression, np.float32))
    except (TypeError, ValueError):
        raise RenderError(f"expression must be coefficients [{k_exp}] or [T, {k_exp}], got "
                          f"{type(expression).__name__}") from None
    if e.dim() not in (1, 2) or e.shape[-1] != k_exp or not bool(torch.isfinite(e).all()):
        raise RenderError(f"expression coefficients must be finite [{k_exp}] or [T, {k_exp}], got {list(e.shape)}")
    return e


def image_size(camera, talker, width, height) -> tuple[int, int]:
    """The output size: explicit ``width``/``height`` (both or neither), else the
    camera's (or dataset's) own size, else the talker's. A bare ``(viewmat, K)`` carries no size, so
    it needs explicit ``width`` and ``height`` (the image its K was made for)."""
    if (width is None) != (height is None):
        raise RenderError(f"pass both width and height or neither, got width={width!r}, height={height!r}")
    if width is not None:
        try:
            return check_size(width, height)
        except CameraError as exc:
            raise RenderError(str(exc)) from None
    if isinstance(camera, Camera):
        return camera.width, camera.height
    if _is_dataset(camera):
        return int(camera.width), int(camera.height)
    if camera is not None:
        raise RenderError("camera as a bare (viewmat, K) carries no image size: pass width= and height= (the size "
                          "its K was made for), or a dgtalker.camera.Camera (dgtalker.camera.orbit/spiral/path return "
                          "one)")
    return talker.config.width, talker.config.height


def _is_dataset(camera) -> bool:
    return all(hasattr(camera, k) for k in ("w2c", "K", "width", "height", "fps"))


def as_camera(camera, talker, width: int, height: int) -> Camera:
    """Any accepted camera form as a ``Camera`` of ``width x height`` images."""
    try:
        if camera is None:
            cam = talker.camera()
        elif isinstance(camera, Camera):
            cam = camera
        elif _is_dataset(camera):
            cam = Camera.from_dataset(camera)
        elif isinstance(camera, (tuple, list)) and len(camera) == 2:
            cam = Camera(camera[0], camera[1], width, height)  # its K is for the size the caller gave
        else:
            raise RenderError("camera must be None, a dgtalker.camera.Camera, (viewmat, K) with width= and height=, "
                              "or a dataset")
        cam = cam.resized(width, height)
    except CameraError as exc:
        raise RenderError(f"camera: {exc}") from None
    depth = cam.viewmats[:, 2, 3]  # camera-space depth of the head frame's origin (the skull centre)
    if bool((depth <= 0.05).any()):
        raise RenderError(f"camera: the head is behind (or inside) {int((depth <= 0.05).sum())} camera(s); "
                          "viewmats are world(head)-to-camera, OpenCV axes (z forward)")
    return cam


def frame_cameras(cam: Camera, num_frames: int, fps: float):
    """``(viewmats [T, 4, 4], Ks [T, 3, 3], torso offsets [T, 2] or None)`` of output frames
    at ``fps``, by time."""
    try:
        idx = torch.from_numpy(cam.indices(num_frames, fps))
    except CameraError as exc:
        raise RenderError(f"camera: {exc}") from None
    torso = None if cam.torso_offsets is None else cam.torso_offsets[idx].contiguous()
    return cam.viewmats[idx].contiguous(), cam.Ks[idx].contiguous(), torso


# ----------------------------------------------------------------------------------
# speech -> coefficients, at any output rate


def speech_coefficients(talker, samples: np.ndarray, num_frames: int, fps: float, *, causal: bool = False,
                        steady: bool = True):
    """``(c_exp [T, Ke], c_lip [T, Kl])`` of 16 kHz ``samples`` for ``num_frames`` frames at
    ``fps``; ``steady``: with the talker's steady mouth motion (``Talker.steady_lips``)."""
    enc = talker.causal_encoder if causal else talker.encoder
    feats, start = talker.speech_features(A.log_mel(samples), causal=causal)
    times = np.arange(num_frames) / fps
    with torch.no_grad():
        c_exp, c_lip = enc.coefficients_at(feats, times, float(times[-1]), mel_start=start,
                                           mel_limit=start + len(feats))
        return c_exp, talker.steady_lips(c_lip, fps, causal=causal) if steady else c_lip


class _MelFeatures:
    """A stream's encoder features without a front end: the log-mel frames themselves."""

    def __init__(self):
        self.mel = A.MelStream()

    def push(self, samples):
        self.mel.push(samples)

    def flush(self):
        self.mel.flush()

    @property
    def num_samples(self):
        return self.mel.num_samples

    @property
    def rows(self):
        return self.mel.mel

    @property
    def start(self):
        return self.mel.start

    @property
    def known(self):   # rows [start, known) are final; frames from `limit` on read as silence
        return self.mel.total

    @property
    def limit(self):
        return self.mel.total

    def drop_before(self, j):
        self.mel.drop_before(j)


class _FrontEndFeatures:
    """A stream's encoder features with the talker's speech front end, equal to
    ``Talker.speech_features(mel, causal=True)`` of the whole audio: log-mel normalised
    causally with running statistics, padded with silence, and the front end's network run
    over each new stretch with its receptive field of history (memory stays flat)."""

    def __init__(self, talker):
        from .audio.frontend import RunningNormaliser
        from .talker import padding_silence

        self.talker = talker
        self.cfg = talker.config.frontend_config()
        self.pad = talker.encoder.config.half_window
        self.silence = padding_silence(self.pad)
        self.mel = A.MelStream()
        self.start = -self.pad                     # absolute mel index of rows[0] (padding first)
        self.raw = np.zeros((0, A.N_MELS), np.float32)      # padded log-mel from `normed_start` on ...
        self.normed = np.zeros((0, A.N_MELS), np.float32)   # ... and the same frames normalised
        self.normed_start = -self.pad
        self.normalise = RunningNormaliser(A.N_MELS, talker.config.level_window)
        self.rows = np.zeros((0, A.N_MELS + self.cfg.embed + 2), np.float32)
        self.known = -self.pad                     # feature rows [start, known) are final
        self.limit = None
        self._take(*self.silence)

    @property
    def num_samples(self):
        return self.mel.num_samples

    def _take(self, raw_rows, normed_rows, final: bool = False):
        """Appends new padded-mel rows and the same normalised, then runs the network on
        every frame whose look-ahead is now known (all of them when ``final``)."""
        if len(raw_rows):
            self.normed = np.concatenate([self.normed, normed_rows])
            self.raw = np.concatenate([self.raw, raw_rows.astype(np.float32)])
        end = self.normed_start + len(self.normed)              # frames normalised so far
        upto = end if final else end - self.cfg.lookahead_frames  # frames whose outputs are final
        if upto <= self.known:
            return
        hist = self.cfg.history_frames
        a = max(self.normed_start, self.known - hist)
        y = self.talker.frontend_channels(self.normed[a - self.normed_start:])
        mel = self.normed if self.talker.config.normalised_mel else self.raw
        rows = np.concatenate([mel[self.known - self.normed_start:upto - self.normed_start],
                               y[self.known - a:upto - a]], 1)
        self.rows = np.concatenate([self.rows, rows]) if len(self.rows) else rows
        self.known = upto
        # the network's history: frames before known - hist are never read again
        keep = self.known - hist
        if keep > self.normed_start:
            self.normed = self.normed[keep - self.normed_start:]
            self.raw = self.raw[keep - self.normed_start:]
            self.normed_start = keep

    def _speech(self, mel_rows, final: bool = False):
        self._take(mel_rows, self.normalise(mel_rows) if len(mel_rows) else mel_rows, final)

    def push(self, samples):
        before = self.mel.total
        self.mel.push(samples)
        self._speech(self.mel.mel[before - self.mel.start:self.mel.total - self.mel.start])
        self.mel.drop_before(self.mel.total)

    def flush(self):
        before = self.mel.total
        self.mel.flush()
        self._speech(self.mel.mel[before - self.mel.start:self.mel.total - self.mel.start])
        self._take(*self.silence, final=True)
        self.limit = self.known

    def drop_before(self, j):
        j = min(max(self.start, int(j)), self.known)
        if j > self.start:
            self.rows = self.rows[j - self.start:]
            self.start = j


def track_at(track: torch.Tensor, num_frames: int, fps: float, track_fps: float) -> torch.Tensor:
    """Rows of a track recorded at ``track_fps`` read at the times of ``num_frames`` frames at ``fps``."""
    idx = np.floor(np.arange(num_frames) * (track_fps / fps) + 1e-6).astype(np.int64)
    return track[torch.from_numpy(np.minimum(idx, len(track) - 1)).to(track.device)]


def sampled_tracks(talker, num_frames: int, fps: float, seed) -> tuple[torch.Tensor, torch.Tensor]:
    """``(residual [T, Ke], blink [T])`` sampled with ``seed`` at the talker's own rate and
    read at the times of ``num_frames`` frames at ``fps`` (the same motion at any fps)."""
    tfps = float(talker.config.fps)
    n = int(np.floor((num_frames - 1) * tfps / fps + 1e-6)) + 1
    resid, blink = talker.sample_expression(n, seed=seed)
    return track_at(resid, num_frames, fps, tfps), track_at(blink, num_frames, fps, tfps)


# ----------------------------------------------------------------------------------
# offline


def render_talker(talker, audio, camera=None, *, fps: float = 25.0, expression=None, seed=None, blink="sample",
                  lip_scale: float = 1.0, exp_scale: float = 1.0, background=None, device=None,
                  sample_rate=None, width: int | None = None, height: int | None = None, batch: int = 16,
                  causal: bool = False, steady: bool = True, progress: bool = False) -> Video:
    """See ``Talker.render``."""
    from tqdm import tqdm

    # every argument first: nothing is analysed or rendered for a call that would fail
    fps = check_fps(fps)
    W, H = image_size(camera, talker, width, height)
    cam = as_camera(camera, talker, W, H)
    lip_scale, exp_scale = check_number("lip_scale", lip_scale), check_number("exp_scale", exp_scale)
    causal, steady, progress = (check_flag(n, v) for n, v in
                                (("causal", causal), ("steady", steady), ("progress", progress)))
    batch = check_positive_int("batch", batch)
    seed = check_seed(seed)
    dev = check_device(device, talker.device)
    blink = blink_setting(blink)
    expression = check_expression(expression, talker.config.k_exp)
    bg = check_background(background, W, H, fps)
    samples, rate = speech(audio, sample_rate)
    T = A.check_duration(len(samples), rate, fps, RenderError)
    vm, K, torso = frame_cameras(cam, T, fps)
    if isinstance(blink, torch.Tensor) and blink.dim() == 1 and blink.shape != (T,):
        raise RenderError(f"blink must be a number or [{T}] per-frame amounts (0 open, 1 closed), got "
                          f"{list(blink.shape)}")
    if isinstance(expression, torch.Tensor) and expression.dim() == 2 and expression.shape[0] != T:
        raise RenderError(f"expression coefficients must be [{talker.config.k_exp}] or [{T}, {talker.config.k_exp}], "
                          f"got {list(expression.shape)}")

    talker = talker.to(dev)
    c_exp, c_lip = speech_coefficients(talker, samples, T, fps, causal=causal, steady=steady)
    Ke = talker.config.k_exp
    sampled = None
    if expression == "sample" or blink == "sample":
        sampled = sampled_tracks(talker, T, fps, seed)
    if expression is None:
        resid = torch.zeros(T, Ke, device=dev)
    elif isinstance(expression, str):
        resid = sampled[0].to(dev)
    else:
        c_exp, resid = expression.to(dev).expand(T, -1).clone(), torch.zeros(T, Ke, device=dev)
    c_exp = (c_exp + resid) * exp_scale
    c_lip = c_lip * lip_scale
    blinks = None
    if isinstance(blink, str):
        blinks = sampled[1].to(dev)
    elif blink is not None:
        blinks = blink.expand(T).to(dev) if blink.dim() == 0 else blink.to(dev)
    bg = bg.to(dev) if isinstance(bg, torch.Tensor) else bg
    checked = True if dev.type == "cuda" else None  # a frame with missing splats must fail, not be saved
    frames = torch.empty(T, H, W, 3, dtype=torch.uint8)
    alphas = torch.empty(T, H, W)
    for s in tqdm(range(0, T, batch), desc="rendering", unit="batch", disable=not progress):
        e = slice(s, min(s + batch, T))
        args = (c_exp[e].to(dev), c_lip[e].to(dev), vm[e].to(dev), K[e].to(dev), W, H)
        back = bg.at(range(e.start, e.stop), dev) if isinstance(bg, BackgroundVideo) else bg
        kw = dict(blink=None if blinks is None else blinks[e], background=back, checked=checked)
        with torch.no_grad():
            if cam.torso == "clip":
                img, a = talker.clip_frames(*args, **kw, torso=None if torso is None else torso[e].to(dev))
            else:
                img, a = talker.frames(*args, **kw)
        frames[e] = (img.clamp(0, 1) * 255).round().to(torch.uint8).cpu()
        alphas[e] = a.cpu()
    return Video(frames, alphas, fps, (samples, rate))


# ----------------------------------------------------------------------------------
# streaming


def stream_talker(talker, chunks, camera=None, *, fps: float = 25.0, sample_rate: int = 16000,
                  width: int | None = None, height: int | None = None, device=None, blink="sample", seed=None,
                  background=None, steady: bool = True):
    """See ``Talker.stream``. Checks its arguments when called (before the first chunk)."""
    fps = check_fps(fps)
    rate = A.check_sample_rate(sample_rate)
    W, H = image_size(camera, talker, width, height)
    cam = as_camera(camera, talker, W, H)
    dev = check_device(device, talker.device)
    blink = blink_setting(blink)
    seed = check_seed(seed)
    bg = check_background(background, W, H, fps)
    steady = check_flag("steady", steady)
    return _stream(talker.to(dev), chunks, cam, fps, rate, W, H, dev, blink, seed, bg, steady)


def _stream(talker, chunks, cam: Camera, fps, rate, W, H, dev, blink, seed, bg, steady_motion: bool):
    enc = talker.causal_encoder
    cfg = enc.config
    resampler = A.StreamResampler(rate)
    feats = _MelFeatures() if talker.frontend is None else _FrontEndFeatures(talker)
    checked = True if dev.type == "cuda" else None
    state = {"done": 0}
    # the lip coefficients of the frames a causal steady_lips window still reads
    steady = talker.steady_frames(fps) if steady_motion else 0
    recent = []
    drawn = {"n": 0, "blink": None}  # sampled blinks so far: a longer draw starts with the shorter

    def blink_at(t: int):
        if blink is None:
            return None
        if isinstance(blink, str):
            if t >= drawn["n"]:
                n = max(2 * drawn["n"], t + 1, 250)
                drawn["n"], (_, drawn["blink"]) = n, sampled_tracks(talker, n, fps, seed)
            return drawn["blink"][t:t + 1].to(dev)
        if blink.dim() == 0:
            return blink.expand(1).to(dev)
        if t >= len(blink):
            raise RenderError(f"blink holds {len(blink)} per-frame amounts but the stream reached frame {t}")
        return blink[t:t + 1].to(dev)

    def camera_at(t: int):
        try:
            i = cam.index_at(t, fps)
        except CameraError as exc:
            raise RenderError(f"camera: {exc}") from None
        torso = None if cam.torso_offsets is None else cam.torso_offsets[i:i + 1].to(dev)
        return cam.viewmats[i:i + 1].to(dev), cam.Ks[i:i + 1].to(dev), torso

    def ready(t: int) -> bool:
        """Frame t's coefficients are final: every mel frame its windows read is known and
        none of its neighbours can reach past the clip's end."""
        nt = enc.neighbour_times(np.array([t / fps]), None)
        known_end = (A.num_video_frames(feats.num_samples, A.SAMPLE_RATE, fps) - 1) / fps
        return (int(A.mel_index(nt).max()) + cfg.lookahead_mel < feats.known) and float(nt.max()) <= known_end

    def frame(t: int, t_last: float | None):
        c_exp, c_lip = enc.coefficients_at(feats.rows, np.array([t / fps]), t_last, mel_start=feats.start,
                                           mel_limit=feats.limit if feats.limit is not None else feats.known)
        if steady:
            recent.append(c_lip)
            del recent[:-steady]
            c_lip = talker.steady_lips(torch.cat(recent), fps, causal=True)[-1:]
        v, k, torso = camera_at(t)
        args = (c_exp, c_lip, v, k, W, H)
        back = bg.at([t], dev) if isinstance(bg, BackgroundVideo) else (None if bg is None else bg.to(dev))
        kw = dict(blink=blink_at(t), background=back, checked=checked)
        img, _ = talker.clip_frames(*args, **kw, torso=torso) if cam.torso == "clip" else talker.frames(*args, **kw)
        # the earliest mel frame any later frame's windows can read
        first = int(A.mel_index(enc.neighbour_times(np.array([(t + 1) / fps]), t_last)).min()) - cfg.half_window
        feats.drop_before(first)
        return (img[0].clamp(0, 1) * 255).round().to(torch.uint8).cpu()

    with torch.no_grad():
        for chunk in chunks:
            feats.push(resampler.push(chunk))
            while ready(state["done"]):
                yield frame(state["done"], None)
                state["done"] += 1
        feats.push(resampler.flush())
        feats.flush()
        T = A.num_video_frames(feats.num_samples, A.SAMPLE_RATE, fps)
        while state["done"] < T:
            yield frame(state["done"], (T - 1) / fps)
            state["done"] += 1
