// Winograd convolution (Lavin & Gray 2016) for 3x3 and 5x5, stride-1, undilated, ungrouped layers:
// F(4x4, 3x3) on 6 x 6 tiles and F(4x4, 5x5) on 8 x 8 tiles. Each 4 x 4 output tile of a channel is
// A^T [sum_c (G g G^T) . (B^T d B)] A: 36 products per input channel instead of 144 (3x3), 64 instead
// of 400 (5x5), so at the paper's densities (a third or so of the weights kept) it does fewer
// multiplications than the sparse direct kernel. The transformed weights are dense: the zeros of a
// pruned kernel do not survive G g G^T.
//
// Layouts, for P = 36 or 64 transform points and a chunk of Tc tiles (whole tile rows of the batch,
// tile t = (n * TY + ty) * TX + tx, padded to Tp, a multiple of the SIMD width):
//   U [P][Kp / mr][C][mr]   the transformed weights, output channels in register tiles of mr
//   V [P][C][Tp]            the transformed input tiles
//   M [P][Kp][Tp]           their products, M[e] = U[e] V[e], then transformed to the output
// so each of the P GEMMs broadcasts weights and runs its vectors along the tiles.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "conv_plan.h"

namespace deepcomp {

class WinogradConv {
 public:
  // Whether a layer of this geometry can run here (3x3 or 5x5, stride 1, dilation 1, groups 1).
  static bool fits(const ConvGeometry& g);
  // The bytes of the transformed weights of such a layer for register tile mr.
  static int64_t bytes_for(const ConvGeometry& g, int mr);
  // Transform points per tile (products per 4 x 4 output tile and input channel) of kernel size r:
  // (r + 3)^2, 36 for 3x3 and 64 for 5x5.
  static int64_t planes_of(int64_t r) { return (r + 3) * (r + 3); }
  // w: [K][C][r][r] dense; mr: the register tile of the ISA that will run it (Kernels::wino_mr).
  // The caller has reserved bytes_for(g, mr) with winograd_reserve; the destructor releases them.
  WinogradConv(const ConvGeometry& g, const std::vector<float>& w, int mr);
  // Streamed form of a 3x3 layer (streams(g)): no transformed weights are kept; each call transforms
  // them output-channel tile by tile from the layer's CSR weights w, which must outlive this object,
  // six planes at a time into a buffer of the thread (74 KB for 512 input channels on AVX2) right
  // before their GEMMs. Costs the transform per call (a tenth of the GEMMs' work or less where
  // winograd_streams_call holds) and reads V once per four output-channel tiles instead of U once per call.
  WinogradConv(const ConvGeometry& g, const CsrStore& w, int mr);
  static bool streams(const ConvGeometry& g) { return fits(g) && g.kh == 3; }
  ~WinogradConv();
  WinogradConv(const WinogradConv&) = delete;
  WinogradConv& operator=(const WinogradConv&) = delete;

  int mr() const { return mr_; }
  int64_t bytes() const { return int64_t(u_.size() * sizeof(float)); }
  bool streamed() const { return csr_ != nullptr; }
  // x: [N, C, H, W]; y: [N, K, OH, OW], relu?((conv + bias) * scale + shift); bias/scale/shift: [K]
  // or null. Call without the GIL; uses the thread pool.
  void forward(const float* x, int64_t N, int64_t H, int64_t W, float* y, bool relu, const float* bias,
               const float* scale, const float* shift) const;

