"""A tiny multi-identity corpus and generator size for prior tests (CPU, seconds)."""
from pathlib import Path

import numpy as np
import torch

import dgtalker
from dgtalker.data import DatasetWriter
from dgtalker.demo import gaussian_head

RES = 32
TINY = {"resolution": 16, "gaussians_per_texel": 1, "z_dim": 16, "w_dim": 16, "mapping_layers": 2,
        "channel_base": 128, "channel_max": 16}


def write_corpus(out: Path) -> Path:
    """2 identities x 2 expressions x 2 views, rendered from Gaussian heads (fast, no GL)."""
    from dgtalker.camera import orbit
    w = DatasetWriter(out, RES, RES, kind="multiview")
    k = 0
    for ident in range(2):
        base = gaussian_head(3000, seed=ident)
        for expr in range(2):
            means, quats, scales, opac, colors = base
            colors = (colors * (0.8 + 0.2 * expr)).clamp(0, 1)
            for yaw in (-20.0, 25.0):
                vm, K = orbit(yaw, 0.0, width=RES, height=RES)
                img, alpha, _ = dgtalker.rasterize(means, quats, scales, opac, colors, vm[None], K[None], RES, RES,
                                                   background=torch.tensor([0.3, 0.2, 0.5]))
                masks = np.repeat(alpha[0].numpy()[..., None], 4, axis=2).astype(np.float32)
                w.add_frame((img[0].clamp(0, 1) * 255).round().to(torch.uint8).numpy(), masks, K.double().numpy(),
                            vm.double().numpy(), gt={"identity": ident, "expression": expr})
                k += 1
    return w.close(splits={"train": list(range(k)), "heldout": []})
