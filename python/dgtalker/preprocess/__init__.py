"""Real video in: ``dgtalker preprocess VIDEO --out DIR`` (see docs/preprocess.md).

Needs the optional extra ``pip install ".[preprocess]"`` (mediapipe 0.10.14, which has
wheels for Python 3.9-3.12, and PyAV).
"""
from .pipeline import PreprocessError, Summary, head_angles, preprocess
from .video import VideoError

__all__ = ["preprocess", "PreprocessError", "VideoError", "Summary", "head_angles"]
