// int8 fully connected layer: batch 1 gathers the input lanes of each row's blocks (or streams a
// dense row); batch N transposes the input to [groups][batch][4] so each block is one broadcast
// against a vector of batch lanes.
#include "int8_linear.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>

#include "common.h"
#include "threadpool.h"

namespace deepcomp {

namespace {
constexpr int64_t kRowsPerTask = 64;
constexpr int64_t kLanePad = 16;  // the widest path's lanes

// The requantization of one value, the same float32 operations as the vector kernels.
inline float requant_value(int32_t acc, const Requant& rq, bool relu) {
  float y = float(acc - rq.comp) * rq.m;
  y = y + rq.b;
  return relu && !(y > 0.f) ? 0.f : y;
}
}  // namespace

Int8Linear::Int8Linear(Blocks8 w, const float* m, const float* b, int32_t zp_in, bool relu, bool u8_out,
                       int32_t zp_out, int kernel, double dense_threshold)
    : out_(w.rows), in_(w.C), G_(w.groups()), relu_(relu), u8_(u8_out), zp_in_(zp_in), zp_out_(zp_out),
      nonzeros_(w.nonzeros) {
  const int64_t out = out_, in = in_;
  if (w.taps != 1) throw ShapeError("Int8Linear: the weight's blocks must be those of a 2-D weight");
  if (2 * in * 255 * 128 > std::numeric_limits<int32_t>::max())
    throw ShapeError("Int8Linear: in_features = " + std::to_string(in) + " is too large for int32 accumulation");
  if (zp_in < 0 || zp_in > 255 || zp_out < 0 || zp_out > 255) throw ShapeError("Int8Linear: zero points must be in [0, 255]");
  if (kernel < 0 || kernel > 2) throw ShapeError("Int8Linear: kernel must be 0 (auto), 1 (sparse) or 2 (dense)");
  rq_.resize(out);
  for (int64_t r = 0; r < out; ++r) {
    if (!(m[r] >= 0.f) || !std::isfinite(m[r]) || !std::isfinite(b[r]))
      throw ShapeError("Int8Linear: multipliers must be finite and >= 0, biases finite (row " + std::to_string(r) + ")");
    rq_[r] = Requant{int32_t(w.sum[r] * zp_in), m[r], b[r]};
  }
  const int64_t kept = int64_t(w.w4.size());
  dense_ = kernel == 2 || (kernel == 0 && double(kept) >= dense_threshold * double(out * G_));
  if (dense_) {
    w4_.assign(size_t(out * G_), 0);
    for (int64_t r = 0; r < out; ++r)
      for (int64_t j = w.row_ptr[r]; j < w.row_ptr[r + 1]; ++j) w4_[r * G_ + w.index[j]] = w.w4[j];
    col_.resize(G_);
    for (int64_t g = 0; g < G_; ++g) col_[g] = int32_t(g);
    row_ptr_.assign(out + 1, 0);
    for (int64_t r = 0; r <= out; ++r) row_ptr_[r] = r * G_;
  } else {
    row_ptr_ = std::move(w.row_ptr);
    col_ = std::move(w.index);
    w4_ = std::move(w.w4);
  }
  pairs_ = std::all_of(w4_.begin(), w4_.end(), pair_bounded);
}

int64_t Int8Linear::bytes() const {
  return int64_t(sizeof(int64_t) * row_ptr_.size() + sizeof(int32_t) * (col_.size() + w4_.size()) +
                 sizeof(Requant) * rq_.size());
}

void Int8Linear::finish(const int32_t* acc, int64_t r, int64_t N, int64_t astride, void* y) const {
  for (int64_t n = 0; n < N; ++n) {
    const float v = requant_value(acc[n * astride], rq_[r], relu_);
    if (u8_) {
      const float q = std::min(std::max(v, float(-zp_out_)), float(255 - zp_out_));
      static_cast<uint8_t*>(y)[n * out_ + r] = uint8_t(int32_t(std::lrint(q)) + zp_out_);
    } else {
      static_cast<float*>(y)[n * out_ + r] = v;
    }
  }
}

void Int8Linear::forward(const uint8_t* x, int64_t N, void* y) const {
  if (N < 1) return;
  const Int8Kernels& base = int8_kernels();
  const Int8Kernels& k = pairs_ && base.pairs ? *base.pairs() : base;
  ThreadPool& pool = ThreadPool::instance();
  const int T = pool.num_threads();
  const int64_t ntasks = (out_ + kRowsPerTask - 1) / kRowsPerTask;
  if (N == 1) {
    // Padded copy: groups past in_ read the zero point, whose weights are 0.
    std::vector<uint8_t> xp(size_t(4 * G_ + 4 * kLanePad), uint8_t(zp_in_));
    std::memcpy(xp.data(), x, size_t(in_));
    pool.parallel_for(ntasks, T, [&](int64_t t, int) {
      for (int64_t r = t * kRowsPerTask; r < std::min(out_, (t + 1) * kRowsPerTask); ++r) {
        const int64_t j = row_ptr_[r];
        const int32_t acc = dense_ ? k.linear_dense1(w4_.data() + j, G_, xp.data())
                                   : k.linear_sparse1(col_.data() + j, w4_.data() + j, row_ptr_[r + 1] - j, xp.data());
        finish(&acc, r, 1, 1, y);
      }
    });
    return;
  }
  const int64_t np = N <= k.small_batch ? k.small_batch : (N + k.width - 1) / k.width * k.width;
  // Each group's lanes start a cache line, so the kernel's loads at random groups never split one.
  std::vector<uint8_t> buf(size_t(4 * G_ * np + 63), uint8_t(zp_in_));
  uint8_t* xT = align_up(buf.data(), 64);
  // lane (g, n) = x[n][4g .. 4g + 3]; a partial last group keeps the zero point past in_
  const int64_t full = in_ / 4;
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t g = 0; g < full; ++g) std::memcpy(xT + 4 * (g * np + n), x + n * in_ + 4 * g, 4);
    if (full < G_) std::memcpy(xT + 4 * (full * np + n), x + n * in_ + 4 * full, size_t(in_ - 4 * full));
  }
  std::vector<int32_t> acc(size_t(T * np));
  pool.parallel_for(ntasks, T, [&](int64_t t, int slot) {
    int32_t* a = acc.data() + slot * np;
    for (int64_t r = t * kRowsPerTask; r < std::min(out_, (t + 1) * kRowsPerTask); ++r) {
      const int64_t j = row_ptr_[r];
      const int32_t* col = dense_ ? col_.data() : col_.data() + j;  // dense rows share one 0..G-1 list
      k.linear_sparseN(col, w4_.data() + j, row_ptr_[r + 1] - j, xT, np, a);
      finish(a, r, N, 1, y);
    }
  });
}

}  // namespace deepcomp
