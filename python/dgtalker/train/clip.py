"""A talking clip in memory for identity training: frames, masks, cameras, audio
windows and blink amounts of a split, and the torso posed for its cameras."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

from ..camera import dataset_torso_offsets, view_tensors
from .plate import background_plate


class ClipFrames:
    """A talking clip's frames (a split), masks, cameras and audio windows, resized to
    ``resolution`` and kept in memory (uint8; on the GPU if ``device`` is one).
    ``share``: another ClipFrames of the same clip whose audio windows and background
    plate this one uses instead of computing them again (the held-out frames of a run)."""

    def __init__(self, dataset, indices, resolution: int, *, context: float = 0.3, device="cpu",
                 progress: bool = True, workers: int = 8, share: "ClipFrames | None" = None):
        from tqdm import tqdm

        from .. import audio as A

        if dataset.kind != "talking":
            raise ValueError(f"{dataset.root}: identity training needs a talking clip (kind 'talking'), got "
                             f"{dataset.kind!r}")
        idx = np.asarray(list(indices), np.int64)
        if idx.size < 2:
            raise ValueError(f"{dataset.root}: identity training needs at least 2 training frames, got {idx.size}")
        R = resolution
        self.indices = torch.from_numpy(idx)
        self.num_frames = len(dataset)
        self.fps = float(dataset.fps)
        self.width, self.height = dataset.width, dataset.height

        def load_one(i):
            img = torch.from_numpy(np.ascontiguousarray(dataset.image(int(i)))).permute(2, 0, 1)[None].float()
            m = torch.from_numpy(np.ascontiguousarray(dataset.masks(int(i)))).permute(2, 0, 1)[None]
            img = F.interpolate(img, size=(R, R), mode="area")[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8)
            m = (F.interpolate(m, size=(R, R), mode="area")[0].permute(1, 2, 0) * 255).round().to(torch.uint8)
            return img, m

        rgb = torch.empty(len(idx), R, R, 3, dtype=torch.uint8)
        masks = torch.empty(len(idx), R, R, 4, dtype=torch.uint8)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for k, (img, m) in enumerate(tqdm(pool.map(load_one, idx), total=len(idx), desc="loading clip",
                                              unit="frame", disable=not progress)):
                rgb[k], masks[k] = img, m
        self.rgb, self.masks = rgb.to(device), masks.to(device)
        self.w2c, self.K = view_tensors(dataset.w2c[idx], dataset.K[idx], dataset.width, dataset.height, R, device)
        self.mean_K = torch.as_tensor(dataset.K[idx], dtype=torch.float32).mean(0)  # at the clip's own size
        torso = dataset_torso_offsets(dataset, idx)  # the shoulders' own motion, where the clip tracked it
        self.torso = None if torso is None else torch.from_numpy(torso).to(device)
        if share is not None:
            self.mel, self.windows, self.plate = share.mel, share.windows.to(device), share.plate
        else:
            samples, rate = dataset.audio
            feats = A.features(samples, rate, fps=self.fps, context=context, num_frames=self.num_frames)
            self.mel = torch.from_numpy(feats.mel)
            self.windows = torch.from_numpy(feats.windows).to(device)
            # the plate at the clip's own size, from up to 150 frames spread over the split
            pick = idx[np.linspace(0, len(idx) - 1, min(150, len(idx))).round().astype(int)]
            imgs = np.stack([dataset.image(int(i)) for i in pick])
            fgs = np.stack([dataset.masks(int(i))[..., 3] for i in pick])
            self.plate = torch.from_numpy(background_plate(imgs, fgs))
        self.causal_windows = self.windows  # until set_windows: the log-mel windows serve both encoders
        self.source = {"dataset": str(dataset.root), "dataset_source": dataset.meta.get("source"),
                       "train_frames": int(len(idx)), "seconds": round(len(idx) / self.fps, 3),
                       "fps": self.fps, "size": [dataset.width, dataset.height]}
        openness = _eye_openness(dataset)
        b = None if openness is None else blink_amounts(openness)
        self.blink = None if b is None else torch.from_numpy(b).to(device)  # per clip frame, 0 open .. 1 closed
        mouth = mouth_targets(dataset, idx)
        self.mouth = None if mouth is None else torch.from_numpy(mouth).to(device)  # [N, 2] standardised, NaN: none
        boxes = mouth_boxes(dataset, R)
        self.mouth_box = None if boxes is None else torch.from_numpy(boxes).to(device)  # [N, 4] training pixels
        self.upper_error = torch.ones(len(idx))  # last upper-face error per frame (the sampler's state)
        self.device = torch.device(device)
        self.hold_back_lips(np.zeros(0, np.int64))
        self.split_blink = None if self.blink is None else self.blink[self.indices.to(self.blink.device)].cpu()
        self.split_opening = None if mouth is None else torch.from_numpy(mouth[idx, 0])  # the sampler's, per position

    def set_windows(self, talker, *, normalise_encoders: bool = False) -> None:
        """The encoders' windows of every clip frame from ``talker``'s features (with its
        speech front end, if it has one: offline for the main encoder, causal for the
        streaming one); ``normalise_encoders``: also set each encoder's per-channel
        statistics from the same features (a new talker)."""
        mel = self.mel.numpy()
        for enc, causal in ((talker.encoder, False), (talker.causal_encoder, True)):
            # the encoders learn the clip at its own level, passages loud and soft as spoken (read
            # at one level, they followed held-out speech worse: docs/benchmarks.md, runs P);
            # speech that drives the trained talker is read with its level window
            feats, start = talker.speech_features(mel, causal=causal, level_window=0.0)
            if normalise_encoders:  # the clip's own frames, not the silence padding
                enc.set_normalization(torch.from_numpy(feats[-start:len(feats) + start] if start else feats))
            windows = talker.windows_of(feats, start, self.num_frames, self.fps).to(self.device)
            if causal:
                self.causal_windows = windows
            else:
                self.windows = windows

    def hold_back_lips(self, positions) -> None:
        """Positions (into the split) whose tracked mouth the lip target leaves out
        (``sampler.lip_holdback``): ``lip_heldback``, and the rest, ``lip_pool``;
        ``unheard [num_frames]`` marks their clip frames, whose audio the encoders never
        learn from (``identity.train_step``)."""
        held = torch.as_tensor(np.asarray(positions, np.int64))
        keep = torch.ones(len(self.indices), dtype=torch.bool)
        keep[held] = False
        self.lip_heldback, self.lip_pool = held, torch.nonzero(keep)[:, 0]
        self.unheard = torch.zeros(self.num_frames, dtype=torch.bool, device=self.device)
        self.unheard[self.indices[held].to(self.device)] = True

    def __len__(self) -> int:
        return len(self.indices)

    def batch(self, k: torch.Tensor) -> dict:
        k = k.to(self.rgb.device)
        m = self.masks[k].float() / 255
        return {"rgb": self.rgb[k].float() / 255, "head": m[..., 0], "lower": m[..., 1], "upper": m[..., 2],
                "fg": m[..., 3], "K": self.K[k], "w2c": self.w2c[k],
                "torso": None if self.torso is None else self.torso[k]}

    def mouth_masks(self, k: torch.Tensor) -> torch.Tensor | None:
        """``[B, R, R]`` masks of the squares around the tracked lips of positions ``k``
        (into the split), or None if the clip has no lip points."""
        if self.mouth_box is None:
            return None
        return box_masks(self.mouth_box[self.indices[k.cpu()].to(self.mouth_box.device)], self.rgb.shape[1])


def named_landmarks(dataset, names) -> np.ndarray | None:
    """The clip's 2D landmarks ``names``, in that order (``[N, len(names), 2]``, as stored),
    or None if it has no landmarks or lacks one of them."""
    known = list(dataset.landmark_names)
    if dataset.gt is None or "landmarks_2d" not in dataset.gt or not all(n in known for n in names):
        return None
    return np.asarray(dataset.gt["landmarks_2d"])[:, [known.index(n) for n in names]]


def mouth_measures(dataset) -> np.ndarray | None:
    """Per frame ``[N, 2]`` (mouth opening, mouth width) the tracker measured: the face
    mesh's inner-lip gap and mouth-corner distance over the outer eye-corner distance
    (real clips, ``gt.npz`` ``mouth_opening`` / ``mouth_width``), else from the corpus
    landmarks (inner-lip midpoints and mouth corners over the distance between the eye
    centres); NaN where unknown; None without either."""
    gt = dataset.gt
    if gt is not None and "mouth_opening" in gt and "mouth_width" in gt:
        return np.stack([gt["mouth_opening"], gt["mouth_width"]], 1).astype(np.float64)
    L = named_landmarks(dataset, ("upper_lip_mid", "lower_lip_mid", "mouth_corner_left", "mouth_corner_right",
                                  "upper_lid_left", "lower_lid_left", "upper_lid_right", "lower_lid_right"))
    if L is None:
        return None
    ul, ll, cl, cr, a, b, c, d = L.astype(np.float64).transpose(1, 0, 2)
    span = np.linalg.norm((a + b) / 2 - (c + d) / 2, axis=-1)
    span = np.where(span > 1e-6, span, np.nan)
    out = np.stack([np.linalg.norm(ul - ll, axis=-1) / span, np.linalg.norm(cl - cr, axis=-1) / span], 1)
    if "landmarks_visible" in gt:  # frames without a face (the corpus' occlusion flags are per point: positions stay exact)
        out[~np.asarray(gt["landmarks_visible"]).any(1)] = np.nan
    return out


def mouth_boxes(dataset, resolution: int, pad: float = 0.35) -> np.ndarray | None:
    """Per frame ``[N, 4]`` (x0, y0, x1, y1) a square around the tracked lips in training
    pixels (the frame resized to ``resolution`` squared): the face mesh's lip contour
    (``gt.npz`` ``lips_2d``) or the corpus' mouth landmarks, its side the lips' larger
    extent plus ``pad`` of it on each side; all zero where no face was tracked. None
    without lip points."""
    tracked = tracked_lips(dataset)
    if tracked is None:
        return None
    pts, found = tracked
    scale = np.array([resolution / dataset.width, resolution / dataset.height])
    pts = pts * scale
    lo, hi = pts.min(1), pts.max(1)
    centre, half = (lo + hi) / 2, (hi - lo).max(1, keepdims=True) * (0.5 + pad)
    box = np.concatenate([centre - half, centre + half], 1)
    box[~found | ~np.isfinite(box).all(1)] = 0
    return box.astype(np.float32)


def box_masks(boxes: torch.Tensor, resolution: int) -> torch.Tensor:
    """``[B, R, R]`` masks, 1 inside each box ``[B, 4]`` (x0, y0, x1, y1, pixel units), 0 outside."""
    c = torch.arange(resolution, device=boxes.device, dtype=torch.float32) + 0.5
    inx = (c[None] >= boxes[:, 0:1]) & (c[None] < boxes[:, 2:3])
    iny = (c[None] >= boxes[:, 1:2]) & (c[None] < boxes[:, 3:4])
    return (iny[:, :, None] & inx[:, None, :]).float()


def mouth_targets(dataset, train_idx) -> np.ndarray | None:
    """``mouth_measures`` standardised by their mean and spread over the training frames
    (``[N, 2]`` float32, NaN where unknown): the targets of the first two lip
    coefficients (``IdentityTrainConfig.lip_target``)."""
    m = mouth_measures(dataset)
    if m is None:
        return None
    tr = m[np.asarray(train_idx)]
    ok = np.isfinite(tr).all(1)
    if ok.sum() < 2:
        return None
    mean, std = tr[ok].mean(0), tr[ok].std(0)
    return ((m - mean) / np.maximum(std, 1e-6)).astype(np.float32)


def _eye_openness(dataset) -> np.ndarray | None:
    """Per frame eyelid distance (pixels) from the clip's landmarks, if it has them."""
    L = named_landmarks(dataset, ("upper_lid_left", "lower_lid_left", "upper_lid_right", "lower_lid_right"))
    if L is None:
        return None
    d = np.linalg.norm(L[:, 0] - L[:, 1], axis=-1) + np.linalg.norm(L[:, 2] - L[:, 3], axis=-1)
    return (d / 2).astype(np.float32)


