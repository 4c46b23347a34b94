// Vector trait for AVX-512 (F/BW/VL/DQ): 16 floats per register. A codebook of up to 32 entries
// lives in two zmm registers and is looked up with vpermt2ps; larger ones are gathered from L1.
#pragma once
#include <immintrin.h>

#include <cstdint>

namespace deepcomp {
struct VecAvx512 {
  static constexpr int W = 16;
  static constexpr int SMALL_K = 32;
  using T = __m512;
  static T zero() { return _mm512_setzero_ps(); }
  // Two weights broadcast from one 8-byte load: a load port saved per pair of nonzeros.
  static void set1_pair(const float* p, T& w0, T& w1) {
    const __m128 q = _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(p)));
    w0 = _mm512_broadcastss_ps(q);
    w1 = _mm512_broadcastss_ps(_mm_movehdup_ps(q));
  }
  static T set1(float a) { return _mm512_set1_ps(a); }
  static T load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, T v) { _mm512_storeu_ps(p, v); }
  static constexpr int STREAM_ALIGN = 64;
  static void stream(float* p, T v) { _mm512_stream_ps(p, v); }  // p: STREAM_ALIGN-aligned
  static T fma(T a, T b, T c) { return _mm512_fmadd_ps(a, b, c); }
  static T add(T a, T b) { return _mm512_add_ps(a, b); }
  static T sub(T a, T b) { return _mm512_sub_ps(a, b); }
  static T mul(T a, T b) { return _mm512_mul_ps(a, b); }
  static T max(T a, T b) { return _mm512_max_ps(a, b); }  // b if either is NaN
  static void store_mask(float* p, T v, uint32_t m) { _mm512_mask_storeu_ps(p, __mmask16(m), v); }
  // Lanes k in [lo, hi) of p, zero elsewhere (the others are not read: no fault past a buffer's end).
  static __mmask16 range_mask(int64_t lo, int64_t hi) {
    lo = lo < 0 ? 0 : lo;
    hi = hi > W ? W : hi;
    return hi <= lo ? __mmask16(0) : __mmask16(((1u << (hi - lo)) - 1) << lo);
  }
  static T load_range(const float* p, int64_t lo, int64_t hi) { return _mm512_maskz_loadu_ps(range_mask(lo, hi), p); }
  static void store_range(float* p, T v, int64_t lo, int64_t hi) { _mm512_mask_storeu_ps(p, range_mask(lo, hi), v); }
  // [a[1], ..., a[W - 1], next]
  static T shift_in(T a, float next) {
    return _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(_mm512_set1_ps(next)), _mm512_castps_si512(a), 1));
  }
  // The 4W floats of in[0..3] as one array f: out[j][i] = f[4i + j] (interleave4 is the inverse).
  static void deinterleave4(const T in[4], T out[4]) {
    for (int j = 0; j < 4; ++j) {
      const __m512i idx = _mm512_add_epi32(_mm512_set_epi32(28, 24, 20, 16, 12, 8, 4, 0, 28, 24, 20, 16, 12, 8, 4, 0),
                                           _mm512_set1_epi32(j));
      const T lo = _mm512_permutex2var_ps(in[0], idx, in[1]), hi = _mm512_permutex2var_ps(in[2], idx, in[3]);
      out[j] = _mm512_shuffle_f32x4(lo, hi, 0x44);
    }
  }
  static void interleave4(const T in[4], T out[4]) {
    const __m512i pair_lo = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    const __m512i pair_hi = _mm512_add_epi32(pair_lo, _mm512_set1_epi32(8));
    const __m512d a0 = _mm512_castps_pd(_mm512_permutex2var_ps(in[0], pair_lo, in[1]));  // tiles 0-7: c0 c1
    const __m512d a1 = _mm512_castps_pd(_mm512_permutex2var_ps(in[0], pair_hi, in[1]));  // tiles 8-15
    const __m512d b0 = _mm512_castps_pd(_mm512_permutex2var_ps(in[2], pair_lo, in[3]));  // tiles 0-7: c2 c3
    const __m512d b1 = _mm512_castps_pd(_mm512_permutex2var_ps(in[2], pair_hi, in[3]));
    const __m512i quad_lo = _mm512_set_epi64(11, 3, 10, 2, 9, 1, 8, 0), quad_hi = _mm512_set_epi64(15, 7, 14, 6, 13, 5, 12, 4);
    out[0] = _mm512_castpd_ps(_mm512_permutex2var_pd(a0, quad_lo, b0));
    out[1] = _mm512_castpd_ps(_mm512_permutex2var_pd(a0, quad_hi, b0));
    out[2] = _mm512_castpd_ps(_mm512_permutex2var_pd(a1, quad_lo, b1));
    out[3] = _mm512_castpd_ps(_mm512_permutex2var_pd(a1, quad_hi, b1));
  }
  static float reduce(T v) { return _mm512_reduce_add_ps(v); }
  static T gather(const float* base, const uint16_t* idx) {
    __m512i i = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(idx)));
    return _mm512_i32gather_ps(i, base, 4);
  }
  static T gather(const float* base, const int32_t* idx) {
    __m512i i = _mm512_loadu_si512(idx);
    return _mm512_i32gather_ps(i, base, 4);
  }
  struct CB {
    __m512 lo, hi;
    const float* p;
  };
  static CB cb_prep(const float* cb256) { return {_mm512_loadu_ps(cb256), _mm512_loadu_ps(cb256 + 16), cb256}; }
  static __m512i idx16(const uint8_t* cl) {
    return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(cl)));
  }
  static T cb_small(const CB& c, const uint8_t* cl) { return _mm512_permutex2var_ps(c.lo, idx16(cl), c.hi); }
  static T cb_large(const CB& c, const uint8_t* cl) { return _mm512_i32gather_ps(idx16(cl), c.p, 4); }
};
}  // namespace deepcomp
