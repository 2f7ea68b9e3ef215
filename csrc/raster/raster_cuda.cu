// CUDA driver of the rasterizer. Mirrors raster_cpu.cpp stage by stage; the
// per-element work is the shared code in raster_stages.h. Every launch goes to the
// caller's stream and nothing is read back to the host, so a whole call can be
// captured in a CUDA graph.
#include <cuda_runtime.h>

#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>

#include "../common/check.h"
#include "../common/cuda_launch.cuh"
#include "raster.h"
#include "raster_stages.h"

namespace dgt::raster {

namespace {

constexpr int kBlock = 256;               // threads per 1D launch
constexpr int kTilePixels = kTileSize * kTileSize;
constexpr int kWarps = kTilePixels / 32;

unsigned blocks_for(int64_t n) { return dgt::blocks_for(n, kBlock); }

// ----------------------------------------------------------------------------
// forward stages
// ----------------------------------------------------------------------------

__global__ void project_kernel(RasterParams P) {
  const int64_t p = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p >= P.cfg.num_splats()) return;
  const int invalid = project_stage(P, p);
  if (invalid) atomicOr(reinterpret_cast<unsigned long long*>(P.status + kStatusInvalid),
                        (unsigned long long)invalid);
}


__global__ void emit_kernel(RasterParams P) {
  const int64_t p = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p < P.cfg.num_splats()) emit_stage(P, p);
}

// Also publishes the total and the overflow flag (thread 0).
__global__ void sentinel_kernel(RasterParams P) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t n = P.cfg.num_splats();
  const int64_t total = n > 0 ? P.offsets[n - 1] : 0;
  if (i == 0) {
    P.status[kStatusTotal] = total;
    P.status[kStatusOverflow] = total > P.cfg.capacity ? 1 : 0;
  }
  if (i < P.cfg.capacity && i >= total) sentinel_stage_unused(P, i);
}

__global__ void ranges_kernel(RasterParams P) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < P.cfg.capacity) ranges_stage(P, i);
}

// 32 bytes, 16-aligned: a lane reads one with two 128-bit shared loads.
struct alignas(16) SharedSplat {
  float mx, my, ca, cb, cc, opacity, depth;
  int32_t p;
};

__device__ __forceinline__ SharedSplat fetch_splat(const RasterParams& P, int32_t p) {
  const float4* s = reinterpret_cast<const float4*>(P.proj + int64_t(p) * kProjStride);
  const float4 a = s[0], b = s[1];
  return {a.x, a.y, a.z, a.w, b.x, b.y, b.z, p};
}

// Stages list entry k (splat and its features) in shared-memory slot `slot`.
template <int MAXC>
__device__ __forceinline__ void stage_splat(const RasterParams& P, int32_t k, int slot, SharedSplat* s_splat,
                                            float* s_feat) {
  const int32_t p = P.values[k];
  s_splat[slot] = fetch_splat(P, p);
  const float* feat = P.colors + gaussian_row(P.cfg, p) * P.cfg.channels;
#pragma unroll
  for (int c = 0; c < MAXC; ++c)
    if (c < P.cfg.channels) s_feat[slot * MAXC + c] = feat[c];
}

