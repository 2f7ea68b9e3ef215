"""The four mask channels of a real frame (docs/data-format.md): foreground from
mediapipe's selfie segmentation, and head, lower face and upper face from the face
mesh's points. The face regions are the face contour cut by lines along the eye axis,
placed like the synthetic corpus' regions (measured against its exact masks):

- head: the foreground above the jaw line (the contour from ear to ear through the
  chin, extended sideways), so hair and ears count, neck and shoulders do not;
- lower face: the face below a line a third of the way from the nose base to the
  upper lip (lips, mouth, jaw, chin, lower cheeks);
- upper face: the band from 0.6 of the eye-to-brow distance above the brows to 0.6
  of it below the lower lids (brows, eyes, lids, lower forehead).
"""
from __future__ import annotations

import numpy as np

from ..data.face_mesh import polygon
from .tracking import FACE_OVAL

SUBNASALE, UPPER_LIP_TOP = 2, 0
LEFT_EYE_CORNERS, RIGHT_EYE_CORNERS = (362, 263), (33, 133)
BROW_TOPS = (105, 66, 107, 334, 296, 336)
LOWER_LIDS = (145, 374)
JAW = FACE_OVAL[8:29]  # from the subject's left ear (454) down through the chin to the right (234)


def _axes(lm: np.ndarray):
    """Unit vectors along the eye axis (towards the image's right for an upright face)
    and perpendicular to it, pointing down the face."""
    ex = lm[list(LEFT_EYE_CORNERS), :2].mean(0) - lm[list(RIGHT_EYE_CORNERS), :2].mean(0)
    ex = ex / max(np.linalg.norm(ex), 1e-9)
    return ex, np.array([-ex[1], ex[0]])


def _below(height: int, width: int, point, down) -> np.ndarray:
    """Soft half-plane: 1 for pixels more than half a pixel past the line through
    ``point`` perpendicular to ``down``, 0 before it."""
    dx = (np.arange(width, dtype=np.float32) + 0.5 - point[0]) * down[0]
    dy = (np.arange(height, dtype=np.float32) + 0.5 - point[1]) * down[1]
    return np.clip(dy[:, None] + dx[None, :] + 0.5, 0.0, 1.0)


def face_masks(lm: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """float32 [H, W, 4] (head, lower face, upper face, foreground) of a frame from its
    face-mesh points ``lm [478, >=2]`` (pixels of this image) and foreground coverage."""
    H, W = foreground.shape
    fg = np.clip(foreground.astype(np.float32), 0.0, 1.0)
    ex, ey = _axes(lm)
    far = 4.0 * max(H, W)
    jaw = lm[list(JAW), :2]
    above_jaw = np.concatenate([[jaw[0] + far * ex], jaw, [jaw[-1] - far * ex, jaw[-1] - far * ex - far * ey,
                                                            jaw[0] + far * ex - far * ey]])
    out = np.zeros((H, W, 4), np.float32)
    out[..., 3] = fg
    out[..., 0] = head = fg * polygon(above_jaw, H, W)
    # the face regions lie inside the face contour: work in its bounding box only
    contour = lm[list(FACE_OVAL), :2]
    x0, y0 = np.clip(np.floor(contour.min(0)).astype(int) - 1, 0, [W, H])
    x1, y1 = np.clip(np.ceil(contour.max(0)).astype(int) + 2, 0, [W, H])
    if x1 <= x0 or y1 <= y0:
        return out
    h, w, o = y1 - y0, x1 - x0, np.array([x0, y0])
    face = head[y0:y1, x0:x1] * polygon(contour - o, h, w)
    # a third of the way from the nose base to the upper lip's top
    nose_line = lm[SUBNASALE, :2] + 0.35 * np.dot(lm[UPPER_LIP_TOP, :2] - lm[SUBNASALE, :2], ey) * ey
    out[y0:y1, x0:x1, 1] = face * _below(h, w, nose_line - o, ey)
    brow = lm[list(BROW_TOPS), :2].mean(0) - o
    lid = lm[list(LOWER_LIDS), :2].mean(0) - o
    d = float(np.dot(lid - brow, ey))
    out[y0:y1, x0:x1, 2] = face * _below(h, w, brow - 0.6 * d * ey, ey) * _below(h, w, lid + 0.6 * d * ey, -ey)
    return out


class Segmenter:
    """Foreground (person) coverage of an RGB frame: mediapipe's selfie segmentation."""

    def __init__(self):
        import mediapipe as mp

        self._seg = mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        m = self._seg.process(np.ascontiguousarray(rgb)).segmentation_mask
        return np.clip(np.asarray(m, np.float32), 0.0, 1.0)

    def close(self):
        self._seg.close()
