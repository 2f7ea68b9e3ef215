// The rasterizer's driver interface, shared by the CPU and CUDA backends.
//
// Pipeline per call (one launch sequence for a whole batch of B images):
//   project    B*N Gaussians -> splats, tile counts           (flags invalid input)
//   scan       inclusive prefix sum of the counts            -> total intersections
//   emit       keys (image | tile | depth bits) and values (splat index), bounded
//              by the capacity; slots past the total get a sentinel key
//   sort       radix sort of the capacity slots over the key bits in use
//   ranges     [start, end) of every (image, tile) in the sorted list
//   blend      front-to-back compositing per pixel, early termination
// No step reads a device value on the host: the total and an overflow flag stay in
// the status words, and the caller grows the capacity when it finds an overflow.
#pragma once

#include <cstddef>
#include <cstdint>

#include "../common/host_device.h"

namespace dgt::raster {

constexpr int kMaxChannels = 32;
constexpr int kProjStride = 8;  // floats per splat: mean.xy, conic.abc, opacity, depth, pad

// Status words (int64) written by the forward.
enum Status : int { kStatusTotal = 0, kStatusOverflow = 1, kStatusInvalid = 2, kStatusWords = 4 };

// Number of bits needed to write v (0 for 0): how many key bits the sorts look at.
inline int bit_length(uint64_t v) {
  int n = 0;
  for (; v; v >>= 1) ++n;
  return n;
}

struct RasterConfig {
  int batch = 1;           // B images
  int num_gaussians = 0;   // N Gaussians per set
  int channels = 3;        // C feature channels
  bool per_image = false;  // Gaussians given per image ([B, N, ...]) or shared ([N, ...])
  int width = 0, height = 0;
  float near_plane = 0.01f, far_plane = 1e10f;
  int64_t capacity = 0;    // intersection slots
  bool deterministic = false;

  DGT_HD int tiles_x() const { return (width + 15) / 16; }
  DGT_HD int tiles_y() const { return (height + 15) / 16; }
  DGT_HD int64_t num_tiles() const { return (int64_t)tiles_x() * tiles_y(); }
  DGT_HD int64_t num_splats() const { return (int64_t)batch * num_gaussians; }
  DGT_HD int64_t num_pixels() const { return (int64_t)batch * width * height; }
  DGT_HD int grad2d_stride() const { return 6 + channels + 1; }  // mean.xy, conic.abc, opacity, C, depth
  void validate() const;
};

// Byte offsets of the pieces carved from the caller's buffers.
struct Layout {
  // state: kept from forward to backward
  size_t proj, counts, offsets, values, tile_ranges, last, transmittance, depth_sum, status, state_bytes;
  // forward scratch
  size_t keys_unsorted, keys_sorted, values_unsorted, fwd_temp, fwd_scratch_bytes;
  // backward scratch (deterministic mode only needs more than zero)
  size_t isect_grad, gkeys_in, gkeys_out, gvals_in, gvals_out, bwd_temp, bwd_scratch_bytes;
};

// Typed views of all buffers of one call.
struct RasterParams {
  RasterConfig cfg;
  int sort_end_bit;  // 32 depth bits + bits of (image, tile)

  // inputs
  const float* means;      // [S, N, 3], S = per_image ? B : 1
  const float* quats;      // [S, N, 4]
  const float* scales;     // [S, N, 3]
  const float* opacities;  // [S, N]
  const float* colors;     // [S, N, C]
  const float* viewmats;   // [B, 4, 4]
  const float* Ks;         // [B, 3, 3]
  const float* background; // [B, C] or nullptr (black)

  // state
  float* proj;             // [P, 8], P = B * N
  int64_t* counts;         // [P]   tiles touched per splat
  int64_t* offsets;        // [P]   inclusive scan of counts
  int32_t* values;         // [capacity] splat index, sorted by key
  int32_t* tile_ranges;    // [B * tiles, 2]
  int32_t* last;           // [B, H, W] one past the last contributing list entry
  float* transmittance;    // [B, H, W] T after the last contributor
  float* depth_sum;        // [B, H, W] sum of w_i z_i
  int64_t* status;         // [kStatusWords]

  // forward scratch
  uint64_t* keys_unsorted;  // [capacity]
  uint64_t* keys_sorted;    // [capacity]
  int32_t* values_unsorted; // [capacity]
  void* fwd_temp;
  size_t fwd_temp_bytes;

  // outputs
  float* image;  // [B, H, W, C]
  float* alpha;  // [B, H, W]
  float* depth;  // [B, H, W] expected depth sum(w_i z_i) / alpha, 0 where alpha <= 1e-6

  // backward
  const float* v_image;  // [B, H, W, C]
  const float* v_alpha;  // [B, H, W] or nullptr (zero)
  const float* v_depth;  // [B, H, W] (w.r.t. the expected depth) or nullptr (zero)
  float* grad2d;         // [P, 6 + C + 1]
  float* v_means;        // [P, 3]
  float* v_quats;        // [P, 4]
  float* v_scales;       // [P, 3]
  float* isect_grad;     // [capacity, 6 + C + 1] (deterministic mode)
  int32_t* gkeys_in;     // [capacity]
  int32_t* gkeys_out;
  int32_t* gvals_in;
  int32_t* gvals_out;
  void* bwd_temp;
  size_t bwd_temp_bytes;
};

// Raw addresses handed over from Python (torch data_ptr(), cupy .data.ptr).
struct ForwardBuffers {
  uintptr_t means = 0, quats = 0, scales = 0, opacities = 0, colors = 0, viewmats = 0, Ks = 0, background = 0;
  uintptr_t state = 0, scratch = 0;
  uintptr_t image = 0, alpha = 0, depth = 0;
};

struct BackwardBuffers {
  uintptr_t means = 0, quats = 0, scales = 0, opacities = 0, colors = 0, viewmats = 0, Ks = 0, background = 0;
  uintptr_t state = 0, scratch = 0;
  uintptr_t v_image = 0, v_alpha = 0, v_depth = 0;
  uintptr_t grad2d = 0, v_means = 0, v_quats = 0, v_scales = 0;
};

Layout make_layout(const RasterConfig& cfg, size_t fwd_temp_bytes, size_t bwd_temp_bytes);
RasterParams make_forward_params(const RasterConfig& cfg, const Layout& lay, const ForwardBuffers& b);
RasterParams make_backward_params(const RasterConfig& cfg, const Layout& lay, const BackwardBuffers& b);
int sort_end_bit(const RasterConfig& cfg);

// CPU backend (always built).
Layout cpu_layout(const RasterConfig& cfg);
void cpu_forward(const RasterParams& p);
void cpu_backward(const RasterParams& p);

// CUDA backend (built when a CUDA compiler was found).
Layout cuda_layout(const RasterConfig& cfg, int device);
void cuda_forward(const RasterParams& p, int device, uintptr_t stream);
void cuda_backward(const RasterParams& p, int device, uintptr_t stream);

}  // namespace dgt::raster
