"""Face tracking and head pose for real video.

mediapipe's face mesh (478 points, bundled with mediapipe 0.10.14) gives per frame
the face's points in pixels plus a relative depth. From those:

1. ``canonical_shape``: the person's rigid face shape, a weighted generalised
   Procrustes mean of the frames' 3D points; points that move on their own (lips,
   jaw, lids, brows) get low weight from their spread across frames.
2. ``register_to_head``: a similarity (scale, rotation, translation) that maps that
   shape onto the prior's canonical head frame through the 12 corpus landmarks
   (docs/data-format.md), so a real head sits where the prior's heads sit, in metres.
3. ``bundle_adjust``: per frame the rigid head pose (``w2c``), refined together with
   the shape and (unless the user gives it) the clip's focal length, starting from
   PnP of the registered shape against each frame's 2D points (``solve_poses``); then
   ``fill_and_smooth``, a zero-phase (two-sided) Gaussian filter, so smoothing adds
   no lag.
"""
from __future__ import annotations

import numpy as np

# mediapipe face-mesh indices of the corpus landmarks (LANDMARK_NAMES order; "left" is
# the subject's left, which appears on the image's right)
MEDIAPIPE_LANDMARKS = {
    "mouth_corner_left": 291, "mouth_corner_right": 61,
    "upper_lip_mid": 13, "lower_lip_mid": 14,
    "upper_lid_left": 386, "lower_lid_left": 374,
    "upper_lid_right": 159, "lower_lid_right": 145,
    "nose_tip": 4, "chin": 152,
    "brow_inner_left": 336, "brow_inner_right": 107,
}

# the 12 landmarks of the canonical head frame (metres): the mean over the prior
# corpus' identities 1000-1039 at rest (synthetic HeadModel, neutral expression);
# tests/test_preprocess.py recomputes it
CANONICAL_LANDMARKS = np.array([
    [0.0238, -0.0524, 0.0842], [-0.0238, -0.0524, 0.0842],
    [0.0, -0.0520, 0.0921], [0.0, -0.0520, 0.0921],
    [0.0313, 0.0228, 0.0875], [0.0313, 0.0131, 0.0876],
    [-0.0313, 0.0228, 0.0875], [-0.0313, 0.0131, 0.0876],
    [0.0, -0.0241, 0.1157], [0.0, -0.0919, 0.0499],
    [0.0160, 0.0418, 0.0941], [-0.0160, 0.0418, 0.0941],
])

# the face-mesh contour of the face, clockwise in the image from the top of the forehead
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
             152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)
NUM_POINTS = 478


def _groups():
    from mediapipe.python.solutions import face_mesh_connections as fmc

    flat = lambda edges: sorted({i for e in edges for i in e})  # noqa: E731
    return {"lips": flat(fmc.FACEMESH_LIPS), "eyes": flat(fmc.FACEMESH_LEFT_EYE | fmc.FACEMESH_RIGHT_EYE),
            "brows": flat(fmc.FACEMESH_LEFT_EYEBROW | fmc.FACEMESH_RIGHT_EYEBROW),
            "irises": list(range(468, 478))}


OTHER_FACE = "other face"

# a landmark list's wire format when every landmark has exactly x, y and z set: per
# landmark, field 1 (length 15) holding float fields 1, 2 and 3
_LANDMARK_WIRE = np.dtype([("head", "u1", 2), ("tx", "u1"), ("x", "<f4"), ("ty", "u1"), ("y", "<f4"), ("tz", "u1"),
                           ("z", "<f4")])


def _landmarks(landmark_list) -> np.ndarray:
    """``[n, 3]`` (x, y, z) of a mediapipe landmark list: read straight from its
    serialised form (30 times faster than a loop over the landmarks), or by that loop
    where the form is not the plain one."""
    raw = landmark_list.SerializeToString()
    if len(raw) % _LANDMARK_WIRE.itemsize == 0:
        rec = np.frombuffer(raw, _LANDMARK_WIRE)
        if ((rec["head"] == [0x0A, 0x0F]).all() and (rec["tx"] == 0x0D).all() and (rec["ty"] == 0x15).all()
                and (rec["tz"] == 0x1D).all()):
            return np.stack([rec["x"], rec["y"], rec["z"]], 1).astype(np.float64)
    return np.array([[p.x, p.y, p.z] for p in landmark_list.landmark], np.float64)


