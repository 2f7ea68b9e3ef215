// CPU driver of the rasterizer (std::thread, see common/parallel.h). Mirrors raster_cuda.cu stage by stage;
// the per-element work is the shared code in raster_stages.h.
//
// The CPU backward is always deterministic: every sorted slot's gradient is
// written by the one thread that owns its tile, and each splat then sums its
// slots in list order.
#include <algorithm>
#include <atomic>
#include <cstring>
#include <numeric>
#include <vector>

#include "../common/parallel.h"
#include "raster.h"
#include "raster_stages.h"

namespace dgt::raster {

namespace {

constexpr int64_t kSplatGrain = 8192;  // splats per work chunk
constexpr int64_t kTileGrain = 4;      // tiles per work chunk

RasterConfig cpu_config(RasterConfig cfg) {
  cfg.deterministic = true;  // the CPU backward always uses per-slot gradients
  return cfg;
}

// Front-to-back compositing of one tile's pixels.
void blend_tile(const RasterParams& P, int b, int ty, int tx) {
  const RasterConfig& cfg = P.cfg;
  const int C = cfg.channels, W = cfg.width, H = cfg.height;
  const int64_t tile = int64_t(b) * cfg.num_tiles() + int64_t(ty) * cfg.tiles_x() + tx;
  const int32_t start = P.tile_ranges[tile * 2], end = P.tile_ranges[tile * 2 + 1];
  for (int i = ty * kTileSize; i < std::min(H, (ty + 1) * kTileSize); ++i) {
    for (int j = tx * kTileSize; j < std::min(W, (tx + 1) * kTileSize); ++j) {
      const int64_t pix = (int64_t(b) * H + i) * W + j;
      float* out = P.image + pix * C;
      for (int c = 0; c < C; ++c) out[c] = 0.f;
      float T = 1.f, depth = 0.f;
      int32_t last = start;
      const float px = j + 0.5f, py = i + 0.5f;
      for (int32_t k = start; k < end; ++k) {
        const int64_t p = P.values[k];
        const Splat s = load_splat(P.proj, p);
        float gauss;
        const float alpha = splat_alpha(s.conic, s.opacity, px - s.mean.x, py - s.mean.y, gauss);
        if (alpha == 0.f) continue;
        const float next_T = T * (1.f - alpha);
        if (next_T < kTransmittanceMin) break;
        const float w = alpha * T;
        const float* feat = P.colors + gaussian_row(cfg, p) * C;
        for (int c = 0; c < C; ++c) out[c] += w * feat[c];
        depth += w * s.depth;
        T = next_T;
        last = k + 1;
      }
      if (P.background != nullptr)
        for (int c = 0; c < C; ++c) out[c] += T * P.background[b * C + c];
      P.alpha[pix] = 1.f - T;
      P.depth[pix] = pixel_expected_depth(T, depth);
      P.transmittance[pix] = T;
      P.depth_sum[pix] = depth;
      P.last[pix] = last;
    }
  }
}

// Back-to-front gradients of one tile's pixels into per-slot rows of isect_grad.
void blend_backward_tile(const RasterParams& P, int b, int ty, int tx) {
  const RasterConfig& cfg = P.cfg;
  const int C = cfg.channels, W = cfg.width, H = cfg.height, K = cfg.grad2d_stride();
  const int64_t tile = int64_t(b) * cfg.num_tiles() + int64_t(ty) * cfg.tiles_x() + tx;
  const int32_t start = P.tile_ranges[tile * 2];
  float acc[kMaxChannels];
  for (int i = ty * kTileSize; i < std::min(H, (ty + 1) * kTileSize); ++i) {
    for (int j = tx * kTileSize; j < std::min(W, (tx + 1) * kTileSize); ++j) {
      const int64_t pix = (int64_t(b) * H + i) * W + j;
      const float T_final = P.transmittance[pix];
      const float* v_img = P.v_image + pix * C;
      const PixelOutputGrad og = pixel_outputs_vjp<kMaxChannels>(
          C, T_final, P.depth_sum[pix], v_img, P.v_alpha ? P.v_alpha[pix] : 0.f,
          P.v_depth ? P.v_depth[pix] : 0.f,
          P.background ? P.background + b * C : nullptr);
      const float v_depth = og.v_depth_sum, v_alpha_out = og.v_alpha;
      const float px = j + 0.5f, py = i + 0.5f;
      float T = T_final, acc_depth = 0.f;
      for (int c = 0; c < C; ++c) acc[c] = 0.f;
      for (int32_t k = P.last[pix] - 1; k >= start; --k) {
        const int64_t p = P.values[k];
        const Splat s = load_splat(P.proj, p);
        const float dx = px - s.mean.x, dy = py - s.mean.y;
        float gauss;
        const float alpha = splat_alpha(s.conic, s.opacity, dx, dy, gauss);
        if (alpha == 0.f) continue;
        const float ra = 1.f / (1.f - alpha);
        T *= ra;  // transmittance in front of splat k
        const float w = alpha * T;
        const float* feat = P.colors + gaussian_row(cfg, p) * C;
        const float v_alpha = blend_alpha_vjp<kMaxChannels>(C, T, ra, feat, s.depth, acc, acc_depth,
                                                            v_img, v_depth, T_final, v_alpha_out);
        const SplatGrad2D g = splat_alpha_vjp(s.conic, s.opacity, gauss, dx, dy, v_alpha);
        float* out = P.isect_grad + int64_t(k) * K;
        out[0] += g.mean_x;
        out[1] += g.mean_y;
        out[2] += g.conic.a;
        out[3] += g.conic.b;
        out[4] += g.conic.c;
        out[5] += g.opacity;
        for (int c = 0; c < C; ++c) {
          out[6 + c] += w * v_img[c];
          acc[c] += w * feat[c];
        }
        out[6 + C] += w * v_depth;
        acc_depth += w * s.depth;
      }
    }
  }
}

}  // namespace

Layout cpu_layout(const RasterConfig& cfg) { return make_layout(cpu_config(cfg), 0, 0); }

void cpu_forward(const RasterParams& P) {
  const RasterConfig& cfg = P.cfg;
  const int64_t n = cfg.num_splats(), cap = cfg.capacity;

  std::atomic<int> invalid{0};
  parallel_for(n, kSplatGrain, [&](int64_t begin, int64_t end) {
    int flags = 0;
    for (int64_t p = begin; p < end; ++p) flags |= project_stage(P, p);
    invalid.fetch_or(flags);
  });

  int64_t total = 0;
  for (int64_t p = 0; p < n; ++p) P.offsets[p] = (total += P.counts[p]);
  P.status[kStatusTotal] = total;
  P.status[kStatusOverflow] = total > cap ? 1 : 0;
  P.status[kStatusInvalid] = invalid.load();
  P.status[3] = 0;

  parallel_for(n, kSplatGrain, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) emit_stage(P, p);
  });
  for (int64_t i = std::min(total, cap); i < cap; ++i) sentinel_stage_unused(P, i);

  // Stable sort keeps equal keys in emission (= splat index) order, like CUB's radix sort.
  std::vector<int32_t> order(cap);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return P.keys_unsorted[a] < P.keys_unsorted[b]; });
  for (int64_t i = 0; i < cap; ++i) {
    P.keys_sorted[i] = P.keys_unsorted[order[i]];
    P.values[i] = P.values_unsorted[order[i]];
  }

  const int64_t bt = cfg.batch * cfg.num_tiles();
  std::memset(P.tile_ranges, 0, sizeof(int32_t) * 2 * bt);
  for (int64_t i = 0; i < cap; ++i) ranges_stage(P, i);

  const int tx = cfg.tiles_x(), ty = cfg.tiles_y();
  parallel_for(bt, kTileGrain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) blend_tile(P, int(t / (tx * ty)), int(t / tx % ty), int(t % tx));
  });
}

