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
    hist = torch.load(prior_train._state_path(out), weights_only=False)["history"]
    first = np.mean([h["loss"] for h in hist[:4]])
    last = np.mean([h["loss"] for h in hist[-4:]])
    assert last < 0.8 * first, (first, last)
    assert load_prior(out).config.resolution == 16


def test_resume_continues_where_it_stopped(corpus, tmp_path):
    straight, resumed = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    pretrain_prior(corpus, straight, config(steps=6, checkpoint_every=3), device=CPU, progress=False)
    pretrain_prior(corpus, resumed, config(steps=3, checkpoint_every=3), device=CPU, progress=False)
    state = torch.load(prior_train._state_path(resumed), weights_only=False)
    assert state["step"] == 3
    pretrain_prior(corpus, resumed, config(steps=6, checkpoint_every=3), device=CPU, progress=False)
    a, b = params(straight), params(resumed)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    sa = torch.load(prior_train._state_path(straight), weights_only=False)
    sb = torch.load(prior_train._state_path(resumed), weights_only=False)
    assert sa["step"] == sb["step"] == 6
    assert torch.allclose(sa["model"]["codes"], sb["model"]["codes"], atol=1e-6)


def test_interrupted_save_leaves_last_good_checkpoint(corpus, tmp_path, monkeypatch):
    out = tmp_path / "p.safetensors"
    pretrain_prior(corpus, out, config(steps=2, checkpoint_every=2), device=CPU, progress=False)
    good = params(out)

    real = prior_train.atomic_write_bytes

    def dying_write(path, data):  # the process dies halfway through writing the next state
        tmp = Path(path).with_name("." + Path(path).name + ".partial")
        tmp.write_bytes(data[: len(data) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(prior_train, "atomic_write_bytes", dying_write)
    with pytest.raises(KeyboardInterrupt):
        pretrain_prior(corpus, out, config(steps=4, checkpoint_every=2), device=CPU, progress=False)
    monkeypatch.setattr(prior_train, "atomic_write_bytes", real)
    after = params(out)
    for k in good:
        assert torch.equal(good[k], after[k])
    assert torch.load(prior_train._state_path(out), weights_only=False)["step"] == 2


def test_existing_out_without_state_is_refused(corpus, tmp_path):
    out = tmp_path / "p.safetensors"
    out.write_bytes(b"not a prior")
    with pytest.raises(FileExistsError, match="has no training state"):
        pretrain_prior(corpus, out, config(), device=CPU, progress=False)


def test_single_view_corpus_is_refused(tmp_path):
    sample = Path(__file__).parent / "data" / "sample"
    with pytest.raises(ValueError, match="needs a multiview corpus"):
        pretrain_prior(sample, tmp_path / "p.safetensors", config(), device=CPU, progress=False)


def _ddp_worker(rank, world, port, corpus, out):
    import torch.distributed as dist
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        pretrain_prior(corpus, out, config(steps=3, checkpoint_every=3), device=CPU, progress=False)
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
