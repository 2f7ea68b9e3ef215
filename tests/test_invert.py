"""Inversion at toy size on CPU: fitting w (and pivotal tuning) improves PSNR."""
import pytest
import torch

from dgtalker.checkpoint import load_prior
from dgtalker.data import load
from dgtalker.train.invert import InversionConfig, Views, evaluate, invert, load_views
from dgtalker.train.prior import PriorTrainConfig, pretrain_prior
from priors import RES, TINY, write_corpus

# Pinned to the CPU: exact resume and DDP equivalence are checked bit-for-bit or
# nearly, which the CUDA backward's atomic adds would blur on a GPU machine.
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("inv")
    corpus = write_corpus(root / "corpus")
    out = root / "prior.safetensors"
    cfg = PriorTrainConfig(steps=30, batch=4, resolution=RES, lr=5e-3, code_lr=2e-2, checkpoint_every=30,
                           preview_every=1000, generator=dict(TINY), amp=False)
    pretrain_prior(corpus, out, cfg, device=CPU, progress=False)
    return corpus, out


def test_inversion_improves_psnr(trained):
    corpus, out = trained
    gen = load_prior(out)
    ds = load(corpus)
    views = load_views(ds, [4, 5, 6, 7], RES)  # identity 1
    w0 = gen.w_avg[None].clone()
    before = evaluate(gen, w0, views)
    fit = invert(gen, views, InversionConfig(steps=40, lr=0.05, batch=4), progress=False)
    after = evaluate(fit.generator, fit.w, views)
    assert after["psnr"] > before["psnr"] + 0.3, (before, after)
    tuned = invert(gen, views, InversionConfig(steps=40, lr=0.05, batch=4, tune_steps=15, tune_lr=1e-3),
                   progress=False)
    after_tuning = evaluate(tuned.generator, tuned.w, views)
    assert after_tuning["psnr"] > after["psnr"], (after, after_tuning)
    # pivotal tuning works on a copy: the prior itself is unchanged
    assert torch.equal(load_prior(out).output_bias, gen.output_bias)


def test_views_validate_shapes():
    with pytest.raises(ValueError, match=r"fg must have shape \[2, 8, 8\]"):
        Views(torch.rand(2, 8, 8, 3), torch.rand(2, 8, 7), torch.eye(4).repeat(2, 1, 1), torch.eye(3).repeat(2, 1, 1))


def test_invert_gives_the_generator_back_as_it_came(trained, monkeypatch):
    corpus, out = trained
    gen = load_prior(out)
    views = load_views(load(corpus), [4, 5], RES)
    params = list(gen.parameters())
    for i, p in enumerate(params):  # a caller that trains some parameters and froze others
        p.requires_grad_(i % 3 != 0)
    flags = [p.requires_grad for p in params]
    invert(gen, views, InversionConfig(steps=2, batch=2, tune_steps=1), progress=False)
    assert [p.requires_grad for p in params] == flags
    # also when the fit is interrupted halfway
    import dgtalker.train.invert as inv

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(inv, "photometric_loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        invert(gen, views, InversionConfig(steps=2, batch=2), progress=False)
    assert [p.requires_grad for p in params] == flags


def test_inversion_renders_checked(trained, monkeypatch):
    """Every inversion and evaluation forward waits for its status, so on CUDA an
    overflowed forward is redone before its gradient or metric is used."""
    import dgtalker

    corpus, out = trained
    gen = load_prior(out)
    views = load_views(load(corpus), [4, 5], RES)
    real, seen = dgtalker.rasterize, []

    def spy(*args, **kwargs):
        seen.append(kwargs.get("checked"))
        return real(*args, **kwargs)

    monkeypatch.setattr(dgtalker, "rasterize", spy)
    fit = invert(gen, views, InversionConfig(steps=2, batch=2, tune_steps=1), progress=False)
    evaluate(fit.generator, fit.w, views)
    assert seen and all(c is True for c in seen), seen


@pytest.mark.gpu
def test_inversion_step_is_not_taken_from_an_overflowed_forward_on_cuda(trained):
    import warnings

    from dgtalker.ops import raster as raster_ops

    corpus, out = trained
    gen = load_prior(out, device="cuda")
    views = load_views(load(corpus), [4, 5, 6, 7], RES)
    cfg = InversionConfig(steps=1, batch=4)
    ref = invert(gen, views, cfg, progress=False)  # sizes the shape's capacity
    for key in list(raster_ops._BOOK.capacity):
        raster_ops._BOOK.capacity[key] = 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        got = invert(gen, views, cfg, progress=False)
        raster_ops.check_status(wait=True)
    assert abs(got.history[0]["loss"] - ref.history[0]["loss"]) < 1e-5
    # Adam's first update is lr * sign(gradient): equal wherever the gradient is not ~0
    assert torch.isclose(got.w, ref.w, atol=1e-6).float().mean() > 0.95
