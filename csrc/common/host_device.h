// Portability macros so one header serves the .cu and the .cpp drivers.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define DGT_HD __host__ __device__ __forceinline__
#else
#define DGT_HD inline
#endif

#if defined(__CUDA_ARCH__)
#define DGT_EXP(x) __expf(x)
#else
#include <cmath>
#define DGT_EXP(x) std::exp(x)
#endif
