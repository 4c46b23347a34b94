"""Export a .dcz file as a dense ONNX model, for users who keep another runtime (ONNX Runtime, OpenVINO).

The ONNX graph is built from the file's own graph (not from torch), so the export needs neither torch
nor the original model, and it covers exactly the ops the deepcomp runtime runs. The weights are the
decompressed ones: pruned weights are zeros, shared weights take their centroid's value, so the ONNX
model computes what `deepcomp run` computes. With ``sparse_initializers`` every weight whose sparse form
(int64 positions + float32 values) is smaller than its dense form is stored as an ONNX sparse
initializer: a smaller file that ONNX Runtime densifies when it loads it.

``ONNX_OPS`` holds one entry per .dcz op (keyed by its name in the graph), each a function that adds
the ONNX nodes of one graph node. It is meant to become a column of the runtime's op table.

Needs the ``onnx`` package (``pip install "deepcomp[onnx]"``), imported when an export starts.
"""

from __future__ import annotations

import math
import os
from typing import Callable

import numpy as np

from deepcomp.dcz import atomic_write, decompress, read_dcz
from deepcomp.errors import DeepcompError, UnsupportedOpError

OPSET = 17  # ONNX Runtime >= 1.12 and OpenVINO >= 2022.3 read it


def _onnx():
    try:
        import onnx
    except ImportError:
        raise DeepcompError('exporting to ONNX needs the onnx package: pip install "deepcomp[onnx]"') from None
    return onnx


