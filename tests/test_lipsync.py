"""dgtalker.lipsync (its model: the speech encoder and the heads) and the talkers' speech
front end (CPU, no footage needed).

The speaker-independence test synthesises one sentence with two espeak-ng voices; it
is skipped only where espeak-ng is not installed (CI installs it: apt-get install
espeak-ng)."""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import dgtalker  # noqa: E402
from dgtalker import audio as A  # noqa: E402
from dgtalker.audio import frontend as FE  # noqa: E402
from dgtalker.audio import lipsync_model as LM  # noqa: E402
from dgtalker.audio import speech_encoder as SE  # noqa: E402
from dgtalker.audio.lipsync import lipsync  # noqa: E402
from dgtalker.audio.lipsync_cli import main as cli_main  # noqa: E402
from dgtalker.io import sha256_file  # noqa: E402

SR = 16000


def _speechlike(seconds=2.0, sr=SR, seed=0):
    """Syllable-rate amplitude-modulated harmonic noise: enough to exercise the network."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 120 + 20 * np.sin(2 * np.pi * 0.7 * t)
    voiced = sum(np.sin(2 * np.pi * k * np.cumsum(f0) / sr) / k for k in range(1, 12))
    env = np.clip(np.sin(2 * np.pi * 4.0 * t), 0, None) ** 2
    return (0.2 * env * (voiced + 0.3 * rng.standard_normal(len(t)))).astype(np.float32)


def test_shapes_and_names():
    res = lipsync((_speechlike(), SR), fps=25)
    T = 50
    assert res.opening.shape == (T,) and res.width.shape == (T,)
    assert res.visemes.shape == (T, len(FE.VISEMES)) and res.embedding.shape[0] == T
    assert res.embedding.shape[1] == LM.load_lipsync().embed
    assert res.viseme_names == FE.VISEMES and len(res.viseme) == T
    np.testing.assert_allclose(res.visemes.sum(1), 1.0, atol=1e-4)
    assert all(np.isfinite(a).all() for a in (res.opening, res.width, res.visemes, res.embedding))
    assert dgtalker.lipsync is lipsync


@pytest.mark.parametrize("fps,rate", [(25, 16000), (30, 48000), (29.97, 44100), (24, 22050), (60, 8000),
                                      (12.5, 16000), (50, 11025), (23.976, 32000)])
def test_frame_count_any_fps_and_rate(fps, rate):
    seconds = 1.37
    x = A.resample(_speechlike(seconds), SR, rate) if rate != SR else _speechlike(seconds)
    res = lipsync(x, fps=fps, sample_rate=rate)
    assert len(res) == A.num_video_frames(len(x), rate, fps) == int(np.ceil(len(x) / rate * fps - 1e-9))


def test_sample_rate_does_not_change_the_curve():
    x = _speechlike(3.0, seed=1)
    a = lipsync(x, sample_rate=SR).opening
    b = lipsync(A.resample(x, SR, 44100), sample_rate=44100).opening
    assert np.corrcoef(a, b)[0, 1] > 0.95


@pytest.mark.parametrize("fps,rate", [(25, 16000), (30, 16000), (60, 44100)])
def test_causal_lookahead_bound(fps, rate):
    fe = LM.load_lipsync()
    assert fe.lookahead_s <= 0.2
    x = A.resample(_speechlike(3.0, seed=2), SR, rate) if rate != SR else _speechlike(3.0, seed=2)
    base = lipsync(x, fps=fps, sample_rate=rate, causal=True)
    margin = 0.0 if rate == SR else 0.01  # the resampler's own reach
    for t_cut in (0.8, 1.5, 2.2):
        y = x.copy()
        cut = int(np.ceil((t_cut + fe.lookahead_s + margin) * rate))
        y[cut:] = np.random.default_rng(3).standard_normal(len(y) - cut).astype(np.float32) * 0.5
        changed = lipsync(y, fps=fps, sample_rate=rate, causal=True)
        upto = int(np.floor(t_cut * fps)) + 1  # frames at times <= t_cut
        for name in ("opening", "width", "visemes", "embedding"):
            np.testing.assert_allclose(getattr(changed, name)[:upto], getattr(base, name)[:upto], atol=1e-5,
                                       err_msg=f"{name} changed before t={t_cut}")
        later = int(np.ceil((t_cut + fe.lookahead_s + 0.1) * fps))
        assert not np.allclose(changed.opening[later:], base.opening[later:], atol=1e-4), \
            "changing the audio changed nothing: the test would pass for any model"


def test_silence_is_a_closed_mouth():
    """Digital silence, and pauses inside speech with a room-noise floor (-80 and -60
    dBFS), give the mouth at rest. (A clip of noise alone, with no speech anywhere to
    normalise against, is not covered: see docs/lipsync.md.)"""
    for causal in (False, True):  # the first frames too: the model reads silence, not padding, before them
        res = lipsync(np.zeros(SR * 2, np.float32), sample_rate=SR, causal=causal)
        assert res.opening.max() < 0.02, (causal, res.opening[:5])
        assert np.mean(np.array(res.viseme) == "sil") > 0.8
    speech = _speechlike(2.0, seed=5)
    rng = np.random.default_rng(5)
    for floor in (1e-4, 1e-3):
        x = np.concatenate([speech, np.zeros(int(1.5 * SR), np.float32), speech])
        x = x + floor * rng.standard_normal(len(x)).astype(np.float32)
        res = lipsync(x, sample_rate=SR)
        pause = (res.times > 2.4) & (res.times < 3.1)
        assert res.opening[pause].max() < 0.02, (floor, res.opening[pause].max())
        assert res.opening[pause].mean() < 0.5 * res.opening[res.times < 2.0].mean()
        assert np.mean(np.array(res.viseme)[pause] == "sil") > 0.8


def test_loudness_does_not_matter():
    x = _speechlike(2.0, seed=4)
    a, b = lipsync(x, sample_rate=SR).opening, lipsync(x * 0.05, sample_rate=SR).opening
    np.testing.assert_allclose(a, b, atol=2e-3)


@pytest.mark.parametrize("causal", [False, True])
def test_bfloat16_encoder_agrees_with_float32(causal):
    """The encoder's bfloat16 products (the default where the CPU has them) change the
    curves by far less than they vary; forced here, so the check runs on any CPU."""
    enc = SE.load_speech_encoder()
    x = _speechlike(3.0, seed=5)
    try:
        enc.precision = "float32"
        ref = lipsync(x, sample_rate=SR, causal=causal)
        enc.precision = "bfloat16"
        low = lipsync(x, sample_rate=SR, causal=causal)
    finally:
        enc.precision = "auto"
    assert np.corrcoef(ref.opening, low.opening)[0, 1] > 0.99
    assert np.abs(ref.opening - low.opening).max() < 0.1 * ref.opening.std() + 1e-3
    assert np.abs(ref.visemes - low.visemes).mean() < 0.01 and np.abs(ref.visemes - low.visemes).max() < 0.1
    with pytest.raises(ValueError, match="precision"):
        enc.precision = "half"


def _espeak_available():
    try:
        from dgtalker.audio.tts_corpus import Espeak

        Espeak()
        return True
    except (RuntimeError, OSError):
        return False


_SENTENCE = "My father bought a big map of the whole wide world, and we opened it up on the floor."


def _voice(voice, text):
    """(opening at 25 fps, phoneme start times) of espeak-ng's ``voice`` saying ``text``."""
    from dgtalker.audio.tts_corpus import Espeak

    es = _voice.espeak = getattr(_voice, "espeak", None) or Espeak()
    wav, sr, events = es.synth(text, voice)
    res = lipsync(wav, fps=25, sample_rate=sr)
    return res.opening.astype(np.float64), np.array([t for t, _ in events]), [p for _, p in events]


