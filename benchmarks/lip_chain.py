"""Where a trained talker loses the mouth on a real clip, link by link (CPU, minutes).

The lip path is audio encoder -> c_lip -> B_lip -> pixels. For a talker trained with
the lip target (its first lip coefficient pinned to the standardised tracked opening)
and its clip (a ``dgtalker preprocess`` dataset with ``gt.npz`` ``mouth_opening``):

1. **encoder**: the first lip coefficient from the clip's audio against the tracked
   opening, on the training and the held-out frames (Pearson r, and the spread ratio in
   the standardised unit): fit or generalisation?
2. **coefficient -> pixels** (``--sweep``): the first lip coefficient swept over
   -2 .. +4 at the training framing (the others at their clip mean), the rendered
   mouth measured by the face mesh in the tracked unit (inner-lip gap over the outer
   eye-corner distance), beside the person's own spread;
3. **rendered training frames** (``--train-every K``): audio-only renders of every K-th
   training frame scored like ``dgtalker eval`` (inner-lip correlation, motion ratio),
   to set beside ``dgtalker eval``'s held-out figures.
4. **render link on held-out frames** (``--heldout-variants``): the held-out frames
   rendered from their audio as ``dgtalker eval`` does, then with the unpinned lip
   coefficients held at their clip mean (do they add signal or noise?), then with the
   pinned ones replaced by the tracked mouth itself (a perfect encoder: what the
   blendshape and the renderer can show at best).

    python benchmarks/lip_chain.py TALKER --data DATA [--sweep] [--train-every 8] [--heldout-variants] [--json out.json]

Keep its JSON out of the repository when DATA is footage the project may not ship.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch


def encoder_link(dataset, coefficients, tracked) -> dict:
    from dgtalker.eval.metrics import pearson

    c0 = coefficients[1][:, 0].numpy()
    train, held = dataset.splits["train"], dataset.splits["heldout"]
    sd = tracked[train].std()
    out = {}
    for name, idx in (("train", train), ("heldout", held)):
        out[name] = {"r": pearson(c0[idx], tracked[idx]),
                     "spread_ratio": float(c0[idx].std() / (tracked[idx] / sd).std())}
    return out


def sweep_link(talker, coefficients, values=(-2, -1, 0, 1, 2, 3, 4)) -> dict:
    from dgtalker.eval.landmarks import FaceLandmarks, lip_gap

    ce, cl = coefficients
    cam = talker.camera()
    vm, K = cam
    n = len(values)
    c_exp = ce.mean(0, keepdim=True).repeat(n, 1)
    c_lip = cl.mean(0, keepdim=True).repeat(n, 1)
    c_lip[:, 0] = torch.tensor(values, dtype=torch.float32)
    with torch.no_grad():
        img, _ = talker.frames(c_exp, c_lip, vm.expand(n, 4, 4), K.expand(n, 3, 3), cam.width, cam.height)
    mesh = FaceLandmarks()
    opening = []
    for im in img:
        lm = mesh.detect((im.clamp(0, 1).numpy() * 255).astype(np.uint8))
        opening.append(float("nan") if lm is None else lip_gap(lm) / float(np.linalg.norm(lm[33] - lm[263])))
    mesh.close()
    return {"c_lip0": list(values), "rendered_opening": opening}


def heldout_variants(talker, dataset, coefficients, size) -> dict:
    from dgtalker.eval.evaluate import evaluate
    from dgtalker.train.clip import mouth_targets

    ce, cl = coefficients
    held = dataset.splits["heldout"]
    tracked = torch.from_numpy(np.nan_to_num(mouth_targets(dataset, dataset.splits["train"])))
    # as training pins them (train.identity.pinned_lips): the tracked columns, if it had the target
    trained_with_target = talker.source.get("train_config", {}).get("lip_target", 0) > 0
    pinned = min(tracked.shape[1], cl.shape[1]) if trained_with_target else 0
    train = torch.from_numpy(np.asarray(dataset.splits["train"]))
    variants = {"encoder": cl}
    rest_at_mean = cl.clone()
    rest_at_mean[:, pinned:] = cl[train, pinned:].mean(0)
    variants["unpinned_at_mean"] = rest_at_mean
    if pinned:
        oracle = cl.clone()
        oracle[:, :pinned] = tracked[:, :pinned]
        variants["tracked_pinned"] = oracle
        both = rest_at_mean.clone()
        both[:, :pinned] = tracked[:, :pinned]
        variants["tracked_pinned_unpinned_at_mean"] = both
    out = {}
    for name, lips in variants.items():
        rep = evaluate(talker, dataset, frames=held, size=size, novel=False, baselines=False, progress=False,
                       coefficients=(ce, lips))
        f = rep["frames"]
        out[name] = {k: f.get(k) for k in ("lip_corr", "lip_motion_ratio", "lip_lag_frames", "psnr_lower_face",
                                           "lmd_px")}
        print("held-out", name, json.dumps(out[name]), flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("talker")
    ap.add_argument("--data", required=True, help="the talker's training clip (dgtalker preprocess)")
    ap.add_argument("--sweep", action="store_true", help="also sweep the first lip coefficient (face mesh)")
    ap.add_argument("--train-every", type=int, default=0, help="also render every K-th training frame (0: no)")
    ap.add_argument("--heldout-variants", action="store_true",
                    help="also render the held-out frames with the unpinned lips at their mean and with the tracked "
                         "mouth in the pinned coefficients")
    ap.add_argument("--size", type=int, default=256, help="render size of the training frames (default 256)")
    ap.add_argument("--json", help="write the figures here")
    a = ap.parse_args(argv)
    torch.set_num_threads(2)

    import dgtalker
    from dgtalker.data import load
    from dgtalker.eval.evaluate import clip_coefficients

    talker = dgtalker.load_talker(a.talker, device="cpu")
    ds = load(a.data)
    gt = ds.gt or {}
    if "mouth_opening" not in gt:
        raise SystemExit(f"{a.data}: no tracked mouth opening (gt.npz mouth_opening); run dgtalker preprocess")
    tracked = np.asarray(gt["mouth_opening"], np.float64)
    coefficients = clip_coefficients(talker, ds)
    res = {"talker": a.talker, "data": str(ds.root), "source_steps": talker.source.get("trained_steps"),
           "tracked_opening": {"mean": float(np.nanmean(tracked)), "std": float(np.nanstd(tracked)),
                               "p95": float(np.nanpercentile(tracked, 95))},
           "encoder": encoder_link(ds, coefficients, tracked)}
    print("encoder", json.dumps(res["encoder"]), flush=True)
    if a.sweep:
        res["sweep"] = sweep_link(talker, coefficients)
        print("sweep", json.dumps(res["sweep"]), flush=True)
    if a.train_every > 0:
        from dgtalker.eval.evaluate import evaluate

        rep = evaluate(talker, ds, frames=ds.splits["train"][::a.train_every], size=a.size, novel=False,
                       baselines=False, progress=False, coefficients=coefficients)
        f = rep["frames"]
        res["training_frames"] = {k: f.get(k) for k in ("frames", "lip_corr", "lip_motion_ratio", "lip_lag_frames",
                                                         "psnr", "psnr_lower_face", "lmd_px")}
        print("training frames", json.dumps(res["training_frames"]), flush=True)
    if a.heldout_variants:
        res["heldout_variants"] = heldout_variants(talker, ds, coefficients, a.size)
    if a.json:
        from pathlib import Path

        from dgtalker.io import atomic_write_json

        atomic_write_json(Path(a.json), res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
