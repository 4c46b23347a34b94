"""Block coding of block-pruned, weight-shared tensors: the streams of a CODED_BLOCK section
(docs/dcz-format.md, int8 additions). Torch-free.

A 1x4-block-pruned weight keeps whole blocks ``w[o, 4g:4g+4, tap]``; coding one gap per kept block
(in block order: output channel, then tap, then channel group) instead of one per weight cuts the
gap stream about 4x. The weight stream holds each kept block's cluster indices in channel order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deepcomp.encode import code_lengths, gap_symbols, huffman_decode, huffman_encode, positions_from_gaps
from deepcomp.errors import DczError

BLOCK = 4


def _grid(shape) -> tuple[int, int, int, int]:
    """(rows O, channels C, taps T, channel groups Gb) of a weight shape [O, C, ...]."""
    O, C = int(shape[0]), int(shape[1]) if len(shape) > 1 else 1
    T = int(np.prod(shape[2:], dtype=np.int64)) if len(shape) > 2 else 1
    return O, C, T, -(-C // BLOCK)


def block_layout(shape, positions: np.ndarray):
    """Kept flat row-major ``positions`` of a weight -> (kept block ids in block order, the order
    in which the kept weights enter the weight stream: an index into ``positions``).

    Block (o, t, g) has id ``(o*T + t)*Gb + g``. Raises ValueError unless the positions are exactly
    the union of whole blocks (use deepcomp.prune.block to prune).
    """
    O, C, T, Gb = _grid(shape)
    p = np.asarray(positions, np.int64)
    o, rest = p // (C * T), p % (C * T)
    c, t = rest // T, rest % T
    ids = (o * T + t) * Gb + c // BLOCK
    kept = np.unique(ids)
    width = np.minimum(BLOCK, C - BLOCK * (kept % Gb))
    if int(width.sum()) != p.size:
        raise ValueError("the kept weights are not whole 1x4 blocks along the input channels")
    order = np.lexsort((c, ids))  # block order, then channel order inside a block
    return kept, order


def block_positions(shape, kept: np.ndarray) -> np.ndarray:
    """Kept block ids -> the flat row-major positions of their weights, in weight-stream order."""
    O, C, T, Gb = _grid(shape)
    kept = np.asarray(kept, np.int64)
    g, ot = kept % Gb, kept // Gb
    o, t = ot // T, ot % T
    lane = np.arange(BLOCK)
    c = BLOCK * g[:, None] + lane[None, :]
    pos = (o[:, None] * C + c) * T + t[:, None]
    return pos[c < C]


@dataclass
class EncodedBlockWeight:
    """A CODED_BLOCK section's content, streams still coded (fields as CODED's, nnz = kept blocks)."""

    name: str
    shape: tuple[int, ...]
    bits: int
    index_bits: int
    codebook: np.ndarray
    nnz: int
    entries: int
    weight_lengths: np.ndarray
    gap_lengths: np.ndarray
    weight_stream: bytes
    weight_stream_bits: int
    gap_stream: bytes
    gap_stream_bits: int
    block: int = BLOCK

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def kept(self) -> int:
        """Weights kept (those of the kept blocks); ``nnz`` counts blocks, as the file does."""
        C = _grid(self.shape)[1]
        if C % self.block == 0:
            return self.nnz * self.block
        return int(block_positions(self.shape, self._kept_blocks()).size)

    def _kept_blocks(self) -> np.ndarray:
        """The ascending ids of the kept blocks, from the gap stream, checked against the header."""
        O, C, T, Gb = _grid(self.shape)
        gaps = huffman_decode(self.gap_stream, self.gap_stream_bits, self.gap_lengths, self.entries)
        kept = positions_from_gaps(gaps, self.index_bits)
        if kept.size != self.nnz:
            raise DczError(f"CODED_BLOCK tensor '{self.name}': gap stream holds {kept.size} blocks, the header says {self.nnz}")
        if kept.size and kept[-1] >= O * T * Gb:
            raise DczError(f"CODED_BLOCK tensor '{self.name}': a kept block lies past the tensor's end")
        return kept

    def decode(self):
        """(flat row-major positions int64, cluster indices) of the kept weights, row-major order;
        raises DczError on an inconsistent stream (docs/dcz-format.md, CODED_BLOCK)."""
        pos = block_positions(self.shape, self._kept_blocks())
        if pos.size > self.weight_stream_bits:
            raise DczError(f"CODED_BLOCK tensor '{self.name}': weight stream too short for its kept blocks")
        clusters = huffman_decode(self.weight_stream, self.weight_stream_bits, self.weight_lengths, pos.size)
        if clusters.size and int(clusters.max()) >= self.codebook.size:
            raise DczError(f"CODED_BLOCK tensor '{self.name}': cluster index outside the codebook")
        order = np.argsort(pos, kind="stable")
        return pos[order], clusters[order]

    def dense(self) -> np.ndarray:
        pos, clusters = self.decode()
        out = np.zeros(int(np.prod(self.shape, dtype=np.int64)), np.float32)
        out[pos] = self.codebook[clusters]
        return out.reshape(self.shape)


def encode_block_shared(shared, index_bits: int) -> EncodedBlockWeight:
    """Huffman-code a block-pruned :class:`deepcomp.quantize.SharedWeight` block by block: the
    CODED_BLOCK twin of :func:`deepcomp.encode.encode_shared` (same arguments; ``write_dcz`` writes
    either kind). The weight must have at least 2 dimensions and keep whole 1x4 blocks (a 4x4-pruned
    weight does)."""
    if len(shared.shape) < 2:
        raise ValueError(f"block coding needs a weight of at least 2 dimensions, {shared.name!r} has {tuple(shared.shape)}")
    kept, order = block_layout(shared.shape, shared.positions)
    k = int(shared.codebook.size)
    gaps = gap_symbols(kept, index_bits)
    clusters = np.asarray(shared.clusters)[order]
    glen = code_lengths(np.bincount(gaps, minlength=1 << index_bits))
    wlen = code_lengths(np.bincount(clusters, minlength=k)) if k else np.zeros(0, np.uint8)
    wstream, wbits = huffman_encode(clusters, wlen)
    gstream, gbits = huffman_encode(gaps, glen)
    return EncodedBlockWeight(
        name=shared.name, shape=tuple(int(d) for d in shared.shape), bits=int(shared.bits),
        index_bits=int(index_bits), codebook=np.ascontiguousarray(shared.codebook, np.float32), nnz=int(kept.size),
        entries=int(gaps.size), weight_lengths=wlen, gap_lengths=glen, weight_stream=wstream,
        weight_stream_bits=wbits, gap_stream=gstream, gap_stream_bits=gbits)
