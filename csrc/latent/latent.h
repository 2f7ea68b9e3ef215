// Blendshape latent composition fused with the style affines of every layer:
//   w[f]      = w_can + c_exp[f] B_exp + c_lip[f] B_lip
//   styles[f] = A w[f] + b          (A stacks the affines of all synthesis layers)
// One small launch turns a batch of coefficients into all the layers' styles.
#pragma once

#include <cstdint>

#include "../common/host_device.h"

namespace dgt::latent {

struct LatentParams {
  int frames;     // F
  int dim;        // D, latent size
  int k_exp;      // Ke expression blendshapes (may be 0)
  int k_lip;      // Kl lip blendshapes (may be 0)
  int styles;     // S, total style channels of all layers

  const float* w_can;   // [D]
  const float* b_exp;   // [Ke, D]
  const float* b_lip;   // [Kl, D]
  const float* c_exp;   // [F, Ke]
  const float* c_lip;   // [F, Kl]
  const float* weight;  // [S, D]
  const float* bias;    // [S]

  float* w;             // [F, D]   forward output (and backward input)
  float* out_styles;    // [F, S]

  // backward
  const float* v_styles;  // [F, S]
  const float* v_w_out;   // [F, D] or nullptr: gradient arriving on the w output
  float* v_w;             // [F, D] scratch: total gradient of w
  float* v_w_can;         // [D]
  float* v_b_exp;         // [Ke, D]
  float* v_b_lip;         // [Kl, D]
  float* v_c_exp;         // [F, Ke]
  float* v_c_lip;         // [F, Kl]
  float* v_weight;        // [S, D]
  float* v_bias;          // [S]
};

struct LatentBuffers {
  uintptr_t w_can = 0, b_exp = 0, b_lip = 0, c_exp = 0, c_lip = 0, weight = 0, bias = 0;
  uintptr_t w = 0, styles = 0;
  uintptr_t v_styles = 0, v_w_out = 0, v_w = 0, v_w_can = 0, v_b_exp = 0, v_b_lip = 0, v_c_exp = 0,
            v_c_lip = 0, v_weight = 0, v_bias = 0;
};

struct LatentShape {
  int frames = 0, dim = 0, k_exp = 0, k_lip = 0, styles = 0;
};

LatentParams make_latent_params(const LatentShape& s, const LatentBuffers& b);

void cpu_compose_forward(const LatentParams& p);
void cpu_compose_backward(const LatentParams& p);
void cuda_compose_forward(const LatentParams& p, int device, uintptr_t stream);
void cuda_compose_backward(const LatentParams& p, int device, uintptr_t stream);

// ---------------------------------------------------------------------------
// Per-element math, shared by both drivers.
// ---------------------------------------------------------------------------

DGT_HD float latent_w(const LatentParams& p, int f, int d) {
  float v = p.w_can[d];
  for (int k = 0; k < p.k_exp; ++k) v += p.c_exp[f * p.k_exp + k] * p.b_exp[k * p.dim + d];
  for (int k = 0; k < p.k_lip; ++k) v += p.c_lip[f * p.k_lip + k] * p.b_lip[k * p.dim + d];
  return v;
}

// styles[f, s] = b[s] + A[s] . w[f]   (w already composed)
DGT_HD float latent_style(const LatentParams& p, int f, int s) {
  float v = p.bias[s];
  for (int d = 0; d < p.dim; ++d) v += p.weight[int64_t(s) * p.dim + d] * p.w[int64_t(f) * p.dim + d];
  return v;
}

// dL/dw[f, d] = v_w_out[f, d] + sum_s v_styles[f, s] A[s, d]
DGT_HD float latent_grad_w(const LatentParams& p, int f, int d) {
  float v = p.v_w_out ? p.v_w_out[int64_t(f) * p.dim + d] : 0.f;
  for (int s = 0; s < p.styles; ++s) v += p.v_styles[int64_t(f) * p.styles + s] * p.weight[int64_t(s) * p.dim + d];
  return v;
}

// dL/dA[s, d] = sum_f v_styles[f, s] w[f, d]
DGT_HD float latent_grad_weight(const LatentParams& p, int s, int d) {
  float v = 0.f;
  for (int f = 0; f < p.frames; ++f) v += p.v_styles[int64_t(f) * p.styles + s] * p.w[int64_t(f) * p.dim + d];
  return v;
}

DGT_HD float latent_grad_bias(const LatentParams& p, int s) {
  float v = 0.f;
  for (int f = 0; f < p.frames; ++f) v += p.v_styles[int64_t(f) * p.styles + s];
  return v;
}

DGT_HD float latent_grad_w_can(const LatentParams& p, int d) {
  float v = 0.f;
  for (int f = 0; f < p.frames; ++f) v += p.v_w[int64_t(f) * p.dim + d];
  return v;
}

// dL/dB[k, d] = sum_f c[f, k] v_w[f, d]   (basis: exp or lip)
DGT_HD float latent_grad_basis(const LatentParams& p, const float* coeff, int kcount, int k, int d) {
  float v = 0.f;
  for (int f = 0; f < p.frames; ++f) v += coeff[f * kcount + k] * p.v_w[int64_t(f) * p.dim + d];
  return v;
}

// dL/dc[f, k] = sum_d B[k, d] v_w[f, d]
DGT_HD float latent_grad_coeff(const LatentParams& p, const float* basis, int f, int k) {
  float v = 0.f;
  for (int d = 0; d < p.dim; ++d) v += basis[int64_t(k) * p.dim + d] * p.v_w[int64_t(f) * p.dim + d];
  return v;
}

}  // namespace dgt::latent
