"""Graph capture: every supported construct, the op table's attributes, and whole torchvision models
checked by running the captured graph with plain torch functions on the model's own state_dict."""

import json
import operator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deepcomp.bench import DenseTorchGraph
from deepcomp.capture import capture
from deepcomp.errors import UnsupportedOpError
from deepcomp.runtime.ops import OPS
from deepcomp.zoo import LeNet5, LeNet300100


def run_graph(graph: dict, sd: dict, x: torch.Tensor) -> torch.Tensor:
    """The graph run by the dense PyTorch baseline (torch functions, independent of the runtime)."""
    with torch.no_grad():
        return DenseTorchGraph(graph, {k: v.detach().numpy() for k, v in sd.items()})(x)


def check_graph(graph, model):
    json.dumps(graph)  # serialisable
    assert graph["format"] == "deepcomp-graph" and graph["version"] == 2
    seen = {graph["input"]["name"]}
    keys = set(model.state_dict())
    for node in graph["nodes"]:
        assert node["op"] in OPS
        assert node["name"] not in seen
        assert all(i in seen for i in node["inputs"])
        seen.add(node["name"])
        for k, v in node["attrs"].items():
            if k in ("weight", "bias", "running_mean", "running_var") and v is not None:
                assert v in keys
    assert graph["output"] in seen


def assert_same(model, shape, batch=2, atol=1e-4):
    model.eval()
    graph = capture(model, shape)
    check_graph(graph, model)
    x = torch.randn(batch, *shape)
    with torch.no_grad():
        ref = model(x)
        got = run_graph(graph, model.state_dict(), x)
    torch.testing.assert_close(got, ref, atol=atol, rtol=1e-4)
    return graph


def ops(graph):
    return [n["op"] for n in graph["nodes"]]


def randomize_bn(model):
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


def test_lenet300100():
    g = assert_same(LeNet300100(), (1, 28, 28))
    assert ops(g) == ["flatten", "linear", "relu", "linear", "relu", "linear"]
    assert [n["name"] for n in g["nodes"] if n["op"] == "linear"] == ["fc1", "fc2", "fc3"]
    assert g["output"] == "fc3" and g["input"] == {"name": "x", "shape": [1, 28, 28]}


def test_lenet5():
    g = assert_same(LeNet5(), (1, 28, 28))
    assert ops(g) == ["conv2d", "maxpool2d", "conv2d", "maxpool2d", "flatten", "linear", "relu", "linear"]
    conv1 = g["nodes"][0]
    assert conv1["attrs"] == {"weight": "conv1.weight", "bias": "conv1.bias", "stride": [1, 1], "padding": [0, 0],
                              "dilation": [1, 1], "groups": 1, "bn": None}


