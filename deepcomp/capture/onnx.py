"""The ONNX front: an ONNX model captured from its graph, handlers keyed by ONNX op type (``ONNX``).

:func:`load_onnx` reads the file (the ``onnx`` package is an optional extra), checks it and infers its
shapes, and returns an :class:`OnnxModel`: the model's weights as torch parameters (every Conv and
Gemm/MatMul weight an ``nn.Conv2d`` / ``nn.Linear`` at a path named after the ONNX node, so pruning and
weight sharing treat it like a torch model) plus the ONNX graph, which :func:`capture_onnx` turns into
the GRAPH object through the shared builder and lowerings, as the torch fronts do.

Values of the walk are builder :class:`~deepcomp.capture.builder.Tensor` s (computed per sample), numpy
arrays (initializers, ``Constant`` nodes, anything computed from them: folded here with onnx's reference
evaluator) and shape vectors (numpy object arrays whose first entry may be :data:`BATCH`, from ``Shape``
of a tensor), so the ``Shape -> Gather -> Concat -> Reshape`` chains torch.onnx writes for ``flatten``
fold into one static reshape. The computation never runs in torch: retraining needs the torch model.
"""

from __future__ import annotations

import math
import os
import re
from typing import Callable

import numpy as np
import torch
from torch import nn

from deepcomp.capture import lower
from deepcomp.capture.builder import GraphBuilder, Tensor
from deepcomp.errors import DeepcompError, ModelLoadError, UnsupportedOpError

INSTALL = 'pip install "deepcomp[onnx]"'
NOT_TRAINABLE = ("this model comes from an ONNX file, which deepcomp prunes and weight-shares but cannot retrain "
                 "or calibrate (that runs the model in torch): drop --data, or compress the PyTorch model instead")


class _Batch:
    def __repr__(self):
        return "N"


BATCH = _Batch()
ONNX: dict[str, Callable] = {}


def handles(*op_types):
    def register(fn):
        for t in op_types:
            ONNX[t] = fn
        return fn
    return register


def supported() -> str:
    return ", ".join(sorted(ONNX))


def require_onnx():
    try:
        import onnx
    except ImportError:
        raise ModelLoadError(f"reading ONNX models needs the onnx package: {INSTALL}") from None
    return onnx


# --------------------------------------------------------------------------------------------------
# the model: weights as torch parameters, computation as ONNX


class OnnxModel(nn.Module):
    """An ONNX model's weights as parameters (Conv -> nn.Conv2d, Gemm/MatMul -> nn.Linear, other tensors as
    buffers) beside its graph. ``onnx_names`` maps each prunable weight's state_dict key to its ONNX
    initializer and whether it is stored transposed (MatMul and Gemm with transB=0 hold [in, out])."""

    not_trainable = NOT_TRAINABLE

    def __init__(self, proto, opset: int, fixed_batch: int | None):
        super().__init__()
        self.proto, self.opset, self.fixed_batch = proto, opset, fixed_batch
        self.onnx_names: dict[str, tuple[str, bool]] = {}
        self._keys: dict[tuple, str] = {}  # (role, ONNX name) -> state_dict key, so every walk agrees

    def forward(self, *args, **kwargs):
        raise DeepcompError(NOT_TRAINABLE)

    def _placeable(self, path: str) -> bool:
        parent = self
        parts = path.split(".")
        if not all(re.fullmatch(r"\w+", p) for p in parts):
            return False
        for p in parts[:-1]:
            if p in parent._modules:
                parent = parent._modules[p]
            elif hasattr(parent, p):
                return False
            else:
                return True
        return not hasattr(parent, parts[-1])

    def place(self, candidates: list, module: nn.Module) -> str:
        """Put ``module`` at the first free path among ``candidates`` (then a numbered one); its path."""
        flat = re.sub(r"\W+", "_", candidates[-1]).strip("_") or "layer"
        path = next((c for c in candidates if c and self._placeable(c)), None)
        k = 1
        while path is None:
            path = f"{flat}_{k}" if self._placeable(f"{flat}_{k}") else None
            k += 1
        parent = self
        *heads, last = path.split(".")
        for p in heads:
            if p not in parent._modules:
                parent.add_module(p, nn.Module())
            parent = parent._modules[p]
        parent.add_module(last, module)
        return path


