// Depthwise convolution: geometry checks, phase planes, threads (see depthwise.h).
#include "depthwise.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "common.h"
#include "dispatch.h"
#include "threadpool.h"

namespace deepcomp {

namespace {

// The row kernels of the ISA the sparse kernels use (deepcomp._native.isa(), DEEPCOMP_ISA). AVX-512
// has no channel-interleaved kernel of its own, so it borrows AVX2's (8 channels per vector) beside
// its own plane kernels: the plane kernels alone lose to PyTorch on most batch-8 shapes
// (docs/kernels.md, "On AVX-512").
const DepthwiseKernels& depthwise_kernels() {
#if DEEPCOMP_X86
  const std::string isa = isa_name();
  if (isa == "avx512") {
    static const DepthwiseKernels k = [] {
      DepthwiseKernels t = *depthwise_kernels_avx512();
      t.group = depthwise_kernels_avx2()->group;
      return t;
    }();
    return k;
  }
  if (isa == "avx2") return *depthwise_kernels_avx2();
#endif
  return *depthwise_kernels_scalar();
}

std::string S(int64_t v) { return std::to_string(v); }

std::atomic<int64_t> g_interleaved_width{-1};  // negative: the default rule

}  // namespace

// The default rule (docs/kernels.md, "Depthwise"): stride 1 at every width; strided layers up to
// 28-wide outputs, past which transposing the input (4x the output's pixels at stride 2) costs
// more than the phase planes save.
bool depthwise_interleaved(int64_t sh, int64_t sw, int64_t OW) {
  const int64_t v = g_interleaved_width.load(std::memory_order_relaxed);
  if (v >= 0) return OW <= v;
  return (sh == 1 && sw == 1) || OW <= kInterleavedStridedWidth;
}

int64_t set_depthwise_interleaved_width(int64_t width) {
  return g_interleaved_width.exchange(width < 0 ? -1 : width, std::memory_order_relaxed);
}

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
  constexpr int L = kInterleaveLanes;
  const int64_t C = g.channels, M = g.multiplier, taps = g.kh * g.kw, groups = (C + L - 1) / L;
  wi_.assign(size_t(groups * M * taps * L), 0.f);
  bi_.assign(size_t(groups * M * L), 0.f);
  for (int64_t c = 0; c < C; ++c)
    for (int64_t m = 0; m < M; ++m) {
      const int64_t gm = c / L * M + m, oc = c * M + m;
      for (int64_t t = 0; t < taps; ++t) wi_[size_t((gm * taps + t) * L + c % L)] = w_[size_t(oc * taps + t)];
      if (!bias_.empty()) bi_[size_t(gm * L + c % L)] = bias_[size_t(oc)];
    }
}

const char* DepthwiseConv2d::kernel_for(int64_t H, int64_t W) const {
  const int64_t OW = out_size(H, W).second;
  return depthwise_kernels().group && depthwise_interleaved(g_.sh, g_.sw, OW) ? "depthwise_interleaved"
                                                                                : "depthwise";
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
  if (k.group && depthwise_interleaved(g_.sh, g_.sw, OW))
    return forward_interleaved(x, N, H, W, y, clamp_lo, lo, clamp_hi, hi);
  const int64_t C = g_.channels, M = g_.multiplier, sw = g_.sw;
  const int64_t Hp = H + 2 * g_.ph;
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

// Tasks are (image, group of 8 channels); each transposes its group into the slot's scratch once
// and runs every multiplier on it.
void DepthwiseConv2d::forward_interleaved(const float* x, int64_t N, int64_t H, int64_t W, float* y, bool clamp_lo,
                                          float lo, bool clamp_hi, float hi) const {
  constexpr int L = kInterleaveLanes;
  const auto [OH, OW] = out_size(H, W);
  const DepthwiseKernels& k = depthwise_kernels();
  const int64_t C = g_.channels, M = g_.multiplier, taps = g_.kh * g_.kw, groups = (C + L - 1) / L;
  const int64_t Hp = H + 2 * g_.ph, Wp = W + 2 * g_.pw;
  const size_t xs_size = size_t(Hp * Wp * L), ys_size = size_t((OH * OW + L - 1) / L * L * L);
  std::vector<int32_t> xpos(size_t(H * W));
  for (int64_t iy = 0; iy < H; ++iy)
    for (int64_t ix = 0; ix < W; ++ix) xpos[size_t(iy * W + ix)] = int32_t(((iy + g_.ph) * Wp + ix + g_.pw) * L);
  const int slots = std::max(1, ThreadPool::instance().num_threads());
  // A slot's scratch is made at its first task, only its padding and ys's last block zeroed (on a
  // large plane, zeroing all of it would cost as much as a few groups): every fill of this call
  // writes the same pixels, so the padding stays zero; the rest is written before it is read.
  std::vector<std::unique_ptr<float[]>> scratch(static_cast<size_t>(slots));
  auto make = [&] {
    float* buf = new float[xs_size + ys_size + 8];
    float* xs = align_up(buf, 32);
    for (int64_t r = 0; r < Hp; ++r) {
      float* row = xs + r * Wp * L;
      if (r < g_.ph || r >= g_.ph + H) {
        std::fill(row, row + Wp * L, 0.f);
      } else {
        std::fill(row, row + g_.pw * L, 0.f);
        std::fill(row + (g_.pw + W) * L, row + Wp * L, 0.f);
      }
    }
    std::fill(xs + xs_size + OH * OW * L, xs + xs_size + ys_size, 0.f);
    return buf;
  };
  ThreadPool::instance().parallel_for(N * groups, slots, [&](int64_t task, int slot) {
    const int64_t n = task / groups, gi = task % groups, c0 = gi * L;
    if (!scratch[size_t(slot)]) scratch[size_t(slot)].reset(make());
    float* xs = align_up(scratch[size_t(slot)].get(), 32);
    DepthwiseGroup grp{x + (n * C + c0) * H * W,
                       x + N * C * H * W,
                       int(std::min<int64_t>(L, C - c0)),
                       H, W, g_.ph, g_.pw, Hp, Wp,
                       xs, xpos.data(), xs + xs_size,
                       wi_.data() + gi * M * taps * L, bi_.data() + gi * M * L,
                       M, g_.kh, g_.kw, g_.sh, g_.sw, g_.dh, g_.dw,
                       lo, hi, clamp_lo, clamp_hi,
                       y + (n * C + c0) * M * OH * OW, OH, OW};
    k.group(grp);
  });
}

}  // namespace deepcomp