// One block per (image, tile), one thread per pixel. Splats are staged in shared
// memory a block-width batch at a time; the block leaves as soon as every pixel
// is saturated.
template <int MAXC>
__global__ void __launch_bounds__(kTilePixels) blend_forward_kernel(RasterParams P) {
  __shared__ SharedSplat s_splat[kTilePixels];
  __shared__ __align__(16) float s_feat[kTilePixels * MAXC];
  const RasterConfig& cfg = P.cfg;
  const int C = cfg.channels;
  const int b = blockIdx.z, tid = threadIdx.x;
  const int i = blockIdx.y * kTileSize + tid / kTileSize;
  const int j = blockIdx.x * kTileSize + tid % kTileSize;
  const bool inside = i < cfg.height && j < cfg.width;
  const int64_t tile = int64_t(b) * cfg.num_tiles() + int64_t(blockIdx.y) * cfg.tiles_x() + blockIdx.x;
  const int32_t start = P.tile_ranges[tile * 2], end = P.tile_ranges[tile * 2 + 1];
  const float px = j + 0.5f, py = i + 0.5f;

  float T = 1.f, depth = 0.f;
  float acc[MAXC];
#pragma unroll
  for (int c = 0; c < MAXC; ++c) acc[c] = 0.f;
  int32_t last = start;
  bool done = !inside;

  for (int32_t base = start; base < end; base += kTilePixels) {
    if (__syncthreads_count(done) == kTilePixels) break;
    if (base + tid < end) stage_splat<MAXC>(P, base + tid, tid, s_splat, s_feat);
    __syncthreads();
    const int n = min(kTilePixels, end - base);
    for (int e = 0; e < n && !done; ++e) {
      const SharedSplat s = s_splat[e];  // by value: registers, not repeated shared loads
      float gauss;
      const float alpha = splat_alpha({s.ca, s.cb, s.cc}, s.opacity, px - s.mx, py - s.my, gauss);
      if (alpha == 0.f) continue;
      const float next_T = T * (1.f - alpha);
      if (next_T < kTransmittanceMin) {
        done = true;
        break;
      }
      const float w = alpha * T;
#pragma unroll
      for (int c = 0; c < MAXC; ++c)
        if (c < C) acc[c] += w * s_feat[e * MAXC + c];
      depth += w * s.depth;
      T = next_T;
      last = base + e + 1;
    }
  }
  if (!inside) return;
  const int64_t pix = (int64_t(b) * cfg.height + i) * cfg.width + j;
  const float* bg = P.background ? P.background + b * C : nullptr;
#pragma unroll
  for (int c = 0; c < MAXC; ++c)
    if (c < C) P.image[pix * C + c] = bg ? acc[c] + T * bg[c] : acc[c];
  P.alpha[pix] = 1.f - T;
  P.depth[pix] = pixel_expected_depth(T, depth);
  P.transmittance[pix] = T;
  P.depth_sum[pix] = depth;
  P.last[pix] = last;
}

// ----------------------------------------------------------------------------
// backward stages
// ----------------------------------------------------------------------------

// Gradient slots per splat, padded to a power of two for the warp reduction:
// [mean.xy, conic.abc, opacity, MAXC colours, depth, zeros...].
template <int MAXC>
constexpr int grad_slots() {
  return 6 + MAXC + 1 <= 16 ? 16 : 64;
}

// Sums N per-lane values over the warp by reduce-scatter: every step a lane keeps
// half of its values and trades the other half with its partner, so the whole sum
// costs N/2 + N/4 + ... shuffles instead of 5 N. Afterwards lane l holds the sums of
// slots scatter_base(l) + j, j < max(N / 32, 1).
template <int N, int OFF>
struct WarpReduceScatter {
  __device__ __forceinline__ static void run(float* v, int lane) {
    if constexpr (OFF > 0) {
      if constexpr (N > 1) {
        constexpr int H = N / 2;
        const bool upper = (lane & OFF) != 0;
#pragma unroll
        for (int j = 0; j < H; ++j) {
          const float send = upper ? v[j] : v[j + H];
          const float keep = upper ? v[j + H] : v[j];
          v[j] = keep + __shfl_xor_sync(0xffffffffu, send, OFF);
        }
        WarpReduceScatter<H, OFF / 2>::run(v, lane);
      } else {
        v[0] += __shfl_xor_sync(0xffffffffu, v[0], OFF);
        WarpReduceScatter<1, OFF / 2>::run(v, lane);
      }
    }
  }
};

template <int N, int OFF = 16>
__device__ __forceinline__ int scatter_base(int lane) {
  if constexpr (OFF == 0 || N <= 1) {
    return 0;
  } else {
    return ((lane & OFF) ? N / 2 : 0) + scatter_base<N / 2, OFF / 2>(lane);
  }
}

// Column of grad2d fed by slot q, or -1 for padding and switched-off channels.
template <int MAXC>
__device__ __forceinline__ int grad_column(int q, int C, bool depth_grad) {
  if (q < 6) return q;
  if (q < 6 + MAXC) return q - 6 < C ? q : -1;
  if (q == 6 + MAXC) return depth_grad ? 6 + C : -1;
  return -1;
}

