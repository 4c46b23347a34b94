"""The op table is the one home of an op: every op has each of its parts (shape rule, reference,
runtime, native binding when named, dense PyTorch baseline, capture rule, docs row), and planning
bounds what a graph may ask for."""

import json
import pathlib

import numpy as np
import pytest

from deepcomp import _native
from deepcomp.bench import TORCH_OPS
from deepcomp.capture import fx, torchscript
from deepcomp.errors import DczError
from deepcomp.runtime import RuntimeModel, plan
from deepcomp.runtime.ops import OPS, docs_table

DOC = pathlib.Path(__file__).resolve().parent.parent / "docs" / "dcz-format.md"


def test_every_op_has_every_part():
    for name, op in OPS.items():
        assert op.name == name
        assert callable(op.shape) and callable(op.reference), name
        assert op.native is None or op.build or op.inplace, f"{name} names a native binding it never calls"
        assert op.native is None or hasattr(_native, op.native), f"{name}: _native lacks {op.native}"
        assert op.buffer in ("fresh", "view", "shared")
        assert op.doc, name
    assert set(TORCH_OPS) == set(OPS), "the dense PyTorch baseline (deepcomp.bench.TORCH_OPS) misses ops"
    assert fx.EMITS == set(OPS), "the torch.fx front (deepcomp.capture.fx) has no capture rule for some ops"
    assert torchscript.EMITS <= set(OPS)


def test_docs_table_is_the_op_table():
    assert docs_table() in DOC.read_text(), "run scripts/update-op-docs.py"


def graph(nodes, shape=(3, 8, 8), output=None, version=1):
    return {"format": "deepcomp-graph", "version": version, "input": {"name": "x", "shape": list(shape)},
            "output": output or nodes[-1]["name"], "nodes": nodes}


def test_hostile_shapes_are_refused_before_allocating():
    g = graph([{"name": "p", "op": "adaptive_avgpool2d", "inputs": ["x"],
                "attrs": {"output_size": [4294967297, 1]}}])
    with pytest.raises(DczError, match="MiB of activations"):
        RuntimeModel(g, {}, {})
    g["nodes"][0]["attrs"]["output_size"] = [4, 4]
    m = RuntimeModel(g, {}, {})
    assert m.plan.peak_bytes == 4 * (3 * 8 * 8 + 3 * 4 * 4)
    plan.set_memory_limit(4 * 3 * 8 * 8 * 10)
    try:
        m(np.zeros((2, 3, 8, 8), np.float32))
        with pytest.raises(DczError, match="smaller batch"):
            m(np.zeros((10, 3, 8, 8), np.float32))
    finally:
        plan.set_memory_limit(None)


def test_deep_json_is_a_dcz_error():
    deep = "[" * 100000 + "]" * 100000
    with pytest.raises(DczError, match="nests"):
        RuntimeModel.from_loaded({"graph": deep, "meta": "{}"})


def test_attribute_checks_name_the_node():
    g = graph([{"name": "p", "op": "maxpool2d", "inputs": ["x"],
                "attrs": {"kernel_size": [2, 2], "stride": [0, 2], "padding": [0, 0]}}])
    with pytest.raises(DczError, match="stride of 'p'"):
        RuntimeModel(g, {}, {})
    g["nodes"][0]["attrs"] = {"stride": [2, 2], "padding": [0, 0]}
    with pytest.raises(DczError, match="kernel_size"):
        RuntimeModel(g, {}, {})
    assert json.dumps(g)  # graphs stay plain JSON


def test_info_validates_the_graph_as_load_does(tmp_path, capsys):
    from deepcomp.cli import main
    from deepcomp.dcz import write_dcz

    g = graph([{"name": "p", "op": "adaptive_avgpool2d", "inputs": ["x"],
                "attrs": {"output_size": [4294967297, 1]}}])
    path = tmp_path / "hostile.dcz"
    write_dcz(path, meta={"state_dict_keys": []}, graph=g, dense={}, coded={}, order=[])
    with pytest.raises(DczError, match="MiB of activations"):
        from deepcomp import load
        load(path)
    assert main(["info", str(path)]) != 0
    assert "MiB of activations" in capsys.readouterr().err


