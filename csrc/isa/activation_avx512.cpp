// AVX-512 instantiation of the exp-based activations.
#include <immintrin.h>

#include "isa/activation_scalar_av.h"

namespace deepcomp {
namespace {
struct AV {
  static constexpr int W = 16;
  using T = __m512;
  static T set1(float a) { return _mm512_set1_ps(a); }
  static T load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, T v) { _mm512_storeu_ps(p, v); }
  static T add(T a, T b) { return _mm512_add_ps(a, b); }
  static T mul(T a, T b) { return _mm512_mul_ps(a, b); }
  static T div(T a, T b) { return _mm512_div_ps(a, b); }
  static T fma(T a, T b, T c) { return _mm512_fmadd_ps(a, b, c); }
  static T absv(T a) { return _mm512_abs_ps(a); }
  static T exp(T x);
};
}  // namespace
}  // namespace deepcomp

#define DC_NAME "avx512"
#define DC_ENTRY activation_kernels_avx512
#include "isa/activation_impl.h"

namespace deepcomp {
namespace {
__m512 AV::exp(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.3f)), _mm512_set1_ps(88.3f));
  const __m512 n = _mm512_roundscale_ps(_mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504089f), _mm512_set1_ps(0.5f)), _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fmadd_ps(n, _mm512_set1_ps(2.12194440e-4f), r);
  const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_mul_ps(exp_poly<AV>(r), _mm512_castsi512_ps(e));
}
}  // namespace
}  // namespace deepcomp
