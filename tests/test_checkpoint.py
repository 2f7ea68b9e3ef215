"""Prior checkpoints: round trip, atomic writes, and clear errors for bad files."""
from __future__ import annotations

import json
import struct

import pytest
import torch

from dgtalker import prior
from dgtalker.checkpoint import PriorCheckpointError, load_prior, read_prior_metadata, save_prior
from dgtalker.models import Generator, GeneratorConfig, build_template

TINY = GeneratorConfig(z_dim=16, w_dim=16, mapping_layers=2, resolution=16, channel_base=64, channel_max=16)


@pytest.fixture(scope="module")
def gen():
    g = Generator(TINY, template=build_template(16, n_identities=4), seed=1)
    with torch.no_grad():  # make it differ from a fresh init, as a trained prior would
        for p in g.parameters():
            p.add_(0.01)
    g.update_w_avg(torch.full((2, 16), 0.25))
    return g


@pytest.fixture()
def saved(gen, tmp_path):
    return save_prior(tmp_path / "prior.safetensors", gen, extra={"step": 1200, "corpus": "synthetic"})


def test_round_trip_is_exact(gen, saved):
    g2, extra = load_prior(saved, return_extra=True)
    assert extra == {"step": 1200, "corpus": "synthetic"}
    assert g2.config == gen.config
    a, b = gen.state_dict(), g2.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    w = prior.sample_w(2, gen, seed=0, truncation=0.7)
    assert torch.equal(prior.sample_w(2, g2, seed=0, truncation=0.7), w)
    with torch.no_grad():
        for x, y in zip(gen.gaussians(w), g2.gaussians(w)):
            assert torch.equal(x, y)
    config, extra2, version = read_prior_metadata(saved)
    assert config == TINY.to_dict() and extra2 == extra and version == 1
    assert prior.load_prior(saved).num_gaussians == gen.num_gaussians


def test_save_is_atomic_and_leaves_no_temp_file(gen, saved):
    before = saved.read_bytes()
    # a failing save (extra not JSON) must leave the old file untouched
    with pytest.raises(TypeError, match="extra must be JSON-serializable"):
        save_prior(saved, gen, extra={"bad": object()})
    assert saved.read_bytes() == before
    assert sorted(p.name for p in saved.parent.iterdir()) == ["prior.safetensors"]


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="prior checkpoint not found"):
        load_prior(tmp_path / "nope.safetensors")
    with pytest.raises(IsADirectoryError, match="must be a file"):
        load_prior(tmp_path)


@pytest.mark.parametrize("keep", [0, 5, 100, -1000, -1])
def test_truncated_file(saved, keep):
    data = saved.read_bytes()
    saved.write_bytes(data[:keep])
    with pytest.raises(PriorCheckpointError, match="truncated"):
        load_prior(saved)


def test_not_a_safetensors_file(tmp_path):
    p = tmp_path / "x.safetensors"
    p.write_bytes(b"PK\x03\x04 this is a zip, not a checkpoint")
    with pytest.raises(PriorCheckpointError, match="not a safetensors file"):
        load_prior(p)


def _rewrite(path, tensors=None, meta_update=None):
    from safetensors.torch import load, save

    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    meta = json.loads(data[8:8 + n])["__metadata__"]
    meta.update(meta_update or {})
    t = load(data) if tensors is None else tensors(load(data))
    path.write_bytes(save(t, metadata=meta))


def test_safetensors_that_is_not_a_prior(tmp_path):
    from safetensors.torch import save_file

    p = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(3)}, p)
    with pytest.raises(PriorCheckpointError, match="not a dgtalker prior checkpoint"):
        load_prior(p)


def test_newer_format_version(saved):
    _rewrite(saved, meta_update={"version": "2"})
    with pytest.raises(PriorCheckpointError, match="format version 2; this dgtalker reads version 1"):
        load_prior(saved)


def test_weights_that_do_not_match_the_config(saved):
    # config says 16 channels, the weights of one layer are cut to 8
    def cut(t):
        t["synthesis.layers.0.weight"] = t["synthesis.layers.0.weight"][:8].contiguous()
        del t["mapping.layers.1.bias"]
        t["stray"] = torch.zeros(1)
        return t

    _rewrite(saved, tensors=cut)
    with pytest.raises(PriorCheckpointError) as e:
        load_prior(saved)
    msg = str(e.value)
    assert "does not match its config" in msg
    assert "missing tensors ['mapping.layers.1.bias']" in msg
    assert "unexpected tensors ['stray']" in msg
    assert "synthesis.layers.0.weight: file [8, 16, 3, 3]" in msg


def test_invalid_config_and_non_finite_weights(saved):
    bad = dict(TINY.to_dict(), resolution=24)
    _rewrite(saved, meta_update={"config": json.dumps(bad)})
    with pytest.raises(PriorCheckpointError, match="invalid generator config: GeneratorConfig.resolution"):
        load_prior(saved)
    _rewrite(saved, meta_update={"config": json.dumps(TINY.to_dict())},
             tensors=lambda t: {**t, "affine_bias": torch.full_like(t["affine_bias"], float("nan"))})
    with pytest.raises(PriorCheckpointError, match=r"non-finite values in \['affine_bias'\]"):
        load_prior(saved)


def test_save_argument_errors(gen, tmp_path):
    with pytest.raises(TypeError, match="generator must be a dgtalker.models.Generator"):
        save_prior(tmp_path / "a.safetensors", torch.nn.Linear(2, 2))
    with pytest.raises(FileNotFoundError, match="directory of path does not exist"):
        save_prior(tmp_path / "no" / "a.safetensors", gen)
    with pytest.raises(TypeError, match="extra must be a dict"):
        save_prior(tmp_path / "a.safetensors", gen, extra=[1])


def test_shipped_default_prior_loads_and_renders_a_head():
    import torch

    import dgtalker
    from dgtalker.camera import orbit
    from dgtalker.checkpoint import read_prior_metadata

    assert prior.DEFAULT_PRIOR_PATH.exists()
    meta = read_prior_metadata(prior.DEFAULT_PRIOR_PATH)
    assert any(isinstance(m, dict) and m.get("trained_steps", 0) > 1000 for m in meta), meta
    G = dgtalker.load_prior()
    w = G.sample_w(1, truncation=0.5, seed=0)
    assert torch.equal(w, prior.sample_w(1, G, truncation=0.5, seed=0))
    vm, K = orbit(0.0, 0.0, width=64, height=64)
    with torch.no_grad():
        img, alpha, _ = dgtalker.rasterize(*(t[0] for t in prior.gaussians(w, G)), vm[None], K[None], 64, 64)
    # a head and shoulders in the middle of the frame, background at the corners
    assert alpha[0, 28:36, 28:36].mean() > 0.95 and alpha[0, :4, :4].mean() < 0.05


def test_missing_default_prior_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(prior, "DEFAULT_PRIOR_PATH", tmp_path / "absent.safetensors")
    with pytest.raises(prior.NoDefaultPriorError, match="no default Gaussian prior is shipped"):
        prior.load_prior()