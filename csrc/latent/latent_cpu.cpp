// CPU driver of the latent composition: one element per call of the shared math.
#include "../common/parallel.h"
#include "latent.h"

namespace dgt::latent {

LatentParams make_latent_params(const LatentShape& s, const LatentBuffers& b) {
  LatentParams p{};
  p.frames = s.frames;
  p.dim = s.dim;
  p.k_exp = s.k_exp;
  p.k_lip = s.k_lip;
  p.styles = s.styles;
  auto in = [](uintptr_t a) { return reinterpret_cast<const float*>(a); };
  auto out = [](uintptr_t a) { return reinterpret_cast<float*>(a); };
  p.w_can = in(b.w_can);
  p.b_exp = in(b.b_exp);
  p.b_lip = in(b.b_lip);
  p.c_exp = in(b.c_exp);
  p.c_lip = in(b.c_lip);
  p.weight = in(b.weight);
  p.bias = in(b.bias);
  p.w = out(b.w);
  p.out_styles = out(b.styles);
  p.v_styles = in(b.v_styles);
  p.v_w_out = in(b.v_w_out);
  p.v_w = out(b.v_w);
  p.v_w_can = out(b.v_w_can);
  p.v_b_exp = out(b.v_b_exp);
  p.v_b_lip = out(b.v_b_lip);
  p.v_c_exp = out(b.v_c_exp);
  p.v_c_lip = out(b.v_c_lip);
  p.v_weight = out(b.v_weight);
  p.v_bias = out(b.v_bias);
  return p;
}

void cpu_compose_forward(const LatentParams& p) {
  const int64_t D = p.dim, S = p.styles;
  parallel_for(int64_t(p.frames) * D, 16384, [&](int64_t a, int64_t b) {
    for (int64_t i = a; i < b; ++i) p.w[i] = latent_w(p, int(i / D), int(i % D));
  });
  parallel_for(int64_t(p.frames) * S, 256, [&](int64_t a, int64_t b) {
    for (int64_t i = a; i < b; ++i) p.out_styles[i] = latent_style(p, int(i / S), int(i % S));
  });
}

void cpu_compose_backward(const LatentParams& p) {
  const int64_t D = p.dim, S = p.styles, F = p.frames;
  parallel_for(F * D, 1024, [&](int64_t a, int64_t b) {
    for (int64_t i = a; i < b; ++i) p.v_w[i] = latent_grad_w(p, int(i / D), int(i % D));
  });
  parallel_for(S * D, 4096, [&](int64_t a, int64_t b) {
    for (int64_t i = a; i < b; ++i) p.v_weight[i] = latent_grad_weight(p, int(i / D), int(i % D));
  });
  for (int64_t s = 0; s < S; ++s) p.v_bias[s] = latent_grad_bias(p, int(s));
  for (int64_t d = 0; d < D; ++d) p.v_w_can[d] = latent_grad_w_can(p, int(d));
  for (int64_t i = 0; i < int64_t(p.k_exp) * D; ++i)
    p.v_b_exp[i] = latent_grad_basis(p, p.c_exp, p.k_exp, int(i / D), int(i % D));
  for (int64_t i = 0; i < int64_t(p.k_lip) * D; ++i)
    p.v_b_lip[i] = latent_grad_basis(p, p.c_lip, p.k_lip, int(i / D), int(i % D));
  for (int64_t i = 0; i < F * p.k_exp; ++i) p.v_c_exp[i] = latent_grad_coeff(p, p.b_exp, int(i / p.k_exp), int(i % p.k_exp));
  for (int64_t i = 0; i < F * p.k_lip; ++i) p.v_c_lip[i] = latent_grad_coeff(p, p.b_lip, int(i / p.k_lip), int(i % p.k_lip));
}

}  // namespace dgt::latent
