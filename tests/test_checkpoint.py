"""Prior checkpoints: round trip, atomic writes, and clear errors for bad files."""
from __future__ import annotations

import json
import struct

import pytest
import torch

from dgtalker import prior
from dgtalker import checkpoint
from dgtalker.checkpoint import (CheckpointError, PriorCheckpointError, load_prior, read_checkpoint,
                                 read_checkpoint_metadata, read_prior_metadata, save_prior, write_checkpoint)
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


def test_shipped_prior_is_trained():
    """Something only a trained prior does: its mean head, seen from the cameras of the
    sample clip (a synthetic identity), matches those frames' foreground clearly better
    than an untrained generator of the same config, whose template shell has the right
    silhouette but no face (measured: 14.9 dB vs 12.4 dB untrained, 12.1 dB perturbed
    random weights; whole-image PSNR would mostly measure the silhouette)."""
    from pathlib import Path

    import dgtalker
    from dgtalker.data import load
    from dgtalker.train.invert import evaluate, load_views

    views = load_views(load(Path(__file__).parent / "data" / "sample"), [0, 5, 10], 64)
    G = dgtalker.load_prior()
    trained = evaluate(G, G.mean_w()[None], views)["psnr_fg"]
    untrained_gen = Generator(G.config, seed=0)
    untrained = evaluate(untrained_gen, untrained_gen.mean_w()[None], views)["psnr_fg"]
    assert trained > 14.0 and trained > untrained + 1.5, (trained, untrained)


def test_missing_default_prior_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(prior, "DEFAULT_PRIOR_PATH", tmp_path / "absent.safetensors")
    with pytest.raises(prior.NoDefaultPriorError, match="no default Gaussian prior is shipped"):
        prior.load_prior()

# -- the generic reader/writer and untrusted files ------------------------------------
def test_write_and_read_checkpoint_round_trip(tmp_path):
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    tensors = {"a": base, "a_t": base.T, "view": base[1], "i": torch.arange(5), "b": torch.ones(2, dtype=torch.bfloat16),
               "flag": torch.tensor(True), "empty": torch.zeros(0, 3)}
    p = write_checkpoint(tmp_path / "x.safetensors", tensors, format="dgtalker-test", version=3, meta={"k": "v"})
    got, meta, version = read_checkpoint(p, format="dgtalker-test", max_version=3)
    assert meta == {"k": "v"} and version == 3 and got.keys() == tensors.keys()
    for k, v in tensors.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), k
    assert read_checkpoint_metadata(p, format="dgtalker-test", max_version=5) == ({"k": "v"}, 3)
    with pytest.raises(CheckpointError, match="format version 3; this dgtalker reads version 2"):
        read_checkpoint(p, format="dgtalker-test", max_version=2)
    with pytest.raises(CheckpointError, match="not a dgtalker talker checkpoint"):
        read_checkpoint(p, format="dgtalker-talker", max_version=1)


def test_write_checkpoint_refuses_bad_input_and_writes_nothing(tmp_path):
    p = tmp_path / "x.safetensors"
    with pytest.raises(ValueError, match="tensor 'w' has non-finite values"):
        write_checkpoint(p, {"ok": torch.zeros(2), "w": torch.tensor([1.0, float("inf")])}, format="f", version=1)
    with pytest.raises(ValueError, match="meta key 'format' is reserved"):
        write_checkpoint(p, {}, format="f", version=1, meta={"format": "g"})
    with pytest.raises(TypeError, match="meta must map str to str"):
        write_checkpoint(p, {}, format="f", version=1, meta={"n": 3})
    with pytest.raises(ValueError, match="version must be an int >= 1"):
        write_checkpoint(p, {}, format="f", version=0)
    with pytest.raises(TypeError, match=r"tensors\['x'\] must be a Tensor"):
        write_checkpoint(p, {"x": [1.0]}, format="f", version=1)
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_errors_are_value_errors():
    assert issubclass(PriorCheckpointError, CheckpointError) and issubclass(CheckpointError, ValueError)


