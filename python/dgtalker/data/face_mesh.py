"""Mouth measures on the 478-point face mesh (mediapipe's topology), in one unit.

The *mouth opening* is the inner-lip gap (points 13 / 14) over the outer eye-corner
distance (points 33 / 263), the *mouth width* the mouth-corner distance (61 / 291) in
the same unit: both are free of the image size, the crop and the camera distance, so a
clip's tracked mouth, a render's and ``dgtalker.lipsync``'s curves compare directly.
``dgtalker preprocess`` stores them per frame (``gt.npz``: ``mouth_opening``,
``mouth_width``, and the 40 lip-contour points ``lips_2d``); ``dgtalker eval`` measures
renders the same way. ``polygon`` draws regions outlined by mesh points (preprocess's
face masks, eval's mouth opening).
"""
from __future__ import annotations

import numpy as np

UPPER_INNER_LIP, LOWER_INNER_LIP = 13, 14
EYE_OUTER_CORNERS = (33, 263)
MOUTH_CORNERS = (61, 291)
# every point of the mesh's lip contours (outer and inner, both lips): FACEMESH_LIPS
LIP_CONTOUR = (0, 13, 14, 17, 37, 39, 40, 61, 78, 80, 81, 82, 84, 87, 88, 91, 95, 146, 178, 181, 185, 191, 267, 269,
               270, 291, 308, 310, 311, 312, 314, 317, 318, 321, 324, 375, 402, 405, 409, 415)
# the inner lip line as one closed ring (mouth corner 78, upper lip to corner 308, lower lip
# back): the mouth opening's outline, what shows between the lips lies inside it
INNER_LIP_RING = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14, 87, 178, 88, 95)


def _dist(points: np.ndarray, a: int, b: int) -> np.ndarray:
    p = np.asarray(points, np.float64)
    return np.linalg.norm(p[..., a, :2] - p[..., b, :2], axis=-1)


def eye_span(points: np.ndarray) -> np.ndarray:
    """Outer eye-corner distance of mesh points ``[..., 478, 2+]`` (pixels)."""
    return _dist(points, *EYE_OUTER_CORNERS)


def mouth_opening(points: np.ndarray) -> np.ndarray:
    """Inner-lip gap over the outer eye-corner distance, per face ``[...]``."""
    return _dist(points, UPPER_INNER_LIP, LOWER_INNER_LIP) / np.maximum(eye_span(points), 1e-9)


def mouth_width(points: np.ndarray) -> np.ndarray:
    """Mouth-corner distance over the outer eye-corner distance, per face ``[...]``."""
    return _dist(points, *MOUTH_CORNERS) / np.maximum(eye_span(points), 1e-9)


def polygon(points: np.ndarray, height: int, width: int, supersample: int = 2) -> np.ndarray:
    """Coverage in [0, 1] (float32 [H, W]) of a polygon given in pixel coordinates
    (pixel centres at +0.5), anti-aliased by supersampling."""
    import cv2

    s = supersample
    im = np.zeros((height * s, width * s), np.uint8)
    # fixed point with 4 fractional bits; a supersampled pixel's centre is its integer coordinate
    vertices = np.round((np.asarray(points, np.float64) * s - 0.5) * 16).astype(np.int32)
    cv2.fillPoly(im, [vertices], 255, lineType=cv2.LINE_8, shift=4)
    if s > 1:
        im = cv2.resize(im, (width, height), interpolation=cv2.INTER_AREA)
    return im.astype(np.float32) * (1.0 / 255.0)


def inner_lip_mask(ring: np.ndarray, height: int, width: int) -> np.ndarray:
    """Boolean ``[H, W]``: the pixels inside the inner-lip ring ``[20, 2]`` (the points
    ``INNER_LIP_RING``, in that order, pixel coordinates): the mouth opening, where
    teeth are looked for."""
    return polygon(ring, height, width, supersample=1) > 0.5
