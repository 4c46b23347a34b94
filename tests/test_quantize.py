import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from deepcomp.errors import RecipeError
from deepcomp.quantize import INITS, kmeans_1d, share_layer

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=150, deadline=None)
@given(values=arrays(np.float32, st.integers(0, 400), elements=finite), bits=st.integers(1, 8),
       init=st.sampled_from(INITS))
def test_kmeans_properties(values, bits, init):
    k = 1 << bits
    cb, labels = kmeans_1d(values, k, init=init)
    assert cb.dtype == np.float32 and labels.shape == values.shape
    assert cb.size <= k
    assert np.all(np.diff(cb) > 0), "codebook sorted and distinct"
    if values.size:
        assert labels.max() < cb.size
        assert np.all(np.bincount(labels, minlength=cb.size) > 0), "every centroid used"
        # each value sits at its nearest centroid
        d = np.abs(values[:, None].astype(np.float64) - cb[None, :].astype(np.float64))
        assert np.allclose(d[np.arange(values.size), labels], d.min(axis=1), rtol=0, atol=1e-3)
        # centroids lie inside the data's range
        assert cb.min() >= values.min() - 1e-3 and cb.max() <= values.max() + 1e-3
    if np.unique(values).size <= k:
        np.testing.assert_array_equal(cb[labels], values)  # exact when k covers every value


def test_kmeans_reduces_error_vs_linear_grid():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(100_000).astype(np.float32)
    cb, labels = kmeans_1d(x, 16)
    grid = np.linspace(x.min(), x.max(), 16)
    grid_err = np.min((x[:, None] - grid[None]) ** 2, axis=1).mean()
    assert ((cb[labels] - x) ** 2).mean() < grid_err


def test_kmeans_inits_differ_and_are_deterministic():
    x = np.random.default_rng(1).standard_normal(5000).astype(np.float32) ** 3
    results = {i: kmeans_1d(x, 8, init=i, seed=3)[0] for i in INITS}
    for i in INITS:
        np.testing.assert_array_equal(results[i], kmeans_1d(x, 8, init=i, seed=3)[0])
    with pytest.raises(RecipeError):
        kmeans_1d(x, 8, init="nope")


def test_share_layer_keeps_mask_and_bits():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((32, 3, 3, 3)).astype(np.float32)
    mask = np.abs(w) > 0.8
    sw = share_layer("conv.weight", w, mask, 3)
    dense = sw.dense()
    assert np.all(dense[~mask] == 0)
    assert np.unique(dense[mask]).size <= 8
    assert sw.nnz == mask.sum()
    with pytest.raises(RecipeError):
        share_layer("x", w, mask, 9)


def test_kmeans_fast_on_millions():
    import time

    x = np.random.default_rng(0).standard_normal(4_000_000).astype(np.float32)
    t = time.perf_counter()
    kmeans_1d(x, 256)
    assert time.perf_counter() - t < 20  # generous: seconds, not minutes, even on a loaded machine
