"""Identity training: a talking clip -> a ``Talker`` (dgtalker.talker).

Stages:

1. **Inversion**: the shipped (or given) prior's latent ``w`` is fitted to a few
   training frames (``dgtalker.invert``); it seeds ``w_can``.
2. **Joint training** of everything at once: the generator (synthesis, style
   affines and the per-texel output bias: pivotal tuning with a locality
   regulariser that keeps the *synthesis* close to the prior's for other latents,
   while the output bias is free to hold the person's detail), ``w_can``, the
   orthonormal blendshapes, the audio encoder, the per-frame expression residual
   and, distilled from the main encoder, the causal encoder.

A step takes ``pairs`` pairs of training frames (i, j) with different audio and
renders, in one rasterizer call:

- frame i with its own coefficients at camera i, frame j likewise (full
  reconstruction: L1 + SSIM over the whole frame composited over the background
  plate, plus |alpha - foreground|);
- **masked cross-view supervision**: ONE latent with the lip coefficients of audio
  i and the expression coefficients of audio j (plus j's residual), rendered at
  camera i and at camera j; the lower-face mask of frame i supervises the first
  render (its lips must match audio i), the upper-face mask of frame j the second
  (its expression must match frame j). ``cross_view=False`` drops these two images.

The lip target: the first lip coefficients (opening, width) regress the tracked mouth
on batches of training frames through the encoder alone; the frames of a few 2-second
blocks are left out of it (``lip_holdback``), and at every save the encoder's spread on
them, audio it never learned the mouth of, calibrates those coefficients for inference
(``fit_lip_calibration``; the talker's source records it).

Regularisers: the residual codes' size and frame-to-frame change, the coefficients'
frame-to-frame change (no jitter), the causal encoder's distance to the main one;
optionally the prior's outlines at side views (``side_silhouette``).

Every step's frames come from a seeded RNG of (seed, step), so a resumed run is the
same run. ``OUT`` is the talker (safetensors), ``OUT.state.safetensors`` the
training state (talker in float32, optimizer, step, history; no pickle), both
written atomically, the state first; Ctrl-C saves before exiting. On CUDA the
rasterizer runs checked: a forward that overflowed its intersection buffers is
redone before the step's gradient is applied.
"""

import dataclasses
import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ..metrics import masked_l1, photometric_loss, psnr
from .clip import ClipFrames
from .config import IdentityTrainConfig
from .losses import (concordance, cross_view_losses, face_regions, leak_loss, locality_loss, needle_penalty,
                     side_silhouette_loss)
from .plate import over_background, random_background
from .preview import save_preview
from .sampler import (compose_cross_batch, expression_weights, gather, lip_holdback, lip_target_frames,
                      open_mouth_weights, sample_pairs, speech_coefficients)
from .state import (dataset_provenance, load_training_state, make_optimizer, restore_optimizer, resume_changes,
                    save_training)


def pinned_lips(k_lip: int, data: ClipFrames, cfg: IdentityTrainConfig) -> int:
    """How many leading lip coefficients the tracked mouth pins (the lip target: opening
    and width, ``data.mouth``'s columns): 0 with no target or no tracked mouth."""
    if cfg.lip_target <= 0 or data.mouth is None:
        return 0
    return min(data.mouth.shape[1], k_lip)