class Functional(nn.Module):
    """The functional spellings: F.relu, torch.relu, relu_, F pools, view(x.size(0), -1), dropout."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, (3, 5), stride=(2, 1), padding=(1, 2), dilation=(1, 2), bias=False)
        self.conv2 = nn.Conv2d(8, 8, 3, padding="same", groups=4)
        self.conv3 = nn.Conv2d(8, 8, 1, padding="valid")
        self.fc = nn.Linear(8 * 3 * 3, 5)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        x = F.relu(self.conv(x), inplace=True)
        x = torch.relu(self.conv2(x))
        x = self.conv3(x).relu_()
        x = F.max_pool2d(x, 3, stride=2, padding=1, ceil_mode=True)
        x = F.avg_pool2d(x, 2, count_include_pad=False, padding=1)
        x = F.adaptive_avg_pool2d(x, (3, None))
        x = F.adaptive_avg_pool2d(x, 3)
        x = F.dropout(x, 0.2, self.training)
        x = x.view(x.size(0), -1)
        return self.drop(self.fc(x))


def test_functional_forms():
    g = assert_same(Functional(), (3, 20, 16))
    assert ops(g) == ["conv2d", "relu", "conv2d", "relu", "conv2d", "relu", "maxpool2d", "avgpool2d",
                      "adaptive_avgpool2d", "adaptive_avgpool2d", "flatten", "linear"]
    conv = g["nodes"][0]["attrs"]
    assert conv["stride"] == [2, 1] and conv["padding"] == [1, 2] and conv["dilation"] == [1, 2]
    assert conv["bias"] is None
    assert g["nodes"][2]["attrs"]["padding"] == [1, 1] and g["nodes"][2]["attrs"]["groups"] == 4
    assert g["nodes"][4]["attrs"]["padding"] == [0, 0]
    assert g["nodes"][6]["attrs"] == {"kernel_size": [3, 3], "stride": [2, 2], "padding": [1, 1],
                                      "dilation": [1, 1], "ceil_mode": True}
    assert g["nodes"][7]["attrs"]["count_include_pad"] is False
    assert g["nodes"][8]["attrs"]["output_size"][0] == 3


class Reshapes(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4 * 2 * 2, 3)

    def forward(self, x):
        a = x.reshape(x.shape[0], -1)
        b = x.view(-1, 16)
        c = torch.flatten(x, 1)
        d = x.flatten(start_dim=1)
        e = nn.functional.relu(x).contiguous().view(x.size(0), 16)
        return self.fc(a + b) + self.fc(torch.add(c, d)) + self.fc(e)


def test_reshape_forms_are_flatten():
    g = assert_same(Reshapes(), (4, 2, 2))
    assert ops(g).count("flatten") == 5
    assert "add" in ops(g)


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(4, eps=1e-3)
        self.relu = nn.ReLU(inplace=True)
        self.branch = nn.Conv2d(4, 4, 1)
        self.bn3 = nn.BatchNorm2d(4)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x
        out = self.relu(out)
        y = self.branch(out)       # used twice: bn3 cannot be folded into it
        z = self.bn3(y)
        return operator.add(z, y)


def test_batchnorm_folding_and_residual():
    model = randomize_bn(Residual())
    g = assert_same(model, (4, 6, 6))
    assert ops(g) == ["conv2d", "relu", "conv2d", "add", "relu", "conv2d", "batchnorm2d", "add"]
    c1, c2, br = (n for n in g["nodes"] if n["op"] == "conv2d")
    assert c1["attrs"]["bn"] == {"weight": "bn1.weight", "bias": "bn1.bias", "running_mean": "bn1.running_mean",
                                 "running_var": "bn1.running_var", "eps": 1e-5}
    assert c2["attrs"]["bn"]["eps"] == 1e-3
    assert br["attrs"]["bn"] is None
    # the module self.relu is used twice: two nodes, unique names
    relu_names = [n["name"] for n in g["nodes"] if n["op"] == "relu"]
    assert relu_names[0] == "relu" and len(set(relu_names)) == 2


class Cat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 5, 3, padding=1)
        self.bn = nn.BatchNorm2d(9)
        self.fc = nn.Linear(9, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], dim=1)
        y = torch.cat((self.bn(y),), 1)
        return self.fc(self.flat(self.pool(y)))


def test_concat_and_standalone_batchnorm():
    g = assert_same(randomize_bn(Cat()), (3, 5, 5))
    assert ops(g) == ["conv2d", "conv2d", "concat", "batchnorm2d", "adaptive_avgpool2d", "flatten", "linear"]
    cat = g["nodes"][2]
    assert cat["inputs"] == ["a", "b"] and cat["attrs"] == {"dim": 1}


def test_frozen_batchnorm_folds_like_batchnorm():
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    bn = tv.ops.misc.FrozenBatchNorm2d(4)
    bn.running_mean.normal_(0, 0.1)
    bn.running_var.uniform_(0.5, 1.5)
    bn.weight.uniform_(0.5, 1.5)
    g = assert_same(nn.Sequential(nn.Conv2d(3, 4, 3), bn, nn.Flatten()), (3, 5, 5))
    assert ops(g) == ["conv2d", "flatten"]  # folded into the convolution


def test_capture_leaves_training_mode():
    m = LeNet5().train()
    capture(m, (1, 28, 28))
    assert m.training


class PReLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(4, 4), nn.PReLU())

    def forward(self, x):
        return self.mlp(x)


class Erf(nn.Module):
    def forward(self, x):
        return torch.erf(x)


class Reflect(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect")

    def forward(self, x):
        return self.conv(x)


class Control(nn.Module):
    def forward(self, x):
        return x if x.sum() > 0 else -x


class ViewOther(nn.Module):
    def forward(self, x):
        return x.view(-1, 2)


class TwoOutputs(nn.Module):
    def forward(self, x):
        return F.relu(x), x


class Wrap(nn.Module):
    """``inner`` on [N, tokens, features] (token ids for an Embedding), the last token to a Linear."""

    def __init__(self, inner, features=8):
        super().__init__()
        self.inner = inner
        self.fc = nn.Linear(features, 2)

    def forward(self, x):
        y = self.inner(x.long() if isinstance(self.inner, nn.Embedding) else x)
        return self.fc((y[0] if isinstance(y, tuple) else y)[:, -1])


@pytest.mark.parametrize(
    "model,shape,needle",
    [
        (PReLU(), (4,), "unsupported op 'PReLU' at 'mlp.1'"),
        (Erf(), (4,), "unsupported op 'erf'"),
        (Reflect(), (1, 5, 5), "padding_mode='reflect'"),
        (Control(), (4,), "cannot trace"),
        (ViewOther(), (4, 2, 2), "the batch dimension must stay the first one"),
        (TwoOutputs(), (4,), "returns several values"),
        # REFUSED module types: one line with the module, its path and what to do
        (Wrap(nn.LSTM(8, 8, batch_first=True)), (3, 8), "'LSTM' at 'inner' (recurrent layers"),
        (Wrap(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)), (3, 8),
         "'TransformerEncoderLayer' at 'inner' (torch's Transformer modules are not captured"),
        (Wrap(nn.Embedding(10, 8)), (3,), "'Embedding' at 'inner' (token ids"),  # before the run on zeros
    ],
)
def test_unsupported(model, shape, needle):
    with pytest.raises(UnsupportedOpError) as e:
        capture(model, shape)
    assert needle in str(e.value) and "\n" not in str(e.value)
    if "unsupported op" in needle:
        assert "deepcomp supports modules" in str(e.value) and "Conv2d" in str(e.value)


@pytest.mark.parametrize("name,expect", [
    ("alexnet", {"conv2d": 5, "linear": 3}),
    ("resnet18", {"conv2d": 20, "add": 8}),
    pytest.param("resnet50", {"conv2d": 53, "add": 16}, marks=pytest.mark.slow),
    ("squeezenet1_1", {"concat": 8}),
])
def test_torchvision_models(name, expect):
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = randomize_bn(tv.models.get_model(name, weights=None))
    g = assert_same(model, (3, 224, 224), batch=1, atol=1e-3)
    for op, count in expect.items():
        assert ops(g).count(op) == count
    if name.startswith("resnet"):
        assert "batchnorm2d" not in ops(g)
        assert all(n["attrs"]["bn"] is not None for n in g["nodes"] if n["op"] == "conv2d")


@pytest.mark.slow
def test_vgg16():
    tv = pytest.importorskip("torchvision")
    g = assert_same(tv.models.vgg16(weights=None), (3, 224, 224), batch=1, atol=1e-3)
    assert ops(g).count("conv2d") == 13 and ops(g).count("linear") == 3 and ops(g).count("maxpool2d") == 5


# --------------------------------------------------------------------------------------------------
# TorchScript modules (what load_model returns for a TorchScript file)

TS_CASES = ["lenet5", "lenet300100", "cat", pytest.param("resnet18", marks=pytest.mark.slow), "squeezenet1_1"]


def _ts_model(name):
    if name == "lenet5":
        return LeNet5(), (1, 28, 28)
    if name == "lenet300100":
        return LeNet300100(), (1, 28, 28)
    if name == "cat":
        return randomize_bn(Cat()), (3, 5, 5)
    tv = pytest.importorskip("torchvision")
    return randomize_bn(tv.models.get_model(name, weights=None)), (3, 224, 224)


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("how", ["trace", "script"])
@pytest.mark.parametrize("name", TS_CASES)
def test_torchscript(name, how):
    model, shape = _ts_model(name)
    model.eval()
    x = torch.randn(2, *shape)
    sm = torch.jit.trace(model, x[:1]) if how == "trace" else torch.jit.script(model)
    g = capture(sm, shape)
    check_graph(g, model)
    with torch.no_grad():
        torch.testing.assert_close(run_graph(g, model.state_dict(), x), model(x), atol=1e-3, rtol=1e-4)
    fx_graph = capture(model, shape)
    assert ops(g) == ops(fx_graph)
    assert [n["name"] for n in g["nodes"] if n["op"] in ("conv2d", "linear")] == \
        [n["name"] for n in fx_graph["nodes"] if n["op"] in ("conv2d", "linear")]


class DataDependent(nn.Module):
    def forward(self, x):
        if bool(x.sum() > 0):
            return x
        return -x


@pytest.mark.filterwarnings("ignore::FutureWarning")
class FrozenConstant(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = torch.linspace(1, 2, 4)  # not a buffer: torch.jit.trace freezes it into the graph

    def forward(self, x):
        return x * self.scale


def test_torchscript_unsupported():
    with pytest.raises(UnsupportedOpError, match="unsupported op 'aten::sum'"):
        capture(torch.jit.script(DataDependent()), (4,))
    with pytest.raises(UnsupportedOpError, match="aten::erf.*the torch.fx front captures more.*--trust-pickle"):
        capture(torch.jit.trace(Erf(), torch.randn(1, 4)), (4,))
    with pytest.raises(UnsupportedOpError, match="aten::mul.*a tensor constant of the trace.*register it as a buffer"):
        capture(torch.jit.trace(FrozenConstant(), torch.randn(1, 4)), (4,))


def test_traced_swin_names_the_op_and_the_fx_front():
    """Swin through TorchScript stops at its relative position bias gather (aten::index) with one line
    that points to the torch.fx front, which captures the same module."""
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    swin = tv.models.SwinTransformer([4, 4], 16, [1, 1], [1, 2], [4, 4], num_classes=3).eval()
    with torch.no_grad():
        traced = torch.jit.trace(swin, torch.randn(1, 3, 32, 32), check_trace=False)
    with pytest.raises(UnsupportedOpError) as e:
        capture(traced, (3, 32, 32))
    msg = str(e.value)
    assert "\n" not in msg and "'aten::index'" in msg and "torch.fx front captures more" in msg
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(run_graph(capture(swin, (3, 32, 32)), swin.state_dict(), x), swin(x),
                                   atol=1e-4, rtol=1e-4)