def blink_amounts(openness: np.ndarray, open_below: float = 0.15, closed_from: float = 0.75) -> np.ndarray:
    """Per frame eyelid closure in [0, 1] from the eyelid distance: 0 while the eyes are
    less than ``open_below`` closed relative to the clip's median opening (landmark
    jitter and squints stay 0), rising linearly to 1 at ``closed_from`` (a closed lid's
    landmarks keep some distance). On identity 7 this gives 0.89-1 (median 1) on the
    frames whose truth is shut and 0 on every frame whose truth is open."""
    closure = 1 - openness / max(float(np.median(openness)), 1e-6)
    return np.clip((closure - open_below) / (closed_from - open_below), 0, 1).astype(np.float32)


CORPUS_MOUTH = ("mouth_corner_left", "mouth_corner_right", "upper_lip_mid", "lower_lip_mid")


def tracked_lips(dataset, columns=None, *, all_visible: bool = False) -> tuple[np.ndarray, np.ndarray] | None:
    """``(points [N, P, 2] in pixels, found [N])`` of the tracked lips: the face mesh's lip
    contour (``gt.npz`` ``lips_2d``; only its ``columns`` if given) with the frames where a
    face was found, else the corpus' four mouth landmarks (``CORPUS_MOUTH``) with the frames
    where any landmark is visible (``all_visible``: all four of them; the inner lips hide
    behind each other on some frames); None without either."""
    gt = dataset.gt
    if gt is not None and "lips_2d" in gt:
        pts = np.asarray(gt["lips_2d"], np.float64)
        if columns is not None:
            pts = pts[:, columns]
        found = np.asarray(gt["face_found"], bool) if "face_found" in gt else np.ones(len(pts), bool)
        return pts, found
    pts = named_landmarks(dataset, CORPUS_MOUTH)
    if pts is None:
        return None
    found = np.ones(len(pts), bool)
    if "landmarks_visible" in gt:
        visible = np.asarray(gt["landmarks_visible"])
        found = (visible[:, [list(dataset.landmark_names).index(n) for n in CORPUS_MOUTH]].all(1) if all_visible
                 else visible.any(1))
    return pts.astype(np.float64), found


