"""What a training step draws: its frame pairs (the expression frame biased by error and
blinks), the latents' coefficients from speech, and the cross batch that mixes them."""
from __future__ import annotations

import numpy as np
import torch


def sample_pairs(step: int, n: int, pairs: int, seed: int, weights=None,
                 lip_weights=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions (into the training split) of a step's frames i and j, i != j. ``weights``
    (probabilities over the split) bias the choice of j, the expression frame;
    ``lip_weights`` that of i, the lip frame."""
    rng = np.random.default_rng([seed, step])
    i = rng.integers(0, n, size=pairs) if lip_weights is None else rng.choice(n, size=pairs, p=lip_weights)
    if weights is None:
        j = (i + rng.integers(1, n, size=pairs)) % n  # never equal to i
    else:
        j = rng.choice(n, size=pairs, p=weights)
        j = np.where(j == i, (j + 1) % n, j)
    return torch.from_numpy(i), torch.from_numpy(j)


HOLDBACK_BLOCK_S = 2.0  # well beyond the encoder's reach (±6 frames, ±0.3 s of mel): the core hears no trained frame


def lip_holdback(n: int, share: float, fps: float) -> np.ndarray:
    """Positions (into a training split of ``n`` frames) whose tracked mouth the lip target
    leaves out, so that the encoder's spread on unheard audio can be measured there
    (``identity.fit_lip_calibration``): about ``share`` of the split, at least 3 blocks
    where the split has 12, in blocks of ``HOLDBACK_BLOCK_S`` seconds spread evenly over
    it. Empty for ``share`` 0."""
    if share <= 0 or n < 4:
        return np.zeros(0, np.int64)
    block = max(1, min(int(round(HOLDBACK_BLOCK_S * fps)), n // 10))
    blocks = n // block
    k = max(int(round(share * blocks)), min(3, blocks // 4))
    if k < 1:
        return np.zeros(0, np.int64)
    starts = ((np.arange(k) + 0.5) * blocks / k).astype(np.int64) * block
    return (starts[:, None] + np.arange(block)[None]).ravel()


def lip_target_frames(step: int, data, cfg) -> torch.Tensor:
    """Clip frame indices ``[cfg.lip_batch]`` of a step's lip-target batch: training frames
    outside ``data.lip_heldback`` drawn uniformly (seeded by seed and step, apart from the
    rendered pairs' draw)."""
    rng = np.random.default_rng([cfg.seed, step, 1])
    pool = data.lip_pool
    pos = pool[torch.from_numpy(rng.integers(0, len(pool), size=cfg.lip_batch))]
    return data.indices[pos].to(data.mouth.device)


OPEN_MOUTH = 1.0  # tracked opening, in standard deviations above the clip's mean, of an "open" frame


def open_mouth_weights(opening: torch.Tensor | None, share: float) -> np.ndarray | None:
    """Sampling probabilities of the lip frame (None: uniform): a share ``share`` goes to
    the frames whose tracked opening ``[n]`` (standardised; NaN: none) is ``OPEN_MOUTH``
    or more. Wide openings are about a sixth of a clip's frames, and the rendered opening
    per unit of the lip coefficient is smallest there (docs/benchmarks.md, runs H)."""
    if opening is None or share <= 0:
        return None
    o = opening.detach().cpu().double().numpy()
    wide = np.isfinite(o) & (o >= OPEN_MOUTH)
    if not wide.any():
        return None
    p = np.full(len(o), (1 - share) / len(o)) + share * wide / wide.sum()
    return p / p.sum()


def expression_weights(upper_error: torch.Tensor, focus: float, blink: torch.Tensor | None = None,
                       blink_share: float = 0.0) -> np.ndarray | None:
    """Sampling probabilities of the expression frame (None: uniform). A share ``focus``
    goes in proportion to the squared upper-face error last seen on each frame, and a
    share ``blink_share`` to the frames whose eyes are closed (``blink`` >= 0.5 per
    training frame): blinks cover about 3% of a clip's frames, too few for the eyelid
    layer to learn from uniform draws."""
    n = len(upper_error)
    p = np.full(n, 1.0 / n)
    used = False
    if focus > 0:
        e = upper_error.double().numpy() ** 2
        p = (1 - focus) * p + focus * e / max(e.sum(), 1e-12)
        used = True
    if blink is not None and blink_share > 0:
        shut = (blink.detach().cpu().numpy() >= 0.5).astype(np.float64)
        if shut.any():
            p = (1 - blink_share) * p + blink_share * shut / shut.sum()
            used = True
    return p / p.sum() if used else None


def compose_cross_batch(c_exp_i, c_lip_i, c_exp_j, c_lip_j):
    """Coefficients of the step's latents: [own i; own j; cross] where cross takes the lips
    of i and the expression of j. Returns (c_exp [3P, Ke], c_lip [3P, Kl])."""
    return torch.cat([c_exp_i, c_exp_j, c_exp_j]), torch.cat([c_lip_i, c_lip_j, c_lip_i])


def speech_coefficients(encoder, windows: torch.Tensor, frames: torch.Tensor, num_frames: int, *,
                        noise: float = 0.0, generator: torch.Generator | None = None, members: bool = False):
    """(c_exp, c_lip) of clip frames ``frames [B]`` (global indices), computing each
    needed window's embedding once; ``noise`` > 0 adds Gaussian noise of that many
    standard deviations of the encoder's normalised input to each window (training's
    ``encoder_noise``, drawn from ``generator``); ``members``: each member's of an
    ensemble encoder ``[members, B, K]`` instead of their mean."""
    nb = encoder.neighbours(frames, num_frames)
    uniq, inv = torch.unique(nb, return_inverse=True)
    win = windows[uniq]
    if noise > 0:
        win = win + noise * encoder.mel_std * torch.randn(win.shape, generator=generator, device=win.device,
                                                          dtype=win.dtype)
    emb = encoder.frame_embedding(win)
    # index_select, not emb[inv]: the latter's backward accumulates in a thread-dependent
    # order on the CPU, and training must resume bit-exactly
    picked = torch.index_select(emb, 0, inv.flatten()).reshape(*inv.shape, emb.shape[-1])
    return encoder.from_embeddings(picked, members=members)


def gather(gaussians, idx):
    """The Gaussian sets ``idx`` of a batch ``(means, quats, ...) [B, N, ...]``."""
    return tuple(t[idx] for t in gaussians)
