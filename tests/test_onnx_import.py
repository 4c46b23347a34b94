"""`deepcomp compress model.onnx`: torchvision models exported with torch.onnx compress, and the .dcz runs
on deepcomp's runtime like ONNX Runtime runs the original file with the decompressed (pruned, shared)
weights put back into it. Exports use torch.onnx's TorchScript-based exporter (dynamo=False, offline and
fast) at opsets 13 and 17, and one dynamo export (opset 18, onnxscript's optimizer)."""

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import deepcomp
from deepcomp.errors import DeepcompError, ModelLoadError, UnsupportedOpError
from deepcomp.zoo import load_model

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
tv = pytest.importorskip("torchvision")


class AlexLike(nn.Module):
    """AlexNet's shape in small: strided conv, overlapping max pools, dropout, three fc layers, and the
    x.view(x.size(0), -1) that torch.onnx writes as Shape -> Gather -> Unsqueeze -> Concat -> Reshape."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 5, stride=2, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
                                      nn.Conv2d(16, 24, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2))
        self.classifier = nn.Sequential(nn.Dropout(), nn.Linear(24 * 3 * 3, 64), nn.ReLU(), nn.Dropout(),
                                        nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):
        x = self.features(x)
        return self.classifier(x.view(x.size(0), -1))


class VGGLike(nn.Module):
    """VGG's 3x3 stacks with BatchNorm, average pooling, torch.flatten and a SiLU/Hardswish head."""

    def __init__(self):
        super().__init__()
        def block(i, o):
            return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.Conv2d(o, o, 3, padding=1),
                    nn.ReLU(), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*block(3, 8), *block(8, 16), nn.AvgPool2d(2))
        self.fc1, self.fc2 = nn.Linear(16 * 2 * 2, 32), nn.Linear(32, 10)

    def forward(self, x):
        x = torch.flatten(self.features(x), 1)
        return self.fc2(nn.functional.hardswish(nn.functional.silu(self.fc1(x))))


