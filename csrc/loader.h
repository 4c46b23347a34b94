// The native .dcz loader: validates the container (docs/dcz-format.md) and decodes every tensor.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace deepcomp {

struct DenseTensor {
  std::string name;
  uint8_t dtype = 0;  // 1 f32, 2 i64, 3 i32, 4 u8
  std::vector<uint64_t> dims;
  std::vector<uint8_t> data;  // raw little-endian bytes
};

// A coded tensor (CODED or CODED_BLOCK section) decoded into CSR: rows = dims[0], cols = numel / dims[0].
struct CodedTensor {
  std::string name;
  std::vector<uint64_t> dims;
  uint8_t bits = 0, index_bits = 0;
  uint8_t block = 1;  // weights per gap: 1 for CODED, the block length B (4) for CODED_BLOCK
  uint64_t nnz = 0;   // the header's count: kept weights (CODED) or kept blocks (CODED_BLOCK)
  uint64_t entries = 0, weight_stream_bits = 0, gap_stream_bits = 0;
  std::vector<float> codebook;
  std::vector<int64_t> row_ptr;   // rows + 1
  std::vector<int32_t> col;       // nnz, column within the row
  std::vector<uint8_t> cluster;   // nnz, index into codebook
};

struct DczFile {
  uint16_t major = 0, minor = 0;
  std::string meta, graph;          // raw payloads
  bool meta_zlib = false, graph_zlib = false;  // flag bit 0: the payload is a zlib stream of the JSON
  std::vector<DenseTensor> dense;
  std::vector<CodedTensor> coded;
};

uint32_t crc32(const uint8_t* data, size_t n, uint32_t crc = 0);
DczFile parse_dcz(const uint8_t* data, size_t size);
DczFile load_dcz_file(const std::string& path);

}  // namespace deepcomp
