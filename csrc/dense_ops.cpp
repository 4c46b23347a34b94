// Pooling and ReLU on NCHW float32, parallel over (image, channel) planes.
#include "dense_ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "common.h"
#include "dispatch.h"
#include "threadpool.h"

namespace deepcomp {

namespace {
std::string S(int64_t v) { return std::to_string(v); }

// Splits NC planes into contiguous ranges (enough per task to amortise the dispatch) and calls
// f(first, last) for each range on the pool.
template <class F>
void for_plane_ranges(int64_t NC, int64_t work_per_plane, F&& f) {
  ThreadPool& pool = ThreadPool::instance();
  const int T = pool.num_threads();
  const int64_t min_planes = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, work_per_plane));
  const int64_t ntasks = std::max<int64_t>(1, std::min<int64_t>(NC / min_planes, int64_t(T) * 4));
  pool.parallel_for(ntasks, T, [&](int64_t t, int) { f(NC * t / ntasks, NC * (t + 1) / ntasks); });
}

template <class F>
void for_planes(int64_t NC, int64_t work_per_plane, F&& f) {
  for_plane_ranges(NC, work_per_plane, [&](int64_t a, int64_t b) {
    for (int64_t i = a; i < b; ++i) f(i);
  });
}
}  // namespace

int64_t pool_out_size(int64_t in, int64_t k, int64_t s, int64_t pad, int64_t d, bool ceil_mode) {
  const int64_t num = in + 2 * pad - d * (k - 1) - 1 + (ceil_mode ? s - 1 : 0);
  // floor division (num may be negative for too-small inputs)
  int64_t out = (num >= 0 ? num / s : -((-num + s - 1) / s)) + 1;
  if (ceil_mode && (out - 1) * s >= in + pad) --out;
  return out;
}

void check_pool(const Pool2d& p, int64_t H, int64_t W, const char* what) {
  const std::string w(what);
  if (p.kh < 1 || p.kw < 1) throw ShapeError(w + ": kernel size must be >= 1");
  if (p.sh < 1 || p.sw < 1) throw ShapeError(w + ": stride must be >= 1");
  if (p.dh < 1 || p.dw < 1) throw ShapeError(w + ": dilation must be >= 1");
  if (p.ph < 0 || p.pw < 0) throw ShapeError(w + ": padding must be >= 0");
  if (p.ph > p.kh / 2 || p.pw > p.kw / 2)
    throw ShapeError(w + ": pad should be at most half of kernel size");
  const int64_t OH = pool_out_size(H, p.kh, p.sh, p.ph, p.dh, p.ceil_mode);
  const int64_t OW = pool_out_size(W, p.kw, p.sw, p.pw, p.dw, p.ceil_mode);
  if (OH < 1 || OW < 1)
    throw ShapeError(w + ": input " + S(H) + "x" + S(W) + " is too small (output " + S(OH) + "x" + S(OW) + ")");
}

namespace {
// NaN-propagating max (torch's max_pool2d returns NaN for a window holding one); branch-free, so
// the compiler vectorises the row loops below.
inline float nan_max(float m, float v) { return (v > m || v != v) ? v : m; }
}  // namespace

// Per output row: a vertical max over its kh input rows (contiguous, vectorised along W), then the
// horizontal max over each output column's window of that one row. The strided reads are one row's
// worth per output row (kw / sw per output pixel), not one per input row and tap as in a
// horizontal-first order (see docs/kernels.md).
void max_pool2d(const float* x, int64_t NC, int64_t H, int64_t W, const Pool2d& p, float* y, int64_t OH, int64_t OW) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
#if DEEPCOMP_X86
  // VGG's and AlexNet's pools at 1 thread: 0.7x-2.9x faster than the generic loops below, which
  // the compiler vectorises for SSE2 only (docs/kernels.md).
  if (kernels().width >= 8 && p.sw == 2 && (p.kw == 2 || p.kw == 3) && !p.ph && !p.pw && p.dh == 1 && p.dw == 1) {
    for_plane_ranges(NC, OH * OW * p.kh * p.kw, [&](int64_t first, int64_t last) {
      for (int64_t i = first; i < last; ++i) max_pool_plane_avx2(x + i * H * W, x + NC * H * W, H, W, p, y + i * OH * OW, OH, OW);
    });
    return;
  }
