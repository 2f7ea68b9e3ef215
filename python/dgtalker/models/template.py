"""The head template of the Gaussian prior: a UV chart over a mean head surface.

Every texel of an R x R UV map that lies on the template holds one surface point of
the corpus' mean head (canonical head frame, metres), a local frame and its footprint.
The decode kernel (``dgtalker.ops.decode``) places G Gaussians per valid texel around
that point from the generator's raw maps.

The chart (see docs/prior.md for the picture):

- columns ``u`` run around the body: azimuth ``theta = atan2(x, z)`` from -pi (back,
  subject's right side first) through 0 (the face) to +pi, warped so the front gets
  about 3x the columns per radian of the back;
- rows ``v`` run upwards in three bands, bottom to top: shoulders (the torso's upper
  cap), neck, head. Row index increases with height, so at the face the texel axes
  are +x (u) and +y (v) and their cross product is the outward normal +z;
- the head band is a lat-long map of directions from the skull centre (elevation
  -1.25 rad under the jaw to just below the crown), rows denser over the face;
- texels of one band that lie inside another part (the underside of the head inside
  the neck, the neck inside the head or the torso, the torso under the neck) are not
  valid, except within a 2 mm margin so the bands overlap rather than leave gaps.

The surface is the mean over ``FIT_IDENTITIES`` synthetic identities of the corpus'
analytic skull + face shape with its hair volume (``dgtalker.data.synthetic.head``),
evaluated at the same direction for every identity; neck and shoulders are the
corpus' fixed neck cylinder and torso ellipsoid at rest pose. Ears, eyeballs, teeth
and the mouth interior are not part of the surface: Gaussians reach them through
their learned offsets (bounded by ``offset_scale`` texel sizes).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np

TEMPLATE_VERSION = 1
DEFAULT_RESOLUTION = 128
FIT_IDENTITIES = 64  # first identities 0..63 of draw_identity; enough for a stable mean (<0.2 mm change)
ASSET_DIR = Path(__file__).parent / "assets"

# Band heights as fractions of R (bottom to top); the head gets the rest.
TORSO_ROWS = 0.18
NECK_ROWS = 0.12
HEAD_PHI = (-1.25, 0.5 * math.pi - 0.02)  # elevation range of the head band (radians)
NECK_Y = (-0.205, -0.045)  # height range of the neck band (metres)
TORSO_LAT = (math.radians(8.0), math.radians(80.0))  # y from about -0.26 m up to where the neck covers it
OVERLAP = 0.002  # texels this far inside another part stay valid (no gaps at the seams)

# The corpus' neck and torso (dgtalker.data.synthetic.head.HeadModel._build_parts,
# head at rest). tests/test_template.py checks these against the corpus meshes.
NECK_CENTRE_Z = -0.022
NECK_RZ = 0.052
TORSO_CENTRE = (0.0, -0.275, -0.035)
TORSO_RADII = (0.23, 0.11, 0.115)

REGION_TORSO, REGION_NECK, REGION_HEAD = 0, 1, 2


@dataclass(frozen=True)
class HeadTemplate:
    """Per-valid-texel arrays of the chart (numpy, float32 unless stated).

    texel_index [M] int64   flat index row * R + col into the R x R UV map
    position    [M, 3]      surface point, head frame, metres
    frame       [M, 4]      unit quaternion (w, x, y, z): x = tangent along u, y along v, z outward normal
    log_size    [M]         log of the texel footprint (square root of its area), metres
    log_axis    [M, 2]      log of the texel's extent along u and along v, metres (its anisotropy)
    region      [M] int8    REGION_TORSO, REGION_NECK or REGION_HEAD
    resolution  R
    """

    texel_index: np.ndarray
    position: np.ndarray
    frame: np.ndarray
    log_size: np.ndarray
    log_axis: np.ndarray
    region: np.ndarray
    resolution: int

    @property
    def num_texels(self) -> int:
        return int(self.texel_index.shape[0])

    def valid_mask(self) -> np.ndarray:
        """[R, R] bool: which texels of the UV map carry Gaussians (row 0 = bottom band)."""
        m = np.zeros(self.resolution * self.resolution, bool)
        m[self.texel_index] = True
        return m.reshape(self.resolution, self.resolution)

    def to_decode_template(self, gaussians_per_texel: int, device=None, dtype=None):
        """The tensors as a ``dgtalker.ops.decode.DecodeTemplate``."""
        import torch

        from ..ops.decode import DecodeTemplate

        if not isinstance(gaussians_per_texel, int) or gaussians_per_texel < 1:
            raise ValueError(f"gaussians_per_texel must be a positive int, got {gaussians_per_texel!r}")
        dtype = dtype or torch.float32
        f = lambda a: torch.as_tensor(a, dtype=dtype, device=device)  # noqa: E731
        return DecodeTemplate(
            texel_index=torch.as_tensor(self.texel_index, dtype=torch.int64, device=device),
            position=f(self.position), frame=f(self.frame), log_size=f(self.log_size),
            resolution=int(self.resolution), gaussians_per_texel=int(gaussians_per_texel))


# ----------------------------------------------------------------------------------
# the chart's parameter warps


def _warp(lo: float, hi: float, centre: float, width: float, boost: float):
    """Continuous map t in [0, 1] -> [lo, hi] whose density (samples per unit) is
    ``1 + boost * exp(-((x - centre) / width)^2)``; returned as a function."""
    x = np.linspace(lo, hi, 8193)
    rho = 1.0 + boost * np.exp(-((x - centre) / width) ** 2)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (rho[1:] + rho[:-1]) * np.diff(x))])
    cdf /= cdf[-1]
    return lambda t: np.interp(t, cdf, x)


_AZIMUTH_HEAD = _warp(-math.pi, math.pi, 0.0, 0.9, 4.0)
_AZIMUTH_BODY = _warp(-math.pi, math.pi, 0.0, 1.2, 1.5)
_ELEVATION = _warp(*HEAD_PHI, -0.15, 0.55, 3.0)  # face band: chin (-0.9) to brows (+0.4)


def _band_rows(R: int):
    """(first row, number of rows) of the torso, neck and head bands."""
    nt = max(2, round(TORSO_ROWS * R))
    nn = max(2, round(NECK_ROWS * R))
    return (0, nt), (nt, nn), (nt + nn, R - nt - nn)


# ----------------------------------------------------------------------------------
# the mean head


class _MeanHead:
    """The corpus' skull + face + hair surface averaged over identities, as a
    function of the direction (theta, phi) from the skull centre."""

    def __init__(self, n_identities: int = FIT_IDENTITIES):
        from ..data.synthetic.head import HeadModel, draw_identity
        from ..data.synthetic.noise import smoothstep

        self._smoothstep = smoothstep
        # HeadModel's shape functions read only ``self.id``; building full models
        # (meshes, textures) for 64 identities would cost ~25 s for nothing.
        self._shapes = [SimpleNamespace(id=draw_identity(s)) for s in range(n_identities)]
        self._base = HeadModel._base
        self._hair = HeadModel._hair_weight

    def __call__(self, theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
        acc = np.zeros(np.broadcast(theta, phi).shape + (3,))
        for s in self._shapes:
            base = self._base(s, theta, phi)
            hairw = self._hair(s, theta, phi, base)
            # the same hair displacement as HeadModel._build_skin
            d = base / np.linalg.norm(base, axis=-1, keepdims=True)
            lift = hairw * s.id.hair_volume * (0.6 + 0.4 * self._smoothstep(0.0, 0.1, base[..., 1]))
            acc += base + d * lift[..., None]
        return acc / len(self._shapes)

    def inside(self, p: np.ndarray, margin: float) -> np.ndarray:
        """Points more than ``margin`` inside the surface (star-shaped about the origin)."""
        r = np.linalg.norm(p, axis=-1)
        theta = np.arctan2(p[..., 0], p[..., 2])
        phi = np.arcsin(np.clip(p[..., 1] / np.maximum(r, 1e-12), -1, 1))
        return r < np.linalg.norm(self(theta, phi), axis=-1) - margin


def _neck_rx(y):
    from ..data.synthetic.noise import smoothstep

    return 0.056 + 0.012 * smoothstep(-0.14, -0.22, y)


def _inside_neck(p, margin):
    y = p[..., 1]
    rx = _neck_rx(y)
    e = np.sqrt((p[..., 0] / (rx - margin)) ** 2 + ((p[..., 2] - NECK_CENTRE_Z) / (NECK_RZ - margin)) ** 2)
    return (e < 1.0) & (y < -0.035 - margin) & (y > -0.25)


def _inside_torso(p, margin):
    c, r = np.asarray(TORSO_CENTRE), np.asarray(TORSO_RADII) - margin
    return (((p - c) / r) ** 2).sum(-1) < 1.0


def _head_surface(mean, u, v):
    return mean(_AZIMUTH_HEAD(u), _ELEVATION(v))


def _neck_surface(u, v):
    a = _AZIMUTH_BODY(u)
    y = NECK_Y[0] + (NECK_Y[1] - NECK_Y[0]) * v
    return np.stack([_neck_rx(y) * np.sin(a), y, NECK_CENTRE_Z + NECK_RZ * np.cos(a)], -1)


def _torso_surface(u, v):
    a = _AZIMUTH_BODY(u)
    b = TORSO_LAT[0] + (TORSO_LAT[1] - TORSO_LAT[0]) * v
    c, r = TORSO_CENTRE, TORSO_RADII
    return np.stack([c[0] + r[0] * np.cos(b) * np.sin(a), c[1] + r[1] * np.sin(b),
                     c[2] + r[2] * np.cos(b) * np.cos(a)], -1)


def _quat_from_matrix(Rm: np.ndarray) -> np.ndarray:
    """[..., 3, 3] rotation matrices -> [..., 4] unit quaternions (w, x, y, z), w >= 0."""
    m = Rm
    t = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    q = np.empty(m.shape[:-2] + (4,))
    # Shepperd's method: pick the largest diagonal term for numerical stability.
    cases = np.stack([t, m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]], -1).argmax(-1)
    for k in range(4):
        s = cases == k
        a = m[s]
        if k == 0:
            r = np.sqrt(1.0 + a[:, 0, 0] + a[:, 1, 1] + a[:, 2, 2]) * 2
            q[s] = np.stack([0.25 * r, (a[:, 2, 1] - a[:, 1, 2]) / r, (a[:, 0, 2] - a[:, 2, 0]) / r, (a[:, 1, 0] - a[:, 0, 1]) / r], -1)
        elif k == 1:
            r = np.sqrt(1.0 + a[:, 0, 0] - a[:, 1, 1] - a[:, 2, 2]) * 2
            q[s] = np.stack([(a[:, 2, 1] - a[:, 1, 2]) / r, 0.25 * r, (a[:, 0, 1] + a[:, 1, 0]) / r, (a[:, 0, 2] + a[:, 2, 0]) / r], -1)
        elif k == 2:
            r = np.sqrt(1.0 + a[:, 1, 1] - a[:, 0, 0] - a[:, 2, 2]) * 2
            q[s] = np.stack([(a[:, 0, 2] - a[:, 2, 0]) / r, (a[:, 0, 1] + a[:, 1, 0]) / r, 0.25 * r, (a[:, 1, 2] + a[:, 2, 1]) / r], -1)
        else:
            r = np.sqrt(1.0 + a[:, 2, 2] - a[:, 0, 0] - a[:, 1, 1]) * 2
            q[s] = np.stack([(a[:, 1, 0] - a[:, 0, 1]) / r, (a[:, 0, 2] + a[:, 2, 0]) / r, (a[:, 1, 2] + a[:, 2, 1]) / r, 0.25 * r], -1)
    q *= np.where(q[..., :1] < 0, -1.0, 1.0)
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


def build_template(resolution: int = DEFAULT_RESOLUTION, n_identities: int = FIT_IDENTITIES) -> HeadTemplate:
    """Fit the chart at ``resolution`` (R >= 16) to the corpus' mean head. Deterministic:
    the same arguments and corpus code give the same arrays."""
    if not isinstance(resolution, (int, np.integer)) or resolution < 16:
        raise ValueError(f"resolution must be an int >= 16, got {resolution!r}")
    R = int(resolution)
    mean = _MeanHead(n_identities)
    (t0, nt), (n0, nn), (h0, nh) = _band_rows(R)
    surfaces = {
        REGION_TORSO: (t0, nt, _torso_surface),
        REGION_NECK: (n0, nn, _neck_surface),
        REGION_HEAD: (h0, nh, lambda u, v: _head_surface(mean, u, v)),
    }
    du = 1.0 / R
    pos_all, frame_all, size_all, axis_all, idx_all, reg_all = [], [], [], [], [], []
    for region, (row0, nrows, surf) in surfaces.items():
        dv = 1.0 / nrows
        u = (np.arange(R) + 0.5) * du
        v = (np.arange(nrows) + 0.5) * dv
        U, V = np.meshgrid(u, v, indexing="xy")  # [nrows, R]
        P = surf(U, V)
        # derivatives in metres per texel, by central differences over one texel
        Pu = surf(U + 0.5 * du, V) - surf(U - 0.5 * du, V)
        Pv = surf(U, V + 0.5 * dv) - surf(U, V - 0.5 * dv)
        n = np.cross(Pu, Pv)
        area = np.linalg.norm(n, axis=-1)
        ex = Pu / np.linalg.norm(Pu, axis=-1, keepdims=True)
        ez = n / area[..., None]
        ey = np.cross(ez, ex)
        frame = _quat_from_matrix(np.stack([ex, ey, ez], -1))  # columns = local axes in the head frame
        if region == REGION_HEAD:
            hidden = _inside_neck(P, OVERLAP) | _inside_torso(P, OVERLAP)
        elif region == REGION_NECK:
            hidden = mean.inside(P, OVERLAP) | _inside_torso(P, OVERLAP)
        else:
            hidden = _inside_neck(P, OVERLAP) | mean.inside(P, OVERLAP)
        rows = row0 + np.arange(nrows)
        flat = (rows[:, None] * R + np.arange(R)[None, :])
        keep = ~hidden
        pos_all.append(P[keep])
        frame_all.append(frame[keep])
        size_all.append(0.5 * np.log(area[keep]))
        axis_all.append(np.log(np.stack([np.linalg.norm(Pu, axis=-1), np.linalg.norm(Pv, axis=-1)], -1)[keep]))
        idx_all.append(flat[keep])
        reg_all.append(np.full(int(keep.sum()), region, np.int8))
    order = np.argsort(np.concatenate(idx_all), kind="stable")
    return HeadTemplate(
        texel_index=np.concatenate(idx_all)[order].astype(np.int64),
        position=np.concatenate(pos_all)[order].astype(np.float32),
        frame=np.concatenate(frame_all)[order].astype(np.float32),
        log_size=np.concatenate(size_all)[order].astype(np.float32),
        log_axis=np.concatenate(axis_all)[order].astype(np.float32),
        region=np.concatenate(reg_all)[order],
        resolution=R,
    )


def asset_path(resolution: int) -> Path:
    return ASSET_DIR / f"head_template_r{int(resolution)}.npz"


def save_template(template: HeadTemplate, path: Path) -> None:
    from ..io import atomic_save_npz

    atomic_save_npz(Path(path), version=np.int64(TEMPLATE_VERSION), resolution=np.int64(template.resolution),
                    texel_index=template.texel_index, position=template.position, frame=template.frame,
                    log_size=template.log_size, log_axis=template.log_axis, region=template.region)


def read_template(path: Path) -> HeadTemplate:
    path = Path(path)
    try:
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise FileNotFoundError(f"head template file not found: {path}") from None
    except Exception as exc:  # zip/pickle errors of a damaged file
        raise ValueError(f"head template {path} is not a readable npz file ({exc})") from None
    need = ("version", "resolution", "texel_index", "position", "frame", "log_size", "log_axis", "region")
    missing = [k for k in need if k not in arrays]
    if missing:
        raise ValueError(f"head template {path} lacks arrays {missing}")
    if int(arrays["version"]) != TEMPLATE_VERSION:
        raise ValueError(f"head template {path} has version {int(arrays['version'])}, expected {TEMPLATE_VERSION}")
    return HeadTemplate(arrays["texel_index"].astype(np.int64), arrays["position"], arrays["frame"],
                        arrays["log_size"], arrays["log_axis"], arrays["region"], int(arrays["resolution"]))


def load_template(resolution: int = DEFAULT_RESOLUTION) -> HeadTemplate:
    """The template at ``resolution``: the committed asset when there is one (the
    default resolution), otherwise built on the fly (about a second)."""
    p = asset_path(resolution)
    if p.exists():
        return read_template(p)
    return build_template(resolution)


def rebuild_asset(resolution: int = DEFAULT_RESOLUTION) -> Path:
    """Regenerate the committed asset (after a change to the chart or the corpus shape)."""
    p = asset_path(resolution)
    p.parent.mkdir(parents=True, exist_ok=True)
    save_template(build_template(resolution), p)
    return p
