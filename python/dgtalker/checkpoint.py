"""Checkpoints of the Gaussian prior: one safetensors file.

The file holds every parameter and buffer of the ``Generator`` (including the head
template it was trained with, so a checkpoint never depends on the template shipped
with a later version) and, in the safetensors header's metadata (string values):

    format   "dgtalker-prior"
    version  "1"                      (FORMAT_VERSION)
    config   JSON of GeneratorConfig
    extra    JSON object given to save_prior (training step, corpus, notes), "{}" if none

One file rather than weights + a side JSON, so a copy or an interrupted write can never
pair weights with the wrong config; writes go to a temporary file renamed into place.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

FORMAT = "dgtalker-prior"
FORMAT_VERSION = 1


class PriorCheckpointError(ValueError):
    """A prior checkpoint that cannot be read: truncated, not a prior, or not matching
    its own config. The message names the file and what was wrong."""


def save_prior(path, generator, extra: dict | None = None) -> Path:
    """Write ``generator`` (a ``dgtalker.models.Generator``) to ``path`` atomically.

    ``extra``: a JSON-serializable dict stored with the weights (read it back with
    ``load_prior(..., return_extra=True)``). Returns the path."""
    import torch
    from safetensors.torch import save

    from .io import atomic_write_bytes
    from .models.generator import Generator

    if not isinstance(generator, Generator):
        raise TypeError(f"generator must be a dgtalker.models.Generator, got {type(generator).__name__}")
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"path must be a file path, got the directory {path}")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"the directory of path does not exist: {path.parent}")
    extra = {} if extra is None else extra
    if not isinstance(extra, dict):
        raise TypeError(f"extra must be a dict, got {type(extra).__name__}")
    try:
        extra_json = json.dumps(extra, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"extra must be JSON-serializable: {exc}") from None
    # clone: safetensors refuses tensors that share storage, and wants them on the CPU
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in generator.state_dict().items()}
    for k, v in tensors.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise ValueError(f"generator tensor {k!r} has non-finite values; refusing to save it")
    meta = {"format": FORMAT, "version": str(FORMAT_VERSION),
            "config": json.dumps(generator.config.to_dict(), sort_keys=True), "extra": extra_json}
    atomic_write_bytes(path, save(tensors, metadata=meta))
    return path


def _read_header(path: Path, data: bytes) -> dict:
    """The safetensors header, with the file's consistency checked (so a truncated
    file is reported as such rather than as a deep parse error)."""
    if len(data) < 8:
        raise PriorCheckpointError(f"{path} is truncated or not a safetensors file ({len(data)} bytes)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        if data[8:9] == b"{":
            raise PriorCheckpointError(f"{path} is truncated: its header needs {n} bytes, the file has {len(data) - 8}")
        raise PriorCheckpointError(f"{path} is not a safetensors file (bad header length)")
    try:
        header = json.loads(data[8:8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise PriorCheckpointError(f"{path} is not a safetensors file (unreadable header)") from None
    if not isinstance(header, dict):
        raise PriorCheckpointError(f"{path} is not a safetensors file (header is not an object)")
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    have = len(data) - 8 - n
    if end > have:
        raise PriorCheckpointError(f"{path} is truncated: its tensors need {end} bytes, the file has {have}")
    return header


def read_prior_metadata(path) -> tuple[dict, dict, int]:
    """(config dict, extra dict, format version) of a prior checkpoint, without its weights."""
    path = Path(path)
    data = _read_bytes(path)
    return _parse_meta(path, _read_header(path, data))


def _read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise FileNotFoundError(f"prior checkpoint not found: {path}")
    if path.is_dir():
        raise IsADirectoryError(f"prior checkpoint must be a file, got the directory {path}")
    return path.read_bytes()


def _parse_meta(path: Path, header: dict) -> tuple[dict, dict, int]:
    meta = header.get("__metadata__") or {}
    if meta.get("format") != FORMAT:
        raise PriorCheckpointError(f"{path} is not a dgtalker prior checkpoint (metadata format is "
                                   f"{meta.get('format')!r}, expected {FORMAT!r})")
    try:
        version = int(meta.get("version", ""))
    except ValueError:
        raise PriorCheckpointError(f"{path} has an unreadable format version {meta.get('version')!r}") from None
    if version > FORMAT_VERSION or version < 1:
        raise PriorCheckpointError(f"{path} has prior format version {version}; this dgtalker reads version "
                                   f"{FORMAT_VERSION} (upgrade dgtalker to read newer checkpoints)")
    try:
        config = json.loads(meta.get("config", ""))
        extra = json.loads(meta.get("extra", "{}"))
    except json.JSONDecodeError as exc:
        raise PriorCheckpointError(f"{path} has unreadable config/extra metadata ({exc})") from None
    if not isinstance(config, dict) or not isinstance(extra, dict):
        raise PriorCheckpointError(f"{path}: config and extra metadata must be JSON objects")
    return config, extra, version


def load_prior(path, *, device=None, return_extra: bool = False):
    """Read a prior checkpoint written by ``save_prior``.

    Returns the ``Generator`` in eval mode on ``device`` (CPU if None), or
    ``(generator, extra)`` with ``return_extra=True``. Raises FileNotFoundError for
    a missing file and ``PriorCheckpointError`` for a truncated file, a file that is
    not a prior, or weights that do not match the stored config."""
    import numpy as np
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load

    from .models.generator import Generator, GeneratorConfig
    from .models.template import HeadTemplate

    path = Path(path)
    data = _read_bytes(path)
    header = _read_header(path, data)
    config_dict, extra, _ = _parse_meta(path, header)
    try:
        config = GeneratorConfig.from_dict(config_dict)
    except (TypeError, ValueError) as exc:
        raise PriorCheckpointError(f"{path} has an invalid generator config: {exc}") from None
    try:
        tensors = load(data)
    except SafetensorError as exc:
        raise PriorCheckpointError(f"{path} could not be read as safetensors ({exc})") from None

    need = ("template_texel_index", "template_position", "template_frame", "template_log_size")
    missing = [k for k in need if k not in tensors]
    if missing:
        raise PriorCheckpointError(f"{path} does not match its config: missing tensors {missing}")
    ti = tensors["template_texel_index"]
    M = ti.shape[0] if ti.dim() == 1 else -1
    R = config.resolution
    if M < 1 or ti.dtype != torch.int64 or int(ti.min()) < 0 or int(ti.max()) >= R * R:
        raise PriorCheckpointError(f"{path}: template_texel_index must be a non-empty int64 [M] with values in "
                                   f"[0, {R * R}), got {ti.dtype} {list(ti.shape)}")
    # the template's anisotropy only seeds the initial output bias, which the stored one replaces
    tpl = HeadTemplate(ti.numpy(), tensors["template_position"].numpy(), tensors["template_frame"].numpy(),
                       tensors["template_log_size"].numpy(), np.zeros((M, 2), np.float32), np.zeros(M, np.int8), R)
    try:
        gen = Generator(config, template=tpl)
    except (ValueError, RuntimeError, IndexError) as exc:
        raise PriorCheckpointError(f"{path}: cannot build the generator its config describes ({exc})") from None
    expected = gen.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [f"{k}: file {list(tensors[k].shape)} {tensors[k].dtype}, config {list(v.shape)} {v.dtype}"
             for k, v in expected.items() if k in tensors and (tensors[k].shape != v.shape or tensors[k].dtype != v.dtype)]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing tensors {missing[:8]}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"unexpected tensors {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
        if wrong:
            parts.append("wrong shapes/dtypes: " + "; ".join(wrong[:4]) + (" ..." if len(wrong) > 4 else ""))
        raise PriorCheckpointError(f"{path} does not match its config: " + ", ".join(parts))
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise PriorCheckpointError(f"{path} has non-finite values in {bad[:8]}")
    gen.load_state_dict(tensors, strict=True)
    gen.eval()
    if device is not None:
        gen.to(device)
    return (gen, extra) if return_extra else gen
