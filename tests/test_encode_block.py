"""Block coding (deepcomp.encode_block): a block-pruned, shared weight round-trips exactly, and its
streams are smaller than per-weight coding of the same weight."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deepcomp.encode import encode_shared
from deepcomp.encode_block import block_layout, encode_block_shared
from deepcomp.prune.block import block_mask
from deepcomp.quantize import SharedWeight


def shared_of(shape, sparsity, k, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g)
    mask = block_mask(w.abs(), sparsity).numpy().reshape(-1)
    pos = np.flatnonzero(mask)
    rng = np.random.default_rng(seed)
    return SharedWeight("w", tuple(shape), rng.standard_normal(k).astype(np.float32), pos,
                        rng.integers(0, k, pos.size).astype(np.uint16), 8)


@settings(max_examples=30, deadline=None)
@given(shape=st.sampled_from([(3, 5), (4, 8, 3, 3), (7, 3, 1, 1), (5, 13, 2, 3), (2, 4, 5)]),
       sparsity=st.sampled_from([0.0, 0.3, 0.7, 1.0]), bits=st.integers(2, 6), seed=st.integers(0, 2**31))
def test_round_trip(shape, sparsity, bits, seed):
    s = shared_of(shape, sparsity, 1 << 3, seed)
    e = encode_block_shared(s, bits)
    pos, cl = e.decode()
    np.testing.assert_array_equal(pos, s.positions)
    np.testing.assert_array_equal(cl, s.clusters)
    np.testing.assert_array_equal(e.dense(), s.dense())


def test_smaller_than_per_weight_coding():
    s = shared_of((64, 64, 3, 3), 0.7, 256, 0)
    blocks, weights = encode_block_shared(s, 5), encode_shared(s, 5)
    assert blocks.gap_stream_bits < weights.gap_stream_bits / 3
    assert blocks.weight_stream_bits == weights.weight_stream_bits  # same symbols, other order


def test_rejects_weights_that_are_not_whole_blocks():
    with pytest.raises(ValueError, match="whole 1x4 blocks"):
        block_layout((2, 8), np.array([0, 1, 2]))
