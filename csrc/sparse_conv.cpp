// Direct sparse convolution driver: builds the band buffers (see conv_plan.h for the layout) and
// runs the micro-kernels over them, on the thread pool.
#include "sparse_conv.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "common.h"
#include "threadpool.h"

namespace deepcomp {

namespace {
constexpr int kMaxVec = 12;  // the kernels' largest block
// Unit of the output-channel split between tasks: a multiple of the dense kernel's channel block
// (2 * width, at most 32).
constexpr int64_t kOcChunk = 32;
static_assert(kOcChunk % kConvRtRows == 0, "task splits must not cut a register-tile group");
#ifndef DC_OCT
#define DC_OCT 256
#endif
// Output channels convolved together chunk by chunk: each input-channel chunk, once in L1, is
// reused by this many rows (the accumulators, kOcTile pixel blocks, live in L2 meanwhile).
constexpr int64_t kOcTile = DC_OCT;
}  // namespace

SparseConv2d::SparseConv2d(const CsrInput& in, const ConvGeometry& g)
    : g_(g),
      w_(in, g.out_channels,
         (g.groups > 0 && g.in_channels % g.groups == 0 ? g.in_channels / g.groups : 0) * g.kh * g.kw,
         "SparseConv2d") {
  if (g.in_channels < 1 || g.out_channels < 1) throw ShapeError("SparseConv2d: channels must be >= 1");
  if (g.groups < 1 || g.in_channels % g.groups || g.out_channels % g.groups)
    throw ShapeError("SparseConv2d: in_channels and out_channels must be divisible by groups");
  if (g.kh < 1 || g.kw < 1 || g.sh < 1 || g.sw < 1 || g.dh < 1 || g.dw < 1 || g.ph < 0 || g.pw < 0)
    throw ShapeError("SparseConv2d: kernel_size, stride, dilation must be >= 1 and padding >= 0");
}

std::pair<int64_t, int64_t> SparseConv2d::out_size(int64_t H, int64_t W) const { return conv_out_size(g_, H, W); }

std::shared_ptr<const ConvPlan> SparseConv2d::plan_for(int64_t H, int64_t W, int threads) const {
  return plans_.get(g_, w_, current_conv_key(H, W, threads));
}

namespace {

// Plane rows [0, Hb) of phase `phase`, channel c of the band starting at output row oy0, and zeros
// up to the channel stride.
void build_plane_rows(const ConvGeometry& g, int64_t H, int64_t W, int64_t Hb, int64_t Wq, int64_t cstride,
                      const float* src, float* dst, int64_t oy0, int64_t phase) {
  if (cstride > Hb * Wq) std::memset(dst + Hb * Wq, 0, sizeof(float) * (cstride - Hb * Wq));
  const int64_t ry = phase / g.sw, rx = phase % g.sw;
  // Valid j: 0 <= j*sw + rx - pw < W.
  int64_t j0 = 0;
  while (j0 < Wq && j0 * g.sw + rx - g.pw < 0) ++j0;
  int64_t j1 = j0;
  while (j1 < Wq && j1 * g.sw + rx - g.pw < W) ++j1;
  for (int64_t i = 0; i < Hb; ++i) {
    float* d = dst + i * Wq;
    const int64_t iy = (oy0 + i) * g.sh + ry - g.ph;
    if (iy < 0 || iy >= H || j1 <= j0) {
      std::memset(d, 0, sizeof(float) * Wq);
      continue;
    }
    const float* s = src + iy * W;
    if (j0 > 0) std::memset(d, 0, sizeof(float) * j0);
    if (g.sw == 1) {
      std::memcpy(d + j0, s + (j0 + rx - g.pw), sizeof(float) * (j1 - j0));
    } else {
      for (int64_t j = j0; j < j1; ++j) d[j] = s[j * g.sw + rx - g.pw];
    }
    if (j1 < Wq) std::memset(d + j1, 0, sizeof(float) * (Wq - j1));
  }
}

// The layer's weights as a dense [out_channels][in_channels / groups * kh * kw] array.
std::vector<float> dense_weights(const CsrStore& w) {
  const CsrWeights v = w.view();
  std::vector<float> d(size_t(w.rows() * w.cols()), 0.f);
  for (int64_t r = 0; r < w.rows(); ++r)
    for (int64_t j = v.row_ptr[r]; j < v.row_ptr[r + 1]; ++j)
      d[size_t(r * w.cols() + w.col_at(j))] = v.values ? v.values[j] : v.codebook[v.cluster[j]];
  return d;
}

// Region r of a band buffer: region 0 shifted left by sft floats, zero at the end; floats [a, b).
void shifted_copy(const float* region0, float* dst, int64_t S, int64_t sft, int64_t a, int64_t b) {
  const int64_t b_copy = std::min(b, S - sft);
  if (b_copy > a) std::memcpy(dst + a, region0 + a + sft, sizeof(float) * (b_copy - a));
  const int64_t z = std::max(a, b_copy);
  if (b > z) std::memset(dst + z, 0, sizeof(float) * (b - z));
}

}  // namespace

std::shared_ptr<const WinogradConv> SparseConv2d::winograd_for(int64_t N, int64_t H, int64_t W) const {
  const Kernels& K = kernels();
  if (!conv_wants_winograd(g_, w_, N, H, W, K.width)) return nullptr;
  std::lock_guard<std::mutex> lock(wino_mutex_);
  if (wino_ && wino_->mr() != K.wino_mr) wino_.reset();  // the previous ISA's form (tests only) goes first
  if (!wino_ || wino_->streamed()) {  // a streamed layer takes the stored form once the budget has room
    const int64_t bytes = WinogradConv::bytes_for(g_, K.wino_mr);
    if (winograd_reserve(bytes)) {
      try {
        wino_ = std::make_shared<const WinogradConv>(g_, dense_weights(w_), K.wino_mr);
      } catch (...) {
        winograd_release(bytes);
        throw;
      }
    } else if (!wino_ && WinogradConv::streams(g_)) {
      wino_ = std::make_shared<const WinogradConv>(g_, w_, K.wino_mr);  // over DEEPCOMP_WINOGRAD_MB
    }
    if (!wino_) return nullptr;  // the direct kernels
  }
  if (wino_->streamed() && (!winograd_streaming() || !winograd_streams_call(g_, N, H, W))) return nullptr;
  return wino_;
}

const char* SparseConv2d::kernel_for(int64_t N, int64_t H, int64_t W) const {
  if (const auto wc = winograd_for(N, H, W)) return wc->streamed() ? "winograd-streamed" : "winograd";
  return plan_for(H, W, ThreadPool::instance().num_threads())->dense ? "dense" : "sparse";
}

void SparseConv2d::forward(const float* x, int64_t N, int64_t H, int64_t W, float* y, bool relu,
                           const float* scale, const float* shift) const {
  if (N <= 0) return;
  if (const auto wc = winograd_for(N, H, W)) return wc->forward(x, N, H, W, y, relu, w_.view().bias, scale, shift);
  const Kernels& K = kernels();
  ThreadPool& pool = ThreadPool::instance();
  const int T = pool.num_threads();
  auto plan = plan_for(H, W, T);
  if (plan->key.width != K.width) plan = plan_for(H, W, T);  // the ISA changed in between (tests only)
  const ConvPlan& p = *plan;
  if (p.key.width != K.width) throw ShapeError("SparseConv2d: ISA changed during the call");
  CsrWeights w = w_.view();
  w.values = p.values.data();  // the plan's weights, decoded from the codebook if there is one
  w.cluster = nullptr;
  const int64_t C = g_.in_channels, OC = g_.out_channels;
  const int64_t HW = H * W, OHW = p.OH * p.OW;
  const int64_t phases = g_.sh * g_.sw, ncopies = int64_t(p.shift.size());
  const float* bias = w.bias;

  // Two schedules. With many bands (large images, or batches), each task is one band of one image:
  // the thread builds that band in its own buffer and convolves it for every output channel, with
  // no synchronisation. Otherwise the threads build each band together and split its pixel blocks
  // and output channels, group of images by group of images.
  const bool private_bands = N * p.nbands >= int64_t(T);
  const int64_t G = private_bands ? 1 : std::min<int64_t>(N, std::max<int64_t>(1, T));
  const int64_t nbuf = private_bands ? T : G;
  // Scratch lives in the calling thread and is reused across calls (fresh multi-megabyte buffers
  // would page-fault on every call); it is bounded by the band budget.
  thread_local std::vector<float> tl_buf, tl_tmp;
  float* const buf_base = reuse_buffer(tl_buf, size_t(nbuf * p.in_floats));
  const int64_t oc_tile = std::min(kOcTile, (OC + kOcChunk - 1) / kOcChunk * kOcChunk);
  const size_t tmp_per_slot = size_t(oc_tile * p.block + 16);
  if (tl_tmp.size() < tmp_per_slot * size_t(T)) tl_tmp.resize(tmp_per_slot * size_t(T));
  float* const tmp_base = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(tl_tmp.data()) + 63) & ~uintptr_t(63));

  // Dense plans: a block is an output row, computed in pieces of up to dense_px pixels by 2*width
  // output channels; epi holds bias, scale and shift padded to whole channel blocks.
  constexpr int64_t kDenseOut = 32 * 16;  // floats of a piece's result: dense_px <= 16, 2*width <= 32
  if (int64_t(K.dense_px) * 2 * K.width > kDenseOut) throw ShapeError("SparseConv2d: dense block too large");
  const int64_t ocb = 2 * int64_t(p.key.width), es = p.dense ? (OC + ocb - 1) / ocb * ocb : 0;
  std::vector<float> epi(size_t(3 * es));
  for (int64_t oc = 0; oc < es; ++oc) {
    const bool real = oc < OC;
    epi[size_t(oc)] = real && bias ? bias[oc] : 0.f;
    epi[size_t(es + oc)] = real && scale ? scale[oc] : 1.f;
    epi[size_t(2 * es + oc)] = real && shift ? shift[oc] : 0.f;
  }
  auto convolve_dense = [&](const float* in, int64_t n, int64_t oy0, int64_t r0, int64_t r1, int64_t oc_a,
                            int64_t oc_b) {
    alignas(64) float out[kDenseOut];
    float* yn = y + n * OC * OHW;
    for (int64_t ob = oc_a; ob < oc_b; ob += ocb) {
      const float* wp = p.wpack.data() + ob / ocb * p.K * ocb;
      const int64_t nvalid = std::min(ocb, OC - ob);
      for (int64_t r = r0; r < r1; ++r) {
        for (int64_t ox = 0; ox < p.OW; ox += K.dense_px) {
          const int px = int(std::min<int64_t>(K.dense_px, p.OW - ox));
          K.conv_dense(wp, p.off.data(), p.K, in + r * p.Wq + ox, px, epi.data() + ob, es, relu, out);
          float* yo = yn + ob * OHW + (oy0 + r) * p.OW + ox;
          for (int64_t o = 0; o < nvalid; ++o)
            for (int i = 0; i < px; ++i) yo[o * OHW + i] = out[i * ocb + o];
        }
      }
    }
  };
  // Non-temporal stores only where output rows are whole cache lines: a row ending in a partial
  // vector (28 or 14 wide) would mix them with cached stores in one line (docs/kernels.md).
  const bool stream = !p.dense && p.OW * int64_t(sizeof(float)) % 64 == 0 &&
                      N * OC * OHW * int64_t(sizeof(float)) >= conv_stream_bytes();
  // Convolve pixel blocks [b0, b1) of the band at output row oy0 (rows_b rows) of image n, output
  // channels [oc_a, oc_b), reading the band buffer `in`.
  auto convolve = [&](const float* in, int64_t n, int64_t oy0, int64_t rows_b, int64_t b0, int64_t b1, int64_t oc_a,
                      int64_t oc_b, float* t) {
    if (p.dense) return convolve_dense(in, n, oy0, b0, std::min(b1, rows_b), oc_a, oc_b);
    const int64_t P_b = rows_b * p.Wq;
    // Output vectors of a block: each lies in one row (Wq and the block are multiples of the width).
    int64_t voff[kMaxVec];
    uint32_t mask[kMaxVec];
    ConvEpilogue ep;
    ep.y = y + n * OC * OHW;
    ep.ostride = OHW;
    ep.voff = voff;
    ep.mask = mask;
    ep.bias = bias;
    ep.scale = scale;
    ep.shift = shift;
    ep.relu = relu;
    ep.stream = stream;
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t p0 = p.block_start(b);
      for (int v = 0; v < p.nv; ++v) {
        const int64_t q = p0 + int64_t(v) * p.key.width, oy = q / p.Wq, ox = q % p.Wq;
        const int64_t valid = q < P_b ? std::min<int64_t>(p.key.width, p.OW - ox) : 0;
        mask[v] = valid > 0 ? uint32_t((uint64_t(1) << valid) - 1) : 0u;
        voff[v] = (oy0 + oy) * p.OW + ox;
      }
      for (int64_t oc0 = oc_a; oc0 < oc_b; oc0 += oc_tile) {
        const int64_t oc1 = std::min(oc_b, oc0 + oc_tile);
        if (p.rt) {  // oc0 is a multiple of the group size (kOcChunk and oc_tile are)
          const int64_t g0 = oc0 / kConvRtRows, g1 = (oc1 + kConvRtRows - 1) / kConvRtRows;
          for (int64_t c = 0; c < p.nchunks; ++c)
            K.conv_rt(p.rt_chunk(c), in, p0, p.nv, g0, g1, OC, t, c > 0, c == p.nchunks - 1 ? &ep : nullptr);
          continue;
        }
        for (int64_t c = 0; c < p.nchunks; ++c)
          K.conv(w, p.off.data(), p.seg.data() + c * (OC + 1), in, p0, p.nv, oc0, oc1, t, c > 0,
                 c == p.nchunks - 1 ? &ep : nullptr);
      }
    }
