"""Talking-head datasets: the on-disk format, its loader and writer, and the
synthetic corpus generator (``dgtalker.data.synthetic``).

    ds = dgtalker.data.load("path/to/dataset")
    len(ds), ds.fps, ds[0].image, ds[0].masks, ds.K, ds.w2c, ds.splits, ds.gt, ds.novel
"""
from __future__ import annotations

from .format import (FORMAT_VERSION, MASK_CHANNELS, Dataset, DatasetError, DatasetWriter, Frame, ViewSet,
                     load)

__all__ = ["load", "Dataset", "DatasetError", "DatasetWriter", "Frame", "ViewSet", "MASK_CHANNELS",
           "FORMAT_VERSION"]
