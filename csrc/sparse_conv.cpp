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
#include <atomic>
#include <cstdint>
#include <cstring>
#include <string>

#include "common.h"
#include "threadpool.h"

namespace deepcomp {

namespace {
std::string S(int64_t v) { return std::to_string(v); }
#ifndef DC_MAXNV
#define DC_MAXNV 8
#endif
#ifndef DC_L1
#define DC_L1 (32 << 10)
#endif
#ifndef DC_DENSE_THRESHOLD
#define DC_DENSE_THRESHOLD 0.55
#endif
#ifndef DC_OCT
#define DC_OCT 256
#endif
constexpr int kMaxNv = DC_MAXNV;
constexpr int kMaxVec = 12;  // the kernels' largest block
constexpr int64_t kMinBandRows = 6;
constexpr int64_t kPad = 8;
static_assert(kMaxNv <= kMaxVec, "blocks beyond the kernels' largest");  // the kernels go to 12; measured no faster here
// Unit of the output-channel split between tasks: a multiple of the dense kernel's channel block
// (2 * width, at most 32).
constexpr int64_t kOcChunk = 32;
// Output channels convolved together chunk by chunk: each input-channel chunk, once in L1, is
// reused by this many rows (the accumulators, kOcTile pixel blocks, live in L2 meanwhile).
constexpr int64_t kOcTile = DC_OCT;
// Bytes of input window a chunk may read (this machine's L1D is 48 KB). 32 KB measured 3-5% faster
// than 24 KB on VGG-16's convolutions once a pair's offsets and weights came in one load each
// (AlexNet's unchanged); 16 KB and 48 KB or more were slower.
constexpr int64_t kL1Budget = DC_L1;
// Band buffers (padded, phase-split, shifted input rows) are kept about this small so they stay in
// cache between being built and being read; also bounds the scratch memory.
std::atomic<int64_t> g_band_budget{int64_t(2) << 20};
// Layers whose effective density (see plan_for) reaches this run on the dense kernel.
std::atomic<double> g_dense_threshold{DC_DENSE_THRESHOLD};
}  // namespace

int64_t conv_band_budget() { return g_band_budget.load(std::memory_order_relaxed); }
double conv_dense_threshold() { return g_dense_threshold.load(std::memory_order_relaxed); }
double set_conv_dense_threshold(double t) { return g_dense_threshold.exchange(t, std::memory_order_relaxed); }
int64_t set_conv_band_budget(int64_t bytes) {
  return g_band_budget.exchange(std::max<int64_t>(bytes, 1), std::memory_order_relaxed);
}

struct SparseConv2d::ShapePlan {
  int64_t H, W, OH, OW, Wq;
  // The output rows are processed in bands of BH rows (the last one may be shorter); a band reads
  // Hb rows of each phase plane, held in a band buffer of ncopies regions of S floats.
  int64_t BH, Hb, nbands;
  int64_t cstride;    // floats from one channel to the next in a phase plane (>= Hb * Wq)
  int64_t plane;      // floats from one phase plane to the next (>= C * cstride)
  int64_t in_floats;  // band buffer: ncopies regions of S floats
  int64_t S;          // one region: the phase planes plus read slack, a multiple of the SIMD width
  // Region 0 holds the phase planes; region r > 0 the same shifted left by shift[r] floats, so that
  // with Wq a multiple of the SIMD width every load of the kernel is aligned.
  std::vector<int64_t> shift;
  int64_t P;          // BH * Wq padded-width output positions of a full band
  int nv;             // vectors per pixel block
  int64_t block;      // nv * width floats
  int64_t nblocks;    // pixel blocks of a full band
  // 0: blocks tile the band's padded-width positions (block b starts at b * block). Otherwise
  // rows end in at least one vector of padding columns only (VGG-16's 224- and 112-wide layers:
  // Wq = 240 and 128), and a block is one of `pieces` pieces of a row that cover its output columns
  // and skip those vectors (see block_start).
  int64_t pieces;
  int64_t block_start(int64_t b) const { return pieces ? b / pieces * Wq + b % pieces * block : b * block; }
  int64_t blocks_for(int64_t rows) const { return pieces ? rows * pieces : (rows * Wq + block - 1) / block; }
  int width;          // SIMD width the plan was made for
  int64_t budget;     // band buffer budget the plan was made for
  double dense_threshold;  // dense-kernel threshold the plan was made for
  int threads;        // thread count the plan was made for
  // Dense plans (groups == 1, effective density >= the threshold) run on the dense kernel: K = in_channels *
  // kh * kw taps, off[] holds all K of them (no shifted copies, a plane row of any width), wpack the
  // weights [oc / ocb][tap][ocb] (ocb = 2 * width, zero past the last channel), and a "block" is
  // one output row.
  bool dense;
  int64_t K;
  std::vector<float> wpack;
  std::vector<int32_t> off;
  // Input channels are walked in chunks whose input window fits in L1. The nonzeros are reordered
  // chunk-major: seg[c*(OC+1) + oc] is the first of row oc in chunk c, off/values are in that
  // order. The values are fp32 even for a codebook layer: a weight broadcast straight from memory
  // saves the kernel the dependent cluster-byte load (measured 8% faster on VGG-16's conv layers,
  // at 3 more bytes per nonzero, 14 MB for VGG-16).
  int64_t nchunks;
  std::vector<int64_t> seg;
  std::vector<float> values;
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
}

std::pair<int64_t, int64_t> SparseConv2d::out_size(int64_t H, int64_t W) const {
  const int64_t eh = g_.dh * (g_.kh - 1) + 1, ew = g_.dw * (g_.kw - 1) + 1;
  const int64_t Hp = H + 2 * g_.ph, Wp = W + 2 * g_.pw;
  if (H < 1 || W < 1 || Hp < eh || Wp < ew)
    throw ShapeError("SparseConv2d: input " + S(H) + "x" + S(W) + " is smaller than the (dilated) kernel");
  return {(Hp - eh) / g_.sh + 1, (Wp - ew) / g_.sw + 1};
}

std::shared_ptr<const SparseConv2d::ShapePlan> SparseConv2d::plan_for(int64_t H, int64_t W, int threads) const {
  const int width = kernels().width;
  const int64_t budget = conv_band_budget();
  const double dense_threshold = conv_dense_threshold();
  std::lock_guard<std::mutex> lock(cache_mutex_);
  auto it = cache_.find({H, W});
  if (it != cache_.end() && it->second->width == width && it->second->budget == budget &&
      it->second->dense_threshold == dense_threshold && it->second->threads == threads)
    return it->second;

  auto p = std::make_shared<ShapePlan>();
  p->H = H;
  p->W = W;
  p->width = width;
  p->budget = budget;
  p->dense_threshold = dense_threshold;
  p->threads = threads;
  auto os = out_size(H, W);
  p->OH = os.first;
  p->OW = os.second;
  const int64_t C = g_.in_channels, phases = g_.sh * g_.sw;
  const int64_t dy_max = ((g_.kh - 1) * g_.dh) / g_.sh;  // extra plane rows a band reads below it
  const int64_t nnz = w_.nnz();
  const int64_t cg = C / g_.groups, taps = g_.kh * g_.kw;
  p->K = cg * taps;
  // Plane rows: a multiple of the SIMD width for the sparse kernel's aligned loads.
  const int64_t Wp = W + 2 * g_.pw, Wplane = (Wp + g_.sw - 1) / g_.sw;
  const int64_t Wq_sparse = (Wplane + width - 1) / width * width;
  // Sparse or dense kernel. The dense one computes every weight, but at about twice the sparse
  // kernel's rate (it loads an input value once per 2*width output channels, the sparse one once
  // per nonzero), without the padding columns the sparse one computes (Wq_sparse / OW), and with a
  // per-pixel epilogue that a layer with few taps per output (K) does not amortise. Effective
  // density = density * Wq_sparse / OW / (1 + 4 * width / K); measured on this machine's AVX-512
  // (1 thread): VGG-16 conv3_1, 0.57: dense 9.9 ms vs sparse 11.1; conv3_3, 0.45: 17.7 vs 13.9;
  // conv1_1 (K = 27), 0.18: 2.6 vs 1.4; AlexNet conv1, 0.96: 0.78 vs 1.02.
  const double density = double(nnz) / double(g_.out_channels * p->K);
  const double effective = density * double(Wq_sparse) / double(p->OW) / (1.0 + 4.0 * width / double(p->K));
  p->dense = g_.groups == 1 && nnz > 0 && effective >= dense_threshold;
  p->Wq = p->dense ? Wplane : Wq_sparse;

  // Shifts: the distinct (offset mod width) of the nonzeros' taps; they do not depend on the band
  // height because a plane row is a multiple of the width. The dense kernel needs none.
  p->shift.assign(1, 0);
  std::vector<int64_t> region_of(size_t(width), -1);
  region_of[0] = 0;
  for (int64_t j = 0; j < (p->dense ? 0 : nnz); ++j) {
    const int64_t sft = (w_.col_at(j) % g_.kw * g_.dw / g_.sw) % width;
    if (region_of[size_t(sft)] < 0) {
      region_of[size_t(sft)] = int64_t(p->shift.size());
      p->shift.push_back(sft);
    }
  }
  const int64_t ncopies = int64_t(p->shift.size());

  // Band height: the largest whose buffer fits the budget (at least one output row), then lowered
  // so that the band count is a multiple of the thread count where the image has enough rows: each
  // thread then convolves whole bands from its own cache, with no synchronisation.
  const int64_t row_floats = ncopies * phases * C * p->Wq;
  const int64_t bh = std::max<int64_t>(1, std::min(p->OH, budget / (4 * row_floats) - dy_max));
  p->nbands = (p->OH + bh - 1) / bh;
  // Two bands per thread where that leaves bands of kMinBandRows rows or more: the pool hands bands
  // out dynamically, so a thread slowed by something else on its core sheds work to the others.
  if (threads > 1) {
    const int64_t want = p->OH / (2 * threads) >= kMinBandRows ? 2 * threads : threads;
    p->nbands = std::min(p->OH, (std::max(p->nbands, want) + threads - 1) / threads * threads);
  }
  p->BH = (p->OH + p->nbands - 1) / p->nbands;  // even bands
  p->nbands = (p->OH + p->BH - 1) / p->BH;
  p->Hb = p->BH + dy_max;
  // Channel, phase-plane and region strides of an odd number of cache lines: a chunk's window, which
  // reads the same rows of several channels, planes and regions, then spreads over the L1 sets
  // (at power-of-two strides, e.g. AlexNet conv1's 16 phase planes of 12 KB, they all collided).
  auto odd_lines = [](int64_t floats) {
    const int64_t lines = (floats + 15) / 16;
    return (lines | 1) * 16;
  };
  p->cstride = odd_lines(p->Hb * p->Wq);
  p->plane = odd_lines(C * p->cstride);
  p->P = p->BH * p->Wq;

  // Pick the register block (nv vectors) that wastes the least: each block pays nv loads+FMAs per
  // nonzero plus about two scalar operations (offset, weight broadcast). The dense kernel's unit
  // is an output row.
  const int64_t nvec = (p->P + width - 1) / width;
  int best = 1;
  int64_t best_cost = INT64_MAX;
  for (int nv = 1; nv <= kMaxNv; ++nv) {
    const int64_t cost = ((nvec + nv - 1) / nv) * (nv + 2);
    if (cost <= best_cost) best = nv, best_cost = cost;
  }
  // Pieces of rows instead, where a row ends in vectors that hold no output column: 7 vectors per
  // row instead of 8 on 112-wide layers, 14 instead of 15 on 224-wide ones.
  p->pieces = 0;
  const int64_t row_out = (p->OW + width - 1) / width, row_vecs = p->Wq / width;
  if (!p->dense && row_out < row_vecs) {
    const int64_t pieces = (row_out + kMaxNv - 1) / kMaxNv, nvp = (row_out + pieces - 1) / pieces;
    if (pieces * nvp <= row_vecs && p->BH * pieces * (nvp + 2) < best_cost) {
      best = int(nvp);
      p->pieces = pieces;
    }
  }
  p->nv = p->dense ? 1 : best;
  p->block = p->dense ? p->Wq : int64_t(best) * width;
  p->nblocks = p->blocks_for(p->BH);

  // Offset of each tap in region 0 of the band buffer (before the alignment shift): per nonzero,
  // or per column of a dense plan.
  std::vector<int64_t> off(static_cast<size_t>(p->dense ? p->K : nnz));
  int64_t max_off = 0;
  {
    auto offset = [&](int64_t c, int64_t col) {
      const int64_t ty = (col / g_.kw) % g_.kh * g_.dh, tx = col % g_.kw * g_.dw;
      const int64_t o = ((ty % g_.sh) * g_.sw + (tx % g_.sw)) * p->plane + c * p->cstride + (ty / g_.sh) * p->Wq +
                        tx / g_.sw;
      max_off = std::max(max_off, p->dense ? o : o - o % width);
      return o;
    };
    if (p->dense) {
      for (int64_t col = 0; col < p->K; ++col) off[size_t(col)] = offset(col / taps, col);
    } else {
      const auto& rp = w_.row_ptr();
      const int64_t ocg = g_.out_channels / g_.groups;
      for (int64_t oc = 0; oc < g_.out_channels; ++oc)
        for (int64_t j = rp[oc]; j < rp[oc + 1]; ++j) {
          const int64_t col = w_.col_at(j);
          off[size_t(j)] = offset(oc / ocg * cg + col / taps, col);
        }
    }
  }
  const int64_t reach = p->block_start(p->nblocks - 1) + p->block;  // past the last float a block reads
  p->S = odd_lines(std::max(phases * p->plane, max_off + reach) + 2 * width);
  p->in_floats = ncopies * p->S;
  if (p->in_floats > INT32_MAX) throw ShapeError("SparseConv2d: input too large for 32-bit offsets");
  const int64_t OC = g_.out_channels;
  const auto& rp = w_.row_ptr();
  const CsrWeights w = w_.view();
  auto weight = [&](int64_t j) { return w.values ? w.values[j] : w.codebook[w.cluster[j]]; };
  if (p->dense) {
    // The taps in column order, and the weights packed for the dense kernel.
    const int64_t ocb = 2 * width, nob = (OC + ocb - 1) / ocb;
    p->nchunks = 1;
    p->off.assign(off.begin(), off.end());
    p->wpack.assign(size_t(nob * p->K * ocb), 0.f);
    for (int64_t oc = 0; oc < OC; ++oc)
      for (int64_t j = rp[oc]; j < rp[oc + 1]; ++j)
        p->wpack[size_t((oc / ocb * p->K + w_.col_at(j)) * ocb + oc % ocb)] = weight(j);
  } else {
    // The kernel's offset: region (by shift) times S plus the aligned offset.
    for (auto& o : off) o = region_of[size_t(o % width)] * p->S + o - o % width;
    // Chunks of input: a unit is one input channel in one phase plane, the rows that a pixel block
    // reads there; a chunk is as many consecutive units as fit the L1 budget (per channel instead of
    // per phase, AlexNet conv1's 16 phase planes made one channel's window 52 KB, more than L1: its
    // time fell 7% at batch 1 and 18% at batch 8 with phase units). The nonzeros are stored
    // chunk-major (chunk, output channel, column), so that the kernel, which walks the output channels
    // of one chunk, reads offsets and weights sequentially.
    std::vector<int64_t> tap_unit(static_cast<size_t>(taps), 0), phase_index(static_cast<size_t>(phases), -1);
    int64_t nused = 0;
    for (int64_t t = 0; t < taps; ++t) {
      const int64_t ty = t / g_.kw * g_.dh, tx = t % g_.kw * g_.dw;
      const int64_t ph = (ty % g_.sh) * g_.sw + tx % g_.sw;
      if (phase_index[size_t(ph)] < 0) phase_index[size_t(ph)] = nused++;
      tap_unit[size_t(t)] = phase_index[size_t(ph)];
    }
    // A unit's window: a block shorter than a plane row reads dy_max + 1 pieces of rows, one per
    // tap row, not the whole rows between them (VGG-16 conv1_2, measured with a 24 KB budget: 3
    // channels per chunk became 4, the layer 7-10% faster); a longer block reads its rows and dy_max
    // more.
    const int64_t ext = (g_.kw - 1) * g_.dw / g_.sw + 16;
    const int64_t span = p->block < p->Wq ? (dy_max + 1) * (p->block + ext) : p->block + dy_max * p->Wq + ext;
    const int64_t per_unit = 4 * span * ncopies;
    const int64_t upc = std::max<int64_t>(1, kL1Budget / per_unit);
    const int64_t nunits = cg * nused;
    p->nchunks = (nunits + upc - 1) / upc;
    auto chunk_of = [&](int64_t col) {
      const int64_t u = col / taps * nused + tap_unit[size_t(col % taps)];
      return u / upc;
    };
    p->seg.assign(size_t(p->nchunks * (OC + 1)), 0);
    for (int64_t oc = 0; oc < OC; ++oc)
      for (int64_t j = rp[oc]; j < rp[oc + 1]; ++j) ++p->seg[size_t(chunk_of(w_.col_at(j)) * (OC + 1) + oc)];
    int64_t k = 0;
    for (auto& v : p->seg) {
      const int64_t n = v;
      v = k;
      k += n;
    }
    std::vector<int64_t> pos(p->seg);
    // kPad zero entries past the end: the kernel loads the next offsets ahead of their use.
    p->off.resize(size_t(nnz + kPad));
    p->values.resize(size_t(nnz + kPad));
    for (int64_t oc = 0; oc < OC; ++oc) {
      for (int64_t j = rp[oc]; j < rp[oc + 1]; ++j) {
        const int64_t q = pos[size_t(chunk_of(w_.col_at(j)) * (OC + 1) + oc)]++;
        p->off[size_t(q)] = int32_t(off[size_t(j)]);
        p->values[size_t(q)] = weight(j);
      }
    }
  }
  if (cache_.size() >= 8) cache_.erase(cache_.begin());
  cache_[{H, W}] = p;
  return p;
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

// Region r of a band buffer: region 0 shifted left by sft floats, zero at the end; floats [a, b).
void shifted_copy(const float* region0, float* dst, int64_t S, int64_t sft, int64_t a, int64_t b) {
  const int64_t b_copy = std::min(b, S - sft);
  if (b_copy > a) std::memcpy(dst + a, region0 + a + sft, sizeof(float) * (b_copy - a));
  const int64_t z = std::max(a, b_copy);
  if (b > z) std::memset(dst + z, 0, sizeof(float) * (b - z));
}

}  // namespace

bool SparseConv2d::dense_for(int64_t H, int64_t W) const {
  return plan_for(H, W, ThreadPool::instance().num_threads())->dense;
}

void SparseConv2d::forward(const float* x, int64_t N, int64_t H, int64_t W, float* y, bool relu,
                           const float* scale, const float* shift) const {
  if (N <= 0) return;
  const Kernels& K = kernels();
  ThreadPool& pool = ThreadPool::instance();
  const int T = pool.num_threads();
  auto plan = plan_for(H, W, T);
  if (plan->width != K.width) plan = plan_for(H, W, T);  // the ISA changed in between (tests only)
  const ShapePlan& p = *plan;
  if (p.width != K.width) throw ShapeError("SparseConv2d: ISA changed during the call");
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
  const size_t need = size_t(nbuf * p.in_floats + 16);
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

  // Dense plans: a block is an output row, computed in pieces of up to dense_px pixels by 2*width
  // output channels; epi holds bias, scale and shift padded to whole channel blocks.
  constexpr int64_t kDenseOut = 32 * 16;  // floats of a piece's result: dense_px <= 16, 2*width <= 32
  if (int64_t(K.dense_px) * 2 * K.width > kDenseOut) throw ShapeError("SparseConv2d: dense block too large");
  const int64_t ocb = 2 * int64_t(p.width), es = p.dense ? (OC + ocb - 1) / ocb * ocb : 0;
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
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t p0 = p.block_start(b);
      for (int v = 0; v < p.nv; ++v) {
        const int64_t q = p0 + int64_t(v) * p.width, oy = q / p.Wq, ox = q % p.Wq;
        const int64_t valid = q < P_b ? std::min<int64_t>(p.width, p.OW - ox) : 0;
        mask[v] = valid > 0 ? uint32_t((uint64_t(1) << valid) - 1) : 0u;
        voff[v] = (oy0 + oy) * p.OW + ox;
      }
      for (int64_t oc0 = oc_a; oc0 < oc_b; oc0 += oc_tile) {
        const int64_t oc1 = std::min(oc_b, oc0 + oc_tile);
        for (int64_t c = 0; c < p.nchunks; ++c)
          K.conv(w, p.off.data(), p.seg.data() + c * (OC + 1), in, p0, p.nv, oc0, oc1, t, c > 0,
                 c == p.nchunks - 1 ? &ep : nullptr);
      }
    }
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
