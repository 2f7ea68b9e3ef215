// Helpers shared by the CUDA drivers: device selection and launch checks.
#pragma once

#include <cuda_runtime.h>

#include "check.h"

namespace dgt {

// Makes `device` current for the scope and restores the caller's device after.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    DGT_CUDA_CHECK(cudaGetDevice(&previous_));
    if (previous_ != device) DGT_CUDA_CHECK(cudaSetDevice(device));
  }
  ~DeviceGuard() { cudaSetDevice(previous_); }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

// Throws if the last launch failed (a launch error, not an execution error: no sync).
inline void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(concat("CUDA launch of ", what, " failed: ", cudaGetErrorString(err)));
}

inline unsigned blocks_for(int64_t n, int threads) { return unsigned((n + threads - 1) / threads); }

}  // namespace dgt