def mouth_points(dataset) -> np.ndarray | None:
    """Per frame ``[N, 4, 2]`` the tracked mouth corners (left, right of the image) and the
    middles of the upper and lower inner lip (pixels; NaN where no face was tracked): the
    face mesh's points 61, 291, 13, 14 (``gt.npz`` ``lips_2d``) or the corpus' landmarks.
    None without either. ``models.mouth.mouth_anchor`` places the mouth interior with them."""
    from ..data.face_mesh import LIP_CONTOUR, LOWER_INNER_LIP, MOUTH_CORNERS, UPPER_INNER_LIP

    tracked = tracked_lips(dataset, [LIP_CONTOUR.index(i) for i in (*MOUTH_CORNERS, UPPER_INNER_LIP, LOWER_INNER_LIP)],
                           all_visible=True)
    if tracked is None:
        return None
    pts, found = tracked
    pts = pts.copy()
    pts[~found] = np.nan
    return pts


def clip_teeth_colour(dataset, frames, max_frames: int = 48, min_pixels: int = 200) -> np.ndarray | None:
    """The colour ``[3]`` of the person's teeth: the median of the pixels that look like
    teeth (``metrics.teeth_mask``) inside the tracked inner lip ring of the widest-open
    third of ``frames`` (at most ``max_frames`` of them, spread over it). None without the
    face mesh's lips (``lips_2d``) or with fewer than ``min_pixels`` such pixels."""
    from ..data.face_mesh import INNER_LIP_RING, LIP_CONTOUR, inner_lip_mask
    from ..metrics import teeth_mask

    gt = dataset.gt
    if gt is None or "lips_2d" not in gt or "mouth_opening" not in gt:
        return None
    frames = np.asarray(frames, np.int64)
    opening = np.asarray(gt["mouth_opening"], np.float64)[frames]
    ok = np.isfinite(opening)
    if "face_found" in gt:
        ok &= np.asarray(gt["face_found"], bool)[frames]
    if ok.sum() < 3:
        return None
    frames, opening = frames[ok], opening[ok]
    wide = frames[opening >= np.quantile(opening, 2 / 3)]
    wide = wide[np.linspace(0, len(wide) - 1, min(max_frames, len(wide))).round().astype(np.int64)]
    ring = [LIP_CONTOUR.index(i) for i in INNER_LIP_RING]
    pixels = []
    for i in np.unique(wide):
        img = torch.from_numpy(dataset.image(int(i)).astype(np.float32) / 255)
        skin = torch.from_numpy(dataset.masks(int(i))[..., 1])
        inside = inner_lip_mask(np.asarray(gt["lips_2d"][i], np.float64)[ring], img.shape[0], img.shape[1])
        pixels.append(img[teeth_mask(img, torch.from_numpy(inside), skin)])
    pixels = torch.cat(pixels)
    if len(pixels) < min_pixels:
        return None
    return pixels.median(0).values.numpy()
