// Every micro-kernel of every ISA this CPU runs, against a scalar reference in double (ctest).
// Shapes: empty rows, rows of one nonzero (the pair loop's tail), 100% density, odd counts.
#include <cstdio>
#include <string>

#include "microkernel_check.h"

using namespace deepcomp;

int main() {
  int bad = 0, ran = 0;
  for (const char* isa : {"scalar", "avx2", "avx512"}) {
    const Kernels* k = kernels_for(isa);
    if (!k) {
      std::printf("skip %s: not supported by this CPU\n", isa);
      continue;
    }
    for (int i = 0; i < k->nmicro; ++i) {
      const MicroKernel& mk = k->micro[i];
      int b = 0;
      if (std::string(mk.op) == "conv_sparse") {
        for (double d : {0.0, 0.05, 0.33, 1.0})
          for (int64_t taps : {1, 2, 3, 37})
            b += mktest::check_sparse(mk, k->width, /*OC=*/9, taps, d, uint32_t(1000 * d + taps));
      } else if (std::string(mk.op) == "conv_rt") {
        // 9 and 6 rows: a partial last group; rows 0 and 3 (mod 7) empty, so some groups are sparse.
        for (int64_t oc : {9, 6, 4})
          for (double d : {0.0, 0.05, 0.33, 1.0})
            for (int64_t taps : {1, 3, 37})
              b += mktest::check_rt(mk, k->width, oc, taps, d, uint32_t(100 * d + taps + oc));
      } else if (std::string(mk.op) == "wino_gemm" || std::string(mk.op) == "wino_tail") {
        for (int64_t C : {1, 3, 16, 67}) b += mktest::check_wino(mk, k->width, k->wino_mr, C, uint32_t(C));
      } else {
        for (int64_t K : {1, 2, 27, 64}) b += mktest::check_dense(mk, k->width, K, uint32_t(K));
      }
      ++ran;
      bad += b;
      if (b) std::printf("FAIL %s\n", mk.name);
    }
    int b = 0;
    for (int64_t C : {1, 2, 16, 67}) b += mktest::check_wino_weights(*k, C, uint32_t(C));
    ++ran;
    bad += b;
    if (b) std::printf("FAIL f32_wino_weights__%s\n", isa);
  }
  std::printf("%d micro-kernels checked, %d mismatches\n", ran, bad);
  return bad == 0 && ran > 0 ? 0 : 1;
}
