"""A procedural, animatable head: identity drawn from a seed, meshes, textures.

Canonical head frame (shared with the Gaussian prior, see docs/data-format.md):
metres; origin at the centre of the skull (between the ears, about 2 cm below eye
level); +x towards the subject's left, +y up, +z out of the face (the face looks
down +z). Right-handed. A frontal OpenCV camera therefore sits on +z and sees the
subject's left on the right of the image.

The skin is one lat-long grid around the head (denser over the face) with a slit
for the mouth: the row at the lip line is split into an upper and a lower copy, each
followed by two rows that roll inwards to form the lip thickness. Everything below
the slit follows the jaw. Eyes (with iris and pupil), eyelids, teeth, tongue, mouth
cavity, ears, neck and shoulders are separate meshes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .noise import fbm, smoothstep, speckles, value_noise
from .raster import Material, Mesh

# Expression / mouth parameters of one frame, all in [0, 1] except gaze (radians).
STATE_KEYS = ("jaw_open", "lip_round", "lip_spread", "lip_close",
              "brow_raise", "brow_furrow", "blink_left", "blink_right",
              "gaze_yaw", "gaze_pitch")
MOUTH_KEYS = STATE_KEYS[:4]
UPPER_KEYS = STATE_KEYS[4:]

LANDMARK_NAMES = (
    "mouth_corner_left", "mouth_corner_right", "upper_lip_mid", "lower_lip_mid",
    "upper_lid_left", "lower_lid_left", "upper_lid_right", "lower_lid_right",
    "nose_tip", "chin", "brow_inner_left", "brow_inner_right",
)

JAW_MAX_RAD = 0.30  # about 17 degrees: a wide-open mouth of about 3 cm


def _lin(c):
    """display-space rgb -> linear albedo"""
    return np.asarray(c, dtype=np.float64) ** 2.2


@dataclass
class Identity:
    """Shape and appearance parameters of one synthetic person."""

    seed: int
    ax: float  # half width of the skull (m)
    ay_top: float
    ay_bot: float
    az: float
    squareness: float  # superellipse exponent of the horizontal section
    jaw_taper: float
    nose_len: float
    nose_width: float
    nose_y: float
    brow_ridge: float
    cheek: float
    chin: float
    lip_full: float
    mouth_half: float  # half mouth width (m)
    eye_dx: float
    eye_y: float
    eye_r: float
    eye_open: float
    ear_scale: float
    skin: np.ndarray  # linear rgb
    lip: np.ndarray
    hair: np.ndarray
    iris: np.ndarray
    shirt: np.ndarray
    background: np.ndarray  # display-space rgb in [0, 1]
    freckles: float
    pores: float
    hairline: float
    hair_volume: float
    cap: bool
    cap_colors: np.ndarray
    brow_thick: float
    voice: dict

    @property
    def mouth_y(self) -> float:
        return -0.052


def draw_identity(seed: int) -> Identity:
    """Identity number ``seed`` (any non-negative int); the same seed always gives the
    same person."""
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"identity seed must be a non-negative integer, got {seed!r}")
    rng = np.random.default_rng([int(seed), 0x5EED])
    u = rng.uniform
    tone = u(0.0, 1.0)
    skin_light = np.array([0.94, 0.76, 0.66])
    skin_dark = np.array([0.42, 0.27, 0.18])
    skin = skin_light * (1 - tone) + skin_dark * tone
    skin = skin * np.array([u(0.96, 1.04), u(0.96, 1.03), u(0.95, 1.05)])
    hair_palette = [(0.08, 0.06, 0.05), (0.25, 0.15, 0.08), (0.45, 0.30, 0.16),
                    (0.75, 0.58, 0.32), (0.55, 0.22, 0.10), (0.55, 0.55, 0.55),
                    (0.15, 0.10, 0.08)]
    hair = np.array(hair_palette[rng.integers(len(hair_palette))]) * u(0.85, 1.1)
    iris_palette = [(0.30, 0.18, 0.08), (0.20, 0.35, 0.55), (0.30, 0.45, 0.30),
                    (0.45, 0.30, 0.12), (0.35, 0.40, 0.45), (0.15, 0.10, 0.06)]
    iris = np.array(iris_palette[rng.integers(len(iris_palette))])
    shirt = rng.uniform(0.1, 0.8, 3)
    bg_h = u(0, 1)
    bg = 0.55 + 0.25 * np.array([np.cos(2 * np.pi * bg_h), np.cos(2 * np.pi * (bg_h + 1 / 3)),
                                 np.cos(2 * np.pi * (bg_h + 2 / 3))]) * u(0.3, 0.8)
    cap = bool(rng.uniform() < 0.25)
    voices = ["en-us", "en", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-gb-x-gbclan"]
    female = bool(rng.uniform() < 0.5)
    voice = {
        "voice": voices[rng.integers(len(voices))] + ("+f3" if female else "+m3"),
        "speed": int(rng.integers(150, 185)),
        "pitch": int(rng.integers(55, 80) if female else rng.integers(30, 55)),
    }
    return Identity(
        seed=int(seed), ax=u(0.071, 0.079), ay_top=u(0.118, 0.128), ay_bot=u(0.100, 0.108),
        az=u(0.092, 0.100), squareness=u(2.3, 2.9), jaw_taper=u(0.06, 0.2),
        nose_len=u(0.017, 0.026), nose_width=u(0.85, 1.25), nose_y=u(-0.004, 0.004),
        brow_ridge=u(0.003, 0.007), cheek=u(0.003, 0.008), chin=u(0.005, 0.011),
        lip_full=u(0.75, 1.3), mouth_half=u(0.021, 0.026), eye_dx=u(0.029, 0.034),
        eye_y=u(0.014, 0.022), eye_r=u(0.0115, 0.0125), eye_open=u(0.85, 1.1),
        ear_scale=u(0.9, 1.12), skin=_lin(skin), lip=_lin(skin * np.array([1.0, 0.62, 0.62]) * u(0.8, 1.0)),
        hair=_lin(hair), iris=_lin(iris), shirt=_lin(shirt), background=np.clip(bg, 0, 1),
        freckles=u(0.0, 1.0) ** 2, pores=u(0.6, 1.2), hairline=u(0.062, 0.080),
        hair_volume=u(0.004, 0.014), cap=cap, cap_colors=_lin(rng.uniform(0.1, 0.9, (2, 3))),
        brow_thick=u(0.8, 1.3), voice=voice,
    )


# ----------------------------------------------------------------------------------
# geometry helpers


def _density_grid(n, lo, hi, centre, width, boost, include=None):
    """``n`` monotone samples of [lo, hi] denser by ``1 + boost`` around ``centre``."""
    x = np.linspace(lo, hi, 4096)
    rho = 1.0 + boost * np.exp(-((x - centre) / width) ** 2)
    cdf = np.concatenate([[0], np.cumsum(0.5 * (rho[1:] + rho[:-1]) * np.diff(x))])
    cdf /= cdf[-1]
    g = np.interp(np.linspace(0, 1, n), cdf, x)
    if include is not None:
        for v in include:
            g[np.argmin(np.abs(g - v))] = v
    return g


def vertex_normals(V: np.ndarray, F: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals, [V, 3] from positions [V, 3] and faces [F, 3]."""
    a, b, c = V[F[:, 0]], V[F[:, 1]], V[F[:, 2]]
    fn = np.cross(b - a, c - a)
    n = np.zeros_like(V)
    idx = F.reshape(-1)
    for k in range(3):
        w = np.repeat(fn[:, k], 3)
        n[:, k] = np.bincount(idx, weights=w, minlength=len(V))
    ln = np.linalg.norm(n, axis=1, keepdims=True)
    return n / np.maximum(ln, 1e-12)


