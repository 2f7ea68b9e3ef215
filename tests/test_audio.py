"""Audio front end: loading from many sources, resampling, features, streaming, bad input."""
from __future__ import annotations

import importlib.util
import subprocess

import numpy as np
import pytest

from dgtalker import audio as A

# soundfile, librosa and soxr are dependencies of dgtalker; if one is missing every
# test is skipped with the reason (CI, with DGTALKER_NO_SKIPS=1, fails instead).
MISSING = next((f"{m} is not installed" for m in ("soundfile", "librosa", "soxr")
                if importlib.util.find_spec(m) is None), "")
pytestmark = pytest.mark.skipif(bool(MISSING), reason=MISSING)
if not MISSING:
    import soundfile as sf


def _tone(sr, seconds, freq=440.0, channels=1):
    t = np.arange(int(sr * seconds)) / sr
    x = (0.4 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return x if channels == 1 else np.stack([x, 0.5 * x], 1)


def _peak_hz(x, sr=A.SAMPLE_RATE):
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.fft.rfftfreq(len(x), 1 / sr)[np.argmax(spec)]


@pytest.mark.parametrize("sr, channels", [(8000, 1), (48000, 1), (44100, 2), (16000, 2)])
def test_load_resamples_and_mixes(tmp_path, sr, channels):
    p = tmp_path / "a.wav"
    sf.write(p, _tone(sr, 1.0, channels=channels), sr)
    x, rate = A.load(p)
    assert rate == 16000 and x.dtype == np.float32 and x.ndim == 1
    assert abs(len(x) - 16000) <= 2
    assert abs(_peak_hz(x) - 440.0) < 3.0  # pitch preserved by the resampler
    if channels == 2:  # average of the two channels: 0.75 of the left amplitude
        assert np.max(np.abs(x[1000:-1000])) == pytest.approx(0.3, abs=0.01)


def test_load_native_rate(tmp_path):
    p = tmp_path / "a.flac"
    sf.write(p, _tone(22050, 0.5), 22050)
    x, rate = A.load(p, sample_rate=None)
    assert rate == 22050 and len(x) == 11025


def test_load_mp3_and_video(tmp_path):
    from dgtalker.data.format import ffmpeg_exe  # a system ffmpeg, else the bundled one

    wav = tmp_path / "a.wav"
    sf.write(wav, _tone(44100, 1.0, 300.0), 44100)
    mp3, mp4 = tmp_path / "a.mp3", tmp_path / "v.mp4"
    subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(wav), str(mp3)], check=True)
    subprocess.run([ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", "color=c=gray:s=64x64:r=25:d=1", "-i", str(wav),
                    "-c:v", "libx264", "-c:a", "aac", "-shortest", str(mp4)], check=True)
    for p in (mp3, mp4):
        x, rate = A.load(p)
        assert rate == 16000 and 0.9 * 16000 < len(x) < 1.2 * 16000
        assert abs(_peak_hz(x) - 300.0) < 5.0
    silent_video = tmp_path / "mute.mp4"
    subprocess.run([ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", "color=c=gray:s=64x64:r=25:d=1",
                    "-c:v", "libx264", str(silent_video)], check=True)
    with pytest.raises(A.AudioError, match="mute.mp4 has no sound track"):
        A.load(silent_video)


def test_bad_files(tmp_path):
    with pytest.raises(A.AudioError, match="does not exist"):
        A.load(tmp_path / "missing.wav")
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(A.AudioError, match=r"empty \(0 bytes\)"):
        A.load(tmp_path / "empty.wav")
    (tmp_path / "notes.wav").write_text("this is not audio\n" * 50)
    # with ffmpeg the file is tried and refused; without it the error says what is missing
    why = "notes.wav: not a readable audio" if A._ffmpeg() else "notes.wav: reading this file needs ffmpeg"
    with pytest.raises(A.AudioError, match=why):
        A.load(tmp_path / "notes.wav")
    with pytest.raises(A.AudioError, match="is a directory"):
        A.load(tmp_path)
    x = _tone(16000, 0.5)
    x[100] = np.nan
    sf.write(tmp_path / "nan.wav", x, 16000, subtype="FLOAT")
    with pytest.raises(A.AudioError, match="NaN or inf"):
        A.load(tmp_path / "nan.wav")


