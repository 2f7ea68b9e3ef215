"""Evaluating a talker against a clip's ground truth.

Every evaluated frame is rendered from the clip's audio alone (the talker's
encoder over the whole clip's windows; the expression residual at zero, the
clip's mean expression) at that frame's camera, with the torso posed by that
frame's head pose, composited over the talker's background plate, and compared with
the ground-truth frame:

- ``psnr`` (whole frame), ``psnr_head``, ``psnr_lower_face``, ``psnr_upper_face``
  (inside the ground truth's masks), ``ssim``;
- per region (face, lower and upper face, the rest of the head, torso, background;
  ``metrics.region_scores``): PSNR, SSIM and the detail ratio, the render's finest
  texture over the truth's (1: as sharp as the truth; below 1: softer);
- mouth motion: ``mouth_corr`` and ``mouth_lag_frames`` between the mouth opening
  measured on renders and on ground truth (``metrics.mouth_opening``, the same
  measurement on both), over the evaluated frames in time order;
- ``static`` baseline: the same metrics for ``w_can`` alone (no audio);
- optional ``fit_upper``: the upper face fitted to each frame (test-time fit of
  ``c_exp`` alone on the upper-face mask; lips still from audio);
- ``novel_views`` (a dataset with ``novel/``): renders at the novel cameras, both
  sides composited over one grey (the plate is only valid for the training camera),
  per |yaw| bucket.

Every render whose pixels become a number runs the rasterizer checked
(``checked=True``): on CUDA a render that overflowed its intersection buffers is
redone before it is measured, and bad input raises in the call (CPU calls always
check).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from . import metrics as M


def _resize(img: torch.Tensor, size: int) -> torch.Tensor:
    """[H, W, C] -> [size, size, C] (area)."""
    if img.shape[0] == size and img.shape[1] == size:
        return img
    return F.interpolate(img.permute(2, 0, 1)[None], size=(size, size), mode="area")[0].permute(1, 2, 0)


def spread_frames(frames, n: int) -> np.ndarray:
    """``n`` of ``frames`` spread evenly over them (all of them if there are fewer)."""
    frames = np.asarray(frames)
    if len(frames) <= n:
        return frames
    return frames[np.linspace(0, len(frames) - 1, n).round().astype(np.int64)]


def clip_coefficients(talker, dataset, *, causal: bool = False):
    """Speech-driven (c_exp, c_lip) ``[N, K]`` of every frame of a talking dataset, on the
    CPU whatever the talker's device (callers index them per batch and read them as numpy)."""
    from .. import audio as A

    samples, rate = dataset.audio
    mel = A.log_mel(A.resample(A.to_mono(samples), int(rate), A.SAMPLE_RATE))
    windows = talker.clip_windows(mel, len(dataset), float(dataset.fps), causal=causal)
    with torch.no_grad():
        ce, cl = talker.coefficients(windows, causal=causal)
        cl = talker.steady_lips(cl, float(dataset.fps), causal=causal)
    return ce.cpu(), cl.cpu()


class GroundTruth:
    """``truth(idx) -> (images [n, size, size, 3], masks [n, size, size, 4])`` of a view set's
    views ``idx`` (a dataset's frames or its novel views), resized and on ``device``."""

    def __init__(self, viewset, size: int, device):
        self.v, self.size, self.device = viewset, size, device

    def __call__(self, idx):
        imgs, masks = [], []
        for i in idx:
            img = torch.from_numpy(np.ascontiguousarray(self.v.image(int(i)))).float() / 255
            m = torch.from_numpy(np.ascontiguousarray(self.v.masks(int(i))))
            imgs.append(_resize(img, self.size))
            masks.append(_resize(m, self.size))
        return torch.stack(imgs).to(self.device), torch.stack(masks).to(self.device)


def view_cameras(viewset, idx, size: int, width: int, height: int, device):
    """``(w2c [n, 4, 4], K [n, 3, 3])`` of a view set's views ``idx`` (frames or novel
    views), the intrinsics resized from ``width x height`` to a ``size``² render."""
    from ..camera import view_tensors

    return view_tensors(viewset.w2c[idx], viewset.K[idx], width, height, size, device)


