"""Audio front end: load speech, resample, log-mel features, per-frame windows.

    samples, sr = dgtalker.audio.load("speech.mp3")          # mono float32 at 16 kHz
    feats = dgtalker.audio.features(samples, sr, fps=25)      # AudioFeatures
    feats.windows                                             # [T, 61, 80] one per video frame

    stream = dgtalker.audio.StreamingFeatures(fps=25)
    for chunk in chunks:                                      # 16 kHz mono pieces
        for w in stream.push(chunk): ...                      # same windows, as they complete
    rest = stream.flush()

Conventions (also in docs/data-format.md):

* Audio is mixed to mono and resampled to 16 kHz (soxr, high quality). 8 kHz input is
  upsampled: it simply has nothing above 4 kHz. Stereo is averaged. Arrays may be
  ``[S]``, ``[S, C]`` (soundfile's layout) or ``[C, S]`` (torchaudio's) with at most
  ``MAX_CHANNELS`` channels; a 2-D array whose both sides could be the channel axis
  is refused by name rather than guessed.
* Integer PCM arrays are scaled to [-1, 1]: int16 / 32768, int32 / 2^31, int8 / 128,
  uint8 (offset binary) (x - 128) / 128. Other integer types are refused.
* A file shorter than its header says (an interrupted download or recording) loads
  what is there with a :class:`TruncatedAudioWarning` giving both durations.
* Log-mel: 80 mel bands, 55-7600 Hz, 25 ms Hann window (n_fft 512 with 400-sample
  window), 10 ms hop (160 samples) -> 100 mel frames per second, so at 25 fps there are
  exactly 4 mel frames per video frame. Values are ``log10(max(power, 1e-10))`` of the
  mel power spectrogram of samples in [-1, 1]; pure silence is therefore -10
  everywhere (a documented, finite result, not an error). Frames are centred: mel
  frame j describes time ``j * hop / sr`` (the signal is zero-padded by n_fft/2 at
  both ends, as librosa's ``center=True`` with constant padding).
* Video frame i is at time ``i / fps``; its window is the mel frames centred on the
  last mel frame at or before that time (the same frame at 25 fps, where frame times
  fall on mel frames), +-``context`` seconds (default 0.3 s -> 61 frames). Windows that
  reach past either end of the clip are padded with the silence value, so a clip
  shorter than one window still yields one window per video frame.
* A clip yields ``ceil(duration * fps)`` video frames; a clip shorter than one video
  frame, an empty or unreadable file, a non-audio file, or NaN/inf samples raise
  :class:`AudioError` naming the file or argument.
"""
from __future__ import annotations

import shutil
import struct
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
N_FFT = 512
WIN_LENGTH = 400
HOP = 160
N_MELS = 80
FMIN, FMAX = 55.0, 7600.0
LOG_FLOOR = 1e-10
SILENCE_VALUE = float(np.log10(LOG_FLOOR))
CONTEXT_S = 0.3
MAX_CHANNELS = 8
# integer PCM: (offset, scale) so that float = (x - offset) / scale lies in [-1, 1]
_PCM = {np.dtype(np.int16): (0, 32768.0), np.dtype(np.int32): (0, 2147483648.0), np.dtype(np.int8): (0, 128.0),
        np.dtype(np.uint8): (128, 128.0)}

VIDEO_EXTS = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v"}

__all__ = ["AudioError", "TruncatedAudioWarning", "load", "speech", "resample", "to_mono", "log_mel", "features", "frame_windows",
           "windows_at", "mel_index", "check_sample_rate", "AudioFeatures", "StreamingFeatures", "StreamResampler", "num_video_frames",
           "SAMPLE_RATE", "SILENCE_VALUE"]


class AudioError(ValueError):
    """Bad audio input; the message names the file or argument and the problem."""


class TruncatedAudioWarning(UserWarning):
    """A file holds less audio than its header declares; what is there was loaded."""


def _ffmpeg():
    exe = shutil.which("ffmpeg")
    if exe:
        return exe
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except Exception:  # noqa: BLE001
        return None