def _raw_safetensors(path, header: dict, data: bytes, meta=None):
    """A file with exactly this header (no validation on the way out)."""
    h = dict(header)
    if meta is not None:
        h["__metadata__"] = meta
    blob = json.dumps(h).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
    return path


PRIOR_META = {"format": "dgtalker-prior", "version": "1", "config": json.dumps(TINY.to_dict()), "extra": "{}"}

# Malformed headers: each must be a CheckpointError naming the file and the problem,
# never a TypeError/KeyError from inside the reader or a crash inside safetensors.
BAD_HEADERS = [
    ({"x": {"dtype": "F32", "shape": [2], "data_offsets": "0,8"}}, 8, "data_offsets '0,8'"),
    ({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0]}}, 8, r"data_offsets \[0\]"),
    ({"x": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, 8, "0 <= begin <= end"),
    ({"x": {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}}, 8, "0 <= begin <= end"),
    ({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0.0, 8.0]}}, 8, "data_offsets"),
    ({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, True]}}, 8, "data_offsets"),
    ({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 1 << 40]}}, 8, "truncated"),
    ({"x": {"dtype": "F32", "shape": [2]}}, 8, r"lacks \['data_offsets'\]"),
    ({"x": {"dtype": 7, "shape": [2], "data_offsets": [0, 8]}}, 8, "dtype 7"),
    ({"x": {"dtype": "Q8", "shape": [2], "data_offsets": [0, 8]}}, 8, "dtype 'Q8'"),
    ({"x": {"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}}, 8, "shape '2'"),
    ({"x": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, 8, "shape"),
    ({"x": {"dtype": "F32", "shape": [1 << 62, 1 << 62], "data_offsets": [0, 8]}}, 8, "shape and dtype need"),
    ({"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, 8, "spans 8 bytes but its shape and dtype need 12"),
    ({"x": [0, 8]}, 8, "entry 'x' must be an object"),
    ({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "y": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, 8, "overlaps"),
    ({"x": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, 8, "gap of 4 bytes"),
    ({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, 12, "4 bytes of data after the last tensor"),
]


@pytest.mark.parametrize("header,nbytes,message", BAD_HEADERS)
def test_malformed_header_is_a_clear_error(tmp_path, header, nbytes, message):
    p = _raw_safetensors(tmp_path / "bad.safetensors", header, bytes(nbytes), meta=PRIOR_META)
    for read in (lambda: read_checkpoint(p, format="dgtalker-prior", max_version=1),
                 lambda: read_checkpoint_metadata(p, format="dgtalker-prior", max_version=1)):
        with pytest.raises(CheckpointError, match=message) as e:
            read()
        assert str(p) in str(e.value)
    with pytest.raises(PriorCheckpointError, match=message):
        load_prior(p)
    with pytest.raises(PriorCheckpointError, match=message):
        read_prior_metadata(p)


@pytest.mark.parametrize("header,message", [
    ([], "header is a JSON list, not an object"),
    ({"__metadata__": {"format": 1}}, "__metadata__ must be an object of strings"),
    ({"__metadata__": ["format"]}, "__metadata__ must be an object of strings"),
])
def test_malformed_header_structure(tmp_path, header, message):
    p = tmp_path / "bad.safetensors"
    blob = json.dumps(header).encode()
    p.write_bytes(struct.pack("<Q", len(blob)) + blob)
    with pytest.raises(PriorCheckpointError, match=message):
        load_prior(p)


def test_size_caps(saved, monkeypatch):
    with pytest.raises(CheckpointError, match="more than the 100 a dgtalker checkpoint may have"):
        read_checkpoint(saved, format="dgtalker-prior", max_version=1, max_bytes=100)
    monkeypatch.setattr(checkpoint, "MAX_HEADER_BYTES", 64)
    with pytest.raises(PriorCheckpointError, match="larger than the 64 bytes allowed"):
        load_prior(saved)


@pytest.mark.parametrize("bad,message", [
    (dict(w_dim=5000), "w_dim must be a positive int <= 4096"),
    (dict(z_dim=1 << 30), "z_dim must be a positive int <= 4096"),
    (dict(resolution=2048), "resolution must be a positive int <= 1024"),
    (dict(mapping_layers=100), "mapping_layers must be a positive int <= 16"),
    (dict(gaussians_per_texel=64), "gaussians_per_texel must be a positive int <= 8"),
    (dict(channel_max=4096), "channel_max must be a positive int <= 2048"),
    (dict(resolution=1024, gaussians_per_texel=8, channel_max=2048, channel_base=1 << 20),
     "parameters, more than the 268,435,456 allowed"),
    (dict(init_opacity="0.5"), "init_opacity must be in"),
])
def test_generator_config_is_bounded(bad, message):
    with pytest.raises(ValueError, match=message):
        GeneratorConfig(**bad)


def test_num_parameters_counts_what_the_generator_builds():
    for cfg in (TINY, GeneratorConfig(z_dim=8, w_dim=12, mapping_layers=3, resolution=32, base_resolution=8,
                                      gaussians_per_texel=3, channel_base=128, channel_max=12)):
        g = Generator(cfg, template=build_template(cfg.resolution, n_identities=2))
        assert cfg.num_parameters() == sum(p.numel() for p in g.parameters())
    assert GeneratorConfig().num_parameters() == 5_041_856  # the default prior (21 MB as float32)


def test_hostile_config_is_refused_before_anything_is_built(saved, monkeypatch):
    from dgtalker.models import generator as generator_module

    def no_build(*args, **kwargs):
        raise AssertionError("the generator was built before its config was checked")

    monkeypatch.setattr(generator_module.Generator, "__init__", no_build)
    huge = dict(TINY.to_dict(), w_dim=1 << 20, z_dim=1 << 20)
    _rewrite(saved, meta_update={"config": json.dumps(huge)})
    with pytest.raises(PriorCheckpointError, match="invalid generator config: GeneratorConfig.z_dim must be"):
        load_prior(saved)
    _rewrite(saved, meta_update={"config": json.dumps(dict(TINY.to_dict(), w_dim="16"))})
    with pytest.raises(PriorCheckpointError, match="w_dim must be a positive int"):
        load_prior(saved)


def test_template_with_repeated_texels_is_refused(saved):
    def dup(t):
        ti = t["template_texel_index"].clone()
        ti[1] = ti[0]
        return {**t, "template_texel_index": ti}

    _rewrite(saved, tensors=dup)
    with pytest.raises(PriorCheckpointError, match="invalid head template: template.texel_index has 1 repeated texel"):
        load_prior(saved)


def test_template_with_wrong_shapes_is_refused(saved):
    _rewrite(saved, tensors=lambda t: {**t, "template_frame": t["template_frame"][:, :3].contiguous()})
    with pytest.raises(PriorCheckpointError, match=r"template.frame must be a floating tensor \[\d+, 4\]"):
        load_prior(saved)


@pytest.mark.parametrize("field,value,message", [
    ("template_frame", lambda t: t * 2, "template.frame must hold unit quaternions"),
    ("template_position", lambda t: t.index_fill(0, torch.tensor([3]), float("nan")), "template.position must be finite"),
    ("template_texel_index", lambda t: t.index_fill(0, torch.tensor([0]), 16 * 16), r"must lie in \[0, R\*R\)"),
])
def test_template_is_checked_by_the_decode_rules(saved, field, value, message):
    _rewrite(saved, tensors=lambda t: {**t, field: value(t[field]).contiguous()})
    with pytest.raises(PriorCheckpointError, match=message):
        load_prior(saved)
