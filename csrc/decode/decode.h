// UV attribute maps + head template -> rasterizer-ready Gaussians, in one pass.
//
// raw [F, 14 G, R, R] (channels-first, as a convolution writes them). For valid
// texel m (flat UV index t = texel_index[m]) and Gaussian g, with c = 14 g:
//   offset    = raw[c:c+3] * offset_scale * size_m          (in the texel's frame)
//   mean      = position_m + rotate(frame_m, offset)
//   scale     = exp(raw[c+3:c+6] + log_size_m)
//   quat      = frame_m (x) normalize(raw[c+6:c+10] + (1, 0, 0, 0))
//   opacity   = sigmoid(raw[c+10]),  colour = sigmoid(raw[c+11:c+14])
// Output Gaussian n = m G + g. Each raw entry feeds exactly one output, so the
// backward writes dL/draw without atomics.
#pragma once

#include <cmath>
#include <cstdint>

#include "../common/vecmath.h"
#include "../raster/raster_math.h"

namespace dgt::decode {

constexpr int kChannelsPerGaussian = 14;

struct DecodeParams {
  int frames;       // F
  int texels;       // M valid texels
  int per_texel;    // G Gaussians per texel
  int resolution;   // R (maps are R x R)
  float offset_scale;

  const float* raw;          // [F, 14 G, R, R]
  const int64_t* texel_index;  // [M]
  const float* position;     // [M, 3]
  const float* frame;        // [M, 4] unit quaternions (w, x, y, z)
  const float* log_size;     // [M]

  float* means;      // [F, M G, 3]
  float* quats;      // [F, M G, 4]
  float* scales;     // [F, M G, 3]
  float* opacities;  // [F, M G]
  float* colors;     // [F, M G, 3]