class FaceTracker:
    """Per-frame face mesh of the clip's main face: ``track(rgb) -> [478, 3]`` (x, y in
    pixels; z relative depth in the same units, larger is farther) or None.

    The mesh runs on the whole frame (its own detector and tracking, the most accurate
    here). Where that finds no face, or jumps to another face, mediapipe's full-range
    face detector (which also finds faces that are small in a wide frame) places a
    square region around the main face, and the mesh runs on that region from then
    on, following it. The main face is the largest one the detector sees when the
    first face is found that way; afterwards the face nearest to where it was last
    seen, so a second person never takes over."""

    MESH_INPUT = 640  # larger regions are downscaled first (the mesh itself works at 192-256 px)

    def __init__(self):
        import mediapipe as mp

        # one face: the mesh then skips its detector while it tracks (a third of its time)
        self._mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=False, max_num_faces=1,
                                                     refine_landmarks=True, min_detection_confidence=0.5,
                                                     min_tracking_confidence=0.5)
        self._region_mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=False, max_num_faces=1,
                                                            refine_landmarks=True, min_detection_confidence=0.5,
                                                            min_tracking_confidence=0.5)
        self.use_regions = False
        self._detector = mp.solutions.face_detection.FaceDetection(model_selection=1, min_detection_confidence=0.5)
        self.region = None  # (centre x, centre y, side) in pixels
        self.last_centre = None
        self.faces_seen = 0  # most faces the detector found in one frame

    def _detect(self, rgb):
        """The main face's box ``(centre x, centre y, size)`` in pixels, or None."""
        H, W = rgb.shape[:2]
        res = self._detector.process(rgb)
        boxes = []
        for d in res.detections or []:
            b = d.location_data.relative_bounding_box
            boxes.append((
                (b.xmin + b.width / 2) * W, (b.ymin + b.height / 2) * H, max(b.width * W, b.height * H)))
        self.faces_seen = max(self.faces_seen, len(boxes))
        if not boxes:
            return None
        if self.last_centre is None:
            return max(boxes, key=lambda b: b[2])
        return min(boxes, key=lambda b: np.hypot(b[0] - self.last_centre[0], b[1] - self.last_centre[1]))

    @staticmethod
    def _region_around(box):
        """The mesh's square region for a detector box: the box, a little higher (hair),
        2.2 times as large."""
        if box is None:
            return None
        cx, cy, size = box
        return cx, cy - 0.1 * size, 2.2 * size

    def _mesh_in(self, rgb, region):
        from PIL import Image

        from .video import square_window

        cx, cy, side = region
        side = max(int(round(side)), 16)
        x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
        crop = square_window(rgb, x0, y0, side)
        scale = 1.0
        if side > self.MESH_INPUT:
            scale = side / self.MESH_INPUT
            crop = np.asarray(Image.fromarray(crop).resize((self.MESH_INPUT, self.MESH_INPUT), Image.BILINEAR))
        res = self._region_mesh.process(np.ascontiguousarray(crop))
        if not res.multi_face_landmarks:
            return None
        n = crop.shape[0]
        pts = _landmarks(res.multi_face_landmarks[0]) * n
        return pts * scale + [x0, y0, 0.0]

    def _whole_frame(self, rgb):
        H, W = rgb.shape[:2]
        res = self._mesh.process(rgb)
        if not res.multi_face_landmarks:
            return None
        lm = _landmarks(res.multi_face_landmarks[0]) * [W, H, W]
        lo, hi = lm[:, :2].min(0), lm[:, :2].max(0)
        ref = self.last_centre
        if ref is None:  # the first face: is it the largest one in the picture?
            box = self._detect(rgb)
            ref = None if box is None else np.array(box[:2])
        if ref is not None and np.linalg.norm((lo + hi) / 2 - ref) > 0.5 * max(hi - lo):
            return OTHER_FACE  # the mesh found another face than the main one: the detector chooses
        return lm

    def track(self, rgb: np.ndarray):
        rgb = np.ascontiguousarray(rgb)
        if not self.use_regions:
            lm = self._whole_frame(rgb)
            if lm is not None and lm is not OTHER_FACE:
                lo, hi = lm[:, :2].min(0), lm[:, :2].max(0)
                self.last_centre = (lo + hi) / 2
                return lm
            box = self._detect(rgb)
            if box is None:
                return None
            self.use_regions = True
            self.region = self._region_around(box)
        lm = self._mesh_in(rgb, self.region) if self.region is not None else None
        if lm is None:
            self.region = self._region_around(self._detect(rgb))
            lm = self._mesh_in(rgb, self.region) if self.region is not None else None
        if lm is None:
            self.region = None
            return None
        lo, hi = lm[:, :2].min(0), lm[:, :2].max(0)
        want = ((lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, 1.7 * max(hi - lo))
        # the region stays put while the face stays well inside it: the mesh's own
        # tracking then sees an ordinary video (a region moving every frame jitters it)
        if (self.region is None or np.hypot(want[0] - self.region[0], want[1] - self.region[1]) > 0.12 * self.region[2]
                or abs(np.log(want[2] / self.region[2])) > 0.15):
            self.region = want
        self.last_centre = (lo + hi) / 2
        return lm

    def close(self):
        self._mesh.close()
        self._region_mesh.close()
        self._detector.close()


def similarities(src: np.ndarray, dst: np.ndarray, w: np.ndarray | None = None):
    """Weighted Umeyama for every frame of ``src [F, P, 3]`` onto ``dst [P, 3]``:
    ``(s [F], R [F, 3, 3], t [F, 3])`` minimising sum w |s R src + t - dst|^2; each R
    is a proper rotation."""
    w = np.ones(src.shape[1]) if w is None else np.asarray(w, np.float64)
    w = w / w.sum()
    ms, md = np.einsum("n,fnc->fc", w, src), w @ dst
    a, b = src - ms[:, None], dst - md
    C = np.einsum("nc,fnd->fcd", b * w[:, None], a)
    U, S, Vt = np.linalg.svd(C)
    D = np.ones((len(src), 3))
    D[:, 2] = np.sign(np.linalg.det(U @ Vt))
    R = (U * D[:, None, :]) @ Vt
    s = (S * D).sum(1) / np.einsum("n,fn->f", w, (a ** 2).sum(-1))
    return s, R, md - s[:, None] * np.einsum("fij,fj->fi", R, ms)


def similarity(src: np.ndarray, dst: np.ndarray, w: np.ndarray | None = None):
    """``similarities`` of one point set ``src [P, 3]``: ``(s, R, t)``."""
    s, R, t = similarities(src[None], dst, w)
    return float(s[0]), R[0], t[0]


def rigid_candidates() -> np.ndarray:
    """Face-mesh points that move rigidly with the skull, to first order: not the lips,
    lids, brows or irises, and not the jaw line below the mouth corners."""
    g = _groups()
    moving = set(g["lips"]) | set(g["eyes"]) | set(g["brows"]) | set(g["irises"])
    return np.array([i for i in range(NUM_POINTS) if i not in moving])


def canonical_shape(points: list[np.ndarray], iterations: int = 4):
    """The clip's rigid face shape from per-frame 3D points ``[F, 478, 3]`` (tracker
    units, image axes): ``(shape [478, 3], weights [478])``. Weighted generalised
    Procrustes: each frame is aligned to the mean by a similarity over the rigid
    candidates, and every point's weight is the inverse of its residual spread, so
    points below the mouth (the jaw) and anything else that moves fall out."""
    P = np.asarray(points, np.float64)
    cand = rigid_candidates()
    w = np.zeros(NUM_POINTS)
    w[cand] = 1.0
    # the jaw moves with speech: start without points below the mouth corners
    mouth_y = P[:, [61, 291], 1].mean()
    w[P[:, :, 1].mean(0) > mouth_y] = 0.0
    mean = P[0]
    for _ in range(iterations):
        sc, R, t = similarities(P, mean, w)
        aligned = sc[:, None, None] * (P @ R.transpose(0, 2, 1)) + t[:, None]
        mean = aligned.mean(0)
        spread = np.sqrt(((aligned - mean) ** 2).sum(-1).mean(0))
        scale = np.sqrt(((mean - mean.mean(0)) ** 2).sum(-1).mean())
        w = np.where(w > 0, 1.0 / (spread / scale + 0.005) ** 2, 0.0)
    return mean, w / w.max()


def register_to_head(shape: np.ndarray, weights: np.ndarray):
    """Map the clip's canonical shape (image axes: x right, y down, z away) into the
    prior's head frame (metres; x to the subject's left, y up, z out of the face) by a
    similarity through the 12 corpus landmarks. Returns ``(points [478, 3] in the head
    frame, rms residual of the 12 landmarks in metres)``."""
    flip = np.diag([1.0, -1.0, -1.0])
    S = shape @ flip
    idx = list(MEDIAPIPE_LANDMARKS.values())
    s, R, t = similarity(S[idx], CANONICAL_LANDMARKS)
    X = s * S @ R.T + t
    rms = float(np.sqrt(((X[idx] - CANONICAL_LANDMARKS) ** 2).sum(1).mean()))
    return X, rms


def intrinsics(focal: float, width: int, height: int) -> np.ndarray:
    return np.array([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1.0]])


