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
from deepcomp.runtime.plan import check_graph

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
        self.shapes: dict[str, tuple] = {}    # the graph's node -> its shape (no batch), from the planner
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

    def int64(self, hint: str, values) -> str:
        """A Constant node holding int64 ``values`` (shapes, axes), typed where shape inference sees it."""
        self._fresh += 1
        name = f"{hint}#i64_{self._fresh}"
        value = self.onnx.numpy_helper.from_array(np.asarray(values, dtype=np.int64), name)
        return self.add("Constant", [], name, value=value)

    def reshaped(self, name: str, shape) -> str:
        """The file's tensor ``name`` as an initializer of ``shape`` (a broadcastable view of a vector)."""
        key = f"{name}#{'x'.join(map(str, shape))}"
        if key not in self.dims:
            self._initializer(key, np.ascontiguousarray(self.tensors[name], dtype=np.float32).reshape(shape))
        return key

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
        """The static per-sample shape of ``value`` (everything after N): the planner's for a node of the
        graph, else by ONNX shape inference on the nodes so far (initializers given by their shapes only)."""
        if value in self.shapes:
            return tuple(self.shapes[value])
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
    a, out = node["attrs"], node["name"]
    if a.get("dim") == 1:  # over the channels of NCHW: a 1x1 Conv
        w = np.asarray(b.tensors[a["weight"]], dtype=np.float32)
        inputs = [xs[0], b.constant(out, w[:, :, None, None])] + ([b.tensor(a["bias"])] if a.get("bias") else [])
        return b.add("Conv", inputs, out, kernel_shape=[1, 1])
    if len(b.shape(xs[0])) == 1:  # [N, in]: one Gemm
        inputs = [xs[0], b.tensor(a["weight"])] + ([b.tensor(a["bias"])] if a.get("bias") else [])
        return b.add("Gemm", inputs, out, transB=1)
    # [N, ..., in] (tokens): MatMul with the transposed weight broadcasts over the leading dimensions
    w = np.asarray(b.tensors[a["weight"]], dtype=np.float32)
    wt = b.constant(out, w.T)
    if not a.get("bias"):
        return b.add("MatMul", [xs[0], wt], out)
    return b.add("Add", [b.add("MatMul", [xs[0], wt], f"{out}#mm"), b.tensor(a["bias"])], out)


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


def _binary(op_type: str) -> Callable:
    """Two inputs broadcast; or one input and the node's number (``reverse``: number first)."""
    def export(b: _Builder, node: dict, xs: list[str]) -> str:
        a = node["attrs"]
        if a.get("scalar") is None:
            return b.add(op_type, xs, node["name"])
        c = b.constant(node["name"], np.asarray(a["scalar"]))
        return b.add(op_type, [c, xs[0]] if a.get("reverse") else [xs[0], c], node["name"])
    return export


def _expand(b: _Builder, value: str, x: str, shape, out: str) -> str:
    """``value`` [1, *shape] expanded to the batch of ``x``."""
    batch = b.add("Shape", [x], f"{out}#batch", start=0, end=1)
    full = b.add("Concat", [batch, b.int64(out, list(shape))], f"{out}#shape", axis=0)
    return b.add("Expand", [value, full], out)


def _constant(b: _Builder, node: dict, xs: list[str]) -> str:
    """The stored tensor as [1, *shape] (with ``index``: its rows gathered here, as the runtime does at
    load), expanded to the batch of the input."""
    a, out = node["attrs"], node["name"]
    if a.get("index") is None:
        return _expand(b, b.reshaped(a["tensor"], [1, *a["shape"]]), xs[0], a["shape"], out)
    table = np.asarray(b.tensors[a["tensor"]], dtype=np.float32)
    index = np.asarray(b.tensors[a["index"]]).reshape(-1)
    rows = table.reshape(-1, table.shape[-1] if table.ndim > 1 else 1)[index]
    return _expand(b, b.constant(out, rows.reshape(1, *a["shape"])), xs[0], a["shape"], out)


