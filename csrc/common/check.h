// Error helpers. Errors cross into Python through pybind11: std::invalid_argument
// becomes ValueError, std::runtime_error becomes RuntimeError.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace dgt {

template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

}  // namespace dgt

#define DGT_REQUIRE(cond, ...)                                         \
  do {                                                                 \
    if (!(cond)) throw std::invalid_argument(::dgt::concat(__VA_ARGS__)); \
  } while (0)

#define DGT_CUDA_CHECK(expr)                                                              \
  do {                                                                                    \
    cudaError_t err_ = (expr);                                                            \
    if (err_ != cudaSuccess)                                                              \
      throw std::runtime_error(::dgt::concat("CUDA error ", cudaGetErrorString(err_), " at ", \
                                             __FILE__, ":", __LINE__, " in ", #expr));    \
  } while (0)
