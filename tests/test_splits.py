"""Honest splits: empty train splits are refused where they are made and where they are
read, the talker records the frames it trained on, eval labels what it scores, and a
resume refuses other options or another dataset unless told to."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from priors import TINY

from dgtalker.data import load
from dgtalker.data.format import check_splits, tail_splits

SAMPLE = Path(__file__).parent / "data" / "sample"


def tiny_config(**kw):
    from dgtalker.train.config import IdentityTrainConfig

    base = dict(steps=2, resolution=32, pairs=1, k_exp=2, k_lip=2, invert_steps=0, locality=0.0, distill_weight=0.0,
                amp=False, checkpoint_every=100, preview_every=100, side_resolution=16)
    return IdentityTrainConfig(**{**base, **kw})


def tiny_generator():
    from dgtalker.models.generator import Generator, GeneratorConfig

    return Generator(GeneratorConfig(**TINY), seed=0)


def clip_with_splits(tmp_path, train, heldout):
    clip = shutil.copytree(SAMPLE, tmp_path / "clip")
    (clip / "splits.json").write_text(json.dumps({"train": list(train), "heldout": list(heldout)}))
    return clip


def test_splits_that_hold_out_nothing_or_everything_are_refused_where_made():
    assert tail_splits(range(10), 0.2) == {"train": list(range(8)), "heldout": [8, 9]}
    assert tail_splits(range(10), 0.0)["heldout"] == []  # 0 asks for none
    with pytest.raises(ValueError, match="holds out none"):
        tail_splits(range(10), 0.01)
    with pytest.raises(ValueError, match="leaves 0 for training"):
        tail_splits(range(100), 0.999)
    with pytest.raises(ValueError, match="leaves 1 for training"):
        tail_splits(range(10), 0.9)
    with pytest.raises(ValueError, match="train split is empty"):
        check_splits({"train": [], "heldout": [0, 1]}, 2)
    with pytest.raises(ValueError, match="both"):
        check_splits({"train": [0, 1], "heldout": [1]}, 2)
    with pytest.raises(ValueError, match="outside"):
        check_splits({"train": [0, 5]}, 3)


def test_dataset_writer_refuses_an_empty_train_split(tmp_path):
    from dgtalker.data import DatasetWriter

    w = DatasetWriter(tmp_path / "d", 8, 8, kind="multiview")
    for _ in range(2):
        w.add_frame(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 4), np.float32), np.eye(3), np.eye(4))
    with pytest.raises(ValueError, match="train split is empty"):
        w.close(splits={"train": [], "heldout": [0, 1]})
    assert not (tmp_path / "d").exists() and not list(tmp_path.iterdir())  # nothing half-written


def test_preprocess_refuses_a_heldout_fraction_that_empties_a_split(tmp_path):
    from dgtalker.cli import main

    # refused by the argument checks, before the video is opened (it does not exist)
    with pytest.raises(SystemExit):
        main(["preprocess", str(tmp_path / "none.mp4"), "--out", str(tmp_path / "o"), "--heldout", "1.5"])
    with pytest.raises(SystemExit):
        main(["preprocess", str(tmp_path / "none.mp4"), "--out", str(tmp_path / "o"), "--size", "0"])


def test_training_refuses_an_empty_train_split(tmp_path):
    """Before, an empty train split made the trainer train on every frame, held-out ones
    included."""
    from dgtalker.train.identity import train_identity

    clip = clip_with_splits(tmp_path, [], range(50))
    with pytest.raises(ValueError, match="train split .* is empty"):
        train_identity(clip, tmp_path / "t.safetensors", tiny_config(), prior=tiny_generator(), device="cpu",
                       progress=False)
    assert not (tmp_path / "t.safetensors").exists()


def test_talker_records_its_training_frames_and_eval_labels_by_them(tmp_path):
    from dgtalker.eval.evaluate import scored_frames
    from dgtalker.talker import load_talker
    from dgtalker.train.identity import train_identity

    clip = clip_with_splits(tmp_path, range(30), range(30, 50))
    out = tmp_path / "t.safetensors"
    train_identity(clip, out, tiny_config(), prior=tiny_generator(), device="cpu", progress=False)
    T = load_talker(out, device="cpu")
    assert T.train_mask.tolist() == [True] * 30 + [False] * 20
    ds = load(clip)
    assert T.source["train_frames"] == 30 and T.source["dataset_sha256"] == ds.fingerprint()
    assert scored_frames(T, ds, np.arange(30, 50))["label"] == "20 held-out frames"
    assert scored_frames(T, ds, np.arange(0, 10))["label"] == "10 training frames"
    both = scored_frames(T, ds, np.arange(50))
    assert both["label"] == "50 frames (30 training, 20 held-out)"
    other = load(SAMPLE)  # the same frames with other splits: another dataset to the talker
    assert scored_frames(T, other, np.arange(40, 50))["label"] == "10 frames of a clip the talker was not trained on"


def test_resume_refuses_other_options_and_another_dataset(tmp_path):
    from dgtalker.talker import load_talker
    from dgtalker.train.identity import train_identity

    clip = clip_with_splits(tmp_path, range(40), range(40, 50))
    out = tmp_path / "t.safetensors"
    kw = dict(prior=tiny_generator(), device="cpu", progress=False)
    train_identity(clip, out, tiny_config(steps=1), **kw)
    train_identity(clip, out, tiny_config(steps=2), **kw)  # a longer budget is the same run
    with pytest.raises(ValueError, match=r"leak_weight 0.05 -> 0.5.*--force-resume"):
        train_identity(clip, out, tiny_config(steps=3, leak_weight=0.5), **kw)
    (clip / "splits.json").write_text(json.dumps({"train": list(range(35)), "heldout": list(range(35, 50))}))
    with pytest.raises(ValueError, match="train frames 40 -> 35"):
        train_identity(clip, out, tiny_config(steps=3), **kw)
    (clip / "splits.json").write_text(json.dumps({"train": list(range(40)), "heldout": list(range(40, 50))}))
    gt = dict(np.load(clip / "gt.npz"))
    gt["jaw_open"] = gt["jaw_open"] * 0.5  # same sizes, other content
    np.savez(clip / "gt.npz", **gt)
    with pytest.raises(ValueError, match="dataset content changed"):
        train_identity(clip, out, tiny_config(steps=3), **kw)
    moved = shutil.copytree(clip, tmp_path / "moved")
    with pytest.raises(ValueError, match="dataset .* -> "):
        train_identity(moved, out, tiny_config(steps=3), **kw)
    with pytest.raises(ValueError, match="k_exp 2 -> 3"):  # never, not even forced
        train_identity(clip, out, tiny_config(steps=3, k_exp=3), force_resume=True, **kw)
    context = tiny_config().encoder_context  # the talker's layout, fixed when it was made
    with pytest.raises(ValueError, match=f"another talker layout \\(encoder_context {context} -> {context + 1}\\)"):
        train_identity(clip, out, tiny_config(steps=3, encoder_context=context + 1), force_resume=True, **kw)
    train_identity(clip, out, tiny_config(steps=3, leak_weight=0.5), force_resume=True, **kw)
    # how the finished talker reads speech is not training: a resume takes this run's
    train_identity(clip, out, tiny_config(steps=4, leak_weight=0.5, level_window=2.0, motion_window=1.0), **kw)
    back = load_talker(out)
    assert back.config.level_window == 2.0
    assert back.config.motion_window == 1.0 and back.config.lip_motion > 0
    train_identity(clip, out, tiny_config(steps=5, leak_weight=0.5, motion_window=0.0), **kw)
    assert load_talker(out).config.motion_window == 0.0 and load_talker(out).config.lip_motion == 0.0
    src = load_talker(out).source
    assert src["trained_steps"] == 5 and src["train_config"]["leak_weight"] == 0.5
    changes = " ".join(src["forced_resumes"][0]["changes"])
    assert "leak_weight" in changes and "dataset content changed" in changes


def test_train_command_checks_its_arguments_first(tmp_path, capsys):
    from dgtalker.cli import main

    for bad in (["--steps", "0"], ["--res", "8.7"], ["--pairs", "-1"]):
        with pytest.raises(SystemExit):
            main(["train", str(SAMPLE), "--out", str(tmp_path / "t.safetensors"), *bad])
    if not torch.cuda.is_available():
        assert main(["train", str(SAMPLE), "--out", str(tmp_path / "t.safetensors"), "--device", "cuda"]) == 2
        assert "no CUDA device" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "nope"), "--out", str(tmp_path / "t.safetensors"), "--device", "cpu"]) == 2
    assert "no such dataset" in capsys.readouterr().err
    assert not (tmp_path / "t.safetensors").exists()