def test_depthwise_layers_stay_dense_by_default():
    from torch import nn

    from deepcomp.pipeline import make_plan
    from deepcomp.recipes import load_recipe

    layers = {"dw": nn.Conv2d(8, 8, 3, groups=8), "pw": nn.Conv2d(8, 16, 1), "g": nn.Conv2d(8, 8, 3, groups=2)}
    plan, _ = make_plan(layers, load_recipe("deep-compression", "x"), sparsity=0.8)
    assert plan["dw"].density == 1.0 and "depthwise" in plan["dw"].label
    assert plan["pw"].density == pytest.approx(0.2) and plan["g"].density == pytest.approx(0.2)


@pytest.mark.parametrize("isa", ["scalar", "avx2", "avx512"])
def test_native_activations_match_torch(isa):
    import torch
    import torch.nn.functional as F

    if isa != "scalar" and _native.isa() not in (isa, "avx512"):
        pytest.skip(f"no {isa} here")
    before = _native.isa()
    x = (np.random.default_rng(0).standard_normal(40003) * 6).astype(np.float32)
    x[:4] = [-100, 100, 0, -0.0]
    t = torch.from_numpy(x)
    try:
        _native._set_isa(isa)
        for kind, ref in enumerate([torch.sigmoid(t), F.silu(t), F.gelu(t), F.gelu(t, approximate="tanh")]):
            np.testing.assert_allclose(_native.activation_(x.copy(), kind), ref.numpy(), atol=2e-6, rtol=2e-6)
        e = np.clip(x, -80, 80)  # kind 4, exp (softmax): within float32's range
        np.testing.assert_allclose(_native.activation_(e.copy(), 4), np.exp(e), rtol=2e-6, atol=1e-30)
    finally:
        _native._set_isa(before)
    with pytest.raises(ValueError, match="C-contiguous"):
        _native.activation_(np.zeros((4, 4), np.float32)[:, ::2], 0)


# One small graph per op the families' tests may not reach in every form: the runtime against the
# dense PyTorch baseline (deepcomp.bench.TORCH_OPS), node by node.
X4 = (4, 6, 5)
SAMPLES = {
    "clamp": ([{"min": 0.0, "max": 6.0}, {"min": -1.0, "max": None}], X4),
    "sigmoid": ([{}], X4), "silu": ([{}], X4), "tanh": ([{}], X4), "hardswish": ([{}], X4),
    "hardsigmoid": ([{}], X4), "relu": ([{}], X4),
    "gelu": ([{"approximate": "none"}, {"approximate": "tanh"}], X4),
    "add": ([{"scalar": 3.0}, {"scalar": 2.0, "reverse": True}], X4),
    "mul": ([{"scalar": 0.5}], X4), "sub": ([{"scalar": 1.0, "reverse": True}], X4),
    "div": ([{"scalar": 6.0}, {"scalar": 2.0, "reverse": True}], X4),
    "mean": ([{"dims": [2, 3], "keepdim": True}, {"dims": [1], "keepdim": False}], X4),
    "permute": ([{"dims": [0, 2, 3, 1]}, {"dims": [0, 3, 1, 2]}], X4),
    "reshape": ([{"shape": [24, 5]}, {"shape": [2, 2, 30]}], X4),
    "slice": ([{"dim": 1, "start": 1, "stop": 4}, {"dim": 3, "start": 0, "stop": 5, "step": 2}], X4),
    "softmax": ([{"dim": 3}, {"dim": 1}], X4),
    "normalize": ([{"dim": 3}, {"dim": 1, "eps": 1e-12}, {"dim": 2, "eps": 100.0}], X4),
    "exp": ([{}], (4, 3)),
    "flatten": ([{"start_dim": 1}], X4),
    "roll": ([{"shifts": [1, -2], "dims": [1, 3]}, {"shifts": [7], "dims": [2]}], X4),
    "pad": ([{"pads": [0, 0, 1, 2, 0, 3]}, {"pads": [1, 0, 0, 0, 2, 2], "value": -1.5}], X4),
    "window_mask": ([{"size": [4, 6], "window": [2, 3], "shift": [1, 1]},
                     {"size": [4, 4], "window": [2, 2], "shift": [0, 1]}], X4),
}


# ops with weights or several inputs, tested by the graphs of their own tests
COVERED_ELSEWHERE = {"conv2d", "linear", "batchnorm2d", "maxpool2d", "avgpool2d", "adaptive_avgpool2d", "concat",
                     "constant", "matmul", "layernorm"}


