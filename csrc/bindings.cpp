// The pybind11 module dgtalker._C. It knows nothing of torch: every buffer arrives
// as a raw address (plus a device index and a stream handle), so one build works
// with any torch version, or with cupy.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "common/check.h"
#include "common/parallel.h"
#include "decode/decode.h"
#include "latent/latent.h"
#include "raster/raster.h"

#ifdef DGT_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace py = pybind11;
using namespace dgt::raster;

namespace {

#ifndef DGT_WITH_CUDA
[[noreturn]] void no_cuda() {
  throw std::runtime_error(
      "dgtalker was built without CUDA support; rebuild with a CUDA compiler on PATH "
      "(DGTALKER_CUDA=ON pip install .) or pass CPU tensors");
}
#endif

RasterConfig for_backend(RasterConfig cfg, int device) {
  if (device < 0) cfg.deterministic = true;  // the CPU backward always is
  return cfg;
}

Layout layout_for(const RasterConfig& cfg, int device) {
  if (device < 0) return cpu_layout(cfg);
#ifdef DGT_WITH_CUDA
  return cuda_layout(cfg, device);
#else
  no_cuda();
#endif
}

py::dict layout_sizes(const RasterConfig& cfg, int device) {
  const Layout l = layout_for(for_backend(cfg, device), device);
  py::dict d;
  d["state_bytes"] = l.state_bytes;
  d["forward_scratch_bytes"] = l.fwd_scratch_bytes;
  d["backward_scratch_bytes"] = l.bwd_scratch_bytes;
  d["status_offset"] = l.status;
  d["transmittance_offset"] = l.transmittance;
  d["grad2d_stride"] = cfg.grad2d_stride();
  return d;
}

void forward(const RasterConfig& cfg0, int device, const ForwardBuffers& bufs, uintptr_t stream) {
  const RasterConfig cfg = for_backend(cfg0, device);
  const Layout l = layout_for(cfg, device);
  const RasterParams p = make_forward_params(cfg, l, bufs);
  py::gil_scoped_release release;
  if (device < 0) return cpu_forward(p);
#ifdef DGT_WITH_CUDA
  cuda_forward(p, device, stream);
#else
  (void)stream;
  no_cuda();
#endif
}

void backward(const RasterConfig& cfg0, int device, const BackwardBuffers& bufs, uintptr_t stream) {
  const RasterConfig cfg = for_backend(cfg0, device);
  const Layout l = layout_for(cfg, device);
  const RasterParams p = make_backward_params(cfg, l, bufs);
  py::gil_scoped_release release;
  if (device < 0) return cpu_backward(p);
#ifdef DGT_WITH_CUDA
  cuda_backward(p, device, stream);
#else
  (void)stream;
  no_cuda();
#endif
}

int cuda_device_count() {
#ifdef DGT_WITH_CUDA
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // no driver or no device: not an error for a CPU run
    return 0;
  }
  return n;
#else
  return 0;
#endif
}

py::dict build_config() {
  py::dict d;
#ifdef DGT_WITH_CUDA
  d["cuda"] = true;
  d["cuda_architectures"] = DGT_CUDA_ARCHS;
  int runtime = 0;
  cudaRuntimeGetVersion(&runtime);
  d["cuda_runtime"] = runtime;
#else
  d["cuda"] = false;
  d["cuda_architectures"] = "";
  d["cuda_runtime"] = 0;
#endif
  d["cpu_threads"] = dgt::cpu_threads();
  d["max_channels"] = kMaxChannels;
  d["tile_size"] = 16;
  return d;
}

template <typename T>
void def_buffers(py::class_<T>& cls) {
  cls.def(py::init<>());
}

// Runs `cpu` or `cuda` by device index (-1: CPU) with the GIL released.
template <typename Params, typename Cpu, typename Cuda>
void dispatch(const Params& p, int device, uintptr_t stream, Cpu cpu, Cuda cuda) {
  py::gil_scoped_release release;
  if (device < 0) return cpu(p);
#ifdef DGT_WITH_CUDA
  cuda(p, device, stream);
#else
  (void)cuda;
  (void)stream;
  no_cuda();
#endif
}

void compose_forward(const dgt::latent::LatentShape& s, int device, const dgt::latent::LatentBuffers& b,
                     uintptr_t stream) {
  dispatch(dgt::latent::make_latent_params(s, b), device, stream, dgt::latent::cpu_compose_forward,
           dgt::latent::cuda_compose_forward);
}

