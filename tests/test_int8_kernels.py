"""The int8 kernels equal the numpy integer reference (deepcomp.runtime.int8_reference) exactly, on
every int8 ISA path this CPU runs, over property-tested shapes: sparse and dense conv with stride,
padding, dilation, fused max-pool, uint8 (with the next layer's padding) and fp32 outputs, and
sparse/dense linear at batch 1 and N."""

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

nat = pytest.importorskip("deepcomp._native")
if not hasattr(nat, "Int8Conv2d"):
    pytest.skip("this build has no int8 kernels", allow_module_level=True)

from deepcomp.runtime import int8_reference as ref  # noqa: E402

ISAS = nat.int8_isas()
SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                           HealthCheck.function_scoped_fixture])


@pytest.fixture
def restore():
    threads = nat.get_num_threads()
    yield
    nat._set_int8_isa(ISAS[0])
    nat._set_int8_split_fraction(-1)
    nat.set_num_threads(threads)


def block_sparse(rng, shape, density, weights="full"):
    """int8 weights [OC, C, ...] whose 1x4 blocks along C are kept or zeroed whole. weights: "full"
    (uniform over int8), "bounded" (in [-64, 64]: every block pair-bounded) or "mixed" (bounded, with
    one weight in 25 at -128 or 127)."""
    if weights == "full":
        w = rng.integers(-128, 128, shape).astype(np.int8)
    else:
        w = rng.integers(-64, 65, shape).astype(np.int8)
        if weights == "mixed":
            big = rng.random(shape) < 0.04
            w[big] = rng.choice(np.int8([-128, 127]), int(big.sum()))
    G = -(-shape[1] // 4)
    keep = rng.random((shape[0], G) + shape[2:]) < density
    w *= np.repeat(keep, 4, axis=1)[:, :shape[1]].astype(np.int8)
    return w


def requant_params(rng, oc, scale):
    m = (rng.random(oc) * scale).astype(np.float32)
    m[rng.random(oc) < 0.1] = 0.0  # an all-zero channel's scale
    return m, (rng.standard_normal(oc) * 20).astype(np.float32)


@SETTINGS
@given(isa=st.sampled_from(ISAS), kernel=st.sampled_from(["sparse", "dense", "auto", "tiled"]), n=st.integers(1, 2),
       cin=st.integers(1, 13), cout=st.integers(1, 11), hw=st.tuples(st.integers(1, 12), st.integers(1, 20)),
       k=st.tuples(st.integers(1, 4), st.integers(1, 4)), stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       pad=st.tuples(st.integers(0, 2), st.integers(0, 2)), dil=st.sampled_from([(1, 1), (2, 1), (1, 2)]),
       pool=st.sampled_from([None, (2, 2), (3, 2), (2, 1), (3, 3)]), out=st.sampled_from(["u8", "f32"]),
       relu=st.booleans(), zp_in=st.sampled_from([0, 3, 128]), zp_out=st.sampled_from([0, 7]),
       out_pad=st.integers(0, 1), density=st.sampled_from([0.0, 0.2, 0.6, 1.0]), threads=st.sampled_from([1, 2]),
       weights=st.sampled_from(["full", "bounded", "mixed"]), split=st.sampled_from([-1, 1.0]),
       seed=st.integers(0, 2**31))
def test_conv_equals_reference(restore, isa, kernel, n, cin, cout, hw, k, stride, pad, dil, pool, out, relu, zp_in,
                               zp_out, out_pad, density, threads, weights, split, seed):
    H, W = hw
    oh = (H + 2 * pad[0] - dil[0] * (k[0] - 1) - 1) // stride[0] + 1
    ow = (W + 2 * pad[1] - dil[1] * (k[1] - 1) - 1) // stride[1] + 1
    pk = pool[0] if pool else 1
    assume(oh >= pk and ow >= pk and H + 2 * pad[0] >= dil[0] * (k[0] - 1) + 1
           and W + 2 * pad[1] >= dil[1] * (k[1] - 1) + 1)
    nat._set_int8_isa(isa)
    nat._set_int8_split_fraction(split)  # 1.0: split every block that is not pair-bounded (on avx2)
    nat.set_num_threads(threads)
    rng = np.random.default_rng(seed)
    w = block_sparse(rng, (cout, cin) + k, density, weights)
    m, b = requant_params(rng, cout, 0.02)
    q = rng.integers(0, 256, (n, cin, H, W)).astype(np.uint8)
    args = dict(stride=stride, padding=pad, dilation=dil, zp_in=zp_in, relu=relu, out=out, zp_out=zp_out,
                out_padding=out_pad, pool=pool, kernel=kernel)
    if stride[1] == 1 and pad[1] > dil[1] * (k[1] - 1):  # wider than the shared-padding rows hold
        with pytest.raises(ValueError, match="padding along W must be at most dilation"):
            nat.Int8Conv2d(w, m, b, **args)
        return
    conv = nat.Int8Conv2d(w, m, b, **args)
    x = ref.pack_u8(q, zp_in, pad, stride)
    y = conv.forward(x, H, W)
    want = ref.conv2d(q, zp_in, w, m, b, stride=stride, padding=pad, dilation=dil, relu=relu, pool=pool, out=out,
                      zp_out=zp_out)
    if out == "u8":
        OH, OW = conv.out_size(H, W)
        lay = nat.int8_layout(cout, OH, OW, out_pad, 1)
        assert y.shape == (n, lay["bytes"])
        # The next layer reads the padding and the channels past cout as the zero point.
        full = y[:, :4 * lay["G"] * lay["group"]].reshape(n, lay["G"], lay["Hq"], lay["Wq"], 4)
        border = np.ones(full.shape, bool)
        border[:, :, out_pad:out_pad + OH, out_pad:out_pad + OW] = False
        assert (full[border] == zp_out).all() and (y[:, 4 * lay["G"] * lay["group"]:] == zp_out).all()
        y = ref.unpack(y, cout, OH, OW, out_pad)
    assert y.shape == want.shape
    np.testing.assert_array_equal(y, want)


def unbounded_blocks(w):
    """Kept 1x4 blocks with a weight pair (channels 0-1 or 2-3 of the block) over |a| + |b| = 128."""
    oc, c = w.shape[:2]
    a = np.zeros((oc, -(-c // 4) * 4) + w.shape[2:], np.int32)
    a[:, :c] = np.abs(w.astype(np.int32))
    a = a.reshape((oc, -1, 4) + w.shape[2:])
    return int(((a[:, :, 0] + a[:, :, 1] > 128) | (a[:, :, 2] + a[:, :, 3] > 128)).sum())


@pytest.mark.parametrize("kernel", ["sparse", "dense", "tiled"])
def test_avx2_pairs_split_what_vpmaddubsw_would_saturate(restore, kernel):
    """On the AVX2 path a conv whose blocks are mostly pair-bounded splits the others in two and runs
    the vpmaddubsw kernels (pairs); more unbounded blocks than the split fraction keep the general
    kernels. Both give the reference's bits, here and after switching paths."""
    if "avx2" not in ISAS:
        pytest.skip("no avx2 here")
    rng = np.random.default_rng(21)
    w = block_sparse(rng, (12, 24, 3, 3), 0.4, "mixed")
    extra = unbounded_blocks(w)
    assert 0 < extra < 0.3 * np.count_nonzero(np.abs(w.reshape(12, 6, 4, 9).astype(np.int32)).sum(2))
    m, b = requant_params(rng, 12, 0.01)
    q = rng.integers(0, 256, (2, 24, 6, 21)).astype(np.uint8)
    want = ref.conv2d(q, 3, w, m, b, stride=(1, 1), padding=(1, 1), dilation=(1, 1), relu=True, pool=None,
                      out="f32", zp_out=0)
    x = ref.pack_u8(q, 3, (1, 1), (1, 1))
    nat._set_int8_isa("avx2")
    split = nat.Int8Conv2d(w, m, b, padding=1, zp_in=3, relu=True, out="f32", kernel=kernel)
    nat._set_int8_split_fraction(0.0)
    whole = nat.Int8Conv2d(w, m, b, padding=1, zp_in=3, relu=True, out="f32", kernel=kernel)
    assert split.pairs and not whole.pairs and split.blocks == whole.blocks
    if kernel != "dense":  # the dense kernel runs each split tap's 4 channels, zeros included
        assert split.executed_blocks == whole.executed_blocks + extra
    for isa in ISAS:
        nat._set_int8_isa(isa)
        np.testing.assert_array_equal(split.forward(x, 6, 21), want)
        np.testing.assert_array_equal(whole.forward(x, 6, 21), want)


@pytest.mark.parametrize("isa", ISAS)
def test_tiled_groups_cover_every_mask_and_width(restore, isa):
    """Every one of the 15 patterns of 4 channels, and widths that end in each partial pass of vectors."""
    nat._set_int8_isa(isa)
    rng = np.random.default_rng(5)
    w = block_sparse(rng, (12, 64, 3, 3), 0.35)
    kept = (w.reshape(3, 4, 16, 4, 9) != 0).any(axis=3)  # [group, channel, input group, tap]
    masks = {int(sum(kept[q, o, g, t] << o for o in range(4))) for q in range(3) for g in range(16) for t in range(9)}
    assert masks == set(range(16))  # every pattern (and "nobody") occurs in this weight
    m, b = requant_params(rng, 12, 0.01)
    for H, W in ((3, 70), (5, 37), (2, 129)):
        q = rng.integers(0, 256, (2, 64, H, W)).astype(np.uint8)
        auto = nat.Int8Conv2d(w, m, b, padding=1, zp_in=5, relu=True, out="f32")
        tiled = nat.Int8Conv2d(w, m, b, padding=1, zp_in=5, relu=True, out="f32", kernel="tiled")
        assert tiled.tiled_groups == 3 and auto.tiled_groups + auto.dense_groups == 3
        assert tiled.executed_blocks == tiled.blocks  # no zero block is executed
        want = ref.conv2d(q, 5, w, m, b, stride=(1, 1), padding=(1, 1), dilation=(1, 1), relu=True, pool=None,
                          out="f32", zp_out=0)
        x = ref.pack_u8(q, 5, (1, 1), (1, 1))
        np.testing.assert_array_equal(tiled.forward(x, H, W), want)
        np.testing.assert_array_equal(auto.forward(x, H, W), want)


@pytest.mark.parametrize("threads", [1, 2])
def test_overlapping_pool_row_blocks(restore, threads):
    """An overlapping pool (3/2, as AlexNet's) over enough rows for several row blocks of different
    sizes: each block also computes the conv rows it shares with its neighbour, and the pooled rows,
    uint8 in the next layer's layout and fp32, are the reference's."""
    nat.set_num_threads(threads)
    rng = np.random.default_rng(11)
    w = block_sparse(rng, (64, 8, 3, 3), 0.5, "bounded")
    m, b = requant_params(rng, 64, 0.01)
    H, W = 57, 40
    q = rng.integers(0, 256, (2, 8, H, W)).astype(np.uint8)
    x = ref.pack_u8(q, 3, (0, 0), (1, 1))
    for out in ("u8", "f32"):
        conv = nat.Int8Conv2d(w, m, b, zp_in=3, relu=True, out=out, zp_out=7, out_padding=1, pool=(3, 2))
        want = ref.conv2d(q, 3, w, m, b, stride=(1, 1), padding=(0, 0), dilation=(1, 1), relu=True, pool=(3, 2),
                          out=out, zp_out=7)
        y = conv.forward(x, H, W)
        if out == "u8":
            y = ref.unpack(y, 64, *conv.out_size(H, W), 1)
        np.testing.assert_array_equal(y, want)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("kh, channels", [(3, 4 * 49), (3, 4 * 100 + 3), (1, 4 * 145), (5, 4 * 29)])
def test_tiled_k_blocks_add_up(restore, isa, kh, channels):
    """Channel counts past one K-block of the tiled pass (48 groups of a 3x3 kernel, 144 of a 1x1, 28
    of a 5x5): every block's sums are added to the ones before it, and zero blocks stay zero."""
    nat._set_int8_isa(isa)
    rng = np.random.default_rng(kh * channels)
    w = block_sparse(rng, (9, channels, kh, kh), 0.3)
    w[4] = 0  # a channel with no blocks in any K-block
    m, b = requant_params(rng, 9, 0.001)
    H, W = 4, 11
    q = rng.integers(0, 256, (2, channels, H, W)).astype(np.uint8)
    pad = (kh // 2, kh // 2)
    conv = nat.Int8Conv2d(w, m, b, padding=pad, zp_in=3, relu=False, out="f32", kernel="tiled")
    want = ref.conv2d(q, 3, w, m, b, stride=(1, 1), padding=pad, dilation=(1, 1), relu=False, pool=None,
                      out="f32", zp_out=0)
    np.testing.assert_array_equal(conv.forward(ref.pack_u8(q, 3, pad, (1, 1)), H, W), want)


@SETTINGS
@given(isa=st.sampled_from(ISAS), kernel=st.sampled_from(["sparse", "dense"]), n=st.integers(1, 40),
       fin=st.integers(1, 150), fout=st.integers(1, 140), out=st.sampled_from(["u8", "f32"]), relu=st.booleans(),
       zp_in=st.sampled_from([0, 9]), density=st.sampled_from([0.0, 0.1, 0.5, 1.0]), threads=st.sampled_from([1, 2]),
       weights=st.sampled_from(["full", "bounded"]), seed=st.integers(0, 2**31))
def test_linear_equals_reference(restore, isa, kernel, n, fin, fout, out, relu, zp_in, density, threads, weights,
                                 seed):
    """Bounded weights run on the path's pairs table where it has one (AVX2's vpmaddubsw kernels)."""
    nat._set_int8_isa(isa)
    nat.set_num_threads(threads)
    rng = np.random.default_rng(seed)
    w = block_sparse(rng, (fout, fin), density, weights)
    m, b = requant_params(rng, fout, 0.01)
    q = rng.integers(0, 256, (n, fin)).astype(np.uint8)
    lin = nat.Int8Linear(w, m, b, zp_in=zp_in, relu=relu, out=out, kernel=kernel)
    assert lin.pairs == (unbounded_blocks(w) == 0)
    want = ref.linear(q, zp_in, w, m, b, relu=relu, out=out)
    np.testing.assert_array_equal(lin.forward(q), want)
    np.testing.assert_array_equal(lin.forward(q[0]), want[0])


@SETTINGS
@given(isa=st.sampled_from(ISAS), n=st.integers(1, 2), c=st.integers(1, 9), h=st.integers(1, 9),
       w=st.integers(1, 40), pad=st.tuples(st.integers(0, 3), st.integers(0, 3)),
       stride=st.tuples(st.integers(1, 4), st.integers(1, 4)), inv_scale=st.sampled_from([0.5, 17.0, 300.0]),
       zp=st.sampled_from([0, 128, 255]), threads=st.sampled_from([1, 2]), seed=st.integers(0, 2**31))
def test_pack_equals_reference(restore, isa, n, c, h, w, pad, stride, inv_scale, zp, threads, seed):
    nat._set_int8_isa(isa)
    nat.set_num_threads(threads)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    # ties (round half to even on both sides), NaN and infinities, in the vector part and the tail
    special = np.array([0.5, 1.5, 2.5, -0.5, np.nan, np.inf, -np.inf], np.float32)
    at = rng.integers(0, x.size, 6)
    x.flat[at] = special[rng.integers(0, len(special), 6)] / np.float32(inv_scale)
    got = nat.int8_pack(x, inv_scale, zp, padding=pad, stride=stride)
    np.testing.assert_array_equal(got, ref.pack(x, inv_scale, zp, pad, stride))
    assert nat.int8_layout(c, h, w, pad, stride) == ref.layout(c, h, w, pad, stride)


@SETTINGS
@given(isa=st.sampled_from(ISAS), n=st.integers(1, 2), c=st.integers(1, 5), h=st.integers(1, 9),
       w=st.integers(4, 70), kw=st.integers(4, 12), pad=st.tuples(st.integers(0, 3), st.integers(0, 3)),
       sh=st.integers(1, 4), zp=st.sampled_from([0, 128, 255]), threads=st.sampled_from([1, 2]),
       seed=st.integers(0, 2**31))
def test_pack_columns_equals_reference(restore, isa, n, c, h, w, kw, pad, sh, zp, threads, seed):
    """The columns-in-lanes layout: the rewritten image (zeros outside, so the zero point after
    quantizing), quantized and laid out as any 4C-channel image with padding (ph, 0), stride (sh, 1)."""
    assume(w + 2 * pad[1] >= kw)
    nat._set_int8_isa(isa)
    nat.set_num_threads(threads)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    x.flat[rng.integers(0, x.size, 3)] = [np.nan, 2.5 / 17.0, -np.inf]
    width = ref.columns_width(w, pad[1], kw)
    got = nat.int8_pack_columns(x, 17.0, zp, pad, sh, width)
    np.testing.assert_array_equal(got, ref.pack(ref.columns_in_lanes(x, pad[1], width), 17.0, zp, (pad[0], 0), (sh, 1)))


def test_columns_rewrite_is_the_same_convolution():
    """conv(x, w, stride (sh, 4)) == conv(columns_in_lanes(x), columns_weight(w), stride (sh, 1)), exactly,
    for kernels shorter and longer than a lane and any left padding."""
    rng = np.random.default_rng(3)
    for c, kh, kw, pw, sh in [(3, 11, 11, 2, 4), (1, 3, 4, 0, 1), (2, 5, 7, 3, 2), (5, 2, 9, 1, 3)]:
        q = rng.integers(0, 256, (2, c, 13, 30)).astype(np.uint8)
        w = rng.integers(-127, 128, (6, c, kh, kw)).astype(np.int8)
        m, b = requant_params(rng, 6, 0.001)
        want = ref.conv2d(q, 7, w, m, b, stride=(sh, 4), padding=(1, pw), dilation=(1, 1), relu=False, pool=None,
                          out="f32", zp_out=0)
        width = ref.columns_width(30, pw, kw)
        got = ref.conv2d(ref.columns_in_lanes(q, pw, width, fill=7), 7, ref.columns_weight(w), m, b, stride=(sh, 1),
                         padding=(1, 0), dilation=(1, 1), relu=False, pool=None, out="f32", zp_out=0)
        np.testing.assert_array_equal(got, want)
    assert ref.columns_pay(3, 11, 4, 1) and not ref.columns_pay(3, 11, 2, 1) and not ref.columns_pay(64, 5, 4, 1)


def test_linear_has_no_tiled_kernel():
    w = np.ones((4, 8), np.int8)
    with pytest.raises(ValueError, match="Int8Linear: kernel must be 'auto', 'sparse' or 'dense', got 'tiled'"):
        nat.Int8Linear(w, np.ones(4, np.float32), np.zeros(4, np.float32), kernel="tiled")


def test_isa_names_and_errors(restore):
    assert nat.int8_isa() in ISAS and ISAS[-1] == "scalar"
    with pytest.raises(ValueError, match="unknown int8 ISA"):
        nat._set_int8_isa("sse9")
    w = np.zeros((2, 3, 3, 3), np.int8)
    ok = np.ones(2, np.float32)
    with pytest.raises(ValueError, match="m must have 2"):
        nat.Int8Conv2d(w, np.ones(3, np.float32), ok)
    with pytest.raises(ValueError, match=">= 0"):
        nat.Int8Conv2d(w, -ok, ok)
    conv = nat.Int8Conv2d(w, ok, ok, padding=1)
    with pytest.raises(ValueError, match="uint8"):
        conv.forward(np.zeros(5, np.uint8), 4, 4)
    with pytest.raises(ValueError, match="smaller than the pool"):
        nat.Int8Conv2d(w, ok, ok, pool=(3, 3)).out_size(4, 4)
    with pytest.raises(ValueError, match="too large"):
        nat.Int8Linear(np.zeros((1, 70000), np.int8), np.ones(1, np.float32), ok[:1])


def test_env_override_picks_the_path():
    import os
    import subprocess
    import sys
    base = {"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path),
            **{k: os.environ[k] for k in ("LD_PRELOAD", "ASAN_OPTIONS") if k in os.environ}}  # scripts/asan-tests.sh
    for name in ISAS:
        code = "import deepcomp._native as n; print(n.int8_isa())"
        env = {"DEEPCOMP_INT8_ISA": name, **base}
        got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert got.stdout.strip() == name
    env = {"DEEPCOMP_ISA": "scalar", **base}
    got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert got.stdout.strip() == "scalar"
