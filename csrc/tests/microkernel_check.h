// Shared by the micro-kernel test and benchmark: random problems for one micro-kernel, the scalar
// reference, and the comparison. Header-only; no Python, no test framework.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "dispatch.h"

namespace deepcomp {
namespace mktest {

constexpr int64_t kPad = 8;  // readable entries past the last nonzero the sparse kernels may load

// A sparse-conv problem: OC rows over an input window of L floats, density d (rows may be empty).
struct SparseProblem {
  int width = 1, nv = 1;
  int64_t OC = 0, L = 0, p0 = 0;
  std::vector<float> in, values, tmp, bias, scale, shift, y;
  std::vector<int32_t> off;
  std::vector<int64_t> seg;
};

// Tap t reads the input at offset t * spacing.
inline SparseProblem make_sparse(const MicroKernel& mk, int width, int64_t OC, int64_t taps, double density,
                                 uint32_t seed, int64_t spacing = 1) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::bernoulli_distribution keep(density);
  SparseProblem p;
  p.width = width;
  p.nv = mk.tile;
  p.OC = OC;
  const int64_t block = int64_t(mk.tile) * width;
  p.p0 = width;  // the block does not start at the buffer's first float
  p.L = taps * spacing + p.p0 + block + width;
  p.in.resize(size_t(p.L));
  for (auto& v : p.in) v = u(rng);
  p.seg.push_back(0);
  for (int64_t oc = 0; oc < OC; ++oc) {
    // Rows 0 and 3 (mod 7) stay empty; the others keep each tap with probability `density`.
    for (int64_t t = 0; t < taps; ++t)
      if (oc % 7 != 0 && oc % 7 != 3 && keep(rng)) {
        p.off.push_back(int32_t(t * spacing));
        p.values.push_back(u(rng));
      }
    p.seg.push_back(int64_t(p.off.size()));
  }
  p.off.resize(p.off.size() + kPad, 0);
  p.values.resize(p.values.size() + kPad, 0.f);
  p.tmp.assign(size_t(OC * block), 0.f);
  for (int64_t oc = 0; oc < OC; ++oc) {
    p.bias.push_back(u(rng));
    p.scale.push_back(u(rng));
    p.shift.push_back(u(rng));
  }
  p.y.assign(size_t(OC * block), 0.f);
  return p;
}

// An epilogue writing relu((acc + bias) [* scale + shift]) into p.y (filled with -7 first, so that
// untouched lanes show), one row per `block` floats.
inline ConvEpilogue epilogue_into(SparseProblem& p, int64_t block, const std::vector<int64_t>& voff,
                                  const std::vector<uint32_t>& mask, bool affine) {
  ConvEpilogue ep;
  std::fill(p.y.begin(), p.y.end(), -7.f);
  ep.y = p.y.data();
  ep.ostride = block;
  ep.voff = voff.data();
  ep.mask = mask.data();
  ep.bias = p.bias.data();
  ep.scale = affine ? p.scale.data() : nullptr;
  ep.shift = affine ? p.shift.data() : nullptr;
  ep.relu = true;
  return ep;
}

// Reference of one row's block, in double: sum_j w_j in[off_j + p0 + i].
inline double sparse_ref(const SparseProblem& p, int64_t oc, int64_t i) {
  double s = 0;
  for (int64_t j = p.seg[size_t(oc)]; j < p.seg[size_t(oc + 1)]; ++j)
    s += double(p.values[size_t(j)]) * double(p.in[size_t(p.off[size_t(j)] + p.p0 + i)]);
  return s;
}

inline bool close(double got, double want, double scale, const char* what, const char* name) {
  if (std::fabs(got - want) <= 1e-4 * std::max(1.0, std::fabs(scale))) return true;
  std::printf("FAIL %s %s: got %.7g want %.7g\n", name, what, got, want);
  return false;
}

// Runs a sparse micro-kernel three ways (store, accumulate, epilogue with relu, scale, shift and a
// partial last vector) and compares with the reference. Returns the number of mismatches.
inline int check_sparse(const MicroKernel& mk, int width, int64_t OC, int64_t taps, double density, uint32_t seed) {
  SparseProblem p = make_sparse(mk, width, OC, taps, density, seed);
  CsrWeights w;
  w.values = p.values.data();
  const int64_t block = int64_t(mk.tile) * width;
  int bad = 0;
  // 1) store into tmp, 2) accumulate onto it: twice the sum.
  mk.conv_sparse(w, p.off.data(), p.seg.data(), p.in.data(), p.p0, 0, OC, p.tmp.data(), false, nullptr);
  for (int64_t oc = 0; oc < OC && bad < 5; ++oc)
    for (int64_t i = 0; i < block; ++i)
      bad += !close(p.tmp[size_t(oc * block + i)], sparse_ref(p, oc, i), 1.0, "store", mk.name);
  mk.conv_sparse(w, p.off.data(), p.seg.data(), p.in.data(), p.p0, 0, OC, p.tmp.data(), true, nullptr);
  for (int64_t oc = 0; oc < OC && bad < 5; ++oc)
    for (int64_t i = 0; i < block; ++i)
      bad += !close(p.tmp[size_t(oc * block + i)], 2 * sparse_ref(p, oc, i), 1.0, "accumulate", mk.name);
  // 3) the epilogue: output vectors scattered to voff, the last one partial, one masked off.
  std::vector<int64_t> voff(size_t(mk.tile));
  std::vector<uint32_t> mask(size_t(mk.tile));
  for (int v = 0; v < mk.tile; ++v) {
    voff[size_t(v)] = int64_t(mk.tile - 1 - v) * width;  // reversed order
    const int valid = v == mk.tile - 1 ? std::max(1, width - 1) : width;
    mask[size_t(v)] = (v == 1 && mk.tile > 2) ? 0u : uint32_t((uint64_t(1) << valid) - 1);
  }
  // Once with cached stores, once with non-temporal ones where a vector is full and aligned.
  for (const bool stream : {false, true}) {
    ConvEpilogue ep = epilogue_into(p, block, voff, mask, /*affine=*/true);
    ep.stream = stream;
    mk.conv_sparse(w, p.off.data(), p.seg.data(), p.in.data(), p.p0, 0, OC, p.tmp.data(), false, &ep);
    for (int64_t oc = 0; oc < OC && bad < 5; ++oc)
      for (int v = 0; v < mk.tile; ++v)
        for (int l = 0; l < width; ++l) {
          const double s = sparse_ref(p, oc, int64_t(v) * width + l);
          double want = std::max(0.0, (s + p.bias[size_t(oc)]) * p.scale[size_t(oc)] + p.shift[size_t(oc)]);
          if (!((mask[size_t(v)] >> l) & 1)) want = -7.0;  // untouched
          bad += !close(p.y[size_t(oc * block + voff[size_t(v)] + l)], want, 1.0, "epilogue", mk.name);
        }
  }
  return bad;
}

// The register-tiled layout of a SparseProblem (one chunk), packed independently of the planner:
// per group, entries of each pattern in increasing pattern order.
struct RtLayout {
  std::vector<int64_t> idx;
  std::vector<int32_t> hdr, off;
  std::vector<float> w;
  ConvRtChunk chunk() const { return {idx.data(), hdr.data(), off.data(), w.data()}; }
};

inline RtLayout pack_rt(const SparseProblem& p) {
  constexpr int M = kConvRtRows;
  RtLayout l;
  const int64_t G = (p.OC + M - 1) / M;
  for (int64_t g = 0; g < G; ++g) {
    l.idx.insert(l.idx.end(), {int64_t(l.hdr.size()), int64_t(l.off.size()), int64_t(l.w.size())});
    // offset -> weight per row (0 where the row does not keep it) and pattern
    std::vector<std::pair<int32_t, std::vector<float>>> taps;
    std::vector<unsigned> pat;
    for (int r = 0; r < M && g * M + r < p.OC; ++r)
      for (int64_t j = p.seg[size_t(g * M + r)]; j < p.seg[size_t(g * M + r + 1)]; ++j) {
        size_t k = 0;
        while (k < taps.size() && taps[k].first != p.off[size_t(j)]) ++k;
        if (k == taps.size()) taps.push_back({p.off[size_t(j)], std::vector<float>(M, 0.f)}), pat.push_back(0);
        taps[k].second[size_t(r)] = p.values[size_t(j)];
        pat[k] |= 1u << r;
      }
    for (unsigned P = 1; P < (1u << M); ++P) {
      int n = 0;
      for (size_t k = 0; k < taps.size(); ++k)
        if (pat[k] == P) {
          ++n;
          l.off.push_back(taps[k].first);
          for (int r = 0; r < M; ++r)
            if ((P >> r) & 1) l.w.push_back(taps[k].second[size_t(r)]);
        }
      l.hdr.push_back(n);
    }
  }
  return l;
}

// The register-tiled kernel on the same problem: all groups and groups [1, G) (a range not
// starting at 0), store then accumulate, and the epilogue.
inline int check_rt(const MicroKernel& mk, int width, int64_t OC, int64_t taps, double density, uint32_t seed) {
  SparseProblem p = make_sparse(mk, width, OC, taps, density, seed);
  RtLayout l = pack_rt(p);
  const int64_t block = int64_t(mk.tile) * width, G = (OC + kConvRtRows - 1) / kConvRtRows;
  int bad = 0;
  for (int64_t g0 : {int64_t(0), std::min<int64_t>(1, G - 1)}) {
    const int64_t r0 = g0 * kConvRtRows;
    std::fill(p.tmp.begin(), p.tmp.end(), 0.f);
    mk.conv_rt(l.chunk(), p.in.data(), p.p0, g0, G, OC, p.tmp.data(), false, nullptr);
    mk.conv_rt(l.chunk(), p.in.data(), p.p0, g0, G, OC, p.tmp.data(), true, nullptr);
    for (int64_t oc = r0; oc < OC && bad < 5; ++oc)
      for (int64_t i = 0; i < block; ++i)
        bad += !close(p.tmp[size_t((oc - r0) * block + i)], 2 * sparse_ref(p, oc, i), 1.0, "rt accumulate", mk.name);
  }
  std::vector<int64_t> voff(size_t(mk.tile));
  std::vector<uint32_t> mask(size_t(mk.tile));
  for (int v = 0; v < mk.tile; ++v) {
    voff[size_t(v)] = int64_t(v) * width;
    mask[size_t(v)] = uint32_t((uint64_t(1) << width) - 1);
  }
  const ConvEpilogue ep = epilogue_into(p, block, voff, mask, /*affine=*/false);
  mk.conv_rt(l.chunk(), p.in.data(), p.p0, 0, G, OC, p.tmp.data(), false, &ep);
  for (int64_t oc = 0; oc < OC && bad < 5; ++oc)
    for (int64_t i = 0; i < block; ++i) {
      const double want = std::max(0.0, sparse_ref(p, oc, i) + p.bias[size_t(oc)]);
      bad += !close(p.y[size_t(oc * block + i)], want, 1.0, "rt epilogue", mk.name);
    }
  return bad;
}

// A dense-conv problem: K taps, 2*width output channels, PX pixels.
inline int check_dense(const MicroKernel& mk, int width, int64_t K, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  const int64_t ocb = 2 * width, es = ocb;
  std::vector<float> wp(size_t(K * ocb)), in(size_t(K + mk.tile + 8)), epi(size_t(3 * es)), out(size_t(mk.tile * ocb));
  std::vector<int32_t> off(static_cast<size_t>(K));
  for (auto& v : wp) v = u(rng);
  for (auto& v : in) v = u(rng);
  for (auto& v : epi) v = u(rng);
  for (int64_t k = 0; k < K; ++k) off[size_t(k)] = int32_t((k * 5) % (K + 1));
  int bad = 0;
  for (bool relu : {false, true}) {
    mk.conv_dense(wp.data(), off.data(), K, in.data(), epi.data(), es, relu, out.data());
    for (int i = 0; i < mk.tile && bad < 5; ++i)
      for (int64_t o = 0; o < ocb; ++o) {
        double s = 0;
        for (int64_t k = 0; k < K; ++k) s += double(wp[size_t(k * ocb + o)]) * in[size_t(off[size_t(k)] + i)];
        double want = (s + epi[size_t(o)]) * epi[size_t(es + o)] + epi[size_t(2 * es + o)];
        if (relu) want = std::max(0.0, want);
        bad += !close(out[size_t(i * ocb + o)], want, 1.0, relu ? "dense relu" : "dense", mk.name);
      }
  }
  return bad;
}

// A Winograd GEMM tile: mr rows of broadcast weights by tile * width lanes, C input channels, the
// rows of v and m strided (vs, ms) as the driver lays them out.
inline int check_wino(const MicroKernel& mk, int width, int mr, int64_t C, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  const bool tail = std::string(mk.op) == "wino_tail";  // its tile counts tiles, not vectors
  const int64_t lanes = tail ? mk.tile : int64_t(mk.tile) * width, vs = lanes + width, ms = lanes + 3;
  // The kernel prefetches the next panel: allocate it, as the driver's weights always continue.
  std::vector<float> w(size_t(2 * C * mr)), v(size_t(C * vs)), m(size_t(mr * ms), -7.f);
  for (auto& x : w) x = u(rng);
  for (auto& x : v) x = u(rng);
  mk.wino_gemm(w.data(), v.data(), C, vs, m.data(), ms);
  int bad = 0;
  for (int r = 0; r < mr && bad < 5; ++r)
    for (int64_t i = 0; i < lanes; ++i) {
      double s = 0;
      for (int64_t c = 0; c < C; ++c) s += double(w[size_t(c * mr + r)]) * v[size_t(c * vs + i)];
      bad += !close(m[size_t(r * ms + i)], s, double(C), mk.op, mk.name);
    }
  for (int r = 0; r < mr; ++r)  // nothing written between the rows
    for (int64_t i = lanes; i < ms && r * ms + i < int64_t(m.size()); ++i)
      bad += !close(m[size_t(r * ms + i)], -7.0, 1.0, "wino_gemm gap", mk.name);
  return bad;
}

// The per-call weight transform of the streamed Winograd form (Kernels::wino_weights), every row of
// points, against G g G^T in double: C input channels of one register tile's kernels, some taps
// zero; nothing written past each plane's slack.
inline int check_wino_weights(const Kernels& k, int64_t C, uint32_t seed) {
  static const double G[6][3] = {{1.0 / 4, 0, 0},           {-1.0 / 6, -1.0 / 6, -1.0 / 6},
                                 {-1.0 / 6, 1.0 / 6, -1.0 / 6}, {1.0 / 24, 1.0 / 12, 1.0 / 6},
                                 {1.0 / 24, -1.0 / 12, 1.0 / 6}, {0, 0, 1}};
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  const int mr = k.wino_mr, lanes = k.wino_row_lanes;
  const int64_t es = C * mr + lanes + 5;  // 5 floats past the slack, which must stay untouched
  std::vector<float> d(size_t(C * 9 * lanes), 0.f);
  for (int64_t c = 0; c < C; ++c)
    for (int t = 0; t < 9; ++t)
      for (int r = 0; r < mr; ++r) d[size_t((c * 9 + t) * lanes + r)] = (c + t + r) % 3 ? u(rng) : 0.f;
  int bad = 0;
  for (int a = 0; a < 6; ++a) {
    std::vector<float> out(size_t(6 * es), -7.f);
    k.wino_weights(d.data(), C, a, out.data(), es);
    for (int b = 0; b < 6 && bad < 5; ++b) {
      for (int64_t c = 0; c < C; ++c)
        for (int r = 0; r < mr; ++r) {
          double s = 0;
          for (int i = 0; i < 3; ++i)
            for (int j = 0; j < 3; ++j) s += G[a][i] * d[size_t((c * 9 + i * 3 + j) * lanes + r)] * G[b][j];
          bad += !close(out[size_t(b * es + c * mr + r)], s, 1.0, "wino_weights", k.name);
        }
      for (int64_t i = C * mr + lanes; i < es; ++i)
        bad += !close(out[size_t(b * es + i)], -7.0, 1.0, "wino_weights slack", k.name);
    }
  }
  return bad;
}

}  // namespace mktest
}  // namespace deepcomp