def _scope_path(node_name: str) -> str:
    """'layer1.0.conv1' from torch.onnx's '/layer1/layer1.0/conv1/Conv' (scopes, then the op): a scope
    that starts with the one before it and a dot names the same module more precisely."""
    base, prev = "", ""
    for s in [s for s in node_name.split("/") if s][:-1]:
        if not (prev and s.startswith(prev + ".")):
            base = f"{base}.{prev}" if base and prev else base or prev
        prev = s
    return f"{base}.{prev}" if base and prev else base or prev


def _candidates(node, weight_name: str | None = None) -> list:
    names = []
    if weight_name and weight_name.endswith(".weight"):
        names.append(weight_name[: -len(".weight")])
    names += [_scope_path(node.name), node.name or node.op_type]
    return names


# --------------------------------------------------------------------------------------------------
# reading


def load_onnx(path: str, input_shape=None):
    """A :class:`deepcomp.zoo.LoadedModel` for the ONNX file ``path`` (input shape from the file's static
    dimensions, or ``input_shape``). Raises ModelLoadError for a file that is not a valid ONNX model."""
    onnx = require_onnx()
    from deepcomp.zoo import LoadedModel

    try:
        proto = onnx.load(path)
        onnx.checker.check_model(proto)
        proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    except Exception as e:  # noqa: BLE001 - whatever onnx says about the user's file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"{path!r} is not a valid ONNX model ({first[:300]}); export it again "
                             "(torch.onnx.export) or check the file") from None
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or opset < 7:
        raise ModelLoadError(f"{path!r} uses ONNX opset {opset}; deepcomp reads opset 7 and later (13-18 tested)")
    inits = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    if len(inputs) != 1 or len(proto.graph.output) != 1:
        raise UnsupportedOpError(f"the ONNX model has {len(inputs)} inputs and {len(proto.graph.output)} outputs; "
                                 "deepcomp captures models with one input and one output tensor")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    if input_shape is None:
        if len(dims) < 2 or any(d is None for d in dims[1:]):
            raise ModelLoadError(f"the ONNX model's input {inputs[0].name!r} has dynamic dimensions "
                                 f"{['?' if d is None else d for d in dims]}; give the per-sample shape "
                                 "(--input-shape C,H,W)")
        input_shape = dims[1:]
    model = OnnxModel(proto, opset, dims[0] if dims else None)
    shape = tuple(int(d) for d in input_shape)
    from deepcomp.capture import capture

    capture(model, shape)  # registers the weights, and fails now on an op deepcomp lacks
    arch = os.path.splitext(os.path.basename(path))[0] or "onnx"
    return LoadedModel(model, arch, shape, f"onnx:{path}")


def capture_onnx(model: OnnxModel, input_shape: tuple, unsupported: Callable):
    return OnnxCapture(model, input_shape, unsupported).run()


# --------------------------------------------------------------------------------------------------
# the walk


