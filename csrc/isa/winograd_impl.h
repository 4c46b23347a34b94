// Winograd F(4x4, 3x3) and F(4x4, 5x5) micro-kernels (Lavin & Gray, "Fast Algorithms for
// Convolutional Neural Networks", 2016), written once against the vector trait and included by
// kernels_impl.h, so each ISA compiles its own copy. A vector holds W tiles: lane i is tile i of a
// run of tiles along one tile row, so the transforms are lane-wise and the products over the input
// channels are a GEMM whose vectors run along the tiles (see csrc/winograd.h for the layouts).
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

// ---- weights transformed per call (layers whose transformed weights are over the memory budget) ----
// Lanes per row of the taps that wino_weights reads: kWinoMr rounded up to whole vectors.
constexpr int kWinoRowLanes = (kWinoMr + V::W - 1) / V::W * V::W;

// k[0] x0 + k[1] x1 + k[2] x2, without the terms whose constant coefficient is zero.
inline VT wino_lin3(const double (&k)[3], VT x0, VT x1, VT x2) {
  const VT x[3] = {x0, x1, x2};
  VT s = V::zero();
  bool any = false;
  for (int j = 0; j < 3; ++j) {
    if (k[j] == 0.0) continue;
    const VT kj = V::set1(float(k[j]));
    s = any ? V::fma(kj, x[j], s) : (k[j] == 1.0 ? x[j] : V::mul(kj, x[j]));
    any = true;
  }
  return s;
}

// Row a of the F(4x4, 3x3) transformed weights G g G^T of the kWinoMr kernels of one register
// tile: planes e = 6 a + b (b < 6) to u[b * es + c * kWinoMr + r], from the taps d[(c * 9 + tap) *
// kWinoRowLanes + r] (kernel r in lane r, later lanes zero), in two 1-D passes: z = G[a, .] g, then
// z G^T. Stores are whole vectors: the lanes past kernel kWinoMr - 1 of channel c fall on channel
// c + 1, whose own stores come later, and after the last channel on kWinoRowLanes floats of slack
// in each plane of u.
template <int A>
void wino_weights_t(const float* d, int64_t C, float* u, int64_t es) {
  constexpr const auto& G = kG3;  // csrc/winograd_points.h
  constexpr int a = A;
  for (int64_t c = 0; c < C; ++c)
    for (int r0 = 0; r0 < kWinoMr; r0 += V::W) {
      const float* dc = d + c * 9 * kWinoRowLanes + r0;
      VT g[9];
      for (int t = 0; t < 9; ++t) g[t] = V::load(dc + t * kWinoRowLanes);
      const VT z0 = wino_lin3(G[a], g[0], g[3], g[6]), z1 = wino_lin3(G[a], g[1], g[4], g[7]),
               z2 = wino_lin3(G[a], g[2], g[5], g[8]);
      float* uc = u + c * kWinoMr + r0;
#pragma GCC unroll 6
      for (int b = 0; b < 6; ++b) V::store(uc + b * es, wino_lin3(G[b], z0, z1, z2));
    }
}

void wino_weights(const float* d, int64_t C, int a, float* u, int64_t es) {
  constexpr void (*kRows[6])(const float*, int64_t, float*, int64_t) = {
      &wino_weights_t<0>, &wino_weights_t<1>, &wino_weights_t<2>, &wino_weights_t<3>, &wino_weights_t<4>, &wino_weights_t<5>};
  kRows[a](d, C, u, es);
}

// The 1-D input transform B^T d of F(4, 3): six values (points 0, +-1, +-2 and infinity).
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

// The 1-D input transform of F(4, 5): eight values (points 0, +-1, +-2, +-1/2 and infinity). Rows
// 2k - 1 and 2k (points +-p) share an even part e and an odd part f: e + f and e - f.
inline void wino_in_1d8(const VT* d, VT* o) {
  const VT c21 = V::set1(5.25f), c17 = V::set1(-4.25f), m25 = V::set1(-2.5f), m125 = V::set1(-1.25f);
  const VT half = V::set1(0.5f), quarter = V::set1(0.25f), two = V::set1(2.f), four = V::set1(4.f),
           mfive = V::set1(-5.f);
  o[0] = V::fma(c21, V::sub(d[4], d[2]), V::sub(d[0], d[6]));
  o[7] = V::fma(c21, V::sub(d[3], d[5]), V::sub(d[7], d[1]));
  const VT e1 = V::fma(c17, d[4], V::add(d[2], d[6])), f1 = V::fma(c17, d[3], V::add(d[1], d[5]));
  o[1] = V::add(e1, f1);
  o[2] = V::sub(e1, f1);
  const VT e2 = V::fma(quarter, d[2], V::fma(m125, d[4], d[6]));
  const VT f2 = V::fma(half, d[1], V::fma(m25, d[3], V::mul(two, d[5])));
  o[3] = V::add(e2, f2);
  o[4] = V::sub(e2, f2);
  const VT e3 = V::fma(four, d[2], V::fma(mfive, d[4], d[6]));
  const VT f3 = V::fma(two, d[1], V::fma(m25, d[3], V::mul(half, d[5])));
  o[5] = V::add(e3, f3);
  o[6] = V::sub(e3, f3);
}

