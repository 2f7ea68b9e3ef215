"""Parts of the rasterizer wrapper that need no torch: capacity policy, status
messages, and filling the engine's buffer structs. Shared by the torch wrapper
(``raster.py``) and the CuPy binding (``raster_array.py``)."""
from __future__ import annotations

_MIN_CAPACITY = 1024
_GROWTH = 1.5

_INVALID_NAMES = {1: "means (non-finite)", 2: "quats (non-finite or zero norm)",
                  4: "scales (non-finite or negative)", 8: "opacities (outside [0, 1])",
                  16: "colors (non-finite)",
                  32: "viewmats/Ks (non-finite, fx or fy <= 0, skew, or a last row of K other than [0, 0, 1])",
                  64: "background (non-finite)"}


class RasterInputError(ValueError):
    """The engine found invalid values in a rasterizer input."""


def _invalid_message(flags: int) -> str:
    bad = [name for bit, name in _INVALID_NAMES.items() if flags & bit]
    return "rasterize received invalid values in: " + ", ".join(bad)


def initial_capacity(batch: int, num_gaussians: int) -> int:
    """First intersection-capacity guess of a shape, before any count is known."""
    return max(_MIN_CAPACITY, 4 * batch * num_gaussians)


def grown_capacity(total: int) -> int:
    """Capacity for a shape that needed `total` intersections: room to grow."""
    return int(total * _GROWTH) + _MIN_CAPACITY


def set_input_addresses(bufs, addr, means, quats, scales, opacities, colors, viewmats, Ks, background, state):
    """Fills the input and state fields shared by ForwardBuffers and BackwardBuffers;
    `addr` turns an array (torch or CuPy) into its device address."""
    bufs.means, bufs.quats, bufs.scales = addr(means), addr(quats), addr(scales)
    bufs.opacities, bufs.colors = addr(opacities), addr(colors)
    bufs.viewmats, bufs.Ks = addr(viewmats), addr(Ks)
    bufs.background = 0 if background is None else addr(background)
    bufs.state = addr(state)