class OnnxCapture:
    def __init__(self, model: OnnxModel, input_shape: tuple, unsupported: Callable):
        from onnx import numpy_helper

        self.m, self.g = model, model.proto.graph
        self.consts = {i.name: numpy_helper.to_array(i) for i in self.g.initializer}
        self.source = {name: name for name in self.consts}  # value -> the initializer it is (through Identity)
        self._unsupported = unsupported
        self.where = ""
        self.uses: dict[str, int] = {}
        for n in self.g.node:
            for i in n.input:
                self.uses[i] = self.uses.get(i, 0) + 1
        inp = next(i for i in self.g.input if i.name not in self.consts)
        self.b = GraphBuilder(inp.name, input_shape, {k: v.shape for k, v in model.state_dict().items()}, unsupported)
        self.env: dict = {inp.name: self.b.input, "": None, **self.consts}

    # the interface deepcomp.capture.lower uses

    def unsupported(self, op: str, why: str = "") -> UnsupportedOpError:
        return self._unsupported(op, self.where, why)

    def add(self, op, inputs, attrs, base=None) -> Tensor:
        return self.b.add(op, inputs, attrs, self.where, base)

    def tensor(self, v, like=None) -> Tensor:
        if isinstance(v, Tensor):
            return v
        if isinstance(v, str):
            rank = like.rank if like is not None else len(self.b.tensor_shape(v, self.where))
            return self.b.constant(v, rank, self.where)
        raise self.unsupported(self.op, f"expected a tensor computed from the input, got {v!r}")

    # keys of the state_dict

    def _key(self, role: str, name: str, make: Callable[[], str]) -> str:
        key = self.m._keys.get((role, name))
        if key is None:
            key = self.m._keys[(role, name)] = make()
            for k, v in self.m.state_dict().items():  # what make() registered
                self.b.tensor_shapes.setdefault(k, tuple(v.shape))
        return key

    def const(self, i: int, node, what: str) -> np.ndarray:
        v = self.env.get(node.input[i]) if i < len(node.input) else None
        if not isinstance(v, np.ndarray):
            raise self.unsupported(node.op_type, f"the {what} must be a constant (an initializer)")
        return v

    def buffer(self, node, i: int) -> str:
        """The constant input ``i`` of ``node`` as a stored tensor (a buffer of the model)."""
        name = node.input[i]
        arr = self.const(i, node, "operand")

        def make():
            if "constants" not in self.m._modules:
                self.m.add_module("constants", nn.Module())
            holder = self.m._modules["constants"]
            base = re.sub(r"\W+", "_", name).strip("_") or "c"
            attr, k = base, 1
            while hasattr(holder, attr):
                attr, k = f"{base}_{k}", k + 1
            holder.register_buffer(attr, torch.from_numpy(np.array(arr, dtype=np.float32)))
            return f"constants.{attr}"
        return self._key("const", self.source.get(name, f"{node.name}:{i}"), make)

    def layer(self, node, i: int, module_for: Callable[[np.ndarray], nn.Module], transposed: bool) -> str:
        """The weight input ``i`` of a Conv / Gemm / MatMul as the weight of a torch layer; its key."""
        w = self.const(i, node, "weight")
        name = self.source.get(node.input[i], node.input[i])  # folded constants are named by their value

        def make():
            module = module_for(w.T if transposed else w)
            path = self.m.place(_candidates(node, name), module)
            self.m.onnx_names[f"{path}.weight"] = (name, transposed)
            return f"{path}.weight"
        return self._key("weight", name, make)

    def bias(self, weight_key: str, node, i: int) -> str:
        name = node.input[i]
        arr = self.const(i, node, "bias").reshape(-1)
        path = weight_key[: -len(".weight")]

        def make():
            module = self.m.get_submodule(path)
            outs = module.weight.shape[0]
            if arr.shape[0] != outs:
                raise self.unsupported(node.op_type, f"a bias of {arr.shape[0]} values for {outs} outputs")
            module.bias = nn.Parameter(torch.from_numpy(np.array(arr, dtype=np.float32)))
            return f"{path}.bias"
        return self._key("bias", f"{path}:{self.source.get(name, name)}", make)

    def holder(self, node, names: dict) -> dict:
        """Constant inputs (name -> input index) of ``node`` as buffers of one module named after it
        (BatchNormalization, LayerNormalization): {name: key}."""
        def make():
            mod = nn.Module()
            for attr, i in names.items():
                mod.register_buffer(attr, torch.from_numpy(np.array(self.const(i, node, attr), dtype=np.float32)))
            return self.m.place(_candidates(node), mod)
        path = self._key("holder", node.name or "|".join(node.input), make)
        return {attr: f"{path}.{attr}" for attr in names}

    # running

    def run(self):
        for k, node in enumerate(self.g.node):
            self.op, self.where = node.op_type, node.name or f"{node.op_type} #{k}"
            if node.domain not in ("", "ai.onnx"):
                raise self.unsupported(f"{node.domain}.{node.op_type}")
            ins = [_numeric(self.env[i]) if i in self.env else self._missing(i) for i in node.input]
            attrs = _attributes(node)
            if all(isinstance(v, np.ndarray) and v.dtype != object for v in ins if v is not None):
                outs = self.fold(node, ins)
            elif node.op_type in ONNX:
                outs = ONNX[node.op_type](self, node, ins, attrs)
            else:
                raise self.unsupported(node.op_type)
            outs = outs if isinstance(outs, tuple) and not isinstance(outs, Tensor) else (outs,)
            for name, v in zip(node.output, outs):
                self.env[name] = v
                if node.op_type == "Identity" and node.input[0] in self.source:
                    self.source[name] = self.source[node.input[0]]
            for name in node.output[len(outs):]:
                if name and self.uses.get(name) or name in {o.name for o in self.g.output}:
                    raise self.unsupported(node.op_type, f"its output {name!r} (only the first is supported)")
        out = self.env.get(self.g.output[0].name)
        if not isinstance(out, Tensor):
            raise UnsupportedOpError("the ONNX model's output does not depend on its input")
        self._check_output(out)
        return self.b.result(out), out.shape

    def _missing(self, name):
        raise UnsupportedOpError(f"the ONNX graph reads {name!r} at '{self.where}' before any node computes it")

    def fold(self, node, ins):
        """Evaluate a node whose inputs are all constants with onnx's reference implementation."""
        from onnx.reference import ReferenceEvaluator

        try:
            evaluator = ReferenceEvaluator(node, opsets={"": self.m.opset})
            outs = evaluator.run(None, {n: v for n, v in zip(node.input, ins) if n})
        except Exception as e:  # noqa: BLE001 - onnx's evaluator on the user's constants
            raise self.unsupported(node.op_type, f"cannot evaluate it on constants: {str(e).splitlines()[0][:200]}")
        return tuple(np.asarray(o) for o in outs)

    def _check_output(self, out: Tensor):
        dims = self.g.output[0].type.tensor_type.shape.dim
        want = [d.dim_value if d.HasField("dim_value") else None for d in dims][1:]
        if len(want) != len(out.shape) or any(w is not None and w != s for w, s in zip(want, out.shape)):
            raise UnsupportedOpError(f"the captured graph computes [N, {', '.join(map(str, out.shape))}] where the "
                                     f"ONNX model declares {['?' if w is None else w for w in want]} per sample; "
                                     "check --input-shape, or report this model")


