"""The native depthwise convolution against torch: every ISA and both AVX2 paths (phase planes,
channel-interleaved), strides, paddings, dilations, channel multipliers, widths that end in partial
vectors, channel counts that end in partial groups, fused clamps; and the runtime choosing it."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deepcomp import _native

# the instruction sets this machine runs: the best one and everything below it
ISAS = ("scalar", "avx2", "avx512")[: ("scalar", "avx2", "avx512").index(_native.isa()) + 1]
# (ISA, interleaved width): AVX2 once on the phase planes only (0) and once interleaved at every width
PATHS = [(name, width) for name in ISAS for width in ((0, 10**9) if name == "avx2" else (-1,))]
CASES = [
    # channels, multiplier, kernel, stride, padding, dilation, h, w
    (8, 1, 3, 1, 1, 1, 13, 17), (6, 2, 5, 2, 2, 1, 20, 9), (4, 1, 3, 2, 0, 2, 11, 15), (3, 1, 7, 1, 3, 1, 5, 40),
    (5, 1, 3, 3, 1, 1, 16, 16), (2, 1, (3, 5), (1, 2), (1, 2), 1, 9, 33), (16, 1, 3, 2, 1, 1, 112, 112),
    (3, 1, 1, 1, 0, 1, 1, 1), (2, 1, 3, 2, 1, 1, 7, 8),
    # planes one or two vectors wide (rows as the accumulator chains; one-vector rows spill into the next)
    (7, 1, 3, 1, 1, 1, 7, 7), (3, 1, 3, 1, 1, 1, 9, 8), (5, 2, 5, 1, 2, 1, 19, 12), (4, 1, 3, 1, 1, 1, 17, 16),
    (6, 1, 5, 2, 2, 1, 14, 14), (3, 1, 7, 1, 3, 1, 23, 3),
]


@pytest.fixture
def isa():
    before = _native.isa()
    yield _native._set_isa
    _native._set_isa(before)


@pytest.fixture
def path(isa):
    """path(name, width): this ISA, outputs at most `width` wide interleaved (-1: the default rule)."""
    def choose(name, width):
        isa(name)
        _native._set_depthwise_interleaved_width(width)

    yield choose
    _native._set_depthwise_interleaved_width(-1)


@pytest.mark.parametrize("name,width", PATHS)
@pytest.mark.parametrize("case", CASES)
def test_depthwise_matches_torch(path, name, width, case):
    path(name, width)
    c, m, k, s, p, d, h, w = case
    kh, kw = (k, k) if isinstance(k, int) else k
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((c * m, 1, kh, kw)).astype(np.float32)
    b = rng.standard_normal(c * m).astype(np.float32)
    ref = F.conv2d(torch.from_numpy(x), torch.from_numpy(wt), torch.from_numpy(b), s, p, d, c).numpy()
    kern = _native.DepthwiseConv2d(wt, b, c, s, p, d)
    np.testing.assert_allclose(kern.forward(x), ref, atol=1e-4)
    np.testing.assert_allclose(kern.forward(x, 0.0, 6.0), np.clip(ref, 0, 6), atol=1e-4)
    np.testing.assert_allclose(kern.forward(x, 0.0), np.maximum(ref, 0), atol=1e-4)
    assert kern.output_size(h, w) == ref.shape[2:]


INTERLEAVED_CASES = [
    # channels, multiplier, kernel, stride, padding, dilation, h, w, batch, bias
    (13, 1, 3, 1, 1, 1, 7, 7, 8, True),  # a group of 5 channels at the end; 49 pixels: a 1-pixel block
    (21, 1, 5, 1, 2, 1, 7, 7, 1, False),
    (10, 1, 7, 1, 3, 1, 14, 14, 8, True),  # 14-wide rows: two blocks of 7
    (3, 1, 3, 2, 1, 1, 14, 14, 1, True),  # fewer channels than a group
    (12, 1, 5, 2, 2, 1, 28, 28, 8, True),  # stride 2 at the strided cutoff (14-wide outputs)
    (20, 1, 3, 2, 1, 1, 56, 56, 1, True),  # stride 2, 28-wide outputs: the widest strided default
    (9, 2, 3, 1, 0, 1, 9, 11, 2, True),  # multiplier 2, no padding, not square
    (8, 1, 3, 1, 2, 2, 10, 10, 1, True),  # dilation 2
    (16, 1, (3, 5), (2, 1), (1, 2), 1, 15, 9, 3, True),  # per-axis kernel, stride, padding
    (11, 1, 3, 1, 1, 1, 40, 41, 1, True),  # 41-wide rows: blocks of 7 and 6 (stride 1 at any width)
    (5, 1, 1, 1, 0, 1, 1, 1, 4, True),  # one pixel
]


@pytest.mark.skipif("avx2" not in ISAS, reason="the interleaved kernel is AVX2's")
@pytest.mark.parametrize("case", INTERLEAVED_CASES)
def test_interleaved_matches_torch(path, case):
    """The default rule sends these to the channel-interleaved kernel; it agrees with torch within 1e-4
    of the output's scale, with and without bias and fused clamps, at batch 1 and 8."""
    path("avx2", -1)
    c, m, k, s, p, d, h, w, n, has_bias = case
    kh, kw = (k, k) if isinstance(k, int) else k
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((c * m, 1, kh, kw)).astype(np.float32)
    b = rng.standard_normal(c * m).astype(np.float32) if has_bias else None
    ref = F.conv2d(torch.from_numpy(x), torch.from_numpy(wt), None if b is None else torch.from_numpy(b), s, p, d,
                   c).numpy()
    kern = _native.DepthwiseConv2d(wt, b, c, s, p, d)
    assert kern.kernel_for(h, w) == "depthwise_interleaved"
    scale = float(np.abs(ref).max())
    for lo, hi, want in [(None, None, ref), (0.0, None, np.maximum(ref, 0)), (0.0, 6.0, np.clip(ref, 0, 6))]:
        got = kern.forward(x, lo, hi)
        assert got.shape == ref.shape
        assert np.abs(got - want).max() <= 1e-4 * scale


