// Direct sparse 2-D convolution (Park et al., ICLR 2017): one CSR row per output channel, each
// nonzero's column turned into an offset into a padded ("phase-split" for stride > 1) copy of the
// input, so every nonzero is an AXPY over contiguous memory and there is no im2col buffer.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "sparse_linear.h"

namespace deepcomp {

struct ConvGeometry {
  int64_t in_channels, out_channels, kh, kw, sh, sw, ph, pw, dh, dw, groups;
};

// Bytes of the per-band input buffer the plans aim for (tests lower it to exercise banding).
int64_t conv_band_budget();
int64_t set_conv_band_budget(int64_t bytes);  // returns the previous value
// Layers (groups == 1) whose effective density reaches this run on the dense kernel: 0 sends all of
// them there, anything above 1 none.
double conv_dense_threshold();
double set_conv_dense_threshold(double threshold);  // returns the previous value

class SparseConv2d {
 public:
  SparseConv2d(const CsrInput& in, const ConvGeometry& g);

  // Output spatial size for an input of H x W (ShapeError if empty).
  std::pair<int64_t, int64_t> out_size(int64_t H, int64_t W) const;
  // x: [N, C, H, W]; y: [N, OC, OH, OW]. scale/shift: [OC] or null. Call without the GIL.
  void forward(const float* x, int64_t N, int64_t H, int64_t W, float* y, bool relu, const float* scale,
               const float* shift) const;

  // Which kernel runs an H x W input at the current thread count and ISA: true for the dense one.
  // Plans the shape (and caches the plan) as the first forward would.
  bool dense_for(int64_t H, int64_t W) const;

  const CsrStore& store() const { return w_; }
  const ConvGeometry& geometry() const { return g_; }

 private:
  struct ShapePlan;
  std::shared_ptr<const ShapePlan> plan_for(int64_t H, int64_t W, int threads) const;

  ConvGeometry g_;
  CsrStore w_;
  mutable std::mutex cache_mutex_;
  mutable std::map<std::pair<int64_t, int64_t>, std::shared_ptr<const ShapePlan>> cache_;
};

}  // namespace deepcomp
