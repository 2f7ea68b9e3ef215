"""The background behind a clip's head: the static plate estimated from its frames, and
the random colours some training steps composite over instead."""
from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F

from .config import IdentityTrainConfig


def background_plate(images: np.ndarray, fg: np.ndarray, threshold: float = 0.02) -> np.ndarray:
    """The static background of a clip: per pixel, the median over the frames where it
    is not foreground; pixels that are always covered are filled by diffusing their
    neighbours' values. ``images [T, H, W, 3]`` uint8, ``fg [T, H, W]`` in [0, 1] ->
    float32 ``[H, W, 3]`` in [0, 1]."""
    imgs = images.astype(np.float32) / 255.0
    free = fg < threshold
    stack = np.where(free[..., None], imgs, np.nan)
    with np.errstate(all="ignore"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            plate = np.nanmedian(stack, axis=0)
    known = free.any(0)
    if not known.any():
        return np.full(images.shape[1:], 0.5, np.float32)
    plate[~known] = plate[known].mean(0)
    # diffuse into the never-seen region so it continues the surrounding colours
    t = torch.from_numpy(np.ascontiguousarray(plate)).permute(2, 0, 1)[None]
    m = torch.from_numpy(~known)[None, None]
    kernel = torch.full((3, 1, 3, 3), 1 / 9.0)
    for _ in range(64):
        blurred = F.conv2d(F.pad(t, (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
        t = torch.where(m, blurred, t)
    return t[0].permute(1, 2, 0).numpy().astype(np.float32)


def random_background(step: int, cfg: IdentityTrainConfig, device) -> torch.Tensor | None:
    """This step's background: None (the clip's plate) or, on a seeded ``random_background``
    share of the steps, one random colour. Over the plate, a Gaussian at the silhouette
    that takes the background's colour costs nothing but the alpha loss, and such
    background-coloured fringes and floaters show from other views; over a colour that
    changes every step they cannot hide."""
    if cfg.random_background <= 0:
        return None
    g = torch.Generator().manual_seed(cfg.seed * 1_000_033 + step)
    if float(torch.rand((), generator=g)) >= cfg.random_background:
        return None
    return torch.rand(3, generator=g).to(device)


def over_background(batch: dict, colour: torch.Tensor) -> dict:
    """The batch with its frames composited over ``colour`` by their foreground masks."""
    fg = batch["fg"][..., None]
    return batch | {"rgb": batch["rgb"] * fg + colour * (1 - fg)}