def train_step(talker, reference, opt, data: ClipFrames, step: int, cfg: IdentityTrainConfig) -> dict:
    dev = talker.device
    P, R = cfg.pairs, cfg.resolution
    weights = expression_weights(data.upper_error, cfg.focus if cfg.cross_view else 0.0, data.split_blink,
                                 cfg.blink_share)
    lip_weights = open_mouth_weights(data.split_opening, cfg.open_share)
    pi, pj = sample_pairs(step, len(data), P, cfg.seed, weights, lip_weights)
    bi, bj = data.batch(pi), data.batch(pj)
    background = random_background(step, cfg, dev)
    if background is not None:
        bi, bj = over_background(bi, background), over_background(bj, background)
    fi, fj = data.indices[pi].to(dev), data.indices[pj].to(dev)
    N = data.num_frames
    nxt = lambda f: (f + 1).clamp(max=N - 1)  # noqa: E731
    frames = torch.cat([fi, fj, nxt(fi), nxt(fj)])
    noisy = {}
    if cfg.encoder_noise > 0:  # drawn per step, so a resumed run draws the same noise
        noisy = {"noise": cfg.encoder_noise,
                 "generator": torch.Generator(device=dev).manual_seed(cfg.seed * 1_000_003 + step)}
    # after encoder_steps the encoders stop learning (they specialise to the one voice as they
    # train on: docs/benchmarks.md, runs K) while the maps go on fitting the picture
    frozen = 0 < cfg.encoder_steps <= step
    with torch.set_grad_enabled(not frozen):
        ce, cl = speech_coefficients(talker.encoder, data.windows, frames, N, **noisy)
    # the lip calibration measures the encoder's shrinkage on the held-back frames: their audio
    # must stay unheard, so the picture there trains the maps but not the encoder (through the
    # expression and unpinned lip coefficients it had fitted them; docs/benchmarks.md, runs J)
    unheard = data.unheard[frames][:, None]
    ce, cl = torch.where(unheard, ce.detach(), ce), torch.where(unheard, cl.detach(), cl)
    pinned = pinned_lips(cl.shape[1], data, cfg)
    if pinned and not cfg.lips_from_picture:
        # the pinned lip coefficients learn from the tracked mouth alone; the picture teaches
        # B_lip what they look like (a talker trained with photometric gradients into them
        # generalised worse than the encoder trained on the target alone: held-out r 0.63
        # against 0.74; docs/benchmarks.md, where the controlled comparison is pending)
        cl = torch.cat([cl[:, :pinned].detach(), cl[:, pinned:]], 1)
    res = talker.residual_track[frames]
    ce_full = ce + res
    c_exp, c_lip = compose_cross_batch(ce_full[:P], cl[:P], ce_full[P:2 * P], cl[P:2 * P])
    blink = None
    if data.blink is not None:  # the cross latent's eyes are frame j's (they are expression)
        blink = data.blink[torch.cat([fi, fj, fj])]
    if not cfg.cross_view:
        c_exp, c_lip = c_exp[:2 * P], c_lip[:2 * P]
        blink = None if blink is None else blink[:2 * P]
    gauss = talker.gaussians(c_exp, c_lip, blink=blink, amp=cfg.amp)
    # images: own i @ i, own j @ j (, cross @ i, cross @ j)
    lat = [torch.arange(P), torch.arange(P, 2 * P)]
    views = [bi, bj]
    if cfg.cross_view:
        lat += [torch.arange(2 * P, 3 * P)] * 2
        views += [bi, bj]
    lat = torch.cat(lat).to(dev)
    w2c = torch.cat([v["w2c"] for v in views])
    Ks = torch.cat([v["K"] for v in views])
    torso = None if bi["torso"] is None else torch.cat([v["torso"] for v in views])
    g = talker.with_mouth(talker.pose_clip(gather(gauss, lat), w2c, torso=torso), c_lip[lat])
    checked = True if dev.type == "cuda" else None
    image, alpha = talker.rasterize(g, w2c, Ks, R, R, checked=checked, background=background)
    own_img, own_a = image[:2 * P], alpha[:2 * P]
    target = torch.cat([bi["rgb"], bj["rgb"]])
    fg = torch.cat([bi["fg"], bj["fg"]])
    photo = photometric_loss(own_img, target, ssim_weight=cfg.ssim_weight, grad_weight=cfg.grad_weight)
    mask = (own_a - fg).abs().mean()
    loss = photo + cfg.mask_weight * mask
    out = {}
    mouth = data.mouth_masks(torch.cat([pi, pj])) if cfg.mouth_weight > 0 else None
    if mouth is not None:
        # the lips are ~1% of the frame: the frame-wide loss barely sees how far they part
        mouth_l1 = masked_l1(own_img, target, mouth)
        loss = loss + cfg.mouth_weight * mouth_l1
        out["mouth_l1"] = float(mouth_l1.detach())
    if cfg.cross_view:
        lip, expr = cross_view_losses(image[2 * P:3 * P], image[3 * P:], bi, bj)
        loss = loss + cfg.cross_weight * (lip + expr)
        if cfg.focus > 0:  # per expression frame, for the sampler (a small device-to-host copy)
            w = bj["upper"][..., None]
            per = ((image[3 * P:] - bj["rgb"]).abs() * w).sum((1, 2, 3)) / (w.sum((1, 2, 3)) * 3).clamp_min(1.0)
            data.upper_error[pj] = per.detach().float().cpu()
        out.update(cross_lip=float(lip.detach()), cross_exp=float(expr.detach()))
        if cfg.leak_weight > 0:
            tpl = talker.generator.template_position
            lower, upper = face_regions(tpl, gauss[0].shape[1] // tpl.shape[0])
            leak = leak_loss(gauss, P, lower, upper)
            loss = loss + cfg.leak_weight * leak
            out["leak"] = float(leak.detach())
    if pinned and not frozen:
        # the tracked mouth (standardised opening and width) pins the first lip coefficients:
        # a direct signal where the photometric one is weak. It runs on its own batch of
        # training frames through the encoder alone (no rendering, so many frames are cheap)
        lf = lip_target_frames(step, data, cfg)
        # each member of an ensemble encoder learns it on its own (their mean is the output)
        _, cl_t = speech_coefficients(talker.encoder, data.windows, lf, N, members=True, **noisy)
        tgt = data.mouth[lf, :pinned]
        ok = torch.isfinite(tgt).all(1).float()
        err = (cl_t[..., :pinned] - torch.nan_to_num(tgt)).pow(2).mean(-1).mean(0)
        lip_t = (err * ok).sum() / ok.sum().clamp_min(1.0)
        loss = loss + cfg.lip_target * lip_t
        out["lip_target"] = float(lip_t.detach())
        if cfg.lip_concordance > 0:
            # squared error alone shrinks predictions of unheard audio towards the mean (held-out
            # spread 0.5-0.7 of the truth's); concordance also asks for the truth's spread
            ccc = concordance(cl_t.mean(0)[:, :pinned], tgt, ok.bool())
            loss = loss + cfg.lip_concordance * (1 - ccc).mean()
            out["lip_ccc"] = float(ccc.mean().detach())
    # regularisers
    if cfg.aniso_reg > 0:
        loss = loss + cfg.aniso_reg * needle_penalty(gauss[2])
    loss = loss + cfg.residual_reg * res[:2 * P].pow(2).sum(-1).mean()
    loss = loss + cfg.residual_smooth * (res[:2 * P] - res[2 * P:]).pow(2).sum(-1).mean()
    c_all = torch.cat([ce, cl], 1)
    loss = loss + cfg.coef_smooth * (c_all[:2 * P] - c_all[2 * P:]).pow(2).sum(-1).mean()
    loss = loss + cfg.coef_reg * c_all.pow(2).sum(-1).mean()
    if cfg.distill_weight > 0 and not frozen:
        cce, ccl = speech_coefficients(talker.causal_encoder, data.causal_windows, frames[:2 * P], N)
        heard = (~unheard[:2 * P, 0]).float()  # the causal encoder too learns nothing of the held-back audio
        gap = (cce - ce[:2 * P].detach()).pow(2).mean(1) + (ccl - cl[:2 * P].detach()).pow(2).mean(1)
        distill = (gap * heard).sum() / heard.sum().clamp_min(1.0)
        loss = loss + cfg.distill_weight * distill
        out["distill"] = float(distill.detach())
    if reference is not None and cfg.locality > 0 and step % cfg.locality_every == 0:
        loss = loss + cfg.locality * locality_loss(talker.generator, reference, step, cfg)
    if reference is not None and cfg.side_silhouette > 0:
        side = side_silhouette_loss(talker, reference, gather(gauss, torch.arange(P, device=dev)),
                                    c_exp[:P], c_lip[:P], bi["w2c"], bi["K"], step, cfg, torso=bi["torso"])
        loss = loss + cfg.side_silhouette * side
        out["side_silhouette"] = float(side.detach())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    with torch.no_grad():
        p = psnr(own_img.clamp(0, 1), target)
    out.update(loss=float(loss.detach()), photo=float(photo.detach()), mask=float(mask.detach()), psnr=float(p))
    return out


@torch.no_grad()
def validate_heldout(talker, val: ClipFrames, cfg: IdentityTrainConfig) -> dict:
    """PSNR (whole frame and lower face) of held-out frames rendered from their audio
    alone (residual zero), at training resolution."""
    k = torch.arange(len(val))
    b = val.batch(k)
    f = val.indices.to(talker.device)
    ce, cl = speech_coefficients(talker.encoder, val.windows, f, val.num_frames)
    img, _ = talker.clip_frames(ce, cl, b["w2c"], b["K"], cfg.resolution, cfg.resolution, amp=cfg.amp,
                                checked=True if b["w2c"].is_cuda else None, torso=b["torso"])
    img = img.clamp(0, 1)
    return {"val_psnr": float(psnr(img, b["rgb"])), "val_psnr_lower": float(psnr(img, b["rgb"], mask=b["lower"]))}


# ----------------------------------------------------------------------------------
# driver


def _initial_talker(prior, data: ClipFrames, dataset, cfg: IdentityTrainConfig, device, progress):
    import copy

    from ..talker import Talker, TalkerConfig, mean_camera
    from .invert import InversionConfig, invert, load_views

    generator = copy.deepcopy(prior)
    frontend = None
    if cfg.frontend:
        from dataclasses import asdict as _asdict

        from ..audio.frontend import load_frontend

        frontend = load_frontend()
    tcfg = TalkerConfig(k_exp=cfg.k_exp, k_lip=cfg.k_lip, width=data.width, height=data.height, fps=data.fps,
                        encoder={"past": cfg.encoder_context, "future": cfg.encoder_context,
                                 "members": cfg.encoder_members},
                        frontend=None if frontend is None else _asdict(frontend.config),
                        mouth_interior=cfg.mouth_interior, **cfg.speech_reading())
    talker = Talker(generator, tcfg, seed=cfg.seed, residual_frames=data.num_frames)
    if frontend is not None:
        talker.frontend.load_state_dict(frontend.model.state_dict())
    with torch.no_grad():
        talker.background.copy_(data.plate)
        talker.body_w2c.copy_(mean_camera(data.w2c.cpu()))
        talker.default_w2c.copy_(talker.body_w2c)
        talker.default_K.copy_(data.mean_K)
        if data.blink is not None:
            talker.blink_track.copy_(data.blink.cpu())
        # the frames it trains on: sampled expressions and blinks come from these only
        talker.train_mask.zero_()
        talker.train_mask[data.indices] = True
    talker.source = {}
    if talker.mouth is not None:
        talker.source["mouth_interior"] = place_mouth(talker, dataset, data.indices.numpy())
    talker.to(device)
    if frontend is not None and cfg.adapt_frontend > 0 and data.mouth is not None and len(data.lip_heldback):
        from .adapt import adapt_frontend

        talker.source["frontend_adaptation"] = adapt_frontend(
            talker.frontend, data.mel.numpy(), data.fps, data.num_frames, data.mouth, data.indices[data.lip_pool],
            data.indices[data.lip_heldback], steps=cfg.adapt_frontend)
    data.set_windows(talker, normalise_encoders=True)
    if cfg.invert_steps > 0:
        idx = data.indices[torch.linspace(0, len(data) - 1, min(cfg.invert_views, len(data))).round().long()].numpy()
        views = load_views(dataset, idx, cfg.invert_resolution)
        fit = invert(generator, views, InversionConfig(steps=cfg.invert_steps, seed=cfg.seed), progress=progress)
        with torch.no_grad():
            talker.w_can.copy_(fit.w[0])
    for p in talker.parameters():
        p.requires_grad_(True)
    for p in talker.generator.mapping.parameters():  # w_can is a w: the mapping network is not used
        p.requires_grad_(False)
    return talker


def place_mouth(talker, dataset, frames, max_frames: int = 300) -> dict:
    """Puts the talker's mouth interior in the person's mouth (``models.mouth.mouth_anchor``
    on the clip's tracked mouth in up to ``max_frames`` of ``frames``) and starts its
    teeth at the clip's own colour (``clip.clip_teeth_colour``); returns what it found
    (the talker's source records it). A clip without a tracked mouth keeps the
    template's mouth and the default colours."""
    from ..models.mouth import mouth_anchor
    from .clip import clip_teeth_colour, mouth_points

    frames = np.asarray(frames, np.int64)
    found = {}
    pts = mouth_points(dataset)
    if pts is not None and np.isfinite(pts[frames]).all(-1).all(-1).any():
        sel = frames[np.linspace(0, len(frames) - 1, min(max_frames, len(frames))).round().astype(np.int64)]
        anchor = mouth_anchor(talker.generator.template_position.detach().float().cpu(),
                              torch.from_numpy(pts[sel]), torch.as_tensor(np.asarray(dataset.w2c)[sel]),
                              torch.as_tensor(np.asarray(dataset.K)[sel]))
        talker.mouth.place(*anchor)
        found["anchor"] = {k: round(v, 4) for k, v in zip(("mouth_y", "z_front", "half_width"), anchor)}
    rgb = clip_teeth_colour(dataset, frames)
    if rgb is not None:
        talker.mouth.set_teeth_colour(rgb)
        found["teeth_colour"] = [round(float(v), 3) for v in rgb]
    return found


@torch.no_grad()
def fit_coefficient_stats(talker, data: ClipFrames) -> None:
    """Mean and spread over the training frames of ``[c_exp + residual, c_lip]``."""
    f = data.indices.to(talker.device)
    ce, cl = [], []
    for s in range(0, len(f), 256):
        e, l_ = speech_coefficients(talker.encoder, data.windows, f[s:s + 256], data.num_frames)
        ce.append(e + talker.residual_track[f[s:s + 256]])
        cl.append(l_)
    c = torch.cat([torch.cat(ce), torch.cat(cl)], 1)
    talker.coef_mean.copy_(c.mean(0))
    talker.coef_std.copy_(c.std(0).clamp_min(1e-6) if c.shape[0] > 1 else torch.ones_like(c[0]))


MAX_LIP_GAIN = 3.0


@torch.no_grad()
def fit_lip_calibration(talker, data: ClipFrames, cfg: IdentityTrainConfig) -> dict | None:
    """Measures how the encoder's pinned lip coefficients shrink on audio whose mouth it
    never trained on (``data.lip_heldback``) and sets both encoders' calibration
    (``AudioEncoder.calibrated``): gain = the tracked spread over the predicted spread
    there (within ``1 / MAX_LIP_GAIN .. MAX_LIP_GAIN``), centre = the mean prediction over
    the training frames, range = the tracked mouth's 0.5th to 99.5th percentile. Returns
    what it measured (held-out r, spread, gain per coefficient), or None (and gain 1)
    without a lip target or held-back frames."""
    from ..audio.frontend_train import pearson
    from ..models.audio_encoder import LIP_BOUND

    enc = talker.encoder
    Kl = enc.config.k_lip
    dev = enc.lip_gain.device
    centre, gain = torch.zeros(Kl, device=dev), torch.ones(Kl, device=dev)
    low, high = torch.full((Kl,), -LIP_BOUND, device=dev), torch.full((Kl,), LIP_BOUND, device=dev)
    pinned = pinned_lips(Kl, data, cfg)
    held = data.lip_heldback
    report = None
    if pinned and len(held):
        f = data.indices.to(talker.device)
        pred = torch.cat([speech_coefficients(enc, data.windows, f[s:s + 256], data.num_frames)[1][:, :pinned]
                          for s in range(0, len(f), 256)]).double()
        tgt = data.mouth[data.indices.to(data.mouth.device)][:, :pinned].to(pred.device).double()
        p, t = pred[held.to(pred.device)], tgt[held.to(pred.device)]
        ok = torch.isfinite(t).all(1)
        if int(ok.sum()) >= 8:
            p, t = p[ok], t[ok]
            spread = p.std(0) / t.std(0).clamp_min(1e-9)
            r = pearson(p.T, t.T)
            g = (1 / spread.clamp_min(1e-9)).clamp(1 / MAX_LIP_GAIN, MAX_LIP_GAIN)
            finite = torch.isfinite(tgt).all(1)
            centre[:pinned] = pred.mean(0).float()
            gain[:pinned] = g.float()
            low[:pinned] = torch.quantile(tgt[finite], 0.005, dim=0).float()
            high[:pinned] = torch.quantile(tgt[finite], 0.995, dim=0).float()
            report = {"frames": int(ok.sum()), "heldout_r": [round(float(v), 4) for v in r],
                      "spread": [round(float(v), 4) for v in spread], "gain": [round(float(v), 4) for v in g]}
    for e in (talker.encoder, talker.causal_encoder):
        e.set_lip_calibration(centre, gain, low, high)
    return report


@torch.no_grad()
def fit_lip_motion(talker, data: ClipFrames, cfg: IdentityTrainConfig) -> float:
    """Sets the talker's steady mouth motion (``TalkerConfig.motion_window``,
    ``lip_motion``): the person's typical spread of the tracked opening (the lip target's
    unit) over windows of ``cfg.motion_window`` seconds, the median over the training
    frames whose window holds tracked training frames for at least half of its frames in
    the clip; the held-out frames are not read. Returns it (0 and off without a tracked
    mouth, a lip target or a window)."""
    from ..models.audio_encoder import local_spread

    spread = 0.0
    frames = int(round(cfg.motion_window * data.fps))
    if frames >= 2 and pinned_lips(talker.config.k_lip, data, cfg):
        x = data.mouth[:, 0].detach().double().cpu()
        valid = torch.zeros(len(x), dtype=torch.bool)
        valid[data.indices.cpu()] = True
        valid &= torch.isfinite(x)
        _, sd = local_spread(torch.nan_to_num(x), frames, False, valid)
        counted, _ = local_spread(valid.double(), frames, False)  # the share of each window that is tracked
        keep = valid & (counted >= 0.5) & torch.isfinite(sd)
        if bool(keep.any()):
            spread = round(float(sd[keep].median()), 4)
    talker.config = dataclasses.replace(talker.config, motion_window=float(cfg.motion_window) if spread else 0.0,
                                        lip_motion=spread)
    return spread


def train_identity(data_dir, out, cfg: IdentityTrainConfig, *, prior=None, device=None, progress: bool = True,
                   log=print, force_resume: bool = False) -> dict:
    """Trains (or resumes) a talker on the train split of the clip in ``data_dir``;
    returns the last metrics plus ``step`` and ``minutes``. An empty train split is
    refused. A resume whose options (other than ``steps`` and ``minutes``) or dataset
    (path, frame count, splits, content hash) differ from the saved run's is refused
    unless ``force_resume``: then this call's options are used and the talker's source
    records the change."""
    from tqdm import tqdm

    from ..data import load
    from ..prior import load_prior as load_default_prior
    from ..talker import Talker, TalkerConfig

    cfg.validate()
    out = Path(out)
    if out.is_dir():
        raise IsADirectoryError(f"--out must be a file path, got the directory {out}")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"the directory of --out does not exist: {out.parent}")
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    state = load_training_state(out)
    dataset = load(data_dir)
    split = dataset.splits["train"]
    if split.size == 0:
        raise ValueError(f"{dataset.root}: the train split (splits.json) is empty; the talker trains on its train "
                         "frames only (rewrite the splits, e.g. dgtalker preprocess --heldout 0.1)")
    held = dataset.splits["heldout"]
    if cfg.validate_every > 0 and (held.size < 2 or cfg.validate_frames < 2):
        raise ValueError(f"validate_every needs at least 2 held-out frames and validate_frames >= 2; "
                         f"{dataset.root} holds out {held.size}")
    provenance = dataset_provenance(dataset)
    resumed = None
    if state is not None:
        changes = resume_changes(state[1], cfg, provenance)
        if changes and not force_resume:
            raise ValueError(f"{out} was trained with other options or data: {'; '.join(changes)}. Run it as "
                             "before, choose another --out, or pass --force-resume (force_resume=True) to go on "
                             "with these")
        if changes:
            resumed = {"step": int(state[1]["step"]), "changes": changes}
    data = ClipFrames(dataset, split, cfg.resolution, device=device, progress=progress)
    data.hold_back_lips(lip_holdback(len(data), cfg.lip_holdback if data.mouth is not None else 0.0, data.fps))
    val = None
    if cfg.validate_every > 0:
        pick = held[np.linspace(0, held.size - 1, min(cfg.validate_frames, held.size)).round().astype(int)]
        val = ClipFrames(dataset, pick, cfg.resolution, device=device, progress=False, share=data)
    reference = prior if prior is not None else load_default_prior()
    reference = reference.to(device).eval()
    for p in reference.parameters():
        p.requires_grad_(False)
    t_start = time.perf_counter()
    elapsed0 = 0.0
    if state is None:
        talker = _initial_talker(reference, data, dataset, cfg, device, progress)
        history: list = []
        start = 0
    else:
        import copy

        tensors, meta = state
        tcfg = TalkerConfig.from_dict(json.loads(meta["talker_config"]))
        # how the finished talker reads speech is this run's to choose (state.READING_OPTIONS)
        tcfg = dataclasses.replace(tcfg, level_window=cfg.speech_reading()["level_window"])
        talker = Talker(copy.deepcopy(reference), tcfg, residual_frames=int(meta["residual_frames"]))
        talker.load_state_dict({k[len("talker."):]: v for k, v in tensors.items() if k.startswith("talker.")})
        talker.source = json.loads(meta.get("source", "{}"))
        with torch.no_grad():  # a forced resume on another split trains on those frames too
            talker.train_mask[data.indices] = True
        talker.to(device)
        data.set_windows(talker)
        for p in talker.parameters():
            p.requires_grad_(True)
        for p in talker.generator.mapping.parameters():
            p.requires_grad_(False)
        history = json.loads(meta["history"])
        if "sampler.upper_error" in tensors and tensors["sampler.upper_error"].shape == data.upper_error.shape:
            data.upper_error.copy_(tensors["sampler.upper_error"])
        start = int(meta["step"])
        elapsed0 = float(meta["elapsed"])
        log(f"resuming {out} at step {start} of {cfg.steps}")
    if val is not None:
        val.windows, val.causal_windows = data.windows, data.causal_windows
    previous = talker.source.get("forced_resumes", []) if state is not None else []
    kept = {k: talker.source[k] for k in ("frontend_adaptation", "mouth_interior") if talker.source.get(k)}
    talker.source = {**data.source, **provenance, "cross_view": cfg.cross_view, "train_config": asdict(cfg), **kept,
                     **({"forced_resumes": previous + [resumed]} if resumed or previous else {})}
    talker.train()
    opt = make_optimizer(talker, cfg)
    if state is not None:
        restore_optimizer(opt, state[0], state[1])
    budget = cfg.minutes * 60.0 if cfg.minutes > 0 else math.inf
    step = start
    metrics: dict = {}
    bar = tqdm(total=cfg.steps, initial=start, desc="training talker", disable=not progress, unit="step")

    def elapsed():
        return elapsed0 + time.perf_counter() - t_start

    def finish_and_save():
        fit_coefficient_stats(talker, data)
        talker.source.update(trained_steps=step, minutes=round(elapsed() / 60, 3),
                             lip_calibration=fit_lip_calibration(talker, data, cfg))
        fit_lip_motion(talker, data, cfg)
        save_training(out, talker, opt, step, cfg, history, elapsed(), data)

    try:
        while step < cfg.steps and elapsed() < budget:
            metrics = train_step(talker, reference if cfg.locality > 0 or cfg.side_silhouette > 0 else None, opt,
                                 data, step, cfg)
            if not math.isfinite(metrics["loss"]):
                raise FloatingPointError(f"loss became {metrics['loss']} at step {step}; lower the learning rates")
            step += 1
            row = {"step": step, "minutes": round(elapsed() / 60, 4), **{k: round(v, 5) for k, v in metrics.items()}}
            if val is not None and (step % cfg.validate_every == 0 or step == 1):
                row.update(validate_heldout(talker, val, cfg))
            history.append(row)
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}", psnr=f"{metrics['psnr']:.2f}")
            if step % cfg.checkpoint_every == 0:
                finish_and_save()
            if step % cfg.preview_every == 0:
                save_preview(out.with_name(out.name + ".preview.png"), talker, data, cfg)
        finish_and_save()
        cal = talker.source.get("lip_calibration")
        if cal:
            log(f"lips on {cal['frames']} held-back frames: r {cal['heldout_r'][0]:.2f}, spread "
                f"{cal['spread'][0]:.2f} of the tracked mouth's -> gain {cal['gain'][0]:.2f}")
        if talker.config.lip_motion:
            log(f"mouth opening kept moving as the person's over {talker.config.motion_window:g} s passages "
                f"(its typical spread there: {talker.config.lip_motion:.2f} of the tracked opening's)")
    except KeyboardInterrupt:
        finish_and_save()
        log(f"\ninterrupted: saved step {step} to {out}; run the same command again to resume")
        raise
    finally:
        bar.close()
    return {"step": step, "minutes": elapsed() / 60, **metrics}