def _pad(b: _Builder, node: dict, xs: list[str]) -> str:
    a, out = node["attrs"], node["name"]
    pads = [int(p) for p in a["pads"]]
    onnx_pads = [0, *pads[0::2], 0, *pads[1::2]]  # all begins (the batch first), then all ends
    return b.add("Pad", [xs[0], b.int64(out, onnx_pads), b.constant(out, np.asarray(a["value"]))], out)


def _roll(b: _Builder, node: dict, xs: list[str]) -> str:
    """One rotation per dim: the last ``shift`` entries, then the rest."""
    a, out = node["attrs"], node["name"]
    y = xs[0]
    for shift, dim in zip(a["shifts"], a["dims"]):
        n = b.shape(xs[0])[dim - 1]
        s = int(shift) % n
        if not s:
            continue
        b._fresh += 1
        tag = f"{out}#roll{b._fresh}"

        def part(lo, hi, t, y=y, tag=tag, dim=dim):
            return b.add("Slice", [y, b.int64(tag, [lo]), b.int64(tag, [hi]), b.int64(tag, [dim])], f"{tag}{t}")
        y = b.add("Concat", [part(n - s, n, "hi"), part(0, n - s, "lo")], tag, axis=int(dim))
    return b.add("Identity", [y], out)


def _window_mask(b: _Builder, node: dict, xs: list[str]) -> str:
    from deepcomp.runtime.ops.shapes import window_mask

    a, out = node["attrs"], node["name"]
    m = window_mask(a["size"], a["window"], a["shift"])
    return _expand(b, b.constant(out, m[None]), xs[0], m.shape, out)


def _clamp(b: _Builder, node: dict, xs: list[str]) -> str:
    a, out = node["attrs"], node["name"]
    bound = [b.constant(out, np.asarray(a[k])) if a.get(k) is not None else "" for k in ("min", "max")]
    return b.add("Clip", [xs[0], *bound], out)


def _silu(b: _Builder, node: dict, xs: list[str]) -> str:
    return b.add("Mul", [xs[0], b.add("Sigmoid", xs, f"{node['name']}#sigmoid")], node["name"])


def _gelu(b: _Builder, node: dict, xs: list[str]) -> str:
    """0.5 x (1 + erf(x / sqrt 2)), or the tanh form (opset 17 has no Gelu)."""
    x, out = xs[0], node["name"]
    if node["attrs"].get("approximate") == "tanh":
        cube = b.add("Mul", [b.add("Mul", [x, x], f"{out}#x2"), x], f"{out}#x3")
        inner = b.add("Add", [x, b.add("Mul", [cube, b.constant(out, np.asarray(0.044715))], f"{out}#c3")], f"{out}#in")
        t = b.add("Tanh", [b.add("Mul", [inner, b.constant(out, np.asarray(np.sqrt(2 / np.pi)))], f"{out}#s")],
                  f"{out}#t")
    else:
        t = b.add("Erf", [b.add("Mul", [x, b.constant(out, np.asarray(1 / np.sqrt(2)))], f"{out}#s")], f"{out}#t")
    half_x = b.add("Mul", [x, b.constant(out, np.asarray(0.5))], f"{out}#h")
    return b.add("Mul", [half_x, b.add("Add", [t, b.constant(out, np.asarray(1.0))], f"{out}#1p")], out)


def _reshape(b: _Builder, node: dict, xs: list[str]) -> str:
    return b.add("Reshape", [xs[0], b.int64(node["name"], [0, *node["attrs"]["shape"]])], node["name"])


def _slice(b: _Builder, node: dict, xs: list[str]) -> str:
    a, out = node["attrs"], node["name"]
    stop = min(int(a["stop"]), 2 ** 62)
    inputs = [xs[0], b.int64(out, [a["start"]]), b.int64(out, [stop]), b.int64(out, [a["dim"]]),
              b.int64(out, [a.get("step", 1)])]
    return b.add("Slice", inputs, out)


