// The int8 micro-kernels (sparse and dense direct convolution over 1x4 blocks, sparse and dense
// linear, requantization) and their run-time ISA choice. docs/int8.md describes the layouts.
//
// Activations are uint8, weights int8, products summed in int32 exactly: four consecutive input
// channels of one pixel are one 32-bit lane (a0..a3 in bytes 0..3), a weight block is the four
// int8 weights of those channels at one tap (w0..w3 in one int32), and a lane's step is
// acc += a0*w0 + a1*w1 + a2*w2 + a3*w3 (vpdpbusd on VNNI, an exact int16 emulation on AVX2).
//
// One source (isa/int8_impl.h) is compiled per ISA: avx512vnni (zmm vpdpbusd), avxvnni (ymm
// vpdpbusd, VEX), avx2 (vpmaddwd on the even and odd bytes; its conv kernels also come as avx2-pairs,
// vpmaddubsw for pair-bounded blocks) and scalar (this build's baseline). The
// table is chosen once: DEEPCOMP_INT8_ISA names one; otherwise DEEPCOMP_ISA caps it (scalar ->
// scalar, avx2 -> the best 256-bit path) and the best supported path wins.
#pragma once
#include <cstdint>
#include <string>

namespace deepcomp {

// Requantization of one output channel: y = float(acc - comp) * m + b (a float32 multiply, then a
// float32 add, never fused), y = max(y, 0) with relu; uint8 output q = rint(clamp(y, -zp, 255 - zp))
// + zp (round half to even); fp32 output is y itself.
struct Requant {
  int32_t comp = 0;
  float m = 0.f, b = 0.f;
};

struct Int8Kernels {
  const char* name;
  int width;        // int32 lanes per vector
  int small_batch;  // linear_sparseN's np for batches up to this size (a narrower vector), else a
                    // multiple of width
  int tile;   // vectors per conv_tiled4 pass (at most; it splits n as evenly as it can)
  // Auto's rule: a group of 4 output channels runs conv_dense4 (zeros included) instead of
  // conv_tiled4 once its kept blocks fill this fraction of 4 x the taps any of them keeps.
  double dense_fill;

