// CSR validation/preprocessing shared by the sparse layers, and the sparse linear driver
// (row partitioning across the pool, x transposition for the batched kernel).
#include "sparse_linear.h"

#include <algorithm>
#include <memory>
#include <string>

#include "common.h"
#include "threadpool.h"

namespace deepcomp {

namespace {
std::string S(int64_t v) { return std::to_string(v); }
}  // namespace

CsrStore::CsrStore(const CsrInput& in, int64_t rows, int64_t cols, const char* what)
    : rows_(rows), cols_(cols) {
  const std::string w(what);
  if (rows < 0 || cols < 0) throw ShapeError(w + ": negative shape");
  if (cols > INT32_MAX) throw ShapeError(w + ": too many columns");
  if (!in.row_ptr || in.row_ptr_len != rows + 1)
    throw ShapeError(w + ": row_ptr must have rows+1 = " + S(rows + 1) + " entries, got " + S(in.row_ptr_len));
  const int64_t nnz = in.col_len;
  if (in.row_ptr[0] != 0) throw ShapeError(w + ": row_ptr[0] must be 0");
  for (int64_t r = 0; r < rows; ++r)
    if (in.row_ptr[r + 1] < in.row_ptr[r]) throw ShapeError(w + ": row_ptr is not monotone at row " + S(r));
  if (in.row_ptr[rows] != nnz)
    throw ShapeError(w + ": row_ptr[-1] = " + S(in.row_ptr[rows]) + " but col has " + S(nnz) + " entries");
  for (int64_t j = 0; j < nnz; ++j)
    if (in.col[j] < 0 || in.col[j] >= cols)
      throw ShapeError(w + ": column index " + S(in.col[j]) + " out of range [0, " + S(cols) + ")");
  const bool fp32 = in.values != nullptr;
  const bool cb = in.cluster != nullptr || in.codebook != nullptr;
  if (fp32 == cb) throw ShapeError(w + ": pass either values=, or cluster= and codebook=");
  if (fp32) {
    if (in.values_len != nnz) throw ShapeError(w + ": values must have nnz = " + S(nnz) + " entries");
    values_.assign(in.values, in.values + nnz);
  } else {
    if (!in.cluster || !in.codebook) throw ShapeError(w + ": the codebook layout needs both cluster= and codebook=");
    if (in.cluster_len != nnz) throw ShapeError(w + ": cluster must have nnz = " + S(nnz) + " entries");
    if (in.codebook_len < 1 || in.codebook_len > 256)
      throw ShapeError(w + ": codebook must have 1..256 entries, got " + S(in.codebook_len));
    k_ = int(in.codebook_len);
    for (int64_t j = 0; j < nnz; ++j)
      if (in.cluster[j] >= k_)
        throw ShapeError(w + ": cluster index " + S(in.cluster[j]) + " >= codebook size " + S(k_));
    cluster_.assign(in.cluster, in.cluster + nnz);
    codebook_.assign(256, 0.f);
    std::copy(in.codebook, in.codebook + k_, codebook_.begin());
  }
  if (in.bias) {
    if (in.bias_len != rows) throw ShapeError(w + ": bias must have " + S(rows) + " entries, got " + S(in.bias_len));
    bias_.assign(in.bias, in.bias + rows);
  }
  row_ptr_.assign(in.row_ptr, in.row_ptr + rows + 1);
  if (cols <= 65536) {
    col16_.resize(nnz);
    for (int64_t j = 0; j < nnz; ++j) col16_[j] = uint16_t(in.col[j]);
  } else {
    col32_.assign(in.col, in.col + nnz);
  }
}

CsrWeights CsrStore::view() const {
  CsrWeights w;
  w.rows = rows_;
  w.cols = cols_;
  w.row_ptr = row_ptr_.data();
  w.col16 = col16_.empty() ? nullptr : col16_.data();
  w.col32 = col16_.empty() ? col32_.data() : nullptr;
  if (codebook_.empty()) {
    w.values = values_.data();
  } else {
    w.cluster = cluster_.data();
    w.codebook = codebook_.data();
    w.k = k_;
  }
  w.bias = bias_.empty() ? nullptr : bias_.data();
  return w;
}

int64_t CsrStore::bytes() const {
  return int64_t(row_ptr_.size() * 8 + col16_.size() * 2 + col32_.size() * 4 + values_.size() * 4 +
                 cluster_.size() + codebook_.size() * 4 + bias_.size() * 4);
}

SparseLinear::SparseLinear(const CsrInput& in, int64_t in_features)
    : w_(in, in.row_ptr_len - 1, in_features, "SparseLinear") {}

namespace {

// Splits rows [0, rows) into n contiguous chunks of about equal cost (nonzeros + a per-row charge).
std::vector<int64_t> split_rows(const int64_t* rp, int64_t rows, int64_t n) {
  constexpr int64_t kRowCost = 16;
  std::vector<int64_t> b(n + 1);
  const int64_t total = rp[rows] + kRowCost * rows;
  b[0] = 0;
  for (int64_t c = 1; c < n; ++c) {
    const int64_t target = total * c / n;
    int64_t lo = b[c - 1], hi = rows;  // first r with rp[r] + kRowCost*r >= target
    while (lo < hi) {
      int64_t mid = (lo + hi) / 2;
      if (rp[mid] + kRowCost * mid < target) lo = mid + 1;
      else hi = mid;
    }
    b[c] = lo;
  }
  b[n] = rows;
  return b;
}

int64_t chunk_count(int64_t rows, int64_t work, int threads) {
  if (threads <= 1) return 1;
  // Enough chunks to balance dynamically, none smaller than ~4k multiply-adds.
  int64_t n = std::min<int64_t>(int64_t(threads) * 8, std::max<int64_t>(1, work / 4096));
  return std::max<int64_t>(1, std::min(n, rows));
}

}  // namespace

void SparseLinear::forward(const float* x, int64_t batch, float* y, bool relu) const {
  const Kernels& K = kernels();
  CsrWeights w = w_.view();
  w.relu = relu;
  const int64_t rows = w.rows, cols = w.cols;
  if (batch <= 0 || rows == 0) return;
  ThreadPool& pool = ThreadPool::instance();
  const int T = pool.num_threads();
  const int64_t nnz = w_.nnz();

  if (batch < 4) {
    // Batch 1..3: per-sample sparse matrix-vector products, gathers of x.
    const int64_t nchunks = chunk_count(rows, (nnz + rows) * batch, T);
    const auto bounds = split_rows(w.row_ptr, rows, nchunks);
    pool.parallel_for(nchunks, T, [&](int64_t c, int) {
      for (int64_t b = 0; b < batch; ++b) K.spmv(w, x + b * cols, y + b * rows, bounds[c], bounds[c + 1]);
    });
    return;
  }

  // Batched: transpose x into tiles of NB = nv*width lanes so each nonzero is one broadcast and nv
  // contiguous loads + FMAs. Keep one tile of x^T within about half an L2.
  const int W = K.width;
  int nv = int(std::min<int64_t>(4, (batch + W - 1) / W));
  while (nv > 1 && cols * nv * W * 4 > (512 << 10)) --nv;
  const int64_t NB = int64_t(nv) * W;
  const int64_t ntiles = (batch + NB - 1) / NB;
  // x^T starts on a cache line, so its rows of NB floats (whole vectors) never split one.
  std::unique_ptr<float[]> buf(new float[size_t(std::max<int64_t>(1, ntiles * cols * NB) + 16)]);
  float* const xT = align_up(buf.get(), 64);

  constexpr int64_t kColBlock = 256;
  const int64_t ncb = (cols + kColBlock - 1) / kColBlock;
  pool.parallel_for(ntiles * ncb, T, [&](int64_t task, int) {
    const int64_t t = task / ncb, c0 = (task % ncb) * kColBlock, c1 = std::min(cols, c0 + kColBlock);
    float* dst = xT + t * cols * NB;
    const int64_t b0 = t * NB;
    for (int64_t i = 0; i < NB; ++i) {
      const int64_t b = b0 + i;
      if (b < batch) {
        const float* src = x + b * cols;
        for (int64_t c = c0; c < c1; ++c) dst[c * NB + i] = src[c];
      } else {
        for (int64_t c = c0; c < c1; ++c) dst[c * NB + i] = 0.f;
      }
    }
  });

  const int64_t nchunks = chunk_count(rows, (nnz + rows) * NB, T);
  const auto bounds = split_rows(w.row_ptr, rows, nchunks);
  pool.parallel_for(ntiles * nchunks, T, [&](int64_t task, int) {
    const int64_t t = task / nchunks, c = task % nchunks;
    const int64_t b0 = t * NB;
    const int nvalid = int(std::min<int64_t>(NB, batch - b0));
    K.spmm(w, xT + t * cols * NB, nv, nvalid, y + b0 * rows, rows, bounds[c], bounds[c + 1]);
  });
}

}  // namespace deepcomp
