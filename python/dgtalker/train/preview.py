"""The preview image a talker run writes every ``preview_every`` steps."""
from __future__ import annotations

from pathlib import Path

import torch

from ..io import atomic_write_bytes, encode_image
from .clip import ClipFrames
from .config import IdentityTrainConfig
from .sampler import speech_coefficients


def save_preview(path: Path, talker, data: ClipFrames, cfg: IdentityTrainConfig) -> None:
    """Top: four training frames; middle: their renders from their own audio; bottom: the
    cross latent (lips of the frame above, expression of the next one) at the same camera."""
    with torch.no_grad():
        k = torch.linspace(0, len(data) - 1, 4).round().long()
        b = data.batch(k)
        f = data.indices[k].to(talker.device)
        ce, cl = speech_coefficients(talker.encoder, data.windows, f, data.num_frames)
        ce = ce + talker.residual_track[f]
        perm = torch.roll(torch.arange(4), -1)
        c_exp = torch.cat([ce, ce[perm]])
        c_lip = torch.cat([cl, cl])
        blink = None if data.blink is None else torch.cat([data.blink[f], data.blink[f][perm]])
        w2c, Ks = torch.cat([b["w2c"]] * 2), torch.cat([b["K"]] * 2)
        torso = None if b["torso"] is None else torch.cat([b["torso"]] * 2)
        img, _ = talker.clip_frames(c_exp, c_lip, w2c, Ks, cfg.resolution, cfg.resolution, blink=blink,
                                    amp=cfg.amp, checked=True if w2c.is_cuda else None, torso=torso)
    rows = [torch.cat(list(b["rgb"]), 1), torch.cat(list(img[:4].clamp(0, 1)), 1), torch.cat(list(img[4:].clamp(0, 1)), 1)]
    grid = torch.cat(rows, 0)
    atomic_write_bytes(path, encode_image((grid * 255).round().to(torch.uint8).cpu().numpy(), "png"))