def _decode_ffmpeg(path: Path):
    exe = _ffmpeg()
    if exe is None:
        raise AudioError(f"{path}: reading this file needs ffmpeg (Debian package ffmpeg)")
    # ffmpeg mixes to mono and resamples to a fixed rate; load() resamples again as asked
    cmd = [exe, "-v", "error", "-nostdin", "-i", str(path), "-vn", "-ac", "1", "-ar", "48000",
           "-f", "f32le", "-acodec", "pcm_f32le", "-"]
    res = subprocess.run(cmd, capture_output=True)
    if res.returncode != 0 or not res.stdout:
        msg = res.stderr.decode(errors="replace").strip().splitlines()
        if msg and "does not contain any stream" in msg[-1]:  # ffmpeg read it, and found nothing to hear
            raise AudioError(f"{path} has no sound track (a video without audio): pass speech, or a video with it")
        why = msg[-1] if msg else "no audio stream"
        raise AudioError(f"{path}: not a readable audio or video file with sound ({why})")
    return np.frombuffer(res.stdout, dtype=np.float32).copy(), 48000


def _as_float(a: np.ndarray, name: str) -> np.ndarray:
    """float32 samples; integer PCM scaled to [-1, 1] (see the module docstring)."""
    if a.dtype in _PCM:
        off, scale = _PCM[a.dtype]
        return ((a.astype(np.float32) - off) / scale).astype(np.float32)
    if np.issubdtype(a.dtype, np.integer):
        raise AudioError(f"{name} has integer dtype {a.dtype}, which is not a PCM sample format; pass int8/int16/"
                         f"int32/uint8 PCM or floats in [-1, 1]")
    if not np.issubdtype(a.dtype, np.floating):
        raise AudioError(f"{name} must be numeric, got dtype {a.dtype}")
    return a.astype(np.float32, copy=False)


def to_mono(samples: np.ndarray, name: str = "samples") -> np.ndarray:
    """[S], [S, C] (soundfile layout) or [C, S] (channels first) -> [S] float32, by
    averaging channels (C <= ``MAX_CHANNELS``). Integer PCM is scaled to [-1, 1]. A
    2-D array with both sides <= ``MAX_CHANNELS`` (which axis holds the channels
    cannot be told) or both sides larger raises :class:`AudioError`."""
    a = np.asarray(samples)
    if a.ndim == 2:
        rows, cols = a.shape
        if cols <= MAX_CHANNELS < rows:
            axis = 1  # [S, C]
        elif rows <= MAX_CHANNELS < cols:
            axis = 0  # [C, S]
        elif rows <= MAX_CHANNELS and cols <= MAX_CHANNELS:
            raise AudioError(f"{name} of shape {list(a.shape)} is ambiguous: either side could be the channels; "
                             f"pass mono [S], or [S, C] / [C, S] with more than {MAX_CHANNELS} samples")
        else:
            raise AudioError(f"{name} of shape {list(a.shape)} has no channel axis: expected [S], [S, C] or [C, S] "
                             f"with C <= {MAX_CHANNELS}")
        return _as_float(a, name).mean(axis=axis).astype(np.float32)
    if a.ndim != 1:
        raise AudioError(f"{name} must be [S], [S, channels] or [channels, S], got shape {list(a.shape)}")
    return _as_float(a, name)


def resample(samples: np.ndarray, sr_in: int, sr_out: int = SAMPLE_RATE) -> np.ndarray:
    """Band-limited resampling (soxr 'HQ'); returns float32."""
    if not isinstance(sr_in, (int, np.integer)) or sr_in <= 0:
        raise AudioError(f"sample rate must be a positive integer, got {sr_in!r}")
    a = np.asarray(samples, dtype=np.float32)
    if sr_in == sr_out:
        return a
    import soxr

    # one stateful stream over the whole signal: StreamResampler gives the same samples chunk by chunk
    return np.asarray(soxr.ResampleStream(int(sr_in), int(sr_out), 1, dtype="float32", quality="HQ")
                      .resample_chunk(a, last=True), np.float32).reshape(-1)


