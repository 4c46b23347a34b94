#include "loader.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <exception>
#include <memory>
#include <unordered_set>

#include "common.h"
#include "huffman.h"
#include "threadpool.h"

namespace deepcomp {

namespace {

const uint8_t kMagic[8] = {0x89, 'D', 'C', 'Z', '\r', '\n', 0x1a, '\n'};
constexpr uint16_t kMajor = 1;
constexpr uint16_t kMinor = 1;  // the newest minor this loader knows (1: CODED_BLOCK, int8 attributes)
constexpr uint32_t kMaxSections = 1000000;
constexpr uint64_t kAlign = 8;
constexpr uint32_t kFlagZlib = 1;
constexpr uint32_t kCoded = 4, kCodedBlock = 5;
constexpr uint8_t kBlock = 4;  // CODED_BLOCK's only block length

// CRC32 (zlib polynomial), slicing-by-8: eight table lookups per 8 input bytes.
struct CrcTable {
  uint32_t t[8][256];
  CrcTable() {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; ++i)
      for (int s = 1; s < 8; ++s) t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xff];
  }
};

template <typename T>
T rd(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));  // the format is little-endian, as is every target we build for
  return v;
}

// Bounds-checked reader over one payload.
class Cursor {
 public:
  Cursor(const uint8_t* p, uint64_t n, const std::string& what) : p_(p), n_(n), what_(what) {}
  void need(uint64_t k) const {
    if (k > n_ - off_)
      throw DczError(what_ + ": truncated (needs " + std::to_string(k) + " more bytes at offset " +
                     std::to_string(off_) + ", payload has " + std::to_string(n_) + ")");
  }
  template <typename T>
  T get() {
    need(sizeof(T));
    T v = rd<T>(p_ + off_);
    off_ += sizeof(T);
    return v;
  }
  const uint8_t* take(uint64_t k) {
    need(k);
    const uint8_t* r = p_ + off_;
    off_ += k;
    return r;
  }
  uint64_t offset() const { return off_; }
  uint64_t left() const { return n_ - off_; }
  const std::string& what() const { return what_; }

 private:
  const uint8_t* p_;
  uint64_t n_;
  uint64_t off_ = 0;
  std::string what_;
};

