// AVX-VNNI instantiation of the int8 micro-kernels: 8 lanes, the VEX-coded vpdpbusd on ymm.
#include <immintrin.h>

#include <cstdint>

#include "isa/int8_ymm.h"

namespace deepcomp {
namespace {
struct TraitAvxVnni : Ymm {
  using A = __m256i;
  using B = __m256i;
  static A prep(I a) { return a; }
  static B bw(int32_t w) { return _mm256_set1_epi32(w); }
  static B lw(const int32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static I dp(I acc, A a, B w) { return _mm256_dpbusd_avx_epi32(acc, a, w); }
};
}  // namespace
}  // namespace deepcomp

#define DC8_TRAIT TraitAvxVnni
#define DC8_NAME "avxvnni"
#define DC8_ENTRY int8_kernels_avxvnni
#include "isa/int8_impl.h"
