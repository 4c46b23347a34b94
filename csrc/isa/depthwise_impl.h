// The depthwise row kernel, written once against a vector trait and compiled once per ISA.
// Include after defining DC_VEC (the trait), DC_NAME and DC_ENTRY (the table's accessor), and
// DC_INTERLEAVED where the trait has 8 lanes, load_transposed / store_transposed and load_mask (the
// channel-interleaved kernel; elsewhere every plane runs `plane`).
#include <algorithm>
#include <cstdint>

#include "depthwise.h"

namespace deepcomp {
namespace {

using V = DC_VEC;
using VT = typename V::T;

inline VT clamp(VT acc, bool clamp_lo, float lo, bool clamp_hi, float hi) {
  if (clamp_lo) acc = V::max(acc, V::set1(lo));
  if (clamp_hi) {  // min(a, hi) = -max(-a, -hi)
    const VT neg = V::set1(-1.f);
    acc = V::mul(V::max(V::mul(acc, neg), V::set1(-hi)), neg);
  }
  return acc;
}

inline VT finish(const DepthwisePlane& p, VT acc) { return clamp(acc, p.clamp_lo, p.lo, p.clamp_hi, p.hi); }

// U vectors of one output row starting at ox: acc[u] = bias + sum over taps of w * src[ox + u*W].
template <int U>
inline void block(const DepthwisePlane& p, const float* row0, int64_t ox, float* out, int last_lanes) {
  VT acc[U];
  for (int u = 0; u < U; ++u) acc[u] = V::set1(p.bias);
  const float* base = row0 + ox;
  for (int64_t t = 0; t < p.taps; ++t) {
    const float* src = base + p.off[t];
    const VT wv = V::set1(p.w[t]);
    for (int u = 0; u < U; ++u) acc[u] = V::fma(wv, V::load(src + u * V::W), acc[u]);
  }
  for (int u = 0; u < U; ++u) {
    const VT v = finish(p, acc[u]);
    if (u == U - 1 && last_lanes < V::W) V::store_mask(out + ox + u * V::W, v, (1u << last_lanes) - 1);
    else V::store(out + ox + u * V::W, v);
  }
}

// One vector at ox of U consecutive output rows: for planes a vector or two wide, where one row has
// too few vectors to hide the FMA latency, the rows give the U independent accumulator chains.
// Rows u < spill store whole vectors even when only `lanes` are theirs: the spill lands in the
// rows after u, which are stored afterwards (only for rows of one vector, see narrow_rows).
template <int U>
inline void rows_block(const DepthwisePlane& p, const float* row0, int64_t ox, float* out, int lanes, int spill) {
  VT acc[U];
  for (int u = 0; u < U; ++u) acc[u] = V::set1(p.bias);
  const float* base = row0 + ox;
  const int64_t step = p.sh * p.Wq;
  for (int64_t t = 0; t < p.taps; ++t) {
    const float* src = base + p.off[t];
    const VT wv = V::set1(p.w[t]);
    for (int u = 0; u < U; ++u) acc[u] = V::fma(wv, V::load(src + u * step), acc[u]);
  }
  for (int u = 0; u < U; ++u) {
    const VT v = finish(p, acc[u]);
    if (lanes < V::W && u >= spill) V::store_mask(out + u * p.OW + ox, v, (1u << lanes) - 1);
    else V::store(out + u * p.OW + ox, v);
  }
}

// Output rows oy and oy + 1 (stride and dilation 1), U vectors each from ox: input row r feeds
// tap row r of the first and r - 1 of the second, so each load serves two FMAs.
template <int U>
inline void pair_block(const DepthwisePlane& p, const float* row0, int64_t ox, float* out, int last_lanes) {
  VT a[U], b[U];
  for (int u = 0; u < U; ++u) a[u] = b[u] = V::set1(p.bias);
  const float* base = row0 + ox;
  for (int64_t r = 0; r <= p.kh; ++r) {
    const float* row = base + r * p.Wq;
    const float* wa = p.w + r * p.kw;        // tap row r of output row oy (r < kh)
    const float* wb = p.w + (r - 1) * p.kw;  // tap row r - 1 of output row oy + 1 (r >= 1)
    for (int64_t kx = 0; kx < p.kw; ++kx) {
      const float* src = row + p.offx[kx];
      VT v[U];
      for (int u = 0; u < U; ++u) v[u] = V::load(src + u * V::W);
      if (r < p.kh) {
        const VT w = V::set1(wa[kx]);
        for (int u = 0; u < U; ++u) a[u] = V::fma(w, v[u], a[u]);
      }
      if (r >= 1) {
        const VT w = V::set1(wb[kx]);
        for (int u = 0; u < U; ++u) b[u] = V::fma(w, v[u], b[u]);
      }
    }
  }
  for (int u = 0; u < U; ++u) {
    const VT va = finish(p, a[u]), vb = finish(p, b[u]);
    if (u == U - 1 && last_lanes < V::W) {
      V::store_mask(out + ox + u * V::W, va, (1u << last_lanes) - 1);
      V::store_mask(out + p.OW + ox + u * V::W, vb, (1u << last_lanes) - 1);
    } else {
      V::store(out + ox + u * V::W, va);
      V::store(out + p.OW + ox + u * V::W, vb);
    }
  }
}

// Planes at most this many vectors wide run rows_block (rows as the independent chains).
constexpr int64_t kNarrowVectors = 2;

// rows_block over every vector of rows [oy, oy + U).
template <int U>
inline void narrow_rows(const DepthwisePlane& p, int64_t oy) {
  const float* row0 = p.phases + oy * p.sh * p.Wq;
  float* out = p.y + oy * p.OW;
  // one-vector rows may spill a whole vector into the rows after them, but not past the plane's end
  // (the next plane is another task's): row r spills when r * OW + W <= OH * OW
  int spill = 0;
  if (p.OW <= V::W && p.OH * p.OW >= V::W)
    spill = int(std::clamp<int64_t>((p.OH * p.OW - V::W) / p.OW - oy + 1, 0, U));
  for (int64_t ox = 0; ox < p.OW; ox += V::W)
    rows_block<U>(p, row0, ox, out, int(std::min<int64_t>(V::W, p.OW - ox)), spill);
}

void narrow_plane(const DepthwisePlane& p) {
  constexpr int R = 8;
  int64_t oy = 0;
  for (; oy + R <= p.OH; oy += R) narrow_rows<R>(p, oy);
  switch (p.OH - oy) {  // the last rows in one block too: a single row's chain is latency bound
    case 7: return narrow_rows<7>(p, oy);
    case 6: return narrow_rows<6>(p, oy);
    case 5: return narrow_rows<5>(p, oy);
    case 4: return narrow_rows<4>(p, oy);
    case 3: return narrow_rows<3>(p, oy);
    case 2: return narrow_rows<2>(p, oy);
    case 1: return narrow_rows<1>(p, oy);
    default: return;
  }
}

void plane(const DepthwisePlane& p) {
  constexpr int W = V::W, U = 4;
  if (p.OW <= kNarrowVectors * W) return narrow_plane(p);
  int64_t oy = 0;
  if (p.pairs) {
    for (; oy + 2 <= p.OH; oy += 2) {
      const float* row0 = p.phases + oy * p.Wq;
      float* out = p.y + oy * p.OW;
      int64_t ox = 0;
      for (; ox + 3 * W <= p.OW; ox += 3 * W) pair_block<3>(p, row0, ox, out, W);
      for (; ox < p.OW; ox += W) {
        const int64_t left = p.OW - ox;
        pair_block<1>(p, row0, ox, out, left >= W ? W : int(left));
      }
    }
  }
  for (; oy < p.OH; ++oy) {
    const float* row0 = p.phases + oy * p.sh * p.Wq;
    float* out = p.y + oy * p.OW;
    int64_t ox = 0;
    for (; ox + U * W <= p.OW; ox += U * W) block<U>(p, row0, ox, out, W);
    for (; ox + 2 * W <= p.OW; ox += 2 * W) block<2>(p, row0, ox, out, W);
    for (; ox < p.OW; ox += W) {
      const int64_t left = p.OW - ox;
      block<1>(p, row0, ox, out, left >= W ? W : int(left));
    }
  }
}

// Plain loops, compiled with this ISA's flags so the copies (and stride 2's deinterleave) vectorise.
void fill(const float* xs, int64_t H, int64_t W, int64_t ph, int64_t pw, int64_t sw, int64_t Hp, int64_t Wq,
          float* out, bool padding_zero) {
  int64_t j0[8], j1[8];  // per phase, the columns j with 0 <= j*sw + p - pw < W
  for (int64_t p = 0; p < sw && p < 8; ++p) {
    j0[p] = std::min(Wq, std::max<int64_t>(0, (pw - p + sw - 1) / sw));
    j1[p] = std::max(j0[p], std::min(Wq, (W + pw - p + sw - 1) / sw));
  }
  for (int64_t r = 0; r < Hp; ++r) {
    const int64_t iy = r - ph;
    for (int64_t p = 0; p < sw && !(padding_zero && sw <= 8); ++p) {
      float* row = out + (p * Hp + r) * Wq;
      if (iy < 0 || iy >= H || sw > 8) {
        std::fill(row, row + Wq, 0.f);
        continue;
      }
      std::fill(row, row + j0[p], 0.f);
      std::fill(row + j1[p], row + Wq, 0.f);
    }
    if (iy < 0 || iy >= H) continue;
    const float* src = xs + iy * W;
    if (sw == 1) {
      std::copy(src + (j0[0] - pw), src + (j1[0] - pw), out + r * Wq + j0[0]);
    } else if (sw == 2) {
      // one contiguous pass splits even and odd input columns: input column 2i + q (q = 0, 1)
      // is padded column 2i + q + pw, so it lands in phase (q + pw) % 2 at j = i + (q + pw) / 2
      float* dst[2];
      int64_t shift[2], lim = W / 2;
      for (int q = 0; q < 2; ++q) {
        shift[q] = (q + pw) / 2;
        dst[q] = out + (((q + pw) % 2) * Hp + r) * Wq + shift[q];
        lim = std::min(lim, Wq - shift[q]);
      }
      lim = std::max<int64_t>(lim, 0);
      for (int q = 0; q < 2; ++q)  // what the paired pass leaves: an odd last column, the row's end
        for (int64_t i = lim; i * 2 + q < W && i + shift[q] < Wq; ++i) dst[q][i] = src[2 * i + q];
      for (int64_t i = 0; i < lim; ++i) {
        dst[0][i] = src[2 * i];
        dst[1][i] = src[2 * i + 1];
      }
    } else {
      for (int64_t p = 0; p < sw && sw <= 8; ++p) {
        float* row = out + (p * Hp + r) * Wq;
        for (int64_t j = j0[p]; j < j1[p]; ++j) row[j] = src[j * sw + p - pw];
      }
    }
  }
  if (sw > 8) {  // rare: column by column
    for (int64_t p = 0; p < sw; ++p)
      for (int64_t r = ph; r < ph + H; ++r)
        for (int64_t j = 0; j < Wq; ++j) {
          const int64_t ix = j * sw + p - pw;
          if (ix >= 0 && ix < W) out[(p * Hp + r) * Wq + j] = xs[(r - ph) * W + ix];
        }
  }
}

#ifdef DC_INTERLEAVED
constexpr int L = kInterleaveLanes;
static_assert(V::W == L, "the interleaved kernel holds one pixel of a group's channels per vector");

// The group's input planes into xs, 8 flat positions at a time (a narrow plane's rows are shorter
// than a vector): position q lands at xs + xpos[q].
inline void interleave_input(const DepthwiseGroup& g) {
  const int64_t HW = g.H * g.W;
  VT t[L];
  int64_t q = 0;
  if (g.lanes == L)
    for (; q + L <= HW; q += L) {
      V::load_transposed(g.x + q, HW, t);
      for (int j = 0; j < L; ++j) V::store(g.xs + g.xpos[q + j], t[j]);
    }
  // The last, partial block reads on into the next plane (pixels that are not stored), except
  // where that would pass the end of the input; those, and every block of a group with fewer
  // lanes, go through a masked copy.
  for (; q < HW; q += L) {
    const int n = int(std::min<int64_t>(L, HW - q));
    if (g.lanes == L && g.x + (L - 1) * HW + q + L <= g.x_end) {
      V::load_transposed(g.x + q, HW, t);
    } else {
      alignas(32) float part[L * L];
      for (int i = 0; i < L; ++i)
        V::store(part + i * L, i < g.lanes ? V::load_mask(g.x + i * HW + q, (1u << n) - 1) : V::zero());
      V::load_transposed(part, L, t);
    }
    for (int j = 0; j < n; ++j) V::store(g.xs + g.xpos[q + j], t[j]);
  }
}

// U output pixels of one row: in is the padded pixel tap (0, 0) of the first reads, out its ys pixel;
// one accumulator chain per pixel, the tap's weight vector shared by all of them.
template <int U>
void interleaved_pixels(const DepthwiseGroup& g, const float* w, const float* bias, const float* in, float* out) {
  VT acc[U];
  for (int u = 0; u < U; ++u) acc[u] = V::load(bias);
  const int64_t step = g.sw * L, dx = g.dw * L, dy = g.dh * g.Wp * L;
  for (int64_t ky = 0; ky < g.kh; ++ky, in += dy) {
    const float* src = in;
    for (int64_t kx = 0; kx < g.kw; ++kx, src += dx, w += L) {
      const VT wv = V::load(w);
      for (int u = 0; u < U; ++u) acc[u] = V::fma(wv, V::load(src + u * step), acc[u]);
    }
  }
  for (int u = 0; u < U; ++u) V::store(out + u * L, clamp(acc[u], g.clamp_lo, g.lo, g.clamp_hi, g.hi));
}

// The same for column stride and dilation 1 and a KW-wide kernel: input pixel j of a tap row feeds
// output pixels j - kx, so it is loaded once for all of them and the tap row's weights stay in
// registers (a tap row is U + KW - 1 + KW loads instead of KW * (U + 1); the sums keep the order).
template <int U, int KW>
void interleaved_pixels_s1(const DepthwiseGroup& g, const float* w, const float* bias, const float* in, float* out) {
  VT acc[U];
  for (int u = 0; u < U; ++u) acc[u] = V::load(bias);
  const int64_t dy = g.dh * g.Wp * L;
  for (int64_t ky = 0; ky < g.kh; ++ky, in += dy, w += KW * L) {
    VT wv[KW];
#pragma GCC unroll 8
    for (int kx = 0; kx < KW; ++kx) wv[kx] = V::load(w + kx * L);
#pragma GCC unroll 16
    for (int j = 0; j < U + KW - 1; ++j) {
      const VT v = V::load(in + j * L);
#pragma GCC unroll 8
      for (int kx = 0; kx < KW; ++kx)
        if (j - kx >= 0 && j - kx < U) acc[j - kx] = V::fma(wv[kx], v, acc[j - kx]);
    }
  }
  for (int u = 0; u < U; ++u) V::store(out + u * L, clamp(acc[u], g.clamp_lo, g.lo, g.clamp_hi, g.hi));
}

using PixelsFn = void (*)(const DepthwiseGroup&, const float*, const float*, const float*, float*);

template <int KW>
PixelsFn pixels_s1(int64_t u) {
  static constexpr PixelsFn fn[9] = {nullptr,
                                     &interleaved_pixels_s1<1, KW>,
                                     &interleaved_pixels_s1<2, KW>,
                                     &interleaved_pixels_s1<3, KW>,
                                     &interleaved_pixels_s1<4, KW>,
                                     &interleaved_pixels_s1<5, KW>,
                                     &interleaved_pixels_s1<6, KW>,
                                     &interleaved_pixels_s1<7, KW>,
                                     &interleaved_pixels_s1<8, KW>};
  return fn[u];
}

// The kernel of a block of u (1..8) pixels.
PixelsFn pixels(const DepthwiseGroup& g, int64_t u) {
  if (g.sw == 1 && g.dw == 1) {
    if (g.kw == 3) return pixels_s1<3>(u);
    if (g.kw == 5) return pixels_s1<5>(u);
    if (g.kw == 7) return pixels_s1<7>(u);
  }
  static constexpr PixelsFn fn[9] = {nullptr,           &interleaved_pixels<1>, &interleaved_pixels<2>,
                                     &interleaved_pixels<3>, &interleaved_pixels<4>, &interleaved_pixels<5>,
                                     &interleaved_pixels<6>, &interleaved_pixels<7>, &interleaved_pixels<8>};
  return fn[u];
}

// ys back into the lanes' output planes of multiplier m, 8 flat positions at a time.
inline void deinterleave_output(const DepthwiseGroup& g, int64_t m) {
  const int64_t OHW = g.OH * g.OW, stride = g.M * OHW, whole = OHW / L * L;
  float* y = g.y + m * OHW;
  VT t[L];
  float* rows[L];
  if (whole < OHW) {
    // The partial last block first, whole rows: with one multiplier and a plane of at least one
    // block, lane i's spill past its plane lands in lane i + 1's first block, stored afterwards.
    // The group's last lane (its next plane is another task's) and the unused lanes go through a
    // copy, masked.
    alignas(32) float part[L * L];
    const int n = int(OHW - whole);
    const int direct = g.M == 1 && whole > 0 ? g.lanes - 1 : 0;
    for (int j = 0; j < L; ++j) t[j] = V::load(g.ys + (whole + j) * L);  // ys holds whole blocks
    for (int i = 0; i < L; ++i) rows[i] = i < direct ? y + i * stride + whole : part + i * L;
    V::store_transposed(rows, t);
    for (int i = direct; i < g.lanes; ++i)
      V::store_mask(y + i * stride + whole, V::load(part + i * L), (1u << n) - 1);
  }
  alignas(32) float unused[L * L];  // where the lanes past a partial group's last go
  for (int64_t q = 0; q < whole; q += L) {
    for (int j = 0; j < L; ++j) t[j] = V::load(g.ys + (q + j) * L);
    for (int i = 0; i < L; ++i) rows[i] = i < g.lanes ? y + i * stride + q : unused + i * L;
    V::store_transposed(rows, t);
  }
}

void interleaved_group(const DepthwiseGroup& g) {
  interleave_input(g);
  const int64_t taps = g.kh * g.kw;
  // rows in blocks of at most 8 pixels, as even as possible (a 14-wide row is 7 + 7): the first
  // `bigger` blocks of a row have size + 1 pixels
  const int64_t blocks = (g.OW + 7) / 8, size = g.OW / blocks, bigger = g.OW % blocks;
  const PixelsFn small = pixels(g, size), big = bigger ? pixels(g, size + 1) : nullptr;
  for (int64_t m = 0; m < g.M; ++m) {
    const float* w = g.w + m * taps * L;
    const float* bias = g.bias + m * L;
    for (int64_t oy = 0; oy < g.OH; ++oy) {
      const float* in = g.xs + oy * g.sh * g.Wp * L;
      float* out = g.ys + oy * g.OW * L;
      for (int64_t b = 0, ox = 0; b < blocks; ++b) {
        (b < bigger ? big : small)(g, w, bias, in + ox * g.sw * L, out + ox * L);
        ox += size + (b < bigger);
      }
    }
    deinterleave_output(g, m);
  }
}
#define DC_GROUP &interleaved_group
#else
#define DC_GROUP nullptr
#endif

const DepthwiseKernels kTable = {DC_NAME, V::W, &plane, &fill, DC_GROUP};
#undef DC_GROUP

}  // namespace

const DepthwiseKernels* DC_ENTRY() { return &kTable; }

}  // namespace deepcomp
