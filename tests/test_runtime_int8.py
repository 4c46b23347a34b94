"""The int8 runtime steps (deepcomp.runtime.int8): int8 weights from decoded weights, native steps
equal to the numpy integer reference bit for bit on every int8 ISA path, and a small int8 network
within a stated tolerance of the fp32 network on the same weights."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deepcomp.prune.block import block_mask
from deepcomp.quantize_int8 import ActivationSample, qparams
from deepcomp.runtime import int8 as rt8

nat = pytest.importorskip("deepcomp._native")
if not rt8.native_int8():
    pytest.skip("this build has no int8 kernels", allow_module_level=True)

# Two int8 convs and an int8 linear layer (8-bit weights, uint8 activations calibrated min-max on
# the same input) stay within this fraction of the fp32 output's largest magnitude (measured: 0.5-1.5%
# over seeds 0-4).
TOLERANCE = 0.05


def test_weights_to_int8_uses_the_grid_per_channel():
    w = np.array([[0.5, -1.0, 0.25, 0.0], [0.0, 0.0, 0.0, 0.0], [3.0, 1.5, -3.0, 0.75]], np.float32)
    q, s = rt8.weights_to_int8(w)
    assert q.dtype == np.int8 and s.dtype == np.float32
    np.testing.assert_array_equal(s, np.float32([1.0 / 127, 0.0, 3.0 / 127]))
    assert q[0, 1] == -127 and q[2, 0] == 127 and q[2, 2] == -127 and (q[1] == 0).all()
    assert np.abs(q * s[:, None] - w).max() <= s.max() / 2 + 1e-7


def network(seed=0):
    g = torch.Generator().manual_seed(seed)
    w1 = torch.randn(8, 3, 3, 3, generator=g) * 0.3
    w2 = torch.randn(12, 8, 3, 3, generator=g) * 0.15
    w3 = torch.randn(5, 12 * 4 * 4, generator=g) * 0.05
    w2 = w2 * block_mask(w2.abs(), 0.6)
    w3 = w3 * block_mask(w3.abs(), 0.5)
    b1, b2, b3 = (torch.randn(n, generator=g) * 0.1 for n in (8, 12, 5))
    x = torch.randn(2, 3, 16, 16, generator=g)
    return (w1, b1, w2, b2, w3, b3), x


def fp32_forward(p, x):
    w1, b1, w2, b2, w3, b3 = p
    a1 = F.max_pool2d(F.relu(F.conv2d(x, w1, b1, padding=1)), 2)
    a2 = F.max_pool2d(F.relu(F.conv2d(a1, w2, b2, padding=1)), 2)
    return x, a1, a2, F.linear(a2.flatten(1), w3, b3)


def steps(p, acts):
    w1, b1, w2, b2, w3, b3 = (t.numpy() for t in p)
    q = []
    for a in acts[:3]:
        s = ActivationSample()
        s.add(a.numpy())
        q.append(qparams(s, "minmax"))
    return [rt8.Int8ConvStep(w1, b1, padding=1, in_q=q[0], out_q=q[1], relu=True, pool=(2, 2), out_padding=1),
            rt8.Int8ConvStep(w2, b2, padding=1, in_q=q[1], out_q=q[2], relu=True, pool=(2, 2)),
            rt8.Int8LinearStep(w3, b3, in_q=q[2])]


def run(ss, x):
    for s in ss:
        x = s(x)
    return x


@pytest.mark.parametrize("isa", nat.int8_isas())
def test_native_steps_equal_the_reference_and_stay_near_fp32(isa):
    p, x = network()
    acts = fp32_forward(p, x)
    ss = steps(p, acts)
    nat._set_int8_isa(isa)
    try:
        got = run(ss, x.numpy())
    finally:
        nat._set_int8_isa(nat.int8_isas()[0])
    for s in ss:
        s.native = None
    want = run(ss, x.numpy())
    np.testing.assert_array_equal(got, want)
    y = acts[-1].numpy()
    assert np.abs(got - y).max() <= TOLERANCE * np.abs(y).max()


def test_qtensor_round_trip_and_scale_mismatch():
    p, x = network(1)
    acts = fp32_forward(p, x)
    ss = steps(p, acts)
    a1 = ss[0](x.numpy())
    assert isinstance(a1, rt8.QTensor) and a1.shape == (2, 8, 8, 8) and a1.padding == (1, 1)
    deq = rt8.dequantize(a1)
    assert np.abs(deq - acts[1].numpy()).max() <= 2 * a1.scale + 0.05 * np.abs(acts[1].numpy()).max()
    bad = a1._replace(scale=a1.scale * 2)
    with pytest.raises(ValueError, match="scale"):
        ss[1](bad)
    # a QTensor laid out for another padding is repacked, with the same result
    other = rt8.QTensor(nat.int8_pack(np.zeros((2, 8, 8, 8), np.float32), 1.0, 0, 0, 1), a1.scale, a1.zp,
                        a1.shape, (0, 0))
    from deepcomp.runtime import int8_reference as ref
    other = other._replace(data=ref.pack_u8(a1.values(), a1.zp, 0, 1))
    np.testing.assert_array_equal(ss[1](other).values(), ss[1](a1).values())


def _coded(w: np.ndarray, k: int, rng):
    """w's nonzeros snapped to a k-entry codebook, as (decoded dense weight, the loader's CSR dict)."""
    flat = w.reshape(w.shape[0], -1)
    codebook = np.sort(rng.standard_normal(k).astype(np.float32) * 0.2)
    rows, cols = np.nonzero(flat)
    cluster = rng.integers(0, k, len(rows)).astype(np.uint8)
    dense = np.zeros_like(flat)
    dense[rows, cols] = codebook[cluster]
    row_ptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=flat.shape[0]))]).astype(np.int64)
    return dense.reshape(w.shape), {"row_ptr": row_ptr, "col": cols.astype(np.int32), "cluster": cluster,
                                    "codebook": codebook}


@pytest.mark.parametrize("kernel", ["auto", "sparse", "dense"])
def test_steps_from_coded_weights_equal_dense_ones(kernel):
    """Built from the file's CSR arrays (no dense weight), a step gives the bits of the same step built
    from the decoded weight, native and reference, with a BatchNorm (negative scales) folded in."""
    rng = np.random.default_rng(7)
    w = rng.standard_normal((12, 10, 3, 3)).astype(np.float32)
    w = w * block_mask(torch.from_numpy(np.abs(w)), 0.5).numpy()
    w[3] = 0  # a channel with no blocks
    dense, csr = _coded(w, 16, rng)
    _, s = rt8.weights_to_int8(dense)
    coded, s2 = rt8.coded_to_int8(csr, dense.shape, s)
    np.testing.assert_array_equal(coded.dense(), rt8.weights_to_int8(dense, s)[0])
    bias = rng.standard_normal(12).astype(np.float32) * 0.1
    bn = (rng.standard_normal(12).astype(np.float32), rng.standard_normal(12).astype(np.float32) * 0.1)
    x = rng.standard_normal((2, 10, 9, 9)).astype(np.float32)
    kw = dict(padding=1, in_q=(0.02, 128), out_q=(0.05, 0), relu=True, pool=(2, 2), kernel=kernel, weight_scale=s, bn=bn)
    want = rt8.Int8ConvStep(dense, bias, native=False, **kw)(x)
    for step in (rt8.Int8ConvStep(coded, bias, **kw), rt8.Int8ConvStep(dense, bias, **kw),
                 rt8.Int8ConvStep(coded, bias, native=False, **kw)):
        got = step(x)
        np.testing.assert_array_equal(got.values(), want.values())
    native = rt8.Int8ConvStep(coded, bias, **kw)
    assert native.nonzeros == np.count_nonzero(rt8.Int8ConvStep(dense, bias, native=False, **kw).q)
    with pytest.raises(AttributeError):
        native.q  # the native layer holds blocks only
    wl = rng.standard_normal((7, 22)).astype(np.float32)
    wl = wl * block_mask(torch.from_numpy(np.abs(wl)), 0.4).numpy()
    dl, cl = _coded(wl, 8, rng)
    _, sl = rt8.weights_to_int8(dl)
    xl = rng.standard_normal((3, 22)).astype(np.float32)
    kl = dict(in_q=(0.03, 100), relu=True, kernel=kernel, weight_scale=sl)
    np.testing.assert_array_equal(rt8.Int8LinearStep(rt8.coded_to_int8(cl, dl.shape, sl)[0], **kl)(xl),
                                  rt8.Int8LinearStep(dl, native=False, **kl)(xl))


@pytest.mark.parametrize("isa", nat.int8_isas())
def test_stride4_conv_runs_columns_in_lanes(isa):
    """A 3-channel conv of stride 4 along W (AlexNet's conv1) runs rewritten with 4 columns per lane
    on the native kernels, from fp32 and from uint8 input, with the reference's bits."""
    nat._set_int8_isa(isa)
    try:
        rng = np.random.default_rng(11)
        for shape, pad, stride, pool in [((16, 3, 11, 11), 2, 4, (3, 2)), ((5, 2, 5, 6), (1, 3), (2, 4), None)]:
            w = rng.standard_normal(shape).astype(np.float32)
            w = w * block_mask(torch.from_numpy(np.abs(w)), 0.8).numpy()
            bias = rng.standard_normal(shape[0]).astype(np.float32) * 0.1
            kw = dict(stride=stride, padding=pad, in_q=(0.02, 120), out_q=(0.05, 0), relu=True, pool=pool,
                      out_padding=1)
            step, ref_step = rt8.Int8ConvStep(w, bias, **kw), rt8.Int8ConvStep(w, bias, native=False, **kw)
            assert step.columns and not ref_step.columns
            x = rng.standard_normal((2, shape[1], 45, 61)).astype(np.float32)
            want = ref_step(x)
            np.testing.assert_array_equal(step(x).values(), want.values())
            qx = rt8.QTensor(nat.int8_pack(x, 50.0, 120, 1, 1), 0.02, 120, x.shape, (1, 1))
            np.testing.assert_array_equal(step(qx).values(), ref_step(qx).values())
    finally:
        nat._set_int8_isa(nat.int8_isas()[0])


@pytest.mark.parametrize("isa", nat.int8_isas())
def test_padding_past_the_kernel_reach(isa):
    """At stride 1 the native layer holds at most dilation * (kw - 1) of padding along W; a step with
    more (a padded 1x1 conv, a 3x3 with padding 3) pads its input with zero-point columns instead, and
    gives the reference's bits from fp32 and from uint8 input."""
    nat._set_int8_isa(isa)
    try:
        rng = np.random.default_rng(13)
        for shape, pad in [((6, 5, 1, 1), 1), ((7, 4, 3, 3), (1, 3))]:
            w = rng.standard_normal(shape).astype(np.float32)
            kw = dict(padding=pad, in_q=(0.02, 9), out_q=(0.05, 0), relu=True, out_padding=1)
            step, ref_step = rt8.Int8ConvStep(w, None, **kw), rt8.Int8ConvStep(w, None, native=False, **kw)
            assert step.extra_w > 0
            x = rng.standard_normal((2, shape[1], 7, 10)).astype(np.float32)
            np.testing.assert_array_equal(step(x).values(), ref_step(x).values())
            qx = rt8.QTensor(nat.int8_pack(x, 50.0, 9, pad, 1), 0.02, 9, x.shape, rt8._pair(pad))
            np.testing.assert_array_equal(step(qx).values(), ref_step(qx).values())
    finally:
        nat._set_int8_isa(nat.int8_isas()[0])


@pytest.mark.parametrize("isa", nat.int8_isas())
def test_clamp_on_fp32_output(isa):
    """A clamp (ReLU6 after the ReLU, hardtanh, one side open) fused into the fp32 output gives the
    reference's bits, and the bounds are reached; a clamp on uint8 output or with a pool is refused."""
    nat._set_int8_isa(isa)
    try:
        rng = np.random.default_rng(17)
        w = rng.standard_normal((6, 8, 3, 3)).astype(np.float32)
        w = w * block_mask(torch.from_numpy(np.abs(w)), 0.5).numpy()
        x = rng.standard_normal((2, 8, 9, 11)).astype(np.float32)
        for relu, clamp in [(True, (0.0, 0.5)), (False, (-0.4, 0.4)), (False, (None, 0.2)), (True, (0.1, None))]:
            kw = dict(padding=1, in_q=(0.02, 128), relu=relu, clamp=clamp)
            got = rt8.Int8ConvStep(w, None, **kw)(x)
            want = rt8.Int8ConvStep(w, None, native=False, **kw)(x)
            np.testing.assert_array_equal(got, want)
            plain = rt8.Int8ConvStep(w, None, padding=1, in_q=(0.02, 128), relu=relu, native=False)(x)
            np.testing.assert_array_equal(want, np.clip(plain, *clamp))
            for bound in clamp:
                assert bound is None or (got == np.float32(bound)).mean() > 0.05
    finally:
        nat._set_int8_isa(nat.int8_isas()[0])
    with pytest.raises(ValueError, match="clamp"):
        rt8.Int8ConvStep(w, None, in_q=(0.02, 128), out_q=(0.05, 0), clamp=(0, 6))
    with pytest.raises(ValueError, match="clamp"):
        rt8.Int8ConvStep(w, None, in_q=(0.02, 128), clamp=(0, 6), pool=(2, 2))


@pytest.mark.parametrize("native", [True, False])
def test_steps_write_into_a_given_buffer(native):
    """``out=``: a step writes its result into a buffer of a previous result (reused, not allocated),
    the same bits; a buffer of the wrong dtype or shape is refused."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((8, 4, 3, 3)).astype(np.float32) * 0.2
    x = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    for out_q in ((0.05, 0), None):
        step = rt8.Int8ConvStep(w, padding=1, in_q=(0.02, 128), out_q=out_q, relu=True, out_padding=1, native=native)
        first = step(x)
        buf = first.data if out_q is not None else first
        want = buf.copy()
        buf[...] = 7
        again = step(x, out=buf)
        got = again.data if out_q is not None else again
        assert got is buf or np.shares_memory(got, buf)
        np.testing.assert_array_equal(got, want)
        with pytest.raises(ValueError):
            step(x, out=np.zeros(buf.shape, np.float64))
        with pytest.raises(ValueError):
            step(x, out=np.zeros((1,) + buf.shape[1:], buf.dtype))
    wl = rng.standard_normal((6, 12)).astype(np.float32) * 0.3
    xl = rng.standard_normal((3, 12)).astype(np.float32)
    lin = rt8.Int8LinearStep(wl, in_q=(0.03, 100), out_q=(0.1, 0), native=native)
    buf = lin(xl).data
    want = buf.copy()
    buf[...] = 0
    assert np.shares_memory(lin(xl, out=buf).data, buf)
    np.testing.assert_array_equal(buf, want)
