// Max pool over one plane with AVX2, for the windows CNNs use most: stride 2 along W, 2 or 3 wide
// (VGG's 2x2/2, AlexNet's 3x3/2), no padding or dilation. Per 8 output columns: the vertical max
// of the kh input rows over the 16 (or 18) columns they read, then evens and odds split by one
// shuffle and a lane permute, so nothing goes through a row buffer; the row's end is masked, not
// scalar (a scalar tail's compare branches mispredict on every other element). NaN propagates like
// torch's.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>

#include "dense_ops.h"

namespace deepcomp {

namespace {
// max(a, b), NaN if either is: maxps returns b when either is NaN, so a NaN a is put back.
inline __m256 nan_max8(__m256 a, __m256 b) {
  return _mm256_blendv_ps(_mm256_max_ps(a, b), a, _mm256_cmp_ps(a, a, _CMP_UNORD_Q));
}
// Lanes 0, 2, 4, ... (odd = false) or 1, 3, 5, ... of the 16 floats a:b, in order.
inline __m256 deinterleave(__m256 a, __m256 b, bool odd) {
  const __m256 s = odd ? _mm256_shuffle_ps(a, b, 0xDD) : _mm256_shuffle_ps(a, b, 0x88);
  return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(s), 0xD8));
}

// Lanes col .. col + 7 of a row of W floats; lanes at or past W read as -inf (masked load: no
// access past the row).
template <bool EDGE>
inline __m256 load_cols(const float* row, int64_t col, int64_t W) {
  if (!EDGE) return _mm256_loadu_ps(row + col);
  const __m256i in = _mm256_cmpgt_epi32(_mm256_set1_epi32(int(std::min<int64_t>(std::max<int64_t>(W - col, 0), 8))),
                                        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  const __m256 v = _mm256_maskload_ps(row + std::min(col, W), in);
  return _mm256_blendv_ps(_mm256_set1_ps(-std::numeric_limits<float>::infinity()), v, _mm256_castsi256_ps(in));
}

// Output columns 8j .. 8j + 7 of one output row, from input rows [iy0, iy1).
template <bool EDGE, bool K3>
inline __m256 pool_block(const float* x, int64_t W, int64_t iy0, int64_t iy1, int64_t j) {
  const int64_t c = 16 * j;
  const float* s = x + iy0 * W;
  __m256 a = load_cols<EDGE>(s, c, W), b = load_cols<EDGE>(s, c + 8, W), e, f;
  if (K3) e = load_cols<EDGE>(s, c + 2, W), f = load_cols<EDGE>(s, c + 10, W);
  for (int64_t iy = iy0 + 1; iy < iy1; ++iy) {
    s += W;
    a = nan_max8(a, load_cols<EDGE>(s, c, W));
    b = nan_max8(b, load_cols<EDGE>(s, c + 8, W));
    if (K3) e = nan_max8(e, load_cols<EDGE>(s, c + 2, W)), f = nan_max8(f, load_cols<EDGE>(s, c + 10, W));
  }
  __m256 m = nan_max8(deinterleave(a, b, false), deinterleave(a, b, true));
  if (K3) m = nan_max8(m, deinterleave(e, f, false));
  return m;
}

// Window heights up to this take the row end through a small buffer: masked loads measured slower
// (AlexNet pool5, 256 x 13 x 13, 3x3/2, 1 thread: 119 us a call masked, 87 us through the buffer).
constexpr int64_t kEdgeRows = 8;

template <bool K3>
void pool_plane(const float* x, const float* end, int64_t H, int64_t W, const Pool2d& p, float* y, int64_t OH,
                int64_t OW) {
  // Blocks of 8 outputs whose columns 16j .. 16j + 15 (+ 2 for 3-wide windows) lie inside the row
  // use plain loads; the rest (the row's end, ceil_mode's clipped windows) masked ones.
  const int64_t inner = std::min((OW + 7) / 8, std::max<int64_t>(0, (W - (K3 ? 2 : 0)) / 16));
  const int64_t blocks = (OW + 7) / 8;
  // Every window inside its row (no ceil_mode clipping): a block at the row's end may then read
  // columns past it, from the next row, up to `end`: they only reach output lanes that are not
  // stored.
  const bool whole = 2 * (OW - 1) + p.kw <= W;
  const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256 neg_inf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t oy = 0; oy < OH; ++oy) {
    const int64_t iy0 = oy * p.sh, iy1 = std::min(H, iy0 + p.kh);  // ceil_mode may clip the window
    float* o = y + oy * OW;
    int64_t j = 0;
    for (; j < inner && 8 * j + 8 <= OW; ++j) _mm256_storeu_ps(o + 8 * j, pool_block<false, K3>(x, W, iy0, iy1, j));
    for (; j < blocks; ++j) {
      __m256 m;
      if (whole && x + (iy1 - 1) * W + 16 * j + (K3 ? 18 : 16) <= end) {
        m = pool_block<false, K3>(x, W, iy0, iy1, j);  // lanes past the row read the next row
      } else if (iy1 - iy0 <= kEdgeRows) {  // the window's columns copied into -inf rows, then plain loads
        alignas(32) float buf[kEdgeRows * 32];
        const int64_t c = 16 * j, n = std::min<int64_t>(W - c, 18);
        for (int64_t r = 0; r < iy1 - iy0; ++r) {
          for (int q = 0; q < 32; q += 8) _mm256_store_ps(buf + r * 32 + q, neg_inf);
          std::memcpy(buf + r * 32, x + (iy0 + r) * W + c, sizeof(float) * size_t(n));
        }
        m = pool_block<false, K3>(buf, 32, 0, iy1 - iy0, 0);
      } else {
        m = pool_block<true, K3>(x, W, iy0, iy1, j);
      }
      const __m256i keep = _mm256_cmpgt_epi32(_mm256_set1_epi32(int(std::min<int64_t>(OW - 8 * j, 8))), iota);
      _mm256_maskstore_ps(o + 8 * j, keep, m);
    }
  }
}
}  // namespace

bool max_pool_plane_avx2(const float* x, const float* end, int64_t H, int64_t W, const Pool2d& p, float* y,
                         int64_t OH, int64_t OW) {
  if (p.sw != 2 || (p.kw != 2 && p.kw != 3) || p.ph || p.pw || p.dh != 1 || p.dw != 1) return false;
  if (p.kw == 3) pool_plane<true>(x, end, H, W, p, y, OH, OW);
  else pool_plane<false>(x, end, H, W, p, y, OH, OW);
  return true;
}

}  // namespace deepcomp