void compose_backward(const dgt::latent::LatentShape& s, int device, const dgt::latent::LatentBuffers& b,
                      uintptr_t stream) {
  dispatch(dgt::latent::make_latent_params(s, b), device, stream, dgt::latent::cpu_compose_backward,
           dgt::latent::cuda_compose_backward);
}

void decode_forward(const dgt::decode::DecodeShape& s, int device, const dgt::decode::DecodeBuffers& b,
                    uintptr_t stream) {
  dispatch(dgt::decode::make_decode_params(s, b), device, stream, dgt::decode::cpu_decode_forward,
           dgt::decode::cuda_decode_forward);
}

void decode_backward(const dgt::decode::DecodeShape& s, int device, const dgt::decode::DecodeBuffers& b,
                     uintptr_t stream) {
  dispatch(dgt::decode::make_decode_params(s, b), device, stream, dgt::decode::cpu_decode_backward,
           dgt::decode::cuda_decode_backward);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "dgtalker engine: CPU and CUDA kernels over raw buffers";

  py::class_<RasterConfig>(m, "RasterConfig")
      .def(py::init<>())
      .def_readwrite("batch", &RasterConfig::batch)
      .def_readwrite("num_gaussians", &RasterConfig::num_gaussians)
      .def_readwrite("channels", &RasterConfig::channels)
      .def_readwrite("per_image", &RasterConfig::per_image)
      .def_readwrite("width", &RasterConfig::width)
      .def_readwrite("height", &RasterConfig::height)
      .def_readwrite("near_plane", &RasterConfig::near_plane)
      .def_readwrite("far_plane", &RasterConfig::far_plane)
      .def_readwrite("capacity", &RasterConfig::capacity)
      .def_readwrite("deterministic", &RasterConfig::deterministic);

  py::class_<ForwardBuffers> fb(m, "ForwardBuffers");
  def_buffers(fb);
  fb.def_readwrite("means", &ForwardBuffers::means)
      .def_readwrite("quats", &ForwardBuffers::quats)
      .def_readwrite("scales", &ForwardBuffers::scales)
      .def_readwrite("opacities", &ForwardBuffers::opacities)
      .def_readwrite("colors", &ForwardBuffers::colors)
      .def_readwrite("viewmats", &ForwardBuffers::viewmats)
      .def_readwrite("Ks", &ForwardBuffers::Ks)
      .def_readwrite("background", &ForwardBuffers::background)
      .def_readwrite("state", &ForwardBuffers::state)
      .def_readwrite("scratch", &ForwardBuffers::scratch)
      .def_readwrite("image", &ForwardBuffers::image)
      .def_readwrite("alpha", &ForwardBuffers::alpha)
      .def_readwrite("depth", &ForwardBuffers::depth);

  py::class_<BackwardBuffers> bb(m, "BackwardBuffers");
  def_buffers(bb);
  bb.def_readwrite("means", &BackwardBuffers::means)
      .def_readwrite("quats", &BackwardBuffers::quats)
      .def_readwrite("scales", &BackwardBuffers::scales)
      .def_readwrite("opacities", &BackwardBuffers::opacities)
      .def_readwrite("colors", &BackwardBuffers::colors)
      .def_readwrite("viewmats", &BackwardBuffers::viewmats)
      .def_readwrite("Ks", &BackwardBuffers::Ks)
      .def_readwrite("background", &BackwardBuffers::background)
      .def_readwrite("state", &BackwardBuffers::state)
      .def_readwrite("scratch", &BackwardBuffers::scratch)
      .def_readwrite("v_image", &BackwardBuffers::v_image)
      .def_readwrite("v_alpha", &BackwardBuffers::v_alpha)
      .def_readwrite("v_depth", &BackwardBuffers::v_depth)
      .def_readwrite("grad2d", &BackwardBuffers::grad2d)
      .def_readwrite("v_means", &BackwardBuffers::v_means)
      .def_readwrite("v_quats", &BackwardBuffers::v_quats)
      .def_readwrite("v_scales", &BackwardBuffers::v_scales);

  {
    using namespace dgt::latent;
    py::class_<LatentShape>(m, "LatentShape")
        .def(py::init<>())
        .def_readwrite("frames", &LatentShape::frames)
        .def_readwrite("dim", &LatentShape::dim)
        .def_readwrite("k_exp", &LatentShape::k_exp)
        .def_readwrite("k_lip", &LatentShape::k_lip)
        .def_readwrite("styles", &LatentShape::styles);
    py::class_<LatentBuffers> lb(m, "LatentBuffers");
    def_buffers(lb);
#define DGT_FIELD(name) lb.def_readwrite(#name, &LatentBuffers::name);
    DGT_FIELD(w_can) DGT_FIELD(b_exp) DGT_FIELD(b_lip) DGT_FIELD(c_exp) DGT_FIELD(c_lip) DGT_FIELD(weight)
    DGT_FIELD(bias) DGT_FIELD(w) DGT_FIELD(styles) DGT_FIELD(v_styles) DGT_FIELD(v_w_out) DGT_FIELD(v_w)
    DGT_FIELD(v_w_can) DGT_FIELD(v_b_exp) DGT_FIELD(v_b_lip) DGT_FIELD(v_c_exp) DGT_FIELD(v_c_lip)
    DGT_FIELD(v_weight) DGT_FIELD(v_bias)
#undef DGT_FIELD
  }
  {
    using namespace dgt::decode;
    py::class_<DecodeShape>(m, "DecodeShape")
        .def(py::init<>())
        .def_readwrite("frames", &DecodeShape::frames)
        .def_readwrite("texels", &DecodeShape::texels)
        .def_readwrite("per_texel", &DecodeShape::per_texel)
        .def_readwrite("resolution", &DecodeShape::resolution)
        .def_readwrite("offset_scale", &DecodeShape::offset_scale);
    py::class_<DecodeBuffers> db(m, "DecodeBuffers");
    def_buffers(db);
#define DGT_FIELD(name) db.def_readwrite(#name, &DecodeBuffers::name);
    DGT_FIELD(raw) DGT_FIELD(texel_index) DGT_FIELD(position) DGT_FIELD(frame) DGT_FIELD(log_size)
    DGT_FIELD(means) DGT_FIELD(quats) DGT_FIELD(scales) DGT_FIELD(opacities) DGT_FIELD(colors)
    DGT_FIELD(v_means) DGT_FIELD(v_quats) DGT_FIELD(v_scales) DGT_FIELD(v_opacities) DGT_FIELD(v_colors)
    DGT_FIELD(v_raw)
#undef DGT_FIELD
  }
  m.def("compose_forward", &compose_forward, py::arg("shape"), py::arg("device"), py::arg("buffers"),
        py::arg("stream"), "w = w_can + c_exp B_exp + c_lip B_lip and styles = A w + b for F frames.");
  m.def("compose_backward", &compose_backward, py::arg("shape"), py::arg("device"), py::arg("buffers"),
        py::arg("stream"), "Gradients of compose_forward w.r.t. every input.");
  m.def("decode_forward", &decode_forward, py::arg("shape"), py::arg("device"), py::arg("buffers"),
        py::arg("stream"), "UV attribute maps + template -> Gaussians.");
  m.def("decode_backward", &decode_backward, py::arg("shape"), py::arg("device"), py::arg("buffers"),
        py::arg("stream"), "Gradient of decode_forward w.r.t. the raw maps.");

  m.def("raster_layout", &layout_sizes, py::arg("config"), py::arg("device"),
        "Byte sizes of the state, forward-scratch and backward-scratch buffers (device -1: CPU).");
  m.def("raster_forward", &forward, py::arg("config"), py::arg("device"), py::arg("buffers"),
        py::arg("stream"), "Rasterize a batch (device -1: CPU, else the CUDA device index).");
  m.def("raster_backward", &backward, py::arg("config"), py::arg("device"), py::arg("buffers"),
        py::arg("stream"), "Gradients of a batch rasterized by raster_forward.");
  m.def("cuda_device_count", &cuda_device_count, "CUDA devices visible to the engine (0 without a driver).");
  m.def("build_config", &build_config, "How this engine was built.");
  m.attr("STATUS_TOTAL") = int(kStatusTotal);
  m.attr("STATUS_OVERFLOW") = int(kStatusOverflow);
  m.attr("STATUS_INVALID") = int(kStatusInvalid);
}