@pytest.mark.skipif(shutil.which("espeak-ng") is None or not _espeak_available(),
                    reason="needs espeak-ng (CI installs it: apt-get install espeak-ng)")
def test_speaker_independent_two_voices():
    """One sentence in a low male and a high female espeak-ng voice (different pitch,
    formants and tempo): after mapping voice B's time onto voice A's through their
    phoneme events (the same phonemes, spoken at slightly different times), the mouths
    must move together, r > 0.5; another sentence in voice B must agree less."""
    a, ta, pa = _voice("en-us+m3", _SENTENCE)
    b, tb, pb = _voice("en-us+f4", _SENTENCE)
    assert pa == pb and len(ta) > 20
    times = np.arange(len(a)) / 25.0
    inside = (times >= ta[0]) & (times <= ta[-1])
    b_on_a = np.interp(np.interp(times, ta, tb), np.arange(len(b)) / 25.0, b)
    r = np.corrcoef(a[inside], b_on_a[inside])[0, 1]
    assert r > 0.5, r
    c, tc, _ = _voice("en-us+f4", "Sheila sees six swift ships sailing east, she sighs, and so it is.")
    c_on_a = np.interp(np.linspace(tc[0], tc[-1], inside.sum()), np.arange(len(c)) / 25.0, c)
    assert np.corrcoef(a[inside], c_on_a)[0, 1] < r - 0.2


