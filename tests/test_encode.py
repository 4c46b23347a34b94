import numpy as np
import pytest
from dahuffman.huffmancodec import PrefixCodec
from hypothesis import given, settings, strategies as st

from deepcomp import _native
from deepcomp.encode import (code_lengths, encode_shared, gap_symbols, huffman_decode, huffman_encode,
                             positions_from_gaps)
from deepcomp.errors import DczError
from deepcomp.quantize import share_layer


@st.composite
def positions_st(draw):
    n = draw(st.integers(1, 3000))
    density = draw(st.sampled_from([0.0, 0.001, 0.05, 0.5, 1.0]))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    return n, np.flatnonzero(rng.random(n) < density)


@settings(max_examples=200, deadline=None)
@given(pos=positions_st(), index_bits=st.integers(1, 8))
def test_gap_coding_with_fillers_round_trips(pos, index_bits):
    n, positions = pos
    syms = gap_symbols(positions, index_bits)
    G = 1 << index_bits
    assert syms.size >= positions.size
    assert syms.max(initial=0) <= G - 1
    np.testing.assert_array_equal(positions_from_gaps(syms, index_bits), positions)
    # fillers appear exactly where a gap exceeds what the index can hold
    if positions.size:
        zeros = np.diff(np.concatenate([[-1], positions])) - 1
        assert (syms == G - 1).sum() == (zeros // (G - 1)).sum()


def test_filler_example():
    # 3-bit index: G-1 = 7 is the filler that skips 7 positions
    np.testing.assert_array_equal(gap_symbols(np.array([0, 1, 5, 20]), 3), [0, 0, 3, 7, 7, 0])


def _dahuffman_table(lengths):
    codes = _native.canonical_codes(lengths)
    return {int(s): (int(lengths[s]), int(codes[s])) for s in np.flatnonzero(lengths)}


@settings(max_examples=150, deadline=None)
@given(data=st.lists(st.integers(0, 40), min_size=0, max_size=2000), skew=st.booleans())
def test_huffman_round_trip_and_agrees_with_dahuffman(data, skew):
    syms = np.array(data, dtype=np.uint16)
    if skew and syms.size:
        syms = (syms ** 2 % 41).astype(np.uint16)
    lengths = code_lengths(np.bincount(syms, minlength=41))
    stream, nbits = huffman_encode(syms, lengths)
    assert len(stream) == (nbits + 7) // 8
    np.testing.assert_array_equal(huffman_decode(stream, nbits, lengths, syms.size), syms)
    if syms.size:
        # dahuffman decodes the same stream with the same canonical table
        codec = PrefixCodec(_dahuffman_table(lengths), eof=object())
        decoded = codec.decode(stream)[: syms.size]
        assert decoded == syms.tolist()
        # Huffman is optimal: no worse than a fixed-width code
        distinct = np.unique(syms).size
        assert nbits <= syms.size * max(1, int(np.ceil(np.log2(distinct)))) + 0


def test_huffman_edge_cases():
    # one symbol: length 1, one bit per symbol
    lengths = code_lengths(np.array([0, 0, 7]))
    assert lengths.tolist() == [0, 0, 1]
    stream, nbits = huffman_encode(np.full(7, 2, np.uint16), lengths)
    assert nbits == 7
    np.testing.assert_array_equal(huffman_decode(stream, nbits, lengths, 7), np.full(7, 2))
    # empty
    lengths = code_lengths(np.zeros(4, np.int64))
    stream, nbits = huffman_encode(np.zeros(0, np.uint16), lengths)
    assert (stream, nbits) == (b"", 0)
    assert huffman_decode(b"", 0, lengths, 0).size == 0


def test_code_lengths_are_limited_to_16_bits():
    fib = [1, 1]
    while len(fib) < 40:
        fib.append(fib[-1] + fib[-2])
    lengths = code_lengths(np.array(fib))
    assert lengths.max() <= 16 and (lengths > 0).all()
    assert np.sum(2.0 ** -lengths.astype(float)) <= 1.0


def test_decoder_reads_codes_longer_than_its_fast_table():
    """Codes of 12..14 bits (past the decoder's 11-bit first table) between short ones, across the
    stream's last bytes (its bytewise refill) and its 8-byte loads; dahuffman is the oracle."""
    fib = [1, 1]
    while len(fib) < 30:
        fib.append(fib[-1] + fib[-2])
    lengths = code_lengths(np.array(fib[::-1]))
    assert lengths.max() >= 14 and (lengths > 11).sum() >= 10
    syms = np.random.default_rng(0).permutation(np.repeat(np.arange(30), 40)).astype(np.uint16)
    for tail in (syms, syms[:3], syms[:17]):
        stream, nbits = huffman_encode(tail, lengths)
        np.testing.assert_array_equal(huffman_decode(stream, nbits, lengths, tail.size), tail)
        codec = PrefixCodec(_dahuffman_table(lengths), eof=object())
        assert codec.decode(stream)[: tail.size] == tail.tolist()


def test_decoder_rejects_bad_streams():
    lengths = code_lengths(np.array([5, 3, 1, 1]))
    syms = np.array([0, 1, 2, 3, 0, 0], np.uint16)
    stream, nbits = huffman_encode(syms, lengths)
    with pytest.raises(DczError, match="ends early"):
        huffman_decode(stream, nbits - 1, lengths, syms.size)
    with pytest.raises(DczError, match="Kraft"):
        huffman_decode(stream, nbits, np.array([1, 1, 1], np.uint8), 3)
    with pytest.raises(DczError):
        huffman_decode(stream, nbits, np.array([17, 1], np.uint8), 1)
    with pytest.raises(DczError, match="invalid Huffman code"):
        huffman_decode(b"\xff", 8, np.array([1, 2, 0], np.uint8), 2)  # code '11' unused


@pytest.mark.parametrize("density", [0.0, 0.003, 0.3, 1.0])
@pytest.mark.parametrize("index_bits", [1, 4, 5])
def test_encode_shared_round_trip(density, index_bits):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((20, 50)).astype(np.float32)
    mask = rng.random(w.shape) < density
    sw = share_layer("fc.weight", w, mask, 5)
    e = encode_shared(sw, index_bits)
    assert e.nnz == mask.sum()
    np.testing.assert_array_equal(e.dense(), sw.dense())


def test_all_weights_equal():
    w = np.full((8, 8), 0.25, np.float32)
    e = encode_shared(share_layer("w", w, None, 4), 4)
    assert e.codebook.tolist() == [0.25]
    assert e.weight_stream_bits == 64  # one symbol: one bit each
    np.testing.assert_array_equal(e.dense(), w)
