"""Dense PyTorch references of the engine's kernels, for tests and for users who
want to check results. Each mirrors a public op by name and signature."""
from dgtalker.ops.decode_ref import decode_gaussians
from dgtalker.ops.latent_ref import compose_latent
from dgtalker.ops.raster_ref import rasterize

__all__ = ["rasterize", "compose_latent", "decode_gaussians"]
