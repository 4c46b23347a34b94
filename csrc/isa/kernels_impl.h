// The sparse microkernels, written once against a vector trait and compiled once per ISA.
//
// Include after defining:
//   DC_VEC    the vector trait (VecAvx512, VecAvx2, VecScalar; see isa/vec_*.h)
//   DC_NAME   the ISA's name as a string literal
//   DC_ENTRY  the name of the function returning this ISA's Kernels table
// Everything else lives in an anonymous namespace, so the per-ISA copies never collide.
#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <utility>

#include "dispatch.h"
#include "isa/microkernels.h"
#include "winograd_points.h"

namespace deepcomp {
namespace {

using V = DC_VEC;
using VT = typename V::T;

enum WeightKind { kF32 = 0, kCbSmall = 1, kCbLarge = 2 };

alignas(64) const float kZeroCodebook[256] = {};

// W consecutive weights starting at nonzero j.
template <int KIND>
inline VT weight_vec(const CsrWeights& w, const typename V::CB& cb, int64_t j) {
  if constexpr (KIND == kF32) return V::load(w.values + j);
  else if constexpr (KIND == kCbSmall) return V::cb_small(cb, w.cluster + j);
  else return V::cb_large(cb, w.cluster + j);
}

template <bool CB>
inline float weight_at(const CsrWeights& w, int64_t j) {
  if constexpr (CB) return w.codebook[w.cluster[j]];
  else return w.values[j];
}

inline float epilogue(const CsrWeights& w, int64_t r, float s) {
  if (w.bias) s += w.bias[r];
  if (w.relu) s = s > 0.f ? s : (s == s ? 0.f : s);  // like torch: relu(NaN) = NaN
  return s;
}

// ---- batch 1: y = W x, gathers of x, weights decoded W at a time -------------------------------
template <class Idx, int KIND>
void spmv_t(const CsrWeights& w, const Idx* col, const float* x, float* y, int64_t r0, int64_t r1) {
  constexpr int W = V::W;
  const typename V::CB cb = V::cb_prep(w.codebook ? w.codebook : kZeroCodebook);
  const int64_t* rp = w.row_ptr;
  for (int64_t r = r0; r < r1; ++r) {
    int64_t j = rp[r];
    const int64_t e = rp[r + 1];
    VT a0 = V::zero(), a1 = V::zero();
    for (; j + 2 * W <= e; j += 2 * W) {
      a0 = V::fma(weight_vec<KIND>(w, cb, j), V::gather(x, col + j), a0);
      a1 = V::fma(weight_vec<KIND>(w, cb, j + W), V::gather(x, col + j + W), a1);
    }
    if (j + W <= e) {
      a0 = V::fma(weight_vec<KIND>(w, cb, j), V::gather(x, col + j), a0);
      j += W;
    }
    float s = V::reduce(V::add(a0, a1));
    for (; j < e; ++j) s += weight_at<KIND != kF32>(w, j) * x[col[j]];
    y[r] = epilogue(w, r, s);
  }
}

void spmv(const CsrWeights& w, const float* x, float* y, int64_t r0, int64_t r1) {
  const bool small = w.k <= V::SMALL_K;
  if (w.col16) {
    if (w.values) spmv_t<uint16_t, kF32>(w, w.col16, x, y, r0, r1);
    else if (small) spmv_t<uint16_t, kCbSmall>(w, w.col16, x, y, r0, r1);
    else spmv_t<uint16_t, kCbLarge>(w, w.col16, x, y, r0, r1);
  } else {
    if (w.values) spmv_t<int32_t, kF32>(w, w.col32, x, y, r0, r1);
    else if (small) spmv_t<int32_t, kCbSmall>(w, w.col32, x, y, r0, r1);
    else spmv_t<int32_t, kCbLarge>(w, w.col32, x, y, r0, r1);
  }
}

// ---- batch > 1: x transposed into [cols][NB] lanes, each nonzero broadcast against NV vectors ----
template <int NV, class Idx, bool CB>
void spmm_t(const CsrWeights& w, const Idx* col, const float* xT, int nvalid, float* y, int64_t ystride,
            int64_t r0, int64_t r1) {
  constexpr int W = V::W;
  constexpr int NB = NV * W;
  constexpr int U = NV >= 4 ? 2 : (NV == 1 ? 4 : 2);  // independent accumulator sets
  const int64_t* rp = w.row_ptr;
  alignas(64) float tmp[NB];
  for (int64_t r = r0; r < r1; ++r) {
    VT acc[U][NV];
    for (int u = 0; u < U; ++u)
      for (int v = 0; v < NV; ++v) acc[u][v] = V::zero();
    int64_t j = rp[r];
    const int64_t e = rp[r + 1];
    for (; j + U <= e; j += U) {
      for (int u = 0; u < U; ++u) {
        const VT wv = V::set1(weight_at<CB>(w, j + u));
        const float* xr = xT + int64_t(col[j + u]) * NB;
        for (int v = 0; v < NV; ++v) acc[u][v] = V::fma(wv, V::load(xr + v * W), acc[u][v]);
      }
    }
    for (; j < e; ++j) {
      const VT wv = V::set1(weight_at<CB>(w, j));
      const float* xr = xT + int64_t(col[j]) * NB;
      for (int v = 0; v < NV; ++v) acc[0][v] = V::fma(wv, V::load(xr + v * W), acc[0][v]);
    }
    for (int u = 1; u < U; ++u)
      for (int v = 0; v < NV; ++v) acc[0][v] = V::add(acc[0][v], acc[u][v]);
    for (int v = 0; v < NV; ++v) V::store(tmp + v * W, acc[0][v]);
    for (int i = 0; i < nvalid; ++i) y[i * ystride + r] = epilogue(w, r, tmp[i]);
  }
}

template <int NV>
void spmm_nv(const CsrWeights& w, const float* xT, int nvalid, float* y, int64_t ystride, int64_t r0, int64_t r1) {
  const bool cb = w.values == nullptr;
  if (w.col16) {
    if (cb) spmm_t<NV, uint16_t, true>(w, w.col16, xT, nvalid, y, ystride, r0, r1);
    else spmm_t<NV, uint16_t, false>(w, w.col16, xT, nvalid, y, ystride, r0, r1);
  } else {
    if (cb) spmm_t<NV, int32_t, true>(w, w.col32, xT, nvalid, y, ystride, r0, r1);
    else spmm_t<NV, int32_t, false>(w, w.col32, xT, nvalid, y, ystride, r0, r1);
  }
}

void spmm(const CsrWeights& w, const float* xT, int nv, int nvalid, float* y, int64_t ystride, int64_t r0,
          int64_t r1) {
  switch (nv) {
    case 1: return spmm_nv<1>(w, xT, nvalid, y, ystride, r0, r1);
    case 2: return spmm_nv<2>(w, xT, nvalid, y, ystride, r0, r1);
    case 3: return spmm_nv<3>(w, xT, nvalid, y, ystride, r0, r1);
    default: return spmm_nv<4>(w, xT, nvalid, y, ystride, r0, r1);
  }
}

// ---- direct sparse convolution: every nonzero is an AXPY at a precomputed input offset ----------

constexpr uint32_t kFullMask = uint32_t((uint64_t(1) << V::W) - 1);

// One output channel's NV accumulators: into tmp (ep null), or finished into the output.
template <int NV>
inline void finish_row(const VT* acc, int64_t oc, float* t, const ConvEpilogue* ep) {
  constexpr int W = V::W;
  if (!ep) {
    for (int v = 0; v < NV; ++v) V::store(t + v * W, acc[v]);
    return;
  }
  const VT b = V::set1(ep->bias ? ep->bias[oc] : 0.f);
  const bool affine = ep->scale || ep->shift;
  const VT sc = V::set1(ep->scale ? ep->scale[oc] : 1.f), sf = V::set1(ep->shift ? ep->shift[oc] : 0.f);
  float* y = ep->y + oc * ep->ostride;
  for (int v = 0; v < NV; ++v) {
    if (!ep->mask[v]) continue;
    VT r = V::add(acc[v], b);
    if (affine) r = V::add(V::mul(r, sc), sf);
    if (ep->relu) r = V::max(V::zero(), r);  // max(0, NaN) is NaN, like torch's relu
    float* o = y + ep->voff[v];
    if (ep->stream && ep->mask[v] == kFullMask && (reinterpret_cast<uintptr_t>(o) & (V::STREAM_ALIGN - 1)) == 0)
      V::stream(o, r);
    else
      V::store_mask(o, r, ep->mask[v]);
  }
}

// The nonzeros come as fp32 weights (the plan decodes a codebook) in `values`, two per iteration.
// Every load costs: the loop is bound by load issue (one input vector per FMA, plus the scalars),
// so a pair's two offsets come from one 8-byte load and its two weights from another, broadcast by
// shuffles (see docs/kernels.md). The offsets of the next pair are loaded one iteration ahead, so
// the vector loads, whose addresses depend on them, never wait on a scalar load. It reads up to 4 entries of off past the last
// nonzero: the plan pads them.
inline uint64_t load_pair(const int32_t* p) {
  uint64_t q;
  std::memcpy(&q, p, sizeof(q));
  return q;
}
inline int64_t lo32(uint64_t q) { return int32_t(uint32_t(q)); }
inline int64_t hi32(uint64_t q) { return int32_t(uint32_t(q >> 32)); }

template <int NV>
void conv_t(const CsrWeights& w, const int32_t* off, const int64_t* seg, const float* in, int64_t p0, int64_t oc0,
            int64_t oc1, float* tmp, bool accumulate, const ConvEpilogue* ep) {
  constexpr int W = V::W;
  const float* base = in + p0;
  const float* val = w.values;
  for (int64_t oc = oc0; oc < oc1; ++oc) {
    float* t = tmp + (oc - oc0) * (NV * W);
    VT a[NV], b[NV];
    for (int v = 0; v < NV; ++v) a[v] = accumulate ? V::load(t + v * W) : V::zero();
    for (int v = 0; v < NV; ++v) b[v] = V::zero();
    int64_t j = seg[oc];
    const int64_t e = seg[oc + 1];
    uint64_t q = load_pair(off + j), qn = load_pair(off + j + 2);
    for (; j + 2 <= e; j += 2) {
      VT x0, x1;
      V::set1_pair(val + j, x0, x1);
      const float* s0 = base + lo32(q);
      const float* s1 = base + hi32(q);
      q = qn;
      qn = load_pair(off + j + 4);
      for (int v = 0; v < NV; ++v) a[v] = V::fma(x0, V::load(s0 + v * W), a[v]);
      for (int v = 0; v < NV; ++v) b[v] = V::fma(x1, V::load(s1 + v * W), b[v]);
    }
    if (j < e) {
      const VT x0 = V::set1(val[j]);
      const float* s0 = base + lo32(q);
      for (int v = 0; v < NV; ++v) a[v] = V::fma(x0, V::load(s0 + v * W), a[v]);
    }
    for (int v = 0; v < NV; ++v) a[v] = V::add(a[v], b[v]);
    finish_row<NV>(a, oc, t, ep);
  }
}

// The sparse micro-kernels of isa/microkernels.h, and the dispatch over their tiles.
#define DC_SPARSE_ENTRY(NV) {"f32_conv_sparse_" #NV "v__" DC_NAME, "conv_sparse", NV, &conv_t<NV>, nullptr, nullptr, nullptr},
constexpr MicroKernel kSparseKernels[] = {DC_CONV_SPARSE_TILES(DC_SPARSE_ENTRY)};
#undef DC_SPARSE_ENTRY
constexpr int kMaxSparseTile = int(sizeof(kSparseKernels) / sizeof(kSparseKernels[0]));

void conv(const CsrWeights& w, const int32_t* off, const int64_t* seg, const float* in, int64_t p0, int nv,
          int64_t oc0, int64_t oc1, float* tmp, bool acc, const ConvEpilogue* ep) {
  kSparseKernels[std::min(std::max(nv, 1), kMaxSparseTile) - 1].conv_sparse(w, off, seg, in, p0, oc0, oc1, tmp, acc,
                                                                            ep);
}


// ---- register-tiled sparse convolution: one input load feeds every row of a group that keeps it --
// Wilkinson et al. (PLDI 2023): a group's entries are sorted by pattern (which of its kConvRtRows
// rows keep the entry), so each pattern runs a branch-free loop: NV input vectors loaded once, then
// one broadcast weight and NV FMAs per row in the pattern. Per FMA that is fewer loads than the
// per-row loop's one input vector per FMA.
constexpr int kRtMaxNv = conv_rt_max_nv(V::W);

template <int NV, unsigned P>
inline void rt_segment(const int32_t*& off, const float*& w, int n, const float* base, VT (&acc)[kConvRtRows][NV]) {
  constexpr int W = V::W, K = __builtin_popcount(P);
  for (int e = 0; e < n; ++e) {
    const float* s = base + off[e];
    VT x[NV];
    for (int v = 0; v < NV; ++v) x[v] = V::load(s + v * W);
    int k = 0;
    for (int r = 0; r < kConvRtRows; ++r)
      if ((P >> r) & 1) {
        const VT wv = V::set1(w[e * K + k++]);
        for (int v = 0; v < NV; ++v) acc[r][v] = V::fma(wv, x[v], acc[r][v]);
      }
  }
  off += n;
  w += n * K;
}

// Every pattern's loop in a fixed order (no indirect jump per pattern; an absent one runs 0 times).
template <int NV, unsigned... I>
inline void rt_all_patterns(const int32_t*& off, const float*& w, const int32_t* n, const float* base,
                            VT (&acc)[kConvRtRows][NV], std::integer_sequence<unsigned, I...>) {
  (rt_segment<NV, I + 1>(off, w, n[I], base, acc), ...);
}

template <int NV>
void conv_rt_t(const ConvRtChunk& c, const float* in, int64_t p0, int64_t g0, int64_t g1, int64_t rows, float* tmp,
               bool accumulate, const ConvEpilogue* ep) {
  constexpr int W = V::W;
  const float* base = in + p0;
  for (int64_t g = g0; g < g1; ++g) {
    const int nr = int(std::min<int64_t>(kConvRtRows, rows - g * kConvRtRows));
    float* t = tmp + (g - g0) * kConvRtRows * NV * W;
    VT acc[kConvRtRows][NV];
    for (int r = 0; r < kConvRtRows; ++r)
      for (int v = 0; v < NV; ++v) acc[r][v] = accumulate && r < nr ? V::load(t + (r * NV + v) * W) : V::zero();
    const int32_t* n = c.hdr + c.idx[3 * g];  // entries per pattern 1..15, in that order
    const int32_t* off = c.off + c.idx[3 * g + 1];
    const float* w = c.w + c.idx[3 * g + 2];
    rt_all_patterns<NV>(off, w, n, base, acc, std::make_integer_sequence<unsigned, (1u << kConvRtRows) - 1>{});
    for (int r = 0; r < nr; ++r) finish_row<NV>(acc[r], g * kConvRtRows + r, t + r * NV * W, ep);
  }
}

static_assert(kConvRtRows == 2, "DC_RT_ROWS names the group size");
#define DC_RT_ROWS "2"
#define DC_RT_ENTRY(NV) \
  {"f32_conv_rt" DC_RT_ROWS "x" #NV "v__" DC_NAME, "conv_rt", NV, nullptr, nullptr, NV <= kRtMaxNv ? &conv_rt_t<(NV <= kRtMaxNv ? NV : 1)> : nullptr, nullptr},
constexpr MicroKernel kRtKernels[] = {DC_CONV_RT_TILES(DC_RT_ENTRY)};
#undef DC_RT_ENTRY
#undef DC_RT_ROWS

void conv_rt(const ConvRtChunk& c, const float* in, int64_t p0, int nv, int64_t g0, int64_t g1, int64_t rows, float* tmp,
             bool acc, const ConvEpilogue* ep) {
  kRtKernels[std::min(std::max(nv, 1), kRtMaxNv) - 1].conv_rt(c, in, p0, g0, g1, rows, tmp, acc, ep);
}

// ---- dense direct convolution, output channels along the vectors --------------------------------
// For layers too dense for the sparse kernel to pay. A block is two vectors of output channels
// (2W) by PX output pixels that lie next to each other in one row of the input planes. Per tap k:
// two vectors of weights (packed [k][2W]) and one broadcast input value per pixel, so the FMAs,
// not the loads, bound it, and no lane is spent on padding columns.
// out[i * 2W + o] = act((sum_k wp[k * 2W + o] * in[off[k] + i] + epi[o]) * epi[es + o] + epi[2 es + o]).
constexpr int kDensePx = V::W >= 16 ? 12 : (V::W >= 8 ? 6 : 4);  // 2 * PX accumulators in registers

template <int PX>
void conv_dense_t(const float* wp, const int32_t* off, int64_t K, const float* in, const float* epi, int64_t es,
                  bool relu, float* out) {
  constexpr int W = V::W;
  VT a0[PX], a1[PX];
  for (int i = 0; i < PX; ++i) a0[i] = a1[i] = V::zero();
  for (int64_t k = 0; k < K; ++k, wp += 2 * W) {
    const float* s = in + off[k];
    const VT w0 = V::load(wp), w1 = V::load(wp + W);
    for (int i = 0; i < PX; ++i) {
      const VT x = V::set1(s[i]);
      a0[i] = V::fma(w0, x, a0[i]);
      a1[i] = V::fma(w1, x, a1[i]);
    }
  }
  const VT b0 = V::load(epi), b1 = V::load(epi + W);
  const VT c0 = V::load(epi + es), c1 = V::load(epi + es + W);
  const VT d0 = V::load(epi + 2 * es), d1 = V::load(epi + 2 * es + W);
  for (int i = 0; i < PX; ++i) {
    VT r0 = V::add(V::mul(V::add(a0[i], b0), c0), d0), r1 = V::add(V::mul(V::add(a1[i], b1), c1), d1);
    if (relu) r0 = V::max(V::zero(), r0), r1 = V::max(V::zero(), r1);  // NaN stays NaN, like torch
    V::store(out + i * 2 * W, r0);
    V::store(out + i * 2 * W + W, r1);
  }
}

// Tiles beyond this ISA's kDensePx are listed with a null function and left out of the list.
#define DC_DENSE_ENTRY(PX) \
  {"f32_conv_dense_" #PX "px__" DC_NAME, "conv_dense", PX, nullptr, PX <= kDensePx ? &conv_dense_t<(PX <= kDensePx ? PX : 1)> : nullptr, nullptr, nullptr},
constexpr MicroKernel kDenseKernels[] = {DC_CONV_DENSE_TILES(DC_DENSE_ENTRY)};
#undef DC_DENSE_ENTRY

void conv_dense(const float* wp, const int32_t* off, int64_t K, const float* in, int px, const float* epi, int64_t es,
                bool relu, float* out) {
  kDenseKernels[size_t(px - 1)].conv_dense(wp, off, K, in, epi, es, relu, out);
}

#include "isa/winograd_impl.h"

// All lists in one, each cut at its ISA's largest tile.
struct MicroList {
  MicroKernel k[sizeof(kSparseKernels) / sizeof(kSparseKernels[0]) + kDensePx + kRtMaxNv + kWinoMaxNv + kWinoTail];
  int n = 0;
};
MicroList make_micro_list() {
  MicroList l{};
  for (const auto& m : kSparseKernels) l.k[l.n++] = m;
  for (const auto& m : kDenseKernels)
    if (m.conv_dense) l.k[l.n++] = m;
  for (const auto& m : kRtKernels)
    if (m.conv_rt) l.k[l.n++] = m;
  for (const auto& m : kWinoKernels)
    if (m.wino_gemm) l.k[l.n++] = m;
  for (const auto& m : kWinoTailKernels)
    if (m.wino_gemm) l.k[l.n++] = m;
  return l;
}

}  // namespace

const Kernels* DC_ENTRY() {
  static const MicroList micro = make_micro_list();
  static const Kernels table{DC_NAME, V::W, &spmv, &spmm, &conv, &conv_dense, kDensePx, &conv_rt,
                             &wino_gemm, kWinoMr, kWinoMaxNv, &wino_tail, kWinoTail, &wino_weights, kWinoRowLanes,
                             &wino_input, &wino_output, micro.k, micro.n};
  return &table;
}

}  // namespace deepcomp
