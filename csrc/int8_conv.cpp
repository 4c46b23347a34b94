// int8 direct convolution over 1x4 blocks: weight preparation, per-shape plans, the threaded loop
// over (image, row block, group of 4 output channels) and the fused max-pool. The arithmetic is in
// the micro-kernels (isa/int8_impl.h).
#include "int8_conv.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>

#include "common.h"
#include "threadpool.h"

namespace deepcomp {

namespace {

std::string S(int64_t v) { return std::to_string(v); }
int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// A task is a row block of about kTaskPositions output positions by kGroupsPerTask groups of 4
// output channels. Inside it the positions are walked in chunks of 8 vectors, and every channel of
// the task runs over a chunk before the next one starts: the chunk's input rows (channel groups x
// taps x 8 vectors, 24 KB for VGG-16 conv1_2 on AVX-512) are loaded from L2 once and then feed 16
// channels from L1, instead of streaming the whole band once per channel.
constexpr int64_t kTaskPositions = 512;
constexpr int64_t kGroupsPerTask = 4;
constexpr int64_t kVecPad = 16;  // the widest path's lanes: scratch rows are read rounded up to it

}  // namespace

Act8Layout act8_layout(int64_t C, int64_t H, int64_t W, int64_t ph, int64_t pw, int64_t sh, int64_t sw) {
  if (C < 1 || H < 1 || W < 1 || ph < 0 || pw < 0 || sh < 1 || sw < 1)
    throw ShapeError("int8 layout: channels, size and stride must be >= 1 and padding >= 0");
  Act8Layout L;
  L.C = C, L.H = H, L.W = W, L.ph = ph, L.pw = pw, L.sh = sh, L.sw = sw;
  L.G = cdiv(C, 4);
  L.Hq = cdiv(H + 2 * ph, sh);
  L.Wq = cdiv(W + 2 * pw, sw);
  L.plane = L.Hq * L.Wq;
  L.group = sh * sw * L.plane;
  // A kernel reads whole vectors from a row's start, up to one row plus one vector past the last plane.
  L.slack = L.Wq + kVecPad;
  if (L.bytes() > (int64_t(1) << 31)) throw ShapeError("int8 layout: one image would exceed 2 GiB");
  return L;
}

void act8_pack(const float* x, int64_t N, const Act8Layout& L, float inv_scale, int32_t zp, uint8_t* out) {
  const int64_t img = L.bytes();
  std::memset(out, int(uint8_t(zp)), size_t(N * img));
  const float lo = float(-zp), hi = float(255 - zp);
  const float magic = 12582912.f;  // 1.5 * 2^23: adding and subtracting it rounds half to even, |v| <= 255
  ThreadPool& pool = ThreadPool::instance();
  pool.parallel_for(N * L.C * L.H, pool.num_threads(), [&](int64_t t, int) {
    const int64_t y = t % L.H, c = (t / L.H) % L.C, n = t / (L.H * L.C);
    const float* xr = x + ((n * L.C + c) * L.H + y) * L.W;
    const int64_t py = y + L.ph;
    uint8_t* row = out + n * img + 4 * ((c / 4) * L.group + (py % L.sh) * L.sw * L.plane + (py / L.sh) * L.Wq) + c % 4;
    for (int64_t xx = 0; xx < L.W; ++xx) {
      const int64_t px = xx + L.pw;
      float v = xr[xx] * inv_scale;
      v = v > lo ? v : lo;  // NaN -> lo
      v = v < hi ? v : hi;
      v = (v + magic) - magic;
      row[4 * ((px % L.sw) * L.plane + px / L.sw)] = uint8_t(int32_t(v) + zp);
    }
  });
}

namespace {
// The zero point into everything of a stride-1 image that a conv's epilogue does not write: the
// padding rows and columns and the slack (the interior is written whole, 4 channels per lane).
void fill_border(const Act8Layout& L, int32_t zp, uint8_t* img) {
  const int v = int(uint8_t(zp));
  const size_t row = size_t(4 * L.Wq);
  for (int64_t g = 0; g < L.G; ++g) {
    uint8_t* p = img + 4 * g * L.group;
    std::memset(p, v, row * size_t(L.ph));
    for (int64_t y = L.ph; y < L.ph + L.H; ++y) {
      std::memset(p + y * row, v, size_t(4 * L.pw));
      std::memset(p + y * row + 4 * (L.pw + L.W), v, size_t(4 * (L.Wq - L.pw - L.W)));
    }
    std::memset(p + (L.ph + L.H) * row, v, row * size_t(L.Hq - L.ph - L.H));
  }
  std::memset(img + 4 * L.G * L.group, v, size_t(4 * L.slack));
}
}  // namespace

struct Int8Conv2d::Plan {
  Act8Layout in, out;
  int64_t OH = 0, OW = 0, OHf = 0, OWf = 0;
  std::vector<int32_t> off;   // byte offset of every sparse block, same order as tap_
  std::vector<int32_t> doff;  // byte offset of every grouped tap, same order as dense_tap_
  int64_t rows = 0, nrb = 0;  // final output rows per task, row blocks
  int64_t crows = 0;          // conv rows per task at most
  int64_t acc_stride = 0, pool_stride = 0;
};

Int8Conv2d::Int8Conv2d(const Blocks8& w, const Conv8Geometry& g, const float* m, const float* b, int32_t zp_in,
                       const Conv8Output& out, int kernel, double dense_threshold)
    : g_(g), out_(out) {
  if (g.in_channels < 1 || g.out_channels < 1) throw ShapeError("Int8Conv2d: channels must be >= 1");
  if (g.kh < 1 || g.kw < 1 || g.kh > 64 || g.kw > 64) throw ShapeError("Int8Conv2d: kernel_size must be in [1, 64]");
  if (g.sh < 1 || g.sw < 1 || g.dh < 1 || g.dw < 1 || g.ph < 0 || g.pw < 0)
    throw ShapeError("Int8Conv2d: stride and dilation must be >= 1, padding >= 0");
  if (zp_in < 0 || zp_in > 255 || out.zp < 0 || out.zp > 255) throw ShapeError("Int8Conv2d: zero points must be in [0, 255]");
  if (out.oph < 0 || out.opw < 0) throw ShapeError("Int8Conv2d: output padding must be >= 0");
  if ((out.pool_k == 0) != (out.pool_s == 0) || out.pool_k < 0 || out.pool_s < 0)
    throw ShapeError("Int8Conv2d: pool kernel and stride must both be >= 1 (or both 0: no pool)");
  if (kernel < 0 || kernel > 2) throw ShapeError("Int8Conv2d: kernel must be 0 (auto), 1 (sparse) or 2 (dense)");
  // The int32 sum of one output, and its zero-point correction, are each at most K * 255 * 128.
  const int64_t K = g.in_channels * g.kh * g.kw;
  if (2 * K * 255 * 128 > std::numeric_limits<int32_t>::max())
    throw ShapeError("Int8Conv2d: in_channels*kh*kw = " + S(K) + " is too large for int32 accumulation");
  const int64_t C = g.in_channels, OC = g.out_channels, taps = g.kh * g.kw;
  if (w.rows != OC || w.C != C || w.taps != taps)
    throw ShapeError("Int8Conv2d: the weight's blocks are not those of a " + S(OC) + "x" + S(C) + "x" + S(g.kh) + "x" +
                     S(g.kw) + " weight");
  gi_ = cdiv(C, 4);
  ocp_ = 4 * cdiv(OC, 4);
  const int64_t ntaps = gi_ * taps;
  nonzeros_ = w.nonzeros;

  rq_.assign(ocp_, Requant{});
  for (int64_t oc = 0; oc < OC; ++oc) {
    if (!(m[oc] >= 0.f) || !std::isfinite(m[oc]) || !std::isfinite(b[oc]))
      throw ShapeError("Int8Conv2d: multipliers must be finite and >= 0, biases finite (channel " + S(oc) + ")");
    rq_[oc] = Requant{int32_t(w.sum[oc] * zp_in), m[oc], b[oc]};
  }
  // Channel oc's kept blocks are w.index / w.w4 [first(oc), first(oc + 1)); padded channels have none.
  auto first = [&](int64_t oc) { return oc < OC ? w.row_ptr[oc] : w.row_ptr[OC]; };

  // Each group of 4 output channels runs either per channel over its own blocks (conv_sparse) or
  // on all 4 at once over the taps any of them keeps (conv_dense4: one input load feeds 4
  // accumulators, about twice the MAC rate, docs/int8.md). The group goes grouped when its kept
  // blocks reach dense_threshold of the 4 x union it would execute.
  const int64_t ngroups = ocp_ / 4;
  dense_.assign(ngroups, 0);
  dense_at_.assign(ngroups + 1, 0);
  row_ptr_.assign(ocp_ + 1, 0);
  kept_ = 0;
  std::vector<int32_t> union_taps;
  for (int64_t q = 0; q < ngroups; ++q) {
    const int64_t lo = first(4 * q), hi = first(4 * q + 4), kept = hi - lo;
    union_taps.clear();
    if (kernel == 2) {
      for (int64_t t = 0; t < ntaps; ++t) union_taps.push_back(int32_t(t));
    } else {
      union_taps.assign(w.index.begin() + lo, w.index.begin() + hi);
      std::sort(union_taps.begin(), union_taps.end());
      union_taps.erase(std::unique(union_taps.begin(), union_taps.end()), union_taps.end());
    }
    kept_ += kept;
    dense_[q] = kernel == 2 ||
                (kernel == 0 && !union_taps.empty() && double(kept) >= dense_threshold * double(4 * union_taps.size()));
    if (dense_[q]) {  // [tap][4] blocks over the union, zero where a channel does not keep the tap
      const size_t base = dense_w_.size();
      dense_tap_.insert(dense_tap_.end(), union_taps.begin(), union_taps.end());
      dense_w_.resize(base + 4 * union_taps.size(), 0);
      for (int o = 0; o < 4; ++o)
        for (int64_t j = first(4 * q + o); j < first(4 * q + o + 1); ++j) {
          const auto at = std::lower_bound(union_taps.begin(), union_taps.end(), w.index[j]) - union_taps.begin();
          dense_w_[base + 4 * size_t(at) + o] = w.w4[j];
        }
    }
    dense_at_[q + 1] = int64_t(dense_tap_.size());
    for (int o = 0; o < 4; ++o) {
      const int64_t oc = 4 * q + o;
      if (!dense_[q]) {
        tap_.insert(tap_.end(), w.index.begin() + first(oc), w.index.begin() + first(oc + 1));
        w4_.insert(w4_.end(), w.w4.begin() + first(oc), w.w4.begin() + first(oc + 1));
      }
      row_ptr_[oc + 1] = int64_t(w4_.size());
    }
  }
}

int64_t Int8Conv2d::bytes() const {
  return int64_t(sizeof(int64_t) * (row_ptr_.size() + dense_at_.size()) +
                 sizeof(int32_t) * (tap_.size() + w4_.size() + dense_tap_.size() + dense_w_.size()) + dense_.size() +
                 sizeof(Requant) * rq_.size());
}

int64_t Int8Conv2d::dense_groups() const {
  int64_t n = 0;
  for (uint8_t d : dense_) n += d;
  return n;
}

Act8Layout Int8Conv2d::in_layout(int64_t H, int64_t W) const {
  return act8_layout(g_.in_channels, H, W, g_.ph, g_.pw, g_.sh, g_.sw);
}

std::pair<int64_t, int64_t> Int8Conv2d::out_size(int64_t H, int64_t W) const {
  const int64_t OH = (H + 2 * g_.ph - g_.dh * (g_.kh - 1) - 1) / g_.sh + 1;
  const int64_t OW = (W + 2 * g_.pw - g_.dw * (g_.kw - 1) - 1) / g_.sw + 1;
  if (H + 2 * g_.ph < g_.dh * (g_.kh - 1) + 1 || W + 2 * g_.pw < g_.dw * (g_.kw - 1) + 1)
    throw ShapeError("Int8Conv2d: input " + S(H) + "x" + S(W) + " is smaller than the kernel");
  if (!out_.pool_k) return {OH, OW};
  if (OH < out_.pool_k || OW < out_.pool_k)
    throw ShapeError("Int8Conv2d: output " + S(OH) + "x" + S(OW) + " is smaller than the pool window");
  return {(OH - out_.pool_k) / out_.pool_s + 1, (OW - out_.pool_k) / out_.pool_s + 1};
}

Act8Layout Int8Conv2d::out_layout(int64_t H, int64_t W) const {
  const auto [oh, ow] = out_size(H, W);
  return act8_layout(g_.out_channels, oh, ow, out_.oph, out_.opw, 1, 1);
}

std::shared_ptr<const Int8Conv2d::Plan> Int8Conv2d::plan_for(int64_t H, int64_t W) const {
  {
    std::lock_guard<std::mutex> lk(mu_);
    auto it = cache_.find({H, W});
    if (it != cache_.end()) return it->second;
  }
  auto p = std::make_shared<Plan>();
  p->in = in_layout(H, W);
  std::tie(p->OHf, p->OWf) = out_size(H, W);
  p->OH = (H + 2 * g_.ph - g_.dh * (g_.kh - 1) - 1) / g_.sh + 1;
  p->OW = (W + 2 * g_.pw - g_.dw * (g_.kw - 1) - 1) / g_.sw + 1;
  if (out_.u8) p->out = out_layout(H, W);
  const Act8Layout& L = p->in;
  auto tap_offset = [&](int64_t t) {
    const int64_t g = t / (g_.kh * g_.kw), ky = (t / g_.kw) % g_.kh, kx = t % g_.kw;
    const int64_t y = ky * g_.dh, x = kx * g_.dw;
    const int64_t pix = g * L.group + ((y % g_.sh) * g_.sw + x % g_.sw) * L.plane + (y / g_.sh) * L.Wq + x / g_.sw;
    return int32_t(4 * pix);
  };
  p->off.resize(tap_.size());
  for (size_t j = 0; j < tap_.size(); ++j) p->off[j] = tap_offset(tap_[j]);
  p->doff.resize(dense_tap_.size());
  for (size_t j = 0; j < dense_tap_.size(); ++j) p->doff[j] = tap_offset(dense_tap_[j]);

  // Final rows per task: about kTaskPositions conv positions, fewer when the channel-group blocks
  // alone give the threads under 4 tasks each.
  const int64_t ps = out_.pool_k ? out_.pool_s : 1, pk = out_.pool_k ? out_.pool_k : 1;
  int64_t rows = std::max<int64_t>(1, kTaskPositions / (L.Wq * ps));
  const int64_t threads = ThreadPool::instance().num_threads();
  const int64_t qblocks = cdiv(ocp_ / 4, kGroupsPerTask);
  if (qblocks < 4 * threads) rows = std::min(rows, std::max<int64_t>(1, p->OHf * qblocks / (4 * threads)));
  p->rows = std::min(rows, p->OHf);
  p->nrb = cdiv(p->OHf, p->rows);
  p->crows = (p->rows - 1) * ps + pk;
  p->acc_stride = p->crows * L.Wq + kVecPad;
  p->pool_stride = out_.pool_k ? p->rows * p->OWf + kVecPad : 0;

  std::lock_guard<std::mutex> lk(mu_);
  return cache_.emplace(std::make_pair(H, W), p).first->second;
}

void Int8Conv2d::forward(const uint8_t* x, int64_t N, int64_t H, int64_t W, void* y) const {
  const auto plan = plan_for(H, W);
  const Plan& p = *plan;
  const Int8Kernels& k = int8_kernels();
  const int64_t in_bytes = p.in.bytes(), ngroups = ocp_ / 4, qblocks = cdiv(ngroups, kGroupsPerTask);
  if (out_.u8)
    for (int64_t n = 0; n < N; ++n) fill_border(p.out, out_.zp, static_cast<uint8_t*>(y) + n * p.out.bytes());
  ThreadPool& pool = ThreadPool::instance();
  const int T = pool.num_threads();
  const int64_t ps = out_.pool_s, pk = out_.pool_k, chunk = 8 * k.width;
  const int64_t group_acc = 4 * p.acc_stride;
  // per slot: the task's sums, the pooled sums, and one row of window-row maxima
  const int64_t per_slot = kGroupsPerTask * group_acc + (pk ? 4 * p.pool_stride + 2 * p.in.Wq + pk + 4 * kVecPad : 0);
  std::vector<int32_t> scratch(size_t(T * per_slot));

  // Pool (on int32: the requantization is monotone, m >= 0, so it commutes with max) and
  // requantize final rows [r0, r1) of group q, whose sums start at acc.
  auto finish = [&](int64_t n, int64_t q, int64_t r0, int64_t r1, const int32_t* acc, int32_t* pooled) {
    const int32_t* src = acc;
    int64_t sstride = p.acc_stride, srow = p.in.Wq;
    if (pk) {
      int32_t* vmax = pooled + 4 * p.pool_stride;
      for (int o = 0; o < 4; ++o)
        for (int64_t r = r0; r < r1; ++r)
          k.max_pool_row(acc + o * p.acc_stride + (r - r0) * ps * p.in.Wq, p.in.Wq, pk, ps, p.OWf, vmax,
                         pooled + o * p.pool_stride + (r - r0) * p.OWf);
      src = pooled, sstride = p.pool_stride, srow = p.OWf;
    }
    for (int64_t r = r0; r < r1; ++r) {
      const int32_t* row = src + (r - r0) * srow;
      if (out_.u8) {
        const Act8Layout& L = p.out;
        uint32_t* o = reinterpret_cast<uint32_t*>(static_cast<uint8_t*>(y) + n * L.bytes()) + q * L.group +
                      (r + L.ph) * L.Wq + L.pw;
        k.requant_u8x4(row, sstride, p.OWf, rq_.data() + 4 * q, out_.zp, out_.relu, o);
        continue;
      }
      for (int o = 0; o < 4 && 4 * q + o < g_.out_channels; ++o) {
        float* dst = static_cast<float*>(y) + ((n * g_.out_channels + 4 * q + o) * p.OHf + r) * p.OWf;
        k.requant_f32(row + o * sstride, p.OWf, rq_[4 * q + o], out_.relu, dst);
      }
    }
  };

  pool.parallel_for(N * p.nrb * qblocks, T, [&](int64_t task, int slot) {
    const int64_t qb = task % qblocks, rb = (task / qblocks) % p.nrb, n = task / (qblocks * p.nrb);
    const int64_t q0 = qb * kGroupsPerTask, q1 = std::min(ngroups, q0 + kGroupsPerTask);
    const int64_t r0 = rb * p.rows, r1 = std::min(p.OHf, r0 + p.rows);
    const int64_t c0 = pk ? r0 * ps : r0, c1 = pk ? (r1 - 1) * ps + pk : r1;
    int32_t* acc = scratch.data() + slot * per_slot;
    const uint8_t* in = x + n * in_bytes + 4 * c0 * p.in.Wq;
    const int64_t npos = (c1 - c0) * p.in.Wq;
    for (int64_t at = 0; at < npos; at += chunk) {
      const int64_t len = std::min(chunk, npos - at);
      for (int64_t q = q0; q < q1; ++q) {
        int32_t* a = acc + (q - q0) * group_acc + at;
        if (dense_[q]) {
          const int64_t t0 = dense_at_[q];
          k.conv_dense4(p.doff.data() + t0, dense_w_.data() + 4 * t0, dense_at_[q + 1] - t0, in + 4 * at, len, a,
                        p.acc_stride);
          continue;
        }
        for (int o = 0; o < 4; ++o) {
          const int64_t j = row_ptr_[4 * q + o];
          k.conv_sparse(p.off.data() + j, w4_.data() + j, row_ptr_[4 * q + o + 1] - j, in + 4 * at, len,
                        a + o * p.acc_stride);
        }
      }
    }
    for (int64_t q = q0; q < q1; ++q)
      finish(n, q, r0, r1, acc + (q - q0) * group_acc, acc + kGroupsPerTask * group_acc);
  });
}

}  // namespace deepcomp