// Back to front per pixel. Each lane computes its pixel's gradient for the
// current splat; the warp sums the 32 lanes (reduce-scatter) and each value is
// added once per splat per warp, by the lane that ended up holding it. In
// deterministic mode the warps' sums are instead added in a fixed order in shared
// memory and stored, without atomics, in the splat's list slot.
template <int MAXC, bool DETERMINISTIC>
__global__ void __launch_bounds__(kTilePixels) blend_backward_kernel(RasterParams P) {
  constexpr int NV = grad_slots<MAXC>();
  constexpr int PER_LANE = NV >= 32 ? NV / 32 : 1;
  constexpr int DUP = NV >= 32 ? 1 : 32 / NV;  // lanes holding the same sums
  __shared__ SharedSplat s_splat[kTilePixels];
  __shared__ __align__(16) float s_feat[kTilePixels * MAXC];
  __shared__ float s_part[DETERMINISTIC ? kWarps * NV : 1];
  __shared__ int32_t s_last;
  const RasterConfig& cfg = P.cfg;
  const int C = cfg.channels, K = cfg.grad2d_stride();
  const int b = blockIdx.z, tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int i = blockIdx.y * kTileSize + tid / kTileSize;
  const int j = blockIdx.x * kTileSize + tid % kTileSize;
  const bool inside = i < cfg.height && j < cfg.width;
  const int64_t tile = int64_t(b) * cfg.num_tiles() + int64_t(blockIdx.y) * cfg.tiles_x() + blockIdx.x;
  const int32_t start = P.tile_ranges[tile * 2];
  const float px = j + 0.5f, py = i + 0.5f;
  const int64_t pix = (int64_t(b) * cfg.height + i) * cfg.width + j;
  const bool depth_grad = P.v_depth != nullptr;  // uniform: skips the depth channel's sums

  float v_img[MAXC], acc[MAXC];
  float T_final = 1.f, v_depth = 0.f, v_alpha_out = 0.f;
  int32_t last = start;
#pragma unroll
  for (int c = 0; c < MAXC; ++c) {
    v_img[c] = (inside && c < C) ? P.v_image[pix * C + c] : 0.f;
    acc[c] = 0.f;
  }
  if (inside) {
    T_final = P.transmittance[pix];
    const PixelOutputGrad og = pixel_outputs_vjp<MAXC>(
        C, T_final, P.depth_sum[pix], v_img, P.v_alpha ? P.v_alpha[pix] : 0.f,
        depth_grad ? P.v_depth[pix] : 0.f, P.background ? P.background + b * C : nullptr);
    v_depth = og.v_depth_sum;
    v_alpha_out = og.v_alpha;
    last = P.last[pix];
  }
  float T = T_final, acc_depth = 0.f;

  if (tid == 0) s_last = start;
  __syncthreads();
  atomicMax(&s_last, last);
  __syncthreads();
  const int32_t block_last = s_last;
  int32_t warp_last = last;  // entries at or past it concern no lane of this warp
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) warp_last = max(warp_last, __shfl_xor_sync(0xffffffffu, warp_last, off));

  for (int32_t top = block_last; top > start; top -= kTilePixels) {
    const int32_t bottom = max(start, top - kTilePixels);
    __syncthreads();  // previous batch fully consumed
    if (top - 1 - tid >= bottom) stage_splat<MAXC>(P, top - 1 - tid, tid, s_splat, s_feat);  // back to front
    __syncthreads();
    const int n = top - bottom;
    // front-most entries first skipped: in atomic mode a warp starts at its own last
    const int e0 = DETERMINISTIC ? 0 : max(0, top - warp_last);
    for (int e = e0; e < n; ++e) {
      const int32_t k = top - 1 - e;
      const SharedSplat s = s_splat[e];
      const float dx = px - s.mx, dy = py - s.my;
      float gauss = 0.f, alpha = 0.f;
      if (k < last) alpha = splat_alpha({s.ca, s.cb, s.cc}, s.opacity, dx, dy, gauss);
      const bool hit = alpha > 0.f;
      if (!DETERMINISTIC && !__any_sync(0xffffffffu, hit)) continue;

      float g[NV];
#pragma unroll
      for (int q = 0; q < NV; ++q) g[q] = 0.f;
      if (hit) {
        const float ra = 1.f / (1.f - alpha);
        T *= ra;
        const float w = alpha * T;
        const float* feat = s_feat + e * MAXC;
        const float v_alpha = blend_alpha_vjp<MAXC>(C, T, ra, feat, s.depth, acc, acc_depth, v_img,
                                                    v_depth, T_final, v_alpha_out);
        const SplatGrad2D sg = splat_alpha_vjp({s.ca, s.cb, s.cc}, s.opacity, gauss, dx, dy, v_alpha);
        g[0] = sg.mean_x;
        g[1] = sg.mean_y;
        g[2] = sg.conic.a;
        g[3] = sg.conic.b;
        g[4] = sg.conic.c;
        g[5] = sg.opacity;
#pragma unroll
        for (int c = 0; c < MAXC; ++c) {
          if (c < C) {
            g[6 + c] = w * v_img[c];
            acc[c] += w * feat[c];
          }
        }
        g[6 + MAXC] = w * v_depth;
        acc_depth += w * s.depth;
      }
      WarpReduceScatter<NV, 16>::run(g, lane);
      const int base = scatter_base<NV>(lane);
      const bool writer = lane % DUP == 0;

      if (!DETERMINISTIC) {
        float* out = P.grad2d + int64_t(s.p) * K;
#pragma unroll
        for (int j = 0; j < PER_LANE; ++j) {
          const int col = grad_column<MAXC>(base + j, C, depth_grad);
          if (writer && col >= 0) atomicAdd(out + col, g[j]);
        }
      } else {
        if (writer) {
#pragma unroll
          for (int j = 0; j < PER_LANE; ++j) s_part[warp * NV + base + j] = g[j];
        }
        __syncthreads();
        if (tid < K) {  // column tid of the row comes from slot tid, or the depth slot
          const int slot = tid < 6 + C ? tid : 6 + MAXC;
          float sum = 0.f;
#pragma unroll
          for (int w = 0; w < kWarps; ++w) sum += s_part[w * NV + slot];
          P.isect_grad[int64_t(k) * K + tid] = sum;
        }
        __syncthreads();
      }
    }
  }
}