def _numeric(v):
    """A shape vector without the batch in it is plain integers (folded like any constant)."""
    if isinstance(v, np.ndarray) and v.dtype == object and not any(e is BATCH for e in v.reshape(-1)):
        return v.astype(np.int64)
    return v


def _attributes(node) -> dict:
    from onnx import helper

    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


# --------------------------------------------------------------------------------------------------
# handlers: each takes (capture, node, input values, attributes) and returns the output value(s)


def _tensor(cx, v, what="input") -> Tensor:
    if not isinstance(v, Tensor):
        raise cx.unsupported(cx.op, f"the {what} must be computed from the model's input")
    return v


def _pads(cx, a: dict, x: Tensor, kernel, strides, dilations) -> list:
    auto = a.get("auto_pad", "NOTSET")
    if auto == "VALID":
        return [0, 0]
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = []
        for n, k, s, d in zip(x.shape[1:], kernel, strides, dilations):
            total = max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)
            if total % 2:
                raise cx.unsupported(cx.op, f"auto_pad={auto} pads asymmetrically here")
            pads.append(total // 2)
        return pads
    pads = list(a.get("pads", [0, 0, 0, 0]))
    if pads[:2] != pads[2:]:
        raise cx.unsupported(cx.op, f"asymmetric pads {pads}")
    return pads[:2]


def _spatial(cx, a: dict, x: Tensor, kernel) -> tuple:
    if x.rank != 4 or len(kernel) != 2:
        raise cx.unsupported(cx.op, "only 2-D operations on NCHW inputs are supported")
    strides, dilations = list(a.get("strides", [1, 1])), list(a.get("dilations", [1, 1]))
    return strides, _pads(cx, a, x, kernel, strides, dilations), dilations


@handles("Conv")
def _conv(cx, node, ins, a):
    x, w = _tensor(cx, ins[0]), cx.const(1, node, "weight")
    groups = int(a.get("group", 1))
    kernel = list(a.get("kernel_shape", w.shape[2:]))
    strides, pads, dilations = _spatial(cx, a, x, kernel)

    def conv(w):
        return nn.utils.skip_init(nn.Conv2d, w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), stride=strides,
                                  padding=pads, dilation=dilations, groups=groups, bias=False)
    key = cx.layer(node, 1, _filled(conv), transposed=False)
    bias = cx.bias(key, node, 2) if len(node.input) > 2 and node.input[2] else None
    return lower.conv2d(cx, x, key, bias, strides, pads, dilations, groups)


