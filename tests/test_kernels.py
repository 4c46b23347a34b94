"""Native sparse kernels (deepcomp._native) against torch.nn.functional on the same dense weights."""

import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

nat = pytest.importorskip("deepcomp._native")

SUPPORTED_ISAS = []
for _name in ("avx512", "avx2", "scalar"):
    try:
        nat._set_isa(_name)
        SUPPORTED_ISAS.append(_name)
    except ValueError:
        pass
BEST_ISA = SUPPORTED_ISAS[0]
nat._set_isa(BEST_ISA)

HYP = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(params=SUPPORTED_ISAS)
def isa(request):
    nat._set_isa(request.param)
    yield request.param
    nat._set_isa(BEST_ISA)


# ---- helpers ------------------------------------------------------------------------------------


def random_sparse(rng, rows, cols, density, layout, k=32):
    """Dense weights with about `density` nonzeros (some rows empty), and their CSR arrays."""
    if layout == "codebook":
        codebook = rng.standard_normal(k).astype(np.float32)
        codebook[codebook == 0] = 0.5
        cl = rng.integers(0, k, size=(rows, cols)).astype(np.uint8)
        dense = codebook[cl]
    else:
        dense = rng.standard_normal((rows, cols)).astype(np.float32)
    mask = rng.random((rows, cols)) < density
    if rows > 2 and density < 1.0:
        mask[rng.integers(0, rows)] = False  # an empty row
    dense = np.where(mask, dense, 0).astype(np.float32)
    r, c = np.nonzero(mask)
    row_ptr = np.zeros(rows + 1, np.int64)
    np.add.at(row_ptr, r + 1, 1)
    row_ptr = np.cumsum(row_ptr)
    kw = {}
    if layout == "codebook":
        kw = dict(cluster=cl[r, c].astype(np.uint8), codebook=codebook)
    else:
        kw = dict(values=dense[r, c].astype(np.float32))
    return dense, row_ptr, c.astype(np.int32), kw


def assert_close(got, ref):
    ref = np.asarray(ref, dtype=np.float64)
    scale = max(1.0, float(np.abs(ref).max()) if ref.size else 1.0)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * scale)


# ---- SparseLinear -------------------------------------------------------------------------------


