"""The mouth interior: teeth, tongue and the dark cavity behind the lips.

The prior's Gaussians sit on the head template's surface and reach inside the mouth
only through bounded offsets, so an open mouth renders as a dark slot. This module adds
a small fixed set of Gaussians in the head frame (metres, the template's frame), shaped
like the synthetic corpus' mouth (``dgtalker.data.synthetic.head``):

- the upper teeth, an arc of two rows fixed to the skull;
- the lower teeth and the tongue, fixed to the jaw, which turns about the corpus' hinge
  by an angle that grows with the talker's first lip coefficient (the tracked mouth
  opening, standardised, when training pins it: ``--lip-target``);
- the cavity, a dark wall behind them.

Closed lips hide it (they are in front); as the lips part it shows and turns with the
head. What is learned per talker: each Gaussian's colour and opacity, one shift of the
whole interior within ``MAX_SHIFT`` (the person's mouth is not exactly the template's),
and the jaw's gain and rest opening.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as Fn
from torch import Tensor, nn

MOUTH_Y = -0.052                  # the template's lip line (the corpus' mouth corners)
HINGE = (0.0, -0.012, -0.02)      # the corpus' jaw hinge
PARTS = ("upper_teeth", "lower_teeth", "tongue", "cavity")
COLOURS = {"upper_teeth": (0.85, 0.82, 0.74), "lower_teeth": (0.82, 0.78, 0.70), "tongue": (0.55, 0.25, 0.26),
           "cavity": (0.06, 0.03, 0.03)}
SIZES = {"upper_teeth": 0.0022, "lower_teeth": 0.0022, "tongue": 0.003, "cavity": 0.004}
# how far the interior may move from the template's mouth (metres, per axis). Unbounded, a
# shift trained at the interior's rate drifted 28 cm into the head on a real clip, and no
# tooth showed
MAX_SHIFT = 0.01


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


def interior_points(z_front: float) -> dict[str, Tensor]:
    """Rest positions ``{part: [n, 3]}`` of the interior's Gaussians for a face whose lip
    line's front is at depth ``z_front``."""
    my = MOUTH_Y
    upper = _arc(z_front - 0.0075, 0.027, (my + 0.008, my + 0.003))
    lower = _arc(z_front - 0.0095, 0.025, (my - 0.004, my - 0.009))
    # the tongue's upper surface: an ellipse of (1.5 cm, 1.6 cm) half-axes, 0.5 cm high
    u, v = torch.meshgrid(torch.linspace(-0.8, 0.8, 7), torch.linspace(-0.8, 0.8, 6), indexing="ij")
    u, v = u.reshape(-1), v.reshape(-1)
    tongue = torch.stack([0.015 * u, my - 0.0075 + 0.005 * (1 - u ** 2 - v ** 2).clamp_min(0).sqrt(),
                          z_front - 0.026 + 0.016 * v], -1)
    x, y = torch.meshgrid(torch.linspace(-0.02, 0.02, 9), torch.linspace(my - 0.02, my + 0.012, 7), indexing="ij")
    cavity = torch.stack([x.reshape(-1), y.reshape(-1), torch.full((x.numel(),), z_front - 0.035)], -1)
    return {"upper_teeth": upper, "lower_teeth": lower, "tongue": tongue, "cavity": cavity}


def _rot_x(angle: Tensor) -> Tensor:
    """``[F, 3, 3]`` rotations about x by ``angle [F]`` (radians; positive opens the jaw)."""
    c, s = torch.cos(angle), torch.sin(angle)
    one, zero = torch.ones_like(c), torch.zeros_like(c)
    return torch.stack([torch.stack([one, zero, zero], -1), torch.stack([zero, c, -s], -1),
                        torch.stack([zero, s, c], -1)], -2)


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


class MouthInterior(nn.Module):
    """``mouth(opening [F]) -> (means, quats, scales, opacities, colors) [F, n, ...]`` in
    the head frame; ``opening`` is the talker's first lip coefficient."""

    def __init__(self, template_position: Tensor):
        super().__init__()
        pts = interior_points(mouth_front_z(template_position))
        rest = torch.cat([pts[p] for p in PARTS])
        part = torch.cat([torch.full((len(pts[p]),), k) for k, p in enumerate(PARTS)])
        # geometry follows from the template (in the generator): not saved with the talker
        self.register_buffer("rest", rest, persistent=False)
        self.register_buffer("part", part, persistent=False)
        self.register_buffer("log_size", torch.log(torch.tensor([SIZES[PARTS[k]] for k in part.tolist()])),
                             persistent=False)
        # constants the forward needs on the module's device: made there from host data, they
        # would copy from the host on every call, which a CUDA graph capture refuses
        self.register_buffer("hinge", torch.tensor(HINGE), persistent=False)
        self.register_buffer("on_jaw", ((part == PARTS.index("lower_teeth")) | (part == PARTS.index("tongue"))).float(),
                             persistent=False)
        self.register_buffer("unit_quat", torch.tensor([1.0, 0.0, 0.0, 0.0]), persistent=False)
        colour = torch.tensor([COLOURS[PARTS[k]] for k in part.tolist()])
        self.colour_logit = nn.Parameter(torch.logit(colour))
        self.opacity_logit = nn.Parameter(torch.full((len(rest),), _logit(0.95)))
        self.shift_unit = nn.Parameter(torch.zeros(3))  # the shift is MAX_SHIFT * tanh(shift_unit)
        # jaw angle = softplus(gain) * softplus(opening - rest_opening): about 0.04 rad for a
        # shut mouth (standardised opening -1) and 0.18 rad (10 degrees) for a wide one (+2)
        self.jaw_gain = nn.Parameter(torch.tensor(math.log(math.expm1(0.06))))
        self.rest_opening = nn.Parameter(torch.tensor(-1.0))

    def __len__(self) -> int:
        return len(self.rest)

    def shift(self) -> Tensor:
        """The interior's shift from the template's mouth ``[3]`` (metres, within ``MAX_SHIFT``)."""
        return MAX_SHIFT * torch.tanh(self.shift_unit)

    def jaw_angle(self, opening: Tensor) -> Tensor:
        return Fn.softplus(self.jaw_gain) * Fn.softplus(opening.float() - self.rest_opening)

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
