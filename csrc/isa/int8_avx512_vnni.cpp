// AVX-512 VNNI instantiation of the int8 micro-kernels: 16 lanes, vpdpbusd on zmm.
#include <immintrin.h>

#include <cstdint>

#include "isa/int8_ymm.h"

namespace deepcomp {
namespace {
// The EVEX-coded ymm vpdpbusd (AVX-512 VL): the int8 linear layer's batches of up to 8.
struct TraitVnni256 : Ymm {
  using A = __m256i;
  using B = __m256i;
  static A prep(I a) { return a; }
  static B bw(int32_t w) { return _mm256_set1_epi32(w); }
  static I dp(I acc, A a, B w) { return _mm256_dpbusd_epi32(acc, a, w); }
};

struct TraitVnni512 {
  using Half = TraitVnni256;
  static constexpr int W = 16;
  using I = __m512i;
  using A = __m512i;
  using B = __m512i;
  using F = __m512;
  static I zero() { return _mm512_setzero_si512(); }
  static I load(const uint8_t* p) { return _mm512_loadu_si512(p); }
  static I loadi(const int32_t* p) { return _mm512_loadu_si512(p); }
  static A prep(I a) { return a; }
  static B bw(int32_t w) { return _mm512_set1_epi32(w); }
  static B lw(const int32_t* p) { return _mm512_loadu_si512(p); }
  static I dp(I acc, A a, B w) { return _mm512_dpbusd_epi32(acc, a, w); }
  static I gather(const uint8_t* x, const int32_t* col) {
    return _mm512_i32gather_epi32(_mm512_loadu_si512(col), x, 4);
  }
  static int32_t hsum(I v) { return _mm512_reduce_add_epi32(v); }
  static void store(int32_t* p, I v) { _mm512_storeu_si512(p, v); }
  static void store_bytes(uint8_t* p, I v) { _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm512_cvtepi32_epi8(v)); }
  static I set1i(int32_t v) { return _mm512_set1_epi32(v); }
  static I addi(I a, I b) { return _mm512_add_epi32(a, b); }
  static I subi(I a, I b) { return _mm512_sub_epi32(a, b); }
  static I maxi(I a, I b) { return _mm512_max_epi32(a, b); }
  static I evens(const int32_t* p) {  // p[0], p[2], ..., p[30]
    const __m512i idx = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    return _mm512_permutex2var_epi32(loadi(p), idx, loadi(p + 16));
  }
  static I ori(I a, I b) { return _mm512_or_si512(a, b); }
  static I shl(I a, int s) { return _mm512_sll_epi32(a, _mm_cvtsi32_si128(s)); }
  static F cvt(I v) { return _mm512_cvtepi32_ps(v); }
  static F set1f(float v) { return _mm512_set1_ps(v); }
  static F mulf(F a, F b) { return _mm512_mul_ps(a, b); }
  static F addf(F a, F b) { return _mm512_add_ps(a, b); }
  static F maxf(F a, F b) { return _mm512_max_ps(a, b); }
  static F minf(F a, F b) { return _mm512_min_ps(a, b); }
  static I rint(F y) { return _mm512_cvtps_epi32(y); }  // MXCSR rounding: half to even
  static F loadf(const float* p) { return _mm512_loadu_ps(p); }
  static void storef(float* p, F v) { _mm512_storeu_ps(p, v); }
};
}  // namespace
}  // namespace deepcomp

#define DC8_TRAIT TraitVnni512
#define DC8_NAME "avx512vnni"
#define DC8_ENTRY int8_kernels_avx512vnni
#include "isa/int8_impl.h"
