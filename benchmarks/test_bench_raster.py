"""CPU checks of the benchmark's own logic (no GPU needed):
    python -m pytest benchmarks/test_bench_raster.py -q
"""
from __future__ import annotations

import math
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_raster  # noqa: E402
import raster_backends as rb  # noqa: E402
import raster_scene  # noqa: E402


@pytest.mark.parametrize("per_image", [False, True])
def test_scene_shapes_and_ranges(per_image):
    b, n = 3, 2000
    s = raster_scene.make_scene(n, 256, b, per_image=per_image, seed=1)
    lead = (b,) if per_image else ()
    assert s.means.shape == lead + (n, 3)
    assert s.quats.shape == lead + (n, 4)
    assert s.scales.shape == lead + (n, 3)
    assert s.opacities.shape == lead + (n,)
    assert s.colors.shape == lead + (n, 3)
    assert s.viewmats.shape == (b, 4, 4) and s.Ks.shape == (b, 3, 3)
    for t in s.gaussian_tensors():
        assert t.dtype == torch.float32 and torch.isfinite(t).all()
    assert torch.allclose(s.quats.norm(dim=-1), torch.ones(()), atol=1e-5)
    assert (s.opacities > 0.05).all() and (s.opacities < 1).all()
    assert (s.colors > 0).all() and (s.colors < 1).all()
    # Log-uniform in s0 * [1/e, e] (s0 = 0.8 x point spacing), x1.2 for the per-image jitter.
    s0 = s.info["s0_m"]
    assert s.scales.min() > s0 / math.e / 1.2 and s.scales.max() < s0 * math.e * 1.2
    big = raster_scene.make_scene(100_000, 512, 1, seed=1)
    assert 0.5e-3 < big.info["s0_m"] < 2e-3 and big.scales.max() < 4e-3  # a trained head: ~mm
    # On the shell: ellipsoid radius within the jitter (plus per-image jitter).
    r = (s.means / torch.tensor(raster_scene.HEAD_SEMI_AXES)).norm(dim=-1)
    assert r.min() > 0.9 and r.max() < 1.1
    # Not degenerate: values vary.
    assert s.means.std() > 0.01 and s.colors.std() > 0.1


def test_scene_deterministic_and_seeded():
    a = raster_scene.make_scene(500, 128, 2, per_image=True, seed=7)
    b = raster_scene.make_scene(500, 128, 2, per_image=True, seed=7)
    c = raster_scene.make_scene(500, 128, 2, per_image=True, seed=8)
    for x, y, z in zip(a.gaussian_tensors(), b.gaussian_tensors(), c.gaussian_tensors()):
        assert torch.equal(x, y) and not torch.equal(x, z)
    # Per-image sets really differ from image to image.
    assert not torch.equal(a.means[0], a.means[1])


def test_cameras_frame_the_head():
    s = raster_scene.make_scene(20000, 512, 1, seed=0)
    h, w = raster_scene.projected_extent(s)
    assert 0.75 < h < 0.9, h  # ~80% of the frame height
    assert w < h
    vm = s.viewmats[0]
    # OpenCV: the head centre is straight ahead (+z) of the camera.
    centre_cam = vm[:3, 3]
    assert centre_cam[2] > 0 and abs(centre_cam[0]) < 1e-6 and abs(centre_cam[1]) < 1e-6


def test_batch_cameras_yaw_and_are_rigid():
    vm, K = raster_scene.front_cameras(8, 512, 512)
    R = vm[:, :3, :3]
    eye = torch.eye(3).expand(8, 3, 3)
    assert torch.allclose(R @ R.transpose(1, 2), eye, atol=1e-5)
    assert torch.allclose(torch.linalg.det(R), torch.ones(8), atol=1e-5)
    assert len({tuple(v.flatten().tolist()) for v in vm}) == 8  # 8 different cameras
    assert torch.allclose(K[:, 0, 2], torch.full((8,), 256.0))


def test_args_defaults_and_quick():
    a = bench_raster.parse_args([])
    assert a.n == [50000, 100000, 300000] and a.res == [512, 1024] and a.batch == [1, 8]
    assert a.libs == ["dgtalker", "gsplat"] and not a.no_profile
    q = bench_raster.parse_args(["--quick", "--no-profile", "--peers", "none"])
    assert q.n == [100000] and q.res == [512] and q.batch == [1] and q.libs == ["dgtalker"] and q.no_profile
    o = bench_raster.parse_args(["--only", "gsplat", "--n", "100000", "--res", "512", "--batch", "1"])
    assert o.libs == ["gsplat"]
    with pytest.raises(SystemExit):
        bench_raster.parse_args(["--peers", "inria"])