 private:
  struct Call;  // one forward call's input, output and tile grid
  // Tiles per chunk when each thread runs whole chunks (no barrier between the phases, V and M its
  // own), or 0 when one tile vector's V and M exceed winograd_thread_budget().
  int64_t thread_tiles(int64_t tiles, int threads) const;
  void forward_by_thread(const Call& a, int64_t N, int64_t tq) const;
  // The GEMM phase of one chunk: gemms(V, ves, M, mes, Tp, Tc) fills M's planes (mes floats apart)
  // from V's (ves apart) for Tc tiles padded to Tp.
  using GemmPhase = std::function<void(const float*, int64_t, float*, int64_t, int64_t, int64_t)>;
  // Chunks of whole tile rows, each phase split over the threads: input transform by input channel,
  // `gemms`, output transform by output channel.
  void by_chunks(const Call& a, int64_t N, const GemmPhase& gemms) const;
  // by_chunks with the GEMMs split by plane and output-channel tiles of U.
  void forward_by_phase(const Call& a, int64_t N) const;
  // by_chunks for the streamed form: the GEMMs by groups of output-channel tiles, each transforming
  // its weights first.
  void forward_streamed(const Call& a, int64_t N) const;
  // Tile rows per chunk of by_chunks (V and M within the chunk budget).
  int64_t rows_per_chunk(const Call& a, int64_t N) const;
  // The taps of output-channel tile kb from csr_ into d (layout of Kernels::wino_weights), or zeros
  // back where they were.
  void scatter_taps(int64_t kb, float* d, bool clear) const;
  // Input channel c of the tiles [t0, t1) to vc[e * es + t - t0], zero up to the next tile vector.
  void input_tiles(const Call& a, int64_t c, int64_t t0, int64_t t1, float* vc, int64_t es) const;
  // One register tile's rows of M[e] over Tc tiles (rows Tp apart): m[r * Tp + t] = sum_c u[c * mr + r]
  // ve[c * Tp + t], for t < Tp or, when the last tile vector is mostly empty, t < Tc; u is U[e][kb].
  void gemm(const float* u, const float* ve, int64_t Tp, int64_t Tc, float* m) const;
  const float* u_tile(int64_t e, int64_t kb) const { return u_.data() + (e * (Kp_ / mr_) + kb) * g_.in_channels * mr_; }
  // Output channel k of the tiles [t0, t1) from mk[e * es + t - t0], with the epilogue.
  void output_tiles(const Call& a, int64_t k, int64_t t0, int64_t t1, const float* mk, int64_t es) const;

  ConvGeometry g_;
  int mr_;
  int r_;       // kernel size, 3 or 5
  int64_t P_;   // transform points per tile, 36 or 64
  int64_t Kp_;  // out_channels rounded up to mr
  std::vector<float> u_;
  const CsrStore* csr_ = nullptr;  // the streamed form's weights
  int64_t reserved_ = 0;           // bytes taken from the memory budget
};

// The transformed weights of all layers of the process stay within DEEPCOMP_WINOGRAD_MB megabytes
// (default kDefaultWinogradMB; 0: no layer keeps them; negative: no limit), taken by layers in the
// order of their first calls. winograd_reserve takes bytes from that budget if they fit (false: the
// layer runs in the streamed form where winograd_streams_call allows, else on the direct kernels);
// winograd_release returns them. The default keeps VGG-16's peak RSS through its first inference
// under 150 MB (138 MB) with conv2_1-conv3_3 stored and conv4_x streamed (docs/kernels.md,
// "Default budget and first call", "Streamed form").
constexpr int64_t kDefaultWinogradMB = 32;
bool winograd_reserve(int64_t bytes);
void winograd_release(int64_t bytes);
int64_t winograd_memory_budget();                   // negative: no limit
int64_t set_winograd_memory_budget(int64_t bytes);  // returns the previous value

// Whether layers over the memory budget run in the streamed form (default on; off: the direct
// kernels, as before it existed), and whether a call of N inputs of H x W suits it: at least
// kStreamMinTiles tiles per image, so that transforming the weights costs about a tenth of the GEMMs
// or less at batch 1 (VGG-16's conv4 has 49 tiles). Smaller planes lose to the direct kernels even
// at batch 8 (VGG-16's conv5 and AlexNet's 13 x 13 layers, 16 tiles each: 0.74-1.02x).
constexpr int64_t kStreamMinTiles = 48;
bool winograd_streaming();
bool set_winograd_streaming(bool on);  // returns the previous value
bool winograd_streams_call(const ConvGeometry& g, int64_t N, int64_t H, int64_t W);

// Bytes the V and M buffers of one chunk may take (tests lower it to exercise chunking).
int64_t winograd_chunk_budget();
int64_t set_winograd_chunk_budget(int64_t bytes);  // returns the previous value
// Bytes of V and M per tile vector times the vectors of a chunk, up to which each thread runs whole
// chunks of its own instead (0: never). The default, 3 MB, is above one core's L2: the gain is the
// phases without barriers between them (docs/kernels.md, "Per-thread budget").
int64_t winograd_thread_budget();
int64_t set_winograd_thread_budget(int64_t bytes);  // returns the previous value

}  // namespace deepcomp