  // backward (gradients of the outputs; any may be nullptr = zero)
  const float* v_means;
  const float* v_quats;
  const float* v_scales;
  const float* v_opacities;
  const float* v_colors;
  float* v_raw;      // [F, 14 G, R, R] (entries of invalid texels are zeroed by the caller)
};

struct DecodeBuffers {
  uintptr_t raw = 0, texel_index = 0, position = 0, frame = 0, log_size = 0;
  uintptr_t means = 0, quats = 0, scales = 0, opacities = 0, colors = 0;
  uintptr_t v_means = 0, v_quats = 0, v_scales = 0, v_opacities = 0, v_colors = 0, v_raw = 0;
};

struct DecodeShape {
  int frames = 0, texels = 0, per_texel = 1, resolution = 0;
  float offset_scale = 1.f;
};

DecodeParams make_decode_params(const DecodeShape& s, const DecodeBuffers& b);
void cpu_decode_forward(const DecodeParams& p);
void cpu_decode_backward(const DecodeParams& p);
void cuda_decode_forward(const DecodeParams& p, int device, uintptr_t stream);
void cuda_decode_backward(const DecodeParams& p, int device, uintptr_t stream);

// ---------------------------------------------------------------------------
// Per-element math, shared by both drivers. Element e = (f, m, g).
// ---------------------------------------------------------------------------

DGT_HD Vec4 quat_mul(Vec4 a, Vec4 b) {  // Hamilton product a (x) b
  return {a.w * b.w - a.x * b.x - a.y * b.y - a.z * b.z, a.w * b.x + a.x * b.w + a.y * b.z - a.z * b.y,
          a.w * b.y - a.x * b.z + a.y * b.w + a.z * b.x, a.w * b.z + a.x * b.y - a.y * b.x + a.z * b.w};
}

DGT_HD Vec4 quat_mul_left_vjp(Vec4 a, Vec4 v) {  // d(a (x) b)/db ^T v = conj(a) (x) v
  return quat_mul({a.w, -a.x, -a.y, -a.z}, v);
}

DGT_HD float sigmoid(float x) { return 1.f / (1.f + DGT_EXP(-x)); }

struct ElementIndex {
  int64_t out;      // output Gaussian row (f, m G + g)
  int64_t raw0;     // raw index of channel c of (f, texel)
  int64_t stride;   // between channels (R * R)
  int m;
};

DGT_HD ElementIndex element_index(const DecodeParams& p, int64_t e) {
  const int64_t per_frame = int64_t(p.texels) * p.per_texel;
  const int64_t f = e / per_frame, r = e % per_frame;
  const int m = int(r / p.per_texel), g = int(r % p.per_texel);
  const int64_t rr = int64_t(p.resolution) * p.resolution;
  const int64_t channels = int64_t(kChannelsPerGaussian) * p.per_texel;
  ElementIndex ix;
  ix.out = e;
  ix.stride = rr;
  ix.raw0 = (f * channels + int64_t(g) * kChannelsPerGaussian) * rr + p.texel_index[m];
  ix.m = m;
  return ix;
}

DGT_HD void load_raw(const DecodeParams& p, const ElementIndex& ix, float* r) {
#pragma unroll
  for (int c = 0; c < kChannelsPerGaussian; ++c) r[c] = p.raw[ix.raw0 + c * ix.stride];
}

DGT_HD void decode_element(const DecodeParams& p, int64_t e) {
  const ElementIndex ix = element_index(p, e);
  float r[kChannelsPerGaussian];
  load_raw(p, ix, r);
  const float* pos = p.position + ix.m * 3;
  const float* fq = p.frame + ix.m * 4;
  const Vec4 frame{fq[0], fq[1], fq[2], fq[3]};
  const float log_size = p.log_size[ix.m];
  const float k = p.offset_scale * std::exp(log_size);
  const Vec3 off = matvec(raster::quat_to_rotmat(frame), Vec3{r[0] * k, r[1] * k, r[2] * k});
  float* mean = p.means + ix.out * 3;
  mean[0] = pos[0] + off.x;
  mean[1] = pos[1] + off.y;
  mean[2] = pos[2] + off.z;
  float* scale = p.scales + ix.out * 3;
  for (int j = 0; j < 3; ++j) scale[j] = std::exp(r[3 + j] + log_size);
  float norm;
  const Vec4 qn = raster::normalize_quat({r[6] + 1.f, r[7], r[8], r[9]}, norm);
  const Vec4 q = quat_mul(frame, qn);
  float* quat = p.quats + ix.out * 4;
  quat[0] = q.w;
  quat[1] = q.x;
  quat[2] = q.y;
  quat[3] = q.z;
  p.opacities[ix.out] = sigmoid(r[10]);
  float* col = p.colors + ix.out * 3;
  for (int j = 0; j < 3; ++j) col[j] = sigmoid(r[11 + j]);
}

DGT_HD void decode_element_vjp(const DecodeParams& p, int64_t e) {
  const ElementIndex ix = element_index(p, e);
  float r[kChannelsPerGaussian];
  load_raw(p, ix, r);
  const float* fq = p.frame + ix.m * 4;
  const Vec4 frame{fq[0], fq[1], fq[2], fq[3]};
  const float log_size = p.log_size[ix.m];
  float v[kChannelsPerGaussian];
  for (int c = 0; c < kChannelsPerGaussian; ++c) v[c] = 0.f;
  if (p.v_means) {
    const float k = p.offset_scale * std::exp(log_size);
    const float* vm = p.v_means + ix.out * 3;
    const Vec3 g = matvec_t(raster::quat_to_rotmat(frame), Vec3{vm[0], vm[1], vm[2]});
    v[0] = g.x * k;
    v[1] = g.y * k;
    v[2] = g.z * k;
  }
  if (p.v_scales) {
    const float* vs = p.v_scales + ix.out * 3;
    for (int j = 0; j < 3; ++j) v[3 + j] = vs[j] * std::exp(r[3 + j] + log_size);
  }
  if (p.v_quats) {
    const float* vq = p.v_quats + ix.out * 4;
    float norm;
    const Vec4 qn = raster::normalize_quat({r[6] + 1.f, r[7], r[8], r[9]}, norm);
    const Vec4 g = raster::normalize_quat_vjp(qn, norm, quat_mul_left_vjp(frame, {vq[0], vq[1], vq[2], vq[3]}));
    v[6] = g.w;
    v[7] = g.x;
    v[8] = g.y;
    v[9] = g.z;
  }
  if (p.v_opacities) {
    const float o = sigmoid(r[10]);
    v[10] = p.v_opacities[ix.out] * o * (1.f - o);
  }
  if (p.v_colors) {
    const float* vc = p.v_colors + ix.out * 3;
    for (int j = 0; j < 3; ++j) {
      const float c = sigmoid(r[11 + j]);
      v[11 + j] = vc[j] * c * (1.f - c);
    }
  }
#pragma unroll
  for (int c = 0; c < kChannelsPerGaussian; ++c) p.v_raw[ix.raw0 + c * ix.stride] = v[c];
}

}  // namespace dgt::decode