def _grid_faces(rows, cols, keep=None):
    """Triangles of a rows x cols vertex grid; ``keep`` [rows-1, cols-1] masks quads."""
    r, c = np.meshgrid(np.arange(rows - 1), np.arange(cols - 1), indexing="ij")
    v00 = r * cols + c
    v01, v10, v11 = v00 + 1, v00 + cols, v00 + cols + 1
    if keep is not None:
        v00, v01, v10, v11 = v00[keep], v01[keep], v10[keep], v11[keep]
    t1 = np.stack([v00.ravel(), v10.ravel(), v11.ravel()], 1)
    t2 = np.stack([v00.ravel(), v11.ravel(), v01.ravel()], 1)
    return np.concatenate([t1, t2]).astype(np.int32)


def _ellipsoid(center, radii, n_lat=24, n_lon=32):
    """Closed lat-long ellipsoid: vertices [V, 3], faces, unit-sphere directions."""
    lat = np.linspace(-np.pi / 2, np.pi / 2, n_lat)
    lon = np.linspace(-np.pi, np.pi, n_lon + 1)
    la, lo = np.meshgrid(lat, lon, indexing="ij")
    d = np.stack([np.cos(la) * np.sin(lo), np.sin(la), np.cos(la) * np.cos(lo)], -1).reshape(-1, 3)
    V = np.asarray(center) + d * np.asarray(radii)
    F = _grid_faces(n_lat, n_lon + 1)
    return V, F, d


