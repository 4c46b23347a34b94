// Depthwise convolution: geometry checks, phase planes, threads (see depthwise.h).
#include "depthwise.h"

#include <algorithm>
#include <string>

#include "common.h"
#include "dispatch.h"
#include "threadpool.h"

namespace deepcomp {

namespace {

// The row kernels of the ISA the sparse kernels use (deepcomp._native.isa(), DEEPCOMP_ISA).
const DepthwiseKernels& depthwise_kernels() {
#if DEEPCOMP_X86
  const std::string isa = isa_name();
  if (isa == "avx512") return *depthwise_kernels_avx512();
  if (isa == "avx2") return *depthwise_kernels_avx2();
#endif
  return *depthwise_kernels_scalar();
}

std::string S(int64_t v) { return std::to_string(v); }

}  // namespace

DepthwiseConv2d::DepthwiseConv2d(std::vector<float> w, std::vector<float> bias, const DepthwiseGeometry& g)
    : w_(std::move(w)), bias_(std::move(bias)), g_(g) {
  if (g.channels < 1 || g.multiplier < 1 || g.kh < 1 || g.kw < 1 || g.sh < 1 || g.sw < 1 || g.dh < 1 ||
      g.dw < 1 || g.ph < 0 || g.pw < 0)
    throw ShapeError("DepthwiseConv2d: channels, multiplier, kernel, stride and dilation must be >= 1, "
                     "padding >= 0");
  const int64_t oc = g.channels * g.multiplier;
  if (int64_t(w_.size()) != oc * g.kh * g.kw)
    throw ShapeError("DepthwiseConv2d: weight has " + S(int64_t(w_.size())) + " values, expected " +
                     S(oc * g.kh * g.kw));
  if (!bias_.empty() && int64_t(bias_.size()) != oc)
    throw ShapeError("DepthwiseConv2d: bias has " + S(int64_t(bias_.size())) + " values, expected " + S(oc));
}

std::pair<int64_t, int64_t> DepthwiseConv2d::out_size(int64_t H, int64_t W) const {
  const int64_t oh = (H + 2 * g_.ph - g_.dh * (g_.kh - 1) - 1) / g_.sh + 1;
  const int64_t ow = (W + 2 * g_.pw - g_.dw * (g_.kw - 1) - 1) / g_.sw + 1;
  if (H < 1 || W < 1 || H + 2 * g_.ph < g_.dh * (g_.kh - 1) + 1 || W + 2 * g_.pw < g_.dw * (g_.kw - 1) + 1)
    throw ShapeError("DepthwiseConv2d: a " + S(H) + "x" + S(W) + " input is smaller than the kernel");
  return {oh, ow};
}

void DepthwiseConv2d::forward(const float* x, int64_t N, int64_t H, int64_t W, float* y, bool clamp_lo, float lo,
                              bool clamp_hi, float hi) const {
  const auto [OH, OW] = out_size(H, W);
  const DepthwiseKernels& k = depthwise_kernels();
  const int64_t C = g_.channels, M = g_.multiplier, sw = g_.sw;
  const int64_t Hp = H + 2 * g_.ph, Wp = W + 2 * g_.pw;
  // Phase rows hold every output vector's loads: OW rounded up to whole vectors, plus the widest
  // tap shift, so the kernel never reads past a row (the slack is zero).
  const int64_t OWr = (OW + k.width - 1) / k.width * k.width;
  const int64_t Wq = OWr + (g_.kw - 1) * g_.dw / sw + 1;
  std::vector<int64_t> off, offx;  // tap (ky, kx) reads phase (kx*dw) % sw, row ky*dh, column (kx*dw) / sw
  for (int64_t kx = 0; kx < g_.kw; ++kx) offx.push_back((kx * g_.dw % sw) * Hp * Wq + kx * g_.dw / sw);
  for (int64_t ky = 0; ky < g_.kh; ++ky)
    for (int64_t kx = 0; kx < g_.kw; ++kx) off.push_back(ky * g_.dh * Wq + offx[kx]);
  const bool pairs = g_.sh == 1 && g_.dh == 1;
  const int slots = std::max(1, ThreadPool::instance().num_threads());
  // zeroed once: every fill of this call writes the same input positions, so the padding stays zero
  std::vector<std::vector<float>> scratch(slots, std::vector<float>(size_t(sw * Hp * Wq)));
  ThreadPool::instance().parallel_for(N * C, slots, [&](int64_t task, int slot) {
    const int64_t n = task / C, c = task % C;
    float* ph = scratch[slot].data();
    k.fill(x + (n * C + c) * H * W, H, W, g_.ph, g_.pw, sw, Hp, Wq, ph, /*padding_zero=*/true);
    for (int64_t m = 0; m < M; ++m) {
      const int64_t oc = c * M + m;
      DepthwisePlane plane{ph, Wq, g_.sh, w_.data() + oc * g_.kh * g_.kw, off.data(), int64_t(off.size()),
                           pairs, g_.kh, g_.kw, offx.data(), bias_.empty() ? 0.f : bias_[oc], lo, hi, clamp_lo,
                           clamp_hi, y + (n * C * M + oc) * OH * OW, OH, OW};
      k.plane(plane);
    }
  });
}

}  // namespace deepcomp
