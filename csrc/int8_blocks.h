// The kept 1x4 blocks of an int8 weight, the form both int8 layers are built from: from a dense
// int8 tensor, or straight from a file's CSR arrays (cluster indices and a per-channel table of
// the centroids' int8 values), so loading never materialises the dense weight (docs/int8.md).
#pragma once
#include <cstdint>
#include <vector>

namespace deepcomp {

// A weight [rows, C, taps] (a linear layer: taps = 1). Block i of row r covers input channels
// 4g..4g+3 at tap t, index (g * taps + t); its 4 int8 weights are packed in one int32, channel
// 4g + j in byte j. Per row the blocks are in increasing index; a block whose 4 weights are all
// 0 is not kept.
struct Blocks8 {
  int64_t rows = 0, C = 0, taps = 0;
  std::vector<int64_t> row_ptr;    // [rows + 1]
  std::vector<int32_t> index, w4;  // per kept block
  std::vector<int64_t> sum;        // per row: the sum of its int8 weights (the zero-point correction)
  int64_t nonzeros = 0;            // int8 weights != 0
  int64_t groups() const { return (C + 3) / 4; }
};

// w: [rows, C, taps] int8, row-major.
Blocks8 blocks8_dense(const int8_t* w, int64_t rows, int64_t C, int64_t taps);

// A CSR weight over columns c * taps + t: row r's entries are row_ptr[r] .. row_ptr[r + 1], entry e
// at column col[e] with cluster index cluster[e], whose int8 value in row r is table[r * K +
// cluster[e]]. Throws ShapeError for arrays that do not describe such a weight.
Blocks8 blocks8_coded(const int64_t* row_ptr, const int32_t* col, const uint8_t* cluster, int64_t nnz,
                      const int8_t* table, int64_t K, int64_t rows, int64_t C, int64_t taps);

}  // namespace deepcomp
