// Canonical Huffman codes given by code lengths (docs/dcz-format.md, "Huffman codes").
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace deepcomp {

constexpr int kMaxCodeLen = 16;

// Canonical codes for the given lengths (0 = unused symbol). Throws DczError when a length exceeds
// kMaxCodeLen or the lengths break Kraft's inequality.
std::vector<uint32_t> canonical_codes(const uint8_t* lens, size_t n);

// Table-driven decoder: one lookup of the next kFastBits bits yields (symbol, length) for the short
// codes (a table that stays in L1), one of max_len bits for the rest.
class HuffmanDecoder {
 public:
  HuffmanDecoder(const uint8_t* lens, size_t n);
  // Decodes exactly `count` symbols from a stream of `nbits` bits (MSB first). Throws DczError if the
  // stream ends early or holds a bit pattern that is no code.
  void decode(const uint8_t* data, uint64_t nbits, uint16_t* out, uint64_t count) const;
  bool empty() const { return max_len_ == 0; }

 private:
  static constexpr int kFastBits = 11;
  int max_len_ = 0, fast_bits_ = 0;
  std::vector<uint32_t> lut_;   // (symbol << 8) | length by the next max_len bits; length 0 = no code
  std::vector<uint32_t> fast_;  // the same by the next fast_bits bits, 0 for longer codes
};

// Encodes symbols with the canonical code of `lens`; returns the bytes and sets nbits.
std::vector<uint8_t> huffman_encode(const uint16_t* syms, size_t count, const uint8_t* lens,
                                    size_t nsym, uint64_t* nbits);

}  // namespace deepcomp
