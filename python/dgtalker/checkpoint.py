"""Checkpoints: one safetensors reader/writer for every kind of dgtalker file.

A checkpoint is one safetensors file: named tensors plus, in the header's metadata
(string values), at least

    format   the kind of file, e.g. "dgtalker-prior"
    version  its format version, a decimal integer >= 1

and whatever string entries the kind adds. One file rather than weights + a side
JSON, so a copy or an interrupted write can never pair weights with the wrong
config; writes go to a temporary file renamed into place.

Generic helpers (used for the prior, its training state and the talker):

- ``write_checkpoint(path, tensors, format=, version=, meta=)`` writes atomically;
- ``read_checkpoint_metadata(path, format=, max_version=)`` validates the whole file
  layout and returns the metadata without reading any tensor;
- ``read_checkpoint(path, format=, max_version=)`` returns tensors and metadata.

Files are treated as untrusted: before any tensor is allocated the header is checked
completely (header length, JSON object, every entry's dtype, shape and data offsets
and their types, offsets inside the file and contiguous, shape x dtype size equal to
the entry's byte span, a cap on the file size). Every problem is a ``CheckpointError``
(a ``ValueError``) that names the file and what is wrong; nothing is unpickled.

The prior (``save_prior`` / ``load_prior``) stores every parameter and buffer of the
``Generator`` (including the head template it was trained with, so a checkpoint never
depends on the template shipped with a later version) and the metadata

    format   "dgtalker-prior"
    version  "1"                      (FORMAT_VERSION)
    config   JSON of GeneratorConfig
    extra    JSON object given to save_prior (training step, corpus, notes), "{}" if none
"""
from __future__ import annotations

import json
import math
import struct
from pathlib import Path

from .io import check_output_path, sha256_file

FORMAT = "dgtalker-prior"
FORMAT_VERSION = 1

# Bytes per element of the safetensors dtypes this reader accepts (those torch has).
DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "BOOL": 1}
# The header is JSON; a prior's is ~10 KB, a training state's with 10k steps of
# history ~1.5 MB. Anything far larger is not a dgtalker file.
MAX_HEADER_BYTES = 64 << 20
# Cap on a whole file. The largest prior GeneratorConfig allows (MAX_PARAMETERS
# float32 values, 1 GiB) with its Adam training state fits.
MAX_CHECKPOINT_BYTES = 4 << 30
MAX_TENSOR_DIMS = 8


class CheckpointError(ValueError):
    """A checkpoint that cannot be read: truncated, malformed, of another kind or a newer
    version, or not matching its own metadata. The message names the file and what
    was wrong."""


class PriorCheckpointError(CheckpointError):
    """A prior checkpoint that cannot be read: truncated, not a prior, or not matching
    its own config. The message names the file and what was wrong."""


# -- generic writer ------------------------------------------------------------------
def write_checkpoint(path, tensors: dict, *, format: str, version: int, meta: dict | None = None) -> Path:
    """Write ``tensors`` and ``meta`` to the safetensors file ``path`` atomically.

    Args:
        path: file to write; its directory must exist. A failed write leaves any old
            file at ``path`` untouched and no temporary file behind.
        tensors: ``{name: Tensor}``; each is detached, copied to the CPU and made
            contiguous (so tensors sharing storage, or on a GPU, are fine). Floating
            point tensors must be finite: a non-finite one raises ``ValueError``
            naming it and nothing is written.
        format: the file kind, stored as metadata ``format`` (e.g. "dgtalker-talker").
        version: the kind's format version (int >= 1), stored as metadata ``version``.
        meta: further metadata, ``{str: str}``; the keys "format" and "version" are
            reserved. Store structured values as JSON strings.

    Returns the path. Read the file back with ``read_checkpoint``.
    """
    import torch
    from safetensors.torch import save

    from . import io as _io

    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"path must be a file path, got the directory {path}")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"the directory of path does not exist: {path.parent}")
    if not isinstance(format, str) or not format:
        raise ValueError(f"format must be a non-empty str, got {format!r}")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"version must be an int >= 1, got {version!r}")
    meta = {} if meta is None else meta
    if not isinstance(meta, dict):
        raise TypeError(f"meta must be a dict of str to str, got {type(meta).__name__}")
    for k, v in meta.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"meta must map str to str, got {k!r}: {type(v).__name__}")
        if k in ("format", "version"):
            raise ValueError(f"meta key {k!r} is reserved (pass it as the {k} argument)")
    if not isinstance(tensors, dict):
        raise TypeError(f"tensors must be a dict of str to Tensor, got {type(tensors).__name__}")
    out = {}
    for k, v in tensors.items():
        if not isinstance(k, str) or not k or k == "__metadata__":
            raise ValueError(f"tensor names must be non-empty str other than '__metadata__', got {k!r}")
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"tensors[{k!r}] must be a Tensor, got {type(v).__name__}")
        t = v.detach().to("cpu", copy=True).contiguous()
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"tensor {k!r} has non-finite values; refusing to save it")
        out[k] = t
    data = save(out, metadata={**meta, "format": format, "version": str(version)})
    _io.atomic_write_bytes(path, data)
    return path


