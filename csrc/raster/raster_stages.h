// One element of each pipeline stage, shared by the CPU and CUDA drivers: the
// drivers only decide how elements are scheduled (thread-pool loop or CUDA grid) and
// how results are reduced (serial sums or warp reductions plus atomics).
#pragma once

#include "raster.h"
#include "raster_math.h"

namespace dgt::raster {

// Row of the per-Gaussian inputs used by splat p = b * N + g.
DGT_HD int64_t gaussian_row(const RasterConfig& cfg, int64_t p) {
  return cfg.per_image ? p : p % cfg.num_gaussians;
}

DGT_HD Splat load_splat(const float* proj, int64_t p) {
  const float* s = proj + p * kProjStride;
  Splat sp;
  sp.mean = {s[0], s[1]};
  sp.conic = {s[2], s[3], s[4]};
  sp.opacity = s[5];
  sp.depth = s[6];
  sp.cov = {0.f, 0.f, 0.f};
  return sp;
}

// Projects splat p, writes its record and tile count. Returns InvalidInput flags.
DGT_HD int project_stage(const RasterParams& P, int64_t p) {
  const RasterConfig& cfg = P.cfg;
  const int64_t b = p / cfg.num_gaussians;
  const int64_t row = gaussian_row(cfg, p);
  const float* m = P.means + row * 3;
  const float* q = P.quats + row * 4;
  const float* s = P.scales + row * 3;
  const float o = P.opacities[row];
  const Vec3 mean{m[0], m[1], m[2]};
  const Vec4 quat{q[0], q[1], q[2], q[3]};
  const Vec3 scale{s[0], s[1], s[2]};

  int invalid = 0;
  if (!(finite(mean.x) && finite(mean.y) && finite(mean.z))) invalid |= kBadMeans;
  const float qn2 = quat.w * quat.w + quat.x * quat.x + quat.y * quat.y + quat.z * quat.z;
  if (!(finite(qn2) && qn2 > 1e-24f)) invalid |= kBadQuats;
  if (!(finite(scale.x) && finite(scale.y) && finite(scale.z) && scale.x >= 0.f &&
        scale.y >= 0.f && scale.z >= 0.f))
    invalid |= kBadScales;
  if (!(o >= 0.f && o <= 1.f)) invalid |= kBadOpacities;
  const float* c = P.colors + row * cfg.channels;
  for (int k = 0; k < cfg.channels; ++k)
    if (!finite(c[k])) invalid |= kBadColors;
  const Camera cam = load_camera(P.viewmats + b * 16, P.Ks + b * 9);
  if (!cam.valid) invalid |= kBadCameras;

  float* out = P.proj + p * kProjStride;
  Splat sp;
  Coverage cov;
  int count = 0;
  if (!invalid &&
      project_gaussian(mean, quat, scale, o, cam, cfg.width, cfg.height, cfg.near_plane,
                       cfg.far_plane, sp)) {
    // derive the footprint from the stored conic, exactly as the emit stage will
    float det;
    sp.cov = invert_sym2(sp.conic, det);
    if (splat_coverage(sp, cfg.width, cfg.height, cov)) count = count_tiles(cov);
  }
  if (count > 0) {
    out[0] = sp.mean.x;
    out[1] = sp.mean.y;
    out[2] = sp.conic.a;
    out[3] = sp.conic.b;
    out[4] = sp.conic.c;
    out[5] = sp.opacity;
    out[6] = sp.depth;
    out[7] = 0.f;
  } else {
    for (int k = 0; k < kProjStride; ++k) out[k] = 0.f;
  }
  P.counts[p] = count;
  return invalid;
}

DGT_HD uint32_t depth_bits(float z) {  // z > 0: IEEE order equals numeric order
  union {
    float f;
    uint32_t u;
  } v;
  v.f = z;
  return v.u;
}

DGT_HD uint64_t sentinel_key(const RasterConfig& cfg) {
  return uint64_t(cfg.batch) * uint64_t(cfg.num_tiles()) << 32;
}

// Writes the (key, value) pairs of splat p into slots [offset - count, offset).
DGT_HD void emit_stage(const RasterParams& P, int64_t p) {
  const int count = P.counts[p];
  if (count == 0) return;
  const RasterConfig& cfg = P.cfg;
  const int64_t b = p / cfg.num_gaussians;
  const float* s = P.proj + p * kProjStride;
  Splat sp;
  sp.mean = {s[0], s[1]};
  sp.conic = {s[2], s[3], s[4]};
  sp.opacity = s[5];
  float det;
  sp.cov = invert_sym2(sp.conic, det);
  Coverage cov;
  splat_coverage(sp, cfg.width, cfg.height, cov);
  const uint64_t depth_key = depth_bits(s[6]);
  const uint64_t tile_base = uint64_t(b) * uint64_t(cfg.num_tiles());
  const int tiles_x = cfg.tiles_x();
  const int64_t end = P.offsets[p];
  const int64_t stop = end < cfg.capacity ? end : cfg.capacity;
  int64_t slot = end - count;
  for_each_tile_span(cov, [&](int ty, int tx0, int tx1) {
    for (int tx = tx0; tx <= tx1 && slot < stop; ++tx, ++slot) {
      P.keys_unsorted[slot] = ((tile_base + uint64_t(ty) * tiles_x + tx) << 32) | depth_key;
      P.values_unsorted[slot] = int32_t(p);
    }
  });
  // Never leave a counted slot unwritten, even if rounding ever made this walk
  // shorter than the count.
  for (; slot < stop; ++slot) {
    P.keys_unsorted[slot] = sentinel_key(cfg);
    P.values_unsorted[slot] = int32_t(cfg.num_splats());
  }
}

// Marks slot i (at or past the total) unused.
DGT_HD void sentinel_stage_unused(const RasterParams& P, int64_t i) {
  P.keys_unsorted[i] = sentinel_key(P.cfg);
  P.values_unsorted[i] = int32_t(P.cfg.num_splats());
}

// Records where the run of (image, tile) starting or ending at sorted slot i lies.
DGT_HD void ranges_stage(const RasterParams& P, int64_t i) {
  const int64_t n = P.cfg.capacity;
  const uint64_t bt = uint64_t(P.cfg.batch) * uint64_t(P.cfg.num_tiles());
  const uint64_t tile = P.keys_sorted[i] >> 32;
  if (tile >= bt) return;
  if (i == 0 || (P.keys_sorted[i - 1] >> 32) != tile) P.tile_ranges[tile * 2] = int32_t(i);
  if (i == n - 1 || (P.keys_sorted[i + 1] >> 32) != tile) P.tile_ranges[tile * 2 + 1] = int32_t(i + 1);
}

// dL/dalpha of splat k for one pixel, walking back to front.
//   T        transmittance in front of splat k
//   ra       1 / (1 - alpha_k)
//   acc      sum over splats behind k of feature * alpha * T (per channel; depth last)
template <int MAXC>
DGT_HD float blend_alpha_vjp(int C, float T, float ra, const float* feat, float depth,
                             const float* acc, float acc_depth, const float* v_img, float v_depth,
                             float T_final, float v_alpha_out) {
  float v = 0.f;
#pragma unroll
  for (int c = 0; c < MAXC; ++c)
    if (c < C) v += (feat[c] * T - acc[c] * ra) * v_img[c];
  v += (depth * T - acc_depth * ra) * v_depth;
  v += T_final * ra * v_alpha_out;
  return v;
}

// Final per-pixel outputs from the blend sums: background behind what is left of
// the transmittance, and the expected depth (weighted depth over alpha).
DGT_HD float pixel_expected_depth(float T, float depth_sum) {
  const float a = 1.f - T;
  return a > kDepthAlphaMin ? depth_sum / a : 0.f;
}

// Gradients of the per-pixel outputs w.r.t. the blend sums. The background and
// the depth normalization both depend on alpha = 1 - T_final, so their terms fold
// into the alpha gradient; v_depth_sum is the gradient of sum(w_i z_i).
struct PixelOutputGrad {
  float v_depth_sum, v_alpha;
};

template <int MAXC>
DGT_HD PixelOutputGrad pixel_outputs_vjp(int C, float T_final, float depth_sum, const float* v_img,
                                         float v_alpha, float v_depth, const float* bg) {
  PixelOutputGrad g{0.f, v_alpha};
  const float a = 1.f - T_final;
  if (a > kDepthAlphaMin) {
    g.v_depth_sum = v_depth / a;
    g.v_alpha -= v_depth * depth_sum / (a * a);
  }
  if (bg != nullptr) {
#pragma unroll
    for (int c = 0; c < MAXC; ++c)
      if (c < C) g.v_alpha -= bg[c] * v_img[c];
  }
  return g;
}

// Splat p's 2D gradients (row of grad2d) -> gradients of its 3D parameters.
DGT_HD void project_backward_stage(const RasterParams& P, int64_t p) {
  const RasterConfig& cfg = P.cfg;
  const int K = cfg.grad2d_stride();
  const float* g = P.grad2d + p * K;
  float* vm = P.v_means + p * 3;
  float* vq = P.v_quats + p * 4;
  float* vs = P.v_scales + p * 3;
  if (P.counts[p] == 0) {
    for (int k = 0; k < 3; ++k) vm[k] = vs[k] = 0.f;
    for (int k = 0; k < 4; ++k) vq[k] = 0.f;
    return;
  }
  const int64_t b = p / cfg.num_gaussians;
  const int64_t row = gaussian_row(cfg, p);
  const float* m = P.means + row * 3;
  const float* q = P.quats + row * 4;
  const float* s = P.scales + row * 3;
  const Camera cam = load_camera(P.viewmats + b * 16, P.Ks + b * 9);
  const GaussianGrad3D r = project_gaussian_vjp(
      {m[0], m[1], m[2]}, {q[0], q[1], q[2], q[3]}, {s[0], s[1], s[2]}, cam, cfg.width,
      cfg.height, {g[0], g[1]}, {g[2], g[3], g[4]}, g[6 + cfg.channels]);
  vm[0] = r.mean.x;
  vm[1] = r.mean.y;
  vm[2] = r.mean.z;
  vq[0] = r.quat.w;
  vq[1] = r.quat.x;
  vq[2] = r.quat.y;
  vq[3] = r.quat.z;
  vs[0] = r.scale.x;
  vs[1] = r.scale.y;
  vs[2] = r.scale.z;
}

}  // namespace dgt::raster