def load(path, sample_rate: int | None = SAMPLE_RATE) -> tuple[np.ndarray, int]:
    """Read speech from a wav/flac/ogg/mp3 file or a video's sound track.

    Returns (mono float32 samples [S], rate); resampled to ``sample_rate`` unless it is
    None (then the file's own rate). Raises :class:`AudioError` for a missing, empty,
    unreadable or non-audio file and for NaN/inf samples.
    """
    p = Path(path)
    if not p.exists():
        raise AudioError(f"audio file {p} does not exist")
    if p.is_dir():
        raise AudioError(f"audio path {p} is a directory, expected a file")
    if p.stat().st_size == 0:
        raise AudioError(f"audio file {p} is empty (0 bytes)")
    data, sr = None, None
    if p.suffix.lower() not in VIDEO_EXTS:
        try:
            import soundfile as sf

            data, sr = sf.read(str(p), dtype="float32", always_2d=True)
        except Exception:  # noqa: BLE001 - fall back to ffmpeg for anything libsndfile refuses
            data = None
    if data is None:
        data, sr = _decode_ffmpeg(p)
    else:
        data = data.mean(axis=1).astype(np.float32)  # soundfile's [S, C]: channels are known, no guessing
    if data.size == 0:
        raise AudioError(f"audio file {p} contains no samples")
    if not np.all(np.isfinite(data)):
        raise AudioError(f"audio file {p} contains NaN or inf samples")
    declared = _declared_seconds(p)
    got = len(data) / sr
    if declared is not None and got < declared - max(0.02, 0.005 * declared):
        warnings.warn(f"{p} is truncated: its header declares {declared:.3f} s of audio, only {got:.3f} s could be "
                      f"read (loaded what is there)", TruncatedAudioWarning, stacklevel=2)
    if sample_rate is not None:
        data = resample(data, int(sr), int(sample_rate))
        sr = int(sample_rate)
    return data, int(sr)


def check_sample_rate(sample_rate, name: str = "sample_rate") -> int:
    """A sample rate as an int > 0 (numpy ints too; bools, floats and the rest refused by name)."""
    if isinstance(sample_rate, (bool, np.bool_)) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise AudioError(f"{name} must be a positive int (samples per second), got {sample_rate!r}")
    return int(sample_rate)


def speech(audio, sample_rate=None) -> tuple[np.ndarray, int]:
    """Speech in any accepted form as ``(mono float32 samples at 16 kHz, 16000)``: a path
    (anything ``load`` reads), a ``(samples, rate)`` pair, or an array (numpy or torch)
    with ``sample_rate``. Bad input raises :class:`AudioError` naming the argument."""
    import os

    if isinstance(audio, (str, os.PathLike)):
        if sample_rate is not None:
            raise AudioError("sample_rate is only for array audio; a file carries its own rate")
        return load(audio, sample_rate=SAMPLE_RATE)
    if isinstance(audio, tuple):
        if len(audio) != 2 or sample_rate is not None:
            raise AudioError("audio as a tuple must be (samples, rate), with no sample_rate= argument")
        audio, sample_rate = audio
    if sample_rate is None:
        raise AudioError("audio given as an array needs sample_rate= (or pass (samples, rate))")
    if hasattr(audio, "detach"):  # a torch tensor
        audio = audio.detach().cpu().numpy()
    samples = _check_samples(audio, "audio")
    rate = check_sample_rate(sample_rate)
    if samples.size == 0:
        raise AudioError("audio is empty")
    return resample(samples, rate, SAMPLE_RATE), SAMPLE_RATE


def _check_samples(samples, name="samples"):
    a = to_mono(samples, name)
    if not np.all(np.isfinite(a)):
        raise AudioError(f"{name} contains NaN or inf")
    return a


def _declared_seconds(p: Path) -> float | None:
    """The duration a file's header declares, where it can be known without decoding:
    a RIFF/WAVE file's data chunk size (libsndfile silently shortens it to the bytes
    present), else libsndfile's frame count. None when unknown."""
    try:
        with open(p, "rb") as f:
            head = f.read(12)
            if len(head) == 12 and head[:4] == b"RIFF" and head[8:12] == b"WAVE":
                block_align, rate = None, None
                while True:
                    ck = f.read(8)
                    if len(ck) < 8:
                        return None
                    cid, size = ck[:4], struct.unpack("<I", ck[4:])[0]
                    if cid == b"fmt ":
                        fmt = f.read(size + (size & 1))
                        if len(fmt) < 16:
                            return None
                        rate, block_align = struct.unpack("<I", fmt[4:8])[0], struct.unpack("<H", fmt[12:14])[0]
                    elif cid == b"data":
                        # 0 and 0xFFFFFFFF: streaming writers that never patched the size in
                        if not block_align or not rate or size in (0, 0xFFFFFFFF):
                            return None
                        return size // block_align / rate
                    else:
                        f.seek(size + (size & 1), 1)
    except OSError:
        return None
    try:
        import soundfile as sf

        info = sf.info(str(p))
        return info.frames / info.samplerate if info.frames > 0 and info.samplerate > 0 else None
    except Exception:  # noqa: BLE001 - not a libsndfile format: nothing declared
        return None


