"""The runtime's matmul runs numpy's BLAS on one thread (deepcomp.runtime.blas)."""

import numpy as np
import pytest

from deepcomp.runtime import RuntimeModel, blas


def test_one_thread_limits_blas_inside_only():
    tp = pytest.importorskip("threadpoolctl")
    before = [i["num_threads"] for i in tp.threadpool_info() if i["user_api"] == "blas"]
    if not before:
        pytest.skip("numpy links no BLAS threadpoolctl knows")
    with blas.one_thread():
        assert all(i["num_threads"] == 1 for i in tp.threadpool_info() if i["user_api"] == "blas")
    assert [i["num_threads"] for i in tp.threadpool_info() if i["user_api"] == "blas"] == before


def test_matmul_step_matches_numpy():
    g = {"format": "deepcomp-graph", "version": 2, "input": {"name": "x", "shape": [3, 5, 5]}, "output": "y",
         "nodes": [{"name": "t", "op": "permute", "inputs": ["x"], "attrs": {"dims": [0, 1, 3, 2]}},
                   {"name": "y", "op": "matmul", "inputs": ["x", "t"], "attrs": {}}]}
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 5)).astype(np.float32)
    np.testing.assert_allclose(RuntimeModel(g, {}, {})(x), x @ x.transpose(0, 1, 3, 2), rtol=1e-5, atol=1e-5)
