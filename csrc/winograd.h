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
  ~WinogradConv();
  WinogradConv(const WinogradConv&) = delete;
  WinogradConv& operator=(const WinogradConv&) = delete;

  int mr() const { return mr_; }
  int64_t bytes() const { return int64_t(u_.size() * sizeof(float)); }
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
  // Chunks of whole tile rows, each phase split over the threads.
  void forward_by_phase(const Call& a, int64_t N) const;
  // Input channel c of the tiles [t0, t1) to vc[e * es + t - t0], zero up to the next tile vector.
  void input_tiles(const Call& a, int64_t c, int64_t t0, int64_t t1, float* vc, int64_t es) const;
  // M[e] rows kb * mr .. + mr over Tc tiles (rows Tp apart): m[r * Tp + t] = sum_c U[e][kb][c][r]
  // ve[c * Tp + t], for t < Tp or, when the last tile vector is mostly empty, t < Tc.
  void gemm(int64_t e, int64_t kb, const float* ve, int64_t Tp, int64_t Tc, float* m) const;
  // Output channel k of the tiles [t0, t1) from mk[e * es + t - t0], with the epilogue.
  void output_tiles(const Call& a, int64_t k, int64_t t0, int64_t t1, const float* mk, int64_t es) const;

  ConvGeometry g_;
  int mr_;
  int r_;       // kernel size, 3 or 5
  int64_t P_;   // transform points per tile, 36 or 64
  int64_t Kp_;  // out_channels rounded up to mr
  std::vector<float> u_;
};

// The transformed weights of all layers of the process stay within DEEPCOMP_WINOGRAD_MB megabytes
// (default kDefaultWinogradMB; 0: no layer runs in Winograd form; negative: no limit), taken by
// layers in the order of their first calls. winograd_reserve takes bytes from that budget if they
// fit (false: the layer runs on the direct kernels); winograd_release returns them. The default
// keeps VGG-16's peak RSS through its first inference under 150 MB (146 MB; 229 MB without a
// limit) for 1.0-1.2x of its fp32 time (docs/kernels.md, "Default budget and first call").
constexpr int64_t kDefaultWinogradMB = 32;
bool winograd_reserve(int64_t bytes);
void winograd_release(int64_t bytes);
int64_t winograd_memory_budget();                   // negative: no limit
int64_t set_winograd_memory_budget(int64_t bytes);  // returns the previous value

// Bytes the V and M buffers of one chunk may take (tests lower it to exercise chunking).
int64_t winograd_chunk_budget();
int64_t set_winograd_chunk_budget(int64_t bytes);  // returns the previous value
// Bytes of V and M per tile vector times the vectors of a chunk, up to which each thread runs whole
// chunks of its own instead (0: never). The default, 3 MB, is above one core's L2: the gain is the
// phases without barriers between them (docs/kernels.md, "Per-thread budget").
int64_t winograd_thread_budget();
int64_t set_winograd_thread_budget(int64_t bytes);  // returns the previous value

}  // namespace deepcomp
