"""Training of dgtalker.lipsync's heads (audio.lipsync_train): the passages' targets line
up with their speech, pauses are the mouth at rest, and a short run writes a model that
loads and runs (CPU, a made-up corpus; no speech synthesiser needed)."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dgtalker.audio import lipsync_model as LM  # noqa: E402
from dgtalker.audio import lipsync_train as LT  # noqa: E402
from dgtalker.audio.tts_corpus import SIL_TARGET  # noqa: E402


def _corpus(n=14, seed=0):
    """Utterance k's samples count its own samples (sample s holds s / 32767) and its
    opening targets (100 per second) hold k + 1 + frame / 1000: a passage's targets then
    say which utterance and frame they came from, and its samples where it is."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(6000, 30000, n)
    audio = [np.arange(L, dtype=np.int16) for L in lengths]
    frames = [int(L) // 160 + 1 for L in lengths]
    opening = np.concatenate([k + 1 + np.arange(f) / 1000 for k, f in enumerate(frames)]).astype(np.float32)
    return {"audio": np.concatenate(audio), "audio_offsets": np.cumsum([0, *lengths]).astype(np.int64),
            "offsets": np.cumsum([0, *frames]).astype(np.int64), "opening": opening,
            "width": np.full(len(opening), 0.5, np.float32), "viseme": np.full(len(opening), 9, np.uint8)}


def test_passage_targets_follow_their_speech_and_pauses_rest():
    corpus = _corpus()
    ps = LT.passages(corpus, np.random.default_rng(1), log=lambda *a: None)
    seen, pauses = set(), 0
    for x, o, w, v in ps:
        assert len(o) == len(w) == len(v) == len(x) // LT.STEP + 1
        for j in range(len(o) - 1):
            s = LT.STEP * j
            if o[j] < 1:  # a pause or noise alone: the mouth at rest
                assert o[j] == pytest.approx(SIL_TARGET[1]) and v[j] == 0
                pauses += 1
                continue
            k, frame = int(o[j]) - 1, int(round((o[j] % 1) * 1000))
            seen.add(k)
            # the sample under frame j is the utterance's own sample within half a mel hop
            # (a hop at its end, whose last target is the nearest)
            last = corpus["offsets"][k + 1] - corpus["offsets"][k] - 1
            off_by = round(float(x[s]) * 32767) - frame * 160
            assert abs(off_by) <= 80 or (frame == last and 0 < off_by < 160), (k, frame, x[s] * 32767)
            assert v[j] == 9 and w[j] == pytest.approx(0.5)
    assert seen == set(range(14)) and pauses > 0


def test_a_short_training_run_writes_a_model_that_loads_and_runs(tmp_path):
    from dgtalker.io import atomic_save_npz

    corpus = _corpus(n=40)
    rng = np.random.default_rng(2)  # speech-like samples: the encoder reads real features
    corpus["audio"] = (rng.standard_normal(len(corpus["audio"])) * 3000).astype(np.int16)
    path = tmp_path / "corpus.npz"
    atomic_save_npz(path, **corpus)
    out = tmp_path / "lipsync.safetensors"
    res = LT.train(path, out, steps=3, seed=0, batch=4, crop=40, lead=None, log=lambda *a: None)
    assert res["steps"] == 3 and set(LM.MODES) <= set(res)
    model = LM.load_lipsync(out)
    for m in LM.MODES:  # the heads read the features' 64 leading directions, stored with them
        assert model.configs[m].components == 64 and tuple(model.heads[m].projection.shape) == (512, 64)
    assert model.meta["speech_encoder_sha256"] == res["speech_encoder_sha256"]
    y = model(np.zeros(16000, np.float32), fps=25, num_frames=25, causal=True)
    assert y["opening"].shape == (25,) and np.isfinite(y["embedding"]).all()
    without_audio = tmp_path / "no_audio.npz"
    atomic_save_npz(without_audio, **{k: v for k, v in corpus.items() if not k.startswith("audio")})
    with pytest.raises(SystemExit, match="--keep-audio"):
        LT.train(without_audio, out, steps=1, seed=0, log=lambda *a: None)
    with pytest.raises(SystemExit, match="no phoneme timings"):  # the default lead recomputes the targets
        LT.train(path, out, steps=1, seed=0, log=lambda *a: None)


def test_an_ensemble_of_heads_gives_its_members_mean(tmp_path):
    """--members: each mode holds that many heads, trained with their own seeds, and the
    model's opening, width and viseme logits are their mean; a second run is the same."""
    from dgtalker.io import atomic_save_npz

    corpus = _corpus(n=40)
    rng = np.random.default_rng(3)
    corpus["audio"] = (rng.standard_normal(len(corpus["audio"])) * 3000).astype(np.int16)
    path = tmp_path / "corpus.npz"
    atomic_save_npz(path, **corpus)
    out = tmp_path / "lipsync.safetensors"
    res = LT.train(path, out, steps=2, seed=0, batch=4, crop=40, lead=None, members=2, log=lambda *a: None)
    assert res["members"] == 2 and {"member0_validation_r", "member1_validation_r"} <= set(res["offline"])
    model = LM.load_lipsync(out)
    x = torch.randn(1, 60, 512)
    for m in LM.MODES:
        head = model.heads[m]
        assert model.configs[m].members == 2 and len(head.members) == 2
        a, b = head.members
        assert not torch.equal(a.stem.weight, b.stem.weight)  # their own seeds
        with torch.no_grad():
            y, ya, yb = head(x), a(x), b(x)
        for k in ("opening", "width", "viseme_logits"):
            torch.testing.assert_close(y[k], (ya[k] + yb[k]) / 2)
        torch.testing.assert_close(y["embedding"], ya["embedding"])
    assert model(np.zeros(16000, np.float32), fps=30, num_frames=30)["opening"].shape == (30,)
    # the seed fixes everything, the initial weights included: the same run writes the same heads
    again = tmp_path / "again.safetensors"
    LT.train(path, again, steps=2, seed=0, batch=4, crop=40, lead=None, members=2, log=lambda *a: None)
    twin = LM.load_lipsync(again)
    for m in LM.MODES:
        for (k, a), b in zip(model.heads[m].state_dict().items(), twin.heads[m].state_dict().values()):
            assert torch.equal(a, b), (m, k)
    for bad in (0, 17, 1.5, True):
        with pytest.raises(ValueError, match="members"):
            LM.HeadConfig(members=bad).check()
    with pytest.raises(SystemExit) as refused:  # the command refuses it before reading the corpus
        LT.main(["--corpus", str(tmp_path / "missing.npz"), "--out", str(out), "--members", "0"])
    assert refused.value.code == 2


def test_the_principal_projection_keeps_the_leading_directions_at_unit_variance():
    rng = np.random.default_rng(4)
    basis = np.linalg.qr(rng.standard_normal((12, 12)))[0]
    spread = np.array([9.0, 5.0, 3.0] + [0.3] * 9)
    x = (rng.standard_normal((4000, 12)) * spread) @ basis.T + 2.0
    p = LM.principal_projection(x, 3)
    z = (x - x.mean(0)) @ p
    np.testing.assert_allclose(np.cov(z.T), np.eye(3), atol=1e-3)  # unit variance, uncorrelated
    for i in range(3):  # each column lies along one of the three strong directions, in order
        cos = abs(p[:, i] @ basis[:, i]) / np.linalg.norm(p[:, i])
        assert cos > 0.99, (i, cos)
    with pytest.raises(ValueError, match="components"):
        LM.HeadConfig(components=-1).check()


def test_the_corpus_keeps_phoneme_timings_that_give_its_targets_again():
    """A few seconds of the real corpus (espeak-ng): its stored phoneme timings, read back,
    give the stored mouth targets again, so they can be recomputed without synthesising."""
    import shutil

    from dgtalker.audio import tts_corpus as TC

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    arrays = TC.build(0.15, seed=3, flite_share=0.0, log=lambda *a: None, keep_audio=True)
    phones = TC.corpus_phones(arrays)
    off, aoff = arrays["offsets"], arrays["audio_offsets"]
    assert len(phones) == len(off) - 1 >= 2
    for k, ph in enumerate(phones):
        assert all(0 <= s <= e for s, e, _ in ph) and any(sym for _, _, sym in ph)
        o, w, v = TC.mouth_targets(ph, (aoff[k + 1] - aoff[k]) / 16000)
        n = off[k + 1] - off[k]
        np.testing.assert_allclose(o[:n], arrays["opening"][off[k]:off[k + 1]].astype(np.float32), atol=1e-3)
        np.testing.assert_array_equal(v[:n], arrays["viseme"][off[k]:off[k + 1]])
    with pytest.raises(ValueError, match="phoneme timings"):
        TC.corpus_phones({"opening": arrays["opening"]})
    # the trainer's retargeting: the corpus' own lead gives its targets, a longer one moves them earlier
    same = {k: arrays[k] for k in ("offsets", "audio_offsets")}
    LT.retarget(same, phones, TC.ANTICIPATION_S)
    np.testing.assert_allclose(same["opening"], arrays["opening"].astype(np.float32), atol=1e-3)
    ahead = dict(same)
    LT.retarget(ahead, phones, TC.ANTICIPATION_S + 0.04)  # 4 frames at 100 Hz
    lag = max(range(-8, 9), key=lambda k: np.corrcoef(np.roll(ahead["opening"], k), same["opening"])[0, 1])
    assert lag == 4, lag
