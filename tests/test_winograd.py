"""Winograd F(4x4, 3x3) and F(4x4, 5x5) forms of SparseConv2d: against torch on every ISA, over
shapes that cut tiles, tile vectors, register tiles and chunks in every place; and the rule that picks it."""

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, strategies as st

from deepcomp import _native as nat

sys.path.insert(0, str(Path(__file__).parent))
from test_kernels import HYP, SUPPORTED_ISAS, assert_close, make_conv  # noqa: E402


@pytest.fixture
def winograd():
    """Every layer that fits runs in Winograd form; the knobs and the ISA come back afterwards."""
    threshold = nat._set_conv_winograd_threshold(0.0)
    chunk = nat._set_winograd_chunk_bytes(8 << 20)
    nat._set_winograd_chunk_bytes(chunk)
    per_thread = nat._set_winograd_thread_bytes(0)
    nat._set_winograd_thread_bytes(per_thread)
    budget = nat._set_winograd_memory_bytes(-1)
    nat._set_winograd_memory_bytes(budget)
    streaming = nat._set_winograd_streaming(True)
    threads = nat.get_num_threads()
    yield
    nat._set_conv_winograd_threshold(threshold)
    nat._set_winograd_chunk_bytes(chunk)
    nat._set_winograd_thread_bytes(per_thread)
    nat._set_winograd_memory_bytes(budget)
    nat._set_winograd_streaming(streaming)
    nat.set_num_threads(threads)
    nat._set_isa(SUPPORTED_ISAS[0])


def reference(x, wt, b, padding, relu=False, scale=None, shift=None):
    y = F.conv2d(torch.from_numpy(x), wt, b, padding=padding)
    if scale is not None:
        y = y * torch.from_numpy(scale)[None, :, None, None] + torch.from_numpy(shift)[None, :, None, None]
    return F.relu(y) if relu else y


@HYP
@given(
    isa=st.sampled_from(SUPPORTED_ISAS),
    k=st.sampled_from([3, 5]),
    cin=st.integers(16, 40),
    cout=st.integers(1, 37),
    padding=st.tuples(st.integers(0, 3), st.integers(0, 3)),
    n=st.sampled_from([1, 2, 3]),
    hw=st.tuples(st.integers(3, 30), st.integers(3, 75)),
    density=st.sampled_from([0.0, 0.3, 1.0]),
    layout=st.sampled_from(["fp32", "codebook"]),
    epilogue=st.sampled_from(["none", "relu", "bn_relu"]),
    chunk=st.sampled_from([1, 50_000, 8 << 20]),
    per_thread=st.sampled_from([0, 200_000, 640 << 10, 4 << 20]),
    threads=st.sampled_from([1, 2, 3]),
    form=st.sampled_from(["stored", "streamed"]),
    seed=st.integers(0, 2**31),
)
def test_winograd_matches_torch(winograd, isa, k, cin, cout, padding, n, hw, density, layout, epilogue, chunk,
                                per_thread, threads, form, seed):
    """Widths up to 75 (19 tiles: more than one 16-lane vector per tile row, a partial last one),
    heights and widths not multiples of 4, output channels not multiples of the register tile; chunks
    of whole tile rows split by phase (per_thread = 0), from one tile row (chunk = 1 byte) up to
    everything in one, or chunks of 1 to 3 tile vectors per thread. The streamed form (no room in the
    memory budget) transforms the weights per call; 5x5 layers then run on the direct kernels."""
    nat._set_isa(isa)
    nat._set_winograd_memory_bytes(0 if form == "streamed" else -1)  # examples share the fixture
    nat._set_winograd_chunk_bytes(chunk)
    nat._set_winograd_thread_bytes(per_thread)
    nat.set_num_threads(threads)
    rng = np.random.default_rng(seed)
    H, W = hw
    layer, wt, b = make_conv(rng, cin, cout, k, k, 1, padding, 1, 1, density, layout)
    x = rng.standard_normal((n, cin, H, W)).astype(np.float32)
    scale = shift = None
    if epilogue == "bn_relu":
        scale = rng.uniform(0.5, 2.0, cout).astype(np.float32)
        shift = rng.standard_normal(cout).astype(np.float32)
    relu = epilogue != "none"
    if H + 2 * padding[0] < k or W + 2 * padding[1] < k:
        with pytest.raises(ValueError):
            layer(x, relu, scale, shift)
        return
    kernel = layer.kernel_for(H, W, n)
    if density == 0:
        want = {"sparse"}
    elif form == "stored":
        want = {"winograd"}
    else:  # 5x5 layers do not stream: the direct kernels (the dense one at 100%)
        want = {"winograd-streamed"} if k == 3 else {"sparse", "dense"}
    assert kernel in want
    got = layer(x, relu, scale, shift)
    assert_close(got, reference(x, wt, b, padding, relu, scale, shift).numpy())


