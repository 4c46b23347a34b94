// Winograd F(4x4, 3x3) and F(4x4, 5x5) driver: the weight transform, and per chunk of tiles either
// the three phases on the thread pool (input transform by input channel, the 36 or 64 GEMMs by
// output-channel tiles, output transform by output channel) or whole chunks per thread. See
// winograd.h for the layouts.
#include "winograd.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <functional>

#include "common.h"
#include "threadpool.h"
#include "winograd_points.h"

namespace deepcomp {

namespace {
std::atomic<int64_t> g_chunk_budget{int64_t(16) << 20};
std::atomic<int64_t> g_thread_budget{int64_t(3) << 20};
std::atomic<int64_t> g_reserved{0};
std::atomic<bool> g_streaming{true};

// DEEPCOMP_WINOGRAD_MB: N >= 0 megabytes, a negative number for no limit; unset, empty or not a
// number: kDefaultWinogradMB.
int64_t memory_budget_from_env() {
  if (const char* env = std::getenv("DEEPCOMP_WINOGRAD_MB")) {
    char* end = nullptr;
    const long long mb = std::strtoll(env, &end, 10);
    if (end != env && *end == '\0') return mb < 0 ? -1 : int64_t(mb) << 20;
  }
  return kDefaultWinogradMB << 20;
}
std::atomic<int64_t> g_memory_budget{memory_budget_from_env()};

template <int r>
constexpr const double (&g_matrix())[r + 3][r] {
  if constexpr (r == 5) return kG5;
  else return kG3;
}

// The transformed weights G g G^T of output-channel tile kb into u ([P][Kp / mr][C][mr]), for each
// input channel all mr kernels at once (the inner loops run along the tile and vectorize), in
// double; lanes past the last output channel get zeros.
template <int r>
void transform_tile(const float* w, int64_t K, int64_t C, int mr, int64_t kb, int64_t nkb, float* u) {
  constexpr int t = r + 3, taps = r * r;
  const auto& G = g_matrix<r>();
  const int64_t k0 = kb * mr, nk = std::min<int64_t>(K - k0, mr);
  std::vector<double> g(size_t(taps * mr), 0.0), gg(size_t(t * r * mr));
  for (int64_t c = 0; c < C; ++c) {
    for (int i = 0; i < taps; ++i)
      for (int64_t k = 0; k < nk; ++k) g[size_t(i * mr + k)] = w[((k0 + k) * C + c) * taps + i];
    for (int a = 0; a < t; ++a)
      for (int j = 0; j < r; ++j) {
        double* d = gg.data() + (a * r + j) * mr;
        for (int k = 0; k < mr; ++k) d[k] = 0.0;
        for (int i = 0; i < r; ++i) {
          const double* s = g.data() + (i * r + j) * mr;
          for (int k = 0; k < mr; ++k) d[k] += G[a][i] * s[k];
        }
      }
    for (int a = 0; a < t; ++a)
      for (int b = 0; b < t; ++b) {
        float* d = u + (((a * t + b) * nkb + kb) * C + c) * mr;
        for (int k = 0; k < mr; ++k) {
          double s = 0.0;
          for (int j = 0; j < r; ++j) s += gg[size_t((a * r + j) * mr + k)] * G[b][j];
          d[k] = float(s);
        }
      }
  }
}

}  // namespace

bool winograd_streaming() { return g_streaming.load(std::memory_order_relaxed); }
bool set_winograd_streaming(bool on) { return g_streaming.exchange(on, std::memory_order_relaxed); }
bool winograd_streams_call(const ConvGeometry& g, int64_t N, int64_t H, int64_t W) {
  if (conv_winograd_threshold() <= 0) return true;  // Winograd forced (tests, A/B runs)
  const auto [OH, OW] = conv_out_size(g, H, W);
  return N >= 1 && ((OH + 3) / 4) * ((OW + 3) / 4) >= kStreamMinTiles;
}

int64_t winograd_chunk_budget() { return g_chunk_budget.load(std::memory_order_relaxed); }
int64_t set_winograd_chunk_budget(int64_t bytes) {
  return g_chunk_budget.exchange(std::max<int64_t>(1, bytes), std::memory_order_relaxed);
}

int64_t winograd_thread_budget() { return g_thread_budget.load(std::memory_order_relaxed); }
int64_t set_winograd_thread_budget(int64_t bytes) {
  return g_thread_budget.exchange(std::max<int64_t>(0, bytes), std::memory_order_relaxed);
}

int64_t winograd_memory_budget() { return g_memory_budget.load(std::memory_order_relaxed); }
int64_t set_winograd_memory_budget(int64_t bytes) {
  return g_memory_budget.exchange(bytes < 0 ? -1 : bytes, std::memory_order_relaxed);
}
bool winograd_reserve(int64_t bytes) {
  const int64_t budget = winograd_memory_budget();
  int64_t cur = g_reserved.load(std::memory_order_relaxed);
  do {
    if (budget >= 0 && cur + bytes > budget) return false;
  } while (!g_reserved.compare_exchange_weak(cur, cur + bytes, std::memory_order_relaxed));
  return true;
}
void winograd_release(int64_t bytes) { g_reserved.fetch_sub(bytes, std::memory_order_relaxed); }

int64_t WinogradConv::bytes_for(const ConvGeometry& g, int mr) {
  return planes_of(g.kh) * ((g.out_channels + mr - 1) / mr * mr) * g.in_channels * int64_t(sizeof(float));
}

WinogradConv::~WinogradConv() { winograd_release(reserved_); }

bool WinogradConv::fits(const ConvGeometry& g) {
  return (g.kh == 3 || g.kh == 5) && g.kw == g.kh && g.sh == 1 && g.sw == 1 && g.dh == 1 && g.dw == 1 &&
         g.groups == 1;
}

WinogradConv::WinogradConv(const ConvGeometry& g, const std::vector<float>& w, int mr)
    : g_(g), mr_(mr), r_(int(g.kh)), P_(planes_of(g.kh)) {
  if (!fits(g))
    throw ShapeError("WinogradConv: needs a 3x3 or 5x5, stride-1, undilated, ungrouped convolution");
  const int64_t K = g.out_channels, C = g.in_channels, taps = int64_t(r_) * r_;
  if (mr < 1 || int64_t(w.size()) != K * C * taps) throw ShapeError("WinogradConv: weights must be [K][C][r][r]");
  Kp_ = (K + mr - 1) / mr * mr;
  const int64_t nkb = Kp_ / mr;
  u_.resize(size_t(P_ * Kp_ * C));
  reserved_ = bytes_for(g, mr);
  // Output-channel tiles on the thread pool: the transform is most of a layer's first call.
  ThreadPool& pool = ThreadPool::instance();
  pool.parallel_for(nkb, pool.num_threads(), [&](int64_t kb, int) {
    (r_ == 5 ? transform_tile<5> : transform_tile<3>)(w.data(), K, C, mr, kb, nkb, u_.data());
  });
}

WinogradConv::WinogradConv(const ConvGeometry& g, const CsrStore& w, int mr)
    : g_(g), mr_(mr), r_(int(g.kh)), P_(planes_of(g.kh)), csr_(&w) {
  if (!streams(g)) throw ShapeError("WinogradConv: the streamed form needs a 3x3, stride-1, undilated, ungrouped convolution");
  if (mr < 1 || w.rows() != g.out_channels || w.cols() != g.in_channels * 9)
    throw ShapeError("WinogradConv: weights must be [K][C * 9]");
  Kp_ = (g.out_channels + mr - 1) / mr * mr;
}

void WinogradConv::scatter_taps(int64_t kb, float* d, bool clear) const {
  const int64_t lanes = kernels().wino_row_lanes, k0 = kb * mr_, nk = std::min<int64_t>(g_.out_channels - k0, mr_);
  const CsrWeights w = csr_->view();
  for (int64_t r = 0; r < nk; ++r)
    for (int64_t j = w.row_ptr[k0 + r]; j < w.row_ptr[k0 + r + 1]; ++j)
      d[csr_->col_at(j) * lanes + r] = clear ? 0.f : w.values ? w.values[j] : w.codebook[w.cluster[j]];
}

namespace {
// Calls fn(r, tx, n, i) for the runs of the tiles [t0, t1) of the flattened index t = r * TX + tx
// (r = n * TY + ty): each run lies in one tile row, has n <= width tiles and starts at i = t - t0.
template <class F>
void for_each_run(int64_t t0, int64_t t1, int64_t TX, int64_t width, F&& fn) {
  for (int64_t t = t0; t < t1;) {
    const int64_t r = t / TX, tx = t % TX;
    const int n = int(std::min({width, TX - tx, t1 - t}));
    fn(r, tx, n, t - t0);
    t += n;
  }
}

// Floats between the planes of V and of M beyond their size, so that the transforms' loads or
// stores do not fall on addresses 4 KB apart.
constexpr int64_t kSkew = 16;

// The streamed form: output-channel tiles per task (each plane of V read from L3 feeds this many),
// and the most bytes a plane of V may take (tile rows per chunk are cut to fit).
constexpr int64_t kStreamTiles = 4, kStreamPlaneBytes = int64_t(128) << 10;

// The V and M buffers of the calling thread.
thread_local std::vector<float> tl_v, tl_m;
}  // namespace

struct WinogradConv::Call {
  const float* x;
  int64_t H, W, OH, OW, TY, TX;
  float* y;
  bool relu;
  const float *bias, *scale, *shift;
};

void WinogradConv::input_tiles(const Call& a, int64_t c, int64_t t0, int64_t t1, float* vc, int64_t es) const {
  const Kernels& kern = kernels();
  const int64_t C = g_.in_channels, Tp = (t1 - t0 + kern.width - 1) / kern.width * kern.width;
  for_each_run(t0, t1, a.TX, kern.width, [&](int64_t r, int64_t tx, int n, int64_t i) {
    const float* xp = a.x + (r / a.TY * C + c) * a.H * a.W;
    kern.wino_input(xp, a.H, a.W, 4 * (r % a.TY) - g_.ph, 4 * tx - g_.pw, n, vc + i, es, r_);
  });
  for (int64_t e = 0; e < P_; ++e) std::fill(vc + e * es + (t1 - t0), vc + e * es + Tp, 0.f);
}

void WinogradConv::gemm(const float* u, const float* ve, int64_t Tp, int64_t Tc, float* m) const {
  const Kernels& kern = kernels();
  const int64_t C = g_.in_channels, width = kern.width;
  const int64_t last = Tc - (Tp / width - 1) * width;  // tiles in the last vector
  const bool tail = last <= kern.wino_tail_max;
  // The full tile vectors in calls of nearly equal size (13 vectors at most 3 wide: 3 3 3 2 2, not
  // 3 3 3 3 1: the narrow tiles share fewer loads).
  const int64_t nvec = Tp / width - tail, calls = (nvec + kern.wino_nv - 1) / kern.wino_nv;
  for (int64_t i = 0, t = 0; i < calls; ++i) {
    const int nv = int((nvec * (i + 1)) / calls - (nvec * i) / calls);
    kern.wino_gemm(u, ve + t, C, Tp, nv, m + t, Tp);
    t += nv * width;
  }
  if (tail) kern.wino_tail(u, ve + nvec * width, C, Tp, int(last), m + nvec * width, Tp);
}

void WinogradConv::output_tiles(const Call& a, int64_t k, int64_t t0, int64_t t1, const float* mk, int64_t es) const {
  const Kernels& kern = kernels();
  const int64_t K = g_.out_channels;
  const float b = a.bias ? a.bias[k] : 0.f, s = a.scale ? a.scale[k] : 1.f, h = a.shift ? a.shift[k] : 0.f;
  for_each_run(t0, t1, a.TX, kern.width, [&](int64_t r, int64_t tx, int n, int64_t i) {
    float* yp = a.y + (r / a.TY * K + k) * a.OH * a.OW;
    kern.wino_output(mk + i, es, n, b, s, h, a.relu, yp, a.OH, a.OW, 4 * (r % a.TY), 4 * tx, r_);
  });
}

int64_t WinogradConv::thread_tiles(int64_t tiles, int threads) const {
  const int64_t width = kernels().width, per_tile = P_ * (g_.in_channels + Kp_) * int64_t(sizeof(float));
  int64_t nv = std::min<int64_t>(kernels().wino_nv, winograd_thread_budget() / (per_tile * width));
  // At least two chunks per thread, so the threads finish together.
  while (nv > 1 && (tiles + nv * width - 1) / (nv * width) < 2 * threads) --nv;
  return nv * width;
}

void WinogradConv::forward(const float* x, int64_t N, int64_t H, int64_t W, float* y, bool relu, const float* bias,
                           const float* scale, const float* shift) const {
  if (N <= 0) return;
  if (kernels().wino_mr != mr_) throw ShapeError("WinogradConv: transformed for another ISA");
  const auto [OH, OW] = conv_out_size(g_, H, W);
  const Call a{x, H, W, OH, OW, (OH + 3) / 4, (OW + 3) / 4, y, relu, bias, scale, shift};
  const int T = ThreadPool::instance().num_threads();
  if (streamed()) return forward_streamed(a, N);
  if (const int64_t tq = thread_tiles(N * a.TY * a.TX, T); tq > 0) return forward_by_thread(a, N, tq);
  forward_by_phase(a, N);
}

int64_t WinogradConv::rows_per_chunk(const Call& a, int64_t N) const {
  const int64_t rows = N * a.TY, per_row = P_ * (g_.in_channels + Kp_) * int64_t(sizeof(float)) * a.TX;
  // Each chunk streams all of U once (the streamed form: transforms all its weights once): layers
  // with large U take chunks of up to 4x the budget (docs/kernels.md, "Winograd").
  const int64_t u_bytes = P_ * Kp_ * g_.in_channels * int64_t(sizeof(float));
  const int64_t budget = std::max(winograd_chunk_budget(), std::min(4 * winograd_chunk_budget(), u_bytes * 3 / 4));
  int64_t rpc = std::clamp<int64_t>(budget / per_row, 1, rows);
  // The streamed form's GEMMs keep a plane of V in L2 beside the weights of kStreamTiles tiles.
  if (streamed()) rpc = std::min(rpc, std::max<int64_t>(1, kStreamPlaneBytes / (4 * g_.in_channels) / a.TX));
  return (rows + (rows + rpc - 1) / rpc - 1) / ((rows + rpc - 1) / rpc);  // even chunks
}

void WinogradConv::forward_streamed(const Call& a, int64_t N) const {
  const Kernels& kern = kernels();
  const int64_t C = g_.in_channels, nkb = Kp_ / mr_;
  // Per thread: the taps of a task's tiles (zero between uses) and six planes of their transformed
  // weights.
  const int64_t es = C * mr_ + kern.wino_row_lanes, taps = C * 9 * kern.wino_row_lanes;
  thread_local std::vector<float> tl_taps, tl_u;
  by_chunks(a, N, [&](const float* V, int64_t ves, float* M, int64_t mes, int64_t Tp, int64_t Tc) {
    ThreadPool& pool = ThreadPool::instance();
    pool.parallel_for((nkb + kStreamTiles - 1) / kStreamTiles, pool.num_threads(), [&](int64_t task, int) {
      const int64_t kb0 = task * kStreamTiles, nt = std::min(nkb - kb0, kStreamTiles);
      if (tl_taps.size() < size_t(kStreamTiles * taps)) tl_taps.assign(size_t(kStreamTiles * taps), 0.f);
      float* const u = reuse_buffer(tl_u, size_t(kStreamTiles * 6 * es));
      for (int64_t i = 0; i < nt; ++i) scatter_taps(kb0 + i, tl_taps.data() + i * taps, false);
      for (int row = 0; row < 6; ++row) {  // six planes of each tile at a time, in L2 beside V[e]
        for (int64_t i = 0; i < nt; ++i) kern.wino_weights(tl_taps.data() + i * taps, C, row, u + i * 6 * es, es);
        for (int col = 0; col < 6; ++col) {
          const int64_t e = 6 * row + col;
          for (int64_t i = 0; i < nt; ++i)
            gemm(u + (i * 6 + col) * es, V + e * ves, Tp, Tc, M + e * mes + (kb0 + i) * mr_ * Tp);
        }
      }
      for (int64_t i = 0; i < nt; ++i) scatter_taps(kb0 + i, tl_taps.data() + i * taps, true);  // zeros again
    });
  });
}

void WinogradConv::forward_by_thread(const Call& a, int64_t N, int64_t tq) const {
  ThreadPool& pool = ThreadPool::instance();
  const int64_t C = g_.in_channels, K = g_.out_channels, nkb = Kp_ / mr_, tiles = N * a.TY * a.TX;
  pool.parallel_for((tiles + tq - 1) / tq, pool.num_threads(), [&](int64_t chunk, int) {
    const int64_t t0 = chunk * tq, t1 = std::min(tiles, t0 + tq);
    const int64_t Tp = (t1 - t0 + kernels().width - 1) / kernels().width * kernels().width;
    const int64_t ves = C * Tp + kSkew, mes = Kp_ * Tp + kSkew;
    float* const V = reuse_buffer(tl_v, size_t(P_ * ves));
    float* const M = reuse_buffer(tl_m, size_t(P_ * mes + kernels().width));
    for (int64_t c = 0; c < C; ++c) input_tiles(a, c, t0, t1, V + c * Tp, ves);
    for (int64_t e = 0; e < P_; ++e)
      for (int64_t kb = 0; kb < nkb; ++kb) gemm(u_tile(e, kb), V + e * ves, Tp, t1 - t0, M + e * mes + kb * mr_ * Tp);
    for (int64_t k = 0; k < K; ++k) output_tiles(a, k, t0, t1, M + k * Tp, mes);
  });
}

void WinogradConv::by_chunks(const Call& a, int64_t N, const GemmPhase& gemms) const {
  const Kernels& kern = kernels();
  ThreadPool& pool = ThreadPool::instance();
  const int T = pool.num_threads();
  const int64_t C = g_.in_channels, K = g_.out_channels, width = kern.width;
  const int64_t rows = N * a.TY, rpc = rows_per_chunk(a, N);
  const int64_t Tmax = (rpc * a.TX + width - 1) / width * width;
  float* const V = reuse_buffer(tl_v, size_t(P_ * C * Tmax));
  float* const M = reuse_buffer(tl_m, size_t(P_ * Kp_ * Tmax + width));
  for (int64_t r0 = 0; r0 < rows; r0 += rpc) {
    const int64_t t0 = r0 * a.TX, t1 = std::min(rows, r0 + rpc) * a.TX;
    const int64_t Tp = (t1 - t0 + width - 1) / width * width, ves = C * Tp, mes = Kp_ * Tp;
    pool.parallel_for(C, T, [&](int64_t c, int) { input_tiles(a, c, t0, t1, V + c * Tp, ves); });
    gemms(V, ves, M, mes, Tp, t1 - t0);
    pool.parallel_for(K, T, [&](int64_t k, int) { output_tiles(a, k, t0, t1, M + k * Tp, mes); });
  }
}

void WinogradConv::forward_by_phase(const Call& a, int64_t N) const {
  const int64_t nkb = Kp_ / mr_;
  ThreadPool& pool = ThreadPool::instance();
  const int T = pool.num_threads();
  const int64_t pieces = std::min<int64_t>(nkb, std::max<int64_t>(1, (8 * T + P_ - 1) / P_));
  const int64_t kb_per = (nkb + pieces - 1) / pieces;
  by_chunks(a, N, [&](const float* V, int64_t ves, float* M, int64_t mes, int64_t Tp, int64_t Tc) {
    pool.parallel_for(P_ * pieces, T, [&](int64_t task, int) {
      const int64_t e = task / pieces, kb0 = task % pieces * kb_per, kb1 = std::min(nkb, kb0 + kb_per);
      for (int64_t kb = kb0; kb < kb1; ++kb) gemm(u_tile(e, kb), V + e * ves, Tp, Tc, M + e * mes + kb * mr_ * Tp);
    });
  });
}

}  // namespace deepcomp
