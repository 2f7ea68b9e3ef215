"""The inference API: speech (+ cameras) -> a talking-head video.

    import dgtalker
    talker = dgtalker.load_talker("id007.safetensors")
    video = talker.render("speech.wav", dgtalker.camera.spiral(100, width=512, height=512))
    video.save("talk.mp4")                    # h264 + aac, the speech muxed in sync
    video.frames                              # uint8 [T, H, W, 3]

Frames come at ``fps`` for the whole speech (``ceil(duration * fps)`` frames). The
audio may be a path (anything ffmpeg reads), ``(samples, rate)``, or a 1-D array with
``sample_rate=``. The camera may be None (the talker's own framing), one
``(viewmat [4, 4], K [3, 3])`` for every frame, per-frame ``(viewmats [T, 4, 4],
Ks [T, 3, 3])`` (a ``dgtalker.camera`` path returns these), or a dataset (its own
tracked cameras, frame by frame; the torso then follows that clip's head motion).
"""
from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


class RenderError(ValueError):
    """Bad input to render: the message names the argument and the problem."""


@dataclass
class Video:
    frames: torch.Tensor            # uint8 [T, H, W, 3]
    alpha: torch.Tensor             # float32 [T, H, W]
    fps: float
    audio: tuple                    # (float32 samples [S], rate)

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    def save(self, path, *, crf: int = 18) -> Path:
        """Writes an mp4 (h264 video, aac audio of the speech) atomically."""
        from .data.format import ffmpeg_exe

        path = Path(path)
        if path.is_dir():
            raise IsADirectoryError(f"path must be a file path, got the directory {path}")
        if not path.parent.is_dir():
            raise FileNotFoundError(f"the directory of path does not exist: {path.parent}")
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

        T = len(self)
        idx = np.linspace(0, T - 1, min(count, T)).round().astype(int)
        tiles = [self.frames[i] for i in idx]
        while len(tiles) % columns:
            tiles.append(torch.full_like(tiles[0], 255))
        rows = [torch.cat(tiles[r:r + columns], 1) for r in range(0, len(tiles), columns)]
        path = Path(path)
        atomic_write_bytes(path, encode_image(torch.cat(rows, 0).cpu().numpy(), "png"))
        return path


def speech(audio, sample_rate=None) -> tuple[np.ndarray, int]:
    """(mono float32 samples, rate) of a path, a ``(samples, rate)`` pair or an array."""
    from . import audio as A

    if isinstance(audio, (str, os.PathLike)):
        if sample_rate is not None:
            raise RenderError("sample_rate is only for array audio; a file carries its own rate")
        return A.load(audio, sample_rate=A.SAMPLE_RATE)
    if isinstance(audio, tuple):
        if len(audio) != 2 or sample_rate is not None:
            raise RenderError("audio as a tuple must be (samples, rate), with no sample_rate= argument")
        audio, sample_rate = audio
    if sample_rate is None:
        raise RenderError("audio given as an array needs sample_rate= (or pass (samples, rate))")
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu().numpy()
    samples = A._check_samples(audio, "audio")
    if not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise RenderError(f"sample_rate must be a positive int, got {sample_rate!r}")
    if samples.size == 0:
        raise RenderError("audio is empty")
    return A.resample(samples, int(sample_rate), A.SAMPLE_RATE), A.SAMPLE_RATE