_MEL_BASIS = None


def _mel_basis():
    """librosa's mel filter bank [N_MELS, 1 + N_FFT/2] as a sparse (CSR) matrix: 2% of
    it is non-zero. The sparse product sums the same non-zero terms, needs no BLAS, and
    so does not stall when BLAS threads compete for busy cores (measured on 2 busy
    cores: 12-16 ms per dense sgemm of one second of frames, 0.01 ms sparse)."""
    global _MEL_BASIS
    if _MEL_BASIS is None:
        import librosa
        import scipy.sparse

        dense = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, fmin=FMIN, fmax=FMAX)
        _MEL_BASIS = scipy.sparse.csr_matrix(dense.astype(np.float32))
    return _MEL_BASIS


def _mel_frames(padded: np.ndarray, j0: int, j1: int) -> np.ndarray:
    """Log-mel frames j0..j1-1 of a signal already zero-padded by N_FFT//2 at the
    start; frame j covers padded[j*HOP : j*HOP + N_FFT]. [j1-j0, N_MELS]."""
    import librosa

    if j1 <= j0:
        return np.zeros((0, N_MELS), np.float32)
    seg = padded[j0 * HOP: (j1 - 1) * HOP + N_FFT]
    spec = librosa.stft(seg, n_fft=N_FFT, hop_length=HOP, win_length=WIN_LENGTH, window="hann", center=False)
    power = (np.abs(spec) ** 2).astype(np.float32)
    mel = np.asarray(_mel_basis() @ power, dtype=np.float32)  # [N_MELS, frames]
    # clamped at the silence value: float32 log10 of the floor may round 1 ulp below it
    return np.maximum(np.log10(np.maximum(mel, LOG_FLOOR)), SILENCE_VALUE).T[: j1 - j0].astype(np.float32)