  // acc[i] = sum_j dot4(in + off[j] + 4*i, w4[j]) for i in [0, n rounded up to width): one output
  // channel over n consecutive output positions. in must be readable that far past every offset.
  void (*conv_sparse)(const int32_t* off, const int32_t* w4, int64_t nnz, const uint8_t* in, int64_t n,
                      int32_t* acc);
  // The same for four output channels over every block: w4x4[k*4 + o] is channel o's block at
  // offset off[k]; channel o's sums go to acc + o*acc_stride.
  void (*conv_dense4)(const int32_t* off, const int32_t* w4x4, int64_t K, const uint8_t* in, int64_t n,
                      int32_t* acc, int64_t acc_stride);
  // Four channels sharing their input loads over the taps any of them keeps, in runs of taps kept by
  // the same channels: runs[2r] is run r's mask (bit o: channel o keeps those taps), runs[2r + 1]
  // its length. Each tap has an offset (off, in run order) and one block per channel of its mask
  // (w, in channel order); channel o's sums go to acc + o*acc_stride (added to what is there with add).
  void (*conv_tiled4)(const int32_t* off, const int32_t* w, const int32_t* runs, int64_t nruns, bool add,
                      const uint8_t* in, int64_t n, int32_t* acc, int64_t acc_stride);
  // Four channels' acc rows (acc + o*acc_stride) -> n uint8 lanes {q0, q1, q2, q3} (one uint32 per
  // position). zp: the output zero point.
  void (*requant_u8x4)(const int32_t* acc, int64_t acc_stride, int64_t n, const Requant* rq, int32_t zp,
                       bool relu, uint32_t* out);
  // Max-pool one output row of one channel: out[c] = max over i, j < pk of acc[i*stride + c*ps + j]
  // for c < n. vtmp: scratch of at least 2*n + pk + 3*16 ints (the window rows' maxima).
  void (*max_pool_row)(const int32_t* acc, int64_t stride, int64_t pk, int64_t ps, int64_t n, int32_t* vtmp,
                       int32_t* out);
  // Quantize four fp32 rows (channels 4g..4g+3 of one image row; a missing channel is a row of
  // zeros) into n lanes: byte c of lanes[i] = clamp(rint(rows[c][i] * inv_scale), -zp, 255 - zp) + zp
  // (NaN -> 0).
  void (*pack_row4)(const float* const* rows, int64_t n, float inv_scale, int32_t zp, uint32_t* lanes);
  // Quantize n consecutive fp32 values into n bytes, as pack_row4 quantizes each (a lane then holds
  // 4 consecutive columns of one channel: act8_pack_columns).
  void (*quantize_bytes)(const float* x, int64_t n, float inv_scale, int32_t zp, uint8_t* out);
  // One channel's acc row -> n floats, each y clamped to [lo, hi] (max, then min: ReLU is lo = 0).
  void (*requant_f32)(const int32_t* acc, int64_t n, const Requant& rq, float lo, float hi, float* out);
  // Linear, batch 1: acc = sum_j dot4(x + 4*col[j], w4[j]) over one row's nnz blocks.
  int32_t (*linear_sparse1)(const int32_t* col, const int32_t* w4, int64_t nnz, const uint8_t* x);
  // Linear, batch 1, dense row: sum over G groups of dot4(x + 4g, w4[g]).
  int32_t (*linear_dense1)(const int32_t* w4, int64_t G, const uint8_t* x);
  // Linear, batch lanes: xT is [groups][np][4] bytes (np small_batch or a multiple of width); acc[i] = sum_j
  // dot4(xT + 4*(col[j]*np + i), w4[j]) for i in [0, np).
  void (*linear_sparseN)(const int32_t* col, const int32_t* w4, int64_t nnz, const uint8_t* xT, int64_t np,
                         int32_t* acc);
  // A table whose conv kernels are faster on this path but exact only for pair-bounded blocks (the
  // AVX2 path's vpmaddubsw table), or null. Int8Conv2d splits blocks to use it; Int8Linear uses it
  // when all its blocks are bounded.
  const Int8Kernels* (*pairs)();
};

// vpmaddubsw sums two u8 x s8 products in int16 with saturation: exact while the pair's weights have
// |w0| + |w1| <= 128 (255 * 128 = 32640 <= 32767).
constexpr int kPairLimit = 128;
inline int pair_sum(int32_t w, int pair) {
  const int a = int8_t(uint32_t(w) >> (16 * pair)), b = int8_t(uint32_t(w) >> (16 * pair + 8));
  return (a < 0 ? -a : a) + (b < 0 ? -b : b);
}
inline bool pair_bounded(int32_t w) { return pair_sum(w, 0) <= kPairLimit && pair_sum(w, 1) <= kPairLimit; }

const Int8Kernels& int8_kernels();
std::string int8_isa_name();
// Switch tables (tests and benchmarks); ShapeError for an unknown or unsupported name.
void set_int8_isa(const std::string& name);
// The paths this CPU (and build) can run, best first.
std::string int8_isas_supported();

// Scalar reference semantics shared by every path (exactness is defined by these).
inline int32_t dot4(uint32_t a, int32_t w) {
  int32_t s = 0;
  for (int i = 0; i < 4; ++i)
    s += int32_t((a >> (8 * i)) & 0xFF) * int32_t(int8_t(uint32_t(w) >> (8 * i)));
  return s;
}

const Int8Kernels* int8_kernels_scalar();
#if DEEPCOMP_X86
const Int8Kernels* int8_kernels_avx2();
const Int8Kernels* int8_kernels_avx2_pairs();
const Int8Kernels* int8_kernels_avxvnni();
const Int8Kernels* int8_kernels_avx512vnni();
#endif

}  // namespace deepcomp
