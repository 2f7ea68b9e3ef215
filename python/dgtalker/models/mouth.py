"""The mouth interior: teeth, tongue and the dark cavity behind the lips.

The prior's Gaussians sit on the head template's surface and reach inside the mouth
only through bounded offsets, so an open mouth renders as a dark slot. This module adds
a small fixed set of Gaussians in the head frame (metres, the template's frame), shaped
like the synthetic corpus' mouth (``dgtalker.data.synthetic.head``):

- the upper teeth, an arc of two rows fixed to the skull;
- the lower teeth and the tongue, fixed to the jaw, which turns about a hinge by an angle
  that grows with the talker's first lip coefficient (the tracked mouth opening,
  standardised, when training pins it: ``--lip-target``);
- the cavity, a dark wall behind them.

Where it sits is the person's, not the template's: ``mouth_anchor`` finds the lip line's
height, the mouth's half width and the lips' depth from the clip's tracked mouth
(``place``). Closed lips hide it (they are in front); as the lips part it shows and turns
with the head. What is learned per talker: each Gaussian's colour (the teeth start from
the clip's own, ``set_teeth_colour``) and opacity, a small shift of the whole interior
(``SHIFT_LOW`` .. ``SHIFT_HIGH``: never in front of the lips), and the jaw's gain and rest
opening.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as Fn
from torch import Tensor, nn

MOUTH_Y = -0.052                  # the template's lip line (the corpus' mouth corners)
HALF_WIDTH = 0.025                # the template's mouth corners' |x|
HINGE = (0.0, -0.012, -0.02)      # the corpus' jaw hinge
PARTS = ("upper_teeth", "lower_teeth", "tongue", "cavity")
COLOURS = {"upper_teeth": (0.85, 0.82, 0.74), "lower_teeth": (0.82, 0.78, 0.70), "tongue": (0.55, 0.25, 0.26),
           "cavity": (0.06, 0.03, 0.03)}
SIZES = {"upper_teeth": 0.0022, "lower_teeth": 0.0022, "tongue": 0.003, "cavity": 0.004}
# how far the interior may move from where it was placed (metres, per axis x, y, z).
# Unbounded, a shift trained at the interior's rate drifted 28 cm into the head on a real
# clip; bounded at 1 cm each way, it slid 9.4 mm forward, in front of the upper lip, and
# its teeth learned lip colours. So it may go back into the mouth, hardly forwards
SHIFT_LOW = (-0.003, -0.006, -0.010)
SHIFT_HIGH = (0.003, 0.006, 0.001)
# the face's Gaussians that may part to show the interior: the template's front within
# these bounds of its lip line (metres). The decoded face is one sheet across the mouth: on
# a real clip it covered the whole inner-lip outline of wide-open training frames (alpha
# 0.98-1.0), so whatever lay behind never showed and an open mouth was a painted slot
GAP_HALF_X, GAP_HALF_Y, GAP_FRONT_Z = 0.035, 0.02, 0.03
GAP_SIGMA_Y = 0.004    # the initial gap: a band this high about the lip line ...
GAP_DEPTH = 0.8        # ... this transparent at its middle when the mouth is wide open
GAP_FLOOR = 0.02       # elsewhere: a little, so that training can still widen it


def mouth_front_z(template_position: Tensor, y: float = MOUTH_Y) -> float:
    """The template surface's depth at the lip line's middle (head frame, metres): the
    frontmost of the face texels nearest to ``(0, y)`` (any template resolution)."""
    p = template_position
    front = p[(p[:, 2] > 0.03) & (p[:, 0].abs() < 0.05)]
    if len(front) == 0:
        raise ValueError("the head template has no face in front")
    d = front[:, 0] ** 2 + (front[:, 1] - y) ** 2
    near = torch.topk(d, min(3, len(front)), largest=False).indices
    return float(front[near, 2].max())


def _arc(z_front: float, radius: float, ys, n: int = 21) -> Tensor:
    psi = torch.linspace(-1.05, 1.05, n)
    cz = z_front - radius
    rows = [torch.stack([radius * torch.sin(psi), torch.full_like(psi, y), cz + radius * torch.cos(psi)], -1)
            for y in ys]
    return torch.cat(rows)


def interior_points(z_front: float, mouth_y: float = MOUTH_Y, half_width: float = HALF_WIDTH) -> dict[str, Tensor]:
    """Rest positions ``{part: [n, 3]}`` of the interior's Gaussians for a face whose lip
    line is at height ``mouth_y``, its front at depth ``z_front``, its mouth corners at
    ``|x| = half_width`` (the template's shape, stretched sideways to that width)."""
    my = mouth_y
    upper = _arc(z_front - 0.0075, 0.027, (my + 0.008, my + 0.003))
    lower = _arc(z_front - 0.0095, 0.025, (my - 0.004, my - 0.009))
    # the tongue's upper surface: an ellipse of (1.5 cm, 1.6 cm) half-axes, 0.5 cm high
    u, v = torch.meshgrid(torch.linspace(-0.8, 0.8, 7), torch.linspace(-0.8, 0.8, 6), indexing="ij")
    u, v = u.reshape(-1), v.reshape(-1)
    tongue = torch.stack([0.015 * u, my - 0.0075 + 0.005 * (1 - u ** 2 - v ** 2).clamp_min(0).sqrt(),
                          z_front - 0.026 + 0.016 * v], -1)
    x, y = torch.meshgrid(torch.linspace(-0.02, 0.02, 9), torch.linspace(my - 0.02, my + 0.012, 7), indexing="ij")
    cavity = torch.stack([x.reshape(-1), y.reshape(-1), torch.full((x.numel(),), z_front - 0.035)], -1)
    parts = {"upper_teeth": upper, "lower_teeth": lower, "tongue": tongue, "cavity": cavity}
    stretch = torch.tensor([half_width / HALF_WIDTH, 1.0, 1.0])
    return {k: v * stretch for k, v in parts.items()}


def mouth_anchor(template_position: Tensor, points: Tensor, w2c: Tensor, K: Tensor) -> tuple[float, float, float]:
    """Where a person's mouth is in the head frame: ``(mouth_y, z_front, half_width)``, from
    tracked image points ``[F, 4, 2]`` (the mouth corners, then the middles of the upper
    and lower inner lip; pixels, NaN where untracked) in frames seen by ``w2c [F, 4, 4]``,
    ``K [F, 3, 3]``. Each point lands on the template's face where its projection is
    nearest; the medians over frames give the lip line (between the inner lips, in the
    most nearly shut third of the frames), the half width (the corners) and the surface's depth there (``mouth_front_z``). Clamped
    to 1.5 cm about the template's lip line and 1.8-3.5 cm half width: a tracker's
    failure cannot put the teeth on the chin."""
    p = template_position.float()
    face = p[(p[:, 2] > 0.03) & (p[:, 0].abs() < 0.06) & (p[:, 1] < 0.0) & (p[:, 1] > -0.11)]
    if len(face) == 0:
        raise ValueError("the head template has no face in front")
    cam = torch.einsum("fij,nj->fni", w2c[:, :3, :3].float(), face) + w2c[:, None, :3, 3].float()
    uv = torch.einsum("fij,fnj->fni", K.float(), cam)
    uv = uv[..., :2] / uv[..., 2:].clamp_min(1e-6)                                   # [F, n, 2]
    pts = points.float()
    ok = torch.isfinite(pts).all(-1).all(-1)
    if int(ok.sum()) == 0:
        raise ValueError("no frame has a tracked mouth")
    nearest = torch.cdist(pts[ok], uv[ok]).argmin(-1)                                # [F', 4]
    hit = face[nearest]                                                              # [F', 4, 3]
    # the lip line where the lips meet: the most nearly shut third of the frames (the lower
    # lip drops with the jaw, the teeth are placed from the shut mouth)
    gap = (pts[ok, 2] - pts[ok, 3]).norm(dim=-1)
    shut = gap <= gap.quantile(1 / 3)
    mouth_y = float(((hit[shut, 2, 1] + hit[shut, 3, 1]) / 2).median())
    half_width = float(((hit[:, 0, 0] - hit[:, 1, 0]).abs() / 2).median())
    mouth_y = min(max(mouth_y, MOUTH_Y - 0.015), MOUTH_Y + 0.015)
    half_width = min(max(half_width, 0.018), 0.035)
    return mouth_y, mouth_front_z(p, mouth_y), half_width


def _rot_x(angle: Tensor) -> Tensor:
    """``[F, 3, 3]`` rotations about x by ``angle [F]`` (radians; positive opens the jaw)."""
    c, s = torch.cos(angle), torch.sin(angle)
    one, zero = torch.ones_like(c), torch.zeros_like(c)
    return torch.stack([torch.stack([one, zero, zero], -1), torch.stack([zero, c, -s], -1),
                        torch.stack([zero, s, c], -1)], -2)


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def gap_points(template_position: Tensor) -> Tensor:
    """Indices of the template points whose Gaussians may part to show the interior
    (``GAP_*``: the front of the face about the template's lip line)."""
    p = template_position
    keep = (p[:, 0].abs() < GAP_HALF_X) & ((p[:, 1] - MOUTH_Y).abs() < GAP_HALF_Y) & (p[:, 2] > GAP_FRONT_Z)
    return torch.nonzero(keep)[:, 0]


def initial_gap(points: Tensor, mouth_y: float, half_width: float) -> Tensor:
    """How much each of ``points [M, 3]`` (the gap's template points) parts at first: a
    band ``GAP_SIGMA_Y`` high about the lip line ``mouth_y`` between the mouth corners
    (``half_width``), ``GAP_DEPTH`` at its middle, ``GAP_FLOOR`` elsewhere."""
    across = torch.exp(-((points[:, 1] - mouth_y) / GAP_SIGMA_Y) ** 2)
    t = ((half_width - points[:, 0].abs()) / 0.004).clamp(0, 1)
    return (GAP_DEPTH * across * t * t * (3 - 2 * t)).clamp_min(GAP_FLOOR)


class MouthInterior(nn.Module):
    """``mouth(opening [F]) -> (means, quats, scales, opacities, colors) [F, n, ...]`` in
    the head frame; ``opening`` is the talker's first lip coefficient. ``part_face``
    makes the face's own Gaussians at the lips transparent as the mouth opens, so the
    interior shows between them (``gaussians_per_texel``: the generator's G, whose
    Gaussians are point-major)."""

    def __init__(self, template_position: Tensor, gaussians_per_texel: int = 1):
        super().__init__()
        z_front = mouth_front_z(template_position)
        pts = interior_points(z_front)
        part = torch.cat([torch.full((len(pts[p]),), k) for k, p in enumerate(PARTS)])
        self.template_front_z = z_front
        # where it sits (``place``: the person's mouth; saved with the talker) ...
        self.register_buffer("anchor", torch.tensor([MOUTH_Y, z_front, HALF_WIDTH]))
        # ... and what follows from it or from the parts (not saved; a loaded anchor sets
        # rest and hinge again). Constants the forward needs live on the module's device:
        # made there from host data, they would copy from the host on every call, which a
        # CUDA graph capture refuses
        self.register_buffer("rest", torch.zeros(len(part), 3), persistent=False)
        self.register_buffer("hinge", torch.zeros(3), persistent=False)
        self._follow_anchor()
        self.register_load_state_dict_post_hook(lambda module, _keys: module._follow_anchor())
        self.register_buffer("part", part, persistent=False)
        self.register_buffer("log_size", torch.log(torch.tensor([SIZES[PARTS[k]] for k in part.tolist()])),
                             persistent=False)
        self.register_buffer("on_jaw", ((part == PARTS.index("lower_teeth")) | (part == PARTS.index("tongue"))).float(),
                             persistent=False)
        self.register_buffer("unit_quat", torch.tensor([1.0, 0.0, 0.0, 0.0]), persistent=False)
        colour = torch.tensor([COLOURS[PARTS[k]] for k in part.tolist()])
        self.colour_logit = nn.Parameter(torch.logit(colour))
        self.opacity_logit = nn.Parameter(torch.full((len(part),), _logit(0.95)))
        # the shift is tanh(shift_unit) times SHIFT_HIGH where positive, SHIFT_LOW where negative
        self.shift_unit = nn.Parameter(torch.zeros(3))
        self.register_buffer("shift_low", torch.tensor(SHIFT_LOW), persistent=False)
        self.register_buffer("shift_high", torch.tensor(SHIFT_HIGH), persistent=False)
        # jaw angle = softplus(gain) * softplus(opening - rest_opening): about 0.04 rad for a
        # shut mouth (standardised opening -1) and 0.18 rad (10 degrees) for a wide one (+2)
        self.jaw_gain = nn.Parameter(torch.tensor(math.log(math.expm1(0.06))))
        self.rest_opening = nn.Parameter(torch.tensor(-1.0))
        # the face's gap: which Gaussians (point-major, G per point) and how much each parts
        gap = gap_points(template_position.float())
        G = int(gaussians_per_texel)
        self.register_buffer("gap_gaussians", (gap[:, None] * G + torch.arange(G)).reshape(-1), persistent=False)
        self.register_buffer("gap_rest", template_position.float()[gap].clone(), persistent=False)
        self.gaussians_per_texel = G
        self.gap_logit = nn.Parameter(torch.logit(initial_gap(self.gap_rest, MOUTH_Y, HALF_WIDTH)))
        # how far it parts: 1 - exp(-softplus(gap_gain) * opened), opened a soft ramp of the opening
        # above rest_opening (about 0.03 shut, 0.9 wide open at first)
        self.gap_gain = nn.Parameter(torch.tensor(math.log(math.expm1(1.0))))

    def __len__(self) -> int:
        return len(self.rest)

    @torch.no_grad()
    def place(self, mouth_y: float, z_front: float, half_width: float) -> None:
        """Puts the interior in a mouth whose lip line is at height ``mouth_y``, its front
        at depth ``z_front`` and its corners at ``|x| = half_width`` (``mouth_anchor``);
        the hinge moves with it and the face's gap starts about that lip line."""
        self.anchor.copy_(torch.tensor([mouth_y, z_front, half_width]))
        self._follow_anchor()
        self.gap_logit.copy_(torch.logit(initial_gap(self.gap_rest, mouth_y, half_width)))

    @torch.no_grad()
    def _follow_anchor(self) -> None:
        """The rest positions and the hinge of the mouth at ``anchor``."""
        mouth_y, z_front, half_width = self.anchor.tolist()
        pts = interior_points(z_front, mouth_y, half_width)
        self.rest.copy_(torch.cat([pts[p] for p in PARTS]))
        self.hinge.copy_(torch.tensor([HINGE[0], HINGE[1] + mouth_y - MOUTH_Y, HINGE[2] + z_front - self.template_front_z]))

    @torch.no_grad()
    def set_teeth_colour(self, rgb) -> None:
        """Starts both rows of teeth at colour ``rgb`` (3 values in (0, 1): the clip's own)."""
        c = torch.as_tensor(rgb, dtype=torch.float32).clamp(0.02, 0.98)
        teeth = (self.part == PARTS.index("upper_teeth")) | (self.part == PARTS.index("lower_teeth"))
        self.colour_logit[teeth] = torch.logit(c).to(self.colour_logit)

    def shift(self) -> Tensor:
        """The interior's shift from where it was placed ``[3]`` (metres, within
        ``SHIFT_LOW`` .. ``SHIFT_HIGH``)."""
        t = torch.tanh(self.shift_unit)
        return torch.where(t > 0, t * self.shift_high, -t * self.shift_low)

    def jaw_angle(self, opening: Tensor) -> Tensor:
        return Fn.softplus(self.jaw_gain) * Fn.softplus(opening.float() - self.rest_opening)

    def gap(self, opening: Tensor) -> Tensor:
        """How transparent ``[F, M G]`` the face's gap Gaussians (``gap_gaussians``) are at
        ``opening [F]``: 0 for a shut mouth, up to each one's learned share wide open."""
        opened = Fn.softplus(4.0 * (opening.float() - self.rest_opening)) / 4.0
        amount = 1 - torch.exp(-Fn.softplus(self.gap_gain) * opened)                    # [F]
        share = torch.sigmoid(self.gap_logit).repeat_interleave(self.gaussians_per_texel)  # [M G]
        return amount[:, None] * share[None]

    def part_face(self, opacities: Tensor, opening: Tensor) -> Tensor:
        """The face's opacities ``[F, N]`` with the gap at the lips parted for ``opening [F]``."""
        idx = self.gap_gaussians
        out = opacities.clone()
        out[:, idx] = opacities[:, idx] * (1 - self.gap(opening).to(opacities))
        return out

    def forward(self, opening: Tensor):
        F = opening.shape[0]
        R = _rot_x(self.jaw_angle(opening))                                             # [F, 3, 3]
        turned = torch.einsum("fij,nj->fni", R, self.rest - self.hinge) + self.hinge    # [F, n, 3]
        w = self.on_jaw[None, :, None]
        means = self.rest[None] + w * (turned - self.rest[None]) + self.shift()
        n = len(self.rest)
        quats = self.unit_quat.expand(F, n, 4)
        scales = self.log_size.exp()[None, :, None].expand(F, n, 3)
        opac = torch.sigmoid(self.opacity_logit)[None].expand(F, n)
        colors = torch.sigmoid(self.colour_logit)[None].expand(F, n, 3)
        return means, quats, scales, opac, colors