def _filled(make):
    def module(w):
        m = make(w)
        with torch.no_grad():
            m.weight.copy_(torch.from_numpy(np.array(w, dtype=np.float32)))
        return m
    return module


def _linear_layer(w):
    return nn.utils.skip_init(nn.Linear, w.shape[1], w.shape[0], bias=False)


@handles("Gemm")
def _gemm(cx, node, ins, a):
    x = _tensor(cx, ins[0])
    if a.get("transA", 0) or float(a.get("alpha", 1.0)) != 1.0 or float(a.get("beta", 1.0)) != 1.0:
        raise cx.unsupported("Gemm", "transA, alpha or beta other than the defaults")
    if cx.const(1, node, "weight").ndim != 2 or x.rank != 2:
        raise cx.unsupported("Gemm", "operands of rank other than 2")
    key = cx.layer(node, 1, _filled(_linear_layer), transposed=not a.get("transB", 0))
    bias = cx.bias(key, node, 2) if len(node.input) > 2 and node.input[2] else None
    return lower.linear(cx, x, key, bias)


@handles("MatMul")
def _matmul(cx, node, ins, a):
    x, w = ins
    if isinstance(x, Tensor) and isinstance(w, Tensor):
        return lower.matmul(cx, x, w)
    if isinstance(x, Tensor) and isinstance(w, np.ndarray) and w.ndim == 2:
        return lower.linear(cx, x, cx.layer(node, 1, _filled(_linear_layer), transposed=True), None)
    raise cx.unsupported("MatMul", "only x @ W with a 2-D constant W, or two computed tensors")


@handles("BatchNormalization")
def _batchnorm(cx, node, ins, a):
    if a.get("training_mode", 0):
        raise cx.unsupported("BatchNormalization", "training_mode=1 uses batch statistics")
    k = cx.holder(node, {"weight": 1, "bias": 2, "running_mean": 3, "running_var": 4})
    return lower.batch_norm(cx, _tensor(cx, ins[0]), k["weight"], k["bias"], k["running_mean"], k["running_var"],
                            a.get("epsilon", 1e-5))


@handles("LayerNormalization")
def _layernorm(cx, node, ins, a):
    x = _tensor(cx, ins[0])
    if cx.b.dim(a.get("axis", -1), x, cx.where) != x.rank - 1:
        raise cx.unsupported("LayerNormalization", "normalising other than the last dimension")
    k = cx.holder(node, {"weight": 1, **({"bias": 2} if len(node.input) > 2 and node.input[2] else {})})
    return lower.layer_norm(cx, x, [x.shape[-1]], k["weight"], k.get("bias"), a.get("epsilon", 1e-5))


