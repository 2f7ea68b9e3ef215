"""Prior training on CPU at toy size: the loss falls, resume is exact, an interrupted
save leaves the last good checkpoint, and DDP over gloo matches one process."""
import os
import socket
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from dgtalker.checkpoint import load_prior
from dgtalker.train import prior as prior_train
from dgtalker.train.prior import PriorTrainConfig, pretrain_prior

from priors import RES, TINY, write_corpus

# Pinned to the CPU: exact resume and DDP equivalence are checked bit-for-bit or
# nearly, which the CUDA backward's atomic adds would blur on a GPU machine.
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus") / "prior")


def config(**kw):
    base = PriorTrainConfig(steps=4, batch=4, resolution=RES, lr=5e-3, code_lr=2e-2, checkpoint_every=2,
                            preview_every=1000, generator=dict(TINY), amp=False)
    return replace(base, **kw)


def params(path):
    return {k: v.clone() for k, v in load_prior(path).state_dict().items()}


def test_loss_goes_down(corpus, tmp_path):
    out = tmp_path / "p.safetensors"
    pretrain_prior(corpus, out, config(steps=40, checkpoint_every=40), device=CPU, progress=False)
    hist = prior_train.load_training_state(out)["history"]
    first = np.mean([h["loss"] for h in hist[:4]])
    last = np.mean([h["loss"] for h in hist[-4:]])
    assert last < 0.8 * first, (first, last)
    assert load_prior(out).config.resolution == 16


def test_resume_continues_where_it_stopped(corpus, tmp_path):
    straight, resumed = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    pretrain_prior(corpus, straight, config(steps=6, checkpoint_every=3), device=CPU, progress=False)
    pretrain_prior(corpus, resumed, config(steps=3, checkpoint_every=3), device=CPU, progress=False)
    state = prior_train.load_training_state(resumed)
    assert state["step"] == 3
    pretrain_prior(corpus, resumed, config(steps=6, checkpoint_every=3), device=CPU, progress=False)
    a, b = params(straight), params(resumed)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    sa = prior_train.load_training_state(straight)
    sb = prior_train.load_training_state(resumed)
    assert sa["step"] == sb["step"] == 6
    assert torch.allclose(sa["model"]["codes"], sb["model"]["codes"], atol=1e-6)


