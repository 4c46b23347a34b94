// int8 direct convolution over 1x4 blocks: weight preparation, per-shape plans, the threaded loop
// over (image, row block, group of 4 output channels) and the fused max-pool. The arithmetic is in
// the micro-kernels (isa/int8_impl.h).
#include "int8_conv.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>

#include "common.h"
#include "threadpool.h"

namespace deepcomp {

namespace {

std::string S(int64_t v) { return std::to_string(v); }
int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
// Channel oc's kept blocks are w.index / w.w4 [group_first(oc), group_first(oc + 1)); the padding
// channels past the weight's rows have none.
int64_t group_first(const Blocks8& w, int64_t oc) { return oc < w.rows ? w.row_ptr[oc] : w.row_ptr[w.rows]; }

// A task is a row block of about kTaskPositions output positions by kGroupsPerTask groups of 4
// output channels. Inside it the positions are walked in chunks of at most kChunkVectors vectors,
// and every channel of the task runs over a chunk before the next one starts, so the chunk's input rows
// (channel groups x kernel rows x 12 vectors, about 40 KB for VGG-16 conv1_2 on AVX-512) are read
// while still in cache for all 16 channels instead of the whole band being streamed once per
// channel. 12 is two of the tiled kernel's 6-vector passes (docs/int8.md).
constexpr int64_t kTaskPositions = 512;
// Under an overlapping pool every row block recomputes pk - ps conv rows of its neighbour's, so
// fewer, larger blocks pay there (docs/int8.md).
constexpr int64_t kOverlapTaskPositions = 2048;
constexpr int64_t kChunkVectors = 12;
constexpr int64_t kGroupsPerTask = 4;
constexpr int64_t kVecPad = 16;  // the widest path's lanes: scratch rows are read rounded up to it
// A tiled pass runs over the taps of one K-block of input channel groups at a time (at most this
// many groups x kernel rows: 48 groups of a 3x3 kernel, split evenly), so the 4 groups of a task
// reuse a pass's input from L1/L2 instead of each streaming all channels (docs/int8.md).
constexpr int64_t kKBlockRows = 144;

}  // namespace

Act8Layout act8_layout(int64_t C, int64_t H, int64_t W, int64_t ph, int64_t pw, int64_t sh, int64_t sw) {
  if (C < 1 || H < 1 || W < 1 || ph < 0 || pw < 0 || sh < 1 || sw < 1)
    throw ShapeError("int8 layout: channels, size and stride must be >= 1 and padding >= 0");
  Act8Layout L;
  L.C = C, L.H = H, L.W = W, L.ph = ph, L.pw = pw, L.sh = sh, L.sw = sw;
  L.G = cdiv(C, 4);
  L.Hq = cdiv(H + 2 * ph, sh);
  // At stride 1 a row's right padding is the next row's left padding (both hold the zero point), so a
  // row is W + pw lanes and a conv computes pw fewer dropped positions per row. Lane (i, j) of padded
  // pixel (i, j) stays i * Wq + j: columns past Wq are the next row's first lanes.
  L.Wq = sw == 1 ? W + pw : cdiv(W + 2 * pw, sw);
  L.plane = L.Hq * L.Wq;
  L.group = sh * sw * L.plane;
  // A kernel reads whole vectors from a row's start, up to one row plus one vector past the last plane.
  L.slack = L.Wq + kVecPad;
  if (L.bytes() > (int64_t(1) << 31)) throw ShapeError("int8 layout: one image would exceed 2 GiB");
  return L;
}

void act8_pack(const float* x, int64_t N, const Act8Layout& L, float inv_scale, int32_t zp, uint8_t* out) {
  const int64_t img = L.bytes();
  std::memset(out, int(uint8_t(zp)), size_t(N * img));
  const Int8Kernels& k = int8_kernels();
  const std::vector<float> zeros(size_t(L.W), 0.f);  // the channels past C quantize to the zero point
  ThreadPool& pool = ThreadPool::instance();
  const int T = pool.num_threads();
  std::vector<uint32_t> phased(size_t(T * L.W));  // per slot: one row's lanes before the stride phases split them
  pool.parallel_for(N * L.G * L.H, T, [&](int64_t t, int slot) {
    const int64_t y = t % L.H, g = (t / L.H) % L.G, n = t / (L.H * L.G);
    const float* rows[4];
    for (int c = 0; c < 4; ++c) {
      const int64_t ch = 4 * g + c;
      rows[c] = ch < L.C ? x + ((n * L.C + ch) * L.H + y) * L.W : zeros.data();
    }
    const int64_t py = y + L.ph;
    uint32_t* row = reinterpret_cast<uint32_t*>(out + n * img) + g * L.group + (py % L.sh) * L.sw * L.plane +
                    (py / L.sh) * L.Wq;
    if (L.sw == 1) {
      k.pack_row4(rows, L.W, inv_scale, zp, row + L.pw);
      return;
    }
    uint32_t* lanes = phased.data() + slot * L.W;
    k.pack_row4(rows, L.W, inv_scale, zp, lanes);
    for (int64_t phase = 0; phase < L.sw; ++phase) {  // column px = xx + pw goes to plane px % sw, px / sw
      const int64_t x0 = ((phase - L.pw) % L.sw + L.sw) % L.sw;
      uint32_t* dst = row + phase * L.plane + (x0 + L.pw) / L.sw;
      for (int64_t xx = x0; xx < L.W; xx += L.sw) *dst++ = lanes[xx];
    }
  });
}

void act8_pack_columns(const float* x, int64_t N, int64_t C, int64_t W, int64_t pw, const Act8Layout& L,
                       float inv_scale, int32_t zp, uint8_t* out) {
  if (L.C != 4 * C || L.pw != 0 || L.sw != 1) throw ShapeError("act8_pack_columns: L is not a columns-in-lanes layout");
  const int64_t img = L.bytes(), H = L.H;
  const int64_t n = std::max<int64_t>(0, std::min(W, 4 * L.W - pw));  // columns past the last lane are unused
  std::memset(out, int(uint8_t(zp)), size_t(N * img));
  const Int8Kernels& k = int8_kernels();
  ThreadPool& pool = ThreadPool::instance();
  constexpr int64_t kRows = 32;  // rows per task
  const int64_t nb = (H + kRows - 1) / kRows;
  pool.parallel_for(N * C * nb, pool.num_threads(), [&](int64_t t, int) {
    const int64_t c = (t / nb) % C, i = t / (nb * C);
    for (int64_t y = t % nb * kRows; y < std::min(H, (t % nb + 1) * kRows); ++y) {
      const int64_t py = y + L.ph;
      uint8_t* row = out + i * img + 4 * (c * L.group + (py % L.sh) * L.plane + (py / L.sh) * L.Wq);
      k.quantize_bytes(x + ((i * C + c) * H + y) * W, n, inv_scale, zp, row + pw);
    }
  });
}

namespace {
// The zero point into everything of a stride-1 image that a conv's epilogue does not write: the
// padding rows and columns and the slack (the interior is written whole, 4 channels per lane).
void fill_border(const Act8Layout& L, int32_t zp, uint8_t* img) {
  const int v = int(uint8_t(zp));
  const size_t row = size_t(4 * L.Wq);
  for (int64_t g = 0; g < L.G; ++g) {
    uint8_t* p = img + 4 * g * L.group;
    std::memset(p, v, row * size_t(L.ph));
    for (int64_t y = L.ph; y < L.ph + L.H; ++y) {
      std::memset(p + y * row, v, size_t(4 * L.pw));
      std::memset(p + y * row + 4 * (L.pw + L.W), v, size_t(4 * (L.Wq - L.pw - L.W)));
    }
    std::memset(p + (L.ph + L.H) * row, v, row * size_t(L.Hq - L.ph - L.H));
  }
  std::memset(img + 4 * L.G * L.group, v, size_t(4 * L.slack));
}
}  // namespace

struct Int8Conv2d::Plan {
  Act8Layout in, out;
  int64_t OH = 0, OW = 0, OHf = 0, OWf = 0;
  std::vector<int32_t> off;   // byte offset of every sparse block, same order as tap_
  std::vector<int32_t> doff;  // byte offset of every grouped tap, same order as dense_tap_
  std::vector<int32_t> toff;  // byte offset of every tiled tap, same order as tile_tap_
  int64_t rows = 0, nrb = 0;  // final output rows per task, row blocks
  int64_t crows = 0;          // conv rows per task at most
  int64_t acc_stride = 0, pool_stride = 0;
};

namespace {
std::atomic<double> g_split_fraction{kMaxSplitFraction};

// Block w as the sum of two pair-bounded blocks: each weight halved toward zero, and the rest.
std::pair<int32_t, int32_t> split_block(int32_t w) {
  uint32_t a = 0, b = 0;
  for (int i = 0; i < 4; ++i) {
    const int v = int8_t(uint32_t(w) >> (8 * i)), h = v / 2;
    a |= uint32_t(uint8_t(int8_t(h))) << (8 * i);
    b |= uint32_t(uint8_t(int8_t(v - h))) << (8 * i);
  }
  return {int32_t(a), int32_t(b)};
}

// Each tap where some channel's block is not pair-bounded keeps the halves and gains a second tap at
// the same offset with the rests (its mask: the channels split there).
void split_taps(std::vector<int32_t>& taps, std::vector<uint8_t>& mask, std::vector<int32_t>& blocks) {
  const size_t n = taps.size();
  for (size_t t = 0; t < n; ++t) {
    int32_t rest[4] = {0, 0, 0, 0};
    uint8_t cut = 0;
    for (int o = 0; o < 4; ++o)
      if (!pair_bounded(blocks[4 * t + o])) {
        const std::pair<int32_t, int32_t> ab = split_block(blocks[4 * t + o]);
        blocks[4 * t + o] = ab.first, rest[o] = ab.second, cut |= uint8_t(1 << o);
      }
    if (!cut) continue;
    taps.push_back(taps[t]);
    mask.push_back(cut);
    blocks.insert(blocks.end(), rest, rest + 4);
  }
}
}  // namespace

double int8_split_fraction() { return g_split_fraction.load(std::memory_order_relaxed); }
double set_int8_split_fraction(double f) {
  return g_split_fraction.exchange(f < 0 ? kMaxSplitFraction : f, std::memory_order_relaxed);
}

double unbounded_fraction(const Blocks8& w) {
  if (w.w4.empty()) return 0.0;
  return double(std::count_if(w.w4.begin(), w.w4.end(), [](int32_t b) { return !pair_bounded(b); })) /
         double(w.w4.size());
}

Int8Conv2d::Int8Conv2d(const Blocks8& w, const Conv8Geometry& g, const float* m, const float* b, int32_t zp_in,
                       const Conv8Output& out, int kernel, double dense_threshold)
    : g_(g), out_(out) {
  if (g.in_channels < 1 || g.out_channels < 1) throw ShapeError("Int8Conv2d: channels must be >= 1");
  if (g.kh < 1 || g.kw < 1 || g.kh > 64 || g.kw > 64) throw ShapeError("Int8Conv2d: kernel_size must be in [1, 64]");
  if (g.sh < 1 || g.sw < 1 || g.dh < 1 || g.dw < 1 || g.ph < 0 || g.pw < 0)
    throw ShapeError("Int8Conv2d: stride and dilation must be >= 1, padding >= 0");
  if (zp_in < 0 || zp_in > 255 || out.zp < 0 || out.zp > 255) throw ShapeError("Int8Conv2d: zero points must be in [0, 255]");
  if (out.oph < 0 || out.opw < 0) throw ShapeError("Int8Conv2d: output padding must be >= 0");
  if ((out.pool_k == 0) != (out.pool_s == 0) || out.pool_k < 0 || out.pool_s < 0)
    throw ShapeError("Int8Conv2d: pool kernel and stride must both be >= 1 (or both 0: no pool)");
  if (out.u8 && (out.lo != -INFINITY || out.hi != INFINITY))
    throw ShapeError("Int8Conv2d: a clamp is fused into fp32 output only");
  if (!(out.lo <= out.hi)) throw ShapeError("Int8Conv2d: clamp needs lo <= hi");
  if (kernel < 0 || kernel > 3)
    throw ShapeError("Int8Conv2d: kernel must be 0 (auto), 1 (sparse), 2 (dense) or 3 (tiled)");
  if (g.sw == 1 && g.pw > g.dw * (g.kw - 1))  // the output row would not fit the shared-padding row
    throw ShapeError("Int8Conv2d: at stride 1 the padding along W must be at most dilation * (kw - 1)");
  // The int32 sum of one output, and its zero-point correction, are each at most K * 255 * 128.
  const int64_t K = g.in_channels * g.kh * g.kw;
  if (2 * K * 255 * 128 > std::numeric_limits<int32_t>::max())
    throw ShapeError("Int8Conv2d: in_channels*kh*kw = " + S(K) + " is too large for int32 accumulation");
  const int64_t C = g.in_channels, OC = g.out_channels, taps = g.kh * g.kw;
  if (w.rows != OC || w.C != C || w.taps != taps)
    throw ShapeError("Int8Conv2d: the weight's blocks are not those of a " + S(OC) + "x" + S(C) + "x" + S(g.kh) + "x" +
                     S(g.kw) + " weight");
  gi_ = cdiv(C, 4);
  ocp_ = 4 * cdiv(OC, 4);
  const int64_t ntaps = gi_ * taps;
  nonzeros_ = w.nonzeros;

  rq_.assign(ocp_, Requant{});
  for (int64_t oc = 0; oc < OC; ++oc) {
    if (!(m[oc] >= 0.f) || !std::isfinite(m[oc]) || !std::isfinite(b[oc]))
      throw ShapeError("Int8Conv2d: multipliers must be finite and >= 0, biases finite (channel " + S(oc) + ")");
    rq_[oc] = Requant{int32_t(w.sum[oc] * zp_in), m[oc], b[oc]};
  }
  auto first = [&](int64_t oc) { return group_first(w, oc); };

  // Each group of 4 output channels runs per channel over its own blocks (conv_sparse), tiled over
  // the taps any of them keeps (conv_tiled4: one input load feeds every channel that keeps the tap),
  // or grouped over that union with its zeros (conv_dense4: no pattern runs, so on some paths it
  // wins once the union is nearly full). Auto: grouped when its kept blocks reach dense_threshold
  // (negative: the path's dense_fill) of the 4 x union it would execute, tiled otherwise.
  const double threshold = dense_threshold < 0 ? int8_kernels().dense_fill : dense_threshold;
  // Split the blocks over the pair bound where the path has a pairs table and few need it.
  const bool split = int8_kernels().pairs && unbounded_fraction(w) <= int8_split_fraction();
  const int64_t ngroups = ocp_ / 4;
  mode_.assign(ngroups, kPerChannel);
  dense_at_.assign(ngroups + 1, 0);
  nkb_ = cdiv(gi_, std::max<int64_t>(1, kKBlockRows / g.kh));
  kb_groups_ = cdiv(gi_, nkb_);
  tile_at_.assign(ngroups * nkb_ + 1, 0);
  tile_wat_.assign(ngroups * nkb_ + 1, 0);
  tile_rat_.assign(ngroups * nkb_ + 1, 0);
  row_ptr_.assign(ocp_ + 1, 0);
  kept_ = 0;
  std::vector<int32_t> union_taps;
  for (int64_t q = 0; q < ngroups; ++q) {
    const int64_t lo = first(4 * q), hi = first(4 * q + 4), kept = hi - lo;
    union_taps.clear();
    if (kernel == 2) {
      for (int64_t t = 0; t < ntaps; ++t) union_taps.push_back(int32_t(t));
    } else {
      union_taps.assign(w.index.begin() + lo, w.index.begin() + hi);
      std::sort(union_taps.begin(), union_taps.end());
      union_taps.erase(std::unique(union_taps.begin(), union_taps.end()), union_taps.end());
    }
    kept_ += kept;
    const bool full = !union_taps.empty() && double(kept) >= threshold * double(4 * union_taps.size());
    if (kernel == 2 || (kernel == 0 && full)) {
      mode_[q] = kDense;
      add_dense(w, q, union_taps, split);
    } else if (kernel == 3 || kernel == 0) {
      mode_[q] = kTiled;
      add_tiled(w, q, union_taps, split);
    }
    dense_at_[q + 1] = int64_t(dense_tap_.size());
    if (mode_[q] != kTiled)
      for (int64_t b = 0; b < nkb_; ++b) end_segment(q * nkb_ + b);
    for (int o = 0; o < 4; ++o) {
      const int64_t oc = 4 * q + o;
      if (mode_[q] == kPerChannel)
        for (int64_t j = first(oc); j < first(oc + 1); ++j) {
          const bool cut = split && !pair_bounded(w.w4[j]);
          const std::pair<int32_t, int32_t> ab = cut ? split_block(w.w4[j]) : std::make_pair(w.w4[j], 0);
          for (int part = 0; part <= int(cut); ++part) {
            tap_.push_back(w.index[j]);
            w4_.push_back(part ? ab.second : ab.first);
          }
        }
      row_ptr_[oc + 1] = int64_t(w4_.size());
    }
  }
  auto bounded = [](const std::vector<int32_t>& v) { return std::all_of(v.begin(), v.end(), pair_bounded); };
  pairs_ = bounded(w4_) && bounded(dense_w_) && bounded(tile_w_);
}

namespace {
// Group q's blocks over the union of its taps: blocks[4t + o] is channel o's block at taps[t] (0 where
// it keeps none there); returns each tap's mask of the channels that keep it.
std::vector<uint8_t> union_blocks(const Blocks8& w, int64_t q, const std::vector<int32_t>& taps, int32_t* blocks) {
  std::vector<uint8_t> mask(taps.size(), 0);
  for (int o = 0; o < 4; ++o)
    for (int64_t j = group_first(w, 4 * q + o); j < group_first(w, 4 * q + o + 1); ++j) {
      const size_t at = size_t(std::lower_bound(taps.begin(), taps.end(), w.index[j]) - taps.begin());
      mask[at] |= uint8_t(1 << o);
      blocks[4 * at + o] = w.w4[j];
    }
  return mask;
}
}  // namespace

// [tap][4] blocks over the union, zero where a channel does not keep the tap.
void Int8Conv2d::add_dense(const Blocks8& w, int64_t q, const std::vector<int32_t>& taps, bool split) {
  std::vector<int32_t> all(taps), blocks(4 * taps.size(), 0);
  std::vector<uint8_t> mask = union_blocks(w, q, taps, blocks.data());
  if (split) split_taps(all, mask, blocks);
  dense_tap_.insert(dense_tap_.end(), all.begin(), all.end());
  dense_w_.insert(dense_w_.end(), blocks.begin(), blocks.end());
}

// Per K-block, the union's taps sorted (stably) by which channels keep them, one run per mask present.
void Int8Conv2d::add_tiled(const Blocks8& w, int64_t q, const std::vector<int32_t>& taps, bool split) {
  std::vector<int32_t> all(taps), blocks(4 * taps.size(), 0);
  std::vector<uint8_t> mask = union_blocks(w, q, taps, blocks.data());
  if (split) split_taps(all, mask, blocks);
  const int64_t block_taps = kb_groups_ * g_.kh * g_.kw;  // taps are (g * kh + ky) * kw + kx
  for (int64_t b = 0; b < nkb_; ++b) {
    for (int m = 1; m < 16; ++m) {
      int32_t count = 0;
      for (size_t t = 0; t < all.size(); ++t) {
        if (mask[t] != m || all[t] / block_taps != b) continue;
        tile_tap_.push_back(all[t]);
        for (int o = 0; o < 4; ++o)
          if (m >> o & 1) tile_w_.push_back(blocks[4 * t + o]);
        ++count;
      }
      if (count) tile_runs_.insert(tile_runs_.end(), {int32_t(m), count});
    }
    end_segment(q * nkb_ + b);
  }
}

void Int8Conv2d::end_segment(int64_t s) {
  tile_at_[s + 1] = int64_t(tile_tap_.size());
  tile_wat_[s + 1] = int64_t(tile_w_.size());
  tile_rat_[s + 1] = int64_t(tile_runs_.size() / 2);
}

int64_t Int8Conv2d::bytes() const {
  return int64_t(sizeof(int64_t) * (row_ptr_.size() + dense_at_.size()) +
                 sizeof(int32_t) * (tap_.size() + w4_.size() + dense_tap_.size() + dense_w_.size()) +
                 sizeof(int64_t) * (tile_at_.size() + tile_wat_.size() + tile_rat_.size()) +
                 sizeof(int32_t) * (tile_tap_.size() + tile_w_.size() + tile_runs_.size()) + mode_.size() +
                 sizeof(Requant) * rq_.size());
}

int64_t Int8Conv2d::dense_groups() const {
  int64_t n = 0;
  for (uint8_t m : mode_) n += m == kDense;
  return n;
}

int64_t Int8Conv2d::tiled_groups() const {
  int64_t n = 0;
  for (uint8_t m : mode_) n += m == kTiled;
  return n;
}

Act8Layout Int8Conv2d::in_layout(int64_t H, int64_t W) const {
  return act8_layout(g_.in_channels, H, W, g_.ph, g_.pw, g_.sh, g_.sw);
}

std::pair<int64_t, int64_t> Int8Conv2d::out_size(int64_t H, int64_t W) const {
  const int64_t OH = (H + 2 * g_.ph - g_.dh * (g_.kh - 1) - 1) / g_.sh + 1;
  const int64_t OW = (W + 2 * g_.pw - g_.dw * (g_.kw - 1) - 1) / g_.sw + 1;
  if (H + 2 * g_.ph < g_.dh * (g_.kh - 1) + 1 || W + 2 * g_.pw < g_.dw * (g_.kw - 1) + 1)
    throw ShapeError("Int8Conv2d: input " + S(H) + "x" + S(W) + " is smaller than the kernel");
  if (!out_.pool_k) return {OH, OW};
  if (OH < out_.pool_k || OW < out_.pool_k)
    throw ShapeError("Int8Conv2d: output " + S(OH) + "x" + S(OW) + " is smaller than the pool window");
  return {(OH - out_.pool_k) / out_.pool_s + 1, (OW - out_.pool_k) / out_.pool_s + 1};
}

Act8Layout Int8Conv2d::out_layout(int64_t H, int64_t W) const {
  const auto [oh, ow] = out_size(H, W);
  return act8_layout(g_.out_channels, oh, ow, out_.oph, out_.opw, 1, 1);
}

std::shared_ptr<const Int8Conv2d::Plan> Int8Conv2d::plan_for(int64_t H, int64_t W) const {
  {
    std::lock_guard<std::mutex> lk(mu_);
    auto it = cache_.find({H, W});
    if (it != cache_.end()) return it->second;
  }
  auto p = std::make_shared<Plan>();
  p->in = in_layout(H, W);
  std::tie(p->OHf, p->OWf) = out_size(H, W);
  p->OH = (H + 2 * g_.ph - g_.dh * (g_.kh - 1) - 1) / g_.sh + 1;
  p->OW = (W + 2 * g_.pw - g_.dw * (g_.kw - 1) - 1) / g_.sw + 1;
  if (out_.u8) p->out = out_layout(H, W);
  const Act8Layout& L = p->in;
  auto tap_offset = [&](int64_t t) {
    const int64_t g = t / (g_.kh * g_.kw), ky = (t / g_.kw) % g_.kh, kx = t % g_.kw;
    const int64_t y = ky * g_.dh, x = kx * g_.dw;
    const int64_t pix = g * L.group + ((y % g_.sh) * g_.sw + x % g_.sw) * L.plane + (y / g_.sh) * L.Wq + x / g_.sw;
    return int32_t(4 * pix);
  };
  p->off.resize(tap_.size());
  for (size_t j = 0; j < tap_.size(); ++j) p->off[j] = tap_offset(tap_[j]);
  p->doff.resize(dense_tap_.size());
  for (size_t j = 0; j < dense_tap_.size(); ++j) p->doff[j] = tap_offset(dense_tap_[j]);
  p->toff.resize(tile_tap_.size());
  for (size_t j = 0; j < tile_tap_.size(); ++j) p->toff[j] = tap_offset(tile_tap_[j]);

  // Final rows per task: about kTaskPositions conv positions (kOverlapTaskPositions under an
  // overlapping pool, where every row block also computes the pk - ps conv rows its neighbour does),
  // fewer when the channel-group blocks alone give the threads under 4 tasks each; spread evenly
  // over the row blocks.
  const int64_t ps = out_.pool_k ? out_.pool_s : 1, pk = out_.pool_k ? out_.pool_k : 1;
  const int64_t positions = pk > ps ? kOverlapTaskPositions : kTaskPositions;
  int64_t rows = std::max<int64_t>(1, positions / (L.Wq * ps));
  const int64_t threads = ThreadPool::instance().num_threads();
  const int64_t qblocks = cdiv(ocp_ / 4, kGroupsPerTask);
  if (qblocks < 4 * threads) rows = std::min(rows, std::max<int64_t>(1, p->OHf * qblocks / (4 * threads)));
  p->nrb = cdiv(p->OHf, std::min(rows, p->OHf));
  p->rows = cdiv(p->OHf, p->nrb);
  p->crows = (p->rows - 1) * ps + pk;
  p->acc_stride = p->crows * L.Wq + kVecPad;
  p->pool_stride = out_.pool_k ? p->rows * p->OWf + kVecPad : 0;

  std::lock_guard<std::mutex> lk(mu_);
  return cache_.emplace(std::make_pair(H, W), p).first->second;
}

void Int8Conv2d::run_untiled(int64_t q, const uint8_t* in, int64_t len, int32_t* a, const Plan& p,
                             const Int8Kernels& k) const {
  if (mode_[q] == kDense) {
    const int64_t t0 = dense_at_[q];
    k.conv_dense4(p.doff.data() + t0, dense_w_.data() + 4 * t0, dense_at_[q + 1] - t0, in, len, a, p.acc_stride);
    return;
  }
  for (int o = 0; o < 4; ++o) {
    const int64_t j = row_ptr_[4 * q + o];
    k.conv_sparse(p.off.data() + j, w4_.data() + j, row_ptr_[4 * q + o + 1] - j, in, len, a + o * p.acc_stride);
  }
}

void Int8Conv2d::forward(const uint8_t* x, int64_t N, int64_t H, int64_t W, void* y) const {
  const auto plan = plan_for(H, W);
  const Plan& p = *plan;
  const Int8Kernels& base = int8_kernels();
  const Int8Kernels& k = pairs_ && base.pairs ? *base.pairs() : base;
  const int64_t in_bytes = p.in.bytes(), ngroups = ocp_ / 4, qblocks = cdiv(ngroups, kGroupsPerTask);
  if (out_.u8)
    for (int64_t n = 0; n < N; ++n) fill_border(p.out, out_.zp, static_cast<uint8_t*>(y) + n * p.out.bytes());
  ThreadPool& pool = ThreadPool::instance();
  const int T = pool.num_threads();
  const int64_t ps = out_.pool_s, pk = out_.pool_k;
  const int64_t group_acc = 4 * p.acc_stride;
  // per slot: the task's sums, the pooled sums, and one row of window-row maxima
  const int64_t per_slot = kGroupsPerTask * group_acc + (pk ? 4 * p.pool_stride + 2 * p.in.Wq + pk + 4 * kVecPad : 0);
  std::vector<int32_t> scratch(size_t(T * per_slot));

  // Pool (on int32: the requantization is monotone, m >= 0, so it commutes with max) and
  // requantize final rows [r0, r1) of group q, whose sums start at acc.
  const float lo = out_.relu ? std::max(0.f, out_.lo) : out_.lo;  // max(max(y, 0), lo) = max(y, max(0, lo))
  auto finish = [&](int64_t n, int64_t q, int64_t r0, int64_t r1, const int32_t* acc, int32_t* pooled) {
    const int32_t* src = acc;
    int64_t sstride = p.acc_stride, srow = p.in.Wq;
    if (pk) {
      int32_t* vmax = pooled + 4 * p.pool_stride;
      for (int o = 0; o < 4; ++o)
        for (int64_t r = r0; r < r1; ++r)
          k.max_pool_row(acc + o * p.acc_stride + (r - r0) * ps * p.in.Wq, p.in.Wq, pk, ps, p.OWf, vmax,
                         pooled + o * p.pool_stride + (r - r0) * p.OWf);
      src = pooled, sstride = p.pool_stride, srow = p.OWf;
    }
    for (int64_t r = r0; r < r1; ++r) {
      const int32_t* row = src + (r - r0) * srow;
      if (out_.u8) {
        const Act8Layout& L = p.out;
        uint32_t* o = reinterpret_cast<uint32_t*>(static_cast<uint8_t*>(y) + n * L.bytes()) + q * L.group +
                      (r + L.ph) * L.Wq + L.pw;
        k.requant_u8x4(row, sstride, p.OWf, rq_.data() + 4 * q, out_.zp, out_.relu, o);
        continue;
      }
      for (int o = 0; o < 4 && 4 * q + o < g_.out_channels; ++o) {
        float* dst = static_cast<float*>(y) + ((n * g_.out_channels + 4 * q + o) * p.OHf + r) * p.OWf;
        k.requant_f32(row + o * sstride, p.OWf, rq_[4 * q + o], lo, out_.hi, dst);
      }
    }
  };

  pool.parallel_for(N * p.nrb * qblocks, T, [&](int64_t task, int slot) {
    const int64_t qb = task % qblocks, rb = (task / qblocks) % p.nrb, n = task / (qblocks * p.nrb);
    const int64_t q0 = qb * kGroupsPerTask, q1 = std::min(ngroups, q0 + kGroupsPerTask);
    const int64_t r0 = rb * p.rows, r1 = std::min(p.OHf, r0 + p.rows);
    const int64_t c0 = pk ? r0 * ps : r0, c1 = pk ? (r1 - 1) * ps + pk : r1;
    int32_t* acc = scratch.data() + slot * per_slot;
    const uint8_t* in = x + n * in_bytes + 4 * c0 * p.in.Wq;
    const int64_t npos = (c1 - c0) * p.in.Wq;
    // The fewest tiled passes, as even as possible (14 vectors as 4 + 5 + 5, not 6 + 6 + 2: a short
    // pass is a chain of dependent dot products per channel), kChunkVectors / tile passes a chunk.
    const int64_t nvec = cdiv(npos, k.width), passes = cdiv(nvec, k.tile);
    const int64_t per_chunk = std::max<int64_t>(1, kChunkVectors / k.tile), nchunks = cdiv(passes, per_chunk);
    for (int64_t c = 0, at = 0; c < nchunks; ++c) {
      const int64_t end = nvec * std::min(passes, (c + 1) * per_chunk) / passes;
      const int64_t len = std::min(npos, end * k.width) - at;
      for (int64_t b = 0; b < nkb_; ++b)
        for (int64_t q = q0; q < q1; ++q) {
          int32_t* a = acc + (q - q0) * group_acc + at;
          if (mode_[q] == kTiled) {
            const int64_t sg = q * nkb_ + b, r0 = tile_rat_[sg];
            k.conv_tiled4(p.toff.data() + tile_at_[sg], tile_w_.data() + tile_wat_[sg], tile_runs_.data() + 2 * r0,
                          tile_rat_[sg + 1] - r0, b > 0, in + 4 * at, len, a, p.acc_stride);
          } else if (b == 0) {
            run_untiled(q, in + 4 * at, len, a, p, k);
          }
        }
      at += len;
    }
    for (int64_t q = q0; q < q1; ++q)
      finish(n, q, r0, r1, acc + (q - q0) * group_acc, acc + kGroupsPerTask * group_acc);
  });
}

}  // namespace deepcomp
