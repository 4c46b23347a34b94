// Building Blocks8 (int8_blocks.h) from a dense int8 weight or from CSR arrays.
#include "int8_blocks.h"

#include <algorithm>
#include <string>

#include "common.h"

namespace deepcomp {

namespace {

Blocks8 empty_blocks(int64_t rows, int64_t C, int64_t taps) {
  if (rows < 1 || C < 1 || taps < 1) throw ShapeError("int8 weight: rows, channels and taps must be >= 1");
  Blocks8 b;
  b.rows = rows, b.C = C, b.taps = taps;
  b.row_ptr.assign(size_t(rows + 1), 0);
  b.sum.assign(size_t(rows), 0);
  return b;
}

inline int32_t packed_byte(int8_t v, int64_t c) { return int32_t(uint32_t(uint8_t(v)) << (8 * (c % 4))); }

}  // namespace

Blocks8 blocks8_dense(const int8_t* w, int64_t rows, int64_t C, int64_t taps) {
  Blocks8 b = empty_blocks(rows, C, taps);
  const int64_t nb = b.groups() * taps;
  std::vector<int32_t> row(static_cast<size_t>(nb));
  for (int64_t r = 0; r < rows; ++r) {
    std::fill(row.begin(), row.end(), 0);
    const int8_t* wr = w + r * C * taps;
    for (int64_t c = 0; c < C; ++c)
      for (int64_t t = 0; t < taps; ++t) {
        const int8_t v = wr[c * taps + t];
        b.sum[r] += v;
        b.nonzeros += v != 0;
        row[(c / 4) * taps + t] |= packed_byte(v, c);
      }
    for (int64_t i = 0; i < nb; ++i)
      if (row[i]) {
        b.index.push_back(int32_t(i));
        b.w4.push_back(row[i]);
      }
    b.row_ptr[r + 1] = int64_t(b.w4.size());
  }
  return b;
}

Blocks8 blocks8_coded(const int64_t* row_ptr, const int32_t* col, const uint8_t* cluster, int64_t nnz,
                      const int8_t* table, int64_t K, int64_t rows, int64_t C, int64_t taps) {
  Blocks8 b = empty_blocks(rows, C, taps);
  if (K < 1 || K > 256) throw ShapeError("int8 weight: the table must have 1 to 256 entries per row");
  if (row_ptr[0] != 0 || row_ptr[rows] != nnz)
    throw ShapeError("int8 weight: row_ptr must start at 0 and end at the number of entries");
  const int64_t cols = C * taps, nb = b.groups() * taps;
  // One row at a time: its blocks OR-ed into a scratch row, the touched indices listed in order.
  std::vector<int32_t> row(static_cast<size_t>(nb), 0), touched;
  b.index.reserve(size_t(nnz / 4));  // a 1x4-pruned weight's block count
  b.w4.reserve(size_t(nnz / 4));
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t lo = row_ptr[r], hi = row_ptr[r + 1];
    if (hi < lo || hi > nnz) throw ShapeError("int8 weight: row_ptr must be non-decreasing");
    const int8_t* tr = table + r * K;
    touched.clear();
    int64_t sum = 0, nonzeros = 0;
    int64_t c = 0, base = 0;  // the channel of the last entry and its first column: one division per channel
    for (int64_t e = lo; e < hi; ++e) {
      const int64_t j = col[e];
      if (j < 0 || j >= cols) throw ShapeError("int8 weight: column " + std::to_string(j) + " out of range");
      if (cluster[e] >= K) throw ShapeError("int8 weight: cluster index outside the table");
      const int8_t v = tr[cluster[e]];
      if (v == 0) continue;
      if (taps == 1) {
        c = j, base = j;
      } else if (j < base || j >= base + taps) {
        c = j / taps;
        base = c * taps;
      }
      const int64_t i = (c >> 2) * taps + (j - base);
      sum += v;
      ++nonzeros;
      if (!row[i]) touched.push_back(int32_t(i));
      row[i] |= packed_byte(v, c);
    }
    b.sum[r] = sum;
    b.nonzeros += nonzeros;
    // Kept whole, a 1x4 block's first channel touches it: the list is sorted unless some weight
    // maps to int8 0.
    if (!std::is_sorted(touched.begin(), touched.end())) std::sort(touched.begin(), touched.end());
    for (int32_t i : touched) {
      b.index.push_back(i);
      b.w4.push_back(row[i]);
      row[i] = 0;
    }
    b.row_ptr[r + 1] = int64_t(b.w4.size());
  }
  return b;
}

}  // namespace deepcomp