def _layernorm(b: _Builder, node: dict, xs: list[str]) -> str:
    """Normalised over one dimension d, written out (LayerNormalization spans d..end, the op one dim)."""
    a, x, out = node["attrs"], xs[0], node["name"]
    shape = b.shape(x)
    d = int(a["dim"])
    mean = lambda v, tag: b.add("ReduceMean", [v], f"{out}#{tag}", axes=[d], keepdims=1)  # noqa: E731
    xc = b.add("Sub", [x, mean(x, "mu")], f"{out}#xc")
    var = mean(b.add("Mul", [xc, xc], f"{out}#sq"), "var")
    std = b.add("Sqrt", [b.add("Add", [var, b.constant(out, np.asarray(a["eps"]))], f"{out}#ve")], f"{out}#std")
    y = b.add("Div", [xc, std], f"{out}#n" if a.get("weight") or a.get("bias") else out)
    vshape = [shape[d - 1]] + [1] * (len(shape) - d)  # broadcasts against [N, *shape] at dimension d
    if a.get("weight"):
        y = b.add("Mul", [y, b.reshaped(a["weight"], vshape)], out if not a.get("bias") else f"{out}#w")
    if a.get("bias"):
        y = b.add("Add", [y, b.reshaped(a["bias"], vshape)], out)
    return y


def _normalize(b: _Builder, node: dict, xs: list[str]) -> str:
    """x / max(its L2 norm over dim, eps)."""
    a, out = node["attrs"], node["name"]
    norm = b.add("ReduceL2", xs, f"{out}#norm", axes=[int(a["dim"])], keepdims=1)
    return b.add("Div", [xs[0], b.add("Max", [norm, b.constant(out, np.asarray(a["eps"]))], f"{out}#max")], out)


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
    "add": _binary("Add"),
    "concat": lambda b, node, xs: b.add("Concat", xs, node["name"], axis=int(node["attrs"]["dim"])),
    "constant": _constant,
    "clamp": _clamp,
    "sigmoid": _simple("Sigmoid"),
    "silu": _silu,
    "tanh": _simple("Tanh"),
    "hardswish": _simple("HardSwish"),
    "hardsigmoid": _simple("HardSigmoid", alpha=1 / 6, beta=0.5),
    "gelu": _gelu,
    "mul": _binary("Mul"),
    "sub": _binary("Sub"),
    "div": _binary("Div"),
    "mean": lambda b, node, xs: b.add("ReduceMean", xs, node["name"], axes=list(node["attrs"]["dims"]),
                                      keepdims=int(bool(node["attrs"].get("keepdim")))),
    "permute": lambda b, node, xs: b.add("Transpose", xs, node["name"], perm=list(node["attrs"]["dims"])),
    "reshape": _reshape,
    "slice": _slice,
    "layernorm": _layernorm,
    "matmul": _simple("MatMul"),
    "softmax": lambda b, node, xs: b.add("Softmax", xs, node["name"], axis=int(node["attrs"]["dim"])),
    "normalize": _normalize,
    "pad": _pad,
    "roll": _roll,
    "window_mask": _window_mask,
    "exp": _simple("Exp"),
}


# ------------------------------------------------------------------------------------------ API
def _build(path: str | os.PathLike, sparse_initializers: bool):
    """The ModelProto of the .dcz file at ``path``, not yet checked."""
    onnx = _onnx()
    contents = read_dcz(path)
    graph = contents.graph
    inp = graph.get("input") or {}
    tensors = decompress(path)
    b = _Builder(tensors, inp.get("name", "x"), inp.get("shape", []), sparse_initializers)
    b.shapes = check_graph(graph, lambda name, *_: tuple(np.shape(tensors[name])))[1]  # per node, no batch
    names = {b.input.name: b.input.name}
    for node in graph.get("nodes", []):
        op = node.get("op")
        if op not in ONNX_OPS:
            raise UnsupportedOpError(f"node {node.get('name')!r} has the op {op!r}, which the ONNX export does not "
                                     "know; upgrade deepcomp")
        names[node["name"]] = ONNX_OPS[op](b, node, [names[s] for s in node["inputs"]])
    b.add("Identity", [names[graph["output"]]], "output")
    shape = ["N", *b.shape(names[graph["output"]])]
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