def _unary(op, attrs=lambda cx, node, ins, a: {}):
    def h(cx, node, ins, a):
        return cx.add(op, [_tensor(cx, ins[0])], attrs(cx, node, ins, a))
    return h


def _clip_attrs(cx, node, ins, a):
    if cx.m.opset < 11:
        return {"min": a.get("min"), "max": a.get("max")}
    bounds = []
    for v in (list(ins[1:3]) + [None, None])[:2]:
        if v is not None and not (isinstance(v, np.ndarray) and v.dtype != object):
            raise cx.unsupported("Clip", "bounds that are not constants")
        bounds.append(None if v is None else float(v.reshape(-1)[0]))
    return {"min": bounds[0], "max": bounds[1]}


def _hardsigmoid_attrs(cx, node, ins, a):
    if not (math.isclose(a.get("alpha", 0.2), 1 / 6, rel_tol=1e-5) and math.isclose(a.get("beta", 0.5), 0.5)):
        raise cx.unsupported("HardSigmoid", "alpha and beta other than torch's (1/6, 1/2)")
    return {}


handles("Relu")(_unary("relu"))
handles("Sigmoid")(_unary("sigmoid"))
handles("Tanh")(_unary("tanh"))
handles("HardSwish")(_unary("hardswish"))
handles("HardSigmoid")(_unary("hardsigmoid", _hardsigmoid_attrs))
handles("Clip")(_unary("clamp", _clip_attrs))
handles("Gelu")(_unary("gelu", lambda cx, node, ins, a: {"approximate": a.get("approximate", "none")}))


@handles("Identity", "Dropout")
def _identity(cx, node, ins, a):
    return ins[0]


@handles("Softmax")
def _softmax(cx, node, ins, a):
    x = _tensor(cx, ins[0])
    axis = a.get("axis", -1 if cx.m.opset >= 13 else 1)
    if cx.m.opset < 13 and cx.b.dim(axis, x, cx.where) != x.rank - 1:
        raise cx.unsupported("Softmax", "opset < 13 over other than the last dimension")
    return lower.softmax(cx, x, axis)


# pools


@handles("MaxPool")
def _maxpool(cx, node, ins, a):
    x = _tensor(cx, ins[0])
    if a.get("storage_order", 0):
        raise cx.unsupported("MaxPool", "storage_order=1")
    kernel = list(a["kernel_shape"])
    strides, pads, dilations = _spatial(cx, a, x, kernel)
    return lower.max_pool2d(cx, x, kernel, strides, pads, dilations, bool(a.get("ceil_mode", 0)))


@handles("AveragePool")
def _avgpool(cx, node, ins, a):
    x = _tensor(cx, ins[0])
    kernel = list(a["kernel_shape"])
    strides, pads, dilations = _spatial(cx, a, x, kernel)
    if dilations != [1, 1]:
        raise cx.unsupported("AveragePool", "dilations")
    return lower.avg_pool2d(cx, x, kernel, strides, pads, bool(a.get("ceil_mode", 0)),
                            bool(a.get("count_include_pad", 0)))


@handles("GlobalAveragePool")
def _global_avgpool(cx, node, ins, a):
    return lower.adaptive_avg_pool2d(cx, _tensor(cx, ins[0]), 1)


@handles("ReduceMean")
def _reduce_mean(cx, node, ins, a):
    x = _tensor(cx, ins[0])
    axes = a.get("axes") if cx.m.opset < 18 else (None if len(ins) < 2 or ins[1] is None else cx.const(1, node, "axes"))
    if axes is None or len(axes) == 0:
        raise cx.unsupported("ReduceMean", "over every dimension, the batch included")
    return lower.mean(cx, x, [int(d) for d in axes], bool(a.get("keepdims", 1)))


