// The exp-based activations, written once against a small trait AV and compiled once per ISA.
// Include after defining AV (W, T, set1, load, store, add, mul, fma, max, min, div, exp, absv),
// DC_NAME and DC_ENTRY.
#include <cmath>
#include <cstdint>

#include "activation.h"

namespace deepcomp {
namespace {

// Cephes expf on [-87.3, 88.3] (inputs are clamped): 2^n * p(r), r = x - n ln 2.
template <class A>
inline typename A::T exp_poly(typename A::T r) {
  using T = typename A::T;
  T p = A::set1(1.9875691500e-4f);
  p = A::fma(p, r, A::set1(1.3981999507e-3f));
  p = A::fma(p, r, A::set1(8.3334519073e-3f));
  p = A::fma(p, r, A::set1(4.1665795894e-2f));
  p = A::fma(p, r, A::set1(1.6666665459e-1f));
  p = A::fma(p, r, A::set1(5.0000001201e-1f));
  const T r2 = A::mul(r, r);
  return A::add(A::fma(p, r2, r), A::set1(1.f));
}

template <class A>
inline typename A::T sigmoid(typename A::T x) {  // 1 / (1 + exp(-x))
  const auto e = A::exp(A::mul(x, A::set1(-1.f)));
  return A::div(A::set1(1.f), A::add(A::set1(1.f), e));
}

template <class A>
inline typename A::T apply(typename A::T x, Activation kind) {
  using T = typename A::T;
  switch (kind) {
    case Activation::kSigmoid:
      return sigmoid<A>(x);
    case Activation::kSilu:
      return A::mul(x, sigmoid<A>(x));
    case Activation::kExp:  // inputs clamped to [-87.3, 88.3]
      return A::exp(x);
    case Activation::kGeluTanh: {  // x * sigmoid(2 sqrt(2/pi) (x + 0.044715 x^3))
      const T inner = A::mul(A::fma(A::mul(A::set1(0.044715f), x), A::mul(x, x), x), A::set1(1.5957691216f));
      return A::mul(x, sigmoid<A>(inner));
    }
    case Activation::kGeluErf:
    default: {  // 0.5 (x + |x| erf(|x| / sqrt 2)), erf by Abramowitz-Stegun 7.1.26 (error 1.5e-7)
      const T ax = A::absv(x);
      const T z = A::mul(ax, A::set1(0.70710678118f));
      const T t = A::div(A::set1(1.f), A::fma(A::set1(0.3275911f), z, A::set1(1.f)));
      T poly = A::set1(1.061405429f);
      poly = A::fma(poly, t, A::set1(-1.453152027f));
      poly = A::fma(poly, t, A::set1(1.421413741f));
      poly = A::fma(poly, t, A::set1(-0.284496736f));
      poly = A::fma(poly, t, A::set1(0.254829592f));
      poly = A::mul(poly, t);
      const T erf = A::fma(A::mul(poly, A::set1(-1.f)), A::exp(A::mul(A::mul(z, z), A::set1(-1.f))), A::set1(1.f));
      return A::mul(A::set1(0.5f), A::fma(ax, erf, x));
    }
  }
}

void run(float* x, int64_t n, Activation kind) {
  int64_t i = 0;
  for (; i + AV::W <= n; i += AV::W) AV::store(x + i, apply<AV>(AV::load(x + i), kind));
  for (; i < n; ++i) x[i] = apply<ScalarAV>(x[i], kind);
}

const ActivationKernels kTable = {DC_NAME, &run};

}  // namespace

const ActivationKernels* DC_ENTRY() { return &kTable; }

}  // namespace deepcomp
