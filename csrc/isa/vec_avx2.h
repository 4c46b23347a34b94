// Vector trait for AVX2 + FMA: 8 floats per register.
#pragma once
#include <immintrin.h>

#include <cstdint>

namespace deepcomp {
struct VecAvx2 {
  static constexpr int W = 8;
  static constexpr int SMALL_K = 8;  // one register, vpermps
  using T = __m256;
  static T zero() { return _mm256_setzero_ps(); }
  // Two weights broadcast from one 8-byte load: a load port saved per pair of nonzeros.
  static void set1_pair(const float* p, T& w0, T& w1) {
    const __m128 q = _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(p)));
    w0 = _mm256_broadcastss_ps(q);
    w1 = _mm256_broadcastss_ps(_mm_movehdup_ps(q));
  }
  static T set1(float a) { return _mm256_set1_ps(a); }
  static T load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, T v) { _mm256_storeu_ps(p, v); }
  // Non-temporal store as two 16-byte halves: large numpy arrays are only 16-byte aligned (and on
  // 128-bit-datapath cores a 32-byte store is two anyway). p: STREAM_ALIGN-aligned.
  static constexpr int STREAM_ALIGN = 16;
  static void stream(float* p, T v) {
    _mm_stream_ps(p, _mm256_castps256_ps128(v));
    _mm_stream_ps(p + 4, _mm256_extractf128_ps(v, 1));
  }
  static T fma(T a, T b, T c) { return _mm256_fmadd_ps(a, b, c); }
  static T add(T a, T b) { return _mm256_add_ps(a, b); }
  static T sub(T a, T b) { return _mm256_sub_ps(a, b); }
  static T mul(T a, T b) { return _mm256_mul_ps(a, b); }
  static T max(T a, T b) { return _mm256_max_ps(a, b); }  // b if either is NaN
  static __m256i lanes_of(uint32_t m) {
    const __m256i bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    return _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(int(m)), bits), bits);
  }
  static void store_mask(float* p, T v, uint32_t m) {
    if (m == 0xff) return _mm256_storeu_ps(p, v);
    _mm256_maskstore_ps(p, lanes_of(m), v);
  }
  // The lanes of m from p, zero elsewhere; the others are not read (no fault past a buffer's end).
  static T load_mask(const float* p, uint32_t m) { return _mm256_maskload_ps(p, lanes_of(m)); }
  // Lanes k in [lo, hi) of p, zero elsewhere (the others are not read: no fault past a buffer's end).
  static uint32_t range_mask(int64_t lo, int64_t hi) {
    lo = lo < 0 ? 0 : lo;
    hi = hi > W ? W : hi;
    return hi <= lo ? 0u : ((1u << (hi - lo)) - 1) << lo;
  }
  static T load_range(const float* p, int64_t lo, int64_t hi) {
    const uint32_t m = range_mask(lo, hi);
    return m == 0xff ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, lanes_of(m));
  }
  static void store_range(float* p, T v, int64_t lo, int64_t hi) { store_mask(p, v, range_mask(lo, hi)); }
  // [a[1], ..., a[W - 1], next]
  static T shift_in(T a, float next) {
    const T r = _mm256_permutevar8x32_ps(a, _mm256_setr_epi32(1, 2, 3, 4, 5, 6, 7, 7));
    return _mm256_blend_ps(r, _mm256_set1_ps(next), 0x80);
  }
  // The 4W floats of in[0..3] as one array f: out[j][i] = f[4i + j] (interleave4 is the inverse).
  // transpose4_lanes leaves the tiles in the order 0 2 4 6 1 3 5 7; one permute restores it.
  static void deinterleave4(const T in[4], T out[4]) {
    T t[4];
    transpose4_lanes(in, t);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int j = 0; j < 4; ++j) out[j] = _mm256_permutevar8x32_ps(t[j], order);
  }
  static void interleave4(const T in[4], T out[4]) {
    const __m256i order = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    T t[4];
    for (int j = 0; j < 4; ++j) t[j] = _mm256_permutevar8x32_ps(in[j], order);
    transpose4_lanes(t, out);
  }
  // 8 x 8 transposes through memory (the depthwise kernel's channel-interleaved layout).
  // load_transposed: out[j] = column j of the block whose row i is the 8 floats at p + i * stride;
  // store_transposed: rows[i][0..8) = (in[0][i], ..., in[7][i]). Both split rows into 128-bit
  // halves so the shuffles stay within lanes (cross-lane permutes are slow on 128-bit-datapath cores).
  static void load_transposed(const float* p, int64_t stride, T out[8]) {
    T a[4], b[4];  // a[i]: columns 0-3 of rows i and i + 4; b[i]: columns 4-7
    for (int i = 0; i < 4; ++i) {
      const float* r = p + i * stride;
      const float* s = p + (i + 4) * stride;
      a[i] = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(r)), _mm_loadu_ps(s), 1);
      b[i] = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(r + 4)), _mm_loadu_ps(s + 4), 1);
    }
    transpose4_lanes(a, out);
    transpose4_lanes(b, out + 4);
  }
  static void store_transposed(float* const rows[8], const T in[8]) {
    T u[4], v[4];  // u[i]: row i, columns 0-3 | row i + 4, columns 0-3; v[i]: the same, columns 4-7
    transpose4_lanes(in, u);
    transpose4_lanes(in + 4, v);
    for (int i = 0; i < 4; ++i) {
      float* r = rows[i];
      float* s = rows[i + 4];
      _mm_storeu_ps(r, _mm256_castps256_ps128(u[i]));
      _mm_storeu_ps(r + 4, _mm256_castps256_ps128(v[i]));
      _mm_storeu_ps(s, _mm256_extractf128_ps(u[i], 1));
      _mm_storeu_ps(s + 4, _mm256_extractf128_ps(v[i], 1));
    }
  }
  // out[j] element i = in[i] element j, separately in each 128-bit half.
  static void transpose4_lanes(const T in[4], T out[4]) {
    const T t0 = _mm256_unpacklo_ps(in[0], in[1]), t1 = _mm256_unpackhi_ps(in[0], in[1]);
    const T t2 = _mm256_unpacklo_ps(in[2], in[3]), t3 = _mm256_unpackhi_ps(in[2], in[3]);
    out[0] = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
    out[1] = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
    out[2] = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
    out[3] = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
  }
  static float reduce(T v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static T gather(const float* base, const uint16_t* idx) {
    __m256i i = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(idx)));
    return _mm256_i32gather_ps(base, i, 4);
  }
  static T gather(const float* base, const int32_t* idx) {
    __m256i i = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(idx));
    return _mm256_i32gather_ps(base, i, 4);
  }
  struct CB {
    __m256 lo;
    const float* p;
  };
  static CB cb_prep(const float* cb256) { return {_mm256_loadu_ps(cb256), cb256}; }
  static __m256i idx8(const uint8_t* cl) {
    return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(cl)));
  }
  static T cb_small(const CB& c, const uint8_t* cl) { return _mm256_permutevar8x32_ps(c.lo, idx8(cl)); }
  static T cb_large(const CB& c, const uint8_t* cl) { return _mm256_i32gather_ps(c.p, idx8(cl), 4); }
};
}  // namespace deepcomp