// Strict UTF-8 (no overlongs, no surrogates, nothing past U+10FFFF), as Python's decoder demands.
bool valid_utf8(const uint8_t* s, size_t n) {
  size_t i = 0;
  while (i < n) {
    uint8_t b = s[i];
    size_t extra;
    uint32_t cp;
    if (b < 0x80) {
      ++i;
      continue;
    } else if ((b & 0xE0) == 0xC0) {
      extra = 1, cp = b & 0x1F;
    } else if ((b & 0xF0) == 0xE0) {
      extra = 2, cp = b & 0x0F;
    } else if ((b & 0xF8) == 0xF0) {
      extra = 3, cp = b & 0x07;
    } else {
      return false;
    }
    if (i + extra >= n) return false;  // the sequence runs past the end
    for (size_t k = 1; k <= extra; ++k) {
      if ((s[i + k] & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (s[i + k] & 0x3F);
    }
    static const uint32_t min_cp[4] = {0, 0x80, 0x800, 0x10000};
    if (cp < min_cp[extra] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += extra + 1;
  }
  return true;
}

std::string read_name(Cursor& c) {
  uint16_t len = c.get<uint16_t>();
  if (len == 0 || len > 1024) throw DczError(c.what() + ": bad tensor name length " + std::to_string(len));
  const uint8_t* s = c.take(len);
  if (!valid_utf8(s, len)) throw DczError(c.what() + ": tensor name is not UTF-8");
  return std::string(reinterpret_cast<const char*>(s), len);
}

void check_kraft_and_lengths(const uint8_t* lens, size_t n, const std::string& what) {
  try {
    canonical_codes(lens, n);
  } catch (const DczError& e) {
    throw DczError(what + ": " + e.what());
  }
}

DenseTensor parse_dense(const uint8_t* p, uint64_t n, size_t idx) {
  Cursor c(p, n, "DENSE section " + std::to_string(idx));
  DenseTensor t;
  t.name = read_name(c);
  Cursor c2(p, n, "DENSE tensor '" + t.name + "'");
  c2.take(c.offset());
  t.dtype = c2.get<uint8_t>();
  size_t item;
  switch (t.dtype) {
    case 1: item = 4; break;
    case 2: item = 8; break;
    case 3: item = 4; break;
    case 4: item = 1; break;
    default: throw DczError(c2.what() + ": unknown dtype " + std::to_string(t.dtype));
  }
  uint8_t ndim = c2.get<uint8_t>();
  if (ndim > 8) throw DczError(c2.what() + ": ndim " + std::to_string(ndim) + " exceeds 8");
  unsigned __int128 numel = 1;
  for (int i = 0; i < ndim; ++i) {
    uint32_t d = c2.get<uint32_t>();
    t.dims.push_back(d);
    numel *= d;
  }
  uint64_t pad = (8 - c2.offset() % 8) % 8;
  const uint8_t* zeros = c2.take(pad);
  for (uint64_t i = 0; i < pad; ++i)
    if (zeros[i]) throw DczError(c2.what() + ": nonzero padding");
  unsigned __int128 bytes = numel * item;
  if (bytes != c2.left())
    throw DczError(c2.what() + ": data holds " + std::to_string(c2.left()) +
                   " bytes but its shape needs " +
                   (bytes > UINT64_MAX ? std::string("more than 2^64") : std::to_string(uint64_t(bytes))));
  const uint8_t* d = c2.take(uint64_t(bytes));
  t.data.assign(d, d + uint64_t(bytes));
  return t;
}

// CODED_BLOCK's streams into CSR: gaps give the ascending ids (o*T + t)*Gb + g of the kept blocks,
// the weight stream each block's cluster indices in channel order; a row's weights are sorted by
// column (channel-major, then tap) as CODED's are.
void decode_blocks(CodedTensor& t, const std::vector<uint16_t>& gaps, const uint8_t* wlens, uint16_t k,
                   const uint8_t* wstream, const std::string& what) {
  const uint64_t rows = t.dims[0], C = t.dims[1];
  uint64_t T = 1;
  for (size_t i = 2; i < t.dims.size(); ++i) T *= t.dims[i];
  const uint64_t Gb = (C + kBlock - 1) / kBlock, row_blocks = T * Gb, units = rows * row_blocks;
  const uint64_t filler = (uint64_t(1) << t.index_bits) - 1;
  std::vector<uint64_t> ids;
  ids.reserve(t.nnz);
  uint64_t cursor = 0, W = 0;
  for (uint64_t s : gaps) {
    if (s == filler) {
      cursor += filler;
      continue;
    }
    const uint64_t id = cursor + s;
    if (id >= units) throw DczError(what + ": a kept block lies past the tensor's end");
    if (ids.size() >= t.nnz) throw DczError(what + ": more kept blocks than the header says");
    ids.push_back(id);
    W += std::min<uint64_t>(kBlock, C - kBlock * (id % Gb));
    cursor = id + 1;
  }
  if (ids.size() != t.nnz) throw DczError(what + ": gap stream holds fewer kept blocks than the header says");
  if (W > t.weight_stream_bits) throw DczError(what + ": weight stream too short for its kept blocks");
  std::vector<uint16_t> clusters(W);
  HuffmanDecoder(wlens, k).decode(wstream, t.weight_stream_bits, clusters.data(), W);
  t.row_ptr.assign(rows + 1, 0);
  t.col.resize(W);
  t.cluster.resize(W);
  std::vector<uint64_t> row;  // (column << 8) | cluster of one row's weights, sorted by column
  uint64_t w = 0, out = 0;
  for (size_t i = 0; i < ids.size();) {
    const uint64_t o = ids[i] / row_blocks;
    row.clear();
    for (; i < ids.size() && ids[i] / row_blocks == o; ++i) {
      const uint64_t rest = ids[i] % row_blocks, tap = rest / Gb, g = rest % Gb;
      const uint64_t width = std::min<uint64_t>(kBlock, C - kBlock * g);
      for (uint64_t l = 0; l < width; ++l) {
        const uint16_t cl = clusters[w++];
        if (cl >= k) throw DczError(what + ": cluster index outside the codebook");
        row.push_back(((kBlock * g + l) * T + tap) << 8 | cl);
      }
    }
    // Block order is tap-major; CSR wants channel-major. Within one tap the channels ascend, so a
    // 2-D weight (one tap) is in order already and a conv's row only needs its taps interleaved.
    if (!std::is_sorted(row.begin(), row.end())) std::sort(row.begin(), row.end());
    for (uint64_t v : row) {
      t.col[out] = int32_t(v >> 8);
      t.cluster[out] = uint8_t(v & 0xff);
      ++out;
    }
    t.row_ptr[o + 1] = int64_t(row.size());
  }
  for (uint64_t r = 0; r < rows; ++r) t.row_ptr[r + 1] += t.row_ptr[r];
}

// A CODED payload, or with `blocked` a CODED_BLOCK one: the same fields plus the block byte after the
// name, ndim >= 2, and nnz, the gaps and the weight stream in units of blocks (docs/dcz-format.md).
CodedTensor parse_coded(const uint8_t* p, uint64_t n, size_t idx, bool blocked) {
  const std::string kind = blocked ? "CODED_BLOCK" : "CODED";
  Cursor c0(p, n, kind + " section " + std::to_string(idx));
  CodedTensor t;
  t.name = read_name(c0);
  Cursor c(p, n, kind + " tensor '" + t.name + "'");
  c.take(c0.offset());
  if (blocked) {
    t.block = c.get<uint8_t>();
    if (t.block != kBlock)
      throw DczError(c.what() + ": block length " + std::to_string(t.block) + ", only 4 is defined");
  }
  uint8_t ndim = c.get<uint8_t>();
  const int min_ndim = blocked ? 2 : 1;
  if (ndim < min_ndim || ndim > 8)
    throw DczError(c.what() + ": ndim " + std::to_string(ndim) + " not in " + std::to_string(min_ndim) + "..8");
  unsigned __int128 numel = 1;
  for (int i = 0; i < ndim; ++i) {
    uint32_t d = c.get<uint32_t>();
    if (d == 0) throw DczError(c.what() + ": zero dimension");
    t.dims.push_back(d);
    numel *= d;
    if (numel > (unsigned __int128)(uint64_t(1) << 36)) throw DczError(c.what() + ": more than 2^36 elements");
  }
  const uint64_t rows = t.dims[0];
  if (rows > (uint64_t(1) << 22)) throw DczError(c.what() + ": more than 2^22 rows");
  const uint64_t total = uint64_t(numel);
  const uint64_t cols = total / rows;
  if (cols > uint64_t(INT32_MAX)) throw DczError(c.what() + ": rows longer than 2^31 - 1");
  t.bits = c.get<uint8_t>();
  t.index_bits = c.get<uint8_t>();
  if (t.bits < 1 || t.bits > 8) throw DczError(c.what() + ": weight bits " + std::to_string(t.bits) + " not in 1..8");
  if (t.index_bits < 1 || t.index_bits > 12)
    throw DczError(c.what() + ": index bits " + std::to_string(t.index_bits) + " not in 1..12");
  uint16_t k = c.get<uint16_t>();
  if (k > (1u << t.bits)) throw DczError(c.what() + ": codebook of " + std::to_string(k) + " exceeds 2^bits");
  t.nnz = c.get<uint64_t>();
  t.entries = c.get<uint64_t>();
  if (blocked) {  // blocks of the grid [dims0][prod(dims[2:])][ceil(dims1 / B)]
    const uint64_t units = total / t.dims[1] * ((t.dims[1] + kBlock - 1) / kBlock);
    if (t.nnz > units) throw DczError(c.what() + ": more kept blocks than blocks");
  } else if (t.nnz > total) {
    throw DczError(c.what() + ": more nonzeros than elements");
  }
  if (t.entries < t.nnz) throw DczError(c.what() + ": fewer entries than nonzeros");
  if ((k == 0) != (t.nnz == 0)) throw DczError(c.what() + ": codebook size and nonzero count disagree");
  const uint8_t* cb = c.take(uint64_t(k) * 4);
  t.codebook.resize(k);
  if (k) std::memcpy(t.codebook.data(), cb, size_t(k) * 4);
  const uint8_t* wlens = c.take(k);
  const uint64_t G = uint64_t(1) << t.index_bits;
  const uint8_t* glens = c.take(G);
  t.weight_stream_bits = c.get<uint64_t>();
  t.gap_stream_bits = c.get<uint64_t>();
  // Each code is at least one bit: these bound every count by the bytes really present.
  if (t.weight_stream_bits > c.left() * 8 || t.gap_stream_bits > c.left() * 8)
    throw DczError(c.what() + ": stream lengths exceed the payload");
  if (t.nnz > t.weight_stream_bits) throw DczError(c.what() + ": weight stream too short for its nonzeros");
  if (t.entries > t.gap_stream_bits) throw DczError(c.what() + ": gap stream too short for its entries");
  const uint64_t wbytes = (t.weight_stream_bits + 7) / 8, gbytes = (t.gap_stream_bits + 7) / 8;
  const uint8_t* wstream = c.take(wbytes);
  const uint8_t* gstream = c.take(gbytes);
  if (c.left() != 0) throw DczError(c.what() + ": " + std::to_string(c.left()) + " trailing bytes");
  check_kraft_and_lengths(wlens, k, c.what() + " weight code");
  check_kraft_and_lengths(glens, size_t(G), c.what() + " gap code");

  // Decode: gaps into positions, clusters as they come.
  std::vector<uint16_t> gaps(t.entries);
  HuffmanDecoder(glens, size_t(G)).decode(gstream, t.gap_stream_bits, gaps.data(), t.entries);
  if (blocked) {
    decode_blocks(t, gaps, wlens, k, wstream, c.what());
    return t;
  }
  std::vector<uint16_t> clusters(t.nnz);
  HuffmanDecoder(wlens, k).decode(wstream, t.weight_stream_bits, clusters.data(), t.nnz);
  t.row_ptr.assign(rows + 1, 0);
  t.col.resize(t.nnz);
  t.cluster.resize(t.nnz);
  uint64_t cursor = 0, w = 0, row = 0, row_end = cols;
  const uint64_t filler = G - 1;
  for (uint64_t e = 0; e < t.entries; ++e) {
    uint64_t s = gaps[e];
    if (s == filler) {
      cursor += filler;
      continue;
    }
    uint64_t pos = cursor + s;
    if (pos >= total) throw DczError(c.what() + ": a kept position lies past the tensor's end");
    if (w >= t.nnz) throw DczError(c.what() + ": more kept positions than nonzeros");
    if (pos >= row_end) {  // positions ascend: move to the row holding pos without a division per entry
      row = pos / cols;
      row_end = (row + 1) * cols;
    }
    t.row_ptr[row + 1]++;
    t.col[w] = int32_t(pos - (row_end - cols));
    uint16_t cl = clusters[w];
    if (cl >= k) throw DczError(c.what() + ": cluster index outside the codebook");
    t.cluster[w] = uint8_t(cl);
    ++w;
    cursor = pos + 1;
  }
  if (w != t.nnz) throw DczError(c.what() + ": gap stream holds fewer kept positions than nonzeros");
  for (uint64_t r = 0; r < rows; ++r) t.row_ptr[r + 1] += t.row_ptr[r];
  return t;
}

}  // namespace

uint32_t crc32(const uint8_t* data, size_t n, uint32_t crc) {
  static const CrcTable table;
  crc = ~crc;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint32_t lo = rd<uint32_t>(data + i) ^ crc, hi = rd<uint32_t>(data + i + 4);
    crc = table.t[7][lo & 0xff] ^ table.t[6][(lo >> 8) & 0xff] ^ table.t[5][(lo >> 16) & 0xff] ^
          table.t[4][lo >> 24] ^ table.t[3][hi & 0xff] ^ table.t[2][(hi >> 8) & 0xff] ^
          table.t[1][(hi >> 16) & 0xff] ^ table.t[0][hi >> 24];
  }
  for (; i < n; ++i) crc = table.t[0][(crc ^ data[i]) & 0xff] ^ (crc >> 8);
  return ~crc;
}

// out[j] = parse(j) for j < n, the tensors in parallel (Huffman decoding is most of a load); the
// error of the lowest j that fails is the one thrown, as a serial loop would.
template <class Parse>
void decode_coded(size_t n, const Parse& parse, std::vector<CodedTensor>& out) {
  out.resize(n);
  std::vector<std::exception_ptr> err(n);
  ThreadPool& pool = ThreadPool::instance();
  pool.parallel_for(int64_t(n), pool.num_threads(), [&](int64_t j, int) {
    try {
      out[size_t(j)] = parse(size_t(j));
    } catch (...) {
      err[size_t(j)] = std::current_exception();
    }
  });
  for (const auto& e : err)
    if (e) std::rethrow_exception(e);
}

DczFile parse_dcz(const uint8_t* data, size_t size) {
  if (size < 32) throw DczError("not a .dcz file: " + std::to_string(size) + " bytes, shorter than the 32-byte header");
  if (std::memcmp(data, kMagic, 8) != 0) throw DczError("not a .dcz file: bad magic bytes");
  DczFile f;
  f.major = rd<uint16_t>(data + 8);
  f.minor = rd<uint16_t>(data + 10);
  if (f.major != kMajor)
    throw DczError("unsupported .dcz major version " + std::to_string(f.major) + " (this deepcomp reads " +
                   std::to_string(kMajor) + ")");
  if (crc32(data, 28) != rd<uint32_t>(data + 28)) throw DczError("header checksum mismatch: the file is corrupted");
  uint32_t nsec = rd<uint32_t>(data + 12);
  uint64_t fsize = rd<uint64_t>(data + 16);
  if (fsize != size)
    throw DczError("file is " + std::to_string(size) + " bytes but its header says " + std::to_string(fsize) +
                   " (truncated or padded)");
  if (nsec < 2 || nsec > kMaxSections) throw DczError("bad section count " + std::to_string(nsec));
  uint64_t table_end = 32 + uint64_t(nsec) * 32;
  if (table_end > size) throw DczError("section table runs past the end of the file");
  if (crc32(data + 32, size_t(nsec) * 32) != rd<uint32_t>(data + 24))
    throw DczError("section table checksum mismatch: the file is corrupted");
  uint64_t prev_end = table_end;
  int n_meta = 0, n_graph = 0;
  std::unordered_set<std::string> names;
  struct Pending {
    const uint8_t* p;
    uint64_t len;
    uint32_t index;
    bool blocked;
  };
  std::vector<Pending> coded;  // decoded after the table is checked, on the thread pool
  for (uint32_t i = 0; i < nsec; ++i) {
    const uint8_t* e = data + 32 + uint64_t(i) * 32;
    uint32_t type = rd<uint32_t>(e), flags = rd<uint32_t>(e + 4);
    uint64_t off = rd<uint64_t>(e + 8), len = rd<uint64_t>(e + 16);
    uint32_t crc = rd<uint32_t>(e + 24), reserved = rd<uint32_t>(e + 28);
    std::string where = "section " + std::to_string(i);
    if ((flags & ~kFlagZlib) != 0 || reserved != 0) throw DczError(where + ": unknown flags or nonzero reserved field");
    if ((flags & kFlagZlib) && type != 1 && type != 2) throw DczError(where + ": only META and GRAPH may be zlib-compressed");
    if (off % kAlign != 0 || off < prev_end || off > size || len > size - off)
      throw DczError(where + ": payload offset/length outside the file or out of order");
    for (uint64_t z = prev_end; z < off; ++z)
      if (data[z]) throw DczError(where + ": nonzero bytes in the padding before its payload");
    prev_end = off + len;
    const uint8_t* p = data + off;
    if (crc32(p, size_t(len)) != crc) throw DczError(where + ": checksum mismatch: the file is corrupted");
    switch (type) {
      case 1:
        f.meta.assign(reinterpret_cast<const char*>(p), size_t(len));
        f.meta_zlib = flags & kFlagZlib;
        ++n_meta;
        break;
      case 2:
        f.graph.assign(reinterpret_cast<const char*>(p), size_t(len));
        f.graph_zlib = flags & kFlagZlib;
        ++n_graph;
        break;
      case 3: {
        f.dense.push_back(parse_dense(p, len, i));
        if (!names.insert(f.dense.back().name).second)
          throw DczError("tensor '" + f.dense.back().name + "' appears twice");
        break;
      }
      case kCodedBlock:
        if (f.minor < 1) throw DczError(where + ": a CODED_BLOCK section in a file of minor version 0");
        [[fallthrough]];
      case kCoded:
        coded.push_back({p, len, i, type == kCodedBlock});
        break;
      default:
        if (f.minor <= kMinor) throw DczError(where + ": unknown section type " + std::to_string(type));
    }
  }
  for (uint64_t z = prev_end; z < size; ++z)
    if (data[z]) throw DczError("nonzero bytes after the last section");
  if (n_meta != 1 || n_graph != 1) throw DczError("a .dcz file needs exactly one META and one GRAPH section");
  decode_coded(coded.size(), [&](size_t j) { return parse_coded(coded[j].p, coded[j].len, coded[j].index, coded[j].blocked); },
               f.coded);
  for (const CodedTensor& t : f.coded)
    if (!names.insert(t.name).second) throw DczError("tensor '" + t.name + "' appears twice");
  return f;
}

DczFile load_dcz_file(const std::string& path) {
  std::unique_ptr<FILE, int (*)(FILE*)> fp(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!fp) throw DczError("cannot open '" + path + "'");
  if (std::fseek(fp.get(), 0, SEEK_END) != 0) throw DczError("cannot seek in '" + path + "'");
  long n = std::ftell(fp.get());
  if (n < 0) throw DczError("cannot size '" + path + "'");
  std::rewind(fp.get());
  std::vector<uint8_t> buf(static_cast<size_t>(n));
  if (n && std::fread(buf.data(), 1, size_t(n), fp.get()) != size_t(n)) throw DczError("cannot read '" + path + "'");
  return parse_dcz(buf.data(), buf.size());
}

}  // namespace deepcomp
