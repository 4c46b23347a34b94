"""`deepcomp export`: the ONNX model of a .dcz file computes what deepcomp's runtime computes."""

import numpy as np
import pytest
import torch
from torch import nn

import deepcomp
import deepcomp.runtime as rt
from deepcomp.export_onnx import ONNX_OPS, export_onnx

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


class AlexNetLike(nn.Module):
    """Convs with bias, ceil-mode max pooling, an uneven adaptive average pool, fc layers."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 5, stride=2, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
            nn.Conv2d(16, 24, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.avgpool = nn.AdaptiveAvgPool2d((3, 3))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(24 * 9, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x):
        return self.classifier(self.avgpool(self.features(x)))


class ResNetLike(nn.Module):
    """Conv + BatchNorm (folded onto the conv in the graph), a residual add, a concat, a standalone
    BatchNorm, grouped conv, average pooling, a global average pool."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
        self.b = nn.Conv2d(16, 8, 3, padding=1, groups=2)
        self.pool = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)
        self.bn = nn.BatchNorm2d(24)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.a(x))
        x = torch.cat([x, self.b(x)], dim=1)
        x = self.bn(self.pool(x))
        return self.fc(torch.flatten(self.gap(x), 1))


def _randomize_bn(model):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


@pytest.fixture(scope="module", params=[AlexNetLike, ResNetLike])
def dcz(request, tmp_path_factory):
    torch.manual_seed(0)
    model = _randomize_bn(request.param()).eval()
    path = tmp_path_factory.mktemp("export") / f"{request.param.__name__}.dcz"
    deepcomp.compress(model, input_shape=(3, 32, 32), sparsity=0.8, progress=False).save(path)
    return path


def _ort_run(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("sparse", [False, True])
def test_onnx_runtime_matches_deepcomp(dcz, tmp_path, sparse):
    out = tmp_path / "m.onnx"
    size = export_onnx(dcz, out, sparse_initializers=sparse)
    assert size == out.stat().st_size
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32), dtype=np.float32)
    want = rt.load(dcz)(x)
    got = _ort_run(out, x)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_sparse_initializers_are_smaller_and_same_weights(dcz, tmp_path):
    dense, sparse = tmp_path / "d.onnx", tmp_path / "s.onnx"
    export_onnx(dcz, dense)
    export_onnx(dcz, sparse, sparse_initializers=True)
    assert sparse.stat().st_size < 0.7 * dense.stat().st_size  # 80% pruned: 12 bytes per kept weight, not 4 per weight
    m = onnx.load(str(sparse))
    assert m.graph.sparse_initializer
    sd = deepcomp.decompress(dcz)
    for st in m.graph.sparse_initializer:
        values = onnx.numpy_helper.to_array(st.values)
        pos = onnx.numpy_helper.to_array(st.indices)
        w = np.zeros(int(np.prod(st.dims)), np.float32)
        w[pos] = values
        np.testing.assert_array_equal(w.reshape(tuple(st.dims)), sd[st.values.name])


def test_openvino_loads_the_dense_export(dcz, tmp_path):
    ov = pytest.importorskip("openvino")
    out = tmp_path / "m.onnx"
    export_onnx(dcz, out)
    compiled = ov.Core().compile_model(str(out), "CPU")
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32), dtype=np.float32)
    got = compiled([x])[compiled.output(0)]
    np.testing.assert_allclose(got, rt.load(dcz)(x), rtol=1e-3, atol=1e-3)


def test_every_runtime_op_has_an_onnx_mapping():
    from deepcomp.runtime.ops import OPS

    assert set(ONNX_OPS) == set(OPS)


class ModernOps(nn.Module):
    """The ops torchvision's newer models add: SiLU / Hardswish / Hardsigmoid / GELU / ReLU6 / tanh,
    squeeze-excitation (mean, sigmoid, mul), arithmetic with numbers, chunk, permute + LayerNorm
    (ConvNeXt), tokens with a class token and position embedding, rank-3 linear, attention
    (matmul, softmax)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.se = nn.Conv2d(16, 16, 1)
        self.ln = nn.LayerNorm(16)
        self.cls = nn.Parameter(torch.randn(1, 1, 16))
        self.pos = nn.Parameter(torch.randn(1, 65, 16))
        self.qkv = nn.Linear(16, 48)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = nn.functional.silu(self.conv(x))
        x = x * torch.sigmoid(self.se(x.mean((2, 3), keepdim=True)))
        x = nn.functional.hardswish(x) + nn.functional.hardsigmoid(x) - nn.functional.relu6(x) / 2.0
        a, b = x.chunk(2, dim=1)
        x = torch.cat([torch.tanh(a), 1.0 - b], dim=1)
        x = self.ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        t = x.flatten(2).transpose(1, 2)  # [N, 64, 16] tokens
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1) + self.pos
        q, k, v = self.qkv(t).chunk(3, dim=2)
        att = torch.softmax(q @ k.transpose(1, 2) * 0.25, dim=-1)
        t = nn.functional.gelu(att @ v) + nn.functional.gelu(t, approximate="tanh")
        return self.head(t[:, 0])


def test_newer_ops_export_and_match(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "modern.dcz"
    deepcomp.compress(ModernOps().eval(), input_shape=(3, 16, 16), sparsity=0.5, progress=False).save(path)
    from deepcomp.dcz import read_dcz

    ops = {n["op"] for n in read_dcz(path).graph["nodes"]}
    assert {"silu", "gelu", "layernorm", "softmax", "matmul", "constant", "slice", "permute", "mean"} <= ops
    out = tmp_path / "modern.onnx"
    export_onnx(path, out)
    x = np.random.default_rng(2).standard_normal((2, 3, 16, 16), dtype=np.float32)
    want = rt.load(path)(x)
    assert float(np.std(want)) > 1e-3  # outputs that vary with the input, or the comparison shows nothing
    np.testing.assert_allclose(_ort_run(out, x), want, rtol=1e-4, atol=1e-4)


def test_swin_ops_export_and_match(tmp_path):
    """Swin v2 on a map its windows do not tile: pad, roll, window_mask, normalize, exp and a
    constant gathered by its index, through ONNX Runtime."""
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
    from test_families import _swin_v2, nonvanishing

    torch.manual_seed(0)
    path = tmp_path / "swin_v2.dcz"
    deepcomp.compress(nonvanishing(_swin_v2().eval()), input_shape=(3, 24, 24), progress=False).save(path)
    from deepcomp.dcz import read_dcz

    nodes = read_dcz(path).graph["nodes"]
    assert {"pad", "roll", "window_mask", "normalize", "exp"} <= {n["op"] for n in nodes}
    assert any(n["op"] == "constant" and n["attrs"].get("index") for n in nodes)
    out = tmp_path / "swin_v2.onnx"
    export_onnx(path, out)
    x = np.random.default_rng(2).standard_normal((2, 3, 24, 24), dtype=np.float32)
    want = rt.load(path)(x)
    assert float(np.std(want)) > 1e-3
    np.testing.assert_allclose(_ort_run(out, x), want, rtol=0, atol=1e-4 * float(np.abs(want).max()))
