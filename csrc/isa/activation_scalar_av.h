// The scalar trait of isa/activation_impl.h (the tail of every ISA, and the portable build).
#pragma once
#include <algorithm>
#include <cmath>

namespace deepcomp {
namespace {
struct ScalarAV {
  static constexpr int W = 1;
  using T = float;
  static T set1(float a) { return a; }
  static T load(const float* p) { return *p; }
  static void store(float* p, T v) { *p = v; }
  static T add(T a, T b) { return a + b; }
  static T mul(T a, T b) { return a * b; }
  static T div(T a, T b) { return a / b; }
  static T fma(T a, T b, T c) { return a * b + c; }
  static T absv(T a) { return std::fabs(a); }
  static T exp(T a) { return std::exp(std::min(88.3f, std::max(-87.3f, a))); }
};
}  // namespace
}  // namespace deepcomp
