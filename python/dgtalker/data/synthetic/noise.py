"""Small, seeded procedural-noise helpers for the synthetic textures (numpy + scipy)."""
from __future__ import annotations

import numpy as np


def smoothstep(e0, e1, x):
    t = np.clip((np.asarray(x, dtype=np.float64) - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def value_noise(rng: np.random.Generator, shape, cells, wrap_x=True) -> np.ndarray:
    """Smooth noise in [-1, 1] of ``shape`` (H, W) with about ``cells`` (ch, cw)
    features across; cubic interpolation of a random lattice. Wraps horizontally
    so a texture around the head has no seam."""
    H, W = shape
    ch, cw = max(2, int(cells[0])), max(2, int(cells[1]))
    lat = rng.uniform(-1.0, 1.0, size=(ch + 3, cw + 3))
    if wrap_x:
        lat[:, cw:] = lat[:, :3]
    y = np.linspace(0, ch - 1e-6, H)
    x = np.linspace(0, cw - 1e-6, W, endpoint=not wrap_x)
    yi, yf = np.floor(y).astype(int), y - np.floor(y)
    xi, xf = np.floor(x).astype(int), x - np.floor(x)

    def cubic(t):  # Catmull-Rom weights
        t2, t3 = t * t, t * t * t
        return np.stack([-0.5 * t3 + t2 - 0.5 * t, 1.5 * t3 - 2.5 * t2 + 1.0,
                         -1.5 * t3 + 2.0 * t2 + 0.5 * t, 0.5 * t3 - 0.5 * t2])

    wy, wx = cubic(yf), cubic(xf)  # [4, H], [4, W]
    out = np.zeros((H, W))
    for a in range(4):
        rows = lat[yi + a]  # [H, cw+3]
        tmp = np.zeros((H, W))
        for b in range(4):
            tmp += rows[:, xi + b] * wx[b][None, :]
        out += tmp * wy[a][:, None]
    return np.clip(out, -1.0, 1.0)


def fbm(rng, shape, base_cells, octaves=4, gain=0.5) -> np.ndarray:
    """Fractal sum of value noise, roughly in [-1, 1]."""
    out = np.zeros(shape)
    amp, norm = 1.0, 0.0
    for o in range(octaves):
        c = (base_cells[0] * 2 ** o, base_cells[1] * 2 ** o)
        out += amp * value_noise(rng, shape, c)
        norm += amp
        amp *= gain
    return out / norm


def speckles(rng, shape, count, radius_px, wrap_x=True) -> np.ndarray:
    """``count`` soft round dots of about ``radius_px`` (random sizes) in [0, 1]."""
    from scipy import ndimage

    H, W = shape
    img = np.zeros(shape)
    ys = rng.integers(0, H, count)
    xs = rng.integers(0, W, count)
    np.add.at(img, (ys, xs), rng.uniform(0.4, 1.0, count))
    mode = ("nearest", "wrap") if wrap_x else "nearest"
    img = ndimage.gaussian_filter(img, radius_px, mode=mode)
    peak = 1.0 / (2 * np.pi * radius_px ** 2)
    return np.clip(img / peak, 0.0, 1.0)