def test_shipped_weights_checksum():
    assert FE.DEFAULT_WEIGHTS.is_file()
    assert FE.DEFAULT_WEIGHTS.stat().st_size < 3 << 20
    assert sha256_file(FE.DEFAULT_WEIGHTS) == FE.WEIGHTS_SHA256
    fe = FE.load_frontend()
    assert fe.config.lookahead_s <= 0.2
    assert LM.DEFAULT_WEIGHTS.stat().st_size < 8 << 20  # three heads per mode
    assert sha256_file(LM.DEFAULT_WEIGHTS) == LM.WEIGHTS_SHA256
    assert SE.DEFAULT_WEIGHTS.stat().st_size < 32 << 20
    assert sha256_file(SE.DEFAULT_WEIGHTS) == SE.WEIGHTS_SHA256
    assert (SE.DEFAULT_WEIGHTS.parent / "WHISPER_LICENSE").is_file()  # the MIT licence travels with the weights


@pytest.mark.parametrize("module,load,error", [(FE, "load_frontend", "FrontEndError"),
                                               (LM, "load_lipsync", "LipSyncModelError"),
                                               (SE, "load_speech_encoder", "SpeechEncoderError")])
def test_corrupt_weights_are_refused(tmp_path, monkeypatch, module, load, error):
    load, error = getattr(module, load), getattr(module, error)
    bad = tmp_path / "weights.safetensors"
    data = bytearray(module.DEFAULT_WEIGHTS.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    monkeypatch.setattr(module, "DEFAULT_WEIGHTS", bad)
    module._cache.clear()
    with pytest.raises(error, match="corrupt or was replaced"):
        load()
    module._cache.clear()
    # a truncated or foreign file given as weights is refused by name
    bad.write_bytes(b"not a safetensors file at all")
    with pytest.raises(error, match=str(bad.name)):
        load(bad)
    with pytest.raises(error, match="do not exist"):
        load(tmp_path / "missing.safetensors")


def _write_ct2(path, variables):
    """A CTranslate2 model.bin holding ``variables`` (its layout, as ``read_ctranslate2`` reads it)."""
    import struct

    codes = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.int16): 2, np.dtype(np.int32): 3,
             np.dtype(np.float16): 4}

    def string(s):
        return struct.pack("H", len(s) + 1) + s.encode() + b"\0"

    out = struct.pack("I", 6) + string("WhisperSpec") + struct.pack("I", 3) + struct.pack("I", len(variables))
    for name, a in variables.items():
        a = np.asarray(a)  # (ascontiguousarray would make a scalar 1-d)
        out += string(name) + struct.pack("B", a.ndim) + b"".join(struct.pack("I", d) for d in a.shape)
        out += struct.pack("B", codes[a.dtype]) + struct.pack("I", a.nbytes) + a.tobytes()
    path.write_bytes(out + struct.pack("I", 0))