// Deterministic mode: slots were re-sorted by splat (stable, so in list order);
// sum each splat's slots in that order.
__global__ void reduce_slots_kernel(RasterParams P) {
  const int64_t p = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t n = P.cfg.num_splats();
  if (p >= n) return;
  const int K = P.cfg.grad2d_stride();
  const int64_t cap = P.cfg.capacity;
  // first sorted position with key >= p, and with key >= p + 1
  int64_t lo = 0, hi = cap;
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (P.gkeys_out[mid] < p) lo = mid + 1; else hi = mid;
  }
  int64_t end_lo = lo, end_hi = cap;
  while (end_lo < end_hi) {
    const int64_t mid = (end_lo + end_hi) / 2;
    if (P.gkeys_out[mid] <= p) end_lo = mid + 1; else end_hi = mid;
  }
  float* g = P.grad2d + p * K;
  for (int q = 0; q < K; ++q) {
    float sum = 0.f;
    for (int64_t s = lo; s < end_lo; ++s) sum += P.isect_grad[int64_t(P.gvals_out[s]) * K + q];
    g[q] = sum;
  }
}

__global__ void slot_keys_kernel(RasterParams P) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= P.cfg.capacity) return;
  const int64_t total = P.status[kStatusTotal];
  P.gkeys_in[i] = i < total ? P.values[i] : int32_t(P.cfg.num_splats());
  P.gvals_in[i] = int32_t(i);
}

__global__ void project_backward_kernel(RasterParams P) {
  const int64_t p = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p < P.cfg.num_splats()) project_backward_stage(P, p);
}

size_t scan_temp_bytes(int64_t n) {
  size_t bytes = 0;
  DGT_CUDA_CHECK(cub::DeviceScan::InclusiveSum(nullptr, bytes, (const int64_t*)nullptr,
                                               (int64_t*)nullptr, (int)std::max<int64_t>(n, 1)));
  return bytes;
}

template <typename Key>
size_t sort_temp_bytes(int64_t n) {
  size_t bytes = 0;
  DGT_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, bytes, (const Key*)nullptr, (Key*)nullptr,
                                                 (const int32_t*)nullptr, (int32_t*)nullptr,
                                                 (int)n));
  return bytes;
}

template <int MAXC>
void launch_blend_forward(const RasterParams& P, cudaStream_t stream) {
  const dim3 grid(P.cfg.tiles_x(), P.cfg.tiles_y(), P.cfg.batch);
  blend_forward_kernel<MAXC><<<grid, kTilePixels, 0, stream>>>(P);
  check_launch("blend_forward");
}