def test_interrupted_save_leaves_last_good_checkpoint(corpus, tmp_path, monkeypatch):
    out = tmp_path / "p.safetensors"
    pretrain_prior(corpus, out, config(steps=2, checkpoint_every=2), device=CPU, progress=False)
    good = params(out)

    import dgtalker.io

    real = dgtalker.io.atomic_write_bytes
    calls = []

    def dying_write(path, data):  # the process dies halfway through writing the next state
        calls.append(Path(path).name)
        tmp = Path(path).with_name("." + Path(path).name + ".partial")
        tmp.write_bytes(data[: len(data) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(dgtalker.io, "atomic_write_bytes", dying_write)
    with pytest.raises(KeyboardInterrupt):
        pretrain_prior(corpus, out, config(steps=4, checkpoint_every=2), device=CPU, progress=False)
    monkeypatch.setattr(dgtalker.io, "atomic_write_bytes", real)
    assert calls and calls[0] == out.name + prior_train.STATE_SUFFIX  # the state is written first
    after = params(out)
    for k in good:
        assert torch.equal(good[k], after[k])
    assert prior_train.load_training_state(out)["step"] == 2


def test_resume_unpickles_nothing(corpus, tmp_path, monkeypatch):
    import pickle

    out = tmp_path / "p.safetensors"
    pretrain_prior(corpus, out, config(steps=2, checkpoint_every=2), device=CPU, progress=False)
    assert prior_train._state_path(out).name == "p.safetensors.state.safetensors"

    def refuse(*args, **kwargs):
        raise AssertionError("training state must not be unpickled")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    pretrain_prior(corpus, out, config(steps=3, checkpoint_every=3), device=CPU, progress=False)
    state = prior_train.load_training_state(out)
    assert state["step"] == 3 and [h["step"] for h in state["history"]] == [1, 2, 3]
    assert state["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.99)


def test_tampered_training_state_is_a_clear_error(corpus, tmp_path):
    import json
    import struct

    from dgtalker.checkpoint import CheckpointError

    out = tmp_path / "p.safetensors"
    pretrain_prior(corpus, out, config(steps=2, checkpoint_every=2), device=CPU, progress=False)
    path = prior_train._state_path(out)
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    good = header["__metadata__"]["state"]

    def rewrite(state_json):
        header["__metadata__"]["state"] = state_json
        blob = json.dumps(header).encode()
        path.write_bytes(struct.pack("<Q", len(blob)) + blob + data[8 + n:])

    rewrite(json.dumps({**json.loads(good), "step": "two"}))
    with pytest.raises(CheckpointError, match="unreadable training state metadata"):
        pretrain_prior(corpus, out, config(), device=CPU, progress=False)
    rewrite(json.dumps({**json.loads(good), "config": {**json.loads(good)["config"], "generator": {"w_dim": 1 << 20}}}))
    with pytest.raises(CheckpointError, match="invalid training config"):
        pretrain_prior(corpus, out, config(), device=CPU, progress=False)
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        pretrain_prior(corpus, out, config(), device=CPU, progress=False)


def test_old_pickled_state_is_not_loaded(corpus, tmp_path):
    from dgtalker.checkpoint import CheckpointError

    out = tmp_path / "p.safetensors"
    out.write_bytes(b"a prior")
    out.with_name(out.name + ".state.pt").write_bytes(b"a pickle")
    with pytest.raises(CheckpointError, match="a pickle, which is not loaded"):
        pretrain_prior(corpus, out, config(), device=CPU, progress=False)


def test_existing_out_without_state_is_refused(corpus, tmp_path):
    out = tmp_path / "p.safetensors"
    out.write_bytes(b"not a prior")
    with pytest.raises(FileExistsError, match="has no training state"):
        pretrain_prior(corpus, out, config(), device=CPU, progress=False)


def test_single_view_corpus_is_refused(tmp_path):
    """The corpus kind is checked first: a talking clip is refused as such even when
    its audio (or anything else a full load checks) is unreadable."""
    import shutil

    sample = tmp_path / "sample"
    shutil.copytree(Path(__file__).parent / "data" / "sample", sample)
    with pytest.raises(ValueError, match="needs a multiview corpus"):
        pretrain_prior(sample, tmp_path / "p.safetensors", config(), device=CPU, progress=False)
    (sample / "audio.wav").write_bytes(b"not audio")
    with pytest.raises(ValueError, match="needs a multiview corpus"):
        pretrain_prior(sample, tmp_path / "p.safetensors", config(), device=CPU, progress=False)


def _ddp_worker(rank, world, port, corpus, out):
    import torch.distributed as dist
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        pretrain_prior(corpus, out, config(steps=3, checkpoint_every=3), device=CPU, progress=False)
        dist.barrier()  # neither rank tears the group down while the other still uses it
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_match_one(corpus, tmp_path):
    one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    pretrain_prior(corpus, one, config(steps=3, checkpoint_every=3), device=CPU, progress=False)
    mp.start_processes(_ddp_worker, args=(2, _free_port(), str(corpus), str(two)), nprocs=2, join=True,
                       start_method="spawn")
    a, b = params(one), params(two)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=2e-5, rtol=1e-4), k


def _spy_rasterize(monkeypatch):
    import dgtalker

    real, seen = dgtalker.rasterize, []

    def spy(*args, **kwargs):
        seen.append(kwargs.get("checked"))
        return real(*args, **kwargs)

    monkeypatch.setattr(dgtalker, "rasterize", spy)
    return seen


def test_training_steps_render_checked(corpus, tmp_path, monkeypatch):
    """Every training forward waits for its status, so on CUDA an overflowed forward is
    redone before its gradient exists (the behaviour is tested on the GPU below)."""
    seen = _spy_rasterize(monkeypatch)
    pretrain_prior(corpus, tmp_path / "p.safetensors", config(steps=2, checkpoint_every=2), device=CPU,
                   progress=False)
    assert seen == [True, True]


def _fresh_model(data, device, seed=0):
    from dgtalker.models.generator import Generator, GeneratorConfig

    model = prior_train.PriorModel(Generator(GeneratorConfig.from_dict(dict(TINY)), seed=seed), data.num_codes,
                                   seed=seed).to(device)
    gen_params = [p for n, p in model.named_parameters() if n != "codes"]
    opt = torch.optim.Adam([{"params": gen_params, "lr": 5e-3}, {"params": [model.codes], "lr": 2e-2}],
                           betas=(0.9, 0.99))
    return model, opt


@pytest.mark.gpu
def test_no_step_from_an_overflowed_forward_on_cuda(corpus):
    """Starve the intersection capacity of the training shape: the step's forward
    overflows, is redone at once, and the step (its loss and its update) is the one a
    well-sized forward gives; no 'missed some Gaussians' warning is ever due."""
    import warnings

    from dgtalker.ops import raster as raster_ops

    dev = torch.device("cuda")
    cfg = config()
    data = prior_train.CorpusImages(corpus, cfg.resolution, progress=False)
    ref_model, ref_opt = _fresh_model(data, dev)
    ref = prior_train.train_step(ref_model, ref_opt, data, 0, cfg, dev)  # sizes the shape's capacity
    model, opt = _fresh_model(data, dev)
    for key in list(raster_ops._BOOK.capacity):
        raster_ops._BOOK.capacity[key] = 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        got = prior_train.train_step(model, opt, data, 0, cfg, dev)
        raster_ops.check_status(wait=True)
    assert abs(got["loss"] - ref["loss"]) < 1e-5, (got, ref)
    assert max(raster_ops._BOOK.capacity.values()) > 1  # the overflow was seen and the capacity grown
    # Adam's first update is lr * sign(gradient): equal wherever the gradients are not ~0
    same = [torch.isclose(a, b, atol=1e-6).float().mean().item() for a, b in zip(model.parameters(),
                                                                                 ref_model.parameters())]
    assert min(same) > 0.95, same
