// Micro-benchmark of every micro-kernel of every ISA this CPU runs, one thread, on a synthetic
// VGG-like problem: 256 output channels, each keeping a `density` share (default 0.33) of 72 taps
// spread over a 32 KB window (24 nonzeros per row, as in one chunk of a VGG-16 layer). Prints kept
// GMAC/s per kernel, median of rounds of this thread's CPU time.
//   microkernel_bench [density] [filter-substring] [window floats, 8192] [rows, 256]
#include <algorithm>
#include <ctime>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "microkernel_check.h"

using namespace deepcomp;

// CPU time of this thread: on a shared machine, wall time of a round also counts the slices other
// processes ran on this core, and rounds longer than a scheduler slice then look several times slower.
double thread_seconds() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

template <class F>
double median_seconds(F&& f, int rounds, int reps) {
  std::vector<double> t;
  for (int r = 0; r < rounds; ++r) {
    const double a = thread_seconds();
    for (int i = 0; i < reps; ++i) f();
    t.push_back((thread_seconds() - a) / reps);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

int main(int argc, char** argv) {
  const double density = argc > 1 ? std::atof(argv[1]) : 0.33;
  const std::string filter = argc > 2 ? argv[2] : "";
  const int64_t window = argc > 3 ? std::atoll(argv[3]) : 8192;  // floats the 72 taps spread over
  const int64_t OC = argc > 4 ? std::atoll(argv[4]) : 256;       // rows per call
  for (const char* isa : {"scalar", "avx2", "avx512"}) {
    const Kernels* k = kernels_for(isa);
    if (!k) continue;
    for (int i = 0; i < k->nmicro; ++i) {
      const MicroKernel& mk = k->micro[i];
      if (!filter.empty() && std::string(mk.name).find(filter) == std::string::npos) continue;
      double macs = 0, s = 0;
      if (std::string(mk.op) == "conv_rt") {
        const int64_t taps = 72, spacing = std::max<int64_t>(1, (window - 16 * 16) / taps / k->width) * k->width;
        mktest::SparseProblem p = mktest::make_sparse(mk, k->width, OC, taps, density, 7, spacing);
        mktest::RtLayout l = mktest::pack_rt(p);
        macs = double(p.seg.back()) * mk.tile * k->width;
        s = median_seconds([&] { mk.conv_rt(l.chunk(), p.in.data(), p.p0, 0, OC / kConvRtRows, OC, p.tmp.data(), true,
                                            nullptr); }, 7, 200);
      } else if (std::string(mk.op) == "conv_sparse") {
        const int64_t taps = 72, spacing = std::max<int64_t>(1, (window - 16 * 16) / taps / k->width) * k->width;
        mktest::SparseProblem p = mktest::make_sparse(mk, k->width, OC, taps, density, 7, spacing);
        CsrWeights w;
        w.values = p.values.data();
        macs = double(p.seg.back()) * mk.tile * k->width;
        s = median_seconds([&] { mk.conv_sparse(w, p.off.data(), p.seg.data(), p.in.data(), p.p0, 0, OC,
                                                p.tmp.data(), true, nullptr); }, 7, 200);
      } else if (std::string(mk.op) == "wino_gemm" || std::string(mk.op) == "wino_tail") {
        // One panel of a 256-channel layer, its tile rows in L2 as in the driver.
        const bool tail = std::string(mk.op) == "wino_tail";
        const int64_t C = 256, lanes = tail ? mk.tile : int64_t(mk.tile) * k->width, vs = 208;
        std::vector<float> w(size_t(2 * C * k->wino_mr), 0.5f), v(size_t(C * vs), 1.f), m(size_t(k->wino_mr * vs));
        macs = double(C) * k->wino_mr * lanes;
        s = median_seconds([&] { mk.wino_gemm(w.data(), v.data(), C, vs, m.data(), vs); }, 7, 200);
      } else {
        const int64_t K = 2304, ocb = 2 * k->width;
        std::vector<float> wp(size_t(K * ocb), 0.5f), in(size_t(K + 64), 1.f), epi(size_t(3 * ocb), 0.f), out(size_t(mk.tile * ocb));
        std::vector<int32_t> off(static_cast<size_t>(K));
        for (int64_t j = 0; j < K; ++j) off[size_t(j)] = int32_t(j);
        macs = double(K) * ocb * mk.tile;
        s = median_seconds([&] { mk.conv_dense(wp.data(), off.data(), K, in.data(), epi.data(), ocb, false, out.data()); },
                           7, 200);
      }
      std::printf("%-32s %8.2f GMAC/s\n", mk.name, macs / s * 1e-9);
    }
  }
  return 0;
}
