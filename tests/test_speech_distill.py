"""The smaller speech encoder and its distillation (audio.speech_distill): the student
starts as the teacher where it has the teacher's shape, its pooled blocks keep the
teacher's frame count for any length, and a short run writes an encoder that loads and
runs (CPU, a made-up corpus)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dgtalker.audio import speech_distill as SD  # noqa: E402
from dgtalker.audio import speech_encoder as SE  # noqa: E402


def _noise_mel(enc, seconds=3.0, seed=0):
    x = (np.random.default_rng(seed).standard_normal(int(seconds * SE.SAMPLE_RATE)) * 0.1).astype(np.float32)
    return enc.log_mel(x)


def test_student_of_the_teachers_shape_is_the_teacher():
    teacher = SE.load_speech_encoder()
    mel = _noise_mel(teacher)
    with torch.no_grad():
        ref = teacher.model(mel[None])
        same = SE.build_model(teacher.config)
        SD._init_from_teacher(teacher.model, same, [mel])
        assert torch.equal(same(mel[None]), ref)
        # a factored stem of full rank is the teacher's convolution (to float32 rounding)
        full = SE.build_model(replace(teacher.config, stem_rank=teacher.config.width))
        SD._init_from_teacher(teacher.model, full, [mel])
        assert (full(mel[None]) - ref).abs().max() < 1e-3 * ref.abs().max()
        # cut to fewer heads and hidden units, the kept ones are the teacher's own rows
        cut = SE.build_model(replace(teacher.config, heads=6, head_dim=64, mlp=1000))
        SD._init_from_teacher(teacher.model, cut, [mel])
        t_fc1, s_fc1 = teacher.model.blocks[0].fc1.weight, cut.blocks[0].fc1.weight
        assert all(any(torch.equal(row, t) for t in t_fc1) for row in s_fc1[:5])
        assert cut.blocks[0].qkv.weight.shape == (3 * 6 * 64, teacher.config.width)


@pytest.mark.parametrize("seconds", [0.013, 0.5, 1.01, 2.37, 31.7])
def test_pooled_blocks_keep_the_frame_count(seconds):
    """Means of two stem frames in the blocks, and back to 50 frames per second after
    them: as many frames as the teacher for any length (odd counts too), windows past
    30 s included, in both modes."""
    teacher = SE.load_speech_encoder()
    cfg = replace(teacher.config, **SD.STUDENT)
    student = SE.SpeechEncoder(SE.build_model(cfg), cfg, teacher.mel_filters)
    x = (np.random.default_rng(1).standard_normal(int(seconds * SE.SAMPLE_RATE)) * 0.1).astype(np.float32)
    for causal in (False, True):
        f = student(x, causal)
        assert f.shape == teacher(x, causal).shape and bool(torch.isfinite(f).all())


def test_a_short_distillation_writes_an_encoder_that_loads_and_runs(tmp_path):
    from dgtalker.io import atomic_save_npz

    rng = np.random.default_rng(0)
    lengths = rng.integers(16000, 48000, 24)
    frames = [int(n) // 160 + 1 for n in lengths]
    corpus = {"audio": (rng.standard_normal(int(lengths.sum())) * 3000).astype(np.int16),
              "audio_offsets": np.cumsum([0, *lengths]).astype(np.int64),
              "offsets": np.cumsum([0, *frames]).astype(np.int64),
              "opening": rng.uniform(0, 0.1, sum(frames)).astype(np.float32),
              "width": np.full(sum(frames), 0.5, np.float32), "viseme": np.full(sum(frames), 9, np.uint8)}
    atomic_save_npz(tmp_path / "corpus.npz", **corpus)
    out = tmp_path / "small.safetensors"
    assert SD.main(["--corpus", str(tmp_path / "corpus.npz"), "--out", str(out), "--steps", "2", "--batch", "2",
                    "--log", str(tmp_path / "record.json")]) == 0
    import json

    res = json.loads((tmp_path / "record.json").read_text())
    assert set(res["validation"]) == {"offline", "causal"} and res["sha256"] == SE.sha256_file(out)
    enc = SE.load_speech_encoder(out)
    assert enc.config.pool == 2 and enc.meta["steps"] == 2
    x = (rng.standard_normal(40000) * 0.1).astype(np.float32)
    assert enc(x).shape == SE.load_speech_encoder()(x).shape


def test_lipsync_reads_through_another_encoder(tmp_path, capsys):
    """``dgtalker.lipsync(encoder=...)`` and ``dgtalker lipsync --encoder``: an encoder file
    holding the teacher's own weights gives the shipped curves; a student gives its own;
    a bad file is refused by name."""
    import json

    from dgtalker.audio.lipsync import lipsync
    from dgtalker.audio.lipsync_cli import main as cli_main
    teacher = SE.load_speech_encoder()
    copy = tmp_path / "copy.safetensors"
    SE.save_speech_encoder(copy, teacher.model.state_dict(), teacher.mel_filters, teacher.config)
    x = (np.random.default_rng(3).standard_normal(40000) * 0.1).astype(np.float32)
    ref = lipsync(x, sample_rate=16000)
    same = lipsync(x, sample_rate=16000, encoder=copy)
    assert ref.encoder == "speech_encoder.safetensors" and same.encoder == "copy.safetensors"
    np.testing.assert_allclose(same.opening, ref.opening, atol=1e-5)
    cfg = replace(teacher.config, **SD.STUDENT)
    student = SE.SpeechEncoder(SE.build_model(cfg), cfg, teacher.mel_filters, tmp_path / "student.safetensors")
    SD._init_from_teacher(teacher.model, student.model, [teacher.log_mel(x)])
    other = lipsync(x, sample_rate=16000, encoder=student)
    assert other.encoder == "student.safetensors" and not np.allclose(other.opening, ref.opening, atol=1e-3)
    import soundfile as sf

    wav = tmp_path / "speech.wav"
    sf.write(str(wav), x, 16000)
    assert cli_main([str(wav), "--out", str(tmp_path / "c.json"), "--encoder", str(copy)]) == 0
    assert json.loads((tmp_path / "c.json").read_text())["encoder"] == "copy.safetensors"
    assert "copy.safetensors" in capsys.readouterr().out
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not weights")
    assert cli_main([str(wav), "--out", str(tmp_path / "x.csv"), "--encoder", str(bad)]) == 2
    assert "bad.safetensors" in capsys.readouterr().err and not (tmp_path / "x.csv").exists()