def _randomized(model):
    """BatchNorm statistics and affine terms away from the identity, so outputs do not vanish."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                for t, lo, hi in ((m.running_mean, -0.2, 0.2), (m.running_var, 0.5, 1.5), (m.weight, 0.5, 1.5),
                                  (m.bias, -0.2, 0.2)):
                    t.copy_(torch.rand(t.shape, generator=g) * (hi - lo) + lo)
            if isinstance(m, nn.Linear) and not m.weight.any():
                m.weight.normal_(0, 0.05, generator=g)
    return model.eval()


# name -> (model, input size, exporter options)
MODELS = {
    "resnet18": (lambda: tv.models.resnet18(num_classes=10), 32, {"opset_version": 17, "do_constant_folding": False}),
    "mobilenet_v2": (lambda: tv.models.mobilenet_v2(width_mult=0.35, num_classes=10), 32, {"opset_version": 13}),
    "alexnet_like": (AlexLike, 32, {"opset_version": 13}),
    "vgg_like": (VGGLike, 16, {"opset_version": 17}),
    "resnet18_dynamo": (lambda: tv.models.resnet18(num_classes=10), 32, {"dynamo": True}),
}


def export(model, size, path, **options):
    options = {"dynamo": False, **options}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 3, size, size),), str(path), input_names=["x"], verbose=False,
                          **options)
    return path


def with_weights(path, loaded, state_dict):
    """The ONNX file's bytes with the prunable weights replaced by ``state_dict``'s."""
    proto = onnx.load(str(path))
    by_name = {i.name: i for i in proto.graph.initializer}
    for key, (name, transposed) in loaded.model.onnx_names.items():
        w = state_dict[key].T if transposed else state_dict[key]
        by_name[name].CopyFrom(onnx.numpy_helper.from_array(np.ascontiguousarray(w, dtype=np.float32), name))
    return proto.SerializeToString()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_onnx_model_runs_like_onnxruntime(name, tmp_path):
    make, size, options = MODELS[name]
    torch.manual_seed(0)
    path = export(_randomized(make()), size, tmp_path / f"{name}.onnx", **options)
    loaded = load_model(str(path))
    assert loaded.input_shape == (3, size, size) and loaded.source.startswith("onnx:")
    result = deepcomp.compress(loaded, sparsity=0.6, progress=False)
    assert result.plan, "no Conv or Gemm layer was compressed"
    dcz = tmp_path / f"{name}.dcz"
    result.save(dcz)
    dense = deepcomp.decompress(dcz)
    for key in loaded.model.onnx_names:  # pruning applied to every Conv / Gemm initializer (depthwise: dense)
        kept = result.plan[key[: -len(".weight")]].density
        assert kept == 1.0 or 0.3 < float(np.mean(dense[key] == 0)) < 0.9, key
    assert min(p.density for p in result.plan.values()) < 0.5
    if name.startswith("resnet18"):  # layers are named after the torch modules, from either exporter
        assert {"conv1", "layer1.0.conv1", "layer4.1.conv2", "fc"} <= set(result.plan)
        assert result.plan["fc"].kind == "fc" and result.plan["conv1"].kind == "conv"
    x = np.random.default_rng(0).standard_normal((3, 3, size, size)).astype(np.float32)
    session = ort.InferenceSession(with_weights(path, loaded, dense))
    ref = np.concatenate([session.run(None, {"x": x[i: i + 1]})[0] for i in range(len(x))])
    assert ref.std() > 1e-3, "the outputs do not vary: the comparison would prove nothing"
    y = deepcomp.load(dcz)(x)
    np.testing.assert_allclose(y, ref, rtol=1e-3, atol=1e-4 * float(np.abs(ref).max()))


def test_unsupported_op_is_one_line(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.LeakyReLU(0.1), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)).eval()
    path = export(model, 8, tmp_path / "leaky.onnx", opset_version=17)
    with pytest.raises(UnsupportedOpError) as e:
        load_model(str(path))
    msg = str(e.value)
    assert "'LeakyRelu'" in msg and "/1/LeakyRelu" in msg and "Conv, " in msg and "\n" not in msg
    code, out, err = _cli("compress", str(path), "-o", str(tmp_path / "x.dcz"))
    assert code != 0 and err.count("\n") == 1 and "LeakyRelu" in err and "Traceback" not in err
    assert not list(tmp_path.glob("x.dcz*"))


@pytest.mark.parametrize("content", [b"not an onnx model at all", None], ids=["garbage", "truncated"])
def test_malformed_file_is_one_line(tmp_path, content):
    bad = tmp_path / "bad.onnx"
    if content is None:
        good = export(AlexLike().eval(), 32, tmp_path / "good.onnx").read_bytes()
        content = good[: len(good) // 2]
    bad.write_bytes(content)
    with pytest.raises(ModelLoadError, match="is not a valid ONNX model"):
        load_model(str(bad))
    code, out, err = _cli("compress", str(bad), "-o", str(tmp_path / "bad.dcz"))
    assert code != 0 and err.count("\n") == 1 and "not a valid ONNX model" in err and "Traceback" not in err


def test_retraining_needs_a_torch_model(tmp_path):
    path = export(AlexLike().eval(), 32, tmp_path / "a.onnx")
    code, out, err = _cli("compress", str(path), "--data", "fashion-mnist", "--finetune-epochs", "1")
    assert code != 0 and err.count("\n") == 1 and "ONNX" in err and "retrain" in err
    with pytest.raises(DeepcompError, match="cannot retrain"):
        deepcomp.compress(load_model(str(path)), progress=False, finetune=lambda *a: None)


def test_dynamic_input_needs_a_shape(tmp_path):
    path = export(AlexLike().eval(), 32, tmp_path / "d.onnx", dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}})
    with pytest.raises(ModelLoadError, match="--input-shape"):
        load_model(str(path))
    assert load_model(str(path), input_shape=(3, 32, 32)).input_shape == (3, 32, 32)


def test_missing_onnx_package_says_what_to_install(tmp_path, monkeypatch):
    path = export(AlexLike().eval(), 32, tmp_path / "a.onnx")
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx raises ImportError
    with pytest.raises(ModelLoadError, match=r'pip install "deepcomp\[onnx\]"'):
        load_model(str(path))


def test_cli_compresses_an_onnx_file(tmp_path):
    path = export(_randomized(AlexLike()), 32, tmp_path / "alex.onnx")
    code, out, err = _cli("compress", str(path), "-q", cwd=tmp_path)
    assert code == 0, err
    assert "features.0" in out and "classifier.1" in out and (tmp_path / "alex.dcz").is_file()


def _cli(*args, cwd=None):
    p = subprocess.run([sys.executable, "-m", "deepcomp.cli", *args], capture_output=True, text=True, cwd=cwd,
                       timeout=300)
    return p.returncode, p.stdout, p.stderr


def test_matmul_add_and_untransposed_gemm(tmp_path):
    """Hand-written graph: x @ W + b (fused into one linear with bias), Gemm with transB=0 ([in, out]
    weights, stored transposed), Mul by a per-feature constant, Softmax."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    w1, b1 = rng.standard_normal((16, 12)).astype(np.float32), rng.standard_normal(12).astype(np.float32)
    w2, b2 = rng.standard_normal((12, 5)).astype(np.float32), rng.standard_normal(5).astype(np.float32)
    scale = rng.uniform(0.5, 2, (1, 5)).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"), (scale, "s"))]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1/MatMul"),
             helper.make_node("Add", ["h", "b1"], ["hb"], name="fc1/Add"),
             helper.make_node("Relu", ["hb"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["g"], name="fc2/Gemm", transB=0),
             helper.make_node("Mul", ["g", "s"], ["gs"], name="scale"),
             helper.make_node("Softmax", ["gs"], ["y"], name="softmax", axis=-1)]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5])], inits)
    path = tmp_path / "mlp.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    loaded = load_model(str(path))
    assert loaded.model.onnx_names == {"fc1.weight": ("w1", True), "fc2.weight": ("w2", True)}
    result = deepcomp.compress(loaded, sparsity=0.5, progress=False)
    linears = [n for n in result.graph["nodes"] if n["op"] == "linear"]
    assert [n["attrs"]["bias"] for n in linears] == ["fc1.bias", "fc2.bias"]  # the Add became fc1's bias
    result.save(tmp_path / "mlp.dcz")
    dense = deepcomp.decompress(tmp_path / "mlp.dcz")
    x = rng.standard_normal((4, 16)).astype(np.float32)
    ref = ort.InferenceSession(with_weights(path, loaded, dense)).run(None, {"x": x})[0]
    np.testing.assert_allclose(deepcomp.load(tmp_path / "mlp.dcz")(x), ref, rtol=1e-4, atol=1e-6)