def cameras(camera, talker, num_frames: int, width: int, height: int):
    """(viewmats [T, 4, 4], Ks [T, 3, 3], body [T, 4, 4] or None) for every frame."""
    from .camera import resize_intrinsics
    from .talker import body_transforms

    body = None
    if camera is None:
        vm, K = talker.camera(width, height)
        vm, K = vm[None], K[None]
    elif hasattr(camera, "w2c") and hasattr(camera, "K") and hasattr(camera, "width"):  # a dataset
        n = len(camera.w2c)
        idx = np.minimum(np.arange(num_frames), n - 1)
        vm = torch.as_tensor(camera.w2c[idx], dtype=torch.float32)
        K = resize_intrinsics(torch.as_tensor(camera.K[idx], dtype=torch.float32), camera.width, camera.height,
                              width, height)
        body = body_transforms(vm, talker.body_w2c.cpu())
    else:
        if not (isinstance(camera, (tuple, list)) and len(camera) == 2):
            raise RenderError("camera must be None, (viewmat, K), (viewmats [T,4,4], Ks [T,3,3]) or a dataset")
        vm, K = (torch.as_tensor(np.asarray(c) if not isinstance(c, torch.Tensor) else c, dtype=torch.float32)
                 for c in camera)
        if vm.shape == (4, 4):
            vm = vm[None]
        if K.shape == (3, 3):
            K = K[None]
        if vm.dim() != 3 or vm.shape[1:] != (4, 4) or K.dim() != 3 or K.shape[1:] != (3, 3):
            raise RenderError(f"camera must hold viewmats [4,4] or [T,4,4] and Ks [3,3] or [T,3,3], got "
                              f"{list(vm.shape)} and {list(K.shape)}")
    if vm.shape[0] == 1:
        vm, K = vm.expand(num_frames, -1, -1), K.expand(num_frames, -1, -1)
    elif K.shape[0] == 1:
        K = K.expand(vm.shape[0], -1, -1)
    if vm.shape[0] != num_frames or K.shape[0] != num_frames:
        raise RenderError(f"camera has {vm.shape[0]} viewmats and {K.shape[0]} Ks but the speech makes "
                          f"{num_frames} frames (one camera for all, or one per frame)")
    if not bool(torch.isfinite(vm).all() and torch.isfinite(K).all()):
        raise RenderError("camera contains NaN or inf")
    depth = vm[:, 2, 3]  # camera-space depth of the head frame's origin (the skull centre)
    if bool((depth <= 0.05).any()):
        raise RenderError(f"camera: the head is behind (or inside) {int((depth <= 0.05).sum())} camera(s); "
                          "viewmats are world(head)-to-camera, OpenCV axes (z forward)")
    return vm.contiguous(), K.contiguous(), body


def blink_setting(blink):
    """``render``'s and ``stream``'s ``blink`` checked: ``"sample"`` (the training clip's
    blinks, excerpted with ``seed`` as ``Talker.sample_expression`` does, so they match
    ``expression="sample"`` of the same seed), None (no eyelid layer: the eyes stay
    open), or a finite float tensor: one amount, or one per frame (0 open, 1 closed)."""
    if blink is None or (isinstance(blink, str) and blink == "sample"):
        return blink
    if isinstance(blink, str):
        raise RenderError(f"blink must be 'sample', None, a number or per-frame amounts, got {blink!r}")
    b = torch.as_tensor(np.asarray(blink, np.float32))
    if b.dim() > 1 or not bool(torch.isfinite(b).all()):
        raise RenderError(f"blink must be a finite number or per-frame amounts [N] (0 open, 1 closed), got "
                          f"{list(b.shape)}")
    return b


def blink_amounts(talker, blink, num_frames: int, seed, device) -> torch.Tensor | None:
    """Per-frame eyelid amounts ``[T]`` (or None) of ``render``'s ``blink`` (``blink_setting``)."""
    blink = blink_setting(blink)
    if blink is None:
        return None
    if isinstance(blink, str):
        return talker.sample_expression(num_frames, seed=seed)[1].to(device)
    if blink.dim() == 0:
        blink = blink.expand(num_frames)
    if blink.shape != (num_frames,):
        raise RenderError(f"blink must be a number or [{num_frames}] per-frame amounts (0 open, 1 closed), got "
                          f"{list(blink.shape)}")
    return blink.to(device)


