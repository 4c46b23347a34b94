"""Relative-position coding with fillers, Huffman code tables, and bitstreams (docs/dcz-format.md).

Torch-free: the deploy side's Python reader uses the decoding half. Code lengths come from dahuffman
(imported only when encoding); the bit packing and unpacking is native (deepcomp._native).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deepcomp.errors import DczError, RecipeError

MAX_CODE_LEN = 16


def gap_symbols(positions: np.ndarray, index_bits: int) -> np.ndarray:
    """Gap symbols for ascending flat ``positions``: s < G-1 skips s zeros to the next kept weight,
    s = G-1 is a filler that skips G-1 positions and holds no weight (G = 2^index_bits)."""
    if not 1 <= index_bits <= 12:
        raise RecipeError(f"index bits must be in 1..12, got {index_bits}")
    positions = np.asarray(positions, dtype=np.int64)
    G = 1 << index_bits
    if positions.size == 0:
        return np.zeros(0, np.uint16)
    prev = np.empty_like(positions)
    prev[0] = -1
    prev[1:] = positions[:-1]
    zeros = positions - prev - 1
    if (zeros < 0).any():
        raise ValueError("positions must be strictly ascending")
    fillers = zeros // (G - 1)
    rest = zeros - fillers * (G - 1)
    out = np.full(int(positions.size + fillers.sum()), G - 1, dtype=np.uint16)
    out[np.cumsum(fillers + 1) - 1] = rest
    return out


def positions_from_gaps(symbols: np.ndarray, index_bits: int) -> np.ndarray:
    """Inverse of :func:`gap_symbols`."""
    G = 1 << index_bits
    s = np.asarray(symbols, dtype=np.int64)
    filler = s == G - 1
    cursor_after = np.cumsum(np.where(filler, G - 1, s + 1))
    return cursor_after[~filler] - 1


def code_lengths(counts: np.ndarray) -> np.ndarray:
    """Huffman code lengths (uint8, 0 for absent symbols) for symbol ``counts``, via dahuffman.

    One present symbol gets length 1. Lengths are limited to 16 bits by halving the counts (keeping
    every present symbol at least 1) until the tree is shallow enough.
    """
    from dahuffman import HuffmanCodec

    counts = np.asarray(counts, dtype=np.int64)
    lengths = np.zeros(counts.size, dtype=np.uint8)
    present = np.flatnonzero(counts)
    if present.size == 0:
        return lengths
    if present.size == 1:
        lengths[present[0]] = 1
        return lengths
    c = counts.copy()
    while True:
        freqs = {int(s): int(c[s]) for s in present}
        rarest = int(present[np.argmin(c[present])])
        # eof= a real symbol, so dahuffman adds no end-of-file symbol of its own
        table = HuffmanCodec.from_frequencies(freqs, eof=rarest).get_code_table()
        for s, (bits, _) in table.items():
            lengths[s] = bits
        if lengths.max() <= MAX_CODE_LEN:
            return lengths
        c[present] = np.maximum(c[present] // 2, 1)


def huffman_encode(symbols: np.ndarray, lengths: np.ndarray) -> tuple[bytes, int]:
    from deepcomp import _native

    data, nbits = _native.huffman_encode(np.ascontiguousarray(symbols, dtype=np.uint16),
                                         np.ascontiguousarray(lengths, dtype=np.uint8))
    return data.tobytes(), int(nbits)


def huffman_decode(data: bytes, nbits: int, lengths: np.ndarray, count: int) -> np.ndarray:
    from deepcomp import _native

    return _native.huffman_decode(np.frombuffer(data, dtype=np.uint8), int(nbits),
                                  np.ascontiguousarray(lengths, dtype=np.uint8), int(count))


@dataclass
class EncodedWeight:
    """A CODED section's content (docs/dcz-format.md), streams still coded."""

    name: str
    shape: tuple[int, ...]
    bits: int
    index_bits: int
    codebook: np.ndarray          # float32 [k]
    nnz: int
    entries: int
    weight_lengths: np.ndarray    # uint8 [k]
    gap_lengths: np.ndarray       # uint8 [2^index_bits]
    weight_stream: bytes
    weight_stream_bits: int
    gap_stream: bytes
    gap_stream_bits: int

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def kept(self) -> int:
        """Weights kept (as for a CODED_BLOCK tensor, whose ``nnz`` counts blocks)."""
        return self.nnz

    def decode(self):
        """(positions int64 [nnz], clusters uint16 [nnz]); raises DczError on an inconsistent stream."""
        gaps = huffman_decode(self.gap_stream, self.gap_stream_bits, self.gap_lengths, self.entries)
        clusters = huffman_decode(self.weight_stream, self.weight_stream_bits, self.weight_lengths, self.nnz)
        positions = positions_from_gaps(gaps, self.index_bits)
        if positions.size != self.nnz:
            raise DczError(f"CODED tensor '{self.name}': gap stream holds {positions.size} kept positions "
                           f"but the header says {self.nnz}")
        if positions.size and positions[-1] >= self.numel:
            raise DczError(f"CODED tensor '{self.name}': a kept position lies past the tensor's end")
        if clusters.size and int(clusters.max()) >= self.codebook.size:
            raise DczError(f"CODED tensor '{self.name}': cluster index outside the codebook")
        return positions, clusters

    def dense(self) -> np.ndarray:
        positions, clusters = self.decode()
        out = np.zeros(self.numel, dtype=np.float32)
        out[positions] = self.codebook[clusters]
        return out.reshape(self.shape)


def encode_shared(shared, index_bits: int) -> EncodedWeight:
    """Huffman-code a :class:`deepcomp.quantize.SharedWeight`."""
    k = int(shared.codebook.size)
    gaps = gap_symbols(shared.positions, index_bits)
    glen = code_lengths(np.bincount(gaps, minlength=1 << index_bits))
    wlen = code_lengths(np.bincount(shared.clusters, minlength=k)) if k else np.zeros(0, np.uint8)
    wstream, wbits = huffman_encode(shared.clusters, wlen)
    gstream, gbits = huffman_encode(gaps, glen)
    return EncodedWeight(
        name=shared.name, shape=tuple(int(d) for d in shared.shape), bits=int(shared.bits),
        index_bits=int(index_bits), codebook=np.ascontiguousarray(shared.codebook, dtype=np.float32),
        nnz=int(shared.nnz), entries=int(gaps.size), weight_lengths=wlen, gap_lengths=glen,
        weight_stream=wstream, weight_stream_bits=wbits, gap_stream=gstream, gap_stream_bits=gbits)