#if defined(__x86_64__) || defined(__i386__)
    if (stream) _mm_sfence();  // this task's non-temporal stores are visible before it reports done
#endif
  };
  const int64_t tail_floats = p.S - phases * p.plane;
  const int64_t plane_gap = p.plane - C * p.cstride;

  if (private_bands) {
    pool.parallel_for(N * p.nbands, T, [&](int64_t task, int slot) {
      const int64_t n = task / p.nbands, band = task % p.nbands;
      const int64_t oy0 = band * p.BH, rows_b = std::min(p.BH, p.OH - oy0);
      float* buf = buf_base + slot * p.in_floats;
      const float* src = x + n * C * HW;
      for (int64_t ph = 0; ph < phases; ++ph)
        for (int64_t c = 0; c < C; ++c)
          build_plane_rows(g_, H, W, p.Hb, p.Wq, p.cstride, src + c * HW, buf + ph * p.plane + c * p.cstride, oy0, ph);
      for (int64_t ph = 0; ph < phases; ++ph)
        std::memset(buf + ph * p.plane + C * p.cstride, 0, sizeof(float) * plane_gap);
      std::memset(buf + phases * p.plane, 0, sizeof(float) * tail_floats);
      for (int64_t r = 1; r < ncopies; ++r) shifted_copy(buf, buf + r * p.S, p.S, p.shift[size_t(r)], 0, p.S);
      const int64_t nb = p.blocks_for(rows_b);
      convolve(buf, n, oy0, rows_b, 0, nb, 0, OC, tmp_base + size_t(slot) * tmp_per_slot);
    });
    return;
  }

  const int64_t n_occ_units = (OC + kOcChunk - 1) / kOcChunk;
  for (int64_t n0 = 0; n0 < N; n0 += G) {
    const int64_t g = std::min(G, N - n0);
    for (int64_t band = 0; band < p.nbands; ++band) {
      const int64_t oy0 = band * p.BH, rows_b = std::min(p.BH, p.OH - oy0);
      const int64_t nb = p.blocks_for(rows_b);
      // 1) Build the phase-split padded band: one task per (image, phase, channel).
      const int64_t rows_total = phases * C;
      pool.parallel_for(g * rows_total, T, [&](int64_t task, int) {
        const int64_t img = task / rows_total, rc = task % rows_total;
        const int64_t ph = rc / C, c = rc % C;
        float* buf = buf_base + img * p.in_floats;
        build_plane_rows(g_, H, W, p.Hb, p.Wq, p.cstride, x + ((n0 + img) * C + c) * HW,
                         buf + ph * p.plane + c * p.cstride, oy0, ph);
        if (c == C - 1) std::memset(buf + ph * p.plane + C * p.cstride, 0, sizeof(float) * plane_gap);
        if (rc == rows_total - 1) std::memset(buf + phases * p.plane, 0, sizeof(float) * tail_floats);
      });
      // 1b) Shifted copies for aligned loads.
      if (ncopies > 1) {
        const int64_t pieces = 8;
        pool.parallel_for(g * (ncopies - 1) * pieces, T, [&](int64_t task, int) {
          const int64_t img = task / ((ncopies - 1) * pieces), r = 1 + (task / pieces) % (ncopies - 1);
          const int64_t piece = task % pieces;
          const float* buf = buf_base + img * p.in_floats;
          shifted_copy(buf, const_cast<float*>(buf) + r * p.S, p.S, p.shift[size_t(r)], p.S * piece / pieces,
                       p.S * (piece + 1) / pieces);
        });
      }
      // 2) Convolve: block ranges x output-channel chunks, at least ~8 tasks per thread.
      int64_t occ = 1;
      while (g * nb * occ < 8 * T && occ < n_occ_units) ++occ;
      const int64_t oc_per = ((n_occ_units + occ - 1) / occ) * kOcChunk;
      occ = (OC + oc_per - 1) / oc_per;
      int64_t bpt = std::max<int64_t>(1, (g * nb * occ) / (8 * T));
      bpt = std::min(bpt, nb);
      const int64_t nbt = (nb + bpt - 1) / bpt;
      pool.parallel_for(g * nbt * occ, T, [&](int64_t task, int slot) {
        const int64_t img = task / (nbt * occ);
        const int64_t rest = task % (nbt * occ);
        const int64_t bt = rest / occ, oc_a = (rest % occ) * oc_per, oc_b = std::min(OC, oc_a + oc_per);
        convolve(buf_base + img * p.in_floats, n0 + img, oy0, rows_b, bt * bpt, std::min(nb, (bt + 1) * bpt), oc_a,
                 oc_b, tmp_base + size_t(slot) * tmp_per_slot);
      });
    }
  }
}

}  // namespace deepcomp