@pytest.mark.parametrize("isa", SUPPORTED_ISAS)
@pytest.mark.parametrize("per_thread", [0, 4 << 20])
@pytest.mark.parametrize("tiles", [3, 17, 20, 21])
@pytest.mark.parametrize("k", [3, 5])
def test_winograd_last_tile_vector(winograd, isa, per_thread, tiles, k):
    """A last tile vector with 1 to 5 tiles in it, or a call with fewer tiles than one vector: the
    narrow tail kernels where it is mostly empty, and the GEMM tiles otherwise, on both drivers."""
    nat._set_isa(isa)
    nat._set_winograd_thread_bytes(per_thread)
    rng = np.random.default_rng(tiles)
    layer, wt, b = make_conv(rng, 24, 21, k, k, 1, k // 2, 1, 1, 0.5, "fp32")
    x = rng.standard_normal((1, 24, 4, 4 * tiles)).astype(np.float32)
    assert layer.kernel_for(4, 4 * tiles) == "winograd"
    assert_close(layer(x, True), reference(x, wt, b, k // 2, relu=True).numpy())


@pytest.mark.parametrize("shape", [(128, 256, 3, 56, 0.53), (64, 192, 5, 27, 0.38)],
                         ids=["vgg-conv3_1", "alexnet-conv2"])
def test_winograd_paper_layer_is_chosen_and_exact(winograd, shape):
    """VGG-16's conv3_1 and AlexNet's conv2 (5x5) at their paper densities: Winograd by default,
    within 1e-4 of torch, and the same result as the direct kernel."""
    cin, cout, k, hw, density = shape
    nat._set_conv_winograd_threshold(-1.0)  # the default rule
    rng = np.random.default_rng(3)
    layer, wt, b = make_conv(rng, cin, cout, k, k, 1, k // 2, 1, 1, density, "codebook")
    x = rng.standard_normal((1, cin, hw, hw)).astype(np.float32)
    assert layer.kernel_for(hw, hw) == "winograd"
    got = layer(x, True)
    assert_close(got, reference(x, wt, b, k // 2, relu=True).numpy())
    nat._set_conv_winograd_threshold(99.0)
    assert layer.kernel_for(hw, hw) != "winograd"
    assert_close(got, layer(x, True))


def test_winograd_rule():
    """The default rule: not for too few tiles (a 14 x 14 plane at batch 1, but at batch 8), too few
    input channels, a 22%-dense layer with 64 channels (the transforms cost more than they save),
    strides, dilations, groups or kernel sizes other than 3x3 and 5x5; forced on with threshold 0 where
    it fits."""
    rng = np.random.default_rng(4)
    deep = make_conv(rng, 512, 512, 3, 3, 1, 1, 1, 1, 0.35, "fp32")[0]
    assert deep.kernel_for(14, 14, 1) != "winograd"
    assert deep.kernel_for(14, 14, 8) == "winograd"
    thin = make_conv(rng, 8, 64, 3, 3, 1, 1, 1, 1, 0.6, "fp32")[0]
    assert thin.kernel_for(56, 56) != "winograd"
    sparse = make_conv(rng, 64, 64, 3, 3, 1, 1, 1, 1, 0.22, "fp32")[0]
    assert sparse.kernel_for(224, 224) != "winograd"
    others = [make_conv(rng, 32, 32, 3, 3, 2, 1, 1, 1, 0.6, "fp32")[0],
              make_conv(rng, 32, 32, 3, 3, 1, 2, 2, 1, 0.6, "fp32")[0],
              make_conv(rng, 32, 32, 3, 3, 1, 1, 1, 2, 0.6, "fp32")[0],
              make_conv(rng, 32, 32, 7, 7, 1, 3, 1, 1, 0.6, "fp32")[0],
              make_conv(rng, 32, 32, 3, 5, 1, (1, 2), 1, 1, 0.6, "fp32")[0]]
    prev = nat._set_conv_winograd_threshold(0.0)
    try:
        assert sparse.kernel_for(224, 224) == "winograd"
        assert all(layer.kernel_for(40, 40) != "winograd" for layer in others)
    finally:
        nat._set_conv_winograd_threshold(prev)


@pytest.mark.parametrize("form", ["stored", "streamed"])
def test_winograd_threads_share_one_layer(winograd, form):
    """One layer called from several Python threads at once gives each the single-thread result."""
    if form == "streamed":
        nat._set_winograd_memory_bytes(0)
    rng = np.random.default_rng(5)
    layer, wt, b = make_conv(rng, 32, 48, 3, 3, 1, 1, 1, 1, 0.4, "fp32")
    xs = [rng.standard_normal((2, 32, 20 + 4 * i, 37)).astype(np.float32) for i in range(4)]
    want = [layer(x, True) for x in xs]
    assert layer.kernel_for(20, 37, 2) == ("winograd-streamed" if form == "streamed" else "winograd")
    got = [None] * len(xs)

    def run(i):
        for _ in range(5):
            got[i] = layer(xs[i], True)

    ts = [threading.Thread(target=run, args=(i,)) for i in range(len(xs))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_winograd_switching_isa_rebuilds(winograd):
    """The transformed weights are laid out for one ISA's register tile; a switch rebuilds them."""
    rng = np.random.default_rng(6)
    layer, wt, b = make_conv(rng, 20, 19, 3, 3, 1, 1, 1, 1, 0.5, "fp32")
    x = rng.standard_normal((1, 20, 33, 33)).astype(np.float32)
    ref = reference(x, wt, b, 1).numpy()
    for isa in SUPPORTED_ISAS + SUPPORTED_ISAS[:1]:
        nat._set_isa(isa)
        assert_close(layer(x), ref)


@pytest.mark.parametrize("streaming", [False, True])
def test_winograd_memory_budget(winograd, streaming):
    """The transformed weights of all layers stay within the budget: a layer that does not fit runs
    in the streamed form or, with streaming off, on the direct kernels (same result either way), and
    keeps transformed weights once another layer frees room, which then leaves none for a third."""
    nat._set_conv_winograd_threshold(-1.0)
    nat._set_winograd_streaming(streaming)
    rng = np.random.default_rng(7)
    first = make_conv(rng, 64, 48, 3, 3, 1, 1, 1, 1, 0.5, "fp32")[0]
    second, wt, b = make_conv(rng, 64, 48, 3, 3, 1, 1, 1, 1, 0.5, "fp32")
    one = 36 * 48 * 64 * 4  # 48 output channels: a multiple of every ISA's register tile
    nat._set_winograd_memory_bytes(one + one // 2)
    x = rng.standard_normal((1, 64, 56, 56)).astype(np.float32)
    want = reference(x, wt, b, 1, relu=True).numpy()
    assert first.kernel_for(56, 56) == "winograd"
    assert second.kernel_for(56, 56) == ("winograd-streamed" if streaming else "sparse")
    assert_close(second(x, True), want)
    del first
    assert second.kernel_for(56, 56) == "winograd"
    assert_close(second(x, True), want)
    third = make_conv(rng, 64, 48, 3, 3, 1, 1, 1, 1, 0.5, "fp32")[0]
    assert third.kernel_for(56, 56) == ("winograd-streamed" if streaming else "sparse")


def test_winograd_streamed_rule(winograd):
    """Over the budget, a 3x3 layer streams where each image has at least 48 tiles (28 x 28: 49) and
    runs on the direct kernels on smaller planes (14 x 14: 16 tiles), at any batch; 5x5 layers never
    stream."""
    nat._set_conv_winograd_threshold(-1.0)
    nat._set_winograd_memory_bytes(0)
    rng = np.random.default_rng(8)
    layer, wt, b = make_conv(rng, 256, 64, 3, 3, 1, 1, 1, 1, 0.34, "codebook")
    assert layer.kernel_for(28, 28, 1) == "winograd-streamed"
    assert layer.kernel_for(14, 14, 8) == "sparse"
    x = rng.standard_normal((1, 256, 28, 28)).astype(np.float32)
    assert_close(layer(x, True), reference(x, wt, b, 1, relu=True).numpy())
    five = make_conv(rng, 64, 192, 5, 5, 1, 2, 1, 1, 0.38, "fp32")[0]
    assert five.kernel_for(27, 27, 8) == "sparse"
    nat._set_winograd_streaming(False)
    assert layer.kernel_for(28, 28, 1) == "sparse"


@pytest.mark.parametrize("isa", SUPPORTED_ISAS)
def test_winograd_streamed_chunks(winograd, isa):
    """The streamed form over several chunks of tile rows (a plane of V is capped at 128 KB: 8 of the
    16 tile rows of a 64 x 64 image with 256 input channels) and a batch of two, with output channels
    not a multiple of the register tile or of a task's four tiles."""
    nat._set_isa(isa)
    nat._set_winograd_memory_bytes(0)
    rng = np.random.default_rng(9)
    layer, wt, b = make_conv(rng, 256, 61, 3, 3, 1, 1, 1, 1, 0.3, "codebook")
    x = rng.standard_normal((2, 256, 64, 61)).astype(np.float32)
    assert layer.kernel_for(64, 61, 2) == "winograd-streamed"
    assert_close(layer(x, True), reference(x, wt, b, 1, relu=True).numpy())


def test_winograd_memory_env():
    """DEEPCOMP_WINOGRAD_MB: unset or empty, the 32 MB default; 0 keeps no transformed weights (the
    5x5 layer runs on the direct kernels); negative, no limit."""
    code = ("import numpy as np, sys; sys.path.insert(0, %r); from test_kernels import make_conv; "
            "import deepcomp._native as nat; "
            "layer = make_conv(np.random.default_rng(0), 64, 192, 5, 5, 1, 2, 1, 1, 0.38, 'codebook')[0]; "
            "print(layer.kernel_for(27, 27), nat._set_winograd_memory_bytes(0))" % str(Path(__file__).parent))
    got = {}
    for mb in [None, "", "0", "-1", "12"]:
        env = {k: v for k, v in os.environ.items() if k != "DEEPCOMP_WINOGRAD_MB"}
        if mb is not None:
            env["DEEPCOMP_WINOGRAD_MB"] = mb
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        kernel, budget = out.stdout.split()
        got[mb] = (kernel, int(budget))
    assert got[None] == got[""] == ("winograd", 32 << 20)
    assert got["0"][0] in ("sparse", "dense") and got["0"][1] == 0
    assert got["-1"] == ("winograd", -1) and got["12"] == ("winograd", 12 << 20)
