"""dgtalker: audio-driven 3D Gaussian talking heads.

The compiled engine (``dgtalker._C``) and torch are imported on first use, so the
pure-Python parts (data, audio) work on their own.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "rasterize": ("dgtalker.ops.raster", "rasterize"),
    "reference": ("dgtalker.reference", None),
    "build_info": ("dgtalker.info", "build_info"),
    "load_prior": ("dgtalker.prior", "load_prior"),
    "load_talker": ("dgtalker.talker", "load_talker"),
    "Talker": ("dgtalker.talker", "Talker"),
    "camera": ("dgtalker.camera", None),
    "render": ("dgtalker.render", None),  # the module, callable as dgtalker.render(audio, camera)
    "data": ("dgtalker.data", None),
    "audio": ("dgtalker.audio", None),
    "lipsync": ("dgtalker.audio.lipsync", "lipsync"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'dgtalker' has no attribute {name!r}")
    module_name, attr = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value
