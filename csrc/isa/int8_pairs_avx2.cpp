// AVX2 int8 micro-kernels for pair-bounded blocks (int8_kernels.h, kPairLimit): vpmaddubsw sums each
// pair of u8 x s8 products in int16, exact while the pair's weights satisfy |w0| + |w1| <= 128, and
// vpmaddwd against ones widens the pairs to int32. Two multiply-port operations per 32 products, as
// the general AVX2 path, but no widening of the input and weight bytes: about 1.5x its conv speed
// (docs/int8.md). Int8Conv2d splits the blocks that exceed the bound into two that do not; only its
// conv kernels run on this table.
#include <immintrin.h>

#include <cstdint>

#include "isa/int8_ymm.h"

namespace deepcomp {
namespace {
struct TraitAvx2Pairs : Ymm {
  using A = __m256i;
  using B = __m256i;
  static A prep(I a) { return a; }
  static B bw(int32_t w) { return _mm256_set1_epi32(w); }
  static B lw(const int32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static I dp(I acc, A a, B w) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(a, w), _mm256_set1_epi16(1)));
  }
};
}  // namespace
}  // namespace deepcomp

#define DC8_TRAIT TraitAvx2Pairs
#define DC8_NAME "avx2-pairs"
#define DC8_ENTRY int8_kernels_avx2_pairs
#define DC8_TILE_NV 3  // 12 sums, 4 weights, the input and the ones fill 17 ymm: 1.12x over 2 on VGG-16 (docs/int8.md)
#include "isa/int8_impl.h"
