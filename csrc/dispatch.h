// Run-time choice of the SIMD microkernels (AVX-512, AVX2, portable scalar).
//
// Each ISA's kernels are the same source (isa/kernels_impl.h) compiled in its own translation unit
// with its own -m flags (isa/kernels_avx512.cpp, isa/kernels_avx2.cpp; the scalar one in
// dispatch.cpp). The table is chosen once from __builtin_cpu_supports, overridable with
// DEEPCOMP_ISA=avx512|avx2|scalar, and readable without locks.
#pragma once
#include <cstdint>
#include <string>

namespace deepcomp {

// A CSR weight matrix as the kernels read it. Exactly one of values / (cluster, codebook) is set;
// codebook always points at 256 floats (zero beyond k) so a lookup can never leave it.
struct CsrWeights {
  int64_t rows = 0, cols = 0;
  const int64_t* row_ptr = nullptr;
  const uint16_t* col16 = nullptr;  // set when cols <= 65536
  const int32_t* col32 = nullptr;   // otherwise
  const float* values = nullptr;
  const uint8_t* cluster = nullptr;
  const float* codebook = nullptr;  // 256 entries
  int k = 0;
  const float* bias = nullptr;  // linear: fused into the kernel
  bool relu = false;
};

// Where the last input-channel chunk of a convolution writes its results: output vector v of the
// pixel block (lanes with bit i of mask[v] set) goes to y + oc*ostride + voff[v], as
// relu?((acc + bias[oc]) * scale[oc] + shift[oc]) (bias/scale/shift may be null).
struct ConvEpilogue {
  float* y = nullptr;
  int64_t ostride = 0;
  const int64_t* voff = nullptr;
  const uint32_t* mask = nullptr;
  const float* bias = nullptr;
  const float* scale = nullptr;
  const float* shift = nullptr;
  bool relu = false;
  // Full, aligned output vectors go out as non-temporal stores (an output much larger than the
  // cache: no read for ownership of its lines); the caller fences before the output is read.
  bool stream = false;
};

// Register-tiled sparse conv weights of one input chunk (see conv_plan.h): output channels in groups
// of kConvRtRows; per group, idx[3*g] .. gives its start in hdr, off and w. hdr: the number of
// entries of each pattern 1 .. 2^kConvRtRows - 1 (bit r: row r of the group keeps the entry), the
// entries in that pattern order; per entry one offset and popcount(pattern) weights (rows in order).
constexpr int kConvRtRows = 2;
struct ConvRtChunk {
  const int64_t* idx = nullptr;
  const int32_t* hdr = nullptr;
  const int32_t* off = nullptr;
  const float* w = nullptr;
};
// Largest pixel block (vectors) the register-tiled kernel keeps in registers at this SIMD width:
// kConvRtRows * nv accumulators plus nv input vectors.
constexpr int conv_rt_max_nv(int width) { return width >= 16 ? 8 : (width >= 8 ? 4 : 8); }
using ConvRtFn = void (*)(const ConvRtChunk& c, const float* in, int64_t p0, int64_t g0, int64_t g1, int64_t rows,
                          float* tmp, bool accumulate, const ConvEpilogue* ep);

using ConvSparseFn = void (*)(const CsrWeights& w, const int32_t* off, const int64_t* seg, const float* in,
                             int64_t p0, int64_t oc0, int64_t oc1, float* tmp, bool accumulate,
                             const ConvEpilogue* ep);
using ConvDenseFn = void (*)(const float* wp, const int32_t* off, int64_t K, const float* in, const float* epi,
                            int64_t es, bool relu, float* out);

// Winograd GEMM tile (see Kernels::wino_gemm and wino_tail; the entry's tile is its
// vector count, or for "wino_tail" its tile count).
using WinoGemmFn = void (*)(const float* u, const float* v, int64_t C, int64_t vs, float* m, int64_t ms);

// One entry of csrc/isa/microkernels.h as instantiated for one ISA: exactly one function is set.
// tile: vectors per pixel block (conv_sparse, conv_rt, wino_gemm), output pixels (conv_dense) or
// tiles (wino_tail, which uses the wino_gemm field).
struct MicroKernel {
  const char* name;  // <dtype>_<op>_<tile>__<isa>
  const char* op;    // "conv_sparse", "conv_dense", "conv_rt", "wino_gemm" or "wino_tail"
  int tile;
  ConvSparseFn conv_sparse;
  ConvDenseFn conv_dense;
  ConvRtFn conv_rt;
  WinoGemmFn wino_gemm;
};

struct Kernels {
  const char* name;
  int width;  // floats per vector register

