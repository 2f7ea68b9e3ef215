"""Synthetic talking heads with exact 3D ground truth (see docs/data-format.md).

Heavy dependencies (moderngl, scipy, librosa) are imported by the submodules, so
``import dgtalker.data.synthetic`` itself stays cheap.
"""
from __future__ import annotations

import importlib

_LAZY = {
    "generate_talking": "generate", "generate_multi": "generate", "orbit_camera": "generate",
    "intrinsics": "generate", "project": "generate",
    "draw_identity": "head", "HeadModel": "head", "Identity": "head",
    "STATE_KEYS": "head", "MOUTH_KEYS": "head", "UPPER_KEYS": "head", "LANDMARK_NAMES": "head",
    "mouth_from_audio": "drive", "SENTENCES": "speech",
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'dgtalker.data.synthetic' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value
