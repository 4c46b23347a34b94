// AVX2 instantiation of the int8 micro-kernels, for CPUs without VNNI: 8 lanes. vpmaddubsw would
// saturate its int16 pair sums (255*127*2 > 32767), so the input's even and odd bytes are widened
// to int16 and multiplied with vpmaddwd against the sign-extended weights: exact for any weights.
// Its pairs table (int8_pairs_avx2.cpp) has the faster conv kernels for pair-bounded blocks.
#include <immintrin.h>

#include <cstdint>

#include "isa/int8_ymm.h"

namespace deepcomp {
namespace {
struct TraitAvx2 : Ymm {
  struct A {
    __m256i e, o;  // bytes 0 and 2, bytes 1 and 3 of each lane, as int16
  };
  using B = A;
  static A prep(I a) {
    return {_mm256_and_si256(a, _mm256_set1_epi16(0x00FF)), _mm256_srli_epi16(a, 8)};
  }
  static B split(__m256i w) { return {_mm256_srai_epi16(_mm256_slli_epi16(w, 8), 8), _mm256_srai_epi16(w, 8)}; }
  static B bw(int32_t w) { return split(_mm256_set1_epi32(w)); }
  static B lw(const int32_t* p) { return split(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static I dp(I acc, A a, B w) {
    return _mm256_add_epi32(acc, _mm256_add_epi32(_mm256_madd_epi16(a.e, w.e), _mm256_madd_epi16(a.o, w.o)));
  }
};
}  // namespace
}  // namespace deepcomp

#define DC8_TRAIT TraitAvx2
#define DC8_NAME "avx2"
#define DC8_ENTRY int8_kernels_avx2
#define DC8_PAIRS int8_kernels_avx2_pairs
#include "isa/int8_impl.h"
