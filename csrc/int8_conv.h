// int8 layers over 1x4 blocks: the channel-blocked uint8 activation layout, quantizing fp32 into it,
// and the sparse/dense int8 direct convolution with its fused requantization (bias, ReLU, max-pool,
// uint8 or fp32 output). docs/int8.md is the description; this file is the contract.
#pragma once
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "int8_blocks.h"
#include "int8_kernels.h"

namespace deepcomp {

// One image's uint8 activation: ceil(C/4) channel groups; per group sh*sw phase planes of Hq x Wq
// pixels (the padded H+2ph x W+2pw image split by stride phase, Park et al.; at stride 1 along W a
// row's right padding is the next row's left padding, Wq = W + pw); each pixel one uint32 holding
// channels 4g..4g+3 in bytes 0..3. Padding, missing channels (C not a multiple of 4) and the slack
// after the last plane hold the zero point.
struct Act8Layout {
  int64_t C = 0, H = 0, W = 0, ph = 0, pw = 0, sh = 1, sw = 1;
  int64_t G = 0, Hq = 0, Wq = 0, plane = 0, group = 0, slack = 0;
  int64_t bytes() const { return 4 * (G * group + slack); }
};
Act8Layout act8_layout(int64_t C, int64_t H, int64_t W, int64_t ph, int64_t pw, int64_t sh, int64_t sw);

// x: [N, C, H, W] float32 -> N images in layout L, q = clamp(rint(x * inv_scale) + zp, 0, 255).
void act8_pack(const float* x, int64_t N, const Act8Layout& L, float inv_scale, int32_t zp, uint8_t* out);

// x: [N, C, H, W] float32 -> N images in layout L = act8_layout(4C, H, width, ph, 0, sh, 1) of the
// input rewritten with 4 consecutive columns of one channel per lane: channel 4c + b of the
// rewritten image at column j is column 4j + b - pw of channel c (the zero point outside). A conv of
// stride 4 along W over x equals a conv of stride 1 over it (docs/int8.md, "Columns in lanes").
void act8_pack_columns(const float* x, int64_t N, int64_t C, int64_t W, int64_t pw, const Act8Layout& L,
                       float inv_scale, int32_t zp, uint8_t* out);

struct Conv8Geometry {
  int64_t in_channels, out_channels, kh, kw, sh, sw, ph, pw, dh, dw;
};

struct Conv8Output {
  bool u8 = true;          // uint8 in the next layer's layout (stride 1, padding oph x opw), else fp32 NCHW
  int32_t zp = 0;          // uint8 output zero point
  int64_t oph = 0, opw = 0;
  int64_t pool_k = 0, pool_s = 0;  // fused max-pool (no padding, floor); 0: none
  bool relu = false;
  float lo = -INFINITY, hi = INFINITY;  // fp32 output only: a clamp after the ReLU (ReLU6, hardtanh)
};

// The fraction of w's blocks that are not pair-bounded (int8_kernels.h).
double unbounded_fraction(const Blocks8& w);
// Up to this fraction, splitting them in two for the pairs table pays (docs/int8.md); layers built
// afterwards take the new value (a negative one restores the default). Returns the previous value.
constexpr double kMaxSplitFraction = 0.45;
double int8_split_fraction();
double set_int8_split_fraction(double f);

class Int8Conv2d {
 public:
  // w: the kept blocks of the [OC, C, kh, kw] int8 weight (taps kh * kw); m, b: [OC] (see
  // Requant); zp_in: the input's zero point.
  // kernel: 0 auto (a group of 4 output channels runs grouped, on conv_dense4 over the taps any of
  // them keeps, when its kept blocks reach dense_threshold of 4 x those taps, and tiled otherwise;
  // a negative dense_threshold takes the int8 path's dense_fill),
  // 1 per channel everywhere, 2 grouped over every tap everywhere (dense), 3 tiled everywhere
  // (conv_tiled4: the 4 channels share each tap's input loads and skip the blocks they do not keep).
  Int8Conv2d(const Blocks8& w, const Conv8Geometry& g, const float* m, const float* b, int32_t zp_in,
             const Conv8Output& out, int kernel, double dense_threshold);

