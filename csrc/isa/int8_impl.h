// The int8 micro-kernels, written once against a trait and compiled once per ISA (see
// int8_kernels.h for what each computes). Include after defining:
//   DC8_TRAIT  the trait (W lanes; int vector I, prepared input A, weight B, float vector F)
//   DC8_NAME   the path's name as a string literal
//   DC8_ENTRY  the function returning this path's table
// and optionally DC8_PAIRS (Int8Kernels::pairs; default nullptr) and DC8_TILE_NV (Int8Kernels::tile).
// Integer sums are exact on every path; the requantization does the same float32 operations in the
// same order (the files are compiled with -ffp-contract=off), so every path gives the same bits.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "int8_kernels.h"

#ifndef DC8_PAIRS
#define DC8_PAIRS nullptr
#endif

namespace deepcomp {
namespace {

using T = DC8_TRAIT;
using I = typename T::I;
constexpr int W = T::W;

// ---- convolution, one channel: NV vectors of W output positions per pass over the blocks ----------
template <int NV>
inline void sparse_chunk(const int32_t* off, const int32_t* w4, int64_t nnz, const uint8_t* in, int32_t* acc) {
  I a[NV];
  for (int v = 0; v < NV; ++v) a[v] = T::zero();
  for (int64_t j = 0; j < nnz; ++j) {
    const typename T::B w = T::bw(w4[j]);
    const uint8_t* p = in + off[j];
    for (int v = 0; v < NV; ++v) a[v] = T::dp(a[v], T::prep(T::load(p + 4 * W * v)), w);
  }
  for (int v = 0; v < NV; ++v) T::store(acc + W * v, a[v]);
}

void conv_sparse(const int32_t* off, const int32_t* w4, int64_t nnz, const uint8_t* in, int64_t n, int32_t* acc) {
  const int64_t nvec = (n + W - 1) / W;
  int64_t i = 0;
  for (; i + 8 <= nvec; i += 8) sparse_chunk<8>(off, w4, nnz, in + 4 * W * i, acc + W * i);
  const uint8_t* p = in + 4 * W * i;
  int32_t* o = acc + W * i;
  switch (nvec - i) {
    case 7: sparse_chunk<7>(off, w4, nnz, p, o); break;
    case 6: sparse_chunk<6>(off, w4, nnz, p, o); break;
    case 5: sparse_chunk<5>(off, w4, nnz, p, o); break;
    case 4: sparse_chunk<4>(off, w4, nnz, p, o); break;
    case 3: sparse_chunk<3>(off, w4, nnz, p, o); break;
    case 2: sparse_chunk<2>(off, w4, nnz, p, o); break;
    case 1: sparse_chunk<1>(off, w4, nnz, p, o); break;
    default: break;
  }
}

// ---- convolution, four channels over every block: one input load feeds four accumulators --------
template <int NV>
inline void dense_chunk(const int32_t* off, const int32_t* w4x4, int64_t K, const uint8_t* in, int32_t* acc,
                        int64_t stride) {
  I a[4][NV];
  for (int o = 0; o < 4; ++o)
    for (int v = 0; v < NV; ++v) a[o][v] = T::zero();
  for (int64_t k = 0; k < K; ++k) {
    const uint8_t* p = in + off[k];
    typename T::A x[NV];
    for (int v = 0; v < NV; ++v) x[v] = T::prep(T::load(p + 4 * W * v));
    for (int o = 0; o < 4; ++o) {
      const typename T::B w = T::bw(w4x4[4 * k + o]);
      for (int v = 0; v < NV; ++v) a[o][v] = T::dp(a[o][v], x[v], w);
    }
  }
  for (int o = 0; o < 4; ++o)
    for (int v = 0; v < NV; ++v) T::store(acc + o * stride + W * v, a[o][v]);
}

void conv_dense4(const int32_t* off, const int32_t* w4x4, int64_t K, const uint8_t* in, int64_t n, int32_t* acc,
                 int64_t stride) {
  const int64_t nvec = (n + W - 1) / W;
  int64_t i = 0;
  for (; i + 4 <= nvec; i += 4) dense_chunk<4>(off, w4x4, K, in + 4 * W * i, acc + W * i, stride);
  const uint8_t* p = in + 4 * W * i;
  int32_t* o = acc + W * i;
  switch (nvec - i) {
    case 3: dense_chunk<3>(off, w4x4, K, p, o, stride); break;
    case 2: dense_chunk<2>(off, w4x4, K, p, o, stride); break;
    case 1: dense_chunk<1>(off, w4x4, K, p, o, stride); break;
    default: break;
  }
}

// ---- convolution, four channels sharing their input loads (register tiling over channels) -------
// A run's mask M is a template argument, so each of the 15 patterns is a branch-free loop: load a
// tap's NV input vectors once, then one broadcast weight and NV dot products per channel of M.
constexpr int popcount4(int m) { return (m & 1) + (m >> 1 & 1) + (m >> 2 & 1) + (m >> 3 & 1); }

// One tap: broadcast the mask's weights, then load each input vector once and feed it to every
// channel of the mask (one input register live, so NV can grow to the accumulators' limit).
template <int M, int NV>
inline void tiled_tap(const uint8_t* p, const int32_t* w, I (&a)[4][NV]) {
  typename T::B b[4];
  for (int o = 0; o < 4; ++o)
    if ((M >> o) & 1) b[o] = T::bw(w[popcount4(M & ((1 << o) - 1))]);
  for (int v = 0; v < NV; ++v) {
    const typename T::A x = T::prep(T::load(p + 4 * W * v));
    for (int o = 0; o < 4; ++o)
      if ((M >> o) & 1) a[o][v] = T::dp(a[o][v], x, b[o]);
  }
}

template <int M, int NV>
inline void tiled_run(const int32_t* off, const int32_t* w, int64_t count, const uint8_t* in, I (&a)[4][NV]) {
  for (int64_t k = 0; k < count; ++k) tiled_tap<M, NV>(in + off[k], w + popcount4(M) * k, a);
}

template <int NV>
inline void tiled_chunk(const int32_t* off, const int32_t* w, const int32_t* runs, int64_t nruns, bool add,
                        const uint8_t* in, int32_t* acc, int64_t stride) {
  I a[4][NV];
  for (int o = 0; o < 4; ++o)
    for (int v = 0; v < NV; ++v) a[o][v] = add ? T::loadi(acc + o * stride + W * v) : T::zero();
  for (int64_t r = 0; r < nruns; ++r) {
    const int mask = runs[2 * r];
    const int64_t count = runs[2 * r + 1];
    switch (mask) {
#define DC8_RUN(m) \
  case m:          \
    tiled_run<m, NV>(off, w, count, in, a); \
    break;
      DC8_RUN(1) DC8_RUN(2) DC8_RUN(3) DC8_RUN(4) DC8_RUN(5) DC8_RUN(6) DC8_RUN(7) DC8_RUN(8)
      DC8_RUN(9) DC8_RUN(10) DC8_RUN(11) DC8_RUN(12) DC8_RUN(13) DC8_RUN(14) DC8_RUN(15)
#undef DC8_RUN
      default: break;
    }
    off += count;
    w += popcount4(mask) * count;
  }
  for (int o = 0; o < 4; ++o)
    for (int v = 0; v < NV; ++v) T::store(acc + o * stride + W * v, a[o][v]);
}

// Vectors per pass: 4 x NV sums, one prepared input and the mask's (up to 4) weights fit the
// register file (32 zmm; 16 ymm, where AVX2's prepared input and weights take two registers each).
#ifdef DC8_TILE_NV
constexpr int kTileNV = DC8_TILE_NV;
#else
constexpr int kTileNV = W == 8 ? 2 : 6;
#endif

// One pass of nv <= NV vectors (each count compiled with its own register allocation).
template <int NV>
inline void tiled_pass(int64_t nv, const int32_t* off, const int32_t* w, const int32_t* runs, int64_t nruns, bool add,
                       const uint8_t* in, int32_t* acc, int64_t stride) {
  if constexpr (NV > 1)
    if (nv < NV) return tiled_pass<NV - 1>(nv, off, w, runs, nruns, add, in, acc, stride);
  tiled_chunk<NV>(off, w, runs, nruns, add, in, acc, stride);
}

// Passes of at most kTileNV vectors, as even as possible: a short last pass (13 vectors as 6 + 6 + 1)
// would make each channel's sums one chain of dependent dot products, latency-bound.
void conv_tiled4(const int32_t* off, const int32_t* w, const int32_t* runs, int64_t nruns, bool add, const uint8_t* in,
                 int64_t n, int32_t* acc, int64_t stride) {
  const int64_t nvec = (n + W - 1) / W, passes = (nvec + kTileNV - 1) / kTileNV;
  int64_t i = 0;
  for (int64_t pass = 0; pass < passes; ++pass) {
    const int64_t nv = (nvec - i) / (passes - pass);
    tiled_pass<kTileNV>(nv, off, w, runs, nruns, add, in + 4 * W * i, acc + W * i, stride);
    i += nv;
  }
}

// ---- requantization -------------------------------------------------------------------------------
inline typename T::F requant(I acc, const Requant& rq, bool relu) {
  typename T::F y = T::cvt(T::subi(acc, T::set1i(rq.comp)));
  y = T::mulf(y, T::set1f(rq.m));
  y = T::addf(y, T::set1f(rq.b));
  if (relu) y = T::maxf(y, T::set1f(0.f));
  return y;
}

void requant_u8x4(const int32_t* acc, int64_t stride, int64_t n, const Requant* rq, int32_t zp, bool relu,
                  uint32_t* out) {
  const typename T::F lo = T::set1f(float(-zp)), hi = T::set1f(float(255 - zp));
  const I z = T::set1i(zp);
  for (int64_t i = 0; i < n; i += W) {
    I packed = T::zero();
    for (int o = 0; o < 4; ++o) {
      typename T::F y = requant(T::loadi(acc + o * stride + i), rq[o], relu);
      y = T::minf(T::maxf(y, lo), hi);
      packed = T::ori(packed, T::shl(T::addi(T::rint(y), z), 8 * o));
    }
    if (i + W <= n) {
      T::store(reinterpret_cast<int32_t*>(out + i), packed);
    } else {
      int32_t tmp[W];
      T::store(tmp, packed);
      std::memcpy(out + i, tmp, sizeof(int32_t) * size_t(n - i));
    }
  }
}

void requant_f32(const int32_t* acc, int64_t n, const Requant& rq, float lo, float hi, float* out) {
  const typename T::F vlo = T::set1f(lo), vhi = T::set1f(hi);
  for (int64_t i = 0; i < n; i += W) {
    const typename T::F y = T::minf(T::maxf(requant(T::loadi(acc + i), rq, false), vlo), vhi);
    if (i + W <= n) {
      T::storef(out + i, y);
    } else {
      float tmp[W];
      T::storef(tmp, y);
      std::memcpy(out + i, tmp, sizeof(float) * size_t(n - i));
    }
  }
}

// ---- quantizing fp32 into the channel-blocked layout ------------------------------------------------
inline uint8_t quantize_value(float x, float inv_scale, int32_t zp) {
  float v = x * inv_scale;
  v = v > float(-zp) ? v : float(-zp);  // as the vector max: NaN -> -zp
  v = v < float(255 - zp) ? v : float(255 - zp);
  return uint8_t(int32_t(std::lrint(v)) + zp);
}

struct Quantizer {
  typename T::F s, lo, hi;
  I z;
  Quantizer(float inv_scale, int32_t zp)
      : s(T::set1f(inv_scale)), lo(T::set1f(float(-zp))), hi(T::set1f(float(255 - zp))), z(T::set1i(zp)) {}
  I operator()(const float* x) const { return T::addi(T::rint(T::minf(T::maxf(T::mulf(T::loadf(x), s), lo), hi)), z); }
};

void pack_row4(const float* const* rows, int64_t n, float inv_scale, int32_t zp, uint32_t* lanes) {
  const Quantizer q(inv_scale, zp);
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    I packed = T::zero();
    for (int c = 0; c < 4; ++c) packed = T::ori(packed, T::shl(q(rows[c] + i), 8 * c));
    T::store(reinterpret_cast<int32_t*>(lanes + i), packed);
  }
  for (; i < n; ++i) {
    uint32_t lane = 0;
    for (int c = 0; c < 4; ++c) lane |= uint32_t(quantize_value(rows[c][i], inv_scale, zp)) << (8 * c);
    lanes[i] = lane;
  }
}

void quantize_bytes(const float* x, int64_t n, float inv_scale, int32_t zp, uint8_t* out) {
  const Quantizer q(inv_scale, zp);
  int64_t i = 0;
  for (; i + W <= n; i += W) T::store_bytes(out + i, q(x + i));
  for (; i < n; ++i) out[i] = quantize_value(x[i], inv_scale, zp);
}

// ---- max-pool on the int32 sums (the requantization is monotone, so it commutes with max) ---------
void max_pool_row(const int32_t* acc, int64_t stride, int64_t pk, int64_t ps, int64_t n, int32_t* vtmp, int32_t* out) {
  const int64_t span = (n - 1) * ps + pk;
  for (int64_t c = 0; c < span; c += W) {
    I m = T::loadi(acc + c);
    for (int64_t i = 1; i < pk; ++i) m = T::maxi(m, T::loadi(acc + i * stride + c));
    T::store(vtmp + c, m);
  }
  for (int64_t c = 0; c < n; c += W) {
    I m;
    if (ps == 2) {
      m = T::evens(vtmp + 2 * c);
      for (int64_t j = 1; j < pk; ++j) m = T::maxi(m, T::evens(vtmp + 2 * c + j));
    } else if (ps == 1) {
      m = T::loadi(vtmp + c);
      for (int64_t j = 1; j < pk; ++j) m = T::maxi(m, T::loadi(vtmp + c + j));
    } else {
      int32_t lanes[W];
      for (int l = 0; l < W; ++l) {
        lanes[l] = 0;
        if (c + l >= n) continue;
        const int32_t* v = vtmp + (c + l) * ps;
        lanes[l] = v[0];
        for (int64_t j = 1; j < pk; ++j) lanes[l] = lanes[l] > v[j] ? lanes[l] : v[j];
      }
      m = T::loadi(lanes);
    }
    if (c + W <= n) {
      T::store(out + c, m);
    } else {
      int32_t tmp[W];
      T::store(tmp, m);
      std::memcpy(out + c, tmp, sizeof(int32_t) * size_t(n - c));
    }
  }
}

// ---- linear ---------------------------------------------------------------------------------------
inline uint32_t lane(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// A layer's blocks (weights and columns) are read once per call, often from memory (the convs before
// evicted them): the linear kernels ask for them kPrefetch blocks (1 KB) ahead of use, a line each.
constexpr int64_t kPrefetch = 256;
inline void prefetch_blocks(const int32_t* col, const int32_t* w4, int64_t j) {
  __builtin_prefetch(col + j + kPrefetch);
  __builtin_prefetch(w4 + j + kPrefetch);
}

int32_t linear_sparse1(const int32_t* col, const int32_t* w4, int64_t nnz, const uint8_t* x) {
  I a0 = T::zero(), a1 = T::zero();
  int64_t j = 0;
  for (; j + 2 * W <= nnz; j += 2 * W) {
    for (int64_t l = 0; l < 2 * W; l += 16) prefetch_blocks(col, w4, j + l);
    a0 = T::dp(a0, T::prep(T::gather(x, col + j)), T::lw(w4 + j));
    a1 = T::dp(a1, T::prep(T::gather(x, col + j + W)), T::lw(w4 + j + W));
  }
  int32_t s = T::hsum(T::addi(a0, a1));
  for (; j < nnz; ++j) s += dot4(lane(x + 4 * int64_t(col[j])), w4[j]);
  return s;
}

int32_t linear_dense1(const int32_t* w4, int64_t G, const uint8_t* x) {
  I a0 = T::zero(), a1 = T::zero();
  int64_t g = 0;
  for (; g + 2 * W <= G; g += 2 * W) {
    a0 = T::dp(a0, T::prep(T::load(x + 4 * g)), T::lw(w4 + g));
    a1 = T::dp(a1, T::prep(T::load(x + 4 * (g + W))), T::lw(w4 + g + W));
  }
  int32_t s = T::hsum(T::addi(a0, a1));
  for (; g < G; ++g) s += dot4(lane(x + 4 * g), w4[g]);
  return s;
}

// NV vectors of batch lanes for one row. With few vectors a row's blocks would form one chain of
// dependent dot products (latency-bound: one per 4-5 cycles instead of one or two per cycle), so the
// blocks are dealt round-robin over U partial sums (exact integer adds, any order gives the same).
template <class V, int NV, int U>
inline void linear_chunk(const int32_t* col, const int32_t* w4, int64_t nnz, const uint8_t* xT, int64_t np,
                         int32_t* acc) {
  typename V::I a[U][NV];
  for (int u = 0; u < U; ++u)
    for (int v = 0; v < NV; ++v) a[u][v] = V::zero();
  auto step = [&](int u, int64_t j) {
    const typename V::B w = V::bw(w4[j]);
    const uint8_t* p = xT + 4 * int64_t(col[j]) * np;
    for (int v = 0; v < NV; ++v) a[u][v] = V::dp(a[u][v], V::prep(V::load(p + 4 * V::W * v)), w);
  };
  int64_t j = 0;
  for (; j + 16 <= nnz; j += 16) {  // a line of blocks at a time (U divides 16)
    prefetch_blocks(col, w4, j);
    for (int64_t k = j; k < j + 16; k += U)
      for (int u = 0; u < U; ++u) step(u, k + u);
  }
  for (; j + U <= nnz; j += U)
    for (int u = 0; u < U; ++u) step(u, j + u);
  for (; j < nnz; ++j) step(0, j);
  for (int u = 1; u < U; ++u)
    for (int v = 0; v < NV; ++v) a[0][v] = V::addi(a[0][v], a[u][v]);
  for (int v = 0; v < NV; ++v) V::store(acc + V::W * v, a[0][v]);
}

// The trait's narrower vector for batches of at most half its lanes (T::Half), or T itself.
template <class V, class = void>
struct SmallBatch {
  using type = V;
};
template <class V>
struct SmallBatch<V, std::void_t<typename V::Half>> {
  using type = typename V::Half;
};
using TS = typename SmallBatch<T>::type;

void linear_sparseN(const int32_t* col, const int32_t* w4, int64_t nnz, const uint8_t* xT, int64_t np,
                    int32_t* acc) {
  if (np < W) {  // np == TS::W: one narrow vector, not a wide one half of padding
    linear_chunk<TS, 1, 4>(col, w4, nnz, xT, np, acc);
    return;
  }
  const int64_t nvec = np / W;
  int64_t i = 0;
  for (; i + 4 <= nvec; i += 4) linear_chunk<T, 4, 1>(col, w4, nnz, xT + 4 * W * i, np, acc + W * i);
  switch (nvec - i) {
    case 3: linear_chunk<T, 3, 2>(col, w4, nnz, xT + 4 * W * i, np, acc + W * i); break;
    case 2: linear_chunk<T, 2, 2>(col, w4, nnz, xT + 4 * W * i, np, acc + W * i); break;
    case 1: linear_chunk<T, 1, 4>(col, w4, nnz, xT + 4 * W * i, np, acc + W * i); break;
    default: break;
  }
}

// Measured (docs/int8.md): on AVX-512 the tiled passes of 6 vectors beat conv_dense4's 4 even at 100%
// kept; on ymm (passes of 2 against 4) conv_dense4 wins only near full.
constexpr double kDenseFill = W == 8 ? 0.9 : 2.0;

const Int8Kernels kTable = {DC8_NAME,      W,          TS::W,          kTileNV,        kDenseFill,     conv_sparse,  conv_dense4, conv_tiled4,
                            requant_u8x4,  max_pool_row, pack_row4,   quantize_bytes, requant_f32,    linear_sparse1,
                            linear_dense1, linear_sparseN, DC8_PAIRS};

}  // namespace

const Int8Kernels* DC8_ENTRY() { return &kTable; }
#undef DC8_PAIRS
#undef DC8_TILE_NV

}  // namespace deepcomp