def log_mel(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Log-mel spectrogram [1 + S // 160, 80] of 16 kHz mono samples (see module doc)."""
    if sample_rate != SAMPLE_RATE:
        raise AudioError(f"log_mel expects {SAMPLE_RATE} Hz samples, got sample_rate={sample_rate}; "
                         "use dgtalker.audio.resample first")
    a = _check_samples(samples)
    pad = np.zeros(N_FFT // 2, np.float32)
    padded = np.concatenate([pad, a, pad])
    return _mel_frames(padded, 0, 1 + len(a) // HOP)


def num_video_frames(num_samples: int, sample_rate: int, fps: float) -> int:
    return int(np.ceil(num_samples * fps / sample_rate - 1e-9))


def check_duration(num_samples: int, sample_rate: int, fps: float, error=None) -> int:
    """The video frames of ``num_samples`` of audio at ``fps``; raises ``error`` (default
    ``AudioError``) when the audio is shorter than one video frame."""
    if num_samples < sample_rate / fps:
        raise (error or AudioError)(f"audio is {1000 * num_samples / sample_rate:.0f} ms long, shorter than one "
                                    f"video frame ({1000 / fps:.0f} ms at {fps:g} fps)")
    return num_video_frames(num_samples, sample_rate, fps)


def _check_fps(fps):
    if isinstance(fps, bool) or not isinstance(fps, (int, float, np.floating, np.integer)) or not np.isfinite(fps) or fps <= 0:
        raise AudioError(f"fps must be a positive number, got {fps!r}")
    return float(fps)


def _half_window(context: float) -> int:
    if not np.isfinite(context) or context < 0:
        raise AudioError(f"context must be a non-negative number of seconds, got {context!r}")
    return int(round(context * SAMPLE_RATE / HOP))


def _centre(i, fps):
    """The mel frame video frame ``i`` at ``fps`` is centred on (``mel_index`` of its time)."""
    return mel_index(np.asarray(i) / fps)


def frame_windows(mel: np.ndarray, fps: float, num_frames: int, context: float = CONTEXT_S) -> np.ndarray:
    """Cut one window of mel frames around each video frame: [num_frames, 2h+1, n_mels]
    with h = round(context * 100); out-of-range mel frames read as silence."""
    fps = _check_fps(fps)
    return windows_at(mel, _centre(np.arange(num_frames), fps), _half_window(context))


def windows_at(mel: np.ndarray, centres: np.ndarray, h: int, start: int = 0, limit: int | None = None) -> np.ndarray:
    """Windows ``[len(centres), 2h+1, n_mels]`` of mel frames ``c - h .. c + h`` around
    absolute mel indices ``centres``; ``mel`` holds frames ``start ..`` and frames outside
    ``[0, limit)`` (default: all of ``mel``) read as silence."""
    mel = np.asarray(mel, np.float32)
    limit = start + len(mel) if limit is None else limit
    idx = np.asarray(centres, np.int64)[:, None] + np.arange(-h, h + 1)[None, :]
    valid = (idx >= 0) & (idx < limit)
    local = np.clip(idx - start, 0, max(len(mel) - 1, 0))
    out = mel[local] if len(mel) else np.zeros(idx.shape + (mel.shape[1] if mel.ndim == 2 else N_MELS,), np.float32)
    return np.where(valid[..., None], out, np.float32(SILENCE_VALUE)).astype(np.float32)


def mel_index(seconds) -> np.ndarray:
    """The last mel frame at or before each time (seconds): a window centred there reads
    no audio later than its time plus its look-ahead. At 25 fps the frame times fall on
    mel frames, so this equals the windows' centres."""
    return np.floor(np.asarray(seconds, np.float64) * SAMPLE_RATE / HOP + 1e-6).astype(np.int64)


class StreamResampler:
    """Chunks at ``sample_rate`` -> 16 kHz through one stateful soxr stream: the output
    of any chunking equals ``resample`` of the whole signal (tests/test_audio.py)."""

    def __init__(self, sample_rate: int, out_rate: int = SAMPLE_RATE):
        self.rate, self.out_rate = check_sample_rate(sample_rate), int(out_rate)
        self._stream = None
        if self.rate != self.out_rate:
            import soxr

            self._stream = soxr.ResampleStream(self.rate, self.out_rate, 1, dtype="float32", quality="HQ")

    def push(self, chunk, last: bool = False) -> np.ndarray:
        a = _check_samples(chunk, "chunk")
        if self._stream is None:
            return a
        return np.asarray(self._stream.resample_chunk(a, last=last), np.float32).reshape(-1)

    def flush(self) -> np.ndarray:
        return self.push(np.zeros(0, np.float32), last=True)


@dataclass
class AudioFeatures:
    mel: np.ndarray  # [M, 80] log-mel at 100 frames/s
    windows: np.ndarray  # [T, 2h+1, 80], one per video frame
    fps: float
    sample_rate: int
    silent: bool  # True when the clip is pure digital silence

    def __len__(self):
        return len(self.windows)


def features(samples: np.ndarray, sample_rate: int, fps: float = 25.0, context: float = CONTEXT_S,
             num_frames: int | None = None) -> AudioFeatures:
    """Log-mel features and one context window per video frame for a whole clip.

    ``samples`` mono or [S, C] at ``sample_rate`` (any rate: resampled to 16 kHz).
    ``num_frames`` defaults to ``ceil(duration * fps)``; pass a dataset's frame count to
    get exactly one window per frame (missing audio at the end reads as silence).
    """
    fps = _check_fps(fps)
    a = _check_samples(samples)
    a = resample(a, check_sample_rate(sample_rate), SAMPLE_RATE)
    n = check_duration(len(a), SAMPLE_RATE, fps) if num_frames is None else int(num_frames)
    if n < 1:
        raise AudioError(f"num_frames must be at least 1, got {num_frames!r}")
    mel = log_mel(a)
    return AudioFeatures(mel, frame_windows(mel, fps, n, context), fps, SAMPLE_RATE, bool(np.all(a == 0)))


class MelStream:
    """Log-mel frames of 16 kHz audio that arrives in chunks: ``push(chunk)`` computes every
    mel frame whose FFT window is complete, ``flush()`` ends the stream (zero padding, as
    ``log_mel`` of the whole clip). ``mel`` holds frames ``start .. total - 1``;
    ``drop_before(j)`` forgets frames no window will read again, so memory stays flat.
    The frames equal ``log_mel`` of the whole clip."""

    def __init__(self):
        self._buf = np.zeros(N_FFT // 2, np.float32)  # padded samples from absolute position _buf_start on
        self._buf_start = 0
        self.mel = np.zeros((0, N_MELS), np.float32)
        self.start = 0            # absolute index of mel[0]
        self.total = 0            # mel frames computed so far
        self.num_samples = 0
        self.done = False

    def push(self, chunk) -> None:
        if self.done:
            raise AudioError("push() after flush(): start a new stream")
        a = _check_samples(chunk, "chunk")
        self._buf = np.concatenate([self._buf, a])
        self.num_samples += len(a)
        end = self._buf_start + len(self._buf)  # mel frame j is complete when padded[j*HOP + N_FFT - 1] exists
        self._extend(max(0, (end - N_FFT) // HOP + 1))

    def flush(self) -> None:
        if self.done:
            return
        self.done = True
        self._buf = np.concatenate([self._buf, np.zeros(N_FFT // 2, np.float32)])
        self._extend(1 + self.num_samples // HOP)  # as log_mel of the whole clip
        self._buf = np.zeros(0, np.float32)

    def drop_before(self, j: int) -> None:
        j = min(max(self.start, int(j)), self.total)
        if j > self.start:
            self.mel = self.mel[j - self.start:].copy()
            self.start = j

    def _extend(self, total: int) -> None:
        if total <= self.total:
            return
        off = self.total * HOP - self._buf_start
        new = _mel_frames(self._buf[off:], 0, total - self.total)
        self.mel = np.concatenate([self.mel, new]) if len(self.mel) else new
        self.total = total
        drop = self.total * HOP - self._buf_start  # samples before the next frame's start are never read again
        self._buf = self._buf[drop:].copy()
        self._buf_start += drop


class StreamingFeatures:
    """Incremental version of :func:`features` for audio that arrives in chunks.

    ``push(chunk)`` takes 16 kHz mono samples and returns the windows [k, 2h+1, 80] of
    the video frames whose whole window is now known (it lags by ``context`` plus half
    an FFT window); ``flush()`` ends the stream and returns the rest. Concatenated,
    they equal ``features(whole_clip, 16000, fps).windows``.

    Cost per chunk and memory are flat in the stream's length (``MelStream`` keeps only
    the mel frames that windows still to be emitted need).
    """

    def __init__(self, fps: float = 25.0, context: float = CONTEXT_S, sample_rate: int = SAMPLE_RATE,
                 lookahead: float | None = None):
        """``lookahead`` (seconds, <= ``context``): emit a frame's window as soon as this
        much audio after the frame's time is known; the rest of the window's future
        reads as silence (for encoders that never read past it, e.g. a causal one).
        None: the whole window (the default; windows then equal ``features``)."""
        if sample_rate != SAMPLE_RATE:
            raise AudioError(f"StreamingFeatures takes {SAMPLE_RATE} Hz chunks, got sample_rate={sample_rate}; "
                             "resample the stream first (dgtalker.audio.StreamResampler)")
        self.fps = _check_fps(fps)
        self.h = _half_window(context)
        self.ahead = self.h if lookahead is None else min(self.h, _half_window(lookahead))
        self._mel = MelStream()
        self._next_frame = 0

    def push(self, chunk: np.ndarray) -> np.ndarray:
        self._mel.push(chunk)
        # video frame i is complete when mel frame centre(i) + h (or + the look-ahead) exists
        i = self._next_frame
        while _centre(i, self.fps) + self.ahead < self._mel.total:
            i += 1
        return self._emit(i, self._mel.total)

    def flush(self) -> np.ndarray:
        if self._mel.done:
            return np.zeros((0, 2 * self.h + 1, N_MELS), np.float32)
        self._mel.flush()
        return self._emit(num_video_frames(self._mel.num_samples, SAMPLE_RATE, self.fps), self._mel.total)

    def _emit(self, stop: int, limit: int) -> np.ndarray:
        """Windows of video frames _next_frame .. stop-1; mel frames outside [0, limit)
        read as silence, as in frame_windows."""
        start = self._next_frame
        if stop <= start:
            return np.zeros((0, 2 * self.h + 1, N_MELS), np.float32)
        m = self._mel
        out = windows_at(m.mel, _centre(np.arange(start, stop), self.fps), self.h, m.start, limit)
        self._next_frame = stop
        m.drop_before(int(_centre(stop, self.fps)) - self.h)  # later windows never read earlier frames
        return out