  Act8Layout in_layout(int64_t H, int64_t W) const;
  // Output spatial size after the fused pool (ShapeError if empty).
  std::pair<int64_t, int64_t> out_size(int64_t H, int64_t W) const;
  Act8Layout out_layout(int64_t H, int64_t W) const;  // for uint8 output
  // x: N images in in_layout(H, W); y: N images in out_layout (uint8) or [N, OC, OH, OW] floats.
  void forward(const uint8_t* x, int64_t N, int64_t H, int64_t W, void* y) const;

  int64_t blocks() const { return kept_; }  // nonzero 1x4 blocks
  // Blocks the kernels execute (grouped taps run all 4 channels' blocks, zero or not).
  int64_t executed_blocks() const { return int64_t(w4_.size() + dense_w_.size() + tile_w_.size()); }
  int64_t total_blocks() const { return ocp_ * gi_ * g_.kh * g_.kw; }
  int64_t dense_groups() const;
  int64_t tiled_groups() const;
  int64_t nonzeros() const { return nonzeros_; }  // int8 weights != 0
  int64_t bytes() const;                          // the weight layout and epilogue held
  bool pairs() const { return pairs_; }           // runs on the path's pairs table where it has one
  const Conv8Geometry& geometry() const { return g_; }
  const Conv8Output& output() const { return out_; }

 private:
  struct Plan;
  std::shared_ptr<const Plan> plan_for(int64_t H, int64_t W) const;
  // Group q over len positions from in when it runs grouped or per channel (sums to a, the task's
  // rows of that group).
  void run_untiled(int64_t q, const uint8_t* in, int64_t len, int32_t* a, const Plan& p, const Int8Kernels& k) const;

  Conv8Geometry g_;
  Conv8Output out_;
  int64_t gi_ = 0, ocp_ = 0;
  // Sparse blocks, per output channel: block j's tap is tap_[j] = (g * kh + ky) * kw + kx.
  std::vector<int64_t> row_ptr_;
  std::vector<int32_t> tap_, w4_;
  int64_t kept_ = 0, nonzeros_ = 0;
  // Every block held is pair-bounded (none was over the bound, or the constructor split those that
  // were: on a path with a pairs table, when at most int8_split_fraction() of them are), so the
  // path's pairs table (Int8Kernels::pairs) runs this layer.
  bool pairs_ = false;
  enum Mode : uint8_t { kPerChannel, kDense, kTiled };
  // split: each tap with blocks over the pair bound also gets a tap of their rests (split_taps).
  void add_dense(const Blocks8& w, int64_t q, const std::vector<int32_t>& taps, bool split);
  void add_tiled(const Blocks8& w, int64_t q, const std::vector<int32_t>& taps, bool split);
  void end_segment(int64_t s);
  std::vector<uint8_t> mode_;        // per group of 4 output channels
  std::vector<int32_t> dense_tap_;   // grouped taps, group after group
  std::vector<int32_t> dense_w_;     // their [tap][4] blocks
  std::vector<int64_t> dense_at_;    // group q's taps are dense_tap_[dense_at_[q] .. dense_at_[q + 1])
  // Tiled taps in segments: segment q * nkb_ + b holds group q's taps over the channel groups of
  // K-block b, in runs of one mask each (an empty segment for the groups that do not run tiled).
  int64_t kb_groups_ = 1, nkb_ = 1;  // channel groups per K-block, K-blocks
  std::vector<int32_t> tile_tap_;    // tiled taps, in run order, segment after segment
  std::vector<int32_t> tile_w_;      // one block per channel of the tap's run mask
  std::vector<int32_t> tile_runs_;   // (mask, length) pairs
  std::vector<int64_t> tile_at_, tile_wat_, tile_rat_;  // segment s's first tap, block, run
  std::vector<Requant> rq_;       // [ocp_]
  mutable std::mutex mu_;
  mutable std::map<std::pair<int64_t, int64_t>, std::shared_ptr<const Plan>> cache_;
};

}  // namespace deepcomp