#endif
  for_plane_ranges(NC, OH * OW * p.kh * p.kw, [&](int64_t first, int64_t last) {
    std::vector<float> col(static_cast<size_t>(W));  // one per task, reused for every row of its planes
    float* v = col.data();
    for (int64_t i = first; i < last; ++i) {
      const float* xp = x + i * H * W;
      float* yp = y + i * OH * OW;
      for (int64_t oy = 0; oy < OH; ++oy) {
        for (int64_t j = 0; j < W; ++j) v[j] = kNegInf;
        for (int64_t k = 0; k < p.kh; ++k) {
          const int64_t iy = oy * p.sh - p.ph + k * p.dh;
          if (iy < 0 || iy >= H) continue;
          const float* r = xp + iy * W;
          for (int64_t j = 0; j < W; ++j) v[j] = nan_max(v[j], r[j]);
        }
        float* o = yp + oy * OW;
        for (int64_t ox = 0; ox < OW; ++ox) o[ox] = kNegInf;
        // Tap k of output column ox reads column ox*sw - pw + k*dw: one strided pass per tap over
        // the columns where it is inside the row.
        for (int64_t k = 0; k < p.kw; ++k) {
          const int64_t c0 = k * p.dw - p.pw;  // column read by ox = 0
          const int64_t lo = c0 >= 0 ? 0 : (-c0 + p.sw - 1) / p.sw;
          const int64_t hi = std::min(OW, c0 < W ? (W - 1 - c0) / p.sw + 1 : int64_t(0));
          if (hi <= lo) continue;
          const float* rc = v + (c0 + lo * p.sw);  // column of ox = lo, inside the row
          float* oc = o + lo;
          const int64_t n = hi - lo;
          if (p.sw == 1) {
            for (int64_t j = 0; j < n; ++j) oc[j] = nan_max(oc[j], rc[j]);
          } else if (p.sw == 2) {
            for (int64_t j = 0; j < n; ++j) oc[j] = nan_max(oc[j], rc[2 * j]);
          } else {
            for (int64_t j = 0; j < n; ++j) oc[j] = nan_max(oc[j], rc[j * p.sw]);
          }
        }
      }
    }
  });
}

void avg_pool2d(const float* x, int64_t NC, int64_t H, int64_t W, const Pool2d& p, float* y, int64_t OH, int64_t OW) {
  for_planes(NC, OH * OW * p.kh * p.kw, [&](int64_t i) {
    const float* xp = x + i * H * W;
    float* yp = y + i * OH * OW;
    for (int64_t oy = 0; oy < OH; ++oy) {
      int64_t hs = oy * p.sh - p.ph;
      int64_t he = std::min(hs + p.kh, H + p.ph);
      const int64_t ph_size = he - hs;
      hs = std::max<int64_t>(hs, 0);
      he = std::min(he, H);
      for (int64_t ox = 0; ox < OW; ++ox) {
        int64_t ws = ox * p.sw - p.pw;
        int64_t we = std::min(ws + p.kw, W + p.pw);
        const int64_t pool_size = ph_size * (we - ws);
        ws = std::max<int64_t>(ws, 0);
        we = std::min(we, W);
        if (hs >= he || ws >= we) {
          yp[oy * OW + ox] = 0.f;
          continue;
        }
        float s = 0.f;
        for (int64_t iy = hs; iy < he; ++iy)
          for (int64_t ix = ws; ix < we; ++ix) s += xp[iy * W + ix];
        const int64_t div = p.count_include_pad ? pool_size : (he - hs) * (we - ws);
        yp[oy * OW + ox] = s / float(div);
      }
    }
  });
}

void adaptive_avg_pool2d(const float* x, int64_t NC, int64_t H, int64_t W, float* y, int64_t OH, int64_t OW) {
  if (OH == H && OW == W) {  // every window is one pixel (VGG-16's 7x7 -> 7x7): a copy
    for_plane_ranges(NC, H * W, [&](int64_t a, int64_t b) {
      std::memcpy(y + a * H * W, x + a * H * W, sizeof(float) * size_t((b - a) * H * W));
    });
    return;
  }
  for_planes(NC, H * W, [&](int64_t i) {
    const float* xp = x + i * H * W;
    float* yp = y + i * OH * OW;
    for (int64_t oy = 0; oy < OH; ++oy) {
      const int64_t hs = (oy * H) / OH, he = ((oy + 1) * H + OH - 1) / OH;
      for (int64_t ox = 0; ox < OW; ++ox) {
        const int64_t ws = (ox * W) / OW, we = ((ox + 1) * W + OW - 1) / OW;
        float s = 0.f;
        for (int64_t iy = hs; iy < he; ++iy)
          for (int64_t ix = ws; ix < we; ++ix) s += xp[iy * W + ix];
        yp[oy * OW + ox] = s / float((he - hs) * (we - ws));
      }
    }
  });
}

void relu_inplace(float* x, int64_t n) {
  constexpr int64_t kChunk = 1 << 16;
  const int64_t nchunks = (n + kChunk - 1) / kChunk;
  ThreadPool& pool = ThreadPool::instance();
  pool.parallel_for(nchunks, pool.num_threads(), [&](int64_t c, int) {
    float* a = x + c * kChunk;
    const int64_t m = std::min(kChunk, n - c * kChunk);
    for (int64_t i = 0; i < m; ++i) a[i] = a[i] > 0.f ? a[i] : (a[i] == a[i] ? 0.f : a[i]);
  });
}

}  // namespace deepcomp
