"""The Gaussian generative prior: load it, sample latents, turn latents into Gaussians.

    import dgtalker.prior as prior
    G = prior.load_prior("prior.safetensors")
    w = prior.sample_w(4, G, truncation=0.7, seed=0)        # [4, D]
    means, quats, scales, opacities, colors = prior.gaussians(w, G)

``load_prior()`` with no path loads the prior shipped with the package
(``dgtalker/models/assets/prior_default.safetensors``, trained by ``dgtalker
pretrain-prior`` on the synthetic multi-identity corpus; see docs/benchmarks.md). An
installation without that file raises ``NoDefaultPriorError``; random weights are
never passed off as a prior.
"""
from __future__ import annotations

from pathlib import Path

from .checkpoint import PriorCheckpointError, load_prior as _load_checkpoint, save_prior  # noqa: F401

DEFAULT_PRIOR_PATH = Path(__file__).parent / "models" / "assets" / "prior_default.safetensors"

_default = None


class NoDefaultPriorError(FileNotFoundError):
    """This installation ships no trained default prior."""


def load_prior(path=None, *, device=None):
    """The prior ``Generator`` stored at ``path``, or the shipped default if ``path`` is None."""
    if path is None:
        if not DEFAULT_PRIOR_PATH.exists():
            raise NoDefaultPriorError(
                "no default Gaussian prior is shipped with this version of dgtalker yet "
                f"(expected {DEFAULT_PRIOR_PATH}); pass the path of a prior checkpoint "
                "(dgtalker.checkpoint.save_prior writes one)")
        path = DEFAULT_PRIOR_PATH
    return _load_checkpoint(path, device=device)


def _resolve(generator):
    global _default
    if generator is not None:
        from .models.generator import Generator

        if not isinstance(generator, Generator):
            raise TypeError(f"generator must be a dgtalker.models.Generator or None, got {type(generator).__name__}")
        return generator
    if _default is None:
        _default = load_prior()
    return _default


def sample_w(n: int, generator=None, *, truncation: float = 1.0, seed: int | None = None, rng=None):
    """``n`` latents ``w [n, D]`` of the prior (the shipped default if ``generator`` is None).

    ``truncation`` psi pulls samples towards the mean latent,
    ``w = w_mean + psi * (mapping(z) - w_mean)``: 1 keeps the full distribution, 0
    gives the mean head, values in between trade variety for typicality. ``seed``
    (an int) or ``rng`` (a ``torch.Generator``) makes the draw reproducible."""
    return _resolve(generator).sample_w(n, truncation=truncation, seed=seed, rng=rng)


def gaussians(w, generator=None):
    """Rasterizer-ready Gaussians of latents ``w [F, D]``: (means [F,N,3], quats [F,N,4],
    scales [F,N,3], opacities [F,N], colors [F,N,3]), differentiable in ``w``."""
    return _resolve(generator).gaussians(w)
