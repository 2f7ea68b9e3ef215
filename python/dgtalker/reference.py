"""Dense PyTorch references of the engine's kernels, for tests and for users who
want to check results. Each mirrors a public op by name and signature."""
from dgtalker.ops.raster_ref import rasterize

__all__ = ["rasterize"]
