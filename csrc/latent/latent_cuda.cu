// CUDA driver of the latent composition. The forward is one launch: each block
// composes w for up to 8 frames in shared memory and turns it into the styles of 64
// rows of the stacked affine (one warp per row, lanes along the latent dimension).
// The backward is plain element-per-thread over the shared math, with no atomics
// (every output element is written by one thread): deterministic.
#include <cuda_runtime.h>

#include "../common/check.h"
#include "../common/cuda_launch.cuh"
#include "latent.h"

namespace dgt::latent {

namespace {

constexpr int kFramesPerBlock = 8;
constexpr int kRowsPerBlock = 64;
constexpr int kThreads = 256;
constexpr int kMaxDim = 1024;

__global__ void __launch_bounds__(kThreads) compose_forward_kernel(LatentParams p) {
  __shared__ float s_w[kFramesPerBlock * kMaxDim];
  const int D = p.dim, f0 = blockIdx.y * kFramesPerBlock;
  const int nf = min(kFramesPerBlock, p.frames - f0);
  for (int i = threadIdx.x; i < nf * D; i += kThreads) {
    const int fl = i / D, d = i % D;
    const float v = latent_w(p, f0 + fl, d);
    s_w[fl * D + d] = v;
    if (blockIdx.x == 0) p.w[int64_t(f0 + fl) * D + d] = v;
  }
  __syncthreads();
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  constexpr int kRowsPerWarp = kRowsPerBlock / (kThreads / 32);
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int s = blockIdx.x * kRowsPerBlock + warp * kRowsPerWarp + r;
    if (s >= p.styles) break;
    float acc[kFramesPerBlock];
#pragma unroll
    for (int fl = 0; fl < kFramesPerBlock; ++fl) acc[fl] = 0.f;
    const float* row = p.weight + int64_t(s) * D;
    for (int d = lane; d < D; d += 32) {
      const float a = row[d];
#pragma unroll
      for (int fl = 0; fl < kFramesPerBlock; ++fl) acc[fl] += a * s_w[fl * D + d];
    }
#pragma unroll
    for (int fl = 0; fl < kFramesPerBlock; ++fl) {
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) acc[fl] += __shfl_xor_sync(0xffffffffu, acc[fl], off);
    }
    if (lane < nf) {
      float v = acc[0];
#pragma unroll
      for (int fl = 1; fl < kFramesPerBlock; ++fl)
        if (lane == fl) v = acc[fl];
      p.out_styles[int64_t(f0 + lane) * p.styles + s] = v + p.bias[s];
    }
  }
}

__global__ void grad_w_kernel(LatentParams p) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < int64_t(p.frames) * p.dim) p.v_w[i] = latent_grad_w(p, int(i / p.dim), int(i % p.dim));
}

__global__ void grad_params_kernel(LatentParams p) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t D = p.dim;
  int64_t j = i;
  if (j < int64_t(p.styles) * D) { p.v_weight[j] = latent_grad_weight(p, int(j / D), int(j % D)); return; }
  j -= int64_t(p.styles) * D;
  if (j < p.styles) { p.v_bias[j] = latent_grad_bias(p, int(j)); return; }
  j -= p.styles;
  if (j < D) { p.v_w_can[j] = latent_grad_w_can(p, int(j)); return; }
  j -= D;
  if (j < int64_t(p.k_exp) * D) { p.v_b_exp[j] = latent_grad_basis(p, p.c_exp, p.k_exp, int(j / D), int(j % D)); return; }
  j -= int64_t(p.k_exp) * D;
  if (j < int64_t(p.k_lip) * D) { p.v_b_lip[j] = latent_grad_basis(p, p.c_lip, p.k_lip, int(j / D), int(j % D)); return; }
  j -= int64_t(p.k_lip) * D;
  if (j < int64_t(p.frames) * p.k_exp) { p.v_c_exp[j] = latent_grad_coeff(p, p.b_exp, int(j / p.k_exp), int(j % p.k_exp)); return; }
  j -= int64_t(p.frames) * p.k_exp;
  if (j < int64_t(p.frames) * p.k_lip) p.v_c_lip[j] = latent_grad_coeff(p, p.b_lip, int(j / p.k_lip), int(j % p.k_lip));
}

}  // namespace

void cuda_compose_forward(const LatentParams& p, int device, uintptr_t stream_handle) {
  DGT_REQUIRE(p.dim <= kMaxDim, "compose_latent on CUDA supports a latent size up to ", kMaxDim, ", got ", p.dim);
  if (p.frames == 0) return;
  DeviceGuard guard(device);
  const cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  const dim3 grid((p.styles + kRowsPerBlock - 1) / kRowsPerBlock, (p.frames + kFramesPerBlock - 1) / kFramesPerBlock);
  if (p.styles == 0) {  // still compose w
    const dim3 g1(1, grid.y);
    compose_forward_kernel<<<g1, kThreads, 0, stream>>>(p);
  } else {
    compose_forward_kernel<<<grid, kThreads, 0, stream>>>(p);
  }
  check_launch("compose_forward");
}

void cuda_compose_backward(const LatentParams& p, int device, uintptr_t stream_handle) {
  DeviceGuard guard(device);
  const cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  const int64_t nw = int64_t(p.frames) * p.dim;
  if (nw > 0) {
    grad_w_kernel<<<unsigned((nw + 255) / 256), 256, 0, stream>>>(p);
    check_launch("compose_grad_w");
  }
  const int64_t D = p.dim;
  const int64_t n = int64_t(p.styles) * D + p.styles + D + int64_t(p.k_exp + p.k_lip) * D +
                    int64_t(p.frames) * (p.k_exp + p.k_lip);
  if (n > 0) {
    grad_params_kernel<<<unsigned((n + 255) / 256), 256, 0, stream>>>(p);
    check_launch("compose_grad_params");
  }
}

}  // namespace dgt::latent