# elementwise


def _operand(cx, node, i, v):
    """A Tensor as is; a one-value constant as a number; any other constant as a stored tensor's key."""
    if isinstance(v, Tensor):
        return v
    if isinstance(v, np.ndarray) and v.dtype != object:
        return float(v.reshape(-1)[0]) if v.size == 1 else cx.buffer(node, i)
    raise cx.unsupported(node.op_type, "an operand computed from shapes")


def _producer(cx, t: Tensor):
    return next((n for n in reversed(cx.b.nodes) if n["name"] == t.name), None)


def _arith(op):
    def h(cx, node, ins, a):
        x, y = (_operand(cx, node, i, v) for i, v in enumerate(ins))
        if op == "mul" and isinstance(x, Tensor) and isinstance(y, Tensor):
            for p, q in ((x, y), (y, x)):  # x * sigmoid(x) and x * hardsigmoid(x), as torch.onnx writes them
                gate = _producer(cx, q)
                if gate and gate["op"] in ("sigmoid", "hardsigmoid") and gate["inputs"] == [p.name]:
                    return cx.add("silu" if gate["op"] == "sigmoid" else "hardswish", [p], {})
        if op == "add" and isinstance(x, Tensor) and isinstance(y, str):
            fused = _bias_into_linear(cx, node, x)
            if fused is not None:
                return fused
        if not isinstance(x, Tensor) and not isinstance(y, Tensor):  # pragma: no cover - folded before
            raise cx.unsupported(node.op_type, "arithmetic between constants")
        if not isinstance(x, Tensor) and not isinstance(x, str):
            return lower.binary(cx, op, y, x, reverse=True)
        return lower.binary(cx, op, x, y)
    return h


def _bias_into_linear(cx, node, x: Tensor):
    """MatMul followed by Add of a 1-D constant (a Linear as torch.onnx writes it): the bias of the linear."""
    lin = _producer(cx, x)
    if lin is None or lin["op"] != "linear" or lin["attrs"]["bias"] is not None or cx.uses.get(node.input[0]) != 1:
        return None
    if cx.const(1, node, "bias").ndim != 1:
        return None
    lin["attrs"]["bias"] = cx.bias(lin["attrs"]["weight"], node, 1)
    return x


for _op_type, _op in (("Add", "add"), ("Sub", "sub"), ("Mul", "mul"), ("Div", "div")):
    handles(_op_type)(_arith(_op))


@handles("Concat")
def _concat(cx, node, ins, a):
    if all(isinstance(v, Tensor) for v in ins):
        return lower.concat(cx, list(ins), int(a["axis"]))
    if all(isinstance(v, np.ndarray) for v in ins):  # a shape vector with the batch in it
        return np.concatenate([np.asarray(v, dtype=object).reshape(-1) for v in ins])
    raise cx.unsupported("Concat", "computed tensors together with constants")


# shapes


def _shape_vector(v) -> np.ndarray:
    return np.asarray(v, dtype=object)


@handles("Shape")
def _shape(cx, node, ins, a):
    x = _tensor(cx, ins[0])
    shape = [BATCH, *x.shape]
    return _shape_vector(shape[slice(a.get("start", 0), a.get("end"))])


@handles("Gather")
def _gather(cx, node, ins, a):
    data, idx = ins
    if not isinstance(data, np.ndarray) or not isinstance(idx, np.ndarray) or a.get("axis", 0) != 0:
        raise cx.unsupported("Gather", "gathering from a computed tensor")
    return _shape_vector(np.take(data, idx.astype(np.int64), axis=0))


