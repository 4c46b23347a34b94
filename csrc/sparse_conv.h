// Direct sparse 2-D convolution (Park et al., ICLR 2017): one CSR row per output channel, each
// nonzero's column turned into an offset into a padded ("phase-split" for stride > 1) copy of the
// input, so every nonzero is an AXPY over contiguous memory and there is no im2col buffer.
#pragma once
#include <cstdint>
#include <memory>
#include <mutex>
#include <utility>

#include "conv_plan.h"
#include "sparse_linear.h"
#include "winograd.h"

namespace deepcomp {

class SparseConv2d {
 public:
  SparseConv2d(const CsrInput& in, const ConvGeometry& g);

  // Output spatial size for an input of H x W (ShapeError if empty).
  std::pair<int64_t, int64_t> out_size(int64_t H, int64_t W) const;
  // x: [N, C, H, W]; y: [N, OC, OH, OW]. scale/shift: [OC] or null. Call without the GIL.
  void forward(const float* x, int64_t N, int64_t H, int64_t W, float* y, bool relu, const float* scale,
               const float* shift) const;

  // Which kernel runs N inputs of H x W at the current thread count and ISA: "winograd", "dense" or
  // "sparse". Plans the shape (and caches the plan) as the first forward would.
  const char* kernel_for(int64_t N, int64_t H, int64_t W) const;

  const CsrStore& store() const { return w_; }
  const ConvGeometry& geometry() const { return g_; }

 private:
  std::shared_ptr<const ConvPlan> plan_for(int64_t H, int64_t W, int threads) const;
  // The Winograd form of the layer if it runs N inputs of H x W (built on first use, for the current
  // ISA's register tile), else null.
  std::shared_ptr<const WinogradConv> winograd_for(int64_t N, int64_t H, int64_t W) const;

  ConvGeometry g_;
  CsrStore w_;
  ConvPlanCache plans_;
  mutable std::mutex wino_mutex_;
  mutable std::shared_ptr<const WinogradConv> wino_;
};

}  // namespace deepcomp
