"""Small helpers for calling engine entry points with torch tensors."""
from __future__ import annotations

import torch
from torch import Tensor


def device_index(t: Tensor) -> int:
    """-1 for CPU tensors, else the CUDA device index."""
    if t.device.type == "cpu":
        return -1
    return t.device.index if t.device.index is not None else torch.cuda.current_device()


def stream_handle(t: Tensor) -> int:
    return 0 if t.device.type == "cpu" else torch.cuda.current_stream(t.device).cuda_stream


def ptr(t: Tensor | None) -> int:
    return 0 if t is None or t.numel() == 0 else t.data_ptr()


def check_float(name: str, t, dim: int, device: torch.device | None = None) -> Tensor:
    """A float32 tensor of `dim` dimensions (on `device`), made contiguous; clear errors otherwise."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != torch.float32:
        raise TypeError(f"{name} must have dtype torch.float32, got {t.dtype}")
    if t.dim() != dim:
        raise ValueError(f"{name} must have {dim} dimensions, got shape {list(t.shape)}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} is on {t.device} but the other inputs are on {device}")
    return t.contiguous()
