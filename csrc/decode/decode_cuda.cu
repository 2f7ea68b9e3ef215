// CUDA driver of the decode stage: one thread per output Gaussian.
#include <cuda_runtime.h>

#include "../common/check.h"
#include "../common/cuda_launch.cuh"
#include "decode.h"

namespace dgt::decode {

namespace {

__global__ void decode_forward_kernel(DecodeParams p, int64_t n) {
  const int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e < n) decode_element(p, e);
}

__global__ void decode_backward_kernel(DecodeParams p, int64_t n) {
  const int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e < n) decode_element_vjp(p, e);
}

void launch(void (*kernel)(DecodeParams, int64_t), const DecodeParams& p, int device, uintptr_t stream_handle,
            const char* what) {
  const int64_t n = int64_t(p.frames) * p.texels * p.per_texel;
  if (n == 0) return;
  DeviceGuard guard(device);
  kernel<<<blocks_for(n, 256), 256, 0, reinterpret_cast<cudaStream_t>(stream_handle)>>>(p, n);
  check_launch(what);
}

}  // namespace

void cuda_decode_forward(const DecodeParams& p, int device, uintptr_t stream) {
  launch(decode_forward_kernel, p, device, stream, "decode_forward");
}

void cuda_decode_backward(const DecodeParams& p, int device, uintptr_t stream) {
  launch(decode_backward_kernel, p, device, stream, "decode_backward");
}

}  // namespace dgt::decode