def _rot_x(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _rot_y(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _rot_z(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def euler_to_matrix(yaw, pitch, roll) -> np.ndarray:
    """Head rotation (head frame -> world): yaw about +y (positive turns the face to
    the subject's left, i.e. towards +x), pitch about +x (positive nods the face down),
    roll about +z. Applied as R = Ry(yaw) @ Rx(pitch) @ Rz(roll)."""
    return _rot_y(yaw) @ _rot_x(pitch) @ _rot_z(roll)


class HeadModel:
    """Rest geometry, textures and per-frame deformation of one identity."""

    N_THETA = 300  # columns around the head (+1 duplicated for the texture seam)
    N_PHI = 170  # rows from chin to crown (before the mouth split)

    def __init__(self, identity: Identity, texture_size: int = 2048):
        self.id = identity
        self.tex_w = int(texture_size)
        self.tex_h = int(texture_size) // 2
        self._build_skin()
        self._build_parts()
        self.textures = self._paint_textures()
        self.meshes = self._meshes()

    # -- analytic surface ----------------------------------------------------------
    def _base(self, theta, phi):
        """Smooth skull + face shape (no hair), [..., 3]."""
        I = self.id
        d = np.stack([np.cos(phi) * np.sin(theta), np.sin(phi), np.cos(phi) * np.cos(theta)], -1)
        ay = np.where(d[..., 1] > 0, I.ay_top, I.ay_bot)
        n = I.squareness
        horiz = (np.abs(d[..., 0] / I.ax) ** n + np.abs(d[..., 2] / I.az) ** n) ** (2.0 / n)
        r0 = 1.0 / np.sqrt(horiz + (d[..., 1] / ay) ** 2)
        p = d * r0[..., None]
        x, y, z = p[..., 0], p[..., 1], p[..., 2]
        # lower face and jaw narrower than the cranium
        x = x * (1.0 - I.jaw_taper * smoothstep(-0.02, -0.11, y) ** 1.2)
        front = smoothstep(0.0, 0.06, z)
        g = lambda cx, cy, sx, sy: np.exp(-(((x - cx) / sx) ** 2 + ((y - cy) / sy) ** 2))  # noqa: E731
        ey, edx = I.eye_y, I.eye_dx
        dz = np.zeros_like(z)
        # nose: a ridge that widens and rises towards the tip, then the columella
        ny = y - I.nose_y
        tip_y = -0.024
        t = np.clip((0.028 - ny) / (0.028 - tip_y), 0.0, None)
        prof = np.where(ny > tip_y, 0.005 + (I.nose_len - 0.005) * t ** 1.6,
                        I.nose_len * np.exp(-((ny - tip_y) / 0.0065) ** 2))
        prof = prof * smoothstep(0.036, 0.024, ny)
        width = (0.006 + 0.006 * np.clip(t, 0, 1)) * I.nose_width
        dz += prof * np.exp(-(x / width) ** 2)
        dz += 0.007 * (g(0.016 * I.nose_width, -0.027 + I.nose_y, 0.0065, 0.006)
                       + g(-0.016 * I.nose_width, -0.027 + I.nose_y, 0.0065, 0.006))
        # brow ridge, eye sockets, cheekbones
        dz += I.brow_ridge * np.exp(-((y - ey - 0.022) / 0.009) ** 2) * np.exp(-(x / 0.05) ** 4)
        dz -= 0.011 * (g(edx, ey, 0.017, 0.011) + g(-edx, ey, 0.017, 0.011))
        dz += I.cheek * (g(0.045, -0.012, 0.02, 0.02) + g(-0.045, -0.012, 0.02, 0.02))
        # muzzle, lips, chin
        my = I.mouth_y
        dz += 0.007 * g(0.0, my, 0.032, 0.022)
        dz += 0.0032 * I.lip_full * np.exp(-(x / (I.mouth_half * 0.95)) ** 4 - ((y - my - 0.0055) / 0.0055) ** 2)
        dz += 0.0040 * I.lip_full * np.exp(-(x / (I.mouth_half * 0.85)) ** 4 - ((y - my + 0.0065) / 0.006) ** 2)
        dz -= 0.0030 * g(0.0, my - 0.017, 0.02, 0.005)
        dz += I.chin * g(0.0, -0.090, 0.022, 0.014)
        z = z + dz * front
        return np.stack([x, y, z], -1)

    def _hair_weight(self, theta, phi, p):
        """1 where the head is covered by hair or a cap, soft edge."""
        I = self.id
        a = np.abs(theta)
        knots_a = [0.0, 0.55, 0.95, 1.25, 1.75, 2.1, 2.6, np.pi + 0.01]
        knots_y = [I.hairline, I.hairline - 0.006, I.hairline - 0.02, 0.03, 0.032, -0.005, -0.05, -0.06]
        if I.cap:
            knots_y = [I.hairline - 0.006, I.hairline - 0.01, I.hairline - 0.015, 0.04, 0.04, 0.03, -0.02, -0.03]
        yl = np.interp(a, knots_a, knots_y)
        return smoothstep(yl - 0.002, yl + 0.006, p[..., 1])

    # -- skin grid ---------------------------------------------------------------------
    def _build_skin(self):
        I = self.id
        N = self.N_THETA
        half = _density_grid(N // 2 + 1, 0.0, np.pi, 0.0, 0.8, 3.0)
        theta = np.concatenate([-half[::-1], half[1:]])  # includes 0 and +-pi
        # phi of the mouth line at theta = 0 (features only move z, so y = base y)
        lo, hi = -1.2, 0.0
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            if self._base(np.array(0.0), np.array(mid))[1] < I.mouth_y:
                lo = mid
            else:
                hi = mid
        phi_m = 0.5 * (lo + hi)
        phi = _density_grid(self.N_PHI, -np.pi / 2, np.pi / 2, -0.2, 0.6, 3.0, include=[phi_m])
        m = int(np.argmin(np.abs(phi - phi_m)))
        lower_phi, upper_phi = phi[: m + 1], phi[m:]
        # rows: lower ... L0, L1, L2, L3, U3, U2, U1, U0, upper ...
        # The rows between the two lip edges roll inwards and form a closed pocket
        # (lip thickness, floor, throat, palate), so the skin stays watertight when the
        # lips part; outside the mouth they collapse onto the lip line.
        row_phi = np.concatenate([lower_phi, [phi_m] * 6, upper_phi])
        row_kind = np.concatenate([np.zeros(m + 1), [1, 2, 3, -3, -2, -1], np.full(len(upper_phi), -4)])
        nr, nc = len(row_phi), len(theta)
        T, P = np.meshgrid(theta, row_phi, indexing="xy")
        K = np.broadcast_to(row_kind[:, None], (nr, nc))
        base = self._base(T, P)
        hairw = self._hair_weight(T, P, base)
        dvec = base / np.linalg.norm(base, axis=-1, keepdims=True)
        pos = base + dvec * (hairw * I.hair_volume * (0.6 + 0.4 * smoothstep(0.0, 0.1, base[..., 1])))[..., None]
        # mouth slit extent: corners at +-mouth_half
        xs = base[..., 0]
        fr = (theta >= 0) & (theta < 1.0)  # |x| grows monotonically with theta here
        self.corner_theta = float(np.interp(I.mouth_half, xs[m, fr], theta[fr]))
        inside = smoothstep(self.corner_theta, self.corner_theta - 0.10, np.abs(T))
        ak = np.abs(K)
        depth = np.select([ak == 1, ak == 2, ak == 3], [0.0035, 0.008, 0.024], 0.0)
        lift = np.select([K == 1, K == 2, K == 3, K == -1, K == -2, K == -3],
                         [-0.0015, -0.004, -0.009, 0.0015, 0.004, 0.007], 0.0)
        pos[..., 2] -= depth * inside
        pos[..., 1] += lift * inside
        self.skin_faces = _grid_faces(nr, nc)
        self.skin_rest = pos.reshape(-1, 3)
        self.skin_base = base.reshape(-1, 3)
        self.skin_rows, self.skin_cols = nr, nc
        self.skin_kind = K.reshape(-1)
        self.skin_inside = inside.reshape(-1)
        self.skin_hair = hairw.reshape(-1)
        self.theta, self.row_phi, self.m = theta, row_phi, m
        u = (T + np.pi) / (2 * np.pi)
        v = (P + np.pi / 2) / np.pi
        self.skin_uv = np.stack([u, v], -1).reshape(-1, 2)
        ao = np.select([ak == 1, ak == 2, ak == 3], [0.7, 0.35, 0.12], 1.0)
        ao = 1.0 - (1.0 - ao) * inside
        self.skin_ao = ao.reshape(-1)
        # per-vertex skinning weights from the rest shape
        x, y, z = (self.skin_base[:, k] for k in range(3))
        front = smoothstep(-0.05, 0.0, z)
        lowerside = np.isin(self.skin_kind, [0, 1, 2, 3])
        my = I.mouth_y
        # Below the lip line everything follows the jaw. Above it, the skin follows only
        # beside the mouth (continuity at the corners) and fades out over ~1.5 cm.
        y_line = np.broadcast_to(base[m][None, :, 1], (nr, nc)).reshape(-1)
        w_up = front * (1.0 - self.skin_inside) * np.exp(-((y - y_line) / 0.012) ** 2)
        self.w_jaw = np.where(lowerside, front, w_up)
        self.w_lowlip = np.where(lowerside, np.exp(-((y - my) / 0.009) ** 2) * smoothstep(I.mouth_half * 1.3, I.mouth_half * 0.6, np.abs(x)), 0.0)
        self.w_lip = np.exp(-((y - my) / 0.014) ** 2) * np.exp(-(x / (I.mouth_half * 1.5)) ** 2) * front
        self.w_brow = front * np.exp(-((y - I.eye_y - 0.024) / 0.016) ** 2) * smoothstep(0.075, 0.05, np.abs(x))
        self.w_fore = front * smoothstep(I.eye_y + 0.02, I.eye_y + 0.06, y) * smoothstep(0.07, 0.04, np.abs(x)) * (1 - hairw.reshape(-1) * 0.5)
        self.w_inner = np.exp(-((np.abs(x) - 0.012) / 0.012) ** 2)
        # labels: head, lower face, upper face, person
        lowerface = front * smoothstep(-0.028, -0.036, y) * smoothstep(0.062, 0.052, np.abs(x)) * smoothstep(0.01, 0.03, z)
        lowerface = np.maximum(lowerface, (self.skin_inside > 0) * np.isin(np.abs(self.skin_kind), [1, 2, 3]))
        upperface = front * smoothstep(-0.004, 0.004, y - (I.eye_y - 0.016)) * smoothstep(I.eye_y + 0.052, I.eye_y + 0.044, y) \
            * smoothstep(0.068, 0.058, np.abs(x)) * smoothstep(0.01, 0.03, z)
        self.skin_label = np.stack([np.ones_like(x), lowerface, upperface, np.ones_like(x)], 1)
        # landmark vertices on the skin grid
        c0 = int(np.argmin(np.abs(theta)))
        cl = int(np.argmin(np.abs(theta - self.corner_theta)))
        cr = int(np.argmin(np.abs(theta + self.corner_theta)))
        U0 = m + 7
        L0 = m
        rest = self.skin_rest

        def near(px, py):
            cand = np.where((rest[:, 2] > 0.04) & np.isin(self.skin_kind, [0, -4]))[0]
            d = (rest[cand, 0] - px) ** 2 + (rest[cand, 1] - py) ** 2
            return int(cand[np.argmin(d)])

        nose_c = np.where((np.abs(rest[:, 0]) < 0.004) & (np.abs(rest[:, 1] + 0.024 - I.nose_y) < 0.01))[0]
        self.skin_landmarks = {
            "mouth_corner_left": U0 * nc + cl, "mouth_corner_right": U0 * nc + cr,
            "upper_lip_mid": U0 * nc + c0, "lower_lip_mid": L0 * nc + c0,
            "nose_tip": int(nose_c[np.argmax(rest[nose_c, 2])]), "chin": near(0.0, -0.092),
            "brow_inner_left": near(0.016, I.eye_y + 0.024), "brow_inner_right": near(-0.016, I.eye_y + 0.024),
        }

    def skin_z_at(self, x, y):
        rest = self.skin_rest
        cand = np.where((rest[:, 2] > 0.03) & (self.skin_kind == -4))[0]
        d = (rest[cand, 0] - x) ** 2 + (rest[cand, 1] - y) ** 2
        return float(rest[cand[np.argmin(d)], 2])

    # -- other parts ---------------------------------------------------------------------
    def _build_parts(self):
        I = self.id
        my = I.mouth_y
        zf = self.skin_z_at(0.0, my)
        self.mouth_front_z = zf
        # eyes: centre behind the skin so the front cap shows through the socket
        self.eye_centres = []
        for sx in (1.0, -1.0):
            ex, ey = sx * I.eye_dx, I.eye_y
            ez = self.skin_z_at(ex, ey) - 0.32 * I.eye_r
            self.eye_centres.append(np.array([ex, ey, ez]))
        V, F, d = _ellipsoid((0, 0, 0), (I.eye_r,) * 3, 28, 40)
        self.eye_unit, self.eye_faces = V, F
        uv = 0.5 + 0.5 * d[:, :2] * np.where(d[:, 2:3] > 0, 1.0, 0.0) * [1.0, -1.0] + 0.0
        uv = np.where(d[:, 2:3] > 0, 0.5 + 0.5 * np.stack([d[:, 0], d[:, 1]], 1), np.array([[0.02, 0.5]]))
        self.eye_uv = uv
        # eyelids: spherical shells slightly larger than the eyeball
        self.lid_gamma = np.linspace(-1.35, 1.35, 41)
        self.lid_rows = 14
        # teeth bands (upper attached to the skull, lower to the jaw)
        self.upper_teeth = self._teeth_band(zf - 0.0075, 0.027, my + 0.0095, my - 0.0012, 0.005)
        self.lower_teeth = self._teeth_band(zf - 0.0095, 0.025, my - 0.0015, my - 0.0105, 0.005)
        tV, tF, _ = _ellipsoid((0.0, my - 0.0075, zf - 0.026), (0.015, 0.005, 0.016), 16, 24)
        self.tongue = (tV, tF)
        # ears: flattened bowls on the sides
        self.ears = []
        for sx in (1.0, -1.0):
            V, F, d = _ellipsoid((0, 0, 0), (0.006, 0.031 * I.ear_scale, 0.019 * I.ear_scale), 18, 24)
            rho = np.sqrt(d[:, 1] ** 2 + d[:, 2] ** 2)
            V[:, 0] -= 0.008 * np.clip(1 - rho ** 2 * 1.3, 0, 1) * (d[:, 0] > 0)
            V[:, 0] += 0.004 * (d[:, 0] > 0) * rho ** 2
            V = V @ _rot_y(-0.25).T @ _rot_x(0.12).T  # tilt back a little
            V[:, 0] *= sx
            ex = sx * (self._side_x(0.005, -0.012) + 0.0015)
            V = V + np.array([ex, 0.002, -0.012])
            if sx < 0:
                F = F[:, ::-1]
            self.ears.append((V, F))
        # neck and shoulders (these do not follow the head rigidly)
        n_a, n_h = 40, 16
        a = np.linspace(-np.pi, np.pi, n_a + 1)
        h = np.linspace(-0.035, -0.25, n_h)
        A, Hh = np.meshgrid(a, h, indexing="xy")
        rx = 0.056 + 0.012 * smoothstep(-0.14, -0.22, Hh)  # widens into the trapezius
        rz = 0.052
        NV = np.stack([rx * np.sin(A), Hh, -0.022 + rz * np.cos(A)], -1).reshape(-1, 3)
        self.neck = (NV, _grid_faces(n_h, n_a + 1))
        self.neck_follow = smoothstep(-0.15, -0.05, NV[:, 1])
        TV, TF, td = _ellipsoid((0.0, -0.275, -0.035), (0.23, 0.11, 0.115), 24, 48)
        self.torso = (TV, TF)

    def _side_x(self, y, z):
        rest = self.skin_rest
        cand = np.where(rest[:, 0] > 0)[0]
        d = (rest[cand, 1] - y) ** 2 + (rest[cand, 2] - z) ** 2
        return float(rest[cand[np.argmin(d)], 0])

    def _teeth_band(self, z_front, radius, y_top, y_bot, thick):
        psi = np.linspace(-1.05, 1.05, 41)
        cz = z_front - radius
        rows = []
        uvs = []
        # outer face top->bottom, then inner face bottom->top: a closed loop in cross-section
        prof = [(0.0, y_top, 0.0), (0.0, y_bot + 0.001, 0.33), (0.0015, y_bot, 0.5),
                (thick, y_bot + 0.001, 0.66), (thick, y_top, 1.0)]
        for inset, y, v in prof:
            r = radius - inset
            rows.append(np.stack([r * np.sin(psi), np.full_like(psi, y), cz + r * np.cos(psi)], -1))
            uvs.append(np.stack([(psi + 1.05) / 2.1, np.full_like(psi, v)], -1))
        V = np.concatenate(rows)
        uv = np.concatenate(uvs)
        F = _grid_faces(len(prof), len(psi))
        return V, F, uv

    # -- textures --------------------------------------------------------------------
    def _paint_textures(self):
        I = self.id
        rng = np.random.default_rng([I.seed, 0x7E47])
        H, W = self.tex_h, self.tex_w
        phi = (np.arange(H) + 0.5) / H * np.pi - np.pi / 2
        theta = (np.arange(W) + 0.5) / W * 2 * np.pi - np.pi
        T, P = np.meshgrid(theta, phi, indexing="xy")
        p = self._base(T, P)
        x, y, z = p[..., 0], p[..., 1], p[..., 2]
        hairw = self._hair_weight(T, P, p)
        hairw = np.clip(hairw + 0.15 * value_noise(rng, (H, W), (H // 6, W // 6)) * (hairw > 0.02) * (hairw < 0.98), 0, 1)
        front = smoothstep(0.0, 0.05, z)
        g = lambda cx, cy, sx, sy: np.exp(-(((x - cx) / sx) ** 2 + ((y - cy) / sy) ** 2))  # noqa: E731
        # skin: tone, blotches, redness, pores, freckles, moles
        col = np.broadcast_to(I.skin, (H, W, 3)).copy()
        blot = fbm(rng, (H, W), (8, 16), 4)
        col *= (1.0 + 0.07 * blot)[..., None]
        red = 0.5 * (g(0.042, -0.015, 0.02, 0.016) + g(-0.042, -0.015, 0.02, 0.016)) + 0.5 * g(0, -0.022 + I.nose_y, 0.01, 0.01)
        red = red * front
        col = col * (1 - 0.22 * red[..., None]) + 0.22 * red[..., None] * (I.skin * np.array([1.05, 0.55, 0.55]))
        pore = rng.normal(0.0, 1.0, (H, W))
        from scipy import ndimage
        pore = ndimage.gaussian_filter(pore, 0.7, mode=("nearest", "wrap"))
        col *= (1.0 + 0.16 * I.pores * pore * front)[..., None]
        frk = speckles(rng, (H, W), int(9000 * I.freckles) + 200, 1.3)
        frk_w = np.clip(front * (g(0.03, -0.005, 0.035, 0.025) + g(-0.03, -0.005, 0.035, 0.025) + g(0, 0.0, 0.015, 0.02)), 0, 1)
        col *= (1.0 - 0.45 * (frk * np.maximum(frk_w, 0.15))[..., None] * np.array([0.7, 0.9, 1.0]))
        moles = speckles(rng, (H, W), 14, 2.2)
        col *= (1.0 - 0.55 * moles[..., None])
        # eye sockets slightly darker; nostrils dark
        sock = g(I.eye_dx, I.eye_y - 0.004, 0.018, 0.012) + g(-I.eye_dx, I.eye_y - 0.004, 0.018, 0.012)
        col *= (1 - 0.18 * sock * front)[..., None] * np.array([1.0, 0.96, 1.0])
        nos = g(0.007 * I.nose_width, -0.031 + I.nose_y, 0.0035, 0.0022) + g(-0.007 * I.nose_width, -0.031 + I.nose_y, 0.0035, 0.0022)
        col *= (1 - 0.85 * np.clip(nos, 0, 1) * front)[..., None]
        # lips: vermilion with a cupid's bow, fine vertical lines
        my = I.mouth_y
        bow = 0.0016 * np.exp(-((np.abs(x) - 0.006) / 0.004) ** 2) - 0.001 * np.exp(-(x / 0.003) ** 2)
        up_h = (0.0072 + bow) * I.lip_full * (1 - (x / (I.mouth_half * 1.02)) ** 2)
        lo_h = 0.0095 * I.lip_full * np.sqrt(np.clip(1 - (x / (I.mouth_half * 0.98)) ** 2, 0, 1))
        dy = y - my
        lipm = np.where(dy > 0, smoothstep(0.0006, -0.0006, dy - up_h), smoothstep(0.0006, -0.0006, -dy - lo_h))
        lipm = lipm * smoothstep(I.mouth_half * 1.05, I.mouth_half * 0.9, np.abs(x)) * front
        lines = value_noise(rng, (H, W), (8, W // 2))
        lipc = I.lip * (1.0 + 0.10 * lines)[..., None]
        col = col * (1 - lipm[..., None]) + lipc * lipm[..., None]
        # brows: arched bands of short strokes
        brows = np.zeros((H, W))
        for sx in (1.0, -1.0):
            xr = sx * x
            t = (xr - 0.006) / 0.058
            yb = I.eye_y + 0.021 + 0.007 * np.sin(np.clip(t, 0, 1) * np.pi * 0.9) - 0.002 * t
            thick = 0.0048 * I.brow_thick * (1 - 0.6 * np.clip(t, 0, 1))
            band = smoothstep(thick, thick * 0.5, np.abs(y - yb)) * smoothstep(-0.08, 0.02, t) * smoothstep(1.05, 0.9, t)
            brows = np.maximum(brows, band * (xr > 0))
        strokes = ndimage.gaussian_filter(rng.normal(size=(H, W)), (0.5, 2.0), mode=("nearest", "wrap"))
        brows = np.clip(brows * (0.75 + 2.5 * strokes), 0, 1) * front
        col = col * (1 - 0.9 * brows[..., None]) + 0.9 * brows[..., None] * I.hair * 0.8
        # hair: anisotropic strands along the meridians, or a knitted cap
        if I.cap:
            stripes = 0.5 + 0.5 * np.sign(np.sin(P * 55.0))
            knit = 0.85 + 0.15 * np.abs(np.sin(T * 260.0)) + 0.05 * fbm(rng, (H, W), (40, 80), 2)
            capc = (I.cap_colors[0] * stripes[..., None] + I.cap_colors[1] * (1 - stripes[..., None])) * knit[..., None]
            col = col * (1 - hairw[..., None]) + capc * hairw[..., None]
        else:
            strand = ndimage.gaussian_filter(rng.normal(size=(H, W)), (9.0, 0.6), mode=("nearest", "wrap"))
            strand = strand / (strand.std() + 1e-9)
            clump = fbm(rng, (H, W), (6, 24), 3)
            hairc = I.hair[None, None] * (1.0 + 0.35 * strand[..., None] + 0.25 * clump[..., None])
            col = col * (1 - hairw[..., None]) + np.clip(hairc, 0, 1) * hairw[..., None]
        skin_tex = np.clip(col, 0, 1)
        # eyes: sclera, iris fibres, limbus, pupil (planar map of the front hemisphere)
        n = 256
        yy, xx = np.mgrid[0:n, 0:n]
        u, v = (xx + 0.5) / n * 2 - 1, (yy + 0.5) / n * 2 - 1
        r = np.sqrt(u * u + v * v)
        ang = np.arctan2(v, u)
        eye = np.broadcast_to(_lin([0.93, 0.90, 0.88]), (n, n, 3)).copy()
        veins = np.clip(value_noise(rng, (n, n), (24, 24)), 0, 1) ** 4 * smoothstep(0.5, 1.0, r)
        eye = eye * (1 - 0.5 * veins[..., None] * np.array([0.0, 1.0, 1.0]))
        ri, rp = np.sin(0.68), np.sin(0.25)
        fib = 1.0 + 0.35 * np.sin(ang * 90 + 3 * np.sin(ang * 7)) * value_noise(rng, (n, n), (6, 6))
        irisc = I.iris[None, None] * fib[..., None] * (0.6 + 0.6 * (r / ri))[..., None]
        limb = smoothstep(ri * 0.85, ri, r)
        irisc = irisc * (1 - 0.7 * limb[..., None])
        m_iris = smoothstep(ri + 0.01, ri - 0.01, r)
        eye = eye * (1 - m_iris[..., None]) + irisc * m_iris[..., None]
        pup = smoothstep(rp + 0.01, rp - 0.01, r)
        eye = eye * (1 - pup[..., None]) + 0.01 * pup[..., None]
        # teeth: ivory with gaps, gums where they meet the jaw
        tw = 512
        uu = (np.arange(tw) + 0.5) / tw
        psi = uu * 2.1 - 1.05
        widths = np.array([1.0, 0.85, 0.8, 0.75, 0.95, 0.95])
        edges = np.concatenate([-np.cumsum(widths[::-1])[::-1], [0], np.cumsum(widths)])
        edges = edges / edges[-1] * 1.05
        dist = np.min(np.abs(psi[:, None] - edges[None, :]), axis=1)
        gapm = smoothstep(0.035, 0.0, dist)
        teeth = np.broadcast_to(_lin([0.92, 0.89, 0.80]), (64, tw, 3)).copy()
        teeth *= (1 - 0.6 * gapm)[None, :, None]
        vv = (np.arange(64) + 0.5) / 64
        gum = smoothstep(0.12, 0.0, vv) + smoothstep(0.88, 1.0, vv)
        teeth = teeth * (1 - gum[:, None, None]) + _lin([0.75, 0.35, 0.35]) * gum[:, None, None]
        cloth = np.broadcast_to(I.shirt, (256, 256, 3)) * (1 + 0.1 * fbm(rng, (256, 256), (32, 32), 2))[..., None]
        white = np.ones((4, 4, 3))
        to8 = lambda a: np.ascontiguousarray(np.clip(np.rint(a * 255), 0, 255).astype(np.uint8))  # noqa: E731
        return {"skin": to8(skin_tex), "eye": to8(eye), "teeth": to8(teeth), "cloth": to8(cloth), "white": to8(white)}

    # -- mesh list -------------------------------------------------------------------
    def _dir_uv(self, V):
        """Texture coordinates of points by their direction from the head centre."""
        th = np.arctan2(V[:, 0], V[:, 2])
        ph = np.arcsin(np.clip(V[:, 1] / np.linalg.norm(V, axis=1), -1, 1))
        return np.stack([(th + np.pi) / (2 * np.pi), (ph + np.pi / 2) / np.pi], 1)

    def _meshes(self):
        L = lambda n, head, lo, up, person=1.0: np.tile([head, lo, up, person], (n, 1)).astype(np.float32)  # noqa: E731
        T = lambda n, rgb=(1, 1, 1), ao=1.0: np.tile([*rgb, ao], (n, 1)).astype(np.float32)  # noqa: E731
        skin_mat = Material(0.06, 18.0, 0.3)
        meshes = []
        tint = np.concatenate([np.ones((len(self.skin_rest), 3)), self.skin_ao[:, None]], 1)
        ak = np.abs(self.skin_kind)
        inner = self.skin_inside[:, None]
        for k, rgb in ((1, [0.95, 0.8, 0.8]), (2, [0.8, 0.45, 0.45]), (3, [0.5, 0.2, 0.2])):
            sel = ak == k
            tint[sel, :3] = 1 - (1 - np.array(rgb)) * inner[sel]
        meshes.append(Mesh("skin", self.skin_faces, self.skin_uv.astype(np.float32), tint.astype(np.float32),
                           self.skin_label.astype(np.float32), "skin", skin_mat))
        nl = self.lid_rows * len(self.lid_gamma)
        ring = np.repeat(np.arange(self.lid_rows), len(self.lid_gamma))
        lash = np.where(ring < 2, 0.25, 1.0)
        lid_tint = np.stack([lash, lash, lash, np.where(ring < 2, 0.6, 1.0)], 1).astype(np.float32)
        lid_faces = _grid_faces(self.lid_rows, len(self.lid_gamma))
        for side, c in zip(("left", "right"), self.eye_centres):
            meshes.append(Mesh(f"eye_{side}", self.eye_faces, self.eye_uv.astype(np.float32), T(len(self.eye_unit)),
                               L(len(self.eye_unit), 1, 0, 1), "eye", Material(0.5, 90.0, 0.0)))
            for lid in ("upper", "lower"):
                rest = self._lids(c, 0.0, 0.0, 0.0, lid == "upper")
                meshes.append(Mesh(f"lid_{lid}_{side}", lid_faces, self._dir_uv(rest).astype(np.float32), lid_tint,
                                   L(nl, 1, 0, 1), "skin", skin_mat, cull=False))
        for name, (V, F, uv) in (("teeth_upper", self.upper_teeth), ("teeth_lower", self.lower_teeth)):
            meshes.append(Mesh(name, F, uv.astype(np.float32), T(len(V), ao=0.9), L(len(V), 1, 1, 0), "teeth", Material(0.15, 40.0, 0.1), cull=False))
        tV, tF = self.tongue
        meshes.append(Mesh("tongue", tF, np.zeros((len(tV), 2), np.float32), T(len(tV), _lin([0.75, 0.32, 0.32]), 0.55),
                           L(len(tV), 1, 1, 0), "white", Material(0.2, 30.0, 0.2)))
        for side, (V, F) in zip(("left", "right"), self.ears):
            meshes.append(Mesh(f"ear_{side}", F, self._dir_uv(V * np.array([1, 0, 1]) + np.array([0, -0.09, 0])).astype(np.float32),
                               T(len(V)), L(len(V), 1, 0, 0), "skin", skin_mat))
        NV, NF = self.neck
        nuv = self._dir_uv(np.stack([NV[:, 0], np.full(len(NV), -0.1), NV[:, 2]], 1))
        meshes.append(Mesh("neck", NF, nuv.astype(np.float32), T(len(NV), ao=1.0), L(len(NV), 0, 0, 0), "skin", skin_mat, cull=False))
        TV, TF = self.torso
        tuv = np.stack([(np.arctan2(TV[:, 0], TV[:, 2]) + np.pi) / (2 * np.pi) * 4, (TV[:, 1] + 0.5) * 4], 1)
        meshes.append(Mesh("torso", TF, tuv.astype(np.float32), T(len(TV)), L(len(TV), 0, 0, 0), "cloth", Material(0.02, 8.0, 0.2)))
        return meshes

    # -- animation ---------------------------------------------------------------------
    def _lids(self, centre, blink, raise_, gaze_pitch, upper):
        I = self.id
        g = self.lid_gamma
        open_u = 0.42 * I.eye_open + 0.10 * raise_ + 0.5 * gaze_pitch
        open_l = -0.40 * I.eye_open + 0.25 * gaze_pitch
        closed = -0.30
        if upper:
            edge = (open_u + (closed - 0.02 - open_u) * blink) * np.cos(g * 0.75) + 0.05 * (1 - np.cos(g))
            beta = edge[None, :] + (1.45 - edge[None, :]) * np.linspace(0, 1, self.lid_rows)[:, None] ** 1.3
        else:
            edge = (open_l + (closed - open_l) * blink * 0.35) * np.cos(g * 0.75) - 0.05 * (1 - np.cos(g))
            beta = edge[None, :] + (-1.45 - edge[None, :]) * np.linspace(0, 1, self.lid_rows)[:, None] ** 1.3
        gam = np.broadcast_to(g[None, :], beta.shape)
        r = I.eye_r * 1.045
        d = np.stack([np.cos(beta) * np.sin(gam), np.sin(beta), np.cos(beta) * np.cos(gam)], -1).reshape(-1, 3)
        return centre + r * d

    def pose_geometry(self, state: dict, head_to_world: np.ndarray):
        """Deformed vertex positions of every mesh (head frame) for one frame.

        ``state`` maps each of ``STATE_KEYS`` to a float; ``head_to_world`` is the 4x4
        rigid head pose (only the neck and shoulders depend on it: they stay with the
        body while the head turns). Returns (positions list, landmarks [L, 3])."""
        I = self.id
        s = {k: float(state[k]) for k in STATE_KEYS}
        P = self.skin_rest.copy()
        x = self.skin_base[:, 0]
        # lip shape first (rounding pulls the corners in and pushes the lips out)
        wl = self.w_lip
        P[:, 0] += x * wl * (0.22 * s["lip_spread"] - 0.30 * s["lip_round"])
        P[:, 2] += wl * (0.006 * s["lip_round"] - 0.0015 * s["lip_spread"])
        P[:, 1] += wl * 0.002 * s["lip_spread"] * (np.abs(x) / I.mouth_half) ** 2
        # brows and forehead
        P[:, 1] += 0.0055 * s["brow_raise"] * self.w_brow + 0.002 * s["brow_raise"] * self.w_fore
        P[:, 1] -= 0.0025 * s["brow_furrow"] * self.w_brow * self.w_inner
        P[:, 0] -= np.sign(x) * 0.0025 * s["brow_furrow"] * self.w_brow * self.w_inner
        # jaw: rotation about the hinge; a closing lip keeps the lower lip up
        ang = JAW_MAX_RAD * s["jaw_open"]
        hinge = np.array([0.0, -0.012, -0.02])
        R = _rot_x(ang)
        w = self.w_jaw * (1.0 - 0.85 * s["lip_close"] * self.w_lowlip)
        rot = (P - hinge) @ R.T + hinge
        P = P + w[:, None] * (rot - P)
        out = [P]
        gaze = _rot_y(s["gaze_yaw"]) @ _rot_x(-s["gaze_pitch"])
        for k, (side, c) in enumerate(zip(("left", "right"), self.eye_centres)):
            blink = s[f"blink_{side}"]
            out.append(self.eye_unit @ gaze.T + c)
            out.append(self._lids(c, blink, s["brow_raise"], s["gaze_pitch"], True))
            out.append(self._lids(c, blink, s["brow_raise"], s["gaze_pitch"], False))
        jaw = lambda V, wt=1.0: V + wt * (((V - hinge) @ R.T + hinge) - V)  # noqa: E731
        out.append(self.upper_teeth[0].copy())
        out.append(jaw(self.lower_teeth[0]))
        out.append(jaw(self.tongue[0]))
        out.extend(V for V, _ in self.ears)
        # neck: blend between the body (world) and the head; torso stays in the world
        Hinv = np.linalg.inv(head_to_world)
        NV = self.neck[0]
        body = NV @ Hinv[:3, :3].T + Hinv[:3, 3]
        out.append(NV * self.neck_follow[:, None] + body * (1 - self.neck_follow[:, None]))
        TV = self.torso[0]
        out.append(TV @ Hinv[:3, :3].T + Hinv[:3, 3])
        lm = self._landmarks(out)
        return out, lm

    def _landmarks(self, out):
        P = out[0]
        L = {k: P[v] for k, v in self.skin_landmarks.items()}
        ng = len(self.lid_gamma)
        c = ng // 2
        # meshes: 0 skin, 1 eye_l, 2 lid_u_l, 3 lid_l_l, 4 eye_r, 5 lid_u_r, 6 lid_l_r
        L["upper_lid_left"], L["lower_lid_left"] = out[2][c], out[3][c]
        L["upper_lid_right"], L["lower_lid_right"] = out[5][c], out[6][c]
        return np.stack([L[n] for n in LANDMARK_NAMES])

    def normals(self, positions):
        return [vertex_normals(p, m.faces) for p, m in zip(positions, self.meshes)]


def neutral_state() -> dict:
    return {k: 0.0 for k in STATE_KEYS}
