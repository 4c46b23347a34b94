// Direct sparse convolution driver.
//
// Layout. For stride (sh, sw) the zero-padded input xp[c][i][j] is split into sh*sw phase planes,
// plane (i % sh, j % sw) holding xp[c][i / sh * ...]: element [c][i/sh][j/sw] of a [C][Hq][Wq]
// block. Output pixel (oy, ox) and tap (y, x) then read plane ((y*dh) % sh, (x*dw) % sw) at row
// oy + (y*dh)/sh, column ox + (x*dw)/sw; with the output kept in "padded width" (p = oy*Wq + ox),
// every tap is the same input slice shifted by a constant offset. Stride 1 is the one-plane case,
// a 1x1 convolution is an SpMM over the CHW input. Columns ox >= OW of the padded-width output are
// computed and discarded.
#include "sparse_conv.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>

#include "common.h"
#include "threadpool.h"

namespace deepcomp {

namespace {
std::string S(int64_t v) { return std::to_string(v); }
constexpr int kMaxNv = 8;  // the kernels go to 12; measured no faster here
constexpr int64_t kOcChunk = 16;  // unit of the output-channel split between tasks
// Output channels convolved together chunk by chunk: each input-channel chunk, once in L1, is
// reused by this many rows (the accumulators, kOcTile pixel blocks, live in L2 meanwhile).
constexpr int64_t kOcTile = 256;
constexpr int64_t kL1Budget = 24 << 10;
}  // namespace

struct SparseConv2d::ShapePlan {
  int64_t H, W, Hp, Wp, Hq, Wq, OH, OW;
  int64_t plane;      // C * Hq * Wq floats
  int64_t in_floats;  // phase buffer per image: ncopies regions of S floats
  int64_t S;          // one region: the phase planes plus read slack, a multiple of the SIMD width
  // Region 0 holds the phase planes; region r > 0 the same shifted left by shift[r] floats, so that
  // with Wq a multiple of the SIMD width every load of the kernel is aligned.
  std::vector<int64_t> shift;
  int64_t P;          // OH * Wq padded-width output positions
  int nv;             // vectors per pixel block
  int64_t block;      // nv * width floats
  int64_t nblocks;
  int width;          // SIMD width the plan was made for
  std::vector<int32_t> off;
  // Input channels are walked in chunks whose input window fits in L1; seg[oc*(nchunks+1) + c] is
  // the first nonzero of row oc in chunk c.
  int64_t nchunks;
  std::vector<int64_t> seg;
};

SparseConv2d::SparseConv2d(const CsrInput& in, const ConvGeometry& g)
    : g_(g),
      w_(in, g.out_channels,
         (g.groups > 0 && g.in_channels % g.groups == 0 ? g.in_channels / g.groups : 0) * g.kh * g.kw,
         /*narrow_cols=*/false, "SparseConv2d") {
  if (g.in_channels < 1 || g.out_channels < 1) throw ShapeError("SparseConv2d: channels must be >= 1");
  if (g.groups < 1 || g.in_channels % g.groups || g.out_channels % g.groups)
    throw ShapeError("SparseConv2d: in_channels and out_channels must be divisible by groups");
  if (g.kh < 1 || g.kw < 1 || g.sh < 1 || g.sw < 1 || g.dh < 1 || g.dw < 1 || g.ph < 0 || g.pw < 0)
    throw ShapeError("SparseConv2d: kernel_size, stride, dilation must be >= 1 and padding >= 0");
  const int64_t cg = g.in_channels / g.groups, ocg = g.out_channels / g.groups;
  const int64_t nnz = w_.nnz();
  tap_c_.resize(nnz);
  tap_y_.resize(nnz);
  tap_x_.resize(nnz);
  const auto& rp = w_.row_ptr();
  for (int64_t oc = 0; oc < g.out_channels; ++oc) {
    const int64_t grp = oc / ocg;
    for (int64_t j = rp[oc]; j < rp[oc + 1]; ++j) {
      const int64_t c = w_.col_at(j);
      tap_x_[j] = int32_t(c % g.kw);
      tap_y_[j] = int32_t((c / g.kw) % g.kh);
      tap_c_[j] = int32_t(grp * cg + c / (g.kw * g.kh));
    }
  }
}

std::pair<int64_t, int64_t> SparseConv2d::out_size(int64_t H, int64_t W) const {
  const int64_t eh = g_.dh * (g_.kh - 1) + 1, ew = g_.dw * (g_.kw - 1) + 1;
  const int64_t Hp = H + 2 * g_.ph, Wp = W + 2 * g_.pw;
  if (H < 1 || W < 1 || Hp < eh || Wp < ew)
    throw ShapeError("SparseConv2d: input " + S(H) + "x" + S(W) + " is smaller than the (dilated) kernel");
  return {(Hp - eh) / g_.sh + 1, (Wp - ew) / g_.sw + 1};
}

std::shared_ptr<const SparseConv2d::ShapePlan> SparseConv2d::plan_for(int64_t H, int64_t W) const {
  const int width = kernels().width;
  std::lock_guard<std::mutex> lock(cache_mutex_);
  auto it = cache_.find({H, W});
  if (it != cache_.end() && it->second->width == width) return it->second;

  auto p = std::make_shared<ShapePlan>();
  p->H = H;
  p->W = W;
  auto os = out_size(H, W);
  p->OH = os.first;
  p->OW = os.second;
  p->Hp = H + 2 * g_.ph;
  p->Wp = W + 2 * g_.pw;
  p->Hq = (p->Hp + g_.sh - 1) / g_.sh;
  p->Wq = (p->Wp + g_.sw - 1) / g_.sw;
  p->Wq = (p->Wq + width - 1) / width * width;
  p->plane = g_.in_channels * p->Hq * p->Wq;
  p->P = p->OH * p->Wq;
  p->width = width;
  // Pick the register block (nv vectors) that wastes the least: each block pays nv loads+FMAs per
  // nonzero plus about two scalar operations (offset, weight broadcast).
  const int64_t nvec = (p->P + width - 1) / width;
  int best = 1;
  int64_t best_cost = INT64_MAX;
  for (int nv = 1; nv <= kMaxNv; ++nv) {
    const int64_t cost = ((nvec + nv - 1) / nv) * (nv + 2);
    if (cost <= best_cost) best = nv, best_cost = cost;
  }
  p->nv = best;
  p->block = int64_t(best) * width;
  p->nblocks = (p->P + p->block - 1) / p->block;

  const int64_t nnz = w_.nnz();
  const int64_t total_planes = g_.sh * g_.sw * p->plane;
  p->off.resize(nnz);
  int64_t max_off = 0;
  for (int64_t j = 0; j < nnz; ++j) {
    const int64_t ty = int64_t(tap_y_[j]) * g_.dh, tx = int64_t(tap_x_[j]) * g_.dw;
    const int64_t o = ((ty % g_.sh) * g_.sw + (tx % g_.sw)) * p->plane + tap_c_[j] * p->Hq * p->Wq +
                      (ty / g_.sh) * p->Wq + tx / g_.sw;
    max_off = std::max(max_off, o);
    p->off[j] = int32_t(o % width);  // the shift for now; the offset is set below
  }
  p->shift.assign(1, 0);
  std::vector<int64_t> region_of(size_t(width), -1);
  region_of[0] = 0;
  for (int64_t j = 0; j < nnz; ++j) {
    const int32_t sft = p->off[j];
    if (region_of[size_t(sft)] < 0) {
      region_of[size_t(sft)] = int64_t(p->shift.size());
      p->shift.push_back(sft);
    }
  }
  p->S = (std::max(total_planes, max_off + p->nblocks * p->block) + 2 * width - 1) / width * width;
  p->in_floats = int64_t(p->shift.size()) * p->S;
  if (p->in_floats > INT32_MAX) throw ShapeError("SparseConv2d: input too large for 32-bit offsets");
  for (int64_t j = 0; j < nnz; ++j) {
    const int64_t ty = int64_t(tap_y_[j]) * g_.dh, tx = int64_t(tap_x_[j]) * g_.dw;
    const int64_t o = ((ty % g_.sh) * g_.sw + (tx % g_.sw)) * p->plane + tap_c_[j] * p->Hq * p->Wq +
                      (ty / g_.sh) * p->Wq + tx / g_.sw;
    const int64_t sft = o % width;
    p->off[j] = int32_t(region_of[size_t(sft)] * p->S + o - sft);
  }
  // Channel chunks: the rows of one channel that a pixel block reads, in every phase plane used.
  {
    const int64_t cg = g_.in_channels / g_.groups;
    const int64_t phases = std::min(g_.sh, g_.kh) * std::min(g_.sw, g_.kw);
    const int64_t span = p->block + ((g_.kh - 1) * g_.dh / g_.sh) * p->Wq + (g_.kw - 1) * g_.dw / g_.sw + 16;
    const int64_t per_ch = 4 * phases * span * int64_t(p->shift.size());
    const int64_t cpc = std::max<int64_t>(1, kL1Budget / per_ch);
    p->nchunks = (cg + cpc - 1) / cpc;
    const int64_t stride = p->nchunks + 1, taps = g_.kh * g_.kw;
    p->seg.resize(size_t(g_.out_channels * stride));
    const auto& rp = w_.row_ptr();
    for (int64_t oc = 0; oc < g_.out_channels; ++oc) {
      int64_t j = rp[oc];
      for (int64_t c = 0; c < p->nchunks; ++c) {
        const int64_t first_col = c * cpc * taps;
        while (j < rp[oc + 1] && w_.col_at(j) < first_col) ++j;
        p->seg[oc * stride + c] = j;
      }
      p->seg[oc * stride + p->nchunks] = rp[oc + 1];
    }
  }
  if (cache_.size() >= 8) cache_.erase(cache_.begin());
  cache_[{H, W}] = p;
  return p;
}

void SparseConv2d::forward(const float* x, int64_t N, int64_t H, int64_t W, float* y, bool relu,
                           const float* scale, const float* shift) const {
  if (N <= 0) return;
  const Kernels& K = kernels();
  auto plan = plan_for(H, W);
  if (plan->width != K.width) plan = plan_for(H, W);  // the ISA changed in between (tests only)
  const ShapePlan& p = *plan;
  if (p.width != K.width) throw ShapeError("SparseConv2d: ISA changed during the call");
  const CsrWeights w = w_.view();
  const int64_t C = g_.in_channels, OC = g_.out_channels;
  const int64_t HW = H * W, OHW = p.OH * p.OW;
  const float* bias = w.bias;

  ThreadPool& pool = ThreadPool::instance();
  const int T = pool.num_threads();

  // Images are processed in groups so the phase buffers stay bounded for large batches.
  const int64_t G = std::min<int64_t>(N, std::max<int64_t>(1, T));
  // Scratch lives in the calling thread and is reused across calls (fresh multi-megabyte buffers
  // would page-fault on every call); pool workers only use it during this call.
  thread_local std::vector<float> tl_buf, tl_tmp;
  const size_t need = size_t(G * p.in_floats + 16);
  if (tl_buf.size() < need) {
    tl_buf.clear();
    tl_buf.shrink_to_fit();
    tl_buf.resize(need);
  }
  float* const buf_base = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(tl_buf.data()) + 63) & ~uintptr_t(63));
  const int64_t oc_tile = std::min(kOcTile, (OC + kOcChunk - 1) / kOcChunk * kOcChunk);
  const size_t tmp_per_slot = size_t(oc_tile * p.block + 16);
  if (tl_tmp.size() < tmp_per_slot * size_t(T)) tl_tmp.resize(tmp_per_slot * size_t(T));
  float* const tmp_base = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(tl_tmp.data()) + 63) & ~uintptr_t(63));

  // Task split per group: block ranges x output-channel chunks, at least ~8 tasks per thread.
  const int64_t n_occ_units = (OC + kOcChunk - 1) / kOcChunk;

  for (int64_t n0 = 0; n0 < N; n0 += G) {
    const int64_t g = std::min(G, N - n0);

    // 1) Build the phase-split padded inputs: one task per (image, plane row block).
    const int64_t rows_total = g_.sh * g_.sw * C;
    pool.parallel_for(g * rows_total, T, [&](int64_t task, int) {
      const int64_t img = task / rows_total, rc = task % rows_total;
      const int64_t phase = rc / C, c = rc % C;
      const int64_t ry = phase / g_.sw, rx = phase % g_.sw;
      float* dst = buf_base + img * p.in_floats + phase * p.plane + c * p.Hq * p.Wq;
      const float* src = x + ((n0 + img) * C + c) * HW;
      for (int64_t i = 0; i < p.Hq; ++i) {
        float* d = dst + i * p.Wq;
        const int64_t iy = i * g_.sh + ry - g_.ph;
        if (iy < 0 || iy >= H) {
          std::memset(d, 0, sizeof(float) * p.Wq);
          continue;
        }
        const float* s = src + iy * W;
        // Valid j: 0 <= j*sw + rx - pw < W.
        int64_t j0 = 0;
        while (j0 < p.Wq && j0 * g_.sw + rx - g_.pw < 0) ++j0;
        int64_t j1 = j0;
        while (j1 < p.Wq && j1 * g_.sw + rx - g_.pw < W) ++j1;
        for (int64_t j = 0; j < j0; ++j) d[j] = 0.f;
        if (g_.sw == 1) {
          if (j1 > j0) std::memcpy(d + j0, s + (j0 + rx - g_.pw), sizeof(float) * (j1 - j0));
        } else {
          for (int64_t j = j0; j < j1; ++j) d[j] = s[j * g_.sw + rx - g_.pw];
        }
        for (int64_t j = j1; j < p.Wq; ++j) d[j] = 0.f;
      }
      if (rc == rows_total - 1) {
        float* tail = buf_base + img * p.in_floats + g_.sh * g_.sw * p.plane;
        std::memset(tail, 0, sizeof(float) * (p.S - g_.sh * g_.sw * p.plane));
      }
    });

    // 1b) Shifted copies for aligned loads.
    const int64_t ncopies = int64_t(p.shift.size());
    if (ncopies > 1) {
      const int64_t pieces = 8;
      pool.parallel_for(g * (ncopies - 1) * pieces, T, [&](int64_t task, int) {
        const int64_t img = task / ((ncopies - 1) * pieces), r = 1 + (task / pieces) % (ncopies - 1);
        const int64_t piece = task % pieces, sft = p.shift[size_t(r)];
        const float* src = buf_base + img * p.in_floats;
        float* dst = buf_base + img * p.in_floats + r * p.S;
        const int64_t a = p.S * piece / pieces, b = p.S * (piece + 1) / pieces;
        const int64_t b_copy = std::min(b, p.S - sft);
        if (b_copy > a) std::memcpy(dst + a, src + a + sft, sizeof(float) * (b_copy - a));
        for (int64_t i = std::max(a, b_copy); i < b; ++i) dst[i] = 0.f;
      });
    }

    // 2) Convolve.
    int64_t occ = 1;
    while (g * p.nblocks * occ < 8 * T && occ < n_occ_units) ++occ;
    const int64_t oc_per = ((n_occ_units + occ - 1) / occ) * kOcChunk;
    occ = (OC + oc_per - 1) / oc_per;
    int64_t bpt = std::max<int64_t>(1, (g * p.nblocks * occ) / (8 * T));
    bpt = std::min(bpt, p.nblocks);
    const int64_t nbt = (p.nblocks + bpt - 1) / bpt;
    pool.parallel_for(g * nbt * occ, T, [&](int64_t task, int slot) {
      const int64_t img = task / (nbt * occ);
      const int64_t rest = task % (nbt * occ);
      const int64_t bt = rest / occ, oc_a = (rest % occ) * oc_per, oc_b = std::min(OC, oc_a + oc_per);
      float* t = tmp_base + size_t(slot) * tmp_per_slot;
      const float* in = buf_base + img * p.in_floats;
      float* out = y + (n0 + img) * OC * OHW;
      for (int64_t b = bt * bpt; b < std::min(p.nblocks, (bt + 1) * bpt); ++b) {
        const int64_t p0 = b * p.block, p1 = std::min(p.P, p0 + p.block);
        for (int64_t oc0 = oc_a; oc0 < oc_b; oc0 += oc_tile) {
          const int64_t oc1 = std::min(oc_b, oc0 + oc_tile);
          for (int64_t c = 0; c < p.nchunks; ++c)
            K.conv(w, p.off.data(), p.seg.data() + c, p.nchunks + 1, in, p0, p.nv, oc0, oc1, t, c > 0);
          for (int64_t oc = oc0; oc < oc1; ++oc) {
            const float* a = t + (oc - oc0) * p.block;
            float* o = out + oc * OHW;
            const float bi = bias ? bias[oc] : 0.f;
            const float sc = scale ? scale[oc] : 1.f;
            const float sf = shift ? shift[oc] : 0.f;
            // Walk the output rows this block touches.
            int64_t q = p0;
            while (q < p1) {
              const int64_t oy = q / p.Wq, ox = q % p.Wq;
              const int64_t row_end = std::min(p1, (oy + 1) * p.Wq);
              if (ox < p.OW) {
                const int64_t n = std::min(row_end, oy * p.Wq + p.OW) - q;
                const float* src = a + (q - p0);
                float* dst = o + oy * p.OW + ox;
                if (scale || shift) {
                  for (int64_t i = 0; i < n; ++i) dst[i] = (src[i] + bi) * sc + sf;
                } else {
                  for (int64_t i = 0; i < n; ++i) dst[i] = src[i] + bi;
                }
                if (relu)
                  for (int64_t i = 0; i < n; ++i) dst[i] = dst[i] > 0.f ? dst[i] : (dst[i] == dst[i] ? 0.f : dst[i]);
              }
              q = row_end;
            }
          }
        }
      }
    });
  }
}

}  // namespace deepcomp