class _Builder:
    """The ONNX model under construction, and shape inference on demand. Nodes and initializers go
    straight into one ModelProto, and each decoded tensor is released once it is stored there, so that
    a large model (VGG-16: 528 MB of weights) is not held in several copies at once."""

    def __init__(self, tensors: dict[str, np.ndarray], input_name: str, input_shape, sparse: bool):
        self.onnx = onnx = _onnx()
        self.tensors, self.sparse = tensors, sparse
        self.model = onnx.ModelProto()
        self.graph = self.model.graph
        self.dims: dict[str, list[int]] = {}  # initializer name -> shape (dense or sparse)
        self._fresh = 0
        self.input = onnx.helper.make_tensor_value_info(input_name, onnx.TensorProto.FLOAT, ["N", *input_shape])
        self.graph.input.append(self.input)

    def tensor(self, name: str) -> str:
        """The ONNX name of the file's tensor ``name``, added as an initializer on first use."""
        if name not in self.dims:
            self._initializer(name, np.ascontiguousarray(self.tensors.pop(name), dtype=np.float32))
        return name

    def constant(self, hint: str, value: np.ndarray) -> str:
        """A new initializer holding ``value`` (ones/zeros for an absent batch-norm affine, pool matrices)."""
        self._fresh += 1
        name = f"{hint}#const{self._fresh}"
        self._initializer(name, np.ascontiguousarray(value, dtype=np.float32))
        return name

    def _initializer(self, name: str, a: np.ndarray) -> None:
        onnx = self.onnx
        self.dims[name] = list(a.shape)
        nnz = int(np.count_nonzero(a))
        if self.sparse and a.ndim >= 2 and nnz * 12 < a.size * 4:  # int64 position + float32 value per nonzero
            flat = a.reshape(-1)
            pos = np.flatnonzero(flat).astype(np.int64)
            st = self.graph.sparse_initializer.add()
            st.dims.extend(a.shape)
            st.values.CopyFrom(onnx.numpy_helper.from_array(flat[pos], name))
            st.indices.CopyFrom(onnx.numpy_helper.from_array(pos, f"{name}#indices"))
        else:
            self.graph.initializer.add().CopyFrom(onnx.numpy_helper.from_array(a, name))

    def add(self, op_type: str, inputs: list[str], output: str, **attrs) -> str:
        self.graph.node.append(self.onnx.helper.make_node(op_type, inputs, [output], name=output, **attrs))
        return output

    def shape(self, value: str) -> tuple[int, ...]:
        """The static per-sample shape of ``value`` (everything after N), by ONNX shape inference on the
        nodes so far (initializers given by their shapes only)."""
        onnx = self.onnx
        probe = onnx.helper.make_tensor_value_info(value, onnx.TensorProto.FLOAT, None)
        inits = [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, d) for n, d in self.dims.items()]
        g = onnx.helper.make_graph(list(self.graph.node), "probe", [self.input, *inits], [probe])
        inferred = onnx.shape_inference.infer_shapes(
            onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", OPSET)]))
        for vi in [*inferred.graph.value_info, *inferred.graph.output]:
            if vi.name == value:
                return tuple(d.dim_value for d in vi.type.tensor_type.shape.dim[1:])
        raise DeepcompError(f"cannot infer the shape of {value!r} for the ONNX export")  # pragma: no cover


# -------------------------------------------------------------------- one function per .dcz op
def _batchnorm(b: _Builder, x: str, bn: dict, channels: int, out: str) -> str:
    """ONNX BatchNormalization of ``x`` with the .dcz batch-norm record ``bn``."""
    scale = b.tensor(bn["weight"]) if bn.get("weight") else b.constant(out, np.ones(channels))
    bias = b.tensor(bn["bias"]) if bn.get("bias") else b.constant(out, np.zeros(channels))
    return b.add("BatchNormalization", [x, scale, bias, b.tensor(bn["running_mean"]), b.tensor(bn["running_var"])],
                 out, epsilon=float(bn["eps"]))


def _conv2d(b: _Builder, node: dict, xs: list[str]) -> str:
    a, out = node["attrs"], node["name"]
    inputs = [xs[0], b.tensor(a["weight"])] + ([b.tensor(a["bias"])] if a.get("bias") else [])
    oc, _, kh, kw = b.dims[a["weight"]]
    ph, pw = a["padding"]
    conv = b.add("Conv", inputs, out if a.get("bn") is None else f"{out}#conv", kernel_shape=[kh, kw],
                 strides=list(a["stride"]), pads=[ph, pw, ph, pw], dilations=list(a["dilation"]), group=int(a["groups"]))
    return conv if a.get("bn") is None else _batchnorm(b, conv, a["bn"], oc, out)


def _linear(b: _Builder, node: dict, xs: list[str]) -> str:
    a = node["attrs"]
    inputs = [xs[0], b.tensor(a["weight"])] + ([b.tensor(a["bias"])] if a.get("bias") else [])
    return b.add("Gemm", inputs, node["name"], transB=1)


def _batchnorm2d(b: _Builder, node: dict, xs: list[str]) -> str:
    return _batchnorm(b, xs[0], node["attrs"], b.shape(xs[0])[0], node["name"])


def _ceil_pads(b: _Builder, x: str, k, s, p, d) -> list[int]:
    """ONNX pads that give torch's ceil_mode output size with ceil_mode=0: the last window may start in
    the right padding's reach but never beyond the input plus its left padding (torch's rule)."""
    from deepcomp.runtime.reference import pool_out

    ends = []
    for size, ki, si, pi, di in zip(b.shape(x)[1:], k, s, p, d):
        n = pool_out(size, ki, si, pi, di, True)
        ends.append(max(pi, (n - 1) * si + di * (ki - 1) + 1 - size - pi))
    return [p[0], p[1], *ends]


def _maxpool2d(b: _Builder, node: dict, xs: list[str]) -> str:
    a = node["attrs"]
    k, s, p = (list(a[key]) for key in ("kernel_size", "stride", "padding"))
    d = list(a.get("dilation", [1, 1]))
    pads = _ceil_pads(b, xs[0], k, s, p, d) if a.get("ceil_mode") else [p[0], p[1], p[0], p[1]]
    return b.add("MaxPool", xs, node["name"], kernel_shape=k, strides=s, pads=pads, dilations=d)


def _avgpool2d(b: _Builder, node: dict, xs: list[str]) -> str:
    a = node["attrs"]
    k, s, p = (list(a[key]) for key in ("kernel_size", "stride", "padding"))
    include = bool(a.get("count_include_pad", True))
    pads = [p[0], p[1], p[0], p[1]]
    if a.get("ceil_mode"):
        pads = _ceil_pads(b, xs[0], k, s, p, [1, 1])
        if include and pads[2:] != p:  # ONNX would count the extra right padding in the divisor
            raise UnsupportedOpError(f"avgpool2d node {node['name']!r} uses ceil_mode with count_include_pad, "
                                     "which ONNX cannot express exactly; export a model without it")
    return b.add("AveragePool", xs, node["name"], kernel_shape=k, strides=s, pads=pads,
                 count_include_pad=int(include))


def _adaptive_avgpool2d(b: _Builder, node: dict, xs: list[str]) -> str:
    (_, h, w), (oh, ow), out = b.shape(xs[0]), node["attrs"]["output_size"], node["name"]
    if (oh, ow) == (1, 1):
        return b.add("GlobalAveragePool", xs, out)
    if h % oh == 0 and w % ow == 0:
        return b.add("AveragePool", xs, out, kernel_shape=[h // oh, w // ow], strides=[h // oh, w // ow])
    # Uneven windows: adaptive pooling is linear, y = Ph @ x @ Pw with one averaging row per output.
    def pooling(size, n):
        m = np.zeros((n, size))
        for i in range(n):
            lo, hi = (i * size) // n, math.ceil((i + 1) * size / n)
            m[i, lo:hi] = 1.0 / (hi - lo)
        return m

    cols = b.add("MatMul", [xs[0], b.constant(out, pooling(w, ow).T)], f"{out}#cols")
    return b.add("MatMul", [b.constant(out, pooling(h, oh)), cols], out)


def _simple(op_type: str, **attrs) -> Callable:
    return lambda b, node, xs: b.add(op_type, xs, node["name"], **attrs)


ONNX_OPS: dict[str, Callable[[_Builder, dict, list[str]], str]] = {
    "conv2d": _conv2d,
    "linear": _linear,
    "batchnorm2d": _batchnorm2d,
    "relu": _simple("Relu"),
    "maxpool2d": _maxpool2d,
    "avgpool2d": _avgpool2d,
    "adaptive_avgpool2d": _adaptive_avgpool2d,
    "flatten": _simple("Flatten", axis=1),
    "add": _simple("Add"),
    "concat": lambda b, node, xs: b.add("Concat", xs, node["name"], axis=int(node["attrs"]["dim"])),
}


# ------------------------------------------------------------------------------------------ API
def _build(path: str | os.PathLike, sparse_initializers: bool):
    """The ModelProto of the .dcz file at ``path``, not yet checked."""
    onnx = _onnx()
    contents = read_dcz(path)
    graph = contents.graph
    inp = graph.get("input") or {}
    b = _Builder(decompress(path), inp.get("name", "x"), inp.get("shape", []), sparse_initializers)
    names = {b.input.name: b.input.name}
    for node in graph.get("nodes", []):
        op = node.get("op")
        if op not in ONNX_OPS:
            raise UnsupportedOpError(f"node {node.get('name')!r} has the op {op!r}, which the ONNX export does not "
                                     "know; upgrade deepcomp")
        names[node["name"]] = ONNX_OPS[op](b, node, [names[s] for s in node["inputs"]])
    b.add("Identity", [names[graph["output"]]], "output")
    shape = ["N", *b.shape("output")]
    b.graph.output.append(onnx.helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT, shape))
    b.graph.name = str(contents.meta.get("model") or "deepcomp")
    model = b.model
    model.ir_version = 8  # what OPSET needs; older readers accept it
    model.opset_import.append(onnx.helper.make_opsetid("", OPSET))
    model.producer_name = "deepcomp"
    return model


def to_onnx(path: str | os.PathLike, *, sparse_initializers: bool = False):
    """The .dcz file at ``path`` as a checked ``onnx.ModelProto`` (dense weights, or sparse initializers)."""
    model = _build(path, sparse_initializers)
    _onnx().checker.check_model(model)
    return model


def export_onnx(path: str | os.PathLike, output: str | os.PathLike, *, sparse_initializers: bool = False) -> int:
    """Write the .dcz file at ``path`` as an ONNX model to ``output`` (atomically). Returns its size."""
    model = _build(path, sparse_initializers)
    data = model.SerializeToString()
    del model  # the serialized bytes are all that is needed from here on
    if len(data) >= 2**31:
        raise DeepcompError("the ONNX model would exceed protobuf's 2 GB limit; export with --sparse-initializers")
    _onnx().checker.check_model(data)
    atomic_write(output, data)
    return len(data)
