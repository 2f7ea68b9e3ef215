"""Face landmarks for the evaluation (mediapipe's bundled face mesh, 478 points).

Optional: mediapipe 0.10.14 comes with ``pip install ".[eval]"`` (Python <= 3.12; its
1.x wheels ship no models). The same detector measures the render and the ground
truth, so its own noise affects both alike:

- ``lmd``: the field's landmark distance, the mean pixel distance of the 40 lip
  points (mediapipe's lip contour) between render and truth;
- ``lip_gap``: the inner-lip distance (points 13 and 14), the mouth opening.
"""
from __future__ import annotations

import numpy as np

UPPER_INNER_LIP, LOWER_INNER_LIP = 13, 14


def available() -> bool:
    try:
        import mediapipe  # noqa: F401
    except ImportError:
        return False
    return True


class FaceLandmarks:
    """``detect(image uint8 [H, W, 3]) -> [478, 2]`` pixel landmarks of the main face, or None."""

    def __init__(self):
        import mediapipe as mp
        from mediapipe.python.solutions.face_mesh_connections import FACEMESH_LIPS

        self._mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1,
                                                     refine_landmarks=True)
        self.lips = np.array(sorted({i for edge in FACEMESH_LIPS for i in edge}))

    def detect(self, image: np.ndarray):
        img = np.ascontiguousarray(np.asarray(image, np.uint8)[..., :3])
        res = self._mesh.process(img)
        if not res.multi_face_landmarks:
            return None
        H, W = img.shape[:2]
        return np.array([[p.x * W, p.y * H] for p in res.multi_face_landmarks[0].landmark], np.float64)

    def close(self) -> None:
        self._mesh.close()


def lip_gap(landmarks: np.ndarray) -> float:
    return float(np.linalg.norm(landmarks[UPPER_INNER_LIP] - landmarks[LOWER_INNER_LIP]))