# -- generic reader ------------------------------------------------------------------
def _check_file(path: Path, what: str) -> int:
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    if path.is_dir():
        raise IsADirectoryError(f"{what} must be a file, got the directory {path}")
    return path.stat().st_size


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _validate_header(path: Path, header, data_len: int, error) -> dict:
    """Checks every entry of a parsed safetensors header against the ``data_len`` bytes
    of tensor data that follow it. Returns the metadata dict ({} if none)."""
    if not isinstance(header, dict):
        raise error(f"{path} is not a safetensors file (header is a JSON {type(header).__name__}, not an object)")
    meta = header.get("__metadata__", {})
    if meta is None:
        meta = {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise error(f"{path}: the header's __metadata__ must be an object of strings")
    spans = []
    for name, e in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(e, dict):
            raise error(f"{path}: header entry {name!r} must be an object, got {type(e).__name__}")
        missing = [k for k in ("dtype", "shape", "data_offsets") if k not in e]
        if missing:
            raise error(f"{path}: header entry {name!r} lacks {missing}")
        dtype, shape, offs = e["dtype"], e["shape"], e["data_offsets"]
        if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
            raise error(f"{path}: header entry {name!r} has dtype {dtype!r}; expected one of {sorted(DTYPE_SIZES)}")
        if (not isinstance(shape, list) or len(shape) > MAX_TENSOR_DIMS
                or not all(_is_int(s) and s >= 0 for s in shape)):
            raise error(f"{path}: header entry {name!r} has shape {shape!r}; expected a list of at most "
                        f"{MAX_TENSOR_DIMS} non-negative ints")
        if not isinstance(offs, list) or len(offs) != 2 or not all(_is_int(o) for o in offs) \
                or not 0 <= offs[0] <= offs[1]:
            raise error(f"{path}: header entry {name!r} has data_offsets {offs!r}; expected [begin, end] with "
                        f"ints 0 <= begin <= end")
        spans.append((offs[0], offs[1], name, math.prod(shape) * DTYPE_SIZES[dtype]))
    end = max((s[1] for s in spans), default=0)
    if end > data_len:
        raise error(f"{path} is truncated: its tensors need {end} bytes, the file has {data_len}")
    for b, e, name, nbytes in spans:
        if e - b != nbytes:
            raise error(f"{path}: header entry {name!r} spans {e - b} bytes but its shape and dtype need {nbytes}")
    pos = 0
    for b, e, name, _ in sorted(spans):
        if b != pos:
            what = "overlaps the previous tensor" if b < pos else f"leaves a gap of {b - pos} bytes"
            raise error(f"{path}: the data of tensor {name!r} {what} (data_offsets [{b}, {e}])")
        pos = e
    if pos != data_len:
        raise error(f"{path}: {data_len - pos} bytes of data after the last tensor")
    return meta


def _read_layout(path: Path, f, size: int, error, max_bytes: int) -> tuple[dict, int]:
    """(validated header, header length) of the open file ``f`` of ``size`` bytes."""
    if size > max_bytes:
        raise error(f"{path} is {size} bytes, more than the {max_bytes} a dgtalker checkpoint may have")
    head = f.read(8)
    if len(head) < 8:
        raise error(f"{path} is truncated or not a safetensors file ({len(head)} bytes)")
    (n,) = struct.unpack("<Q", head)
    if n > size - 8:
        first = f.read(1)
        if first == b"{":
            raise error(f"{path} is truncated: its header needs {n} bytes, the file has {size - 8}")
        raise error(f"{path} is not a safetensors file (bad header length)")
    if n > MAX_HEADER_BYTES:
        raise error(f"{path}: its header of {n} bytes is larger than the {MAX_HEADER_BYTES} bytes allowed")
    try:
        header = json.loads(f.read(n))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise error(f"{path} is not a safetensors file (unreadable header)") from None
    _validate_header(path, header, size - 8 - n, error)
    return header, n


def _check_kind(path: Path, meta: dict, format: str, max_version: int, error) -> int:
    got = meta.get("format")
    if got != format:
        raise error(f"{path} is not a {format.replace('-', ' ')} checkpoint (metadata format is {got!r}, "
                    f"expected {format!r})")
    v = meta.get("version", "")
    if not (isinstance(v, str) and v.isdigit() and len(v) < 10):
        raise error(f"{path} has an unreadable format version {v!r}")
    version = int(v)
    if version > max_version or version < 1:
        raise error(f"{path} has {format!r} format version {version}; this dgtalker reads version {max_version} "
                    f"and older (upgrade dgtalker to read newer checkpoints)")
    return version


def _user_meta(meta: dict) -> dict:
    return {k: v for k, v in meta.items() if k not in ("format", "version")}


def read_checkpoint_metadata(path, *, format: str, max_version: int, error=CheckpointError,
                             max_bytes: int = MAX_CHECKPOINT_BYTES) -> tuple[dict, int]:
    """``(meta, version)`` of a checkpoint without reading its tensors.

    The whole file layout is validated as in ``read_checkpoint`` (so a file that passes
    here fails later only on its contents); ``meta`` omits "format" and "version"."""
    path = Path(path)
    size = _check_file(path, "checkpoint")
    with open(path, "rb") as f:
        header, _ = _read_layout(path, f, size, error, max_bytes)
    meta = header.get("__metadata__") or {}
    return _user_meta(meta), _check_kind(path, meta, format, max_version, error)


def read_checkpoint(path, *, format: str, max_version: int, error=CheckpointError,
                    max_bytes: int = MAX_CHECKPOINT_BYTES) -> tuple[dict, dict, int]:
    """Read a checkpoint written by ``write_checkpoint``.

    Args:
        path: the safetensors file.
        format: the kind expected in the metadata; another kind raises ``error``.
        max_version: the newest format version the caller understands; a newer file
            raises ``error`` (older versions are returned, the caller converts them).
        error: the exception class raised for a bad file, ``CheckpointError`` or a
            subclass (e.g. ``PriorCheckpointError``).
        max_bytes: files larger than this are refused before anything is read.

    Returns ``(tensors, meta, version)``: ``{name: CPU Tensor}``, the metadata without
    "format" and "version" (``{str: str}``), and the file's format version.

    Raises FileNotFoundError / IsADirectoryError for a missing path and ``error`` for a
    truncated file, a malformed header (checked entry by entry before any tensor is
    allocated), another kind or a newer version; never TypeError, KeyError or an
    unpickling error."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    if not (isinstance(error, type) and issubclass(error, CheckpointError)):
        raise TypeError(f"error must be CheckpointError or a subclass, got {error!r}")
    path = Path(path)
    size = _check_file(path, "checkpoint")
    with open(path, "rb") as f:
        header, _ = _read_layout(path, f, size, error, max_bytes)
        meta = header.get("__metadata__") or {}
        version = _check_kind(path, meta, format, max_version, error)
        f.seek(0)
        data = f.read(size + 1)
    if len(data) != size:
        raise error(f"{path} changed while it was read ({size} bytes, then {len(data)})")
    try:
        tensors = load(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise error(f"{path} could not be read as safetensors ({exc})") from None
    return tensors, _user_meta(meta), version


# -- the prior -----------------------------------------------------------------------
def save_prior(path, generator, extra: dict | None = None) -> Path:
    """Write ``generator`` (a ``dgtalker.models.Generator``) to ``path`` atomically.

    ``extra``: a JSON-serializable dict stored with the weights (read it back with
    ``load_prior(..., return_extra=True)``). Returns the path."""
    from .models.generator import Generator

    if not isinstance(generator, Generator):
        raise TypeError(f"generator must be a dgtalker.models.Generator, got {type(generator).__name__}")
    path = check_output_path(path)
    extra = {} if extra is None else extra
    if not isinstance(extra, dict):
        raise TypeError(f"extra must be a dict, got {type(extra).__name__}")
    try:
        extra_json = json.dumps(extra, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"extra must be JSON-serializable: {exc}") from None
    meta = {"config": json.dumps(generator.config.to_dict(), sort_keys=True), "extra": extra_json}
    try:
        return write_checkpoint(path, generator.state_dict(), format=FORMAT, version=FORMAT_VERSION, meta=meta)
    except ValueError as exc:
        raise ValueError(f"generator {exc}") from None


def _parse_prior_meta(path: Path, meta: dict) -> tuple[dict, dict]:
    try:
        config = json.loads(meta.get("config", ""))
        extra = json.loads(meta.get("extra", "{}"))
    except (ValueError, RecursionError) as exc:
        raise PriorCheckpointError(f"{path} has unreadable config/extra metadata ({exc})") from None
    if not isinstance(config, dict) or not isinstance(extra, dict):
        raise PriorCheckpointError(f"{path}: config and extra metadata must be JSON objects")
    return config, extra


def read_prior_metadata(path) -> tuple[dict, dict, int]:
    """(config dict, extra dict, format version) of a prior checkpoint, without its weights."""
    path = Path(path)
    _check_file(path, "prior checkpoint")
    meta, version = read_checkpoint_metadata(path, format=FORMAT, max_version=FORMAT_VERSION,
                                             error=PriorCheckpointError)
    return (*_parse_prior_meta(path, meta), version)


def load_prior(path, *, device=None, return_extra: bool = False):
    """Read a prior checkpoint written by ``save_prior``.

    Returns the ``Generator`` in eval mode on ``device`` (CPU if None), or
    ``(generator, extra)`` with ``return_extra=True``. Raises FileNotFoundError for
    a missing file and ``PriorCheckpointError`` for a truncated or malformed file, a
    file that is not a prior, a config out of ``GeneratorConfig``'s bounds (checked
    before anything is allocated), an invalid head template, or weights that do not
    match the stored config."""
    from .models.generator import GeneratorConfig

    path = Path(path)
    _check_file(path, "prior checkpoint")
    meta, _ = read_checkpoint_metadata(path, format=FORMAT, max_version=FORMAT_VERSION, error=PriorCheckpointError)
    config_dict, extra = _parse_prior_meta(path, meta)
    try:
        config = GeneratorConfig.from_dict(config_dict)
    except (TypeError, ValueError) as exc:
        raise PriorCheckpointError(f"{path} has an invalid generator config: {exc}") from None
    tensors, _, _ = read_checkpoint(path, format=FORMAT, max_version=FORMAT_VERSION, error=PriorCheckpointError)

    gen = generator_from_tensors(path, config, tensors, error=PriorCheckpointError)
    gen.eval()
    if device is not None:
        gen.to(device)
    return (gen, extra) if return_extra else gen


def generator_from_tensors(path, config, tensors: dict, *, error=PriorCheckpointError):
    """A ``Generator`` of ``config`` holding ``tensors`` (its state dict as read from
    ``path``): the stored head template is checked first, then every tensor's name,
    shape, dtype and finiteness. Shared by the prior and the talker files; raises
    ``error`` naming ``path``."""
    import torch

    from .models.generator import Generator
    from .models.template import HeadTemplate

    path = Path(path)
    tpl = _template_from_tensors(path, tensors, config, error)
    try:
        gen = Generator(config, template=HeadTemplate(**tpl))
    except (ValueError, RuntimeError, IndexError) as exc:
        raise error(f"{path}: cannot build the generator its config describes ({exc})") from None
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
        raise error(f"{path} does not match its config: " + ", ".join(parts))
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise error(f"{path} has non-finite values in {bad[:8]}")
    gen.load_state_dict(tensors, strict=True)
    return gen


def _template_from_tensors(path: Path, tensors: dict, config, error=PriorCheckpointError) -> dict:
    """The stored head template as ``HeadTemplate`` fields, validated by the decode
    kernel's own rules (``dgtalker.ops.decode.DecodeTemplate``: shapes, indices in
    [0, R*R) and distinct, finite positions and sizes, unit frames), not against
    itself."""
    import numpy as np
    import torch

    from .ops.decode import DecodeTemplate

    need = {"template_texel_index": (torch.int64, 1), "template_position": (torch.float32, 2),
            "template_frame": (torch.float32, 2), "template_log_size": (torch.float32, 1)}
    missing = [k for k in need if k not in tensors]
    if missing:
        raise error(f"{path} does not match its config: missing tensors {missing}")
    for k, (dt, nd) in need.items():
        if tensors[k].dtype != dt or tensors[k].dim() != nd:
            raise error(f"{path}: {k} must be a {dt} tensor of rank {nd}, got {tensors[k].dtype} "
                        f"{list(tensors[k].shape)}")
    ti = tensors["template_texel_index"]
    M, R = ti.shape[0], config.resolution
    if M < 1:
        raise error(f"{path}: template_texel_index is empty (a template needs at least one texel)")
    try:
        DecodeTemplate(texel_index=ti, position=tensors["template_position"], frame=tensors["template_frame"],
                       log_size=tensors["template_log_size"], resolution=R,
                       gaussians_per_texel=config.gaussians_per_texel)
    except (TypeError, ValueError) as exc:
        raise error(f"{path}: invalid head template: {exc}") from None
    # the template's anisotropy only seeds the initial output bias, which the stored one replaces
    return dict(texel_index=ti.numpy(), position=tensors["template_position"].numpy(),
                frame=tensors["template_frame"].numpy(), log_size=tensors["template_log_size"].numpy(),
                log_axis=np.zeros((M, 2), np.float32), region=np.zeros(M, np.int8), resolution=R)


def read_weights(path: Path, sha256: str | None, *, format: str, max_version: int, error, what: str,
                 max_bytes: int = MAX_CHECKPOINT_BYTES) -> tuple[dict, dict]:
    """``(tensors, meta)`` of a model's weights file, for its loader (``read_checkpoint``).

    Raises ``error`` (the loader's own ``ValueError`` subclass), naming the file, where
    it is missing; where it is a shipped file (``sha256`` given) whose SHA-256 is not
    ``sha256``; where it cannot be read or is not a ``format`` checkpoint of version
    ``max_version`` or older; or where a floating-point tensor is not finite."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise error(f"the shipped {what} {path} is missing; reinstall dgtalker" if sha256 is not None else
                    f"{what} weights {path} do not exist or are not a file")
    if sha256 is not None:
        got = sha256_file(path)
        if got != sha256:
            raise error(f"{path} is corrupt or was replaced: its SHA-256 is {got}, the recorded one is "
                        f"{sha256 or '(none)'}; reinstall dgtalker")

    class _Error(error, CheckpointError):
        pass

    try:
        tensors, meta, _ = read_checkpoint(path, format=format, max_version=max_version, error=_Error,
                                           max_bytes=max_bytes)
    except CheckpointError as exc:
        raise error(str(exc)) from None
    except OSError as exc:
        raise error(f"{what} weights {path} could not be read ({exc})") from None
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise error(f"{path}: non-finite weights ({', '.join(bad[:3])})")
    return tensors, meta
