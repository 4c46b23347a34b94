// Dense helpers the deploy-side executor needs without torch: pooling and in-place ReLU, with
// torch.nn.functional's semantics (output sizes, ceil_mode, padding, count_include_pad, NaN).
#pragma once
#include <cstdint>

namespace deepcomp {

struct Pool2d {
  int64_t kh, kw, sh, sw, ph, pw, dh = 1, dw = 1;
  bool ceil_mode = false;
  bool count_include_pad = true;
};

// Output size along one dimension, as torch's pooling_output_shape. ShapeError if invalid.
int64_t pool_out_size(int64_t in, int64_t k, int64_t s, int64_t pad, int64_t d, bool ceil_mode);
void check_pool(const Pool2d& p, int64_t H, int64_t W, const char* what);

void max_pool2d(const float* x, int64_t NC, int64_t H, int64_t W, const Pool2d& p, float* y, int64_t OH, int64_t OW);
void avg_pool2d(const float* x, int64_t NC, int64_t H, int64_t W, const Pool2d& p, float* y, int64_t OH, int64_t OW);
void adaptive_avg_pool2d(const float* x, int64_t NC, int64_t H, int64_t W, float* y, int64_t OH, int64_t OW);
void relu_inplace(float* x, int64_t n);

}  // namespace deepcomp
