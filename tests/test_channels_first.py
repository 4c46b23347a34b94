"""The capture's channels-first pass: ConvNeXt's permute -> layernorm / linear / GELU -> permute
chains run on NCHW (layernorm and linear over dimension 1), with the same outputs."""

import numpy as np
import pytest
import torch
from torch import nn

import deepcomp
import deepcomp.runtime as rt
from deepcomp.capture import capture

tv = pytest.importorskip("torchvision")


class Block(nn.Module):
    """A ConvNeXt-like block; ``leak`` also reads a channels-last value outside the chain."""

    def __init__(self, c=16, leak=False):
        super().__init__()
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.ln = nn.LayerNorm(c)
        self.fc1, self.fc2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.head = nn.Linear(c, 10)
        self.leak = leak

    def forward(self, x):
        y = self.dw(x).permute(0, 2, 3, 1)
        z = self.ln(y)
        h = self.fc2(nn.functional.gelu(self.fc1(z)))
        out = x + h.permute(0, 3, 1, 2)
        if self.leak:
            out = out * z.mean(dim=(1, 2, 3), keepdim=True)
        return self.head(out.mean(dim=(2, 3)))


def _ops(graph):
    return [(n["op"], n["attrs"].get("dim")) for n in graph["nodes"]]


def test_chain_becomes_channels_first_and_runs_like_torch(tmp_path):
    torch.manual_seed(0)
    m = Block().eval()
    ops = _ops(capture(m, (16, 12, 12)))
    assert ("permute", None) not in ops
    assert ("layernorm", 1) in ops and ops.count(("linear", 1)) == 2 and ("linear", None) in ops
    path = tmp_path / "b.dcz"
    res = deepcomp.compress(m, input_shape=(16, 12, 12), sparsity=0.5, progress=False)
    res.save(path)
    x = np.random.default_rng(0).standard_normal((2, 16, 12, 12)).astype(np.float32)
    with torch.no_grad():
        ref = res.model(torch.from_numpy(x)).numpy()
    y = rt.load(path)(x)
    assert ref.std() > 1e-3
    np.testing.assert_allclose(y, ref, atol=1e-4 * np.abs(ref).max(), rtol=0)


def test_chain_read_elsewhere_stays_channels_last():
    ops = _ops(capture(Block(leak=True).eval(), (16, 12, 12)))
    assert ops.count(("permute", None)) == 2 and ("layernorm", 3) in ops


def test_convnext_tiny_has_no_permute():
    ops = _ops(capture(tv.models.convnext_tiny().eval(), (3, 64, 64)))
    assert not any(op == "permute" for op, _ in ops)
    assert ops.count(("linear", 1)) == 36  # 18 blocks x 2; the classifier stays a plain linear


def test_onnx_export_of_channels_first_linear(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from deepcomp.export_onnx import export_onnx

    torch.manual_seed(0)
    path, out = tmp_path / "b.dcz", tmp_path / "b.onnx"
    deepcomp.compress(Block().eval(), input_shape=(16, 12, 12), sparsity=0.5, progress=False).save(path)
    export_onnx(path, out)
    x = np.random.default_rng(1).standard_normal((2, 16, 12, 12)).astype(np.float32)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(got, rt.load(path)(x), rtol=1e-4, atol=1e-4)


def test_graph_version_is_the_lowest_that_holds_the_graph():
    from deepcomp.runtime.plan import make_plan

    block = Block().eval()
    cf = capture(block, (16, 12, 12))
    assert cf["version"] == 3  # channels-first linears: linear's dim attribute is version 3
    assert capture(Block(leak=True).eval(), (16, 12, 12))["version"] == 2  # the chain stays channels-last
    plain = capture(nn.Sequential(nn.Flatten(), nn.Linear(16 * 4 * 4, 10)).eval(), (16, 4, 4))
    assert plain["version"] == 2
    # a reader of version 2 would misread dim 1, so a version-2 graph holding it is invalid
    with pytest.raises(deepcomp.DczError, match="attributes of graph version 3 in a version 2 graph"):
        make_plan({**cf, "version": 2}, lambda name, *_: tuple(block.state_dict()[name].shape))
