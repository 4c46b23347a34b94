// ISA selection, and the portable scalar instantiation of the microkernels (this file is compiled
// without any -m flags, so it runs on every x86-64 and builds elsewhere).
#include "dispatch.h"

#include <atomic>
#include <cstdlib>

#include "common.h"
#include "isa/vec_scalar.h"
#define DC_VEC VecScalar
#define DC_NAME "scalar"
#define DC_ENTRY kernels_scalar
#include "isa/kernels_impl.h"

namespace deepcomp {

namespace {

bool cpu_has(const std::string& name) {
#if DEEPCOMP_X86
  __builtin_cpu_init();
  if (name == "avx512")
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  if (name == "avx2") return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
  return name == "scalar";
}

const Kernels* table_for(const std::string& name) {
#if DEEPCOMP_X86
  if (name == "avx512") return kernels_avx512();
  if (name == "avx2") return kernels_avx2();
#endif
  if (name == "scalar") return kernels_scalar();
  return nullptr;
}

const Kernels* choose() {
  if (const char* env = std::getenv("DEEPCOMP_ISA")) {
    std::string want(env);
    if (!want.empty() && cpu_has(want) && table_for(want)) return table_for(want);
    // An unusable override falls through to the best supported ISA rather than failing at import.
  }
  for (const char* n : {"avx512", "avx2"})
    if (cpu_has(n) && table_for(n)) return table_for(n);
  return kernels_scalar();
}

std::atomic<const Kernels*>& current() {
  static std::atomic<const Kernels*> k{choose()};
  return k;
}

}  // namespace

bool isa_supported(const std::string& name) { return cpu_has(name) && table_for(name); }
const Kernels* kernels_for(const std::string& name) { return isa_supported(name) ? table_for(name) : nullptr; }

const Kernels& kernels() { return *current().load(std::memory_order_acquire); }

std::string isa_name() { return kernels().name; }

void set_isa(const std::string& name) {
  if (name != "avx512" && name != "avx2" && name != "scalar")
    throw ShapeError("unknown ISA '" + name + "' (expected avx512, avx2 or scalar)");
  // The CPU check comes first: building an ISA's table runs that ISA's code (SIGILL without it).
  if (!cpu_has(name)) throw ShapeError("this CPU does not support ISA '" + name + "'");
  const Kernels* t = table_for(name);
  if (!t) throw ShapeError("ISA '" + name + "' is not built into this extension");
  current().store(t, std::memory_order_release);
}

}  // namespace deepcomp