def render_talker(talker, audio, camera=None, *, fps: float = 25.0, expression=None, seed=None, blink="sample",
                  lip_scale: float = 1.0, exp_scale: float = 1.0, background=None, device=None,
                  sample_rate=None, width: int | None = None, height: int | None = None, batch: int = 16,
                  causal: bool = False, progress: bool = False) -> Video:
    """See ``Talker.render``."""
    from tqdm import tqdm

    from . import audio as A

    samples, rate = speech(audio, sample_rate)
    fps = A._check_fps(fps)
    if len(samples) < rate / fps:
        raise RenderError(f"audio is {1000 * len(samples) / rate:.0f} ms long, shorter than one video frame "
                          f"({1000 / fps:.0f} ms at {fps:g} fps)")
    W = int(width or talker.config.width)
    H = int(height or talker.config.height)
    for name, v in (("lip_scale", lip_scale), ("exp_scale", exp_scale)):
        if not (isinstance(v, (int, float)) and np.isfinite(v)):
            raise RenderError(f"{name} must be a finite number, got {v!r}")
    enc = talker.causal_encoder if causal else talker.encoder
    feats = A.features(samples, rate, fps=fps, context=enc.config.half_window / 100.0)
    T = len(feats)
    dev = torch.device(device) if device is not None else talker.device
    talker = talker.to(dev)
    vm, K, body = cameras(camera, talker, T, W, H)
    with torch.no_grad():
        c_exp, c_lip = talker.coefficients(torch.from_numpy(feats.windows), causal=causal)
    Ke = talker.config.k_exp
    if expression is None:
        resid = torch.zeros(T, Ke, device=dev)
    elif isinstance(expression, str):
        if expression != "sample":
            raise RenderError(f"expression must be None, 'sample' or coefficients [Ke] / [T, Ke], got {expression!r}")
        resid = talker.sample_expression(T, seed=seed)[0].to(dev)
    else:
        e = torch.as_tensor(np.asarray(expression) if not isinstance(expression, torch.Tensor) else expression,
                            dtype=torch.float32, device=dev)
        if e.shape == (Ke,):
            e = e.expand(T, -1)
        if e.shape != (T, Ke) or not bool(torch.isfinite(e).all()):
            raise RenderError(f"expression coefficients must be finite [{Ke}] or [{T}, {Ke}], got {list(e.shape)}")
        c_exp, resid = e.clone(), torch.zeros(T, Ke, device=dev)
    c_exp = c_exp + resid
    blinks = blink_amounts(talker, blink, T, seed, dev)
    c_exp, c_lip = c_exp * exp_scale, c_lip * lip_scale
    bg = None
    if background is not None:
        bg = torch.as_tensor(np.asarray(background, np.float32)).to(dev)
        if bg.shape not in ((3,), (H, W, 3)) or not bool(torch.isfinite(bg).all()):
            raise RenderError(f"background must be an RGB colour [3] or an image [{H}, {W}, 3] in [0, 1], "
                              f"got {list(bg.shape)}")
    frames = torch.empty(T, H, W, 3, dtype=torch.uint8)
    alphas = torch.empty(T, H, W)
    for s in tqdm(range(0, T, batch), desc="rendering", unit="batch", disable=not progress):
        e = slice(s, min(s + batch, T))
        with torch.no_grad():
            img, a = talker.frames(c_exp[e].to(dev), c_lip[e].to(dev), vm[e].to(dev), K[e].to(dev), W, H,
                                   body=None if body is None else body[e].to(dev),
                                   blink=None if blinks is None else blinks[e], background=bg)
        frames[e] = (img.clamp(0, 1) * 255).round().to(torch.uint8).cpu()
        alphas[e] = a.cpu()
    return Video(frames, alphas, fps, (samples, rate))


def stream_talker(talker, chunks, camera=None, *, fps: float = 25.0, sample_rate: int = 16000,
                  width: int | None = None, height: int | None = None, device=None, blink="sample", seed=None):
    """See ``Talker.stream``."""
    from collections import deque

    from . import audio as A

    enc = talker.causal_encoder
    cfg = enc.config
    W = int(width or talker.config.width)
    H = int(height or talker.config.height)
    dev = torch.device(device) if device is not None else talker.device
    talker = talker.to(dev)
    per_frame = None
    if camera is None or (isinstance(camera, (tuple, list)) and len(camera) == 2 and
                          torch.as_tensor(camera[0]).dim() == 2):
        vm, K, _ = cameras(camera, talker, 1, W, H)
    else:
        if not (isinstance(camera, (tuple, list)) and len(camera) == 2):
            raise RenderError("camera for a stream must be None, (viewmat, K) or (viewmats [N,4,4], Ks [N,3,3])")
        per_frame = tuple(torch.as_tensor(np.asarray(c) if not isinstance(c, torch.Tensor) else c,
                                          dtype=torch.float32) for c in camera)
        if per_frame[0].dim() != 3 or per_frame[1].shape[:1] != per_frame[0].shape[:1]:
            raise RenderError(f"camera must hold viewmats [N,4,4] and Ks [N,3,3] with one N, got "
                              f"{list(per_frame[0].shape)} and {list(per_frame[1].shape)}")
    blink = blink_setting(blink)
    sampled = torch.zeros(0)  # the sampled blinks so far: a longer draw keeps the shorter one as its start

    def blink_at(t: int):
        nonlocal sampled
        if blink is None:
            return None
        if isinstance(blink, str):
            if t >= len(sampled):
                sampled = talker.sample_expression(max(2 * len(sampled), t + 1, 250), seed=seed)[1].cpu()
            return sampled[t:t + 1].to(dev)
        if blink.dim() == 0:
            return blink.expand(1).to(dev)
        if t >= len(blink):
            raise RenderError(f"blink holds {len(blink)} per-frame amounts but the stream reached frame {t}")
        return blink[t:t + 1].to(dev)

    feats = A.StreamingFeatures(fps=fps, context=cfg.half_window / 100.0, lookahead=cfg.lookahead_mel / 100.0)
    span = cfg.past + 1 + cfg.future
    emb: deque = deque(maxlen=span + cfg.future + 1)   # embeddings of the frames still needed
    state = {"done": 0, "seen": 0}

    def frame(t: int, last: int):
        """Renders frame t once the embeddings up to min(t + future, last) exist."""
        first = state["seen"] - len(emb)
        idx = [min(max(k, 0), last) - first for k in range(t - cfg.past, t + cfg.future + 1)]
        e = torch.stack([emb[max(i, 0)] for i in idx])[None]
        with torch.no_grad():
            ce, cl = enc.from_embeddings(e)
            if per_frame is None:
                v, k = vm, K
            else:
                if t >= len(per_frame[0]):
                    raise RenderError(f"camera holds {len(per_frame[0])} per-frame cameras but the stream reached "
                                      f"frame {t}; pass one camera per frame of the whole stream, or a single one")
                v, k, _ = cameras((per_frame[0][t], per_frame[1][t]), talker, 1, W, H)
            img, _ = talker.frames(ce, cl, v.to(dev), k.to(dev), W, H, blink=blink_at(t))
        return (img[0].clamp(0, 1) * 255).round().to(torch.uint8).cpu()

    def take(windows):
        if len(windows):
            with torch.no_grad():
                e = enc.frame_embedding(torch.from_numpy(windows).to(dev))
            for row in e:
                emb.append(row)
                state["seen"] += 1

    for chunk in chunks:
        if sample_rate != A.SAMPLE_RATE:
            chunk = A.resample(A._check_samples(chunk, "chunk"), int(sample_rate), A.SAMPLE_RATE)
        take(feats.push(chunk))
        while state["done"] + cfg.future < state["seen"]:
            yield frame(state["done"], 10**12)
            state["done"] += 1
    take(feats.flush())
    last = state["seen"] - 1
    while state["done"] <= last:
        yield frame(state["done"], last)
        state["done"] += 1


