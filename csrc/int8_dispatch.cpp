// Choice of the int8 micro-kernel path, and the portable scalar instantiation (this file gets no
// -m flags, so it runs on every x86-64 and builds elsewhere).
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "common.h"
#include "int8_kernels.h"

namespace deepcomp {
namespace {
struct TraitScalar {
  static constexpr int W = 1;
  using I = int32_t;
  using A = uint32_t;
  using B = int32_t;
  using F = float;
  static I zero() { return 0; }
  static I load(const uint8_t* p) {
    int32_t v;
    std::memcpy(&v, p, 4);
    return v;
  }
  static I loadi(const int32_t* p) { return *p; }
  static A prep(I a) { return uint32_t(a); }
  static B bw(int32_t w) { return w; }
  static B lw(const int32_t* p) { return *p; }
  static I dp(I acc, A a, B w) { return acc + dot4(a, w); }
  static I gather(const uint8_t* x, const int32_t* col) { return load(x + 4 * int64_t(*col)); }
  static int32_t hsum(I v) { return v; }
  static void store(int32_t* p, I v) { *p = v; }
  static void store_bytes(uint8_t* p, I v) { *p = uint8_t(v); }
  static I set1i(int32_t v) { return v; }
  static I addi(I a, I b) { return a + b; }
  static I subi(I a, I b) { return a - b; }
  static I ori(I a, I b) { return a | b; }
  static I maxi(I a, I b) { return a > b ? a : b; }
  static I evens(const int32_t* p) { return *p; }
  static I shl(I a, int s) { return int32_t(uint32_t(a) << s); }
  static F cvt(I v) { return float(v); }
  static F set1f(float v) { return v; }
  static F mulf(F a, F b) { return a * b; }
  static F addf(F a, F b) { return a + b; }
  // The x86 max/min semantics (second operand when unordered); no NaN reaches them anyway.
  static F maxf(F a, F b) { return a > b ? a : b; }
  static F minf(F a, F b) { return a < b ? a : b; }
  static I rint(F y) { return int32_t(std::lrint(y)); }  // default rounding: half to even (inlined, no libm call)
  static F loadf(const float* p) { return *p; }
  static void storef(float* p, F v) { *p = v; }
};
}  // namespace
}  // namespace deepcomp

#define DC8_TRAIT TraitScalar
#define DC8_NAME "scalar"
#define DC8_ENTRY int8_kernels_scalar
#include "isa/int8_impl.h"

namespace deepcomp {
namespace {

bool cpu_has(const std::string& name) {
#if DEEPCOMP_X86
  __builtin_cpu_init();
  if (name == "avx512vnni")
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
  if (name == "avxvnni") return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("avxvnni");
  if (name == "avx2") return __builtin_cpu_supports("avx2");
#endif
  return name == "scalar";
}

const Int8Kernels* table_for(const std::string& name) {
#if DEEPCOMP_X86
  if (name == "avx512vnni") return int8_kernels_avx512vnni();
  if (name == "avxvnni") return int8_kernels_avxvnni();
  if (name == "avx2") return int8_kernels_avx2();
#endif
  if (name == "scalar") return int8_kernels_scalar();
  return nullptr;
}

const char* const kOrder[] = {"avx512vnni", "avxvnni", "avx2", "scalar"};

const Int8Kernels* choose() {
  if (const char* env = std::getenv("DEEPCOMP_INT8_ISA")) {
    const std::string want(env);
    if (cpu_has(want) && table_for(want)) return table_for(want);
  }
  // DEEPCOMP_ISA (the fp32 kernels' override) caps the int8 path at the same register width.
  int first = 0;
  if (const char* env = std::getenv("DEEPCOMP_ISA")) {
    const std::string cap(env);
    if (cap == "avx2") first = 1;
    if (cap == "scalar") first = 3;
  }
  for (int i = first; i < 4; ++i)
    if (cpu_has(kOrder[i]) && table_for(kOrder[i])) return table_for(kOrder[i]);
  return int8_kernels_scalar();
}

std::atomic<const Int8Kernels*>& current() {
  static std::atomic<const Int8Kernels*> k{choose()};
  return k;
}

}  // namespace

const Int8Kernels& int8_kernels() { return *current().load(std::memory_order_acquire); }

std::string int8_isa_name() { return int8_kernels().name; }

std::string int8_isas_supported() {
  std::string out;
  for (const char* n : kOrder)
    if (cpu_has(n) && table_for(n)) out += std::string(out.empty() ? "" : ",") + n;
  return out;
}

void set_int8_isa(const std::string& name) {
  const Int8Kernels* t = table_for(name);
  if (!t) throw ShapeError("unknown int8 ISA '" + name + "' (expected avx512vnni, avxvnni, avx2 or scalar)");
  if (!cpu_has(name)) throw ShapeError("this CPU does not support int8 ISA '" + name + "'");
  current().store(t, std::memory_order_release);
}

}  // namespace deepcomp
