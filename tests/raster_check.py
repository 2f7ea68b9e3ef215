"""Comparison helpers: the engine against the dense reference, values and gradients."""
from __future__ import annotations

import torch

import dgtalker
from dgtalker import reference

# float32 engine vs float64 reference: per-pixel sums over a few hundred splats
# carry ~1e-6 relative rounding; 2e-4 absolute leaves room for depth (values ~3)
# without hiding a wrong splat (which moves pixels by >= 1/255 * colour).
VALUE_ATOL = 2e-4
# Gradients are sums of many per-pixel terms; compare as relative L2 error.
GRAD_RTOL = 2e-3

INPUT_NAMES = ("means", "quats", "scales", "opacities", "colors")


def loss_weights(outputs, seed=123):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(o.shape, generator=g) - 0.3 for o in outputs]


def run(fn, args, width, height, dtype, device="cpu", background=None, **kwargs):
    """Forward + backward of a fixed random-weighted loss; returns outputs and input grads."""
    xs = [a.detach().to(device=device, dtype=dtype).requires_grad_(i < 5) for i, a in enumerate(args)]
    bg = None
    if background is not None:
        bg = background.detach().to(device=device, dtype=dtype).requires_grad_(True)
    outputs = fn(*xs, width, height, background=bg, **kwargs)
    weights = loss_weights(outputs)
    loss = sum((o * w.to(device=device, dtype=dtype)).sum() for o, w in zip(outputs, weights))
    loss.backward()
    grads = [x.grad for x in xs[:5]] + ([bg.grad] if bg is not None else [])
    return [o.detach().double().cpu() for o in outputs], [g.double().cpu() for g in grads]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def assert_matches_reference(args, width, height, device="cpu", background=None, **kwargs):
    out_e, grad_e = run(dgtalker.rasterize, args, width, height, torch.float32, device, background, **kwargs)
    out_r, grad_r = run(reference.rasterize, args, width, height, torch.float64, "cpu", background)
    for name, a, b in zip(("image", "alpha", "depth"), out_e, out_r):
        assert torch.isfinite(a).all(), f"{name} has non-finite values"
        err = (a - b).abs().max().item()
        assert err <= VALUE_ATOL * max(1.0, b.abs().max().item()), f"{name}: max abs error {err:.3g}"
    names = INPUT_NAMES + (("background",) if background is not None else ())
    for name, a, b in zip(names, grad_e, grad_r):
        assert torch.isfinite(a).all(), f"grad of {name} has non-finite values"
        if b.norm() < 1e-9:
            assert a.norm() < 1e-6, f"grad of {name} should be ~0, norm {a.norm():.3g}"
        else:
            assert rel_err(a, b) <= GRAD_RTOL, f"grad of {name}: relative error {rel_err(a, b):.3g}"
    return out_e, grad_e