def _pnp(X, uv, K, guess=None):
    import cv2

    if guess is not None:
        ok, rvec, tvec = cv2.solvePnP(X, uv, K, None, rvec=guess[0].copy(), tvec=guess[1].copy(),
                                      useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE)
    else:
        ok, rvec, tvec = cv2.solvePnP(X, uv, K, None, flags=cv2.SOLVEPNP_SQPNP)
        ok, rvec, tvec = cv2.solvePnP(X, uv, K, None, rvec=rvec, tvec=tvec, useExtrinsicGuess=True,
                                      flags=cv2.SOLVEPNP_ITERATIVE)
    proj, _ = cv2.projectPoints(X, rvec, tvec, K, None)
    err = float(np.sqrt(((proj.reshape(-1, 2) - uv) ** 2).sum(1).mean()))
    return rvec.reshape(3), tvec.reshape(3), err


def solve_poses(X: np.ndarray, points: list, K: np.ndarray, rigid: np.ndarray):
    """Per-frame head pose: PnP of the head-frame points ``X[rigid]`` against each
    frame's 2D points (``points[f]`` [478, 3] or None). Returns ``(rvecs [F, 3],
    tvecs [F, 3], rms reprojection error per frame [F] in pixels)``; frames without a
    face get NaN."""
    F = len(points)
    rv, tv, err = np.full((F, 3), np.nan), np.full((F, 3), np.nan), np.full(F, np.nan)
    Xr = np.ascontiguousarray(X[rigid], np.float64)
    guess = None
    for f, p in enumerate(points):
        if p is None:
            continue
        uv = np.ascontiguousarray(p[rigid, :2], np.float64)
        rv[f], tv[f], err[f] = _pnp(Xr, uv, K, guess)
        guess = (rv[f], tv[f])
    return rv, tv, err


