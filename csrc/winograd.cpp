// Winograd F(4x4, 3x3) driver: the weight transform, and per chunk of tiles the three phases on the
// thread pool (input transform by input channel, the 36 GEMMs by output-channel tiles, output
// transform by output channel). See winograd.h for the layouts.
#include "winograd.h"

#include <algorithm>
#include <atomic>
#include <cstring>

#include "common.h"
#include "threadpool.h"

namespace deepcomp {

namespace {
std::atomic<int64_t> g_chunk_budget{int64_t(16) << 20};

// G of F(4x4, 3x3): a 3-tap kernel to its 6 transformed taps.
constexpr double kG[6][3] = {{1.0 / 4, 0, 0},
                             {-1.0 / 6, -1.0 / 6, -1.0 / 6},
                             {-1.0 / 6, 1.0 / 6, -1.0 / 6},
                             {1.0 / 24, 1.0 / 12, 1.0 / 6},
                             {1.0 / 24, -1.0 / 12, 1.0 / 6},
                             {0, 0, 1}};

// G g G^T of one 3x3 kernel, in double: out[a * 6 + b].
void transform_kernel(const float* g, double* out) {
  double t[6][3];  // G g
  for (int a = 0; a < 6; ++a)
    for (int j = 0; j < 3; ++j) t[a][j] = kG[a][0] * g[j] + kG[a][1] * g[3 + j] + kG[a][2] * g[6 + j];
  for (int a = 0; a < 6; ++a)
    for (int b = 0; b < 6; ++b) out[a * 6 + b] = t[a][0] * kG[b][0] + t[a][1] * kG[b][1] + t[a][2] * kG[b][2];
}

}  // namespace

int64_t winograd_chunk_budget() { return g_chunk_budget.load(std::memory_order_relaxed); }
int64_t set_winograd_chunk_budget(int64_t bytes) {
  return g_chunk_budget.exchange(std::max<int64_t>(1, bytes), std::memory_order_relaxed);
}

bool WinogradConv::fits(const ConvGeometry& g) {
  return g.kh == 3 && g.kw == 3 && g.sh == 1 && g.sw == 1 && g.dh == 1 && g.dw == 1 && g.groups == 1;
}

WinogradConv::WinogradConv(const ConvGeometry& g, const std::vector<float>& w, int mr) : g_(g), mr_(mr) {
  if (!fits(g)) throw ShapeError("WinogradConv: needs a 3x3, stride-1, undilated, ungrouped convolution");
  const int64_t K = g.out_channels, C = g.in_channels;
  if (mr < 1 || int64_t(w.size()) != K * C * 9) throw ShapeError("WinogradConv: weights must be [K][C][3][3]");
  Kp_ = (K + mr - 1) / mr * mr;
  const int64_t nkb = Kp_ / mr;
  u_.assign(size_t(36 * Kp_ * C), 0.f);
  double t[36];
  for (int64_t k = 0; k < K; ++k)
    for (int64_t c = 0; c < C; ++c) {
      transform_kernel(w.data() + (k * C + c) * 9, t);
      for (int e = 0; e < 36; ++e) u_[size_t(((e * nkb + k / mr) * C + c) * mr + k % mr)] = float(t[e]);
    }
}

void WinogradConv::forward(const float* x, int64_t N, int64_t H, int64_t W, float* y, bool relu, const float* bias,
                           const float* scale, const float* shift) const {
  if (N <= 0) return;
  const Kernels& kern = kernels();
  if (kern.wino_mr != mr_) throw ShapeError("WinogradConv: transformed for another ISA");
  ThreadPool& pool = ThreadPool::instance();
  const int T = pool.num_threads();
  const int64_t C = g_.in_channels, K = g_.out_channels, width = kern.width;
  const auto [OH, OW] = conv_out_size(g_, H, W);
  const int64_t TY = (OH + 3) / 4, TX = (OW + 3) / 4, rows = N * TY;
  const int64_t per_row = 36 * (C + Kp_) * int64_t(sizeof(float)) * TX;
  // Each chunk streams all of U once: layers with large U take chunks of up to 4x the budget
  // (docs/kernels.md, "Winograd").
  const int64_t budget = std::max(winograd_chunk_budget(), std::min(4 * winograd_chunk_budget(), bytes() * 3 / 4));
  int64_t rpc = std::clamp<int64_t>(budget / per_row, 1, rows);
  rpc = (rows + (rows + rpc - 1) / rpc - 1) / ((rows + rpc - 1) / rpc);  // even chunks
  const int64_t Tp = (rpc * TX + width - 1) / width * width;
  thread_local std::vector<float> tl_v, tl_m;
  float* const V = reuse_buffer(tl_v, size_t(36 * C * Tp));
  float* const M = reuse_buffer(tl_m, size_t(36 * Kp_ * Tp + width));
  const int64_t nkb = Kp_ / mr_;
  const int64_t pieces = std::min<int64_t>(nkb, std::max<int64_t>(1, (8 * T + 35) / 36));
  const int64_t kb_per = (nkb + pieces - 1) / pieces;

  for (int64_t r0 = 0; r0 < rows; r0 += rpc) {
    const int64_t r1 = std::min(rows, r0 + rpc), Tc = (r1 - r0) * TX;
    const int64_t Tcp = (Tc + width - 1) / width * width;
    const int64_t ves = C * Tcp, mes = Kp_ * Tcp;
    pool.parallel_for(C, T, [&](int64_t c, int) {
      float* vc = V + c * Tcp;
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t n = r / TY, ty = r % TY;
        const float* xp = x + (n * C + c) * H * W;
        for (int64_t tx = 0; tx < TX; tx += width)
          kern.wino_input(xp, H, W, 4 * ty - g_.ph, 4 * tx - g_.pw, int(std::min(width, TX - tx)),
                          vc + (r - r0) * TX + tx, ves);
      }
      for (int e = 0; e < 36; ++e) std::fill(vc + e * ves + Tc, vc + e * ves + Tcp, 0.f);
    });
    pool.parallel_for(36 * pieces, T, [&](int64_t task, int) {
      const int64_t e = task / pieces, kb0 = task % pieces * kb_per, kb1 = std::min(nkb, kb0 + kb_per);
      const float* ve = V + e * ves;
      for (int64_t kb = kb0; kb < kb1; ++kb) {
        const float* u = u_.data() + (e * nkb + kb) * C * mr_;
        float* m = M + e * mes + kb * mr_ * Tcp;
        // The tile vectors in calls of nearly equal size (13 vectors at most 3 wide: 3 3 3 2 2, not
        // 3 3 3 3 1: the narrow tiles share fewer loads).
        const int64_t nvec = Tcp / width, calls = (nvec + kern.wino_nv - 1) / kern.wino_nv;
        for (int64_t i = 0, t = 0; i < calls; ++i) {
          const int nv = int((nvec * (i + 1)) / calls - (nvec * i) / calls);
          kern.wino_gemm(u, ve + t, C, Tcp, nv, m + t, Tcp);
          t += nv * width;
        }
      }
    });
    pool.parallel_for(K, T, [&](int64_t k, int) {
      const float b = bias ? bias[k] : 0.f, s = scale ? scale[k] : 1.f, h = shift ? shift[k] : 0.f;
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t n = r / TY, ty = r % TY;
        float* yp = y + (n * K + k) * OH * OW;
        for (int64_t tx = 0; tx < TX; tx += width)
          kern.wino_output(M + k * Tcp + (r - r0) * TX + tx, mes, int(std::min(width, TX - tx)), b, s, h, relu, yp,
                           OH, OW, 4 * ty, 4 * tx);
      }
    });
  }
}

}  // namespace deepcomp
