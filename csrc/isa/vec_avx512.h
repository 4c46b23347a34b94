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
  static T mul(T a, T b) { return _mm512_mul_ps(a, b); }
  static T max(T a, T b) { return _mm512_max_ps(a, b); }  // b if either is NaN
  static void store_mask(float* p, T v, uint32_t m) { _mm512_mask_storeu_ps(p, __mmask16(m), v); }
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