void cpu_backward(const RasterParams& P0) {
  RasterParams P = P0;
  P.cfg = cpu_config(P0.cfg);
  const RasterConfig& cfg = P.cfg;
  const int64_t n = cfg.num_splats(), cap = cfg.capacity;
  const int K = cfg.grad2d_stride();
  const int64_t total = std::min<int64_t>(P.status[kStatusTotal], cap);

  std::memset(P.isect_grad, 0, sizeof(float) * K * total);
  const int tx = cfg.tiles_x(), ty = cfg.tiles_y();
  const int64_t bt = cfg.batch * cfg.num_tiles();
  parallel_for(bt, kTileGrain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t)
      blend_backward_tile(P, int(t / (tx * ty)), int(t / tx % ty), int(t % tx));
  });

  // Group slots by splat in list order (counting sort), then sum in that order.
  std::vector<int64_t> cursor(n);
  for (int64_t p = 0; p < n; ++p) cursor[p] = P.offsets[p] - P.counts[p];
  int32_t* slots = P.gkeys_in;
  std::fill(slots, slots + total, -1);
  for (int64_t i = 0; i < total; ++i) {
    const int32_t p = P.values[i];
    if (p < n && cursor[p] < total) slots[cursor[p]++] = int32_t(i);
  }
  parallel_for(n, kSplatGrain, [&](int64_t begin, int64_t end) {
  for (int64_t p = begin; p < end; ++p) {
    float* g = P.grad2d + p * K;
    for (int k = 0; k < K; ++k) g[k] = 0.f;
    const int64_t end = std::min<int64_t>(P.offsets[p], total);
    for (int64_t s = P.offsets[p] - P.counts[p]; s < end; ++s) {
      if (slots[s] < 0) continue;
      const float* src = P.isect_grad + int64_t(slots[s]) * K;
      for (int k = 0; k < K; ++k) g[k] += src[k];
    }
    project_backward_stage(P, p);
  }
  });
}

}  // namespace dgt::raster