def test_feature_shapes_and_alignment():
    sr, fps = 16000, 25.0
    x = np.zeros(sr * 2, np.float32)
    t_click = 1.2
    x[int(t_click * sr): int(t_click * sr) + 80] = 0.9  # a click at 1.2 s
    f = A.features(x, sr, fps=fps)
    assert f.windows.shape == (50, 61, 80) and f.mel.shape == (201, 80)
    i = int(round(t_click * fps))  # video frame 30 is at 1.2 s
    energy = f.windows[i].mean(axis=1)
    assert abs(int(np.argmax(energy)) - 30) <= 1  # the click sits at the window centre
    # windows are slices of the same mel: frame i+1 is frame i shifted by 4 mel frames
    np.testing.assert_array_equal(f.windows[i + 1][:-4], f.windows[i][4:])


def test_silence_and_short_clips():
    f = A.features(np.zeros(16000, np.float32), 16000, fps=25)
    assert f.silent and np.all(f.windows == A.SILENCE_VALUE) and len(f) == 25
    short = A.features(np.full(800, 0.1, np.float32), 16000, fps=25)  # 50 ms < one 0.6 s window
    assert short.windows.shape == (2, 61, 80)
    assert np.all(short.windows[0, :20] == A.SILENCE_VALUE)  # padded before the start
    with pytest.raises(A.AudioError, match="shorter than one video frame"):
        A.features(np.zeros(0, np.float32), 16000, fps=25)
    with pytest.raises(A.AudioError, match="NaN or inf"):
        A.features(np.array([0.0, np.nan], np.float32), 16000)
    with pytest.raises(A.AudioError, match="fps must be a positive number"):
        A.features(np.zeros(100, np.float32), 16000, fps=0)


def test_features_any_rate_matches_resampled():
    x48 = _tone(48000, 0.8, 700.0)
    a = A.features(x48, 48000, fps=25).windows
    b = A.features(A.resample(x48, 48000), 16000, fps=25).windows
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("fps", [25.0, 30.0])
def test_streaming_equals_whole_clip(fps):
    rng = np.random.default_rng(0)
    x = (rng.normal(size=16000 * 3) * np.repeat(rng.uniform(0, 0.3, 30), 1600)).astype(np.float32)
    whole = A.features(x, 16000, fps=fps).windows
    s = A.StreamingFeatures(fps=fps)
    parts, i = [], 0
    while i < len(x):
        k = int(rng.integers(1, 4000))
        parts.append(s.push(x[i:i + k]))
        i += k
    parts.append(s.flush())
    got = np.concatenate(parts)
    assert got.shape == whole.shape
    # FFTs of different batch sizes may differ in the last bits
    np.testing.assert_allclose(got, whole, rtol=0, atol=1e-4)
    # frames come out no later than context + half an FFT after their time
    assert sum(len(p) for p in parts[:-1]) >= len(whole) - int(np.ceil((0.3 + 0.02) * fps)) - 1
    with pytest.raises(A.AudioError, match="after flush"):
        s.push(x[:10])
    with pytest.raises(A.AudioError, match="16000 Hz chunks"):
        A.StreamingFeatures(sample_rate=8000)


def test_channels_first_stereo_is_averaged():
    x = _tone(16000, 1.0, channels=2)  # [S, 2], soundfile layout
    mono = A.features(x.mean(1), 16000).windows
    np.testing.assert_array_equal(A.features(x, 16000).windows, mono)
    np.testing.assert_array_equal(A.features(np.ascontiguousarray(x.T), 16000).windows, mono)  # [2, S]
    np.testing.assert_array_equal(A.to_mono(x.T), x.mean(1))
    assert A.features(x.T, 16000).windows.shape == (25, 61, 80)
    s = A.StreamingFeatures()
    got = np.concatenate([s.push(x[i:i + 4000].T) for i in range(0, 16000, 4000)] + [s.flush()])
    np.testing.assert_allclose(got, mono, rtol=0, atol=1e-4)


@pytest.mark.parametrize("shape", [(2, 2), (8, 3), (1, 1)])
def test_ambiguous_layout_is_refused(shape):
    with pytest.raises(A.AudioError, match=rf"samples of shape \[{shape[0]}, {shape[1]}\] is ambiguous"):
        A.features(np.zeros(shape, np.float32), 16000)
    with pytest.raises(A.AudioError, match="chunk of shape"):
        A.StreamingFeatures().push(np.zeros(shape, np.float32))


def test_no_channel_axis_is_refused():
    with pytest.raises(A.AudioError, match=r"samples of shape \[100, 200\] has no channel axis"):
        A.features(np.zeros((100, 200), np.float32), 16000)


