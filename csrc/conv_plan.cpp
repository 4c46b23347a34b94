// Conv planners: a sparse and a dense builder sharing the band layout, and the plan cache.
// The measurements behind the constants are in docs/kernels.md.
#include "conv_plan.h"

#include <algorithm>
#include <atomic>
#include <string>

#include "common.h"
#include "dispatch.h"
#include "winograd.h"

namespace deepcomp {

namespace {
std::string S(int64_t v) { return std::to_string(v); }
constexpr int kMaxTile = 12;  // the sparse kernels' largest pixel block, in vectors
constexpr int64_t kMinBandRows = 6;
// Pixel block and chunk window knobs; 0: the ISA's default.
std::atomic<int> g_max_nv{0};
std::atomic<int64_t> g_l1_budget{0};
// Band buffers (padded, phase-split, shifted input rows) are kept about this small so they stay in
// cache between being built and being read; also bounds the scratch memory.
std::atomic<int64_t> g_band_budget{int64_t(2) << 20};
std::atomic<double> g_dense_threshold{-1.0};  // negative: the ISA's default
std::atomic<double> g_winograd_threshold{-1.0};  // negative: the default
#ifndef DC_CONV_RT
#define DC_CONV_RT true
#endif
// -1: the ISA's default (on for 16-lane vectors).
std::atomic<int> g_register_tiling{DC_CONV_RT ? -1 : 0};
std::atomic<int64_t> g_stream_bytes{-1};  // negative: the ISA's default
// Sparser layers share too few input loads between the rows of a group to pay for the pattern
// loops (VGG-16 conv1_2, 22% kept, 0.95-0.97x; conv3_2, 24%, 1.03x: docs/kernels.md).
constexpr double kRtMinDensity = 0.24;
// Rows this short (VGG-16 conv1_1: 3 channels x 9 taps) leave each pair of rows a handful of shared
// positions per chunk, and the pattern loops cost more than they share (docs/kernels.md).
constexpr int64_t kRtMinTaps = 64;

// An odd number of cache lines: a chunk's window, which reads the same rows of several channels,
// planes and regions, then spreads over the L1 sets (at power-of-two strides they collide).
int64_t odd_lines(int64_t floats) { return (((floats + 15) / 16) | 1) * 16; }

int64_t dy_max(const ConvGeometry& g) { return ((g.kh - 1) * g.dh) / g.sh; }  // extra plane rows a band reads

// Plane row width of the sparse kernel: a multiple of the SIMD width, for its aligned loads.
int64_t sparse_wq(const ConvGeometry& g, int64_t W, int width) {
  const int64_t Wplane = (W + 2 * g.pw + g.sw - 1) / g.sw;
  return (Wplane + width - 1) / width * width;
}

// Fills the band layout of p (key, OH, OW, Wq set) for a buffer of ncopies regions.
void layout_bands(const ConvGeometry& g, ConvPlan& p, int64_t ncopies) {
  const int64_t phases = g.sh * g.sw, dy = dy_max(g), threads = p.key.threads;
  // Band height: the largest whose buffer fits the budget (at least one output row), then lowered
  // so that the band count is a multiple of the thread count where the image has enough rows: each
  // thread then convolves whole bands from its own cache, with no synchronisation.
  const int64_t row_floats = ncopies * phases * g.in_channels * p.Wq;
  const int64_t bh = std::max<int64_t>(1, std::min(p.OH, p.key.budget / (4 * row_floats) - dy));
  p.nbands = (p.OH + bh - 1) / bh;
  // Two bands per thread where that leaves bands of kMinBandRows rows or more: the pool hands bands
  // out dynamically, so a thread slowed by something else on its core sheds work to the others.
  if (threads > 1) {
    const int64_t want = p.OH / (2 * threads) >= kMinBandRows ? 2 * threads : threads;
    p.nbands = std::min(p.OH, (std::max(p.nbands, want) + threads - 1) / threads * threads);
  }
  p.BH = (p.OH + p.nbands - 1) / p.nbands;  // even bands
  p.nbands = (p.OH + p.BH - 1) / p.BH;
  p.Hb = p.BH + dy;
  p.cstride = odd_lines(p.Hb * p.Wq);
  p.plane = odd_lines(g.in_channels * p.cstride);
  p.P = p.BH * p.Wq;
}

// Offset in region 0 of the band buffer of column col (of input channel c) of the weight matrix.
int64_t tap_offset(const ConvGeometry& g, const ConvPlan& p, int64_t c, int64_t col) {
  const int64_t ty = (col / g.kw) % g.kh * g.dh, tx = col % g.kw * g.dw;
  return ((ty % g.sh) * g.sw + (tx % g.sw)) * p.plane + c * p.cstride + (ty / g.sh) * p.Wq + tx / g.sw;
}

// Region size and buffer size once the blocks and the largest offset are known.
void size_regions(const ConvGeometry& g, ConvPlan& p, int64_t max_off, int64_t ncopies) {
  const int64_t reach = p.block_start(p.nblocks - 1) + p.block;  // past the last float a block reads
  p.S = odd_lines(std::max(g.sh * g.sw * p.plane, max_off + reach) + 2 * p.key.width);
  p.in_floats = ncopies * p.S;
  if (p.in_floats > INT32_MAX) throw ShapeError("SparseConv2d: input too large for 32-bit offsets");
}

std::shared_ptr<ConvPlan> new_plan(const ConvGeometry& g, const ConvPlanKey& key) {
  auto p = std::make_shared<ConvPlan>();
  p->key = key;
  std::tie(p->OH, p->OW) = conv_out_size(g, key.H, key.W);
  p->K = g.in_channels / g.groups * g.kh * g.kw;
  return p;
}

float weight_of(const CsrWeights& w, int64_t j) { return w.values ? w.values[j] : w.codebook[w.cluster[j]]; }

// Regroups a sparse plan's chunk-major nonzeros (seg/off/values) into register tiles: per chunk and
// group of kConvRtRows rows, one entry per distinct offset with the weights of the rows keeping it,
// entries sorted by pattern so that the kernel runs one branch-free loop per pattern.
void pack_register_tiles(ConvPlan& p, int64_t OC) {
  constexpr int M = kConvRtRows;
  p.rt = true;
  p.ngroups = (OC + M - 1) / M;
  p.rt_idx.assign(size_t(p.nchunks * p.ngroups * 3), 0);
  struct Entry {
    int32_t off;
    unsigned pattern;
    float w[M];
  };
  struct Tap {
    int32_t off;
    int row;
    float w;
    bool operator<(const Tap& o) const { return off != o.off ? off < o.off : row < o.row; }
  };
  std::vector<Tap> taps;  // the nonzeros of one group in one chunk
  std::vector<Entry> ents;
  for (int64_t c = 0; c < p.nchunks; ++c) {
    const int64_t* sg = p.seg.data() + c * (OC + 1);
    for (int64_t g = 0; g < p.ngroups; ++g) {
      taps.clear();
      for (int r = 0; r < M && g * M + r < OC; ++r)
        for (int64_t q = sg[g * M + r]; q < sg[g * M + r + 1]; ++q)
          taps.push_back({p.off[size_t(q)], r, p.values[size_t(q)]});
      std::sort(taps.begin(), taps.end());
      ents.clear();
      for (size_t i = 0; i < taps.size();) {
        Entry e{taps[i].off, 0u, {}};
        for (; i < taps.size() && taps[i].off == e.off; ++i) {
          e.pattern |= 1u << taps[i].row;
          e.w[taps[i].row] += taps[i].w;  // a row holds an offset once; += keeps a duplicate exact
        }
        ents.push_back(e);
      }
      std::stable_sort(ents.begin(), ents.end(), [](const Entry& a, const Entry& b) { return a.pattern < b.pattern; });
      int64_t* idx = p.rt_idx.data() + (c * p.ngroups + g) * 3;
      idx[0] = int64_t(p.rt_hdr.size());
      idx[1] = int64_t(p.rt_off.size());
      idx[2] = int64_t(p.rt_w.size());
      const size_t counts = p.rt_hdr.size();
      p.rt_hdr.resize(counts + (1u << M) - 1, 0);
      for (const auto& e : ents) {
        ++p.rt_hdr[counts + e.pattern - 1];
        p.rt_off.push_back(e.off);
        for (int r = 0; r < M; ++r)
          if ((e.pattern >> r) & 1) p.rt_w.push_back(e.w[r]);
      }
    }
  }
  // The per-row layout is not needed any more.
  std::vector<int32_t>().swap(p.off);
  std::vector<float>().swap(p.values);
}

}  // namespace

int64_t conv_band_budget() { return g_band_budget.load(std::memory_order_relaxed); }
// 16 lanes: 0.55 (0.4 and 0.7 measured 0.93x and 0.90x). 8 lanes (AVX2): the dense kernel's 6 x 2
// accumulator tile against the 7-vector sparse blocks; VGG-16 conv3_1 (effective 0.59) ran 0.68x
// dense, AlexNet conv1 (0.90) 1.30x (docs/kernels.md).
double conv_default_dense_threshold(int width) { return width >= 16 ? 0.55 : 0.75; }
double conv_dense_threshold() {
  const double t = g_dense_threshold.load(std::memory_order_relaxed);
  return t < 0 ? conv_default_dense_threshold(kernels().width) : t;
}
double set_conv_dense_threshold(double t) {
  const double prev = conv_dense_threshold();
  g_dense_threshold.store(t, std::memory_order_relaxed);
  return prev;
}
int64_t set_conv_band_budget(int64_t bytes) {
  return g_band_budget.exchange(std::max<int64_t>(bytes, 1), std::memory_order_relaxed);
}

bool conv_register_tiling() {
  const int v = g_register_tiling.load(std::memory_order_relaxed);
  return v < 0 ? kernels().width >= 16 : v != 0;
}
bool set_conv_register_tiling(bool on) {
  const bool prev = conv_register_tiling();
  g_register_tiling.store(on ? 1 : 0, std::memory_order_relaxed);
  return prev;
}

int64_t conv_stream_bytes() {
  const int64_t v = g_stream_bytes.load(std::memory_order_relaxed);
  if (v >= 0) return v;
  return kernels().width == 8 ? int64_t(8) << 20 : INT64_MAX;
}
int64_t set_conv_stream_bytes(int64_t bytes) {
  const int64_t prev = conv_stream_bytes();
  g_stream_bytes.store(bytes < 0 ? -1 : bytes, std::memory_order_relaxed);
  return prev;
}

// 16-lane vectors: blocks up to 8 (2 x 8 accumulators of the paired loop in 32 registers; 12 and 10
// measured 0.98x), a 32 KB window of a 48 KB L1D. 8-lane (AVX2, 16 registers): see docs/kernels.md.
int conv_default_max_nv(int width) { return width >= 16 ? 8 : 7; }
int64_t conv_default_l1_budget(int width) { return width >= 16 ? int64_t(32) << 10 : int64_t(32) << 10; }
int conv_max_nv() {
  const int v = g_max_nv.load(std::memory_order_relaxed);
  return v > 0 ? v : conv_default_max_nv(kernels().width);
}
int set_conv_max_nv(int nv) {
  const int prev = conv_max_nv();
  g_max_nv.store(std::min(std::max(nv, 0), kMaxTile), std::memory_order_relaxed);
  return prev;
}
int64_t conv_l1_budget() {
  const int64_t v = g_l1_budget.load(std::memory_order_relaxed);
  return v > 0 ? v : conv_default_l1_budget(kernels().width);
}
int64_t set_conv_l1_budget(int64_t bytes) {
  const int64_t prev = conv_l1_budget();
  g_l1_budget.store(std::max<int64_t>(bytes, 0), std::memory_order_relaxed);
  return prev;
}

ConvPlanKey current_conv_key(int64_t H, int64_t W, int threads) {
  return {H,  W, threads, kernels().width, conv_band_budget(), conv_dense_threshold(), conv_register_tiling(),
          conv_max_nv(), conv_l1_budget()};
}

std::pair<int64_t, int64_t> conv_out_size(const ConvGeometry& g, int64_t H, int64_t W) {
  const int64_t eh = g.dh * (g.kh - 1) + 1, ew = g.dw * (g.kw - 1) + 1;
  const int64_t Hp = H + 2 * g.ph, Wp = W + 2 * g.pw;
  if (H < 1 || W < 1 || Hp < eh || Wp < ew)
    throw ShapeError("SparseConv2d: input " + S(H) + "x" + S(W) + " is smaller than the (dilated) kernel");
  return {(Hp - eh) / g.sh + 1, (Wp - ew) / g.sw + 1};
}

bool conv_wants_dense(const ConvGeometry& g, const CsrStore& w, const ConvPlanKey& key) {
  // The dense kernel computes every weight, but at about twice the sparse kernel's rate (it loads
  // an input value once per 2*width output channels, the sparse one once per nonzero), without the
  // padding columns the sparse one computes (Wq / OW), and with a per-pixel epilogue that a layer
  // with few taps per output (K) does not amortise. Effective density =
  // density * Wq / OW / (1 + 4 * width / K).
  if (g.groups != 1 || w.nnz() == 0) return false;
  const int64_t K = g.in_channels * g.kh * g.kw, OW = conv_out_size(g, key.H, key.W).second;
  const double density = double(w.nnz()) / double(g.out_channels * K);
  const double effective = density * double(sparse_wq(g, key.W, key.width)) / double(OW) /
                           (1.0 + 4.0 * key.width / double(K));
  return effective >= key.dense_threshold;
}

double conv_default_winograd_threshold(int) { return 0.85; }
double conv_winograd_threshold() {
  const double t = g_winograd_threshold.load(std::memory_order_relaxed);
  return t < 0 ? conv_default_winograd_threshold(kernels().width) : t;
}
double set_conv_winograd_threshold(double t) {
  const double prev = conv_winograd_threshold();
  g_winograd_threshold.store(t, std::memory_order_relaxed);
  return prev;
}

double conv_winograd_saving(const ConvGeometry& g, const CsrStore& w, int64_t N, int64_t H, int64_t W, int width) {
  // Multiplications per output and input channel: the sparse kernel does r^2 * density * Wq / OW
  // (it computes the padding columns too), the dense one about r^2 * 0.55 at its rate (see
  // conv_wants_dense); Winograd (r + 3)^2 / 16 per tile output, times the share of the tiles' outputs
  // inside the plane and of the tile vectors' lanes that hold a tile, plus the transforms, whose
  // cost per product falls with the channel counts (kWinoTransform: fitted on VGG-16's layers,
  // docs/kernels.md).
  constexpr double kWinoTransform = 6.7;
  if (!WinogradConv::fits(g) || w.nnz() == 0) return 0.0;
  const auto [OH, OW] = conv_out_size(g, H, W);
  const int64_t TY = (OH + 3) / 4, TX = (OW + 3) / 4, tiles = N * TY * TX;
  const double taps = double(g.kh * g.kw), points = double(WinogradConv::planes_of(g.kh));
  const double density = double(w.nnz()) / (double(g.out_channels * g.in_channels) * taps);
  const double direct = taps * std::min(density * double(sparse_wq(g, W, width)) / double(OW), 0.55);
  const double inside = double(TY * 4) * double(TX * 4) / double(OH * OW);
  const double lanes = double((tiles + width - 1) / width * width) / double(tiles);
  const double transforms = 1.0 + kWinoTransform / double(g.in_channels) + kWinoTransform / double(g.out_channels);
  return direct / (points / 16.0 * inside * lanes * transforms);
}

bool conv_wants_winograd(const ConvGeometry& g, const CsrStore& w, int64_t N, int64_t H, int64_t W, int width) {
  // Under 32 tiles a call streams all its transformed weights for too few products (VGG-16's conv5
  // and AlexNet's 13 x 13 layers at batch 1), and under 16 input channels the GEMMs are too short.
  constexpr int64_t kMinTiles = 32, kMinChannels = 16;
  if (!WinogradConv::fits(g) || w.nnz() == 0 || N < 1) return false;
  const double threshold = conv_winograd_threshold();
  if (threshold <= 0) return true;  // forced (tests, A/B runs)
  const auto [OH, OW] = conv_out_size(g, H, W);
  if (g.in_channels < kMinChannels || N * ((OH + 3) / 4) * ((OW + 3) / 4) < kMinTiles) return false;
  return conv_winograd_saving(g, w, N, H, W, width) >= threshold;
}

std::shared_ptr<const ConvPlan> build_dense_plan(const ConvGeometry& g, const CsrStore& w, const ConvPlanKey& key) {
  if (g.groups != 1) throw ShapeError("SparseConv2d: the dense kernel needs groups == 1");
  auto p = new_plan(g, key);
  p->dense = true;
  p->Wq = (key.W + 2 * g.pw + g.sw - 1) / g.sw;  // any width: no shifted copies, no aligned loads
  p->shift.assign(1, 0);
  layout_bands(g, *p, 1);
  p->nv = 1;
  p->pieces = 0;
  p->block = p->Wq;
  p->nblocks = p->blocks_for(p->BH);
  p->nchunks = 1;
  p->off.resize(size_t(p->K));
  int64_t max_off = 0;
  for (int64_t col = 0; col < p->K; ++col) {
    const int64_t o = tap_offset(g, *p, col / (g.kh * g.kw), col);
    p->off[size_t(col)] = int32_t(o);
    max_off = std::max(max_off, o);
  }
  size_regions(g, *p, max_off, 1);
  // The weights packed [oc / ocb][tap][ocb], zero past the last channel.
  const int64_t OC = g.out_channels, ocb = 2 * key.width, nob = (OC + ocb - 1) / ocb;
  const auto& rp = w.row_ptr();
  const CsrWeights v = w.view();
  p->wpack.assign(size_t(nob * p->K * ocb), 0.f);
  for (int64_t oc = 0; oc < OC; ++oc)
    for (int64_t j = rp[oc]; j < rp[oc + 1]; ++j)
      p->wpack[size_t((oc / ocb * p->K + w.col_at(j)) * ocb + oc % ocb)] = weight_of(v, j);
  return p;
}

std::shared_ptr<const ConvPlan> build_sparse_plan(const ConvGeometry& g, const CsrStore& w, const ConvPlanKey& key) {
  auto p = new_plan(g, key);
  p->dense = false;
  const int width = key.width;
  const int64_t nnz = w.nnz(), taps = g.kh * g.kw, cg = g.in_channels / g.groups, phases = g.sh * g.sw;
  p->Wq = sparse_wq(g, key.W, width);

  // Shifts: the distinct (offset mod width) of the nonzeros' taps; they do not depend on the band
  // height because a plane row is a multiple of the width.
  p->shift.assign(1, 0);
  std::vector<int64_t> region_of(size_t(width), -1);
  region_of[0] = 0;
  for (int64_t j = 0; j < nnz; ++j) {
    const int64_t sft = (w.col_at(j) % g.kw * g.dw / g.sw) % width;
    if (region_of[size_t(sft)] < 0) {
      region_of[size_t(sft)] = int64_t(p->shift.size());
      p->shift.push_back(sft);
    }
  }
  const int64_t ncopies = int64_t(p->shift.size());
  layout_bands(g, *p, ncopies);

  // Pick the register block (nv vectors) that wastes the least: each block pays nv loads+FMAs per
  // nonzero plus about two scalar operations (offset, weight broadcast).
  const bool rt = key.rt && p->K >= kRtMinTaps && double(nnz) >= kRtMinDensity * double(g.out_channels * p->K);
  const int max_nv = rt ? std::min(key.max_nv, conv_rt_max_nv(width)) : key.max_nv;
  const int64_t nvec = (p->P + width - 1) / width;
  int best = 1;
  int64_t best_cost = INT64_MAX;
  for (int nv = 1; nv <= max_nv; ++nv) {
    const int64_t cost = ((nvec + nv - 1) / nv) * (nv + 2);
    if (cost <= best_cost) best = nv, best_cost = cost;
  }
  // Pieces of rows instead, where a row ends in vectors that hold no output column: 7 vectors per
  // row instead of 8 on 112-wide layers, 14 instead of 15 on 224-wide ones.
  p->pieces = 0;
  const int64_t row_out = (p->OW + width - 1) / width, row_vecs = p->Wq / width;
  if (row_out < row_vecs) {
    const int64_t pieces = (row_out + max_nv - 1) / max_nv, nvp = (row_out + pieces - 1) / pieces;
    if (pieces * nvp <= row_vecs && p->BH * pieces * (nvp + 2) < best_cost) {
      best = int(nvp);
      p->pieces = pieces;
    }
  }
  p->nv = best;
  p->block = int64_t(best) * width;
  p->nblocks = p->blocks_for(p->BH);

  // Offsets per nonzero: region (by shift) times S plus the aligned offset in that region. They are
  // looked up by (input channel, tap), one table entry per weight of a dense layer.
  std::vector<int64_t> off_at(size_t(g.in_channels * taps));
  for (int64_t c = 0; c < g.in_channels; ++c)
    for (int64_t t = 0; t < taps; ++t) off_at[size_t(c * taps + t)] = tap_offset(g, *p, c, t);
  std::vector<int64_t> off(static_cast<size_t>(nnz));
  const auto& rp = w.row_ptr();
  const int64_t ocg = g.out_channels / g.groups;
  int64_t max_off = 0;
  for (int64_t oc = 0; oc < g.out_channels; ++oc) {
    const int64_t* at = off_at.data() + oc / ocg * cg * taps;
    for (int64_t j = rp[oc]; j < rp[oc + 1]; ++j) {
      const int64_t o = at[w.col_at(j)];
      off[size_t(j)] = o;
      max_off = std::max(max_off, o - o % width);
    }
  }
  size_regions(g, *p, max_off, ncopies);
  for (auto& o : off) o = region_of[size_t(o % width)] * p->S + o - o % width;

  // Chunks of input: a unit is one input channel in one phase plane, the rows that a pixel block
  // reads there; a chunk is as many consecutive units as fit the L1 budget. The nonzeros are stored
  // chunk-major (chunk, output channel, column), so that the kernel, which walks the output
  // channels of one chunk, reads offsets and weights sequentially.
  std::vector<int64_t> tap_unit(size_t(taps), 0), phase_index(size_t(phases), -1);
  int64_t nused = 0;
  for (int64_t t = 0; t < taps; ++t) {
    const int64_t ty = t / g.kw * g.dh, tx = t % g.kw * g.dw;
    const int64_t ph = (ty % g.sh) * g.sw + tx % g.sw;
    if (phase_index[size_t(ph)] < 0) phase_index[size_t(ph)] = nused++;
    tap_unit[size_t(t)] = phase_index[size_t(ph)];
  }
  // A unit's window: a block shorter than a plane row reads dy_max + 1 pieces of rows, one per tap
  // row, not the whole rows between them; a longer block reads its rows and dy_max more.
  const int64_t dy = dy_max(g), ext = (g.kw - 1) * g.dw / g.sw + 16;
  const int64_t span = p->block < p->Wq ? (dy + 1) * (p->block + ext) : p->block + dy * p->Wq + ext;
  const int64_t upc = std::max<int64_t>(1, key.l1 / (4 * span * ncopies));
  p->nchunks = (cg * nused + upc - 1) / upc;
  std::vector<int64_t> chunk_of(size_t(cg * taps));  // the chunk of each column
  for (int64_t col = 0; col < cg * taps; ++col)
    chunk_of[size_t(col)] = (col / taps * nused + tap_unit[size_t(col % taps)]) / upc;
  const int64_t OC = g.out_channels;
  p->seg.assign(size_t(p->nchunks * (OC + 1)), 0);
  for (int64_t oc = 0; oc < OC; ++oc)
    for (int64_t j = rp[oc]; j < rp[oc + 1]; ++j) ++p->seg[size_t(chunk_of[size_t(w.col_at(j))] * (OC + 1) + oc)];
  int64_t k = 0;
  for (auto& v : p->seg) {
    const int64_t n = v;
    v = k;
    k += n;
  }
  std::vector<int64_t> pos(p->seg);
  p->off.assign(size_t(nnz + kConvPad), 0);
  p->values.assign(size_t(nnz + kConvPad), 0.f);
  const CsrWeights v = w.view();
  for (int64_t oc = 0; oc < OC; ++oc)
    for (int64_t j = rp[oc]; j < rp[oc + 1]; ++j) {
      const int64_t q = pos[size_t(chunk_of[size_t(w.col_at(j))] * (OC + 1) + oc)]++;
      p->off[size_t(q)] = int32_t(off[size_t(j)]);
      p->values[size_t(q)] = weight_of(v, j);
    }
  if (rt) pack_register_tiles(*p, OC);
  return p;
}

std::shared_ptr<const ConvPlan> ConvPlanCache::get(const ConvGeometry& g, const CsrStore& w,
                                                   const ConvPlanKey& key) const {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = plans_.find(key);
  if (it != plans_.end()) return it->second;
  auto p = conv_wants_dense(g, w, key) ? build_dense_plan(g, w, key) : build_sparse_plan(g, w, key);
  if (plans_.size() >= kMaxPlans) plans_.erase(plans_.begin());
  plans_[key] = p;
  return p;
}

}  // namespace deepcomp
