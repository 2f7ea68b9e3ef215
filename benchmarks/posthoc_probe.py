"""What a trained talker would score on a clip's held-out frames with one thing changed
after training (no retraining; CPU is fine):

- ``gain``: its pinned lip coefficients (opening, width) widened about their training
  mean by each factor, within the tracked mouth's 0.5th-99.5th percentile: the lip
  calibration (``AudioEncoder.calibrated``) with that gain in place of the measured one;
- ``torso``: its torso carried by each share f of every frame's head motion (0: the
  clip's mean body pose, as rendered; 1: rigid with the head).

    python benchmarks/posthoc_probe.py gain T --data DATA --values 1,1.7,2.2
    python benchmarks/posthoc_probe.py torso T --data DATA --values 0,0.5,1

Prints one JSON line per value (``dgtalker.eval.evaluate``'s figures, no baselines).
Keep the output out of the repository when DATA is footage the project may not ship.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch


def blended_body(body: torch.Tensor, f: float) -> torch.Tensor:
    """Body transforms ``[F, 4, 4]`` moved a share ``f`` of the way to the identity (the
    torso rigid with the head), rotations projected back onto SO(3)."""
    M = (1 - f) * body + f * torch.eye(4).expand_as(body)
    U, _, Vh = torch.linalg.svd(M[:, :3, :3])
    out = M.clone()
    out[:, :3, :3] = U @ Vh
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("gain", "torso"))
    ap.add_argument("talker")
    ap.add_argument("--data", required=True)
    ap.add_argument("--values", required=True, help="comma-separated gains or torso shares")
    a = ap.parse_args(argv)
    torch.set_num_threads(2)

    from dgtalker.data import load
    from dgtalker.eval.evaluate import clip_coefficients, evaluate
    from dgtalker.talker import body_transforms, load_talker
    from dgtalker.train.clip import mouth_targets

    T = load_talker(a.talker, device="cpu")
    ds = load(a.data)
    keys = ("psnr", "psnr_head", "psnr_lower_face", "psnr_torso", "ssim", "lmd_px", "lip_corr", "lip_motion_ratio",
            "lip_lag_frames")
    for v in map(float, a.values.split(",")):
        if a.what == "gain":
            tgt = mouth_targets(ds, ds.splits["train"])
            k = tgt.shape[1]
            enc = T.encoder
            centre, gain = enc.lip_centre.clone(), enc.lip_gain.clone()
            low, high = enc.lip_low.clone(), enc.lip_high.clone()
            centre[:k] = T.coef_mean[T.config.k_exp:T.config.k_exp + k]  # the raw prediction's training mean
            gain[:k] = v
            low[:k] = torch.from_numpy(np.nanpercentile(tgt, 0.5, axis=0))
            high[:k] = torch.from_numpy(np.nanpercentile(tgt, 99.5, axis=0))
            enc.set_lip_calibration(centre, gain, low, high)
        else:
            T.pose_clip = lambda g, w2c, f=v: T.pose_torso(g, blended_body(body_transforms(w2c, T.body_w2c), f))
        r = evaluate(T, ds, coefficients=clip_coefficients(T, ds), novel=False, baselines=False, device="cpu",
                     progress=False)
        print(json.dumps({a.what: v, **{k: r["frames"].get(k) for k in keys}}), flush=True)


if __name__ == "__main__":
    main()