@pytest.mark.parametrize("dtype, scale, offset", [(np.int16, 32768, 0), (np.int32, 2 ** 31, 0), (np.int8, 128, 0),
                                                  (np.uint8, 128, 128)])
def test_integer_pcm_is_scaled(dtype, scale, offset):
    x = _tone(16000, 0.5, channels=2)
    pcm = (np.round(x * (scale - 1)) + offset).astype(dtype)
    want = A.features((pcm.astype(np.float64) - offset) / scale, 16000).windows
    got = A.features(pcm, 16000).windows
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    s = A.StreamingFeatures()
    np.testing.assert_allclose(np.concatenate([s.push(pcm), s.flush()]), want, rtol=0, atol=1e-4)


def test_non_pcm_integers_are_refused():
    with pytest.raises(A.AudioError, match="samples has integer dtype int64, which is not a PCM sample format"):
        A.features(np.ones(1600, np.int64), 16000)
    with pytest.raises(A.AudioError, match="samples must be numeric, got dtype bool"):
        A.features(np.ones(1600, bool), 16000)


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "FLOAT"])
def test_truncated_wav_warns_with_the_duration_read(tmp_path, subtype):
    import warnings

    p = tmp_path / "a.wav"
    sf.write(p, _tone(16000, 2.0, channels=2), 16000, subtype=subtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a complete file loads without a word
        full, _ = A.load(p)
    data = p.read_bytes()
    cut = tmp_path / "truncated.wav"
    start = data.index(b"data") + 8  # float wavs carry extra chunks before the samples
    cut.write_bytes(data[: start + (len(data) - start) // 4])
    with pytest.warns(A.TruncatedAudioWarning, match=r"declares 2\.000 s of audio, only 0\.500 s could be read"):
        part, rate = A.load(cut)
    assert rate == 16000 and abs(len(part) - 8000) <= 2
    np.testing.assert_allclose(part[:7000], full[:7000], atol=1e-6)


def test_streaming_memory_is_flat():
    import tracemalloc

    rng = np.random.default_rng(1)
    s = A.StreamingFeatures(fps=25)
    n_out = 0

    def feed(seconds):
        nonlocal n_out
        for _ in range(seconds):
            n_out += len(s.push((0.1 * rng.standard_normal(16000)).astype(np.float32)))

    tracemalloc.start()
    try:
        feed(10)
        at_10s = tracemalloc.get_traced_memory()[0]
        feed(120)
        at_130s = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert n_out >= 130 * 25 - 10
    # keeping the stream would grow by 120 s x (64 KB of samples + 32 KB of mel) = 11 MB
    assert at_130s - at_10s < 200_000, (at_10s, at_130s)


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_stream_resampler_equals_offline_resample(rate):
    """Chunks through one stateful resampler give exactly the samples of resampling the
    whole signal (resampling each chunk on its own drifted and added frames)."""
    x = (0.3 * np.random.default_rng(rate).standard_normal(rate * 2)).astype(np.float32)
    whole = A.resample(x, rate)
    r = A.StreamResampler(rate)
    pieces = [r.push(x[i:i + 1009]) for i in range(0, len(x), 1009)] + [r.flush()]
    got = np.concatenate(pieces)
    assert len(got) == len(whole) == 2 * A.SAMPLE_RATE
    assert np.array_equal(got, whole)
    # resampling chunk by chunk (what streams did) is not the same signal
    naive = np.concatenate([A.resample(x[i:i + 1009], rate) for i in range(0, len(x), 1009)])
    assert len(naive) != len(whole) or not np.allclose(naive, whole, atol=1e-3)


def test_speech_forms_and_errors(tmp_path):
    x = (0.1 * np.sin(np.arange(8000) / 5)).astype(np.float32)
    a, ra = A.speech((x, 8000))
    b, rb = A.speech(x, sample_rate=np.int64(8000))
    assert ra == rb == A.SAMPLE_RATE and np.array_equal(a, b) and len(a) == 16000
    for bad, kw, match in [(x, {}, "sample_rate"), (x, {"sample_rate": 0}, "sample_rate"),
                           (x, {"sample_rate": True}, "sample_rate"), (np.zeros(0, np.float32), {"sample_rate": 8000},
                                                                       "empty"),
                           ((x, 8000, 1), {}, "tuple")]:
        with pytest.raises(A.AudioError, match=match):
            A.speech(bad, **kw)