def test_every_op_has_a_runtime_test():
    assert set(OPS) <= set(SAMPLES) | COVERED_ELSEWHERE, "add the op to SAMPLES"


@pytest.mark.parametrize("op", sorted(SAMPLES))
def test_op_runs_like_the_torch_baseline(op):
    import torch

    from deepcomp.bench import DenseTorchGraph

    variants, shape = SAMPLES[op]
    x = np.random.default_rng(1).standard_normal((2, *shape)).astype(np.float32) * 4
    for attrs in variants:
        g = graph([{"name": "y", "op": op, "inputs": ["x"], "attrs": attrs}], shape=shape,
                  version=max(2, OPS[op].since))
        with torch.no_grad():
            ref = DenseTorchGraph(g, {})(torch.from_numpy(x)).numpy()
        m = RuntimeModel(g, {}, {})
        np.testing.assert_allclose(m(x), ref, atol=2e-6, rtol=2e-6, err_msg=f"{op} {attrs}")
        # fused: the same op applied in place to a fresh buffer (an add's output)
        g2 = graph([{"name": "a", "op": "add", "inputs": ["x", "x"], "attrs": {}},
                    {"name": "y", "op": op, "inputs": ["a"], "attrs": attrs}], shape=shape,
                   version=max(2, OPS[op].since))
        with torch.no_grad():
            ref2 = DenseTorchGraph(g2, {})(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(RuntimeModel(g2, {}, {})(x), ref2, atol=2e-6, rtol=2e-6, err_msg=f"{op} fused")


def test_in_place_consumer_of_a_slice_leaves_its_source_alone():
    """At batch 1 a slice along dimension 1 is contiguous and not copied: a ReLU fused onto it must
    not write into the tensor it was sliced from, which another node still reads."""
    g = graph([{"name": "a", "op": "add", "inputs": ["x"], "attrs": {"scalar": -0.5}},
               {"name": "s", "op": "slice", "inputs": ["a"], "attrs": {"dim": 1, "start": 0, "stop": 2}},
               {"name": "r", "op": "relu", "inputs": ["s"], "attrs": {}},
               {"name": "c", "op": "concat", "inputs": ["r", "a"], "attrs": {"dim": 1}}], shape=(4, 3), version=2)
    x = np.random.default_rng(0).standard_normal((1, 4, 3)).astype(np.float32)
    a = x - 0.5
    np.testing.assert_array_equal(RuntimeModel(g, {}, {})(x), np.concatenate([np.maximum(a[:, :2], 0), a], 1))


def test_window_mask_is_torchvisions():
    """The mask torchvision's shifted_window_attention builds, for a map of 3x2 windows of 2x3."""
    import torch

    from deepcomp.runtime.ops.shapes import window_mask

    (h, w), (wh, ww), (sh, sw) = (6, 6), (2, 3), (1, 1)
    region = torch.zeros(h, w)
    count = 0
    for hs in ((0, -wh), (-wh, -sh), (-sh, None)):
        for ws in ((0, -ww), (-ww, -sw), (-sw, None)):
            region[hs[0]:hs[1], ws[0]:ws[1]] = count
            count += 1
    r = region.view(h // wh, wh, w // ww, ww).permute(0, 2, 1, 3).reshape(-1, wh * ww)
    want = (r.unsqueeze(1) - r.unsqueeze(2)).ne(0).float() * -100.0
    np.testing.assert_array_equal(window_mask((h, w), (wh, ww), (sh, sw))[:, 0], want.numpy())


def test_constant_gathers_rows_by_a_stored_index():
    import torch

    from deepcomp.bench import DenseTorchGraph

    rng = np.random.default_rng(3)
    dense = {"table": rng.standard_normal((9, 2)).astype(np.float32), "idx": rng.integers(0, 9, 16).astype(np.int64)}
    nodes = [{"name": "c", "op": "constant", "inputs": ["x"], "attrs": {"tensor": "table", "index": "idx",
                                                                      "shape": [4, 4, 2]}},
             {"name": "y", "op": "add", "inputs": ["x", "c"], "attrs": {}}]
    g = graph(nodes, shape=(4, 4, 2), version=4)
    x = rng.standard_normal((2, 4, 4, 2)).astype(np.float32)
    want = x + dense["table"][dense["idx"]].reshape(4, 4, 2)
    np.testing.assert_allclose(RuntimeModel(g, dense, {})(x), want, rtol=1e-6)
    with torch.no_grad():
        np.testing.assert_allclose(DenseTorchGraph(g, dense)(torch.from_numpy(x)).numpy(), want, rtol=1e-6)
    with pytest.raises(DczError, match="attributes of graph version 4 in a version 3 graph"):
        RuntimeModel({**g, "version": 3}, dense, {})
    with pytest.raises(DczError, match="outside the 9 rows"):
        RuntimeModel(g, {**dense, "idx": dense["idx"] + 9}, {})
    with pytest.raises(DczError, match="not a dense integer tensor"):
        RuntimeModel(g, {**dense, "idx": dense["idx"].astype(np.float32)}, {})


def test_binary_broadcast_matmul_and_constants():
    import torch

    from deepcomp.bench import DenseTorchGraph

    rng = np.random.default_rng(2)
    dense = {"c": rng.standard_normal((1, 4, 1, 5)).astype(np.float32),
             "w": rng.standard_normal(5).astype(np.float32), "b": rng.standard_normal(5).astype(np.float32)}
    nodes = [{"name": "c", "op": "constant", "inputs": ["x"], "attrs": {"tensor": "c", "shape": [4, 1, 5]}},
             {"name": "m", "op": "mul", "inputs": ["x", "c"], "attrs": {}},
             {"name": "p", "op": "mean", "inputs": ["m"], "attrs": {"dims": [2], "keepdim": True}},
             {"name": "s", "op": "sub", "inputs": ["m", "p"], "attrs": {}},
             {"name": "d", "op": "div", "inputs": ["s", "c"], "attrs": {}},
             {"name": "t", "op": "permute", "inputs": ["d"], "attrs": {"dims": [0, 1, 3, 2]}},
             {"name": "mm", "op": "matmul", "inputs": ["d", "t"], "attrs": {}},
             {"name": "ln", "op": "layernorm", "inputs": ["d"], "attrs": {"weight": "w", "bias": "b", "eps": 1e-5,
                                                                       "dim": 3}},
             {"name": "cat", "op": "concat", "inputs": ["ln", "c"], "attrs": {"dim": 2}},
             {"name": "y", "op": "add", "inputs": ["cat", "cat"], "attrs": {}}]
    g = graph(nodes, shape=(4, 6, 5), version=2)
    x = rng.standard_normal((3, 4, 6, 5)).astype(np.float32)
    with torch.no_grad():
        ref = DenseTorchGraph(g, dense)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(RuntimeModel(g, dense, {})(x), ref, atol=1e-5, rtol=1e-5)
    g["output"] = "mm"
    with torch.no_grad():
        ref = DenseTorchGraph(g, dense)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(RuntimeModel(g, dense, {})(x), ref, atol=1e-4, rtol=1e-5)


def test_static_nodes_run_once_at_load_and_hold_their_value():
    """Nodes that compute from stored tensors alone (Swin v2's position-bias MLP) run once, at load:
    each call repeats the value over the batch; a consumer never overwrites it."""
    rng = np.random.default_rng(0)
    dense = {"t": rng.standard_normal((6, 2)).astype(np.float32), "w": rng.standard_normal((4, 2)).astype(np.float32),
             "b": rng.standard_normal(4).astype(np.float32)}
    g = graph([{"name": "c", "op": "constant", "inputs": ["x"], "attrs": {"tensor": "t", "shape": [6, 2]}},
               {"name": "l", "op": "linear", "inputs": ["c"], "attrs": {"weight": "w", "bias": "b"}},
               {"name": "s", "op": "sigmoid", "inputs": ["l"], "attrs": {}},
               {"name": "y", "op": "add", "inputs": ["s", "x"], "attrs": {}},
               {"name": "z", "op": "mul", "inputs": ["y", "s"], "attrs": {}}], shape=(6, 4), version=2)
    m = RuntimeModel(g, dense, {})
    assert [s.static for s in m.plan.steps] == [True, True, True, False, False]
    s = 1 / (1 + np.exp(-(dense["t"] @ dense["w"].T + dense["b"])))
    for n in (1, 3, 1):
        x = rng.standard_normal((n, 6, 4)).astype(np.float32)
        np.testing.assert_allclose(m(x), (s + x) * s, rtol=1e-5, atol=1e-6)
