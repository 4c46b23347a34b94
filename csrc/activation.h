// Elementwise activations that need exp (sigmoid, SiLU, GELU exact and tanh; exp itself, for softmax), in place on float32,
// vectorised per ISA (isa/activation_impl.h) with a Cephes-style exp; torch's results within 1e-6
// relative. The executor applies them to a producer's fresh output (fusion) without numpy passes.
#pragma once
#include <cstdint>

namespace deepcomp {

enum class Activation : int { kSigmoid = 0, kSilu = 1, kGeluErf = 2, kGeluTanh = 3, kExp = 4 };  // kExp: softmax

struct ActivationKernels {
  const char* name;
  void (*run)(float* x, int64_t n, Activation kind);  // whole vectors and the scalar tail
};

const ActivationKernels* activation_kernels_scalar();
#if DEEPCOMP_X86
const ActivationKernels* activation_kernels_avx2();
const ActivationKernels* activation_kernels_avx512();
#endif

// In place on x[0 .. n), split over the thread pool.
void activation_inplace(float* x, int64_t n, Activation kind);

}  // namespace deepcomp
