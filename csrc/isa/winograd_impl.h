// Winograd F(4x4, 3x3) micro-kernels (Lavin & Gray, "Fast Algorithms for Convolutional Neural
// Networks", 2016), written once against the vector trait and included by kernels_impl.h, so each
// ISA compiles its own copy. A vector holds W tiles: lane i is tile i of a run of tiles along one
// tile row, so the transforms are lane-wise and the products over the input channels are a GEMM
// whose vectors run along the tiles (see csrc/winograd.h for the layouts).
#pragma once
// (included inside namespace deepcomp::{anonymous} of kernels_impl.h: V, VT are defined there)

// Output channels per register tile of the GEMM (the rows whose weights are broadcast), and its
// widest tile in vectors: kWinoMr * NV accumulators plus NV inputs stay in registers.
constexpr int kWinoMr = V::W >= 16 ? 8 : (V::W >= 8 ? 6 : 4);
constexpr int kWinoMaxNv = V::W >= 16 ? 3 : (V::W >= 8 ? 2 : 4);

// m[r * ms + i] = sum_c u[c * kWinoMr + r] * v[c * vs + i] for r < kWinoMr, i < NV * W. Prefetches
// the next weight panel (u + C * kWinoMr, the driver's next call) into L2 meanwhile.
template <int NV>
void wino_gemm_t(const float* u, const float* v, int64_t C, int64_t vs, float* m, int64_t ms) {
  constexpr int W = V::W;
  VT acc[kWinoMr][NV];
  for (int r = 0; r < kWinoMr; ++r)
    for (int j = 0; j < NV; ++j) acc[r][j] = V::zero();
  const float* next = u + C * kWinoMr;
  for (int64_t c = 0; c < C; ++c, u += kWinoMr, v += vs) {
    __builtin_prefetch(next + c * kWinoMr, 0, 2);
    VT x[NV];
    for (int j = 0; j < NV; ++j) x[j] = V::load(v + j * W);
    for (int r = 0; r < kWinoMr; ++r) {
      const VT b = V::set1(u[r]);
      for (int j = 0; j < NV; ++j) acc[r][j] = V::fma(b, x[j], acc[r][j]);
    }
  }
  for (int r = 0; r < kWinoMr; ++r)
    for (int j = 0; j < NV; ++j) V::store(m + r * ms + j * W, acc[r][j]);
}

// Tiles beyond this ISA's kWinoMaxNv are listed with a null function and left out of the list.
#define DC_WINO_ENTRY(NV)                                                                   \
  {"f32_wino_gemm_" #NV "v__" DC_NAME, "wino_gemm", NV, nullptr, nullptr, nullptr, \
   NV <= kWinoMaxNv ? &wino_gemm_t<(NV <= kWinoMaxNv ? NV : 1)> : nullptr},
constexpr MicroKernel kWinoKernels[] = {DC_WINO_GEMM_TILES(DC_WINO_ENTRY)};
#undef DC_WINO_ENTRY

void wino_gemm(const float* u, const float* v, int64_t C, int64_t vs, int nv, float* m, int64_t ms) {
  kWinoKernels[size_t(nv - 1)].wino_gemm(u, v, C, vs, m, ms);
}

// The most tiles of a last, partly empty tile vector that wino_tail_t takes (0: none): below a
// third of a vector, broadcasting the tiles costs fewer instructions than a whole vector's products.
constexpr int kWinoTail = V::W >= 16 ? 4 : (V::W >= 8 ? 2 : 0);

// m[r * ms + i] = sum_c u[c * kWinoMr + r] * v[c * vs + i] for r < kWinoMr, i < NT: wino_gemm_t for
// NT single tiles, with the vectors along the output channels (one load of the register tile's
// weights per input channel) and each tile broadcast.
template <int NT>
void wino_tail_t(const float* u, const float* v, int64_t C, int64_t vs, float* m, int64_t ms) {
  constexpr int R = kWinoMr < V::W ? kWinoMr : V::W;  // kWinoMr <= V::W wherever kWinoTail > 0
  constexpr int P = NT >= 3 ? 1 : 4 / NT;  // input channels in flight: 3 or 4 FMA chains
  VT acc[P][NT];
  for (int p = 0; p < P; ++p)
    for (int i = 0; i < NT; ++i) acc[p][i] = V::zero();
  int64_t c = 0;
  for (; c + P <= C; c += P)
    for (int p = 0; p < P; ++p) {
      const VT w = V::load_range(u + (c + p) * kWinoMr, 0, R);
      for (int i = 0; i < NT; ++i) acc[p][i] = V::fma(V::set1(v[(c + p) * vs + i]), w, acc[p][i]);
    }
  for (; c < C; ++c) {
    const VT w = V::load_range(u + c * kWinoMr, 0, R);
    for (int i = 0; i < NT; ++i) acc[0][i] = V::fma(V::set1(v[c * vs + i]), w, acc[0][i]);
  }
  alignas(64) float out[NT][V::W];
  for (int i = 0; i < NT; ++i) {
    for (int p = 1; p < P; ++p) acc[0][i] = V::add(acc[0][i], acc[p][i]);
    V::store(out[i], acc[0][i]);
  }
  for (int r = 0; r < R; ++r)
    for (int i = 0; i < NT; ++i) m[r * ms + i] = out[i][r];
}

#define DC_WINO_TAIL_ENTRY(NT)                                                                          \
  {"f32_wino_tail_" #NT "t__" DC_NAME, "wino_tail", NT, nullptr, nullptr, nullptr,                     \
   NT <= kWinoTail ? &wino_tail_t<(NT <= kWinoTail ? NT : 1)> : nullptr},
