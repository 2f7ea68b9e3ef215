"""Adapting the speech front end to the person a talker is trained on.

The shipped front end (``dgtalker.lipsync``'s network) is speaker-independent: on a
real clip its mouth opening follows the tracked mouth at r 0.3-0.5. Its output layers
(last norm, embedding, head) fitted to the person's own tracked mouth reach r 0.5-0.8
on audio they never saw, then overfit within a few hundred steps (docs/benchmarks.md),
so the stop is chosen on frames the fit does not use: the blocks the lip target holds
back (``sampler.lip_holdback``). The trunk stays as shipped, so its features are
computed once; a step costs three small layers over the clip.
"""
from __future__ import annotations

import copy

import numpy as np
import torch


def _standardised(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``x [N, K]`` centred and scaled by its mean and spread over ``rows``."""
    return (x - x[rows].mean(0)) / x[rows].std(0).clamp_min(1e-6)


def adapt_frontend(frontend, mel: np.ndarray, fps: float, num_frames: int, mouth: torch.Tensor,
                   fit_frames: torch.Tensor, stop_frames: torch.Tensor, *, steps: int = 200, lr: float = 3e-4,
                   checks: int = 20) -> dict | None:
    """Fits ``frontend``'s output layers in place so that its opening and width, standardised
    over ``fit_frames`` (clip frame indices), match the tracked ``mouth [N, 2]``
    (standardised; NaN: none) there; keeps the weights of the check (of ``checks`` over
    ``steps``, the shipped ones included) whose opening correlates best with the tracked
    one on ``stop_frames``. Returns ``{"steps", "stop_r_before", "stop_r"}``, or None (nothing
    changed) without enough tracked frames to fit or to stop on."""
    from ..audio.frontend import at_frames, frame_positions, normalise
    from ..audio.frontend_train import pearson

    dev = next(frontend.parameters()).device
    target = mouth.detach().to(dev, torch.float64)
    fit = fit_frames.to(dev)[torch.isfinite(target[fit_frames.to(dev)]).all(1)]
    stop = stop_frames.to(dev)[torch.isfinite(target[stop_frames.to(dev)]).all(1)]
    if len(fit) < 16 or len(stop) < 8:
        return None
    pos = frame_positions(num_frames, fps)
    with torch.no_grad():
        x = normalise(torch.as_tensor(np.ascontiguousarray(np.asarray(mel, np.float32).T))[None], False).to(dev)
        h = frontend.trunk(x)

    def mouth_of():
        out = frontend.outputs(h)
        return torch.stack([at_frames(out["opening"][0], pos), at_frames(out["width"][0], pos)], 1).double()

    was_training = frontend.training
    frontend.train()
    params = [p for m in (frontend.norm, frontend.embed, frontend.head) for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    every = max(1, steps // max(1, checks))
    with torch.no_grad():
        best_r = first_r = float(pearson(mouth_of()[stop, 0], target[stop, 0]))
    best, best_step = copy.deepcopy(frontend.state_dict()), 0
    for step in range(1, steps + 1):
        z = _standardised(mouth_of(), fit)
        loss = (z[fit] - target[fit]).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % every == 0 or step == steps:
            with torch.no_grad():
                r = float(pearson(mouth_of()[stop, 0], target[stop, 0]))
            if r > best_r:
                best_r, best, best_step = r, copy.deepcopy(frontend.state_dict()), step
    frontend.load_state_dict(best)
    for p in params:
        p.requires_grad_(False)
    frontend.train(was_training)
    return {"steps": best_step, "stop_r_before": round(first_r, 4), "stop_r": round(best_r, 4)}