def test_interleaved_rule():
    """Stride 1 interleaved at any width, strided layers up to 28-wide outputs; the knob overrides."""
    wt = np.zeros((8, 1, 3, 3), np.float32)
    s1, s2 = _native.DepthwiseConv2d(wt, None, 8, 1, 1), _native.DepthwiseConv2d(wt, None, 8, 2, 1)
    want = "depthwise_interleaved" if _native.isa() in ("avx2", "avx512") else "depthwise"
    assert s1.kernel_for(112, 112) == s2.kernel_for(56, 56) == want
    assert s2.kernel_for(112, 112) == "depthwise"
    try:
        assert _native._set_depthwise_interleaved_width(0) == -1
        assert s1.kernel_for(7, 7) == "depthwise"
    finally:
        _native._set_depthwise_interleaved_width(-1)


def test_depthwise_rejects_bad_shapes():
    wt = np.zeros((4, 1, 3, 3), np.float32)
    with pytest.raises(ValueError, match="multiple"):
        _native.DepthwiseConv2d(wt, None, 3)
    kern = _native.DepthwiseConv2d(wt, None, 4)
    with pytest.raises(ValueError, match="smaller than the kernel"):
        kern.forward(np.zeros((1, 4, 2, 2), np.float32))
    with pytest.raises(ValueError, match=r"\[N, 4, H, W\]"):
        kern.forward(np.zeros((1, 3, 8, 8), np.float32))


def test_runtime_runs_depthwise_natively_with_relu6_fused():
    from torch import nn

    from deepcomp.runtime import RuntimeModel
    from runtime_helpers import loaded_parts, prune_and_share

    model = prune_and_share(nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, padding=1, groups=8),
                                          nn.BatchNorm2d(8), nn.ReLU6(), nn.Conv2d(8, 4, 1)).eval())
    m = RuntimeModel(*loaded_parts(model, (3, 10, 10)))
    dw = next(s for s in m.steps if s.name == "1")
    assert type(dw.kernel).__name__ == "DepthwiseConv2d" and [s.name for s in m.steps] == ["0", "1", "4"]
    assert m.plan.steps[1].act == (0.0, 6.0)
    x = np.random.default_rng(0).standard_normal((2, 3, 10, 10)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(m(x), model(torch.from_numpy(x)).numpy(), atol=1e-5)


def test_depthwise_benchmark_case_agrees_with_torch():
    """benchmarks/depthwise.py's one case: both sides timed, outputs equal (stride 2, a 5x5 kernel,
    a channel multiplier), a label per shape."""
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
    from benchmarks import depthwise

    rng = np.random.default_rng(0)
    for key in [(8, 1, (3, 3), (1, 1), (1, 1), (1, 1), 9, 7), (6, 2, (5, 5), (2, 2), (2, 2), (1, 1), 11, 11)]:
        t_torch, t_dc, err = depthwise.run_case(key, 2, 1, rng)
        assert t_torch > 0 and t_dc > 0 and err < 1e-5
    assert depthwise.label((6, 2, (5, 5), (2, 2), (2, 2), (1, 1), 11, 11)) == "6ch 5x5 s2 p2 11x11 x2"