def blendshape_sheet(talker, path, *, size: int = 160, sigma: float = 2.0, mean=None, std=None):
    """A PNG of what each blendshape does: one column per component (expression first,
    then lips), rows at ``-sigma``, 0 and ``+sigma`` times its spread ``std`` (default 1:
    coefficients are O(1)) around ``mean`` (default 0), at the talker's own framing."""
    from .io import atomic_write_bytes, encode_image

    Ke, Kl = talker.config.k_exp, talker.config.k_lip
    K_all = Ke + Kl
    mean = torch.zeros(K_all) if mean is None else torch.as_tensor(mean, dtype=torch.float32)
    std = torch.ones(K_all) if std is None else torch.as_tensor(std, dtype=torch.float32)
    c = mean.repeat(3 * K_all, 1)
    for k in range(K_all):
        c[3 * k, k] -= sigma * std[k]
        c[3 * k + 2, k] += sigma * std[k]
    vm, K = talker.camera(size, size)
    n = c.shape[0]
    dev = talker.device
    tiles = []
    for s in range(0, n, 24):
        cc = c[s:s + 24].to(dev)
        m = cc.shape[0]
        with torch.no_grad():
            img, _ = talker.frames(cc[:, :Ke], cc[:, Ke:], vm.expand(m, -1, -1).to(dev), K.expand(m, -1, -1).to(dev),
                                   size, size)
        tiles.append(img.clamp(0, 1).cpu())
    img = torch.cat(tiles)  # [3 K_all, H, W, 3], component-major
    grid = torch.cat([torch.cat([img[3 * k + r] for k in range(K_all)], 1) for r in range(3)], 0)
    path = __import__("pathlib").Path(path)
    atomic_write_bytes(path, encode_image((grid * 255).round().to(torch.uint8).numpy(), "png"))
    return path


def render(audio, camera=None, **kw) -> Video:
    """``load_talker()`` (the shipped demo talker) ``.render(audio, camera, **kw)``."""
    from .talker import load_talker

    return load_talker(None).render(audio, camera, **kw)


class _CallableModule(__import__("types").ModuleType):
    """``dgtalker.render`` is this module and also the function ``render``: importing the
    module (``from dgtalker.render import Video``) must not shadow the call."""

    def __call__(self, audio, camera=None, **kw) -> Video:
        return render(audio, camera, **kw)


__import__("sys").modules[__name__].__class__ = _CallableModule