def _project(P, f, c):
    """Pixels of camera points ``P [..., 3]`` through a pinhole camera (focal ``f``,
    centre ``c``); points behind 1 mm count as at 1 mm."""
    return P[..., :2] / np.maximum(P[..., 2:3], 1e-3) * f + c


def _projection_jacobian(P, f):
    """d(pixel)/d(camera point) of a pinhole camera: ``P [..., 3]`` -> ``[..., 2, 3]``."""
    z = np.maximum(P[..., 2], 1e-3)
    J = np.zeros(P.shape[:-1] + (2, 3))
    J[..., 0, 0] = f[0] / z
    J[..., 1, 1] = f[1] / z
    J[..., 0, 2] = -f[0] * P[..., 0] / z ** 2
    J[..., 1, 2] = -f[1] * P[..., 1] / z ** 2
    return J


def bundle_adjust(X, points, weights, width, height, focal=None, fov_prior: float = 30.0, rounds: int = 12,
                  features: np.ndarray | None = None, feature_rounds: int = 0):
    """Refine the head-frame shape ``X [478, 3]``, the poses and (unless given) the
    focal length together, minimising the weighted reprojection error of the frames'
    2D points, on up to 100 frames spread over the clip; then every frame's pose with
    that shape and focal. The shape is tied to its registered start by a weak spring,
    which fixes the frame. A face's depth relief determines the focal length only
    weakly, so it also has a weak prior (a ``fov_prior`` degree view, a usual framing
    for talking-head footage); pass ``focal`` when the camera is known. The final
    poses also fit the tracked skin features (``FeatureTracker.observations()``),
    placed on the finished shape by ``attach_features``, then (``feature_rounds`` times)
    re-placed by their own observations (``triangulate_features``) and the poses solved
    again.

    The objective (mean over frames of the weighted squared reprojection error, plus
    the spring and the focal prior) is minimised by blocks, each exactly or by
    Gauss-Newton: the poses (batched Levenberg-Marquardt, ``refine_poses``), each
    point of the shape given the poses (a 3x3 system per point), and the log focal
    length given both (one unknown). Returns ``(X, rvecs [F, 3], tvecs [F, 3], focal,
    rms landmark error per frame [F])``; frames without a face get NaN."""
    from scipy.spatial.transform import Rotation

    have = [f for f, p in enumerate(points) if p is not None]
    use = np.flatnonzero(weights >= 0.02 * weights.max())  # the rest barely count
    rigid = np.flatnonzero(weights >= 0.25)
    prior = float(np.log(max(width, height) / 2 / np.tan(np.radians(fov_prior) / 2)))
    log_f = prior if focal is None else float(np.log(focal))
    sub = [points[have[i]] for i in np.linspace(0, len(have) - 1, min(100, len(have))).round().astype(int)]
    uv = np.stack([p[use, :2] for p in sub])  # [F, N, 2]
    w = weights[use] / weights[use].sum()
    X, X0 = X.copy(), X[use].copy()
    spring = 10.0 / len(use)  # per point: the old objective's 10 x mean squared displacement
    centre = np.array([width / 2, height / 2])
    rv, tv, _ = solve_poses(X, sub, intrinsics(np.exp(log_f), width, height), rigid)
    for _ in range(rounds):
        K = intrinsics(np.exp(log_f), width, height)
        rv, tv, _ = refine_poses(X, sub, weights, K, rv, tv, iterations=3)
        R = Rotation.from_rotvec(rv).as_matrix()
        # the shape, point by point (each sees every frame's pose)
        P = np.einsum("fij,nj->fni", R, X[use]) + tv[:, None]
        fxy = np.full(2, np.exp(log_f))
        r = _project(P, fxy, centre) - uv
        J = _projection_jacobian(P, fxy) @ R[:, None]  # [F, N, 2, 3]
        wf = w[:, None, None] / len(sub)
        A = np.einsum("fnki,fnkj->nij", J, J) * wf + spring * np.eye(3)
        g = np.einsum("fnki,fnk->ni", J, r) * wf[:, :, 0] + spring * (X[use] - X0)
        X[use] = X[use] - np.linalg.solve(A, g[..., None])[..., 0]
        if focal is None:  # the log focal length: residuals are linear in the focal
            P = np.einsum("fij,nj->fni", R, X[use]) + tv[:, None]
            q = _project(P, 1.0, 0.0)
            fq = np.exp(log_f) * q
            r = fq + centre - uv
            h = (w[None, :, None] * fq * fq).sum() / len(sub) + 0.02
            grad = (w[None, :, None] * fq * r).sum() / len(sub) + 0.02 * (log_f - prior)
            log_f -= grad / h
    focal = float(np.exp(log_f))
    K = intrinsics(focal, width, height)
    rv, tv, _ = solve_poses(X, points, K, rigid)
    attached = None if features is None else attach_features(features, points, X)
    rv, tv, err = refine_poses(X, points, weights, K, rv, tv, features=attached)
    for _ in range(feature_rounds if attached is not None else 0):
        attached = triangulate_features(attached, rv, tv, K)
        rv, tv, err = refine_poses(X, points, weights, K, rv, tv, features=attached)
    return X, rv, tv, focal, err