  // y[r] = sum_j w_j x[col_j] (+ bias, relu) for r in [r0, r1).
  void (*spmv)(const CsrWeights& w, const float* x, float* y, int64_t r0, int64_t r1);
  // xT is [cols][nv*width] (batch lanes innermost); for i < nvalid:
  // y[i*ystride + r] = sum_j w_j xT[col_j][i] (+ bias, relu), r in [r0, r1). nv in [1, 4].
  void (*spmm)(const CsrWeights& w, const float* xT, int nv, int nvalid, float* y, int64_t ystride,
               int64_t r0, int64_t r1);
  // Direct sparse convolution, one output-pixel block of nv*width floats at p0 for output channels
  // [oc0, oc1), over the nonzeros seg[oc] .. seg[oc + 1] of each row (one input chunk):
  // tmp[(oc-oc0)*nv*width + i] (+)= sum_j w_j in[off_j + p0 + i].
  // accumulate: add to tmp instead of overwriting it. ep: instead of storing to tmp, finish the
  // outputs (see ConvEpilogue). nv in [1, 12]. The weights are w.values (fp32; the caller decodes a
  // codebook), and off/values must hold 8 readable entries past the last nonzero.
  void (*conv)(const CsrWeights& w, const int32_t* off, const int64_t* seg, const float* in, int64_t p0, int nv,
               int64_t oc0, int64_t oc1, float* tmp, bool accumulate, const ConvEpilogue* ep);
  // Dense direct convolution of one block of 2*width output channels by px (1..dense_px) output
  // pixels that are consecutive in the input planes: for every tap k (K of them, weights packed
  // [k][2*width]) input in[off[k] + i] feeds pixel i. out[i*2*width + o] =
  // relu?((acc + epi[o]) * epi[es + o] + epi[2*es + o]) (bias, scale, shift of the block's channels).
  void (*conv_dense)(const float* wp, const int32_t* off, int64_t K, const float* in, int px, const float* epi,
                     int64_t es, bool relu, float* out);
  int dense_px;
  // Register-tiled sparse conv over groups [g0, g1) of kConvRtRows output channels (rows: the
  // layer's output channels, the last group may be partial), pixel block of nv (1..
  // conv_rt_max_nv(width)) vectors at p0: tmp[(oc - g0*kConvRtRows)*nv*width + i] (+)= sum over
  // the chunk's entries of w * in[off + p0 + i]; ep as for conv.
  void (*conv_rt)(const ConvRtChunk& c, const float* in, int64_t p0, int nv, int64_t g0, int64_t g1, int64_t rows,
                  float* tmp, bool accumulate, const ConvEpilogue* ep);
  // Winograd F(4x4, 3x3) and F(4x4, 5x5) (csrc/winograd.h). wino_gemm: m[r*ms + i] =
  // sum_c u[c*wino_mr + r] * v[c*vs + i] for r < wino_mr, i < nv*width, nv in [1, wino_nv].
  void (*wino_gemm)(const float* u, const float* v, int64_t C, int64_t vs, int nv, float* m, int64_t ms);
  int wino_mr, wino_nv;
  // The same product for nt in [1, wino_tail_max] tiles (i < nt) of a last tile vector (0: none).
  void (*wino_tail)(const float* u, const float* v, int64_t C, int64_t vs, int nt, float* m, int64_t ms);
  int wino_tail_max;
  // Row a < 6 of the F(4x4, 3x3) weights of one register tile, transformed per call: taps
  // d[(c*9 + tap)*wino_row_lanes + r] (kernel r < wino_mr, later lanes zero) to planes e = 6a + b
  // at u[b*es + c*wino_mr + r], b < 6; each plane needs wino_row_lanes floats of slack after its last
  // channel.
  void (*wino_weights)(const float* d, int64_t C, int a, float* u, int64_t es);
  int wino_row_lanes;
  // Input transform, for kernel size ksize (3: F(4x4, 3x3), tiles of t = 6 points; 5: F(4x4, 5x5), t = 8),
  // of tiles i < n (n <= width) of one plane x [H][W] whose t x t patches start at (iy0, ix0 + 4i),
  // zero outside it: v[e*es + i] = (B^T d B)[e], e < t * t.
  void (*wino_input)(const float* x, int64_t H, int64_t W, int64_t iy0, int64_t ix0, int n, float* v, int64_t es,
                     int ksize);
  // Output transform of tiles i < n of one output plane: m[e*es + i] (width readable floats from each
  // m + e*es) to y[oy0 + a][ox0 + 4i + b] inside [OH][OW], as relu?((A^T M A + bias) * scale + shift).
  void (*wino_output)(const float* m, int64_t es, int n, float bias, float scale, float shift, bool relu, float* y,
                      int64_t OH, int64_t OW, int64_t oy0, int64_t ox0, int ksize);
  // Every micro-kernel of this ISA (see isa/microkernels.h); conv and conv_dense dispatch to them.
  const MicroKernel* micro;
  int nmicro;
};

const Kernels& kernels();
// Name of the chosen table ("avx512", "avx2", "scalar").
std::string isa_name();
// Whether this CPU runs the named ISA's table.
bool isa_supported(const std::string& name);
// The named ISA's table (null if unknown or unsupported here), without switching to it.
const Kernels* kernels_for(const std::string& name);
// Switch tables (tests and benchmarks). Raises ShapeError for an unknown or unsupported name.
void set_isa(const std::string& name);

// Defined by the per-ISA translation units.
const Kernels* kernels_scalar();
#if DEEPCOMP_X86
const Kernels* kernels_avx2();
const Kernels* kernels_avx512();
#endif

}  // namespace deepcomp
