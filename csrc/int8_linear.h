// int8 fully connected layer over 1x4 blocks along the input features: sparse (or, for dense-ish
// layers, dense) weights, uint8 input, requantized to uint8 or fp32 (see Requant).
#pragma once
#include <cstdint>
#include <vector>

#include "int8_blocks.h"
#include "int8_kernels.h"

namespace deepcomp {

class Int8Linear {
 public:
  // w: the kept blocks of the [out, in] int8 weight (taps 1; taken over); m, b: [out]. kernel:
  // 0 auto (dense when the block density reaches dense_threshold), 1 sparse, 2 dense.
  Int8Linear(Blocks8 w, const float* m, const float* b, int32_t zp_in, bool relu, bool u8_out, int32_t zp_out,
             int kernel, double dense_threshold);

  // x: [N, in] uint8; y: [N, out] uint8 or float32.
  void forward(const uint8_t* x, int64_t N, void* y) const;

  int64_t out_features() const { return out_; }
  int64_t in_features() const { return in_; }
  int64_t blocks() const { return dense_ ? out_ * G_ : int64_t(w4_.size()); }
  int64_t total_blocks() const { return out_ * G_; }
  bool dense() const { return dense_; }
  int64_t nonzeros() const { return nonzeros_; }  // int8 weights != 0
  int64_t bytes() const;                          // the weight layout and epilogue held
  bool u8_out() const { return u8_; }
  bool pairs() const { return pairs_; }  // every block is pair-bounded: runs on the path's pairs table

 private:
  void finish(const int32_t* acc, int64_t r, int64_t N, int64_t astride, void* y) const;

  int64_t out_, in_, G_;
  bool relu_, u8_, dense_ = false, pairs_ = false;
  int32_t zp_in_, zp_out_;
  int64_t nonzeros_ = 0;
  std::vector<int64_t> row_ptr_;
  std::vector<int32_t> col_, w4_;      // sparse: per row's blocks; dense: col_ = 0..G-1, w4_ = [out][G]
  std::vector<Requant> rq_;
};

}  // namespace deepcomp
