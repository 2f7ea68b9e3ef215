// Small fixed-size vector and matrix types for per-element math on host and device.
// Deliberately tiny: only what the kernels use, all by value, all inline.
#pragma once

#include <cmath>

#include "host_device.h"

namespace dgt {

struct Vec2 {
  float x, y;
};

struct Vec3 {
  float x, y, z;
};

struct Vec4 {  // quaternions are (w, x, y, z)
  float w, x, y, z;
};

// Symmetric 2x2 matrix [[a, b], [b, c]]. As a gradient, `b` holds the derivative
// with respect to the parameter b, i.e. the sum over both off-diagonal entries.
struct Sym2 {
  float a, b, c;
};

// Row-major 3x3 matrix.
struct Mat3 {
  float m[3][3];
};

DGT_HD Vec3 operator+(Vec3 u, Vec3 v) { return {u.x + v.x, u.y + v.y, u.z + v.z}; }
DGT_HD Vec3 operator*(float s, Vec3 v) { return {s * v.x, s * v.y, s * v.z}; }

DGT_HD Mat3 mat3_zero() {
  Mat3 r;
#pragma unroll
  for (int i = 0; i < 3; ++i)
#pragma unroll
    for (int j = 0; j < 3; ++j) r.m[i][j] = 0.f;
  return r;
}

DGT_HD Mat3 matmul(const Mat3& a, const Mat3& b) {
  Mat3 r;
#pragma unroll
  for (int i = 0; i < 3; ++i)
#pragma unroll
    for (int j = 0; j < 3; ++j)
      r.m[i][j] = a.m[i][0] * b.m[0][j] + a.m[i][1] * b.m[1][j] + a.m[i][2] * b.m[2][j];
  return r;
}

DGT_HD Mat3 transpose(const Mat3& a) {
  Mat3 r;
#pragma unroll
  for (int i = 0; i < 3; ++i)
#pragma unroll
    for (int j = 0; j < 3; ++j) r.m[i][j] = a.m[j][i];
  return r;
}

DGT_HD Vec3 matvec(const Mat3& a, Vec3 v) {
  return {a.m[0][0] * v.x + a.m[0][1] * v.y + a.m[0][2] * v.z,
          a.m[1][0] * v.x + a.m[1][1] * v.y + a.m[1][2] * v.z,
          a.m[2][0] * v.x + a.m[2][1] * v.y + a.m[2][2] * v.z};
}

DGT_HD Vec3 matvec_t(const Mat3& a, Vec3 v) {  // a^T v
  return {a.m[0][0] * v.x + a.m[1][0] * v.y + a.m[2][0] * v.z,
          a.m[0][1] * v.x + a.m[1][1] * v.y + a.m[2][1] * v.z,
          a.m[0][2] * v.x + a.m[1][2] * v.y + a.m[2][2] * v.z};
}

DGT_HD bool finite(float v) { return std::isfinite(v); }

}  // namespace dgt