def test_whisper_conversion_maps_every_tensor_and_runs(tmp_path):
    """A small Whisper-like CTranslate2 file (width 16, 2 heads, 3 blocks; the decoder is
    ignored) converts to the encoder's tensors with the values in place, its first
    ``layers`` blocks only, and the converted encoder runs on audio of any length: 50
    frames a second, windows for audio longer than 30 s, no NaN."""
    rng = np.random.default_rng(0)
    D, blocks = 16, 3
    v = {"encoder/conv1/weight": rng.normal(0, 0.1, (D, 80, 3)), "encoder/conv1/bias": rng.normal(0, 0.1, D),
         "encoder/conv2/weight": rng.normal(0, 0.1, (D, D, 3)), "encoder/conv2/bias": rng.normal(0, 0.1, D),
         "encoder/position_encodings/encodings": rng.normal(0, 0.1, (1500, D)),
         "encoder/num_heads": np.array(2, np.int16), "decoder/embeddings/weight": rng.normal(0, 1, (10, D))}
    for i in range(blocks):
        for part, shape in (("self_attention/layer_norm/gamma", D), ("self_attention/layer_norm/beta", D),
                            ("self_attention/linear_0/weight", (3 * D, D)), ("self_attention/linear_0/bias", 3 * D),
                            ("self_attention/linear_1/weight", (D, D)), ("self_attention/linear_1/bias", D),
                            ("ffn/layer_norm/gamma", D), ("ffn/layer_norm/beta", D),
                            ("ffn/linear_0/weight", (4 * D, D)), ("ffn/linear_0/bias", 4 * D),
                            ("ffn/linear_1/weight", (D, 4 * D)), ("ffn/linear_1/bias", D)):
            v[f"encoder/layer_{i}/{part}"] = rng.normal(0, 0.1, shape)
    v = {k: (a if a.dtype == np.int16 else a.astype(np.float16)) for k, a in v.items()}
    _write_ct2(tmp_path / "model.bin", v)
    tensors, cfg = SE.from_whisper_ctranslate2(tmp_path / "model.bin", layers=2)
    assert (cfg.width, cfg.heads, cfg.layers) == (D, 2, 2)
    np.testing.assert_array_equal(tensors["blocks.1.fc1.weight"].numpy(), v["encoder/layer_1/ffn/linear_0/weight"])
    np.testing.assert_array_equal(tensors["positions"].numpy(), v["encoder/position_encodings/encodings"])
    assert not any(k.startswith("blocks.2.") for k in tensors)
    assert SE.main(["--ct2", str(tmp_path / "model.bin"), "--out", str(tmp_path / "enc.safetensors"),
                    "--layers", "2"]) == 0
    enc = SE.load_speech_encoder(tmp_path / "enc.safetensors")
    for seconds in (0.01, 1.0, 31.7):
        x = _speechlike(seconds) if seconds >= 1 else np.zeros(int(seconds * SR), np.float32)
        for causal in (False, True):
            f = enc(x, causal)
            assert f.shape == ((len(x) // SE.HOP + 1) // 2, D) and bool(torch.isfinite(f).all())


def test_bad_audio_errors(tmp_path):
    with pytest.raises(ValueError, match="sample_rate"):
        lipsync(np.zeros(1000, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        lipsync(np.full(16000, np.nan, np.float32), sample_rate=SR)
    with pytest.raises(ValueError, match="fps"):
        lipsync((np.zeros(16000, np.float32), SR), fps=0)
    with pytest.raises(A.AudioError, match="causal must be True or False"):
        lipsync((np.zeros(16000, np.float32), SR), causal="yes")
    with pytest.raises(A.AudioError, match="does not exist"):
        lipsync(tmp_path / "nothing.wav")
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(A.AudioError, match="empty"):
        lipsync(empty)
    with pytest.raises(A.AudioError, match="6 ms long, shorter than one video frame"):  # as render says it
        lipsync(np.full(100, 0.1, np.float32), sample_rate=SR)


@pytest.mark.parametrize("causal", [False, True])
def test_audio_shorter_than_an_encoder_frame_gives_its_video_frame(causal):
    """At a high fps one video frame can be shorter than the encoder's 20 ms frame: the
    curves still have that frame (the edges' silence around it), finite and at rest."""
    res = lipsync(np.full(48, 0.01, np.float32), sample_rate=SR, fps=500, causal=causal)  # 3 ms, 1.5 frames
    assert len(res) == 2 and np.isfinite(res.opening).all() and np.isfinite(res.visemes).all()
    assert res.opening.max() < 0.03


def test_cli_csv_json_and_bad_files(tmp_path, capsys):
    import soundfile as sf

    wav = tmp_path / "speech.wav"
    sf.write(str(wav), _speechlike(1.0), SR)
    assert cli_main([str(wav), "--out", str(tmp_path / "c.csv")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "c.csv")))
    assert len(rows) == 25 and {"frame", "time", "opening", "width", "viseme", "p_PBM"} <= set(rows[0])
    assert cli_main([str(wav), "--out", str(tmp_path / "c.json"), "--fps", "30", "--embedding", "--causal"]) == 0
    obj = json.loads((tmp_path / "c.json").read_text())
    assert obj["fps"] == 30 and len(obj["opening"]) == 30 and len(obj["embedding"]) == 30 and obj["causal"]
    capsys.readouterr()
    bad = tmp_path / "noise.wav"
    bad.write_bytes(b"RIFF....garbage")
    assert cli_main([str(bad), "--out", str(tmp_path / "x.csv")]) == 2
    assert "noise.wav" in capsys.readouterr().err
    assert cli_main([str(tmp_path / "missing.wav"), "--out", str(tmp_path / "x.csv")]) == 2
    assert "missing.wav" in capsys.readouterr().err
    assert cli_main([str(wav), "--out", str(tmp_path / "x.txt")]) == 2
    assert ".csv or .json" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


def test_running_normaliser_equals_causal_normalise_in_any_chunks():
    """A stream's normalisation, fed in uneven chunks, equals ``normalise(causal=True)`` of
    the whole log-mel (speech of changing loudness, silence first)."""
    import numpy as np
    import torch

    from dgtalker.audio.frontend import RunningNormaliser, normalise

    rng = np.random.default_rng(5)
    mel = rng.normal(-4, 2, (400, 80)).astype(np.float32)
    mel[:60] = -11.5                     # leading silence
    mel[200:] += 3.0                     # louder later: the running level rises
    whole = normalise(torch.from_numpy(mel.T.copy()), True).numpy().T
    run = RunningNormaliser(80)
    cuts = [0, 1, 7, 60, 61, 150, 333, 400]
    parts = [run(mel[a:b]) for a, b in zip(cuts[:-1], cuts[1:])]
    np.testing.assert_allclose(np.concatenate(parts), whole, rtol=0, atol=1e-5)
    assert run(mel[:0]).shape == (0, 80)


@pytest.mark.parametrize("window", [0.5, 4.0])
def test_running_normaliser_with_a_level_window_equals_causal_normalise(window):
    """The level correction in a stream (the last window's frame levels kept) equals
    ``normalise(causal=True, level_window=...)`` of the whole log-mel, in uneven chunks
    longer and shorter than the window."""
    rng = np.random.default_rng(6)
    mel = rng.normal(-4, 1, (1200, 80)).astype(np.float32)
    mel[:60] = -11.5                     # leading silence
    mel[400:800] -= 0.8                  # a softer passage
    mel[900:980] -= 6.0                  # a pause
    whole = FE.normalise(torch.from_numpy(mel.T.copy()), True, window).numpy().T
    run = FE.RunningNormaliser(80, window)
    cuts = [0, 1, 7, 60, 61, 150, 333, 790, 1200]
    parts = [run(mel[a:b]) for a, b in zip(cuts[:-1], cuts[1:])]
    np.testing.assert_allclose(np.concatenate(parts), whole, rtol=0, atol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_a_softer_passage_reads_at_the_clips_level_and_a_pause_stays_a_pause(causal):
    """With a level window, speech 8 dB softer than the rest of the clip is read at nearly
    the clip's level (without one it reads 3-5 dB low); a pause is not lifted; and the
    correction reads no later frame in causal mode."""
    rng = np.random.default_rng(7)
    mel = rng.normal(-4, 1, (1600, 80)).astype(np.float32)
    mel[500:1150] -= 0.8                 # 8 dB softer for 6.5 s
    mel[1300:1500] = -11.0 + 0.1 * rng.standard_normal((200, 80))  # a 2 s pause
    x = torch.from_numpy(mel.T.copy())
    plain = FE.normalise(x, causal).numpy()
    level = FE.normalise(x, causal, 4.0).numpy()
    # frames whose whole window (causal: the 4 s before them) is loud, soft, or in the pause
    rest, soft, pause = (slice(100, 290), slice(950, 1100), slice(1300, 1500)) if causal else \
        (slice(100, 290), slice(750, 900), slice(1300, 1500))
    assert plain[:, soft].mean() - plain[:, rest].mean() < -0.3 / FE.INPUT_SCALE  # (the mean has some of it)
    assert abs(level[:, soft].mean() - level[:, rest].mean()) < 0.1 / FE.INPUT_SCALE
    assert (level[:, pause] <= plain[:, pause] + 1e-6).all()
    if causal:
        changed = mel.copy()
        changed[1000:] += 2.0
        again = FE.normalise(torch.from_numpy(changed.T.copy()), True, 4.0).numpy()
        np.testing.assert_array_equal(again[:, :1000], level[:, :1000])


def test_a_talker_reads_speech_with_its_level_window():
    """A talker made with a level window gives its encoders the level-corrected front end
    input; one without reads the clip's level only; a window without a front end is refused."""
    from test_talker import tiny_generator

    from dgtalker.talker import Talker, TalkerConfig

    fe = FE.load_frontend()
    common = dict(k_exp=2, k_lip=2, width=64, height=64, frontend=__import__("dataclasses").asdict(fe.config),
                  normalised_mel=True)
    rng = np.random.default_rng(8)
    x = (0.1 * rng.standard_normal(12 * SR)).astype(np.float32)
    x[4 * SR:9 * SR] *= 0.3              # 10 dB softer for 5 s
    mel = A.log_mel(x)
    feats = {}
    for w in (0.0, 4.0):
        t = Talker(tiny_generator(), TalkerConfig(**common, level_window=w))
        feats[w], start = t.speech_features(mel)
    soft = slice(650 - start, 750 - start)   # mel frames 650-750, whose 4 s windows are all soft
    assert feats[4.0][soft, :80].mean() > feats[0.0][soft, :80].mean() + 0.25 / FE.INPUT_SCALE
    with pytest.raises(ValueError, match="level_window"):
        TalkerConfig(k_exp=2, k_lip=2, level_window=4.0)
    with pytest.raises(ValueError, match="level_window"):
        TalkerConfig(**common, level_window=-1.0)