constexpr MicroKernel kWinoTailKernels[] = {DC_WINO_TAIL_TILES(DC_WINO_TAIL_ENTRY)};
#undef DC_WINO_TAIL_ENTRY

void wino_tail(const float* u, const float* v, int64_t C, int64_t vs, int nt, float* m, int64_t ms) {
  kWinoTailKernels[size_t(nt - 1)].wino_gemm(u, v, C, vs, m, ms);
}

// The 1-D input transform B^T d of six values.
inline void wino_in_1d(const VT* d, VT* o) {
  const VT two = V::set1(2.f), four = V::set1(4.f), mfive = V::set1(-5.f);
  const VT d42 = V::sub(d[4], d[2]), d31 = V::sub(d[3], d[1]);
  o[0] = V::fma(four, d[0], V::fma(mfive, d[2], d[4]));
  o[1] = V::sub(V::add(d[3], d[4]), V::mul(four, V::add(d[1], d[2])));
  o[2] = V::fma(four, V::sub(d[1], d[2]), V::sub(d[4], d[3]));
  o[3] = V::fma(two, d31, d42);
  o[4] = V::sub(d42, V::mul(two, d31));
  o[5] = V::fma(four, d[1], V::fma(mfive, d[3], d[5]));
}

// The 1-D output transform A^T m of six values.
inline void wino_out_1d(const VT* m, VT* o) {
  const VT two = V::set1(2.f), four = V::set1(4.f), eight = V::set1(8.f);
  const VT s12 = V::add(m[1], m[2]), d12 = V::sub(m[1], m[2]);
  const VT s34 = V::add(m[3], m[4]), d34 = V::sub(m[3], m[4]);
  o[0] = V::add(V::add(m[0], s12), s34);
  o[1] = V::fma(two, d34, d12);
  o[2] = V::fma(four, s34, s12);
  o[3] = V::add(V::fma(eight, d34, d12), m[5]);
}

// Row r of the 6 x 6 patches of W tiles: out[j][i] = x[ix0 + 4i + j] of the row (zero outside
// [0, Wd)), from four vector loads and two scalars.
inline void wino_patch_row(const float* row, int64_t ix0, int64_t Wd, VT out[6]) {
  constexpr int W = V::W;
  VT f[4];
  for (int k = 0; k < 4; ++k) f[k] = V::load_range(row + ix0 + k * W, -ix0 - k * W, Wd - ix0 - k * W);
  V::deinterleave4(f, out);
  const int64_t c4 = ix0 + 4 * W, c5 = c4 + 1;
  out[4] = V::shift_in(out[0], c4 >= 0 && c4 < Wd ? row[c4] : 0.f);
  out[5] = V::shift_in(out[1], c5 >= 0 && c5 < Wd ? row[c5] : 0.f);
}

// Tiles i < n (n <= W) of one input plane x [H][Wd] whose 6 x 6 patches start at row iy0, column
// ix0 + 4 * i (zero outside the plane): v[e * es + i] = (B^T d B)[e], e < 36.
void wino_input(const float* x, int64_t H, int64_t Wd, int64_t iy0, int64_t ix0, int n, float* v, int64_t es) {
  VT t[36];
  for (int r = 0; r < 6; ++r) {
    const int64_t iy = iy0 + r;
    VT d[6];
    if (iy >= 0 && iy < H) {
      wino_patch_row(x + iy * Wd, ix0, Wd, d);
    } else {
      for (int j = 0; j < 6; ++j) d[j] = V::zero();
    }
    wino_in_1d(d, t + r * 6);
  }
  for (int j = 0; j < 6; ++j) {
    VT a[6], o[6];
    for (int r = 0; r < 6; ++r) a[r] = t[r * 6 + j];
    wino_in_1d(a, o);
    for (int r = 0; r < 6; ++r) V::store_range(v + (r * 6 + j) * es, o[r], 0, n);
  }
}

// Tiles i < n (n <= W) of one output plane: m[e * es + i] (e < 36; W readable lanes each) to
// y[oy0 + a][ox0 + 4 * i + b] (a, b < 4, inside the OH x OW plane) as
// relu?((A^T M A + bias) * scale + shift).
void wino_output(const float* m, int64_t es, int n, float bias, float scale, float shift, bool relu, float* y,
                 int64_t OH, int64_t OW, int64_t oy0, int64_t ox0) {
  constexpr int W = V::W;
  VT t[6][4];
  for (int r = 0; r < 6; ++r) {
    VT a[6];
    for (int j = 0; j < 6; ++j) a[j] = V::load(m + (r * 6 + j) * es);
    wino_out_1d(a, t[r]);
  }
  VT res[4][4];  // res[b][i]: output row i, column b of each tile
  for (int b = 0; b < 4; ++b) {
    VT a[6];
    for (int r = 0; r < 6; ++r) a[r] = t[r][b];
    wino_out_1d(a, res[b]);
  }
  const VT vb = V::set1(bias), vs = V::set1(scale), vh = V::set1(shift);
  const int64_t nx = std::min<int64_t>(4 * int64_t(n), OW - ox0);
  for (int i = 0; i < 4 && oy0 + i < OH; ++i) {
    VT q[4], f[4];
    for (int b = 0; b < 4; ++b) {
      q[b] = V::add(V::mul(V::add(res[b][i], vb), vs), vh);
      if (relu) q[b] = V::max(V::zero(), q[b]);  // NaN stays NaN, like torch
    }
    V::interleave4(q, f);
    float* row = y + (oy0 + i) * OW + ox0;
    for (int k = 0; k < 4 && k * W < nx; ++k) V::store_range(row + k * W, f[k], 0, nx - k * W);
  }
}
