// Backend-independent parts of the rasterizer driver: validation and buffer layout.
#include <algorithm>

#include "../common/check.h"
#include "raster.h"

namespace dgt::raster {

namespace {

size_t align_up(size_t n) { return (n + 255) & ~size_t(255); }

struct Carver {
  size_t used = 0;
  size_t take(size_t bytes) {
    const size_t at = used;
    used = align_up(used + bytes);
    return at;
  }
};

template <typename T>
T* at(uintptr_t base, size_t offset) {
  return reinterpret_cast<T*>(base + offset);
}

}  // namespace

void RasterConfig::validate() const {
  DGT_REQUIRE(batch >= 1, "batch must be >= 1, got ", batch);
  DGT_REQUIRE(num_gaussians >= 0, "num_gaussians must be >= 0, got ", num_gaussians);
  DGT_REQUIRE(channels >= 1 && channels <= kMaxChannels, "channels must be in [1, ", kMaxChannels,
              "], got ", channels);
  DGT_REQUIRE(width >= 1 && height >= 1 && width <= 16384 && height <= 16384,
              "width and height must be in [1, 16384], got ", width, "x", height);
  DGT_REQUIRE(near_plane > 0.f && far_plane > near_plane,
              "need 0 < near < far, got near=", near_plane, " far=", far_plane);
  DGT_REQUIRE(capacity >= 1, "capacity must be >= 1, got ", capacity);
  DGT_REQUIRE(num_splats() < (int64_t(1) << 31) - 1, "batch * num_gaussians too large: ",
              num_splats());
  DGT_REQUIRE(capacity < (int64_t(1) << 31) - 1, "capacity too large: ", capacity);
  DGT_REQUIRE(batch * num_tiles() < (int64_t(1) << 31) - 1, "too many tiles in the batch");
}

int sort_end_bit(const RasterConfig& cfg) {
  // +1 value so the sentinel (image, tile) = (B * tiles) sorts after every real key
  return 32 + bit_length(uint64_t(cfg.batch * cfg.num_tiles()));
}

Layout make_layout(const RasterConfig& cfg, size_t fwd_temp_bytes, size_t bwd_temp_bytes) {
  cfg.validate();
  const size_t P = cfg.num_splats(), cap = cfg.capacity, px = cfg.num_pixels();
  const size_t bt = cfg.batch * cfg.num_tiles();
  Layout l{};
  Carver s;
  l.proj = s.take(P * kProjStride * sizeof(float));
  l.counts = s.take(P * sizeof(int64_t));
  l.offsets = s.take(P * sizeof(int64_t));
  l.values = s.take(cap * sizeof(int32_t));
  l.tile_ranges = s.take(bt * 2 * sizeof(int32_t));
  l.last = s.take(px * sizeof(int32_t));
  l.transmittance = s.take(px * sizeof(float));
  l.depth_sum = s.take(px * sizeof(float));
  l.status = s.take(kStatusWords * sizeof(int64_t));
  l.state_bytes = s.used;

  Carver f;
  l.keys_unsorted = f.take(cap * sizeof(uint64_t));
  l.keys_sorted = f.take(cap * sizeof(uint64_t));
  l.values_unsorted = f.take(cap * sizeof(int32_t));
  l.fwd_temp = f.take(fwd_temp_bytes);
  l.fwd_scratch_bytes = f.used;

  Carver b;
  if (cfg.deterministic) {
    l.isect_grad = b.take(cap * cfg.grad2d_stride() * sizeof(float));
    l.gkeys_in = b.take(cap * sizeof(int32_t));
    l.gkeys_out = b.take(cap * sizeof(int32_t));
    l.gvals_in = b.take(cap * sizeof(int32_t));
    l.gvals_out = b.take(cap * sizeof(int32_t));
    l.bwd_temp = b.take(bwd_temp_bytes);
  }
  l.bwd_scratch_bytes = std::max<size_t>(b.used, 256);
  return l;
}

namespace {

void fill_inputs(RasterParams& p, const RasterConfig& cfg, uintptr_t means, uintptr_t quats,
                 uintptr_t scales, uintptr_t opacities, uintptr_t colors, uintptr_t viewmats,
                 uintptr_t Ks, uintptr_t background) {
  p.cfg = cfg;
  p.sort_end_bit = sort_end_bit(cfg);
  p.means = reinterpret_cast<const float*>(means);
  p.quats = reinterpret_cast<const float*>(quats);
  p.scales = reinterpret_cast<const float*>(scales);
  p.opacities = reinterpret_cast<const float*>(opacities);
  p.colors = reinterpret_cast<const float*>(colors);
  p.viewmats = reinterpret_cast<const float*>(viewmats);
  p.Ks = reinterpret_cast<const float*>(Ks);
  p.background = reinterpret_cast<const float*>(background);
}

void fill_state(RasterParams& p, const Layout& l, uintptr_t state) {
  p.proj = at<float>(state, l.proj);
  p.counts = at<int64_t>(state, l.counts);
  p.offsets = at<int64_t>(state, l.offsets);
  p.values = at<int32_t>(state, l.values);
  p.tile_ranges = at<int32_t>(state, l.tile_ranges);
  p.last = at<int32_t>(state, l.last);
  p.transmittance = at<float>(state, l.transmittance);
  p.depth_sum = at<float>(state, l.depth_sum);
  p.status = at<int64_t>(state, l.status);
}

}  // namespace

RasterParams make_forward_params(const RasterConfig& cfg, const Layout& l, const ForwardBuffers& b) {
  RasterParams p{};
  fill_inputs(p, cfg, b.means, b.quats, b.scales, b.opacities, b.colors, b.viewmats, b.Ks, b.background);
  fill_state(p, l, b.state);
  p.keys_unsorted = at<uint64_t>(b.scratch, l.keys_unsorted);
  p.keys_sorted = at<uint64_t>(b.scratch, l.keys_sorted);
  p.values_unsorted = at<int32_t>(b.scratch, l.values_unsorted);
  p.fwd_temp = at<void>(b.scratch, l.fwd_temp);
  p.fwd_temp_bytes = l.fwd_scratch_bytes - l.fwd_temp;
  p.image = reinterpret_cast<float*>(b.image);
  p.alpha = reinterpret_cast<float*>(b.alpha);
  p.depth = reinterpret_cast<float*>(b.depth);
  return p;
}

RasterParams make_backward_params(const RasterConfig& cfg, const Layout& l, const BackwardBuffers& b) {
  RasterParams p{};
  fill_inputs(p, cfg, b.means, b.quats, b.scales, b.opacities, b.colors, b.viewmats, b.Ks, b.background);
  fill_state(p, l, b.state);
  p.v_image = reinterpret_cast<const float*>(b.v_image);
  p.v_alpha = reinterpret_cast<const float*>(b.v_alpha);
  p.v_depth = reinterpret_cast<const float*>(b.v_depth);
  p.grad2d = reinterpret_cast<float*>(b.grad2d);
  p.v_means = reinterpret_cast<float*>(b.v_means);
  p.v_quats = reinterpret_cast<float*>(b.v_quats);
  p.v_scales = reinterpret_cast<float*>(b.v_scales);
  if (cfg.deterministic) {
    p.isect_grad = at<float>(b.scratch, l.isect_grad);
    p.gkeys_in = at<int32_t>(b.scratch, l.gkeys_in);
    p.gkeys_out = at<int32_t>(b.scratch, l.gkeys_out);
    p.gvals_in = at<int32_t>(b.scratch, l.gvals_in);
    p.gvals_out = at<int32_t>(b.scratch, l.gvals_out);
    p.bwd_temp = at<void>(b.scratch, l.bwd_temp);
    p.bwd_temp_bytes = l.bwd_scratch_bytes - l.bwd_temp;
  }
  return p;
}

}  // namespace dgt::raster
