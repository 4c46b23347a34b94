// Exp-based activations: ISA choice and threads (see activation.h); the binding is in bind_activation.cpp.
#include "activation.h"

#include <algorithm>
#include <string>

#include "common.h"
#include "dispatch.h"
#include "threadpool.h"

namespace deepcomp {

namespace {

const ActivationKernels& activation_kernels() {
#if DEEPCOMP_X86
  const std::string isa = isa_name();
  if (isa == "avx512") return *activation_kernels_avx512();
  if (isa == "avx2") return *activation_kernels_avx2();
#endif
  return *activation_kernels_scalar();
}

constexpr int64_t kChunk = 16384;  // floats per task: 64 KB, a few per thread on a small tensor

}  // namespace

void activation_inplace(float* x, int64_t n, Activation kind) {
  const ActivationKernels& k = activation_kernels();
  const int64_t tasks = (n + kChunk - 1) / kChunk;
  if (tasks <= 1) return k.run(x, n, kind);
  ThreadPool::instance().parallel_for(tasks, ThreadPool::instance().num_threads(), [&](int64_t t, int) {
    const int64_t b = t * kChunk;
    k.run(x + b, std::min(kChunk, n - b), kind);
  });
}

}  // namespace deepcomp
