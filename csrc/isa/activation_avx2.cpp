// AVX2 + FMA instantiation of the exp-based activations.
#include <immintrin.h>

#include "isa/activation_scalar_av.h"

namespace deepcomp {
namespace {
struct AV {
  static constexpr int W = 8;
  using T = __m256;
  static T set1(float a) { return _mm256_set1_ps(a); }
  static T load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, T v) { _mm256_storeu_ps(p, v); }
  static T add(T a, T b) { return _mm256_add_ps(a, b); }
  static T mul(T a, T b) { return _mm256_mul_ps(a, b); }
  static T div(T a, T b) { return _mm256_div_ps(a, b); }
  static T fma(T a, T b, T c) { return _mm256_fmadd_ps(a, b, c); }
  static T absv(T a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.f), a); }
  static T exp(T x);
};
}  // namespace
}  // namespace deepcomp

#define DC_NAME "avx2"
#define DC_ENTRY activation_kernels_avx2
#include "isa/activation_impl.h"

namespace deepcomp {
namespace {
__m256 AV::exp(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.3f));
  const __m256 n = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504089f), _mm256_set1_ps(0.5f)));
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fmadd_ps(n, _mm256_set1_ps(2.12194440e-4f), r);
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(exp_poly<AV>(r), _mm256_castsi256_ps(e));
}
}  // namespace
}  // namespace deepcomp