// The 1-D output transform A^T m of F(4, 3): six values to four.
inline void wino_out_1d(const VT* m, VT* o) {
  const VT two = V::set1(2.f), four = V::set1(4.f), eight = V::set1(8.f);
  const VT s12 = V::add(m[1], m[2]), d12 = V::sub(m[1], m[2]);
  const VT s34 = V::add(m[3], m[4]), d34 = V::sub(m[3], m[4]);
  o[0] = V::add(V::add(m[0], s12), s34);
  o[1] = V::fma(two, d34, d12);
  o[2] = V::fma(four, s34, s12);
  o[3] = V::add(V::fma(eight, d34, d12), m[5]);
}

// The 1-D output transform of F(4, 5): eight values to four.
inline void wino_out_1d8(const VT* m, VT* o) {
  const VT two = V::set1(2.f), four = V::set1(4.f), eight = V::set1(8.f);
  const VT half = V::set1(0.5f), quarter = V::set1(0.25f), eighth = V::set1(0.125f);
  const VT s12 = V::add(m[1], m[2]), d12 = V::sub(m[1], m[2]);
  const VT s34 = V::add(m[3], m[4]), d34 = V::sub(m[3], m[4]);
  const VT s56 = V::add(m[5], m[6]), d56 = V::sub(m[5], m[6]);
  o[0] = V::add(V::add(m[0], s12), V::add(s34, s56));
  o[1] = V::fma(two, d34, V::fma(half, d56, d12));
  o[2] = V::fma(four, s34, V::fma(quarter, s56, s12));
  o[3] = V::add(V::fma(eight, d34, V::fma(eighth, d56, d12)), m[7]);
}

// The 1-D transforms of a tile of N = 6 (F(4, 3)) or 8 (F(4, 5)) points.
template <int N>
inline void wino_in_t(const VT* d, VT* o) {
  if constexpr (N == 6) wino_in_1d(d, o);
  else wino_in_1d8(d, o);
}
template <int N>
inline void wino_out_t(const VT* m, VT* o) {
  if constexpr (N == 6) wino_out_1d(m, o);
  else wino_out_1d8(m, o);
}

// Row r of the N x N patches of W tiles: out[j][i] = x[ix0 + 4i + j] of the row (zero outside
// [0, Wd)), from four vector loads and N - 4 scalars.
template <int N>
inline void wino_patch_row(const float* row, int64_t ix0, int64_t Wd, VT out[N]) {
  constexpr int W = V::W;
  VT f[4];
  for (int k = 0; k < 4; ++k) f[k] = V::load_range(row + ix0 + k * W, -ix0 - k * W, Wd - ix0 - k * W);
  V::deinterleave4(f, out);
  for (int j = 4; j < N; ++j) {
    const int64_t c = ix0 + 4 * W + j - 4;
    out[j] = V::shift_in(out[j - 4], c >= 0 && c < Wd ? row[c] : 0.f);
  }
}

// Tiles i < n (n <= W) of one input plane x [H][Wd] whose N x N patches start at row iy0, column
// ix0 + 4 * i (zero outside the plane): v[e * es + i] = (B^T d B)[e], e < N * N.
template <int N>
void wino_input_t(const float* x, int64_t H, int64_t Wd, int64_t iy0, int64_t ix0, int n, float* v, int64_t es) {
  VT t[N * N];
  for (int r = 0; r < N; ++r) {
    const int64_t iy = iy0 + r;
    VT d[N];
    if (iy >= 0 && iy < H) {
      wino_patch_row<N>(x + iy * Wd, ix0, Wd, d);
    } else {
      for (int j = 0; j < N; ++j) d[j] = V::zero();
    }
    wino_in_t<N>(d, t + r * N);
  }
  for (int j = 0; j < N; ++j) {
    VT a[N], o[N];
    for (int r = 0; r < N; ++r) a[r] = t[r * N + j];
    wino_in_t<N>(a, o);
    for (int r = 0; r < N; ++r) V::store_range(v + (r * N + j) * es, o[r], 0, n);
  }
}

void wino_input(const float* x, int64_t H, int64_t Wd, int64_t iy0, int64_t ix0, int n, float* v, int64_t es,
                int ksize) {
  if (ksize == 5) return wino_input_t<8>(x, H, Wd, iy0, ix0, n, v, es);
  wino_input_t<6>(x, H, Wd, iy0, ix0, n, v, es);
}

// Tiles i < n (n <= W) of one output plane: m[e * es + i] (e < N * N; W readable lanes each) to
// y[oy0 + a][ox0 + 4 * i + b] (a, b < 4, inside the OH x OW plane) as
// relu?((A^T M A + bias) * scale + shift).
template <int N>
void wino_output_t(const float* m, int64_t es, int n, float bias, float scale, float shift, bool relu, float* y,
                   int64_t OH, int64_t OW, int64_t oy0, int64_t ox0) {
  constexpr int W = V::W;
  VT t[N][4];
  for (int r = 0; r < N; ++r) {
    VT a[N];
    for (int j = 0; j < N; ++j) a[j] = V::load(m + (r * N + j) * es);
    wino_out_t<N>(a, t[r]);
  }
  VT res[4][4];  // res[b][i]: output row i, column b of each tile
  for (int b = 0; b < 4; ++b) {
    VT a[N];
    for (int r = 0; r < N; ++r) a[r] = t[r][b];
    wino_out_t<N>(a, res[b]);
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

void wino_output(const float* m, int64_t es, int n, float bias, float scale, float shift, bool relu, float* y,
                 int64_t OH, int64_t OW, int64_t oy0, int64_t ox0, int ksize) {
  if (ksize == 5) return wino_output_t<8>(m, es, n, bias, scale, shift, relu, y, OH, OW, oy0, ox0);
  wino_output_t<6>(m, es, n, bias, scale, shift, relu, y, OH, OW, oy0, ox0);
}
