#include "huffman.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "common.h"

namespace deepcomp {

std::vector<uint32_t> canonical_codes(const uint8_t* lens, size_t n) {
  int count[kMaxCodeLen + 1] = {0};
  for (size_t s = 0; s < n; ++s) {
    if (lens[s] > kMaxCodeLen)
      throw DczError("Huffman code length " + std::to_string(lens[s]) + " exceeds " +
                     std::to_string(kMaxCodeLen));
    count[lens[s]]++;
  }
  // Kraft: sum 2^-len <= 1, checked in integer units of 2^-kMaxCodeLen.
  uint64_t kraft = 0;
  for (int l = 1; l <= kMaxCodeLen; ++l) kraft += uint64_t(count[l]) << (kMaxCodeLen - l);
  if (kraft > (uint64_t(1) << kMaxCodeLen))
    throw DczError("Huffman code lengths are not a prefix code (Kraft sum exceeds 1)");
  uint32_t next[kMaxCodeLen + 2] = {0};
  uint32_t code = 0;
  count[0] = 0;
  for (int l = 1; l <= kMaxCodeLen; ++l) {
    code = (code + count[l - 1]) << 1;
    next[l] = code;
  }
  std::vector<uint32_t> codes(n, 0);
  for (size_t s = 0; s < n; ++s)
    if (lens[s]) codes[s] = next[lens[s]]++;
  return codes;
}

HuffmanDecoder::HuffmanDecoder(const uint8_t* lens, size_t n) {
  std::vector<uint32_t> codes = canonical_codes(lens, n);
  for (size_t s = 0; s < n; ++s) max_len_ = std::max<int>(max_len_, lens[s]);
  if (max_len_ == 0) return;
  lut_.assign(size_t(1) << max_len_, 0);
  for (size_t s = 0; s < n; ++s) {
    int l = lens[s];
    if (!l) continue;
    size_t first = size_t(codes[s]) << (max_len_ - l);
    size_t span = size_t(1) << (max_len_ - l);
    uint32_t entry = (uint32_t(s) << 8) | uint32_t(l);
    std::fill(lut_.begin() + first, lut_.begin() + first + span, entry);
  }
  fast_bits_ = std::min(max_len_, kFastBits);
  fast_.assign(size_t(1) << fast_bits_, 0);
  for (size_t i = 0; i < fast_.size(); ++i) {
    const uint32_t e = lut_[i << (max_len_ - fast_bits_)];
    if (int(e & 0xff) <= fast_bits_) fast_[i] = e;
  }
}

namespace {
uint64_t load_be64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return __builtin_bswap64(v);
}
}  // namespace

void HuffmanDecoder::decode(const uint8_t* data, uint64_t nbits, uint16_t* out,
                            uint64_t count) const {
  if (count == 0) return;
  if (max_len_ == 0) throw DczError("stream holds symbols but its code table is empty");
  const uint64_t nbytes = (nbits + 7) / 8;
  uint64_t pos = 0;      // bits consumed
  uint64_t buf = 0;      // next bits, MSB aligned; bits past `have` are the stream's next ones or 0
  int have = 0;          // valid bits in buf
  uint64_t byte_at = 0;  // next byte to load
  const int L = max_len_, F = fast_bits_;
  const uint32_t* lut = lut_.data();
  const uint32_t* fast = fast_.data();
  for (uint64_t i = 0; i < count; ++i) {
    if (have < L) {
      if (byte_at + 8 <= nbytes) {  // whole bytes up to 57..64 bits, in one load
        buf |= load_be64(data + byte_at) >> have;
        const int take = (63 - have) >> 3;
        byte_at += uint64_t(take);
        have += 8 * take;
      } else {
        while (have <= 56) {
          const uint64_t b = byte_at < nbytes ? data[byte_at] : 0;  // zeros past the end, checked below
          buf |= b << (56 - have);
          have += 8;
          ++byte_at;
        }
      }
    }
    uint32_t e = fast[buf >> (64 - F)];
    if (e == 0) e = lut[buf >> (64 - L)];
    const int l = int(e & 0xff);
    if (l == 0) throw DczError("invalid Huffman code in stream at bit " + std::to_string(pos));
    pos += uint64_t(l);
    if (pos > nbits)
      throw DczError("Huffman stream ends early: " + std::to_string(i) + " of " +
                     std::to_string(count) + " symbols decoded");
    out[i] = uint16_t(e >> 8);
    buf <<= l;
    have -= l;
  }
}

std::vector<uint8_t> huffman_encode(const uint16_t* syms, size_t count, const uint8_t* lens,
                                    size_t nsym, uint64_t* nbits) {
  std::vector<uint32_t> codes = canonical_codes(lens, nsym);
  uint64_t total = 0;
  for (size_t i = 0; i < count; ++i) {
    uint16_t s = syms[i];
    if (s >= nsym || lens[s] == 0)
      throw ShapeError("symbol " + std::to_string(s) + " has no Huffman code");
    total += lens[s];
  }
  std::vector<uint8_t> out((total + 7) / 8, 0);
  uint64_t acc = 0;  // bits are appended at the low end
  int have = 0;
  size_t w = 0;
  for (size_t i = 0; i < count; ++i) {
    uint16_t s = syms[i];
    acc = (acc << lens[s]) | codes[s];
    have += lens[s];
    while (have >= 8) {
      out[w++] = uint8_t(acc >> (have - 8));
      have -= 8;
    }
    acc &= (uint64_t(1) << have) - 1;
  }
  if (have > 0) out[w++] = uint8_t(acc << (8 - have));
  *nbits = total;
  return out;
}

}  // namespace deepcomp
