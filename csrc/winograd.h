// Winograd F(4x4, 3x3) convolution (Lavin & Gray 2016) for 3x3, stride-1, undilated, ungrouped
// layers: each 4 x 4 output tile of a channel is A^T [sum_c (G g G^T) . (B^T d B)] A, 36 products per
// input channel instead of 144, so at the paper's VGG-16 densities (about a third of the weights
// kept) it does fewer multiplications than the sparse direct kernel. The transformed weights are
// dense: the zeros of a pruned 3x3 kernel do not survive G g G^T.
//
// Layouts, for a chunk of Tc tiles (whole tile rows of the batch, tile t = (n * TY + ty) * TX + tx,
// padded to Tp, a multiple of the SIMD width):
//   U [36][Kp / mr][C][mr]   the transformed weights, output channels in register tiles of mr
//   V [36][C][Tp]            the transformed input tiles
//   M [36][Kp][Tp]           their products, M[e] = U[e] V[e], then transformed to the output
// so each of the 36 GEMMs broadcasts weights and runs its vectors along the tiles.
#pragma once
#include <cstdint>
#include <vector>

#include "conv_plan.h"

namespace deepcomp {

class WinogradConv {
 public:
  // Whether a layer of this geometry can run here (3x3, stride 1, dilation 1, groups 1).
  static bool fits(const ConvGeometry& g);
  // w: [K][C][3][3] dense; mr: the register tile of the ISA that will run it (Kernels::wino_mr).
  WinogradConv(const ConvGeometry& g, const std::vector<float>& w, int mr);

  int mr() const { return mr_; }
  int64_t bytes() const { return int64_t(u_.size() * sizeof(float)); }
  // x: [N, C, H, W]; y: [N, K, OH, OW], relu?((conv + bias) * scale + shift); bias/scale/shift: [K]
  // or null. Call without the GIL; uses the thread pool.
  void forward(const float* x, int64_t N, int64_t H, int64_t W, float* y, bool relu, const float* bias,
               const float* scale, const float* shift) const;

 private:
  ConvGeometry g_;
  int mr_;
  int64_t Kp_;  // out_channels rounded up to mr
  std::vector<float> u_;
};

// Bytes the V and M buffers of one chunk may take (tests lower it to exercise chunking).
int64_t winograd_chunk_budget();
int64_t set_winograd_chunk_budget(int64_t bytes);  // returns the previous value

}  // namespace deepcomp
