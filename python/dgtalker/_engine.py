"""Loads the compiled engine ``dgtalker._C`` with an actionable error when it is missing."""
from __future__ import annotations

_C = None


def engine():
    global _C
    if _C is None:
        try:
            from dgtalker import _C as module
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ImportError(
                "dgtalker's compiled engine (dgtalker._C) is not available: install the package "
                "with `pip install .` from the repository root (it builds the C++/CUDA kernels). "
                f"Original error: {exc}") from exc
        _C = module
    return _C