def refine_poses(X, points, weights, K, rvecs, tvecs, iterations: int = 5, features=None):
    """Every frame's pose minimising the weighted reprojection error of all its points
    (shape and camera fixed): batched Levenberg-Marquardt over the frames with the
    analytic Jacobian (rotation updates on the left, R <- exp(d) R), from the PnP start.
    ``features`` (``FaceFeatures``: tracked surface points, see ``attach_features``)
    adds each frame's tracked points, together weighted ``FEATURE_WEIGHT`` times the
    landmarks. Returns ``(rvecs, tvecs, rms landmark error per frame)``, NaN where no
    face."""
    from scipy.spatial.transform import Rotation

    ok = np.flatnonzero(np.isfinite(rvecs).all(1))
    use = np.flatnonzero(weights >= 0.02 * weights.max())  # the rest barely count
    n = len(use)
    # per frame: the shape's points, then the frame's tracked features (zero-weight padding)
    tracked = [] if features is None else [features.frame_points(f) for f in ok]
    m = max((len(Y) for Y, _ in tracked), default=0)
    Xf = np.zeros((len(ok), n + m, 3))
    uv = np.zeros((len(ok), n + m, 2))
    w = np.zeros((len(ok), n + m))
    Xf[:, :n] = X[use]
    uv[:, :n] = np.stack([points[f][use, :2] for f in ok])
    w[:, :n] = weights[use] / weights[use].sum()
    for k, (Y, q) in enumerate(tracked):
        if len(Y):
            Xf[k, n:n + len(Y)], uv[k, n:n + len(Y)] = Y, q
            w[k, n:n + len(Y)] = FEATURE_WEIGHT / len(Y)
    f, c = np.array([K[0, 0], K[1, 1]]), K[:2, 2]
    R, t = Rotation.from_rotvec(rvecs[ok]).as_matrix(), tvecs[ok].copy()

    def residual(R, t):
        P = np.einsum("fij,fnj->fni", R, Xf) + t[:, None]
        return P, _project(P, f, c) - uv

    P, r = residual(R, t)
    cost = (w * (r ** 2).sum(-1)).sum(1)
    lam = np.full(len(ok), 1e-3)
    for _ in range(iterations):
        # d(uv)/dP [F, N, 2, 3], dP/d(delta, t) = [-[P - t]x, I]
        dudP = _projection_jacobian(P, f)
        q = P - t[:, None]
        skew = np.zeros(P.shape[:2] + (3, 3))
        skew[..., 0, 1], skew[..., 0, 2] = q[..., 2], -q[..., 1]
        skew[..., 1, 0], skew[..., 1, 2] = -q[..., 2], q[..., 0]
        skew[..., 2, 0], skew[..., 2, 1] = q[..., 1], -q[..., 0]
        J = np.concatenate([dudP @ skew, dudP], -1) * np.sqrt(w)[..., None, None]  # [F, N, 2, 6]
        J = J.reshape(len(ok), -1, 6)
        rr = (r * np.sqrt(w)[..., None]).reshape(len(ok), -1)
        Jt = J.transpose(0, 2, 1)
        JtJ = Jt @ J
        g = (Jt @ rr[..., None])[..., 0]
        A = JtJ + lam[:, None, None] * np.eye(6) * np.maximum(np.einsum("fii->fi", JtJ), 1e-12)[:, :, None]
        step = -np.linalg.solve(A, g[..., None])[..., 0]
        R_new = Rotation.from_rotvec(step[:, :3]).as_matrix() @ R
        t_new = t + step[:, 3:]
        P_new, r_new = residual(R_new, t_new)
        c_new = (w * (r_new ** 2).sum(-1)).sum(1)
        better = c_new < cost
        R[better], t[better], P[better], r[better], cost[better] = (R_new[better], t_new[better], P_new[better],
                                                                    r_new[better], c_new[better])
        lam = np.where(better, lam * 0.3, lam * 10)
    F = len(points)
    rv, tv, err = np.full((F, 3), np.nan), np.full((F, 3), np.nan), np.full(F, np.nan)
    rv[ok], tv[ok] = Rotation.from_matrix(R).as_rotvec(), t
    err[ok] = np.sqrt((w[:, :n] * (r[:, :n] ** 2).sum(-1)).sum(1) / w[:, :n].sum(1))  # the landmarks' rms
    return rv, tv, err