@handles("Unsqueeze", "Squeeze")
def _squeeze(cx, node, ins, a):
    x = ins[0]
    axes = a.get("axes") if cx.m.opset < 13 else (None if len(ins) < 2 or ins[1] is None else cx.const(1, node, "axes"))
    if isinstance(x, np.ndarray):  # a shape vector
        if node.op_type == "Unsqueeze":
            return np.expand_dims(x, tuple(int(d) for d in axes))
        return np.squeeze(x, None if axes is None else tuple(int(d) for d in axes))
    x = _tensor(cx, x)
    shape = [BATCH, *x.shape]
    if node.op_type == "Squeeze":
        drop = {cx.b.dim(int(d), x, cx.where) for d in axes} if axes is not None else \
            {d for d in range(1, x.rank) if shape[d] == 1}
        return lower.reshape(cx, x, [s for d, s in enumerate(shape) if d not in drop], BATCH)
    rank = x.rank + len(axes)
    for d in sorted(int(d) % rank for d in axes):
        if d == 0:
            raise cx.unsupported("Unsqueeze", "a new dimension before the batch")
        shape.insert(d, 1)
    return lower.reshape(cx, x, shape, BATCH)


@handles("Cast")
def _cast(cx, node, ins, a):
    from onnx import TensorProto

    if isinstance(ins[0], Tensor) and a.get("to") != TensorProto.FLOAT:
        raise cx.unsupported("Cast", "to a type other than float32")
    return ins[0]


@handles("Flatten")
def _flatten(cx, node, ins, a):
    return lower.flatten(cx, _tensor(cx, ins[0]), int(a.get("axis", 1)), -1)


@handles("Reshape")
def _reshape(cx, node, ins, a):
    x, target = _tensor(cx, ins[0]), ins[1]
    if not isinstance(target, np.ndarray):
        raise cx.unsupported("Reshape", "to a shape computed from tensor values")
    shape = [BATCH, *x.shape]
    sizes = []
    for i, s in enumerate(target.reshape(-1).tolist()):
        if s is BATCH or (i == 0 and s == cx.m.fixed_batch and s != -1):
            sizes.append(BATCH)  # a model exported for a fixed batch size reshapes to that literal size
        elif s == 0 and not a.get("allowzero", 0):
            sizes.append(shape[i] if i < len(shape) else 0)
        else:
            sizes.append(int(s))
    return lower.reshape(cx, x, sizes, BATCH)


@handles("Transpose")
def _transpose(cx, node, ins, a):
    x = _tensor(cx, ins[0])
    return lower.permute(cx, x, list(a.get("perm", range(x.rank - 1, -1, -1))))


@handles("Split")
def _split(cx, node, ins, a):
    x = _tensor(cx, ins[0])
    axis = int(a.get("axis", 0))
    if len(ins) > 1 and ins[1] is not None:
        sizes = [int(s) for s in cx.const(1, node, "split")]
    elif "split" in a:
        sizes = [int(s) for s in a["split"]]
    else:
        n, k = x.shape[cx.b.dim(axis, x, cx.where) - 1], len(node.output)
        sizes = [-(-n // k)] * (k - 1) + [n - (k - 1) * -(-n // k)]
    return lower.split(cx, x, sizes, axis)


@handles("Slice")
def _slice(cx, node, ins, a):
    x = ins[0]
    starts, ends = (cx.const(i, node, what) for i, what in ((1, "starts"), (2, "ends")))
    axes = cx.const(3, node, "axes") if len(ins) > 3 and ins[3] is not None else np.arange(len(starts))
    steps = cx.const(4, node, "steps") if len(ins) > 4 and ins[4] is not None else np.ones(len(starts), np.int64)
    if isinstance(x, np.ndarray):  # a shape vector
        return x[slice(int(starts[0]), int(ends[0]), int(steps[0]))]
    x = _tensor(cx, x)
    idx = [slice(None)] * x.rank
    for s, e, d, st in zip(starts.tolist(), ends.tolist(), axes.tolist(), steps.tolist()):
        idx[cx.b.dim(int(d), x, cx.where)] = slice(int(s), int(e), int(st))
    return lower.index(cx, x, tuple(idx))
