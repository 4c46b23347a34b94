// Sparse fully connected layer: y = x W^T + b with W in CSR (fp32 values or codebook indices).
#pragma once
#include <cstdint>
#include <vector>

#include "dispatch.h"

namespace deepcomp {

// Borrowed views of the CSR arrays as the .dcz loader produces them (validated by the constructors).
struct CsrInput {
  const int64_t* row_ptr = nullptr;
  int64_t row_ptr_len = 0;
  const int32_t* col = nullptr;
  int64_t col_len = 0;
  const float* values = nullptr;  // fp32 layout, or
  int64_t values_len = -1;
  const uint8_t* cluster = nullptr;  // codebook layout
  int64_t cluster_len = -1;
  const float* codebook = nullptr;
  int64_t codebook_len = -1;
  const float* bias = nullptr;
  int64_t bias_len = -1;
};

// Preprocessed CSR weights owned by a layer: row_ptr copied, columns narrowed to uint16 when they
// fit, codebook padded to 256 entries. Validates everything (ShapeError).
class CsrStore {
 public:
  CsrStore(const CsrInput& in, int64_t rows, int64_t cols, const char* what);
  CsrWeights view() const;
  int64_t rows() const { return rows_; }
  int64_t cols() const { return cols_; }
  int64_t nnz() const { return int64_t(col32_.size() + col16_.size()); }
  int64_t bytes() const;
  const std::vector<int32_t>& col32() const { return col32_; }
  const std::vector<uint16_t>& col16() const { return col16_; }
  const std::vector<int64_t>& row_ptr() const { return row_ptr_; }
  bool has_bias() const { return !bias_.empty(); }
  // Original column of nonzero j.
  int64_t col_at(int64_t j) const { return col16_.empty() ? col32_[j] : col16_[j]; }

 private:
  int64_t rows_, cols_;
  std::vector<int64_t> row_ptr_;
  std::vector<uint16_t> col16_;
  std::vector<int32_t> col32_;
  std::vector<float> values_;
  std::vector<uint8_t> cluster_;
  std::vector<float> codebook_;  // 256 entries when the codebook layout is used
  int k_ = 0;
  std::vector<float> bias_;
};

class SparseLinear {
 public:
  SparseLinear(const CsrInput& in, int64_t in_features);
  // x: [batch, cols] row-major; y: [batch, rows]. Releases nothing itself; call without the GIL.
  void forward(const float* x, int64_t batch, float* y, bool relu) const;
  const CsrStore& store() const { return w_; }

 private:
  CsrStore w_;
};

}  // namespace deepcomp
