// Depthwise 2-D convolution (groups == in_channels; out_channels = multiplier * in_channels) on
// dense weights, NCHW float32: the convolutions of MobileNet, EfficientNet, MnasNet, ShuffleNet,
// RegNet-Y and ConvNeXt. They hold few weights, so deepcomp keeps them dense; the kernel's work is
// memory traffic, not arithmetic.
//
// Each input plane is copied once, padded, into `sw` column-phase planes (phase p holds padded
// columns p, p + sw, ...), so every tap of every stride reads consecutive floats: an output row is
// a few SIMD vectors, each the sum over the taps of a broadcast weight times a contiguous load. The
// epilogue adds the bias and clamps to [lo, hi] (ReLU: [0, inf), ReLU6: [0, 6]); a BatchNorm is
// folded into the weights and bias by the caller.
//
// Where the ISA has it (AVX2), most layers take the channel-interleaved path instead: 8 channels of
// an image are transposed into one padded [Hp][Wp][8] buffer, so a vector is one pixel of 8
// channels and a tap's 8 weights are one vector; the output pixels of a row are independent FMA
// chains at any stride or dilation, no lane is left empty at a row's end, and a task is 8 planes.
// Built for narrow planes (a 7-wide row is one vector, 7 of its lanes used, one dependent chain),
// it is faster at every stride-1 width too; strided layers with wide outputs keep the phase planes
// (depthwise_interleaved).
#pragma once
#include <cstdint>
#include <utility>
#include <vector>

namespace deepcomp {

struct DepthwiseGeometry {
  int64_t channels = 0, multiplier = 1, kh = 1, kw = 1, sh = 1, sw = 1, ph = 0, pw = 0, dh = 1, dw = 1;
};

// One output plane for the per-ISA row kernels (isa/depthwise_impl.h).
struct DepthwisePlane {
  const float* phases;  // [sw][Hp][Wq]
  int64_t Wq, sh;
  const float* w;        // [taps]
  const int64_t* off;    // [taps]: where tap t reads, from the start of output row 0's input row
  int64_t taps;
  // stride 1, dilation 1 rows (pairs of output rows share their input rows' loads): kh, kw and
  // offx[kx], where column tap kx reads within a row
  bool pairs;
  int64_t kh, kw;
  const int64_t* offx;
  float bias, lo, hi;
  bool clamp_lo, clamp_hi;
  float* y;  // [OH][OW]
  int64_t OH, OW;
};

// Channels per group of the channel-interleaved path (the AVX2 vector).
constexpr int kInterleaveLanes = 8;

// One group of kInterleaveLanes channels of one image for the channel-interleaved kernel.
struct DepthwiseGroup {
  const float* x;      // the group's first input plane [H][W]; plane i at x + i * H * W
  const float* x_end;  // the end of the whole input (reads of a partial block may not pass it)
  int lanes;       // channels in the group (1..8); the other lanes compute zeros and are not stored
  int64_t H, W, ph, pw, Hp, Wp;
  float* xs;            // [Hp][Wp][8], 32-byte aligned, zero outside the input (the fills leave it so)
  const int32_t* xpos;  // [H * W]: where input position iy * W + ix goes in xs, ((iy + ph) * Wp + ix + pw) * 8
  float* ys;           // [OH * OW rounded up to 8][8], 32-byte aligned
  const float* w;      // [M][kh * kw][8]: tap t's weights of the group's channels, per multiplier m
  const float* bias;   // [M][8]
  int64_t M, kh, kw, sh, sw, dh, dw;
  float lo, hi;
  bool clamp_lo, clamp_hi;
  float* y;  // output plane of lane 0, multiplier 0; lane i, multiplier m at y + (i * M + m) * OH * OW
  int64_t OH, OW;
};

struct DepthwiseKernels {
  const char* name;
  int width;  // floats per vector: the phase planes' rows are padded to a multiple of it
  void (*plane)(const DepthwisePlane&);
  // The sw phase planes [sw][Hp][Wq] of one H x W input plane padded by (ph, pw): phase p, row r,
  // column j holds padded column j*sw + p of padded row r (zero outside the input). With
  // padding_zero the positions outside the input already hold zeros (a zeroed buffer only ever
  // filled for this geometry) and only the input's values are written.
  void (*fill)(const float* x, int64_t H, int64_t W, int64_t ph, int64_t pw, int64_t sw, int64_t Hp, int64_t Wq,
               float* out, bool padding_zero);
  // The channel-interleaved kernel of one group (nullptr: this ISA has none, every plane runs `plane`).
  void (*group)(const DepthwiseGroup&);
};

// Whether a layer of this stride with outputs OW wide takes the channel-interleaved path (where the
// ISA has it): by default stride 1 at any width, other strides up to kInterleavedStridedWidth.
constexpr int64_t kInterleavedStridedWidth = 28;
bool depthwise_interleaved(int64_t sh, int64_t sw, int64_t OW);
// Debug/testing: outputs at most this wide take it whatever the stride (0: never; negative: the
// default rule); returns the previous value (-1 for the default rule).
int64_t set_depthwise_interleaved_width(int64_t width);

const DepthwiseKernels* depthwise_kernels_scalar();
#if DEEPCOMP_X86
const DepthwiseKernels* depthwise_kernels_avx2();
const DepthwiseKernels* depthwise_kernels_avx512();
#endif

class DepthwiseConv2d {
 public:
  // w: [channels * multiplier][kh * kw]; bias: channels * multiplier floats or empty.
  DepthwiseConv2d(std::vector<float> w, std::vector<float> bias, const DepthwiseGeometry& g);

  // Output size for an H x W input; ShapeError if the kernel does not fit.
  std::pair<int64_t, int64_t> out_size(int64_t H, int64_t W) const;
  // x [N][channels][H][W] -> y [N][channels * multiplier][OH][OW], clamped to [lo, hi] where set.
  void forward(const float* x, int64_t N, int64_t H, int64_t W, float* y, bool clamp_lo, float lo, bool clamp_hi,
               float hi) const;
  const DepthwiseGeometry& geometry() const { return g_; }
  // Which path forward takes for an H x W input: "depthwise_interleaved" or "depthwise".
  const char* kernel_for(int64_t H, int64_t W) const;

 private:
  void forward_interleaved(const float* x, int64_t N, int64_t H, int64_t W, float* y, bool clamp_lo, float lo,
                           bool clamp_hi, float hi) const;

  std::vector<float> w_, bias_;
  // w_ and bias_ per channel group for the interleaved path: [groups][M][taps][8], [groups][M][8],
  // zero in the lanes past the last channel
  std::vector<float> wi_, bi_;
  DepthwiseGeometry g_;
};

}  // namespace deepcomp
