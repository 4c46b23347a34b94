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
    finally:
        _native._set_isa(before)
    with pytest.raises(ValueError, match="C-contiguous"):
        _native.activation_(np.zeros((4, 4), np.float32)[:, ::2], 0)