# Surface features. mediapipe's points slide over the face as the head turns (its chin
# and mouth corners by several pixels against the true surface points), which biases
# the rotations; corners of the skin's own texture, followed by optical flow, stay on
# the surface. They join the landmarks in the final pose solve.
FEATURE_WEIGHT = 4.0  # all of a frame's features together, against its landmarks' total 1
# how firmly a re-placed feature is held to its place on the landmark mesh, per feature
# (px^2 per m^2, whatever the number of views): 1 mm off costs what a 3 px error in one
# view does, so a feature moves only as far as many views, turned apart, agree on. (Per
# view instead, a brief track in a steady clip moved as freely as a long one in a turning
# clip, and the CI test's clip lost 0.5 degrees.)
FEATURE_SPRING = 1e7
FEATURE_REGION = 0.85  # the face oval shrunk about its centre: no corners on the outline


class FeatureTracker:
    """Corners inside the rigid part of the face (the face oval shrunk by
    ``FEATURE_REGION``, without the eyes, brows, lips and the jaw below the mouth
    corners), followed from frame to frame by pyramidal Lucas-Kanade with a
    forward-backward check, and topped up where fewer than 70% survive. ``step(rgb,
    landmarks)`` once per frame in order (``landmarks`` None where no face: every
    track ends there); ``observations()`` gives ``[n, 4]`` rows (frame, track, x, y)."""

    MAX_FEATURES = 120
    WINDOW = 21
    LEVELS = 2  # pyramid levels above the full picture (3 in all)
    FB_TOLERANCE = 0.3  # pixels, there and back

    def __init__(self):
        self._holes = None
        self.frame = -1
        self._prev = None  # the previous frame's region (x0, y0, x1, y1), picture and grey region
        self._ids = np.zeros(0, np.int64)
        self._pts = np.zeros((0, 2), np.float32)
        self._next_id = 0
        self._rows = []

    def _region_mask(self, lm, x0, y0, shape):
        import cv2

        if self._holes is None:
            g = _groups()
            self._holes = (g["eyes"] + g["brows"], g["lips"])
        mask = np.zeros(shape, np.uint8)
        oval = lm[list(FACE_OVAL), :2] - [x0, y0]
        c = oval.mean(0)
        cv2.fillPoly(mask, [np.round(c + (oval - c) * FEATURE_REGION).astype(np.int32)], 255)
        for idx in self._holes:  # the moving parts, with a margin
            hull = cv2.convexHull(lm[idx, :2].astype(np.float32)).reshape(-1, 2) - [x0, y0]
            c = hull.mean(0)
            cv2.fillPoly(mask, [np.round(c + (hull - c) * 1.3).astype(np.int32)], 0)
        mask[max(0, int(lm[[61, 291], 1].max() - y0)):] = 0
        return mask

    def step(self, rgb, landmarks):
        import cv2

        self.frame += 1
        if landmarks is None:
            self._prev, self._ids, self._pts = None, self._ids[:0], self._pts[:0]
            return
        H, W = rgb.shape[:2]
        lo, hi = landmarks[:, :2].min(0), landmarks[:, :2].max(0)
        pad = 0.25 * (hi - lo).max() + self.WINDOW * 2 ** self.LEVELS
        # the region on a 64 px grid, so that it rarely changes and each frame's grey
        # picture serves twice (as this frame's, then as the next one's previous)
        x0, y0 = int(max(0, lo[0] - pad)) // 64 * 64, int(max(0, lo[1] - pad)) // 64 * 64
        x1, y1 = int(min(W, -(-(hi[0] + pad) // 64) * 64)), int(min(H, -(-(hi[1] + pad) // 64) * 64))
        if self._prev is not None:  # both frames over one region: it grows, never shrinks, until a frame without a face
            px0, py0, px1, py1 = self._prev[0]
            x0, y0, x1, y1 = min(x0, px0), min(y0, py0), max(x1, px1), max(y1, py1)
        box = (x0, y0, x1, y1)
        grey = cv2.cvtColor(np.ascontiguousarray(rgb[y0:y1, x0:x1]), cv2.COLOR_RGB2GRAY)
        mask = self._region_mask(landmarks, x0, y0, grey.shape)
        if self._prev is not None and len(self._pts):
            prev_box, prev_rgb, prev = self._prev
            if prev_box != box:  # the region grew: the previous frame over it
                prev = cv2.cvtColor(np.ascontiguousarray(prev_rgb[y0:y1, x0:x1]), cv2.COLOR_RGB2GRAY)
            p0 = self._pts - np.float32([x0, y0])
            lk = dict(winSize=(self.WINDOW, self.WINDOW), maxLevel=self.LEVELS)
            p1, st, _ = cv2.calcOpticalFlowPyrLK(prev, grey, p0, None, **lk)
            back, st2, _ = cv2.calcOpticalFlowPyrLK(grey, prev, p1, None, **lk)
            keep = (st[:, 0] == 1) & (st2[:, 0] == 1) & (np.linalg.norm(back - p0, axis=1) < self.FB_TOLERANCE)
            xi = np.clip(np.round(p1[:, 0]).astype(int), 0, grey.shape[1] - 1)
            yi = np.clip(np.round(p1[:, 1]).astype(int), 0, grey.shape[0] - 1)
            keep &= mask[yi, xi] > 0
            self._ids, self._pts = self._ids[keep], p1[keep] + np.float32([x0, y0])
        if len(self._pts) < 0.7 * self.MAX_FEATURES:
            free = mask.copy()
            for x, y in self._pts - np.float32([x0, y0]):
                cv2.circle(free, (int(x), int(y)), 6, 0, -1)
            new = cv2.goodFeaturesToTrack(grey, self.MAX_FEATURES - len(self._pts), 0.005, 6, mask=free, blockSize=5)
            if new is not None:
                new = new.reshape(-1, 2) + np.float32([x0, y0])
                self._pts = np.concatenate([self._pts, new.astype(np.float32)])
                self._ids = np.concatenate([self._ids, np.arange(self._next_id, self._next_id + len(new))])
                self._next_id += len(new)
        self._prev = (box, rgb, grey)
        if len(self._pts):
            self._rows.append(np.column_stack([np.full(len(self._pts), self.frame), self._ids, self._pts]))

    def observations(self) -> np.ndarray:
        return np.concatenate(self._rows) if self._rows else np.zeros((0, 4))


class FaceFeatures:
    """Tracked features fixed to the head: ``points [tracks, 3]`` in the head frame
    and each frame's observations; ``frame_points(f)`` -> ``(head-frame points [n, 3],
    pixels [n, 2])``."""

    def __init__(self, observations: np.ndarray, points: np.ndarray, usable: np.ndarray):
        obs = observations[usable[observations[:, 1].astype(np.int64)]] if len(observations) else observations
        self.points = points
        order = np.argsort(obs[:, 0], kind="stable")
        self._obs = obs[order]
        self._starts = np.searchsorted(self._obs[:, 0], np.arange(int(obs[:, 0].max(initial=-1)) + 2))

    def placed_at(self, points: np.ndarray) -> "FaceFeatures":
        """The same observations with the features at head-frame ``points [tracks, 3]``."""
        out = FaceFeatures.__new__(FaceFeatures)
        out.points, out._obs, out._starts = points, self._obs, self._starts
        return out

    def frame_points(self, f: int):
        if f + 1 >= len(self._starts):
            return np.zeros((0, 3)), np.zeros((0, 2))
        o = self._obs[self._starts[f]:self._starts[f + 1]]
        return self.points[o[:, 1].astype(np.int64)], o[:, 2:4]


def _barycentric(tri: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Barycentric coordinates ``[..., 3]`` of points ``p [..., 2]`` in triangles
    ``tri [..., 3, 2]`` (broadcast)."""
    e1, e2, d = tri[..., 1, :] - tri[..., 0, :], tri[..., 2, :] - tri[..., 0, :], p - tri[..., 0, :]
    det = e1[..., 0] * e2[..., 1] - e1[..., 1] * e2[..., 0]
    det = np.where(np.abs(det) > 1e-9, det, 1e-9)
    b1 = (d[..., 0] * e2[..., 1] - d[..., 1] * e2[..., 0]) / det
    b2 = (e1[..., 0] * d[..., 1] - e1[..., 1] * d[..., 0]) / det
    return np.stack([1 - b1 - b2, b1, b2], -1)


def attach_features(observations: np.ndarray, points: list, X: np.ndarray, min_length: int = 5) -> FaceFeatures:
    """Each feature track's place on the head: in every frame it is seen, its
    barycentric coordinates in the landmark triangle it lies in carry it onto the
    head-frame shape ``X [478, 3]``; the track's point is the mean over its frames (the
    landmarks' sliding averages out). One triangulation serves the clip (Delaunay of
    the mean landmarks): a feature keeps its triangle from frame to frame and is only
    looked up again once it has left it. Tracks seen in fewer than ``min_length``
    frames, or off the landmarks, are left out."""
    from scipy.spatial import Delaunay

    if not len(observations):
        return FaceFeatures(observations, np.zeros((0, 3)), np.zeros(0, bool))
    frame, track = observations[:, 0].astype(np.int64), observations[:, 1].astype(np.int64)
    q = observations[:, 2:4]
    seen = np.unique(frame)
    lm = np.zeros((int(frame.max()) + 1, len(X), 2))
    lm[seen] = np.stack([points[f][:, :2] for f in seen])
    triangles = Delaunay(lm[seen].mean(0)).simplices
    tri = np.full(len(observations), -1)
    bary = np.zeros((len(observations), 3))
    # rows are in frame order: each row starts from its track's triangle in the frame before
    last = np.full(int(track.max()) + 1, -1)
    bounds = np.searchsorted(frame, np.r_[seen, seen[-1] + 1])
    for f, r0, r1 in zip(seen, bounds[:-1], bounds[1:]):
        rows = np.arange(r0, r1)
        t = last[track[rows]]
        corners = lm[f][triangles]  # [T, 3, 2]
        b = _barycentric(corners[np.maximum(t, 0)], q[rows])
        lost = (t < 0) | (b.min(1) < -0.05)
        if lost.any():  # look those up among all triangles
            b_all = _barycentric(corners[None], q[rows[lost], None])  # [n, T, 3]
            worst = b_all.min(2)
            best = worst.argmax(1)
            t[lost] = np.where(worst.max(1) >= -1e-3, best, -1)
            b[lost] = b_all[np.arange(lost.sum()), best]
        tri[rows], bary[rows] = t, b
        last[track[rows]] = t
    inside = tri >= 0
    total, count = np.zeros((len(last), 3)), np.zeros(len(last))
    np.add.at(total, track[inside], np.einsum("nk,nkc->nc", bary[inside], X[triangles[tri[inside]]]))
    np.add.at(count, track[inside], 1)
    return FaceFeatures(observations, total / np.maximum(count, 1)[:, None], count >= min_length)


def triangulate_features(features: FaceFeatures, rvecs: np.ndarray, tvecs: np.ndarray, K: np.ndarray,
                         iterations: int = 3) -> FaceFeatures:
    """The features with each one's head-frame point moved to where its observations in
    the frames with poses ``rvecs, tvecs`` [F, 3] put it (Gauss-Newton on its
    reprojection error, a 3x3 system per feature), held to its place on the landmark
    mesh by a spring per feature (``FEATURE_SPRING``) where its views cannot fix it."""
    from scipy.spatial.transform import Rotation

    obs = features._obs
    frame, track, uv = obs[:, 0].astype(np.int64), obs[:, 1].astype(np.int64), obs[:, 2:4]
    posed = np.isfinite(rvecs[frame]).all(1) & np.isfinite(tvecs[frame]).all(1)
    frame, track, uv = frame[posed], track[posed], uv[posed]
    R = Rotation.from_rotvec(np.nan_to_num(rvecs)).as_matrix()
    f, c = np.array([K[0, 0], K[1, 1]]), K[:2, 2]
    Y0 = features.points
    Y = Y0.copy()
    for _ in range(iterations):
        P = np.einsum("nij,nj->ni", R[frame], Y[track]) + tvecs[frame]
        r = _project(P[:, None], f, c)[:, 0] - uv
        J = _projection_jacobian(P[:, None], f)[:, 0] @ R[frame]  # [n, 2, 3]
        A = np.zeros((len(Y), 3, 3))
        g = np.zeros((len(Y), 3))
        np.add.at(A, track, np.einsum("nki,nkj->nij", J, J))
        np.add.at(g, track, np.einsum("nki,nk->ni", J, r))
        A += FEATURE_SPRING * np.eye(3)
        g += FEATURE_SPRING * (Y - Y0)
        Y = Y - np.linalg.solve(A, g[..., None])[..., 0]
    return features.placed_at(Y)


def fill_and_smooth(rvecs: np.ndarray, tvecs: np.ndarray, sigma: float = 1.0):
    """Poses for every frame: frames without a face interpolated from their neighbours
    in time (held at the ends), then a zero-phase Gaussian filter of ``sigma`` frames
    on the rotation (relative to the clip's median rotation) and translation. Returns
    ``w2c [F, 4, 4]``."""
    from scipy.ndimage import gaussian_filter1d
    from scipy.spatial.transform import Rotation

    ok = np.isfinite(rvecs).all(1)
    idx = np.arange(len(rvecs))
    R = Rotation.from_rotvec(rvecs[ok])
    ref = R.mean()
    rel = (ref.inv() * R).as_rotvec()
    fill = lambda v: np.stack([np.interp(idx, idx[ok], v[:, k]) for k in range(3)], 1)  # noqa: E731
    rel, t = fill(rel), fill(tvecs[ok])
    if sigma > 0 and len(idx) > 1:
        rel = gaussian_filter1d(rel, sigma, axis=0, mode="nearest")
        t = gaussian_filter1d(t, sigma, axis=0, mode="nearest")
    w2c = np.tile(np.eye(4), (len(idx), 1, 1))
    w2c[:, :3, :3] = (ref * Rotation.from_rotvec(rel)).as_matrix()
    w2c[:, :3, 3] = t
    return w2c
