// The 256-bit integer and float operations shared by the AVX2 and AVX-VNNI int8 traits.
#pragma once
#include <immintrin.h>

#include <cstdint>

namespace deepcomp {
namespace {
struct Ymm {
  static constexpr int W = 8;
  using I = __m256i;
  using F = __m256;
  static I zero() { return _mm256_setzero_si256(); }
  static I load(const uint8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static I loadi(const int32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static I gather(const uint8_t* x, const int32_t* col) {
    return _mm256_i32gather_epi32(reinterpret_cast<const int*>(x), loadi(col), 4);
  }
  static int32_t hsum(I v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
  }
  static void store(int32_t* p, I v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v); }
  static void store_bytes(uint8_t* p, I v) {  // the low byte of each lane (values in 0..255)
    const __m256i idx = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,  //
                                         0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
    const __m256i b = _mm256_shuffle_epi8(v, idx);
    _mm_storel_epi64(reinterpret_cast<__m128i*>(p),
                     _mm_unpacklo_epi32(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1)));
  }
  static I set1i(int32_t v) { return _mm256_set1_epi32(v); }
  static I addi(I a, I b) { return _mm256_add_epi32(a, b); }
  static I subi(I a, I b) { return _mm256_sub_epi32(a, b); }
  static I maxi(I a, I b) { return _mm256_max_epi32(a, b); }
  static I evens(const int32_t* p) {  // p[0], p[2], ..., p[14]
    const __m256 a = _mm256_castsi256_ps(loadi(p)), b = _mm256_castsi256_ps(loadi(p + 8));
    const __m256 e = _mm256_shuffle_ps(a, b, 0x88);  // a0 a2 b0 b2 | a4 a6 b4 b6
    return _mm256_permute4x64_epi64(_mm256_castps_si256(e), 0xD8);
  }
  static I ori(I a, I b) { return _mm256_or_si256(a, b); }
  static I shl(I a, int s) { return _mm256_sll_epi32(a, _mm_cvtsi32_si128(s)); }
  static F cvt(I v) { return _mm256_cvtepi32_ps(v); }
  static F set1f(float v) { return _mm256_set1_ps(v); }
  static F mulf(F a, F b) { return _mm256_mul_ps(a, b); }
  static F addf(F a, F b) { return _mm256_add_ps(a, b); }
  static F maxf(F a, F b) { return _mm256_max_ps(a, b); }
  static F minf(F a, F b) { return _mm256_min_ps(a, b); }
  static I rint(F y) { return _mm256_cvtps_epi32(y); }  // MXCSR rounding: half to even
  static F loadf(const float* p) { return _mm256_loadu_ps(p); }
  static void storef(float* p, F v) { _mm256_storeu_ps(p, v); }
};
}  // namespace
}  // namespace deepcomp
