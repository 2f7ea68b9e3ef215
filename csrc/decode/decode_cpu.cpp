// CPU driver of the decode stage: one Gaussian per call of the shared math.
#include "../common/parallel.h"
#include "decode.h"

namespace dgt::decode {

DecodeParams make_decode_params(const DecodeShape& s, const DecodeBuffers& b) {
  DecodeParams p{};
  p.frames = s.frames;
  p.texels = s.texels;
  p.per_texel = s.per_texel;
  p.resolution = s.resolution;
  p.offset_scale = s.offset_scale;
  auto in = [](uintptr_t a) { return reinterpret_cast<const float*>(a); };
  auto out = [](uintptr_t a) { return reinterpret_cast<float*>(a); };
  p.raw = in(b.raw);
  p.texel_index = reinterpret_cast<const int64_t*>(b.texel_index);
  p.position = in(b.position);
  p.frame = in(b.frame);
  p.log_size = in(b.log_size);
  p.means = out(b.means);
  p.quats = out(b.quats);
  p.scales = out(b.scales);
  p.opacities = out(b.opacities);
  p.colors = out(b.colors);
  p.v_means = in(b.v_means);
  p.v_quats = in(b.v_quats);
  p.v_scales = in(b.v_scales);
  p.v_opacities = in(b.v_opacities);
  p.v_colors = in(b.v_colors);
  p.v_raw = out(b.v_raw);
  return p;
}

static int64_t num_elements(const DecodeParams& p) { return int64_t(p.frames) * p.texels * p.per_texel; }

void cpu_decode_forward(const DecodeParams& p) {
  parallel_for(num_elements(p), 8192, [&](int64_t a, int64_t b) {
    for (int64_t e = a; e < b; ++e) decode_element(p, e);
  });
}

void cpu_decode_backward(const DecodeParams& p) {
  parallel_for(num_elements(p), 8192, [&](int64_t a, int64_t b) {
    for (int64_t e = a; e < b; ++e) decode_element_vjp(p, e);
  });
}

}  // namespace dgt::decode