def test_configs_target_first_and_batch_sets():
    cfgs = bench_raster.configs(bench_raster.parse_args([]))
    c0 = cfgs[0]
    assert (c0["n"], c0["res"], c0["batch"], c0["set"]) == bench_raster.TARGET_CONFIG
    assert len(cfgs) == 3 * 2 * (1 + 2)
    assert not any(c["batch"] == 1 and c["set"] == "per-image" for c in cfgs)


@pytest.mark.parametrize("name,stage", [
    ("void gsplat::projection_ewa_3dgs_fused_fwd_kernel<float>(unsigned int, ...)", "projection"),
    ("void gsplat::projection_ewa_3dgs_fused_bwd_kernel<float>(...)", "projection"),
    ("void gsplat::intersect_tile_kernel<float>(...)", "sort/binning"),
    ("void gsplat::intersect_offset_kernel(...)", "sort/binning"),
    ("void cub::CUB_300000_SM_900_NS::DeviceRadixSortOnesweepKernel<...>(...)", "sort/binning"),
    ("void at_cuda_detail::cub::DeviceScanKernel<...>(...)", "sort/binning"),
    ("void gsplat::rasterize_to_pixels_3dgs_fwd_kernel<4u, float>(...)", "raster fwd"),
    ("void gsplat::rasterize_to_pixels_3dgs_bwd_kernel<4u, float>(...)", "raster bwd"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>>(...)", "other"),
    ("Memcpy DtoH (Device -> Pinned)", "other"),
    ("dgt::raster::(anonymous namespace)::project_kernel(dgt::raster::RasterParams)", "projection"),
    ("dgt::raster::(anonymous namespace)::project_backward_kernel(dgt::raster::RasterParams)", "projection"),
    ("dgt::raster::(anonymous namespace)::total_kernel(dgt::raster::RasterParams)", "sort/binning"),
    ("dgt::raster::(anonymous namespace)::emit_kernel(dgt::raster::RasterParams)", "sort/binning"),
    ("dgt::raster::(anonymous namespace)::sentinel_kernel(dgt::raster::RasterParams)", "sort/binning"),
    ("dgt::raster::(anonymous namespace)::ranges_kernel(dgt::raster::RasterParams)", "sort/binning"),
    ("dgt::raster::(anonymous namespace)::blend_forward_kernel(dgt::raster::RasterParams)", "raster fwd"),
    ("dgt::raster::(anonymous namespace)::blend_backward_kernel(dgt::raster::RasterParams)", "raster bwd"),
    ("dgt::raster::(anonymous namespace)::slot_keys_kernel(dgt::raster::RasterParams)", "raster bwd"),
    ("dgt::raster::(anonymous namespace)::reduce_slots_kernel(dgt::raster::RasterParams)", "raster bwd"),
])
def test_stage_map(name, stage):
    assert rb.stage_of(name) == stage


def test_report_and_ratios():
    def rec(scale):
        return {"fwd_wall_ms": {"median": 1.0 * scale}, "fb_wall_ms": {"median": 2.0 * scale},
                "fwd_stages_ms": {"total": 0.3 * scale}, "fb_stages_ms": dict.fromkeys(rb.STAGES, 0.1 * scale) | {"total": 0.5 * scale},
                "fwd_peak_mib": 10.0 * scale, "fb_peak_mib": 20.0 * scale}
    a, b = rec(0.4), rec(1.0)
    r = bench_raster.ratios(a, b)
    assert math.isclose(r["fb_wall"], 0.4) and math.isclose(r["fb_kernel"], 0.4)
    res = [{"config": {"n": 100000, "res": 512, "batch": 1, "set": "shared"},
            "libs": {"dgtalker": a, "gsplat": b}, "ratio": r}]
    md = bench_raster.markdown(res, ["dgtalker", "gsplat"])
    assert "dgt/gsplat" in md and md.count("\n| 100k") == 3
    assert all("PASS" in line for line in bench_raster.target_lines(res))
    short = rb.short_kernel_name("void gsplat::rasterize_to_pixels_3dgs_fwd_kernel<4u, float>(unsigned int, float const*)")
    assert short == "gsplat::rasterize_to_pixels_3dgs_fwd_kernel<>()"
