"""Image and motion metrics of the evaluation, on plain arrays (torch or numpy).

All images are float in [0, 1], ``[..., H, W, 3]``; masks ``[..., H, W]`` in [0, 1].
"""
from __future__ import annotations

import numpy as np
import torch


def _t(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def psnr(a, b, mask=None) -> float:
    """PSNR in dB between images in [0, 1]; inside ``mask`` (soft weights) if given.
    Identical images give +inf; an empty mask gives NaN."""
    a, b = _t(a).double(), _t(b).double()
    se = (a - b) ** 2
    if mask is None:
        mse = float(se.mean())
    else:
        m = _t(mask).double()[..., None]
        denom = float(m.sum()) * a.shape[-1]
        if denom <= 0:
            return float("nan")
        mse = float((se * m).sum()) / denom
    return float("inf") if mse == 0 else -10.0 * float(np.log10(mse))


def ssim(a, b) -> float:
    """Mean SSIM (Gaussian 11x11 window) of ``[B, H, W, 3]`` or ``[H, W, 3]`` images."""
    from ..metrics import ssim as _ssim

    a, b = _t(a).float(), _t(b).float()
    if a.dim() == 3:
        a, b = a[None], b[None]
    return float(_ssim(a, b))


# the report's regions, from a frame's mask channels (head, lower face, upper face, foreground)
REGIONS = ("face", "lower_face", "upper_face", "head_rest", "torso", "background")


def region_masks(masks) -> dict:
    """Soft masks ``[..., H, W]`` of the report's regions from mask channels ``[..., H, W, 4]``
    (``data.format.MASK_CHANNELS``): ``face`` = lower + upper face; ``head_rest`` = the
    head outside them (hair, ears, forehead top, nose and cheeks); ``torso`` = foreground
    outside the head (neck, shoulders); ``background`` = outside the foreground."""
    m = _t(masks).float()
    head, lower, upper, fg = m[..., 0], m[..., 1], m[..., 2], m[..., 3]
    face = (lower + upper).clamp(0, 1)
    return {"face": face, "lower_face": lower, "upper_face": upper, "head_rest": (head - face).clamp(0, 1),
            "torso": (fg - head).clamp(0, 1), "background": (1 - fg).clamp(0, 1)}


def fine_detail(img) -> torch.Tensor:
    """``[H, W]``: the magnitude of the luminance's 3x3 Laplacian (edges replicated), the
    finest texture of an image (skin pores, hair strands, fabric), what blur removes first."""
    y = luminance(img)[None, None]
    k = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], dtype=y.dtype, device=y.device)[None, None]
    return torch.nn.functional.conv2d(torch.nn.functional.pad(y, (1, 1, 1, 1), mode="replicate"), k)[0, 0].abs()


def region_scores(render, truth, masks, min_pixels: float = 16.0) -> dict:
    """``{region: {"psnr", "ssim", "detail"}}`` of one image ``[H, W, 3]`` against its truth
    inside each of ``region_masks(masks)`` (SSIM: the per-pixel map, reflected at the
    borders, averaged with the mask's weights; detail: the render's ``fine_detail`` over
    the truth's, summed with those weights: 1 as sharp as the truth, below 1 softer);
    NaN for a region of fewer than ``min_pixels``."""
    from ..metrics import ssim_map

    r, g = _t(render).float(), _t(truth).float()
    smap = ssim_map(r[None], g[None], same=True)[0].mean(-1)  # [H, W]
    dr, dg = fine_detail(r), fine_detail(g)
    out = {}
    for name, w in region_masks(masks).items():
        n = float(w.sum())
        if n < min_pixels:
            out[name] = {"psnr": float("nan"), "ssim": float("nan"), "detail": float("nan")}
            continue
        truth_detail = float((dg * w).sum())  # 0 on a flat region: no detail to compare
        out[name] = {"psnr": psnr(r, g, w), "ssim": float((smap * w).sum() / n),
                     "detail": float((dr * w).sum()) / truth_detail if truth_detail > 0 else float("nan")}
    return out


def luminance(img) -> torch.Tensor:
    img = _t(img).float()
    return 0.299 * img[..., 0] + 0.587 * img[..., 1] + 0.114 * img[..., 2]


def mouth_opening(img, lower_mask, threshold: float = 0.45) -> float:
    """How open the mouth looks: the fraction of the lower-face region (``lower_mask``
    > 0.5) darker than ``threshold`` times the region's median luminance (the mouth
    interior). Measured the same way on a render and on its ground truth, with the
    ground truth's mask, it compares mouth motion without any landmark detector."""
    y = luminance(img)
    region = _t(lower_mask).float() > 0.5
    if int(region.sum()) == 0:
        return float("nan")
    vals = y[region]
    return float((vals < threshold * vals.median()).float().mean())


def teeth_pixels(img, opening, skin_mask, brightness: float = 0.85, colourfulness: float = 0.8) -> int:
    """How many pixels of ``opening`` (bool ``[H, W]``: the mouth opening's outline, e.g.
    inside the inner lip ring) look like teeth (``dgtalker.metrics.teeth_mask``: skin-bright,
    less colourful than skin). Measured the same way on a render and its truth (inside the
    truth's outline) it says whether the render shows the teeth."""
    from ..metrics import teeth_mask

    x = _t(img)
    return int(teeth_mask(x, torch.as_tensor(np.asarray(opening, bool), device=x.device), _t(skin_mask).to(x.device),
                          brightness, colourfulness).sum())


def pearson(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 2:
        return float("nan")
    a, b = a[ok] - a[ok].mean(), b[ok] - b[ok].mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else float("nan")


def best_lag(truth, pred, max_lag: int = 5) -> tuple[int, float]:
    """(lag, correlation) maximising the correlation of ``pred[t + lag]`` with
    ``truth[t]``: a positive lag means the prediction is late."""
    truth, pred = np.asarray(truth, np.float64), np.asarray(pred, np.float64)
    best = (0, -np.inf)
    for lag in range(-max_lag, max_lag + 1):
        if lag >= 0:
            c = pearson(truth[: len(truth) - lag], pred[lag:])
        else:
            c = pearson(truth[-lag:], pred[: len(pred) + lag])
        if np.isfinite(c) and c > best[1]:
            best = (lag, c)
    return best[0], float(best[1])


def jitter(coefficients) -> float:
    """Mean absolute second difference of a coefficient track ``[T, K]`` (frame-to-frame
    acceleration): large values are visible jitter."""
    c = np.asarray(coefficients, np.float64)
    if len(c) < 3:
        return 0.0
    return float(np.abs(c[2:] - 2 * c[1:-1] + c[:-2]).mean())


def landmark_distance(a, b, visible=None) -> float:
    """Mean Euclidean distance (pixels) between landmark sets ``[..., L, 2]`` (the
    field's LMD), over the landmarks ``visible`` in both if given."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d = np.linalg.norm(a - b, axis=-1)
    if visible is not None:
        v = np.asarray(visible, bool)
        return float(d[v].mean()) if v.any() else float("nan")
    return float(d.mean())
