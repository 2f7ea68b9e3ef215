// Per-element math of the Gaussian rasterizer and its derivatives.
//
// Used unchanged by the CUDA driver (raster_cuda.cu) and the CPU driver
// (raster_cpu.cpp); the dense PyTorch reference (python/dgtalker/reference.py)
// spells out the same formulas. Conventions: OpenCV cameras, world-to-camera view
// matrices, pixel (i, j) centred at (j + 0.5, i + 0.5), quaternions (w, x, y, z).
#pragma once

#include <cmath>

#include "../common/vecmath.h"

namespace dgt::raster {

constexpr int kTileSize = 16;
constexpr float kLowPass = 0.3f;            // added to the 2D covariance diagonal
constexpr float kAlphaMin = 1.f / 255.f;    // splats fainter than this are skipped
constexpr float kAlphaMax = 0.999f;         // keeps 1 - alpha invertible in the backward
constexpr float kTransmittanceMin = 1e-4f;  // a pixel stops once T would fall below
constexpr float kFrustumMargin = 0.15f;     // clamp of x/z, y/z in the Jacobian, in image widths
constexpr float kDepthAlphaMin = 1e-6f;     // expected depth is 0 where alpha is below this

// Bit flags of invalid input found on the device (status word 2).
enum InvalidInput : int {
  kBadMeans = 1,
  kBadQuats = 2,
  kBadScales = 4,
  kBadOpacities = 8,
  kBadColors = 16,
  kBadCameras = 32,
};

struct Camera {
  Mat3 rot;  // world-to-camera rotation
  Vec3 trans;
  float fx, fy, cx, cy;
  bool valid;
};

// viewmat: [4, 4] row-major world-to-camera; K: [3, 3] intrinsics without skew.
DGT_HD Camera load_camera(const float* viewmat, const float* K) {
  Camera cam;
  bool ok = true;
#pragma unroll
  for (int i = 0; i < 3; ++i) {
#pragma unroll
    for (int j = 0; j < 3; ++j) {
      cam.rot.m[i][j] = viewmat[i * 4 + j];
      ok = ok && finite(cam.rot.m[i][j]);
    }
  }
  cam.trans = {viewmat[3], viewmat[7], viewmat[11]};
  cam.fx = K[0];
  cam.fy = K[4];
  cam.cx = K[2];
  cam.cy = K[5];
  ok = ok && finite(cam.trans.x) && finite(cam.trans.y) && finite(cam.trans.z) && cam.fx > 0.f &&
       cam.fy > 0.f && finite(cam.fx) && finite(cam.fy) && finite(cam.cx) && finite(cam.cy);
  cam.valid = ok;
  return cam;
}

// ---------------------------------------------------------------------------
// Forward pieces
// ---------------------------------------------------------------------------

DGT_HD Vec4 normalize_quat(Vec4 q, float& norm) {
  norm = std::sqrt(q.w * q.w + q.x * q.x + q.y * q.y + q.z * q.z);
  const float inv = 1.f / norm;
  return {q.w * inv, q.x * inv, q.y * inv, q.z * inv};
}

DGT_HD Mat3 quat_to_rotmat(Vec4 q) {  // q normalized
  const float w = q.w, x = q.x, y = q.y, z = q.z;
  Mat3 r;
  r.m[0][0] = 1.f - 2.f * (y * y + z * z);
  r.m[0][1] = 2.f * (x * y - w * z);
  r.m[0][2] = 2.f * (x * z + w * y);
  r.m[1][0] = 2.f * (x * y + w * z);
  r.m[1][1] = 1.f - 2.f * (x * x + z * z);
  r.m[1][2] = 2.f * (y * z - w * x);
  r.m[2][0] = 2.f * (x * z - w * y);
  r.m[2][1] = 2.f * (y * z + w * x);
  r.m[2][2] = 1.f - 2.f * (x * x + y * y);
  return r;
}

// Sigma = R diag(s)^2 R^T, i.e. M M^T with M = R diag(s).
DGT_HD Mat3 covariance_3d(const Mat3& rot, Vec3 s) {
  Mat3 m = rot;
#pragma unroll
  for (int i = 0; i < 3; ++i) {
    m.m[i][0] *= s.x;
    m.m[i][1] *= s.y;
    m.m[i][2] *= s.z;
  }
  return matmul(m, transpose(m));
}

// Jacobian of the perspective projection at camera-space point p, with x/z and y/z
// clamped to slightly beyond the frustum (far off-screen splats would otherwise get
// huge, useless footprints). clamped_x/y report which coordinate was clamped.
struct ProjJacobian {
  float j00, j02, j11, j12;  // J = [[j00, 0, j02], [0, j11, j12]]
  float tx, ty;              // the (possibly clamped) x and y used
  bool clamped_x, clamped_y;
};

DGT_HD ProjJacobian projection_jacobian(Vec3 p, const Camera& cam, int width, int height) {
  const float lim_x_pos = (width - cam.cx) / cam.fx + kFrustumMargin * width / cam.fx;
  const float lim_x_neg = cam.cx / cam.fx + kFrustumMargin * width / cam.fx;
  const float lim_y_pos = (height - cam.cy) / cam.fy + kFrustumMargin * height / cam.fy;
  const float lim_y_neg = cam.cy / cam.fy + kFrustumMargin * height / cam.fy;
  const float u = p.x / p.z, v = p.y / p.z;
  ProjJacobian J;
  J.clamped_x = u > lim_x_pos || u < -lim_x_neg;
  J.clamped_y = v > lim_y_pos || v < -lim_y_neg;
  J.tx = p.z * fminf(lim_x_pos, fmaxf(-lim_x_neg, u));
  J.ty = p.z * fminf(lim_y_pos, fmaxf(-lim_y_neg, v));
  const float rz = 1.f / p.z, rz2 = rz * rz;
  J.j00 = cam.fx * rz;
  J.j02 = -cam.fx * J.tx * rz2;
  J.j11 = cam.fy * rz;
  J.j12 = -cam.fy * J.ty * rz2;
  return J;
}

// Sigma_2d = J Sigma_cam J^T + lowpass I.
DGT_HD Sym2 project_covariance(const Mat3& cov_cam, const ProjJacobian& J) {
  // rows of J Sigma: r0 = j00*S[0] + j02*S[2], r1 = j11*S[1] + j12*S[2]
  const float r00 = J.j00 * cov_cam.m[0][0] + J.j02 * cov_cam.m[2][0];
  const float r02 = J.j00 * cov_cam.m[0][2] + J.j02 * cov_cam.m[2][2];
  const float r11 = J.j11 * cov_cam.m[1][1] + J.j12 * cov_cam.m[2][1];
  const float r12 = J.j11 * cov_cam.m[1][2] + J.j12 * cov_cam.m[2][2];
  const float r01 = J.j00 * cov_cam.m[0][1] + J.j02 * cov_cam.m[2][1];
  Sym2 c;
  c.a = r00 * J.j00 + r02 * J.j02 + kLowPass;
  c.b = r01 * J.j11 + r02 * J.j12;
  c.c = r11 * J.j11 + r12 * J.j12 + kLowPass;
  return c;
}

DGT_HD Sym2 invert_sym2(Sym2 m, float& det) {
  det = m.a * m.c - m.b * m.b;
  const float inv = 1.f / det;
  return {m.c * inv, -m.b * inv, m.a * inv};
}

// Everything the tile stages need about one projected Gaussian.
struct Splat {
  Vec2 mean;    // pixel coordinates
  Sym2 conic;   // inverse 2D covariance
  Sym2 cov;     // 2D covariance (with the low-pass)
  float opacity;
  float depth;  // camera-space z of the mean
};

// Projects one Gaussian. Returns false when it cannot be seen (outside near/far,
// degenerate footprint or below the opacity threshold).
DGT_HD bool project_gaussian(Vec3 mean, Vec4 quat, Vec3 scale, float opacity, const Camera& cam,
                             int width, int height, float near, float far, Splat& out) {
  const Vec3 p = matvec(cam.rot, mean) + cam.trans;
  if (!(p.z >= near && p.z <= far)) return false;
  if (!(opacity >= kAlphaMin)) return false;
  float qnorm;
  const Mat3 rot = quat_to_rotmat(normalize_quat(quat, qnorm));
  const Mat3 cov_world = covariance_3d(rot, scale);
  const Mat3 cov_cam = matmul(matmul(cam.rot, cov_world), transpose(cam.rot));
  const ProjJacobian J = projection_jacobian(p, cam, width, height);
  out.cov = project_covariance(cov_cam, J);
  float det;
  out.conic = invert_sym2(out.cov, det);
  if (!(det > 0.f) || !finite(out.conic.a) || !finite(out.conic.b) || !finite(out.conic.c)) return false;
  const float rz = 1.f / p.z;
  out.mean = {cam.fx * p.x * rz + cam.cx, cam.fy * p.y * rz + cam.cy};
  out.opacity = opacity;
  out.depth = p.z;
  return finite(out.mean.x) && finite(out.mean.y);
}

// ---------------------------------------------------------------------------
// Tile coverage: every pixel whose centre can reach alpha >= 1/255 lies in the
// ellipse q(d) = d^T conic d <= t with t = 2 ln(255 o). We enumerate, per tile row,
// the exact column span of that ellipse (opacity-aware, no 3-sigma box), slightly
// inflated so that rounding never drops a pixel the blend would keep.
// ---------------------------------------------------------------------------

struct Coverage {
  float mx, my;
  Sym2 conic;
  float t;             // iso-level of q
  float rx, ry;        // half-extents of the ellipse's bounding box
  float dy_right;      // y offset of the ellipse's right-most point
  int i0, i1, j0, j1;  // pixel box, inclusive, clipped to the image
};

DGT_HD bool splat_coverage(const Splat& s, int width, int height, Coverage& cov) {
  const float t_exact = 2.f * std::log(s.opacity * 255.f);
  cov.t = t_exact * 1.001f + 1e-3f;
  cov.mx = s.mean.x;
  cov.my = s.mean.y;
  cov.conic = s.conic;
  cov.rx = std::sqrt(cov.t * s.cov.a);
  cov.ry = std::sqrt(cov.t * s.cov.c);
  cov.dy_right = s.cov.b * std::sqrt(cov.t / s.cov.a);
  // pixel j is in range when |j + 0.5 - mx| <= rx
  const float fj0 = std::ceil(cov.mx - cov.rx - 0.5f), fj1 = std::floor(cov.mx + cov.rx - 0.5f);
  const float fi0 = std::ceil(cov.my - cov.ry - 0.5f), fi1 = std::floor(cov.my + cov.ry - 0.5f);
  if (!(fj1 >= 0.f && fi1 >= 0.f && fj0 <= width - 1.f && fi0 <= height - 1.f)) return false;
  cov.j0 = fj0 < 0.f ? 0 : (int)fj0;
  cov.i0 = fi0 < 0.f ? 0 : (int)fi0;
  cov.j1 = fj1 > width - 1.f ? width - 1 : (int)fj1;
  cov.i1 = fi1 > height - 1.f ? height - 1 : (int)fi1;
  return cov.j0 <= cov.j1 && cov.i0 <= cov.i1;
}

// Columns [ja, jb] of the ellipse over pixel rows [ia, ib]; false when empty.
DGT_HD bool coverage_row_span(const Coverage& cov, int ia, int ib, int& ja, int& jb) {
  const float dya = ia + 0.5f - cov.my, dyb = ib + 0.5f - cov.my;
  const float A = cov.conic.a, B = cov.conic.b;
  const float det = A * cov.conic.c - B * B;
  // x(dy) right end is concave in dy: its max over [dya, dyb] is at the clamped
  // location of the global maximum; the left end mirrors it.
  const float dr = fminf(fmaxf(cov.dy_right, dya), dyb);
  const float dl = fminf(fmaxf(-cov.dy_right, dya), dyb);
  const float sr = std::sqrt(fmaxf(A * cov.t - det * dr * dr, 0.f));
  const float sl = std::sqrt(fmaxf(A * cov.t - det * dl * dl, 0.f));
  const float xr = cov.mx + (-B * dr + sr) / A;
  const float xl = cov.mx + (-B * dl - sl) / A;
  const float fa = std::ceil(xl - 0.5f), fb = std::floor(xr - 0.5f);
  ja = fa < (float)cov.j0 ? cov.j0 : (int)fa;
  jb = fb > (float)cov.j1 ? cov.j1 : (int)fb;
  return ja <= jb;
}

// Calls visit(tile_row, tile_col_first, tile_col_last) for every tile row the
// splat touches, in a fixed order, so counting and emitting agree exactly.
template <typename Visit>
DGT_HD void for_each_tile_span(const Coverage& cov, Visit&& visit) {
  const int ty0 = cov.i0 / kTileSize, ty1 = cov.i1 / kTileSize;
  for (int ty = ty0; ty <= ty1; ++ty) {
    const int ia = ty * kTileSize > cov.i0 ? ty * kTileSize : cov.i0;
    const int ib = ty * kTileSize + kTileSize - 1 < cov.i1 ? ty * kTileSize + kTileSize - 1 : cov.i1;
    int ja, jb;
    if (coverage_row_span(cov, ia, ib, ja, jb)) visit(ty, ja / kTileSize, jb / kTileSize);
  }
}

DGT_HD int count_tiles(const Coverage& cov) {
  int n = 0;
  for_each_tile_span(cov, [&](int, int tx0, int tx1) { n += tx1 - tx0 + 1; });
  return n;
}

// ---------------------------------------------------------------------------
// Blending
// ---------------------------------------------------------------------------

DGT_HD float splat_power(Sym2 conic, float dx, float dy) {
  return 0.5f * (conic.a * dx * dx + conic.c * dy * dy) + conic.b * dx * dy;
}

// alpha of a splat at offset (dx, dy) from its mean; 0 when it is skipped.
// `gauss` receives exp(-power) for the backward.
DGT_HD float splat_alpha(Sym2 conic, float opacity, float dx, float dy, float& gauss) {
  const float power = splat_power(conic, dx, dy);
  if (power < 0.f) return 0.f;
  gauss = DGT_EXP(-power);
  const float alpha = fminf(kAlphaMax, opacity * gauss);
  return alpha < kAlphaMin ? 0.f : alpha;
}

// Gradient of one splat's alpha w.r.t. its 2D parameters, given dL/dalpha.
struct SplatGrad2D {
  float mean_x, mean_y;
  Sym2 conic;
  float opacity;
};

DGT_HD SplatGrad2D splat_alpha_vjp(Sym2 conic, float opacity, float gauss, float dx, float dy,
                                   float v_alpha) {
  SplatGrad2D g{0.f, 0.f, {0.f, 0.f, 0.f}, 0.f};
  if (opacity * gauss > kAlphaMax) return g;  // clamped: alpha does not move
  const float v_power = -opacity * gauss * v_alpha;
  g.opacity = gauss * v_alpha;
  g.conic = {0.5f * dx * dx * v_power, dx * dy * v_power, 0.5f * dy * dy * v_power};
  // d power / d mean = -(conic d)
  g.mean_x = -(conic.a * dx + conic.b * dy) * v_power;
  g.mean_y = -(conic.b * dx + conic.c * dy) * v_power;
  return g;
}

// ---------------------------------------------------------------------------
// Backward of the projection: 2D gradients -> mean, quaternion, scale.
// ---------------------------------------------------------------------------

struct GaussianGrad3D {
  Vec3 mean;
  Vec4 quat;
  Vec3 scale;
};

// conic = cov^-1 -> dL/dcov = -conic G conic with G the symmetric entry gradient.
DGT_HD Sym2 invert_sym2_vjp(Sym2 conic, Sym2 v_conic) {
  const float ga = v_conic.a, gb = 0.5f * v_conic.b, gc = v_conic.c;
  // P = conic * G
  const float p00 = conic.a * ga + conic.b * gb, p01 = conic.a * gb + conic.b * gc;
  const float p10 = conic.b * ga + conic.c * gb, p11 = conic.b * gb + conic.c * gc;
  // Q = P * conic
  const float q00 = p00 * conic.a + p01 * conic.b;
  const float q01 = p00 * conic.b + p01 * conic.c;
  const float q11 = p10 * conic.b + p11 * conic.c;
  return {-q00, -2.f * q01, -q11};
}

DGT_HD Vec4 quat_to_rotmat_vjp(Vec4 q, const Mat3& G) {
  const float w = q.w, x = q.x, y = q.y, z = q.z;
  const float(*g)[3] = G.m;
  Vec4 v;
  v.w = 2.f * (-z * g[0][1] + y * g[0][2] + z * g[1][0] - x * g[1][2] - y * g[2][0] + x * g[2][1]);
  v.x = 2.f * (y * g[0][1] + z * g[0][2] + y * g[1][0] - 2.f * x * g[1][1] - w * g[1][2] +
               z * g[2][0] + w * g[2][1] - 2.f * x * g[2][2]);
  v.y = 2.f * (-2.f * y * g[0][0] + x * g[0][1] + w * g[0][2] + x * g[1][0] + z * g[1][2] -
               w * g[2][0] + z * g[2][1] - 2.f * y * g[2][2]);
  v.z = 2.f * (-2.f * z * g[0][0] - w * g[0][1] + x * g[0][2] + w * g[1][0] - 2.f * z * g[1][1] +
               y * g[1][2] + x * g[2][0] + y * g[2][1]);
  return v;
}

DGT_HD Vec4 normalize_quat_vjp(Vec4 qn, float norm, Vec4 v) {
  const float d = qn.w * v.w + qn.x * v.x + qn.y * v.y + qn.z * v.z;
  const float inv = 1.f / norm;
  return {(v.w - qn.w * d) * inv, (v.x - qn.x * d) * inv, (v.y - qn.y * d) * inv,
          (v.z - qn.z * d) * inv};
}

// Given dL/dmean2d, dL/dconic and dL/ddepth of a visible splat, recompute the
// forward and return dL/dmean, dL/dquat (unnormalized input), dL/dscale.
DGT_HD GaussianGrad3D project_gaussian_vjp(Vec3 mean, Vec4 quat, Vec3 scale, const Camera& cam,
                                           int width, int height, Vec2 v_mean2d, Sym2 v_conic,
                                           float v_depth) {
  const Vec3 p = matvec(cam.rot, mean) + cam.trans;
  float qnorm;
  const Vec4 qn = normalize_quat(quat, qnorm);
  const Mat3 rot = quat_to_rotmat(qn);
  const Mat3 cov_world = covariance_3d(rot, scale);
  const Mat3 cov_cam = matmul(matmul(cam.rot, cov_world), transpose(cam.rot));
  const ProjJacobian J = projection_jacobian(p, cam, width, height);
  const Sym2 cov2 = project_covariance(cov_cam, J);
  float det;
  const Sym2 conic = invert_sym2(cov2, det);

  // conic -> 2D covariance (entry gradient G2, symmetric)
  const Sym2 v_cov2 = invert_sym2_vjp(conic, v_conic);
  const float g00 = v_cov2.a, g01 = 0.5f * v_cov2.b, g11 = v_cov2.c;

  // Sigma2 = J S J^T: dS = J^T G2 J ; dJ = 2 G2 J S
  float Jm[2][3] = {{J.j00, 0.f, J.j02}, {0.f, J.j11, J.j12}};
  const float G2[2][2] = {{g00, g01}, {g01, g11}};
  Mat3 v_cov_cam;
#pragma unroll
  for (int i = 0; i < 3; ++i)
#pragma unroll
    for (int j = 0; j < 3; ++j) {
      float acc = 0.f;
#pragma unroll
      for (int a = 0; a < 2; ++a)
#pragma unroll
        for (int b = 0; b < 2; ++b) acc += Jm[a][i] * G2[a][b] * Jm[b][j];
      v_cov_cam.m[i][j] = acc;
    }
  float v_J[2][3];
#pragma unroll
  for (int a = 0; a < 2; ++a)
#pragma unroll
    for (int j = 0; j < 3; ++j) {
      float acc = 0.f;
#pragma unroll
      for (int b = 0; b < 2; ++b)
#pragma unroll
        for (int k = 0; k < 3; ++k) acc += G2[a][b] * Jm[b][k] * cov_cam.m[k][j];
      v_J[a][j] = 2.f * acc;
    }

  // J(p) and mean2d(p) -> camera-space point
  const float rz = 1.f / p.z, rz2 = rz * rz, rz3 = rz2 * rz;
  Vec3 v_p;
  v_p.x = cam.fx * rz * v_mean2d.x;
  v_p.y = cam.fy * rz * v_mean2d.y;
  v_p.z = -(cam.fx * p.x * v_mean2d.x + cam.fy * p.y * v_mean2d.y) * rz2 + v_depth;
  // j00 = fx/z, j11 = fy/z
  v_p.z += -cam.fx * rz2 * v_J[0][0] - cam.fy * rz2 * v_J[1][1];
  // j02 = -fx tx / z^2 with tx = x (free) or z * lim (clamped)
  if (J.clamped_x) {
    v_p.z += cam.fx * (J.tx * rz) * rz2 * v_J[0][2];  // -fx lim / z -> fx lim / z^2
  } else {
    v_p.x += -cam.fx * rz2 * v_J[0][2];
    v_p.z += 2.f * cam.fx * J.tx * rz3 * v_J[0][2];
  }
  if (J.clamped_y) {
    v_p.z += cam.fy * (J.ty * rz) * rz2 * v_J[1][2];
  } else {
    v_p.y += -cam.fy * rz2 * v_J[1][2];
    v_p.z += 2.f * cam.fy * J.ty * rz3 * v_J[1][2];
  }

  GaussianGrad3D out;
  out.mean = matvec_t(cam.rot, v_p);

  // Sigma_cam = W Sigma W^T -> dSigma = W^T dSigma_cam W
  const Mat3 v_cov = matmul(matmul(transpose(cam.rot), v_cov_cam), cam.rot);
  // Sigma = M M^T, M = R diag(s): dM = (G + G^T) M
  Mat3 Mm = rot;
#pragma unroll
  for (int i = 0; i < 3; ++i) {
    Mm.m[i][0] *= scale.x;
    Mm.m[i][1] *= scale.y;
    Mm.m[i][2] *= scale.z;
  }
  Mat3 v_cov_sym;
#pragma unroll
  for (int i = 0; i < 3; ++i)
#pragma unroll
    for (int j = 0; j < 3; ++j) v_cov_sym.m[i][j] = v_cov.m[i][j] + v_cov.m[j][i];
  const Mat3 v_M = matmul(v_cov_sym, Mm);
  Mat3 v_rot;
  const float s[3] = {scale.x, scale.y, scale.z};
  float v_s[3] = {0.f, 0.f, 0.f};
#pragma unroll
  for (int i = 0; i < 3; ++i)
#pragma unroll
    for (int j = 0; j < 3; ++j) {
      v_rot.m[i][j] = v_M.m[i][j] * s[j];
      v_s[j] += v_M.m[i][j] * rot.m[i][j];
    }
  out.scale = {v_s[0], v_s[1], v_s[2]};
  out.quat = normalize_quat_vjp(qn, qnorm, quat_to_rotmat_vjp(qn, v_rot));
  return out;
}

}  // namespace dgt::raster