def clip_torso(dataset, idx, device) -> torch.Tensor | None:
    """The tracked torso offsets ``[n, 2]`` of a clip's frames ``idx`` on ``device``, as the
    talker poses the shoulders with them (None: the clip has no torso track)."""
    from ..camera import dataset_torso_offsets

    off = dataset_torso_offsets(dataset, idx)
    return None if off is None else torch.from_numpy(off).to(device)


def _frame_metrics(render, gt, masks, detector=None, px_scale: float = 1.0) -> list[dict]:
    """Per-frame metrics; with a landmark ``detector`` also LMD (pixels at the dataset's
    size: ``px_scale`` = dataset width / evaluated width) and the inner-lip gaps."""
    out = []
    for r, g, m in zip(render, gt, masks):
        torso = (m[..., 3] - m[..., 0]).clamp(0, 1)  # neck and shoulders
        out.append({"psnr": M.psnr(r, g), "psnr_head": M.psnr(r, g, m[..., 0]), "psnr_torso": M.psnr(r, g, torso),
                    "psnr_lower_face": M.psnr(r, g, m[..., 1]), "psnr_upper_face": M.psnr(r, g, m[..., 2]),
                    "ssim": M.ssim(r, g), "mouth_render": M.mouth_opening(r, m[..., 1]),
                    "mouth_truth": M.mouth_opening(g, m[..., 1])})
        for name, sc in M.region_scores(r, g, m).items():
            out[-1].update({f"region_{name}_{q}": v for q, v in sc.items()})
        if detector is not None:
            from ..data.face_mesh import INNER_LIP_RING, eye_span, inner_lip_mask, mouth_opening
            from .landmarks import lip_gap

            to8 = lambda x: (x.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()  # noqa: E731
            lr, lg = detector.detect(to8(r)), detector.detect(to8(g))
            both = lr is not None and lg is not None
            nan = float("nan")
            out[-1].update(
                landmarks_render=lr is not None, landmarks_truth=lg is not None,
                lmd_px=M.landmark_distance(lr[detector.lips], lg[detector.lips]) * px_scale if both else nan,
                lip_gap_render=lip_gap(lr) * px_scale if lr is not None else nan,
                lip_gap_truth=lip_gap(lg) * px_scale if lg is not None else nan,
                opening_render=float(mouth_opening(lr)) if lr is not None else nan,
                opening_truth=float(mouth_opening(lg)) if lg is not None else nan,
                teeth_render=nan, teeth_truth=nan)
            if lg is not None:  # teeth inside the truth's mouth opening, in eye-corner distances squared
                inside = inner_lip_mask(lg[list(INNER_LIP_RING)], g.shape[0], g.shape[1])
                unit = max(float(eye_span(lg)), 1.0) ** 2
                out[-1]["teeth_render"] = M.teeth_pixels(r, inside, m[..., 1]) / unit
                out[-1]["teeth_truth"] = M.teeth_pixels(g, inside, m[..., 1]) / unit
    return out


def lip_sync(render_opening, truth_opening, max_lag: int = 5) -> dict:
    """Lip sync of two mouth-opening curves in the face mesh's unit (inner-lip gap over
    the outer eye-corner distance; ``data.face_mesh``), frame by frame, NaN where no
    face was found: ``lip_motion_ratio`` (the render's spread over the truth's: 1 moves
    as much, 0.17 barely moves), ``lip_corr`` at lag 0, and the best lag in
    ``±max_lag`` frames (``lip_lag_frames`` > 0: the render is late) with its correlation."""
    r, t = np.asarray(render_opening, np.float64), np.asarray(truth_opening, np.float64)
    ok = np.isfinite(r) & np.isfinite(t)
    if ok.sum() < 3:
        nan = float("nan")
        return {"lip_motion_ratio": nan, "lip_corr": nan, "lip_lag_frames": 0, "lip_best_corr": nan,
                "opening_std_render": nan, "opening_std_truth": nan}
    sr, st = float(np.std(r[ok])), float(np.std(t[ok]))
    lag, best = M.best_lag(t, r, max_lag)  # pearson skips the frames where either is NaN
    return {"lip_motion_ratio": sr / st if st > 0 else float("nan"), "lip_corr": M.pearson(t[ok], r[ok]),
            "lip_lag_frames": int(lag), "lip_best_corr": float(best), "opening_std_render": sr,
            "opening_std_truth": st}


def open_and_closed(rows: list[dict]) -> dict:
    """Lower-face PSNR on the open-mouth frames (the truth's opening in its top third)
    and on the closed ones (bottom third): where a mouth interior is missing, the open
    frames score far below the closed ones. The opening is the face mesh's (inner-lip
    gap over the eye corners) where landmarks were found, else the dark fraction of the
    lower face. Empty with fewer than 6 frames that have an opening."""
    key = "opening_truth" if rows and "opening_truth" in rows[0] else "mouth_truth"
    o = np.array([r.get(key, np.nan) for r in rows], np.float64)
    lower = np.array([r["psnr_lower_face"] for r in rows], np.float64)
    ok = np.isfinite(o) & np.isfinite(lower)
    if ok.sum() < 6:
        return {}
    lo, hi = np.quantile(o[ok], [1 / 3, 2 / 3])
    opened, closed = ok & (o >= hi), ok & (o <= lo)
    out = {"psnr_lower_face_open": float(lower[opened].mean()), "psnr_lower_face_closed": float(lower[closed].mean()),
           "open_frames": int(opened.sum()), "closed_frames": int(closed.sum())}
    out.update(teeth_on_open_frames(rows, opened))
    return out


def teeth_on_open_frames(rows: list[dict], opened: np.ndarray) -> dict:
    """Teeth on the open-mouth frames (``metrics.teeth_pixels`` inside the truth's inner lip
    ring, in eye-corner distances squared): the truth's and the render's mean area,
    ``teeth_ratio`` (render over truth) and ``teeth_visible``, the share of the open frames
    whose truth shows teeth where the render shows at least half as much. Empty without
    landmarks or with no teeth in the truth."""
    if not rows or "teeth_truth" not in rows[0]:
        return {}
    t = np.array([r["teeth_truth"] for r in rows], np.float64)
    r = np.array([r["teeth_render"] for r in rows], np.float64)
    sel = opened & np.isfinite(t) & np.isfinite(r)
    shown = sel & (t > 0)
    if not shown.any():
        return {}
    return {"teeth_truth": float(t[sel].mean()), "teeth_render": float(r[sel].mean()),
            "teeth_ratio": float(r[sel].mean() / t[sel].mean()),
            "teeth_visible": float((r[shown] >= 0.5 * t[shown]).mean()), "teeth_frames": int(shown.sum())}


def _summary(rows: list[dict]) -> dict:
    keys = ("psnr", "psnr_head", "psnr_torso", "psnr_lower_face", "psnr_upper_face", "ssim")
    out = {k: float(np.nanmean([r[k] for r in rows])) for k in keys}
    if rows and "region_face_psnr" in rows[0]:
        import warnings

        with warnings.catch_warnings():  # a region absent from every frame is NaN, silently
            warnings.simplefilter("ignore", RuntimeWarning)
            out["regions"] = {name: {q: float(np.nanmean([r[f"region_{name}_{q}"] for r in rows]))
                                     for q in ("psnr", "ssim", "detail")} for name in M.REGIONS}
    truth = [r["mouth_truth"] for r in rows]
    pred = [r["mouth_render"] for r in rows]
    out["mouth_corr"] = M.pearson(truth, pred)
    lag, corr = M.best_lag(truth, pred)
    out["mouth_lag_frames"], out["mouth_best_corr"] = lag, corr
    if rows and "lmd_px" in rows[0]:
        lmd = [r["lmd_px"] for r in rows]
        out["lmd_px"] = float(np.nanmean(lmd)) if np.isfinite(lmd).any() else float("nan")
        out["landmarks_found_render"] = float(np.mean([r["landmarks_render"] for r in rows]))
        out["landmarks_found_truth"] = float(np.mean([r["landmarks_truth"] for r in rows]))
        gt_gap, r_gap = [r["lip_gap_truth"] for r in rows], [r["lip_gap_render"] for r in rows]
        out["mouth_corr_landmarks"] = M.pearson(gt_gap, r_gap)
        out.update(lip_sync(np.array([r["opening_render"] for r in rows]), np.array([r["opening_truth"] for r in rows])))
    out.update(open_and_closed(rows))
    out["frames"] = len(rows)
    return out


def fit_upper_face(talker, c_exp, c_lip, w2c, K, gt, upper, size: int, steps: int = 40, lr: float = 0.05,
                   torso: torch.Tensor | None = None):
    """Test-time fit of ``c_exp`` alone to frames on their upper-face masks (lips fixed)."""
    from ..metrics import masked_l1

    c = c_exp.clone().requires_grad_(True)
    opt = torch.optim.Adam([c], lr=lr)
    for _ in range(steps):
        img, _ = talker.clip_frames(c, c_lip, w2c, K, size, size, checked=True, torso=torso)
        loss = masked_l1(img, gt, upper)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return c.detach()


def trained_on(talker, dataset) -> bool | None:
    """Whether ``dataset`` is the clip ``talker`` was trained on: by the content hashes the
    trainer records (``dataset_sha256``, or ``clip_sha256`` for a copy whose frames were
    re-encoded), else by its path; None if the talker records neither (an untrained or
    hand-made talker)."""
    src = talker.source or {}
    if src.get("dataset_sha256"):
        if src["dataset_sha256"] == dataset.fingerprint():
            return True
        return bool(src.get("clip_sha256")) and src["clip_sha256"] == dataset.clip_fingerprint()
    if src.get("dataset"):
        from pathlib import Path

        return Path(src["dataset"]).resolve() == Path(dataset.root).resolve()
    return None


def scored_frames(talker, dataset, frames) -> dict:
    """What the evaluated ``frames`` of ``dataset`` are to ``talker``: how many it trained
    on and how many it never saw, and a label saying so. On its own training clip the
    training frames are those of ``talker.train_mask`` (recorded by the trainer; a
    talker from before it was recorded: the clip's train split); on any other clip
    every frame is unseen."""
    frames = np.asarray(frames, np.int64)
    n = len(frames)
    same = trained_on(talker, dataset)
    if same:
        mask = talker.train_mask.detach().cpu().numpy().astype(bool)
        if "dataset_sha256" not in talker.source or len(mask) != len(dataset):
            mask = np.zeros(len(dataset), bool)
            mask[dataset.splits["train"]] = True
        seen = int(mask[frames].sum())
        unseen = n - seen
        if seen == 0:
            label = f"{n} held-out frames"
        elif unseen == 0:
            label = f"{n} training frames"
        else:
            label = f"{n} frames ({seen} training, {unseen} held-out)"
        return {"label": label, "frames": n, "training_frames": seen, "unseen_frames": unseen,
                "clip": "the training clip"}
    what = "a clip the talker was not trained on" if same is False else "a clip (the talker records no training clip)"
    return {"label": f"{n} frames of {what}", "frames": n, "training_frames": 0 if same is False else None,
            "unseen_frames": n if same is False else None, "clip": what}


def evaluate(talker, dataset, *, frames=None, size: int | None = None, novel: bool = True, fit_upper_steps: int = 0,
             fit_every: int = 1, batch: int = 4, device=None, progress: bool = True, landmarks: bool | None = None,
             coefficients=None, baselines: bool = True) -> dict:
    """Metrics of ``talker`` on ``frames`` of ``dataset`` (default: its held-out split; a
    dataset without held-out frames is refused, pass ``frames`` to score others); see the
    module docstring. ``report["scored"]`` says what the frames are to the talker
    (``scored_frames``: training or held-out frames, or another clip's). ``landmarks``: also LMD and the
    landmark mouth opening with mediapipe's face mesh (default: when it is installed).
    ``coefficients``: the clip's ``clip_coefficients``, if the caller already has them.
    ``baselines=False`` skips the static and rigid-torso renders (a third of the cost each)."""
    from tqdm import tqdm

    from . import landmarks as L

    device = torch.device(device) if device is not None else talker.device
    talker = talker.to(device).eval()
    if size is None:
        size = dataset.width
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    if frames is None:
        frames = dataset.splits["heldout"]
        if frames.size == 0:
            raise ValueError(f"{dataset.root} has no held-out frames (splits.json); pass frames= (e.g. every "
                             "frame of a clip the talker never saw) to score others")
    frames = np.asarray(frames, np.int64)
    if frames.ndim != 1 or frames.size == 0 or frames.min() < 0 or frames.max() >= len(dataset):
        raise ValueError(f"frames must be a non-empty list of frame indices in [0, {len(dataset)}), got "
                         f"{frames.size} of them")
    ce_all, cl_all = coefficients if coefficients is not None else clip_coefficients(talker, dataset)
    gt_of = GroundTruth(dataset, size, device)
    use_landmarks = L.available() if landmarks is None else bool(landmarks)
    detector = L.FaceLandmarks() if use_landmarks else None
    scale = dataset.width / size
    rows, static_rows, fit_rows, rigid_rows = [], [], [], []
    for s in tqdm(range(0, len(frames), batch), desc="evaluating", disable=not progress, unit="batch"):
        idx = frames[s:s + batch]
        w2c, K = view_cameras(dataset, idx, size, dataset.width, dataset.height, device)
        torso = clip_torso(dataset, idx, device)
        gt, masks = gt_of(idx)
        ce, cl = ce_all[idx].to(device), cl_all[idx].to(device)
        with torch.no_grad():
            img, _ = talker.clip_frames(ce, cl, w2c, K, size, size, checked=True, torso=torso)
            rows += _frame_metrics(img.clamp(0, 1), gt, masks, detector, scale)
            if baselines:
                img0, _ = talker.clip_frames(torch.zeros_like(ce), torch.zeros_like(cl), w2c, K, size, size,
                                             checked=True, torso=torso)
                static_rows += _frame_metrics(img0.clamp(0, 1), gt, masks, detector, scale)
                # the torso carried rigidly by the head camera (no skinning), for comparison
                img1, _ = talker.frames(ce, cl, w2c, K, size, size, body=None, checked=True)
                rigid_rows += _frame_metrics(img1.clamp(0, 1), gt, masks)
        if fit_upper_steps > 0:
            keep = (np.arange(s, s + len(idx)) % fit_every) == 0
            if keep.any():
                k = torch.from_numpy(np.nonzero(keep)[0]).to(device)
                tk = None if torso is None else torso[k]
                c_fit = fit_upper_face(talker, ce[k], cl[k], w2c[k], K[k], gt[k], masks[k][..., 2], size,
                                       steps=fit_upper_steps, torso=tk)
                with torch.no_grad():
                    img, _ = talker.clip_frames(c_fit, cl[k], w2c[k], K[k], size, size, checked=True, torso=tk)
                fit_rows += _frame_metrics(img.clamp(0, 1), gt[k], masks[k])
    if detector is not None:
        detector.close()
    loud = frame_loudness(dataset, frames)
    lag, corr = M.best_lag(loud, [r["mouth_render"] for r in rows])
    report = {"loudness_lag": {"lag_frames": lag, "corr": corr, "truth_lag_frames": M.best_lag(
        loud, [r["mouth_truth"] for r in rows])[0]}}
    report.update({"frames": _summary(rows), "size": size, "scored": scored_frames(talker, dataset, frames),
                   "landmarks": "mediapipe face mesh" if detector is not None else None,
              "evaluated_frames": [int(i) for i in frames],
              "per_frame": [{k: round(v, 4) for k, v in r.items()} for r in rows],
              "coefficient_jitter": M.jitter(torch.cat([ce_all, cl_all], 1).cpu().numpy())})
    if baselines:
        report.update(static=_summary(static_rows), torso_rigid=_summary(rigid_rows))
        f, s0 = report["frames"], report["static"]
        report["talker_minus_static"] = {k: f[k] - s0[k] for k in ("psnr", "psnr_head", "psnr_lower_face", "ssim",
                                                                    "lmd_px", "lip_corr", "lip_motion_ratio")
                                         if k in f and k in s0}
    if fit_rows:
        report["fit_upper"] = _summary(fit_rows)
    if dataset.gt is not None and "jaw_open" in dataset.gt:
        jaw = np.asarray(dataset.gt["jaw_open"])[frames]
        for name, sel in (("mouth_wide_open", jaw >= 0.5), ("mouth_closed", jaw < 0.15)):
            if sel.any():
                report[name] = {"psnr_lower_face": float(np.nanmean([r["psnr_lower_face"] for r, k in zip(rows, sel) if k])),
                                "frames": int(sel.sum())}
    if novel and dataset.novel is not None:
        report["novel_views"] = evaluate_novel(talker, dataset, ce_all, cl_all, size, batch, device, progress)
    return report


def frame_loudness(dataset, frames) -> np.ndarray:
    """RMS loudness (dB) of the clip's audio over each frame's duration, centred on its time."""
    samples, rate = dataset.audio
    half = int(round(rate / dataset.fps / 2))
    out = []
    for i in frames:
        c = int(round(i / dataset.fps * rate))
        seg = samples[max(0, c - half): c + half + 1]
        out.append(10 * np.log10(float(np.mean(seg.astype(np.float64) ** 2)) + 1e-10) if len(seg) else -100.0)
    return np.asarray(out)


def spiral_consistency(talker, dataset, *, frame: int = 0, views: int = 24, size: int = 256, device=None,
                       coefficients=None) -> dict:
    """3D consistency without novel-view ground truth: one frame's coefficients rendered
    along a spiral camera (±25° yaw, ±10° pitch) around the talker's framing. Reports
    how often a face mesh finds the face, and how much the mouth opening (inner-lip
    gap over the distance between the eye corners, 33 and 263) varies with the view
    (coefficient of variation; a consistent head keeps its mouth the same from every
    side, though foreshortening alone moves this ratio by several percent at ±25°, so
    compare talkers by it rather than read it as an absolute; it is a ratio to the
    mean gap, so take a frame with the mouth open and faces of 256 px or more).
    Needs mediapipe."""
    from ..camera import spiral
    from . import landmarks as L

    if not L.available():
        return {"note": "needs mediapipe (pip install \".[eval]\")"}
    device = torch.device(device) if device is not None else talker.device
    ce, cl = coefficients if coefficients is not None else clip_coefficients(talker, dataset)
    vm0 = talker.default_w2c
    dist = float(torch.linalg.norm(-(vm0[:3, :3].T @ vm0[:3, 3])))
    fov = float(2 * np.degrees(np.arctan(0.5 * talker.config.height / float(talker.default_K[1, 1]))))
    vms, Ks = spiral(views, width=size, height=size, distance=dist, fov=fov)
    with torch.no_grad():
        img, _ = talker.frames(ce[[frame]].expand(views, -1).to(device), cl[[frame]].expand(views, -1).to(device),
                               vms.to(device), Ks.to(device), size, size, checked=True)
    det = L.FaceLandmarks()
    gaps = []
    for im in (img.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy():
        lm = det.detect(im)
        if lm is not None:
            gaps.append(L.lip_gap(lm) / max(float(np.linalg.norm(lm[33] - lm[263])), 1e-6))
    det.close()
    g = np.asarray(gaps)
    return {"views": views, "found": len(g) / views,
            "lip_gap_cv": float(g.std() / g.mean()) if len(g) > 1 and g.mean() > 0 else None}


def novel_view_cameras(dataset, idx, size: int, device):
    """``(frame_index, w2c, K, frame_w2c)`` of the dataset's novel views ``idx``: their
    cameras at ``size`` and the head camera of the frame each one shows (a novel camera
    orbits that frame's head; the body stays where the frame has it: pose the torso
    with ``Talker.clip_gaussians(..., frame_w2c)``)."""
    nv = dataset.novel
    fi = nv.frame_index[idx]
    w2c, K = view_cameras(nv, idx, size, dataset.width, dataset.height, device)
    return fi, w2c, K, torch.as_tensor(dataset.w2c[fi], dtype=torch.float32, device=device)


def evaluate_novel(talker, dataset, ce_all, cl_all, size, batch, device, progress) -> dict:
    """Image metrics at the novel-view cameras, per |yaw| bucket (see module docstring)."""
    from tqdm import tqdm

    nv = dataset.novel
    yaw = np.asarray(nv.extra.get("yaw_deg", np.zeros(len(nv))), np.float64)
    grey = torch.full((3,), 0.5, device=device)
    gt_of = GroundTruth(nv, size, device)
    per = []
    for s in tqdm(range(0, len(nv), batch), desc="novel views", disable=not progress, unit="batch"):
        idx = np.arange(s, min(s + batch, len(nv)))
        fi, w2c, K, frame_w2c = novel_view_cameras(dataset, idx, size, device)
        gt, masks = gt_of(idx)
        gt = gt * masks[..., 3:4] + grey * (1 - masks[..., 3:4])
        with torch.no_grad():
            g = talker.clip_gaussians(ce_all[fi].to(device), cl_all[fi].to(device), frame_w2c,
                                      torso=clip_torso(dataset, fi, device))
            img, _ = talker.rasterize(g, w2c, K, size, size, background=grey, checked=True)
        for k, r in enumerate(_frame_metrics(img.clamp(0, 1), gt, masks)):
            r["yaw"] = float(yaw[idx[k]])
            per.append(r)
    out = {}
    for b in (0, 15, 30, 45):
        rows = [r for r in per if abs(abs(r["yaw"]) - b) < 7.5]
        if rows:
            out[str(b)] = {k: float(np.nanmean([r[k] for r in rows])) for k in
                           ("psnr", "psnr_head", "psnr_lower_face", "ssim")} | {"views": len(rows)}
    return out


def disentanglement(talker, dataset, *, frame: int = 0, size: int = 256, sigma: float = 2.0, device=None) -> dict:
    """How much moving ``c_exp`` alone changes the lower face compared with moving ``c_lip``
    alone, and vice versa for the upper face. Each component is moved by ``sigma``
    times its spread over the clip (speech coefficients plus residual), one at a time,
    from the clip's mean; changes are mean |image difference| inside the ground-truth
    lower- and upper-face masks of ``frame`` at its camera."""
    device = torch.device(device) if device is not None else talker.device
    ce_all, cl_all = clip_coefficients(talker, dataset)
    ce_all = ce_all + talker.residual_track.detach().cpu()[: len(ce_all)]
    mean_e, mean_l = ce_all.mean(0), cl_all.mean(0)
    std_e, std_l = ce_all.std(0), cl_all.std(0)
    w2c, K = view_cameras(dataset, np.array([frame]), size, dataset.width, dataset.height, device)
    _, masks = GroundTruth(dataset, size, device)([frame])
    lower, upper = masks[..., 1:2], masks[..., 2:3]
    Ke, Kl = len(mean_e), len(mean_l)
    ce = mean_e.repeat(1 + 2 * (Ke + Kl), 1)
    cl = mean_l.repeat(1 + 2 * (Ke + Kl), 1)
    for k in range(Ke):
        ce[1 + 2 * k, k] += sigma * std_e[k]
        ce[2 + 2 * k, k] -= sigma * std_e[k]
    for k in range(Kl):
        cl[1 + 2 * (Ke + k), k] += sigma * std_l[k]
        cl[2 + 2 * (Ke + k), k] -= sigma * std_l[k]
    n = ce.shape[0]
    with torch.no_grad():
        img, _ = talker.clip_frames(ce.to(device), cl.to(device), w2c.expand(n, -1, -1), K.expand(n, -1, -1), size,
                                    size, checked=True)
    d = (img[1:] - img[:1]).abs()
    lo = (d * lower).sum((1, 2, 3)) / lower.sum().clamp_min(1) / 3
    up = (d * upper).sum((1, 2, 3)) / upper.sum().clamp_min(1) / 3
    e_lo, e_up = float(lo[: 2 * Ke].sum()), float(up[: 2 * Ke].sum())
    l_lo, l_up = float(lo[2 * Ke:].sum()), float(up[2 * Ke:].sum())
    return {"exp_on_lower": e_lo, "lip_on_lower": l_lo, "exp_on_upper": e_up, "lip_on_upper": l_up,
            "lower_leak": e_lo / l_lo if l_lo > 0 else math.nan,
            "upper_leak": l_up / e_up if e_up > 0 else math.nan,
            "orthogonality_error": talker.blendshapes.orthogonality_error()}
