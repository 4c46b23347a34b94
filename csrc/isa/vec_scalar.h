// Vector trait for the portable fallback: one float per "register".
#pragma once
#include <cstdint>

namespace deepcomp {
struct VecScalar {
  static constexpr int W = 1;
  static constexpr int SMALL_K = 256;
  using T = float;
  static T zero() { return 0.f; }
  static void set1_pair(const float* p, T& w0, T& w1) {
    w0 = p[0];
    w1 = p[1];
  }
  static T set1(float a) { return a; }
  static T load(const float* p) { return *p; }
  static void store(float* p, T v) { *p = v; }
  static constexpr int STREAM_ALIGN = 4;
  static void stream(float* p, T v) { *p = v; }
  static T fma(T a, T b, T c) { return a * b + c; }
  static T add(T a, T b) { return a + b; }
  static T sub(T a, T b) { return a - b; }
  static T mul(T a, T b) { return a * b; }
  static T max(T a, T b) { return a > b ? a : b; }  // b if either is NaN, like maxps
  static void store_mask(float* p, T v, uint32_t m) {
    if (m & 1) *p = v;
  }
  static T load_range(const float* p, int64_t lo, int64_t hi) { return lo <= 0 && hi > 0 ? *p : 0.f; }
  static void store_range(float* p, T v, int64_t lo, int64_t hi) {
    if (lo <= 0 && hi > 0) *p = v;
  }
  static T shift_in(T, float next) { return next; }
  static void deinterleave4(const T in[4], T out[4]) {
    for (int j = 0; j < 4; ++j) out[j] = in[j];
  }
  static void interleave4(const T in[4], T out[4]) {
    for (int j = 0; j < 4; ++j) out[j] = in[j];
  }
  static float reduce(T v) { return v; }
  static T gather(const float* base, const uint16_t* idx) { return base[idx[0]]; }
  static T gather(const float* base, const int32_t* idx) { return base[idx[0]]; }
  struct CB {
    const float* p;
  };
  static CB cb_prep(const float* cb256) { return {cb256}; }
  static T cb_small(const CB& c, const uint8_t* cl) { return c.p[cl[0]]; }
  static T cb_large(const CB& c, const uint8_t* cl) { return c.p[cl[0]]; }
};
}  // namespace deepcomp
