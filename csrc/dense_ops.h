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
// One plane of max_pool2d with AVX2 (isa/pool_avx2.cpp, x86 builds only) for stride-2, 2- or 3-wide
// windows without padding or dilation; false (nothing written) for any other window. It may read
// past the plane up to `end` (the end of the whole input).
bool max_pool_plane_avx2(const float* x, const float* end, int64_t H, int64_t W, const Pool2d& p, float* y,
                         int64_t OH, int64_t OW);
void avg_pool2d(const float* x, int64_t NC, int64_t H, int64_t W, const Pool2d& p, float* y, int64_t OH, int64_t OW);
void adaptive_avg_pool2d(const float* x, int64_t NC, int64_t H, int64_t W, float* y, int64_t OH, int64_t OW);
void relu_inplace(float* x, int64_t n);

}  // namespace deepcomp