@HYP
@given(
    rows=st.integers(1, 70),
    cols=st.integers(1, 300),
    batch=st.sampled_from([1, 2, 3, 4, 7, 8, 16, 17, 33, 64, 70]),
    density=st.sampled_from([0.0, 0.05, 0.3, 1.0]),
    layout=st.sampled_from(["fp32", "codebook"]),
    k=st.sampled_from([1, 8, 16, 32, 200, 256]),
    bias=st.booleans(),
    relu=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_linear_matches_torch(isa, rows, cols, batch, density, layout, k, bias, relu, seed):
    rng = np.random.default_rng(seed)
    dense, row_ptr, col, kw = random_sparse(rng, rows, cols, density, layout, k)
    b = rng.standard_normal(rows).astype(np.float32) if bias else None
    layer = nat.SparseLinear(row_ptr, col, cols, bias=b, **kw)
    assert (layer.rows, layer.cols, layer.nnz) == (rows, cols, len(col))
    assert layer.bytes > 0
    x = rng.standard_normal((batch, cols)).astype(np.float32)
    ref = F.linear(torch.from_numpy(x), torch.from_numpy(dense), None if b is None else torch.from_numpy(b))
    if relu:
        ref = F.relu(ref)
    assert_close(layer.forward(x, relu=relu), ref.numpy())


def test_linear_wide_columns_use_32bit_indices(isa):
    rng = np.random.default_rng(1)
    dense, row_ptr, col, kw = random_sparse(rng, 5, 70000, 0.001, "codebook", 32)
    layer = nat.SparseLinear(row_ptr, col, 70000, **kw)
    x = rng.standard_normal((3, 70000)).astype(np.float32)
    assert_close(layer.forward(x), x @ dense.T)
    x = rng.standard_normal((9, 70000)).astype(np.float32)
    assert_close(layer.forward(x), x.astype(np.float64) @ dense.T)


def test_linear_out_and_1d():
    rng = np.random.default_rng(2)
    dense, row_ptr, col, kw = random_sparse(rng, 10, 20, 0.5, "fp32")
    layer = nat.SparseLinear(row_ptr, col, 20, **kw)
    x = rng.standard_normal((4, 20)).astype(np.float32)
    out = np.empty((4, 10), np.float32)
    res = layer.forward(x, out=out)
    assert res is out or np.shares_memory(res, out)
    assert_close(out, x @ dense.T)
    assert_close(layer.forward(x[0]), x[0] @ dense.T)
    with pytest.raises(ValueError):
        layer.forward(x, out=np.empty((4, 11), np.float32))
    with pytest.raises(ValueError):
        layer.forward(x, out=np.empty((4, 10), np.float64))


def test_linear_bad_inputs_raise_valueerror():
    rp = np.array([0, 1, 2], np.int64)
    col = np.array([0, 3], np.int32)
    v = np.ones(2, np.float32)
    nat.SparseLinear(rp, col, 4, values=v)
    with pytest.raises(ValueError):  # column out of range
        nat.SparseLinear(rp, col, 3, values=v)
    with pytest.raises(ValueError):  # row_ptr does not end at nnz
        nat.SparseLinear(np.array([0, 1, 3]), col, 4, values=v)
    with pytest.raises(ValueError):  # not monotone
        nat.SparseLinear(np.array([0, 2, 1, 2]), col, 4, values=v)
    with pytest.raises(ValueError):  # row_ptr[0] != 0
        nat.SparseLinear(np.array([1, 2]), col[:1], 4, values=v[:1])
    with pytest.raises(ValueError):  # values length
        nat.SparseLinear(rp, col, 4, values=v[:1])
    with pytest.raises(ValueError):  # both layouts
        nat.SparseLinear(rp, col, 4, values=v, cluster=np.zeros(2, np.uint8), codebook=v)
    with pytest.raises(ValueError):  # no layout
        nat.SparseLinear(rp, col, 4)
    with pytest.raises(ValueError):  # cluster >= k
        nat.SparseLinear(rp, col, 4, cluster=np.array([0, 2], np.uint8), codebook=v)
    with pytest.raises(ValueError):  # codebook too large
        nat.SparseLinear(rp, col, 4, cluster=np.zeros(2, np.uint8), codebook=np.ones(257, np.float32))
    with pytest.raises(ValueError):  # bias length
        nat.SparseLinear(rp, col, 4, values=v, bias=np.ones(3, np.float32))
    layer = nat.SparseLinear(rp, col, 4, values=v)
    with pytest.raises(ValueError):
        layer.forward(np.ones((2, 5), np.float32))
    with pytest.raises(ValueError):
        layer.forward(np.ones((2, 2, 4), np.float32))


def test_linear_concurrent_threads():
    rng = np.random.default_rng(3)
    dense, row_ptr, col, kw = random_sparse(rng, 300, 500, 0.2, "codebook", 32)
    layer = nat.SparseLinear(row_ptr, col, 500, **kw)
    xs = [rng.standard_normal((b, 500)).astype(np.float32) for b in (1, 5, 40, 1, 64, 2)]
    errors = []

    def work(x):
        try:
            for _ in range(20):
                assert_close(layer.forward(x), x.astype(np.float64) @ dense.T)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    ts = [threading.Thread(target=work, args=(x,)) for x in xs]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors[0]


# ---- SparseConv2d -------------------------------------------------------------------------------


def make_conv(rng, cin, cout, kh, kw, stride, padding, dilation, groups, density, layout, k=256, bias=True):
    cols = cin // groups * kh * kw
    dense, row_ptr, col, kwargs = random_sparse(rng, cout, cols, density, layout, k)
    b = rng.standard_normal(cout).astype(np.float32) if bias else None
    layer = nat.SparseConv2d(row_ptr, col, cin, cout, (kh, kw), stride, padding, dilation, groups, bias=b, **kwargs)
    wt = torch.from_numpy(dense.reshape(cout, cin // groups, kh, kw))
    return layer, wt, (None if b is None else torch.from_numpy(b))


@HYP
@given(
    groups=st.sampled_from([1, 1, 2, 3]),
    cin_g=st.integers(1, 6),
    cout_g=st.integers(1, 9),
    kh=st.integers(1, 5),
    kw=st.integers(1, 5),
    stride=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    padding=st.tuples(st.integers(0, 3), st.integers(0, 3)),
    dilation=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    n=st.sampled_from([1, 2, 3, 5]),
    hw=st.tuples(st.integers(1, 23), st.integers(1, 23)),
    density=st.sampled_from([0.0, 0.1, 0.4, 1.0]),
    layout=st.sampled_from(["fp32", "codebook"]),
    epilogue=st.sampled_from(["none", "relu", "bn", "bn_relu"]),
    seed=st.integers(0, 2**31),
)
def test_conv_matches_torch(isa, groups, cin_g, cout_g, kh, kw, stride, padding, dilation, n, hw, density, layout,
                            epilogue, seed):
    rng = np.random.default_rng(seed)
    cin, cout = cin_g * groups, cout_g * groups
    H, W = hw
    eh, ew = dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1
    if H + 2 * padding[0] < eh or W + 2 * padding[1] < ew:
        layer, _, _ = make_conv(rng, cin, cout, kh, kw, stride, padding, dilation, groups, density, layout)
        with pytest.raises(ValueError):
            layer.forward(np.zeros((n, cin, H, W), np.float32))
        return
    layer, wt, b = make_conv(rng, cin, cout, kh, kw, stride, padding, dilation, groups, density, layout)
    x = rng.standard_normal((n, cin, H, W)).astype(np.float32)
    ref = F.conv2d(torch.from_numpy(x), wt, b, stride, padding, dilation, groups)
    scale = shift = None
    if epilogue.startswith("bn"):
        scale = rng.standard_normal(cout).astype(np.float32)
        shift = rng.standard_normal(cout).astype(np.float32)
        ref = ref * torch.from_numpy(scale)[:, None, None] + torch.from_numpy(shift)[:, None, None]
    relu = epilogue.endswith("relu")
    if relu:
        ref = F.relu(ref)
    got = layer.forward(x, relu=relu, scale=scale, shift=shift)
    assert got.shape == tuple(ref.shape)
    assert_close(got, ref.numpy())


@pytest.mark.parametrize(
    "cin,cout,k,stride,pad,hw,density",
    [
        (3, 16, 11, 4, 2, 67, 0.84),  # AlexNet conv1-like
        (16, 24, 5, 1, 2, 27, 0.38),
        (32, 40, 3, 1, 1, 56, 0.3),  # large enough for the widest register blocks
        (24, 32, 3, 2, 1, 31, 0.5),  # ResNet stride 2
        (64, 48, 1, 1, 0, 14, 0.3),  # 1x1 as SpMM
        (32, 16, 1, 2, 0, 15, 0.5),  # 1x1 stride 2 (ResNet downsample)
        (40, 301, 3, 1, 1, 12, 0.3),  # odd count over two output-channel tiles, several input chunks
        (96, 272, 3, 1, 1, 9, 1.0),  # 100% dense, tile boundary inside a 16-channel unit
    ],
)
def test_conv_network_shapes(isa, cin, cout, k, stride, pad, hw, density):
    rng = np.random.default_rng(cin * cout + k)
    for layout in ("fp32", "codebook"):
        layer, wt, b = make_conv(rng, cin, cout, k, k, stride, pad, 1, 1, density, layout)
        for n in (1, 3):
            x = rng.standard_normal((n, cin, hw, hw)).astype(np.float32)
            ref = F.relu(F.conv2d(torch.from_numpy(x), wt, b, stride, pad))
            assert_close(layer.forward(x, relu=True), ref.numpy())
    # the offset cache is per input shape
    x = rng.standard_normal((2, cin, hw + 3, hw + 1)).astype(np.float32)
    assert_close(layer.forward(x), F.conv2d(torch.from_numpy(x), wt, b, stride, pad).numpy())


def test_conv_bad_inputs_raise_valueerror():
    rp = np.array([0, 1, 2], np.int64)
    col = np.array([0, 8], np.int32)
    v = np.ones(2, np.float32)
    nat.SparseConv2d(rp, col, 1, 2, 3, values=v)
    with pytest.raises(ValueError):  # column beyond in_channels/groups*kh*kw
        nat.SparseConv2d(rp, np.array([0, 9], np.int32), 1, 2, 3, values=v)
    with pytest.raises(ValueError):  # rows != out_channels
        nat.SparseConv2d(rp, col, 1, 3, 3, values=v)
    with pytest.raises(ValueError):  # groups do not divide
        nat.SparseConv2d(rp, col, 3, 2, 3, groups=2, values=v)
    with pytest.raises(ValueError):
        nat.SparseConv2d(rp, col, 1, 2, 0, values=v)
    with pytest.raises(ValueError):
        nat.SparseConv2d(rp, col, 1, 2, 3, stride=0, values=v)
    layer = nat.SparseConv2d(rp, col, 1, 2, 3, values=v, bias=np.zeros(2, np.float32))
    with pytest.raises(ValueError):  # wrong channel count
        layer.forward(np.zeros((1, 2, 5, 5), np.float32))
    with pytest.raises(ValueError):  # too small
        layer.forward(np.zeros((1, 1, 2, 2), np.float32))
    with pytest.raises(ValueError):
        layer.forward(np.zeros((1, 1, 5, 5), np.float32), scale=np.ones(3, np.float32))
    with pytest.raises(ValueError):
        layer.forward(np.zeros((5, 5), np.float32))


def test_conv_concurrent_threads_and_shapes():
    rng = np.random.default_rng(4)
    layer, wt, b = make_conv(rng, 8, 16, 3, 3, 1, 1, 1, 1, 0.4, "codebook")
    xs = [rng.standard_normal((n, 8, h, h)).astype(np.float32) for n, h in [(1, 20), (2, 13), (1, 20), (3, 9)] * 2]
    errors = []

    def work(x):
        try:
            ref = F.conv2d(torch.from_numpy(x), wt, b, 1, 1).numpy()
            for _ in range(10):
                assert_close(layer.forward(x), ref)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    ts = [threading.Thread(target=work, args=(x,)) for x in xs]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors[0]


# ---- pooling and relu ---------------------------------------------------------------------------


@HYP
@given(
    n=st.integers(1, 3),
    c=st.integers(1, 5),
    hw=st.tuples(st.integers(1, 17), st.integers(1, 17)),
    k=st.tuples(st.integers(1, 5), st.integers(1, 5)),
    stride=st.one_of(st.none(), st.tuples(st.integers(1, 4), st.integers(1, 4))),
    pad=st.tuples(st.integers(0, 2), st.integers(0, 2)),
    dilation=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    ceil_mode=st.booleans(),
    count_include_pad=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_pools_match_torch(n, c, hw, k, stride, pad, dilation, ceil_mode, count_include_pad, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, *hw)).astype(np.float32)
    tx = torch.from_numpy(x)
    for name, tfn, nfn in [
        ("max", lambda: F.max_pool2d(tx, k, stride, pad, dilation, ceil_mode),
         lambda: nat.max_pool2d(x, k, stride, pad, dilation, ceil_mode)),
        ("avg", lambda: F.avg_pool2d(tx, k, stride, pad, ceil_mode, count_include_pad),
         lambda: nat.avg_pool2d(x, k, stride, pad, ceil_mode, count_include_pad)),
    ]:
        try:
            ref = tfn().numpy()
        except RuntimeError:
            with pytest.raises(ValueError):
                nfn()
            continue
        got = nfn()
        assert got.shape == ref.shape, name
        assert_close(got, ref)


@HYP
@given(
    n=st.integers(1, 3),
    c=st.integers(1, 4),
    hw=st.tuples(st.integers(1, 20), st.integers(1, 20)),
    out=st.tuples(st.integers(1, 8), st.integers(1, 8)),
    seed=st.integers(0, 2**31),
)
def test_adaptive_avg_pool_matches_torch(n, c, hw, out, seed):
    x = np.random.default_rng(seed).standard_normal((n, c, *hw)).astype(np.float32)
    ref = F.adaptive_avg_pool2d(torch.from_numpy(x), out).numpy()
    assert_close(nat.adaptive_avg_pool2d(x, out), ref)


@pytest.mark.parametrize("k", [(2, 2), (3, 3), (1, 2), (4, 3)])
@pytest.mark.parametrize("ceil_mode", [False, True])
def test_max_pool_stride2_rows(isa, k, ceil_mode):
    """The vector path of stride-2, 2- or 3-wide windows (AVX2): rows of every width around the
    16-column blocks and their masked ends, NaNs anywhere, equal to torch bit for bit."""
    rng = np.random.default_rng(11)
    for w in (2, 3, 15, 16, 17, 18, 19, 31, 33, 34, 55, 56, 57):
        x = rng.standard_normal((2, 3, 7, w)).astype(np.float32)
        x[rng.random(x.shape) < 0.03] = np.nan
        tx = torch.from_numpy(x)
        try:
            ref = F.max_pool2d(tx, k, 2, ceil_mode=ceil_mode).numpy()
        except RuntimeError:
            continue
        got = nat.max_pool2d(x, k, 2, ceil_mode=ceil_mode)
        np.testing.assert_array_equal(got, ref, err_msg=f"{isa} width {w}")


def test_pool_edge_cases():
    x = np.random.default_rng(5).standard_normal((2, 3, 13, 13)).astype(np.float32)
    tx = torch.from_numpy(x)
    assert_close(nat.max_pool2d(x, 3, 2), F.max_pool2d(tx, 3, 2).numpy())  # AlexNet
    assert_close(nat.max_pool2d(x[0], 3, 2, ceil_mode=True), F.max_pool2d(tx[0], 3, 2, ceil_mode=True).numpy())
    assert_close(nat.adaptive_avg_pool2d(x, (6, 6)), F.adaptive_avg_pool2d(tx, (6, 6)).numpy())
    assert_close(nat.adaptive_avg_pool2d(x, (None, 4)), F.adaptive_avg_pool2d(tx, (None, 4)).numpy())
    y = x.copy()
    y[0, 0, 0, 0] = np.nan
    got = nat.max_pool2d(y, 2)
    assert np.isnan(got[0, 0, 0, 0])
    with pytest.raises(ValueError):
        nat.max_pool2d(x, 3, 1, 2)  # padding more than half the kernel
    with pytest.raises(ValueError):
        nat.max_pool2d(x.reshape(-1), 2)
    r = x.copy()
    assert nat.relu_(r) is r
    np.testing.assert_array_equal(r, np.maximum(x, 0))
    with pytest.raises(ValueError):
        nat.relu_(x.astype(np.float64))


# ---- threads and ISA selection ------------------------------------------------------------------


def test_num_threads_roundtrip():
    n = nat.get_num_threads()
    nat.set_num_threads(1)
    assert nat.get_num_threads() == 1
    rng = np.random.default_rng(6)
    dense, row_ptr, col, kw = random_sparse(rng, 50, 60, 0.3, "fp32")
    x = rng.standard_normal((9, 60)).astype(np.float32)
    assert_close(nat.SparseLinear(row_ptr, col, 60, **kw).forward(x), x @ dense.T)
    nat.set_num_threads(3)
    assert nat.get_num_threads() == 3
    assert_close(nat.SparseLinear(row_ptr, col, 60, **kw).forward(x), x @ dense.T)
    nat.set_num_threads(n)
    with pytest.raises(ValueError):
        nat.set_num_threads(0)


def test_isa_names():
    assert nat.isa() in ("avx512", "avx2", "scalar")
    with pytest.raises(ValueError):
        nat._set_isa("sse9")


@pytest.mark.parametrize("name", ["scalar", "avx2", "avx512"])
def test_env_overrides(name):
    if name not in SUPPORTED_ISAS:
        pytest.skip(f"{name} not supported here")
    code = "import deepcomp._native as n; print(n.isa(), n.get_num_threads())"
    env = dict(os.environ, DEEPCOMP_ISA=name, DEEPCOMP_NUM_THREADS="3")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [name, "3"]