template <int MAXC>
void launch_blend_backward(const RasterParams& P, cudaStream_t stream) {
  const dim3 grid(P.cfg.tiles_x(), P.cfg.tiles_y(), P.cfg.batch);
  if (P.cfg.deterministic)
    blend_backward_kernel<MAXC, true><<<grid, kTilePixels, 0, stream>>>(P);
  else
    blend_backward_kernel<MAXC, false><<<grid, kTilePixels, 0, stream>>>(P);
  check_launch("blend_backward");
}

}  // namespace

Layout cuda_layout(const RasterConfig& cfg, int device) {
  cfg.validate();
  DeviceGuard guard(device);
  const size_t fwd = std::max(scan_temp_bytes(cfg.num_splats()), sort_temp_bytes<uint64_t>(cfg.capacity));
  const size_t bwd = cfg.deterministic ? sort_temp_bytes<int32_t>(cfg.capacity) : 0;
  return make_layout(cfg, fwd, bwd);
}

void cuda_forward(const RasterParams& P, int device, uintptr_t stream_handle) {
  DeviceGuard guard(device);
  const cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  const RasterConfig& cfg = P.cfg;
  const int64_t n = cfg.num_splats(), cap = cfg.capacity;
  DGT_REQUIRE(cfg.batch <= 65535, "batch must be <= 65535 on CUDA, got ", cfg.batch);

  DGT_CUDA_CHECK(cudaMemsetAsync(P.status, 0, sizeof(int64_t) * kStatusWords, stream));
  if (n > 0) {
    project_kernel<<<blocks_for(n), kBlock, 0, stream>>>(P);
    check_launch("project");
    size_t bytes = P.fwd_temp_bytes;
    DGT_CUDA_CHECK(cub::DeviceScan::InclusiveSum(P.fwd_temp, bytes, P.counts, P.offsets, (int)n, stream));
  }
  if (n > 0) {
    emit_kernel<<<blocks_for(n), kBlock, 0, stream>>>(P);
    check_launch("emit");
  }
  sentinel_kernel<<<blocks_for(cap), kBlock, 0, stream>>>(P);
  check_launch("sentinel");
  size_t bytes = P.fwd_temp_bytes;
  DGT_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(P.fwd_temp, bytes, P.keys_unsorted, P.keys_sorted,
                                                 P.values_unsorted, P.values, (int)cap, 0,
                                                 P.sort_end_bit, stream));
  DGT_CUDA_CHECK(cudaMemsetAsync(P.tile_ranges, 0, sizeof(int32_t) * 2 * cfg.batch * cfg.num_tiles(), stream));
  ranges_kernel<<<blocks_for(cap), kBlock, 0, stream>>>(P);
  check_launch("ranges");
  if (cfg.channels <= 4)
    launch_blend_forward<4>(P, stream);
  else
    launch_blend_forward<kMaxChannels>(P, stream);
}

void cuda_backward(const RasterParams& P, int device, uintptr_t stream_handle) {
  DeviceGuard guard(device);
  const cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  const RasterConfig& cfg = P.cfg;
  const int64_t n = cfg.num_splats(), cap = cfg.capacity;
  if (n == 0) return;
  if (!cfg.deterministic)
    DGT_CUDA_CHECK(cudaMemsetAsync(P.grad2d, 0, sizeof(float) * n * cfg.grad2d_stride(), stream));
  else  // slots past every pixel's last contributor are never written by the blend
    DGT_CUDA_CHECK(cudaMemsetAsync(P.isect_grad, 0, sizeof(float) * cap * cfg.grad2d_stride(), stream));
  if (cfg.channels <= 4)
    launch_blend_backward<4>(P, stream);
  else
    launch_blend_backward<kMaxChannels>(P, stream);
  if (cfg.deterministic) {
    slot_keys_kernel<<<blocks_for(cap), kBlock, 0, stream>>>(P);
    check_launch("slot_keys");
    size_t bytes = P.bwd_temp_bytes;
    DGT_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(P.bwd_temp, bytes, P.gkeys_in, P.gkeys_out,
                                                   P.gvals_in, P.gvals_out, (int)cap, 0,
                                                   bit_length(uint64_t(n)), stream));
    reduce_slots_kernel<<<blocks_for(n), kBlock, 0, stream>>>(P);
    check_launch("reduce_slots");
  }
  project_backward_kernel<<<blocks_for(n), kBlock, 0, stream>>>(P);
  check_launch("project_backward");
}

}  // namespace dgt::raster
