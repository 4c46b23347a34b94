"""The deploy-side runtime: reference ops vs torch, native kernels vs reference, whole models vs
torch on the same pruned and shared weights, planning (fusion, BN folding), errors, threads, the
no-torch import guarantee, .dcz files end to end, and the torch adapter."""

import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import deepcomp.runtime as rt
from deepcomp.errors import DczError, DeepcompError, UnsupportedOpError
from deepcomp.runtime import InputShapeError, RuntimeModel, executor, ops, plan, reference
from deepcomp.zoo import LeNet5, LeNet300100

from runtime_helpers import coded_entry, loaded_parts, prune_and_share

RNG = np.random.default_rng(0)


def randn(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# deploy side never imports torch


def test_runtime_import_does_not_import_torch():
    code = ("import sys, deepcomp.runtime, deepcomp; deepcomp.load; "
            "print('torch' in sys.modules, 'torchvision' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# --------------------------------------------------------------------------------------------------
# ops: reference vs torch, native vs torch


def sparse_weight(shape, density=0.3):
    """Random sparse weights on at most 200 distinct levels (so they fit a uint8 codebook)."""
    w = (RNG.integers(-100, 101, shape) / 40.0).astype(np.float32)
    w[RNG.random(shape) > density] = 0
    return w


CONV_CASES = [
    # cin, cout, k, stride, padding, dilation, groups, hw
    (3, 8, (3, 3), (1, 1), (1, 1), (1, 1), 1, (9, 11)),
    (4, 6, (5, 3), (2, 1), (2, 0), (1, 2), 2, (12, 10)),
    (6, 6, (3, 3), (2, 2), (1, 1), (1, 1), 6, (7, 7)),
    (2, 5, (1, 1), (1, 1), (0, 0), (1, 1), 1, (4, 3)),
    (3, 4, (11, 11), (4, 4), (2, 2), (1, 1), 1, (31, 31)),
]


@pytest.mark.parametrize("impl", ["reference", "native"])
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d(impl, case):
    cin, cout, k, s, p, d, g, hw = case
    cls = reference.SparseConv2d if impl == "reference" else executor.kernel("SparseConv2d")
    w = sparse_weight((cout, cin // g, *k))
    e = coded_entry(w)
    b, scale, shift = randn(cout), randn(cout), randn(cout)
    x = randn(2, cin, *hw)
    conv = cls(e["row_ptr"], e["col"], cin, cout, k, s, p, d, g, cluster=e["cluster"], codebook=e["codebook"], bias=b)
    ref = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), s, p, d, g).numpy()
    np.testing.assert_allclose(conv.forward(x, False), ref, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(conv.forward(x, True, scale, shift), np.maximum(ref * scale[:, None, None] +
                               shift[:, None, None], 0), atol=1e-4, rtol=1e-4)
    dense = cls(np.arange(cout + 1, dtype=np.int64) * (w[0].size), np.tile(np.arange(w[0].size, dtype=np.int32), cout),
                cin, cout, k, s, p, d, g, values=w.reshape(-1))
    np.testing.assert_allclose(dense.forward(x, False), F.conv2d(torch.from_numpy(x), torch.from_numpy(w), None, s, p, d,
                               g).numpy(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("impl", ["reference", "native"])
def test_linear(impl):
    cls = reference.SparseLinear if impl == "reference" else executor.kernel("SparseLinear")
    w = sparse_weight((7, 13))
    e = coded_entry(w)
    b, x = randn(7), randn(5, 13)
    lin = cls(e["row_ptr"], e["col"], 13, cluster=e["cluster"], codebook=e["codebook"], bias=b)
    ref = x @ w.T + b
    np.testing.assert_allclose(lin.forward(x), ref, atol=1e-5)
    np.testing.assert_allclose(lin.forward(x, True), np.maximum(ref, 0), atol=1e-5)


POOL_CASES = [
    # kernel, stride, padding, dilation, ceil_mode, hw
    ((2, 2), (2, 2), (0, 0), (1, 1), False, (8, 8)),
    ((3, 3), (2, 2), (1, 1), (1, 1), True, (7, 10)),
    ((3, 2), (1, 2), (1, 0), (2, 1), False, (9, 6)),
    ((3, 3), (2, 2), (0, 0), (1, 1), True, (13, 13)),
]


@pytest.mark.parametrize("impl", ["reference", "native"])
@pytest.mark.parametrize("case", POOL_CASES)
def test_pools(impl, case):
    k, s, p, d, ceil, hw = case
    mod = reference if impl == "reference" else None
    get = (lambda n: getattr(reference, n)) if mod else executor.kernel
    x = randn(2, 3, *hw)
    tx = torch.from_numpy(x)
    np.testing.assert_allclose(get("max_pool2d")(x, k, s, p, d, ceil),
                               F.max_pool2d(tx, k, s, p, d, ceil).numpy(), atol=1e-6)
    for cip in (True, False):
        np.testing.assert_allclose(get("avg_pool2d")(x, k, s, p, ceil, cip),
                                   F.avg_pool2d(tx, k, s, p, ceil, cip).numpy(), atol=1e-5)
    for size in [(1, 1), (3, 2), (5, 7)]:
        np.testing.assert_allclose(get("adaptive_avg_pool2d")(x, size),
                                   F.adaptive_avg_pool2d(tx, size).numpy(), atol=1e-5)


# --------------------------------------------------------------------------------------------------
# whole models against torch on the same weights


def compare(model, shape, batch=4, dense_weights=(), atol=1e-4):
    model = prune_and_share(model.eval())
    graph, dense, coded = loaded_parts(model, shape, dense_weights)
    m = RuntimeModel(graph, dense, coded)
    x = randn(batch, *shape)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    y = m(x)
    assert y.shape == ref.shape and y.dtype == np.float32
    scale = max(1.0, float(np.abs(ref).max()))
    np.testing.assert_allclose(y, ref, atol=atol * scale, rtol=1e-3)
    assert (y.argmax(1) == ref.argmax(1)).all()
    return m, x, y


def test_lenet300100():
    m, _, _ = compare(LeNet300100(), (1, 28, 28))
    assert [layer.name for layer in m.layers] == ["fc1", "fc2", "fc3"]
    assert all(abs(layer.density - 0.4) < 0.01 for layer in m.layers)


def test_release_drops_loader_arrays_only_when_asked():
    model = prune_and_share(LeNet5().eval())
    graph, dense, coded = loaded_parts(model, (1, 28, 28))
    names = set(coded)
    x = randn(2, 1, 28, 28)
    y_keep = RuntimeModel(graph, dense, coded)(x)
    assert set(coded) == names  # the caller's dict is left alone by default
    m = RuntimeModel(graph, dense, coded, release=True)
    assert coded == {}  # handed over: the kernels hold their own layouts
    np.testing.assert_array_equal(m(x), y_keep)


def test_lenet5_with_one_dense_weight():
    m, x, y = compare(LeNet5(), (1, 28, 28), dense_weights=("conv2.weight",))
    conv2 = next(layer for layer in m.layers if layer.name == "conv2")
    assert conv2.density == 1.0 and conv2.nnz == 50 * 20 * 25
    # one sample without the batch dimension
    np.testing.assert_allclose(m(x[0]), y[0], atol=1e-5)
    assert m.input_shape == (1, 28, 28) and m.output_shape == (10,)


class BNModel(nn.Module):
    """Residual add, standalone BN after a concat, in-place ReLU, avg pool and torch.cat."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.branch = nn.Conv2d(8, 4, 1)
        self.bn3 = nn.BatchNorm2d(12)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False)
        self.fc = nn.Linear(12 * 4 * 4, 5)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(x))
        y += x
        y = self.relu(y)
        z = torch.cat([y, self.branch(y)], 1)
        z = self.relu(self.bn3(z))
        z = self.pool(z)
        return self.fc(torch.flatten(z, 1))


def test_bn_residual_concat():
    m, _, _ = compare(BNModel(), (3, 7, 7))
    ops = [s.name for s in m.steps]
    # relu after conv1+bn1 fused; the relu after the residual add fused; relu after bn3 fused
    assert "relu" not in ops and not any(name.startswith("relu#") for name in ops)


def test_fallback_to_reference_ops(monkeypatch):
    model = prune_and_share(BNModel().eval())
    graph, dense, coded = loaded_parts(model, (3, 7, 7))
    x = randn(2, 3, 7, 7)
    native = RuntimeModel(graph, dense, coded)(x)
    monkeypatch.setattr(ops, "_native", None)
    assert executor.native_kernels() == []
    np.testing.assert_allclose(RuntimeModel(graph, dense, coded)(x), native, atol=1e-5)


@pytest.mark.slow
def test_alexnet():
    tv = pytest.importorskip("torchvision")
    compare(tv.models.alexnet(), (3, 224, 224), batch=2)


def test_resnet18():
    tv = pytest.importorskip("torchvision")
    compare(tv.models.resnet18(), (3, 224, 224), batch=2)


def test_squeezenet_concat():
    tv = pytest.importorskip("torchvision")
    compare(tv.models.squeezenet1_1(), (3, 224, 224), batch=1)


@pytest.mark.slow
def test_vgg16():
    tv = pytest.importorskip("torchvision")
    compare(tv.models.vgg16(), (3, 224, 224), batch=1, atol=2e-4)


# --------------------------------------------------------------------------------------------------
# calling: shapes, dtypes, threads


@pytest.fixture(scope="module")
def lenet():
    model = prune_and_share(LeNet5().eval())
    graph, dense, coded = loaded_parts(model, (1, 28, 28))
    return model, RuntimeModel(graph, dense, coded)


def test_bad_inputs(lenet):
    _, m = lenet
    for bad in (np.zeros((2, 3, 28, 28), np.float32), np.zeros((28, 28), np.float32), np.zeros((2, 1, 28, 27))):
        with pytest.raises(InputShapeError, match=r"takes \[N, 1, 28, 28\]"):
            m(bad)
    with pytest.raises(DeepcompError, match="numbers"):
        m(np.array([["a"]]))
    assert m(np.zeros((0, 1, 28, 28), np.float32)).shape == (0, 10)
    x = RNG.integers(0, 3, (2, 1, 28, 28))  # integers are cast
    np.testing.assert_allclose(m(x), m(x.astype(np.float32)))


def test_input_is_not_modified(lenet):
    _, m = lenet
    x = randn(3, 1, 28, 28)
    keep = x.copy()
    m(x)
    np.testing.assert_array_equal(x, keep)


def test_threads(lenet):
    model, m = lenet
    xs = [randn(3, 1, 28, 28) for _ in range(8)]
    expect = [m(x) for x in xs]
    got = [None] * len(xs)
    errors = []

    def work(i):
        try:
            for _ in range(5):
                got[i] = m(xs[i])
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for a, b in zip(got, expect):
        np.testing.assert_array_equal(a, b)
    rt.set_num_threads(1)
    np.testing.assert_allclose(m(xs[0]), expect[0], atol=1e-6)
    assert rt.get_num_threads() == 1
    rt.set_num_threads(2)


# --------------------------------------------------------------------------------------------------
# malformed graphs


def lenet_parts():
    model = prune_and_share(LeNet300100().eval())
    return loaded_parts(model, (1, 28, 28))


def test_graph_errors():
    graph, dense, coded = lenet_parts()

    def expect(exc, needle, mutate):
        import copy
        g = copy.deepcopy(graph)
        d, c = dict(dense), dict(coded)
        mutate(g, d, c)
        with pytest.raises(exc, match=needle):
            RuntimeModel(g, d, c)

    expect(DczError, "version", lambda g, d, c: g.update(version=max(plan.GRAPH_VERSIONS) + 1))
    expect(UnsupportedOpError, "'erf'", lambda g, d, c: g["nodes"][2].update(op="erf"))
    # an op of graph version 2 in a version 1 graph
    expect(UnsupportedOpError, "'gelu'.*version 1", lambda g, d, c: (g.update(version=1), g["nodes"][2].update(op="gelu")))
    expect(DczError, "does not hold", lambda g, d, c: c.pop("fc2.weight"))
    expect(DczError, "earlier nodes", lambda g, d, c: g["nodes"][1].update(inputs=["fc3"]))
    expect(DczError, "output", lambda g, d, c: g.update(output="nope"))
    expect(DczError, "does not fit", lambda g, d, c: g["nodes"][4].update(inputs=["relu1"]))
    expect(DczError, "entries", lambda g, d, c: d.update({"fc1.bias": np.zeros(3, np.float32)}))
    expect(DczError, "duplicate", lambda g, d, c: g["nodes"][2].update(name="fc1"))


def test_identity_graph_copies():
    g = {"format": "deepcomp-graph", "version": 1, "input": {"name": "x", "shape": [3]}, "output": "x", "nodes": []}
    m = RuntimeModel(g, {}, {})
    x = randn(2, 3)
    y = m(x)
    np.testing.assert_array_equal(x, y)
    assert y is not x


# --------------------------------------------------------------------------------------------------
# .dcz files end to end and the torch adapter


@pytest.fixture(scope="module")
def dcz_file(tmp_path_factory):
    pipeline = pytest.importorskip("deepcomp.pipeline")
    torch.manual_seed(0)
    res = pipeline.compress(LeNet5(), input_shape=(1, 28, 28), progress=False)
    path = tmp_path_factory.mktemp("dcz") / "lenet5.dcz"
    res.save(str(path))
    return path, res.model.eval()


def test_load_dcz_file(dcz_file):
    path, model = dcz_file
    m = rt.load(path)
    x = randn(5, 1, 28, 28)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    y = m(x)
    np.testing.assert_allclose(y, ref, atol=1e-5)
    assert (y.argmax(1) == ref.argmax(1)).all()
    assert [layer.name for layer in m.layers] == ["conv1", "conv2", "fc1", "fc2"]
    assert m.meta["state_dict_keys"][0] == "conv1.weight" and m.graph["output"] == "fc2"
    np.testing.assert_allclose(rt.loads(path.read_bytes())(x), y)


def test_load_errors(tmp_path):
    with pytest.raises(DczError, match="does not exist"):
        rt.load(tmp_path / "missing.dcz")
    bad = tmp_path / "bad.dcz"
    bad.write_bytes(b"\x89DCZ\r\n\x1a\n" + bytes(40))
    with pytest.raises(DczError):
        rt.load(bad)


def test_to_torch(dcz_file):
    from deepcomp import to_torch

    path, model = dcz_file
    tm = to_torch(path)
    assert isinstance(tm, nn.Module) and not tm.training
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        ref = model(x)
    torch.testing.assert_close(tm(x), ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(tm(x[0]), ref[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(tm(x.double()), ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(tm(x.transpose(2, 3).contiguous().transpose(2, 3)), ref, atol=1e-5, rtol=1e-4)
    tm.eval()
    with pytest.raises(DeepcompError, match="inference only"):
        tm.train()
    assert to_torch(rt.load(path)).runtime.input_shape == (1, 28, 28)
