"""compose_latent: the engine (CPU, and CUDA when present) against the dense reference."""
import pytest
import torch

from dgtalker import reference
from dgtalker.ops.latent import compose_latent

NAMES = ("w_can", "B_exp", "B_lip", "c_exp", "c_lip", "affine_weight", "affine_bias")


def inputs(F=5, D=48, Ke=6, Kl=4, S=70, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = ((D,), (Ke, D), (Kl, D), (F, Ke), (F, Kl), (S, D), (S,))
    return [torch.randn(s, generator=g) for s in shapes]


def run(fn, args, device, dtype):
    xs = [a.detach().to(device=device, dtype=dtype).requires_grad_(True) for a in args]
    w, styles = fn(*xs)
    g = torch.Generator().manual_seed(7)
    loss = (styles * torch.randn(styles.shape, generator=g).to(device, dtype)).sum() + \
        (w * torch.randn(w.shape, generator=g).to(device, dtype)).sum()
    loss.backward()
    return [w.detach().double().cpu(), styles.detach().double().cpu()], [x.grad.double().cpu() for x in xs]


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("F,D,Ke,Kl,S", [(5, 48, 6, 4, 70), (1, 512, 32, 16, 300), (17, 64, 0, 8, 130),
                                         (9, 33, 5, 0, 1)])
def test_matches_reference(device, F, D, Ke, Kl, S):
    args = inputs(F, D, Ke, Kl, S, seed=F + D)
    out_e, grad_e = run(compose_latent, args, device, torch.float32)
    out_r, grad_r = run(reference.compose_latent, args, "cpu", torch.float64)
    for a, b in zip(out_e, out_r):
        # float32 dot products over D <= 512 terms of unit-variance products
        assert (a - b).abs().max() <= 1e-4 * max(1.0, b.abs().max().item())
    for name, a, b in zip(NAMES, grad_e, grad_r):
        if b.numel() == 0:
            assert a.numel() == 0
            continue
        err = ((a - b).norm() / b.norm()).item()
        assert err < 1e-5, f"grad of {name}: relative error {err:.3g}"


@pytest.mark.gpu
def test_cuda_backward_is_deterministic():
    args = inputs(33, 256, 20, 12, 900, seed=3)
    g1 = run(compose_latent, args, "cuda", torch.float32)[1]
    g2 = run(compose_latent, args, "cuda", torch.float32)[1]
    for a, b in zip(g1, g2):
        assert torch.equal(a, b)


@pytest.mark.parametrize("index,bad,pattern", [
    (0, torch.randn(4, 4), "w_can must have 1 dimensions"),
    (1, torch.randn(6, 47), r"B_exp must have shape \[6, 48\]"),
    (3, torch.randn(5, 7), r"c_exp must have shape \[5, 6\]"),
    (4, torch.randn(4, 4), r"c_lip must have shape \[5, 4\]"),
    (6, torch.randn(69), r"affine_bias must have shape \[70\]"),
])
def test_bad_shapes(index, bad, pattern):
    args = inputs()
    args[index] = bad
    with pytest.raises(ValueError, match=pattern):
        compose_latent(*args)


def test_bad_dtype():
    args = inputs()
    args[5] = args[5].double()
    with pytest.raises(TypeError, match="affine_weight must have dtype torch.float32"):
        compose_latent(*args)
