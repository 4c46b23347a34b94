"""SparseConv2d schedules: the input is processed in row bands (sized by a buffer budget) either
band-per-task or shared by all threads, on the sparse kernel or, for dense enough layers, the dense
one. Every schedule must give the same result as torch."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

nat = pytest.importorskip("deepcomp._native")

from test_kernels import SUPPORTED_ISAS, assert_close, make_conv  # noqa: E402


@pytest.fixture
def restore():
    budget = nat._set_conv_band_bytes(1 << 20)
    nat._set_conv_band_bytes(budget)
    dense = nat._set_conv_dense_threshold(0.5)
    nat._set_conv_dense_threshold(dense)
    rt = nat._set_conv_register_tiling(False)
    nat._set_conv_register_tiling(rt)
    stream = nat._set_conv_stream_bytes(-1)
    nat._set_conv_stream_bytes(stream)
    winograd = nat._set_conv_winograd_threshold(99.0)  # these tests are about the direct kernels
    threads = nat.get_num_threads()
    yield
    nat._set_conv_winograd_threshold(winograd)
    nat._set_conv_stream_bytes(stream)
    nat._set_conv_band_bytes(budget)
    nat._set_conv_dense_threshold(dense)
    nat._set_conv_register_tiling(rt)
    nat.set_num_threads(threads)
    nat._set_isa(SUPPORTED_ISAS[0])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(
    isa=st.sampled_from(SUPPORTED_ISAS),
    budget=st.sampled_from([1, 2000, 9000, 40000, 1 << 22]),
    threads=st.sampled_from([1, 2, 3]),
    cin=st.integers(1, 20),
    cout=st.integers(1, 40),
    k=st.tuples(st.integers(1, 5), st.integers(1, 5)),
    stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    padding=st.tuples(st.integers(0, 2), st.integers(0, 2)),
    dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    n=st.sampled_from([1, 2, 5]),
    hw=st.tuples(st.integers(5, 40), st.integers(5, 40)),
    density=st.sampled_from([0.0, 0.3, 1.0]),
    layout=st.sampled_from(["fp32", "codebook"]),
    kernel=st.sampled_from(["sparse", "sparse-rt", "dense"]),
    seed=st.integers(0, 2**31),
)
def test_conv_bands_match_torch(restore, isa, budget, threads, cin, cout, k, stride, padding, dilation, n, hw,
                                density, layout, kernel, seed):
    rng = np.random.default_rng(seed)
    H, W = hw
    if H + 2 * padding[0] < dilation[0] * (k[0] - 1) + 1 or W + 2 * padding[1] < dilation[1] * (k[1] - 1) + 1:
        return
    nat._set_isa(isa)
    nat.set_num_threads(threads)
    nat._set_conv_band_bytes(budget)
    nat._set_conv_dense_threshold(0.0 if kernel == "dense" else 2.0)
    nat._set_conv_register_tiling(kernel == "sparse-rt")
    layer, wt, b = make_conv(rng, cin, cout, k[0], k[1], stride, padding, dilation, 1, density, layout)
    x = rng.standard_normal((n, cin, H, W)).astype(np.float32)
    ref = F.relu(F.conv2d(torch.from_numpy(x), wt, b, stride, padding, dilation))
    assert_close(layer.forward(x, relu=True), ref.numpy())


def test_conv_vgg_like_banded(restore):
    """A VGG-like layer large enough to be cut into many bands at the default budget."""
    rng = np.random.default_rng(7)
    layer, wt, b = make_conv(rng, 32, 24, 3, 3, 1, 1, 1, 1, 0.3, "codebook")
    x = rng.standard_normal((1, 32, 150, 131)).astype(np.float32)
    ref = F.conv2d(torch.from_numpy(x), wt, b, 1, 1).numpy()
    for threads in (1, 2):
        nat.set_num_threads(threads)
        for budget in (1, 100_000, 1 << 21):
            nat._set_conv_band_bytes(budget)
            assert_close(layer.forward(x), ref)


@pytest.mark.parametrize("isa", SUPPORTED_ISAS)
def test_conv_row_pieces(restore, isa):
    """Rows whose last vectors hold only padding columns (VGG-16's 112- and 224-wide layers) are
    computed in pieces of rows that skip them: one to 17 vectors of output per row (one to three
    pieces), on the band-per-task schedule and, with 2 output rows and 3 threads, the shared one;
    per-row and register-tiled kernels."""
    nat._set_isa(isa)
    rng = np.random.default_rng(3)
    layer, wt, b = make_conv(rng, 5, 7, 3, 3, 1, 1, 1, 1, 0.4, "fp32")
    for h in (2, 9):
        for w in (16, 32, 112, 160, 272):
            x = rng.standard_normal((1, 5, h, w)).astype(np.float32)
            ref = F.conv2d(torch.from_numpy(x), wt, b, 1, 1).numpy()
            for threads in (1, 3):
                nat.set_num_threads(threads)
                for rt in (False, True):  # the register-tiled kernel's blocks are at most 6 vectors
                    nat._set_conv_register_tiling(rt)
                    assert_close(layer.forward(x), ref)


@pytest.mark.parametrize("isa", SUPPORTED_ISAS)
def test_conv_streaming_stores(restore, isa):
    """Outputs written with non-temporal stores (threshold 0: every sparse-kernel output whose rows
    are whole cache lines, here 16 and 112 wide; 28 and 37 stay on cached stores) equal torch, for
    output arrays at every 4-byte offset from an aligned address, on both schedules (one band per
    task, shared bands)."""
    nat._set_isa(isa)
    nat._set_conv_stream_bytes(0)
    rng = np.random.default_rng(5)
    layer, wt, b = make_conv(rng, 6, 9, 3, 3, 1, 1, 1, 1, 0.4, "fp32")
    for n, h, w in ((1, 8, 16), (3, 7, 28), (1, 2, 37), (2, 12, 112)):
        x = rng.standard_normal((n, 6, h, w)).astype(np.float32)
        ref = torch.relu(F.conv2d(torch.from_numpy(x), wt, b, 1, 1)).numpy()
        for threads in (1, 3):
            nat.set_num_threads(threads)
            for shift in range(4):
                raw = np.empty(ref.size + 16, np.float32)
                start = (-raw.ctypes.data // 4) % 16 + shift  # floats past a 64-byte boundary
                out = raw[start:start + ref.size].reshape(ref.shape)
                layer.forward(x, True, out=out)
                assert_close(out, ref)


@pytest.mark.parametrize("isa", SUPPORTED_ISAS)
def test_conv_register_tiles(restore, isa):
    """The register-tiled kernel (groups of output channels sharing input loads): channel counts not
    divisible by 4, all-zero rows and whole zero groups, 100% density, grouped convolutions (a tile
    may span two of them), strides, padding, dilation, both schedules, scale/shift epilogue."""
    nat._set_isa(isa)
    nat._set_conv_register_tiling(True)
    nat._set_conv_dense_threshold(2.0)
    rng = np.random.default_rng(5)
    for cin, cout, groups, k, stride, pad, dil, density in [
            (6, 7, 1, 3, 1, 1, 1, 0.3), (8, 9, 1, 3, 2, 0, 1, 1.0), (6, 6, 3, 3, 1, 1, 2, 0.5),
            (4, 10, 2, 1, 1, 0, 1, 0.4), (5, 13, 1, 5, (2, 1), 2, 1, 0.3)]:
        layer, wt, b = make_conv(rng, cin, cout, k, k, stride, pad, dil, groups, density, "codebook")
        x = rng.standard_normal((2, cin, 17, 23)).astype(np.float32)
        scale = rng.standard_normal(cout).astype(np.float32)
        shift = rng.standard_normal(cout).astype(np.float32)
        ref = F.conv2d(torch.from_numpy(x), wt, b, stride, pad, dil, groups).numpy()
        ref = np.maximum(ref * scale[:, None, None] + shift[:, None, None], 0)
        for threads in (1, 3):
            nat.set_num_threads(threads)
            assert_close(layer.forward(x, relu=True, scale=scale, shift=shift), ref)
    # Zero rows and zero groups: rows 0-3 and 6 have no nonzeros (the rest keep enough for the
    # layer to stay above the register-tiled kernel's minimum density).
    layer, wt, b = make_conv(rng, 6, 11, 3, 3, 1, 1, 1, 1, 0.8, "fp32")
    w = wt.numpy().reshape(11, -1).copy()
    w[[0, 1, 2, 3, 6]] = 0
    rp = np.concatenate([[0], np.cumsum((w != 0).sum(1))]).astype(np.int64)
    col = np.nonzero(w)[1].astype(np.int32)
    layer = nat.SparseConv2d(rp, col, 6, 11, (3, 3), 1, 1, 1, 1, values=w[w != 0].astype(np.float32), bias=b.numpy())
    x = rng.standard_normal((1, 6, 20, 20)).astype(np.float32)
    ref = F.conv2d(torch.from_numpy(x), torch.from_numpy(w.reshape(11, 6, 3, 3)), b, 1, 1).numpy()
    assert_close(layer.forward(x), ref)


def test_conv_register_tiles_threads(restore):
    """One register-tiled layer called from several threads at once gives each the single-thread result."""
    import threading

    nat._set_conv_register_tiling(True)
    nat._set_conv_dense_threshold(2.0)
    rng = np.random.default_rng(9)
    layer, wt, b = make_conv(rng, 8, 18, 3, 3, 1, 1, 1, 1, 0.35, "codebook")
    xs = [rng.standard_normal((n, 8, h, h)).astype(np.float32) for n, h in [(1, 20), (2, 13), (3, 9)] * 2]
    refs = [layer.forward(x) for x in xs]
    errors = []

    def work(x, ref):
        try:
            for _ in range(5):
                np.testing.assert_array_equal(layer.forward(x), ref)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    ts = [threading.Thread(target=work, args=a) for a in zip(xs, refs)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors[0]
    assert_close(refs[0], F.conv2d(torch.from_numpy(xs[0]), wt, b, 1, 1).numpy())


@pytest.mark.parametrize("isa", SUPPORTED_ISAS)
def test_conv_dense_kernel(restore, isa):
    """The dense kernel (forced for every layer; then thresholds at which these small layers stay
    sparse): every output-channel count (it works in blocks of 2 * SIMD width), the fused
    scale/shift epilogue, and grouped layers (which always stay sparse) match torch."""
    nat._set_isa(isa)
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 6, 23, 19)).astype(np.float32)
    for threshold in (0.0, 0.85, None):  # None: the default
        if threshold is not None:
            nat._set_conv_dense_threshold(threshold)
        for cout in (1, 3, 8, 17, 33):
            for groups, density in ((1, 0.9), (1, 1.0), (2, 1.0)):
                layer, wt, b = make_conv(rng, 6, cout * groups, 3, 2, (2, 1), (1, 0), 1, groups, density,
                                         "codebook")
                scale = rng.standard_normal(cout * groups).astype(np.float32)
                shift = rng.standard_normal(cout * groups).astype(np.float32)
                ref = F.conv2d(torch.from_numpy(x), wt, b, (2, 1), (1, 0), 1, groups).numpy()
                ref = np.maximum(ref * scale[:, None, None] + shift[:, None, None], 0)
                assert_close(layer.forward(x, relu=True, scale=scale, shift=shift), ref)


def test_kernel_for_follows_the_threshold(restore):
    """kernel_for reports the kernel a shape runs on: dense when forced, sparse when forbidden, and
    by default dense for a 90%-dense 3x3 layer with many taps, sparse for a 30%-dense one."""
    rng = np.random.default_rng(5)
    dense_layer = make_conv(rng, 64, 32, 3, 3, 1, 1, 1, 1, 0.9, "codebook")[0]
    sparse_layer = make_conv(rng, 64, 32, 3, 3, 1, 1, 1, 1, 0.3, "codebook")[0]
    assert dense_layer.kernel_for(28, 28) == "dense"
    assert sparse_layer.kernel_for(28, 28) == "sparse"
    nat._set_conv_dense_threshold(0.0)
    assert sparse_layer.kernel_for(28, 28) == "dense"
    nat._set_conv_dense_threshold(2.0)
    assert dense_layer.kernel_for(28, 28) == "sparse"
    grouped = make_conv(rng, 64, 32, 3, 3, 1, 1, 1, 2, 1.0, "codebook")[0]
    nat._set_conv_dense_threshold(0.0)
    assert grouped.kernel_for(28, 28) == "sparse"  # the dense kernel has no groups
