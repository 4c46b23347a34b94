"""The TorchScript front: a scripted or traced module captured from its inlined graph.

The graph is walked like an interpreter that knows only constants, module attributes and the
handler table ``ATEN`` (keyed by node kind): ``prim::If`` branches are taken when their condition
is a constant (``self.training`` is False in eval mode, ``bias is None`` ...), so the training-only
code of BatchNorm and Dropout disappears. A condition that depends on tensor values, loops, or any
other kind raise UnsupportedOpError. Ops are lowered through deepcomp.capture.lower, as the fx
front's are.
"""

from __future__ import annotations

import operator
from typing import Callable

import torch
from torch import nn

from deepcomp.capture import lower
from deepcomp.capture.builder import GraphBuilder, Handlers, Tensor
from deepcomp.errors import UnsupportedOpError


class Sym:
    """A value of the TorchScript graph as the capture sees it."""

    __slots__ = ("kind", "value")

    def __init__(self, kind: str, value):
        self.kind, self.value = kind, value  # const | module | param | param_t | tensor | batch | list

    def __repr__(self):
        return f"{self.kind}:{self.value!r}"


class _Batch:
    def __repr__(self):
        return "N"


BATCH = _Batch()
EMITS: set[str] = set()
ATEN = Handlers(EMITS)  # node kind -> handler(capture, node, inputs) -> value (or None)
handles = ATEN.register


class ScriptCapture:
    def __init__(self, model, input_shape, unsupported: Callable):
        self.model = model
        self.state_keys = set(model.state_dict().keys())
        self.graph = model.inlined_graph
        inputs = list(self.graph.inputs())
        if len(inputs) != 2:
            raise UnsupportedOpError(
                f"the TorchScript model's forward takes {len(inputs) - 1} inputs; deepcomp captures models with "
                "exactly one input tensor")
        self._unsupported = unsupported
        self.where = ""
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        self.b = GraphBuilder("x", input_shape, shapes, unsupported)
        self.env: dict = {inputs[0]: Sym("module", ""), inputs[1]: Sym("tensor", self.b.input)}

    def unsupported(self, op: str, why: str = "") -> UnsupportedOpError:
        return self._unsupported(op, self.where, why)

    def add(self, op, inputs, attrs, base=None) -> Tensor:
        return self.b.add(op, inputs, attrs, self.where, base or self.scope)

    def sym(self, v) -> Sym:
        if v not in self.env:
            raise UnsupportedOpError(f"TorchScript value %{v.debugName()} is not understood by deepcomp")
        return self.env[v]

    def const(self, v):
        s = self.sym(v)
        if s.kind == "const":
            return s.value
        if s.kind == "batch":
            return BATCH
        if s.kind == "list" and all(x.kind in ("const", "batch") for x in s.value):
            return [BATCH if x.kind == "batch" else x.value for x in s.value]
        raise self.unsupported(self.kind, f"a non-constant {s.kind} argument")

    def value(self, v):
        """A tensor argument as a Tensor (a parameter stays its key), anything else as a constant."""
        s = self.sym(v)
        if s.kind == "tensor":
            return s.value
        if s.kind == "param":
            from deepcomp.capture.fx import Param

            return Param(s.value)
        return self.const(v)

    def tensor(self, v, like=None) -> Tensor:
        if isinstance(v, torch.Tensor):  # a prim::Constant: torch.jit.trace froze a tensor into the graph
            raise self.unsupported(self.kind, "a tensor constant of the trace: a tensor attribute that is not a "
                                   "registered buffer, or one the forward creates; register it as a buffer")
        if not isinstance(v, (Tensor, str)):
            v = self.value(v)
        if isinstance(v, Tensor):
            return v
        if isinstance(v, str):  # a parameter key
            rank = like.rank if like is not None else len(self.b.tensor_shape(v, self.where))
            return self.b.constant(v, rank, self.where)
        raise self.unsupported(self.kind, f"expected a tensor computed by the model, got {v!r}")

    def param(self, v, optional=False):
        s = self.sym(v)
        if optional and s.kind == "const" and s.value is None:
            return None
        if s.kind != "param":
            raise self.unsupported(self.kind, "weights must be parameters or buffers of the module")
        return s.value

    def run(self) -> dict:
        self.block(self.graph.nodes())
        outs = list(self.graph.outputs())
        if len(outs) != 1 or self.sym(outs[0]).kind != "tensor":
            raise UnsupportedOpError("the TorchScript model returns several values (or a container); deepcomp "
                                     "captures models that return one tensor")
        out = self.sym(outs[0]).value
        return self.b.result(out), out.shape

    def block(self, nodes):
        for n in nodes:
            self.kind = n.kind()
            scope = n.scopeName().replace("__module.", "").split("/")[-1] if n.scopeName() else ""
            self.scope = scope or None
            self.where = scope or n.kind()
            handler = ATEN.get(self.kind)
            if handler is None:
                raise self.unsupported(self.kind)
            out = handler(self, n, list(n.inputs()))
            if out is not None:
                self.set(n, out)

    def set(self, n, out):
        if isinstance(out, Sym):
            self.env[n.output()] = out
        elif isinstance(out, Tensor):
            self.env[n.output()] = Sym("tensor", out)
        elif isinstance(out, tuple) and all(isinstance(t, Tensor) for t in out):
            self.env[n.output()] = Sym("list", [Sym("tensor", t) for t in out])
        elif out is BATCH:
            self.env[n.output()] = Sym("batch", None)
        else:
            self.env[n.output()] = Sym("const", out)


def capture_script(model, input_shape: tuple, unsupported: Callable) -> dict:
    was_training = model.training
    model.eval()
    try:
        return ScriptCapture(model, input_shape, unsupported).run()
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------------------------------
# structure: constants, attributes, lists, branches, shape arithmetic

@handles("prim::Constant")
def _constant(cx, n, ins):
    return Sym("const", n.output().toIValue())


@handles("prim::GetAttr")
def _get_attr(cx, n, ins):
    base = cx.sym(ins[0])
    if base.kind != "module":
        raise cx.unsupported(cx.kind, "attribute of a non-module")
    obj = cx.model
    for part in filter(None, base.value.split(".")):
        obj = getattr(obj, part)
    value = getattr(obj, n.s("name"))
    path = f"{base.value}.{n.s('name')}" if base.value else n.s("name")
    if isinstance(value, (torch.jit.ScriptModule, nn.Module)):
        return Sym("module", path)
    if isinstance(value, torch.Tensor):
        if path not in cx.state_keys:
            raise cx._unsupported("tensor attribute", path, "not a registered parameter or buffer")
        return Sym("param", path)
    return Sym("const", value)


@handles("prim::ListConstruct", "prim::TupleConstruct")
def _list(cx, n, ins):
    return Sym("list", [cx.sym(v) for v in ins])


@handles("prim::ListUnpack", "prim::TupleUnpack")
def _unpack(cx, n, ins):
    s = cx.sym(ins[0])
    items = s.value if s.kind == "list" else [Sym("const", v) for v in s.value] if s.kind == "const" else None
    if items is None or len(items) != len(list(n.outputs())):
        raise cx.unsupported(cx.kind)
    for out, item in zip(n.outputs(), items):
        cx.env[out] = item


@handles("prim::If")
def _if(cx, n, ins):
    cond = cx.sym(ins[0])
    if cond.kind != "const":
        raise cx.unsupported("if", "a condition that depends on tensor values")
    blocks = list(n.blocks())
    chosen = blocks[0] if cond.value else blocks[1]
    kind, where = cx.kind, cx.where
    cx.block(chosen.nodes())
    cx.kind, cx.where = kind, where
    for out, ret in zip(n.outputs(), chosen.returnNode().inputs()):
        cx.env[out] = cx.sym(ret)


@handles("prim::RaiseException")
def _raise(cx, n, ins):
    raise UnsupportedOpError(f"the TorchScript model raises an exception at '{cx.where}' for this input shape")


@handles("prim::NumToTensor", "aten::Int", "aten::ScalarImplicit", "aten::Float")
def _passthrough(cx, n, ins):
    return cx.sym(ins[0])


@handles("aten::warn")
def _warn(cx, n, ins):
    return None


_CONST_OPS = {"aten::eq": operator.eq, "aten::ne": operator.ne, "aten::lt": operator.lt, "aten::le": operator.le,
              "aten::gt": operator.gt, "aten::ge": operator.ge, "aten::__and__": lambda a, c: a and c,
              "aten::__or__": lambda a, c: a or c, "aten::__is__": operator.is_, "aten::__isnot__": operator.is_not,
              "aten::floordiv": operator.floordiv, "aten::floor_divide": operator.floordiv,
              "aten::remainder": operator.mod, "aten::__not__": operator.not_, "aten::neg": operator.neg,
              "aten::__contains__": operator.contains}


def _const_op(fn):
    def h(cx, n, ins):
        syms = [cx.sym(v) for v in ins]
        if all(s.kind == "const" or (s.kind == "list" and all(x.kind == "const" for x in s.value)) for s in syms):
            return Sym("const", fn(*(cx.const(v) for v in ins)))
        if cx.kind in ("aten::__is__", "aten::__isnot__"):  # a tensor or module is never None
            return Sym("const", cx.kind == "aten::__isnot__")
        raise cx.unsupported(cx.kind, "a computation on tensor-dependent values")
    return h


for _k, _f in _CONST_OPS.items():
    handles(_k)(_const_op(_f))


@handles("aten::len")
def _len(cx, n, ins):
    return len(cx.const(ins[0]))


@handles("aten::dim")
def _dim(cx, n, ins):
    return cx.tensor(ins[0]).rank


@handles("aten::size")
def _size(cx, n, ins):
    shape = [BATCH, *cx.tensor(ins[0]).shape]
    return Sym("list", [Sym("batch", None) if s is BATCH else Sym("const", s) for s in shape]) if len(ins) == 1 \
        else shape[int(cx.const(ins[1]))]


@handles("aten::__getitem__")
def _getitem(cx, n, ins):
    s = cx.sym(ins[0])
    i = cx.const(ins[1])
    return s.value[i] if s.kind == "list" else Sym("const", cx.const(ins[0])[i])


# --------------------------------------------------------------------------------------------------
# ops

@handles("aten::dropout", "aten::dropout_", "aten::feature_dropout", "aten::feature_dropout_", "aten::alpha_dropout",
         "aten::alpha_dropout_", "aten::feature_alpha_dropout", "aten::contiguous", "aten::detach", "aten::clone")
def _identity(cx, n, ins):
    return cx.tensor(ins[0])


@handles("aten::_convolution", "aten::conv2d", "aten::_convolution_mode", emits=("conv2d",))
def _conv(cx, n, ins):
    stride, padding, dilation = (cx.const(v) for v in ins[3:6])
    groups = cx.const(ins[8] if cx.kind == "aten::_convolution" else ins[6])
    if cx.kind == "aten::_convolution" and cx.const(ins[6]):
        raise cx.unsupported("conv_transpose2d")
    if len(stride) != 2:
        raise cx.unsupported("conv", "only 2-D convolutions on NCHW inputs are supported")
    return lower.conv2d(cx, cx.tensor(ins[0]), cx.param(ins[1]), cx.param(ins[2], optional=True), stride, padding,
                        dilation, groups)


@handles("aten::linear", emits=("linear",))
def _linear(cx, n, ins):
    return lower.linear(cx, cx.tensor(ins[0]), cx.param(ins[1]), cx.param(ins[2], optional=True))


@handles("aten::t")
def _t(cx, n, ins):
    return Sym("param_t", cx.param(ins[0]))


@handles("aten::addmm", emits=("linear",))
def _addmm(cx, n, ins):
    bias, wt = cx.sym(ins[0]), cx.sym(ins[2])
    if bias.kind != "param" or wt.kind != "param_t" or cx.const(ins[3]) != 1 or cx.const(ins[4]) != 1:
        raise cx.unsupported("addmm", "only bias + x @ weight.t() is supported")
    return lower.linear(cx, cx.tensor(ins[1]), wt.value, bias.value)


@handles("aten::batch_norm", emits=("batchnorm2d",))
def _batch_norm(cx, n, ins):
    mean, var = cx.param(ins[3], optional=True), cx.param(ins[4], optional=True)
    if cx.const(ins[5]) or mean is None or var is None:
        raise cx.unsupported("batch_norm", "batch statistics (training mode or no running stats)")
    return lower.batch_norm(cx, cx.tensor(ins[0]), cx.param(ins[1], optional=True), cx.param(ins[2], optional=True),
                            mean, var, cx.const(ins[7]))


@handles("aten::layer_norm", emits=("layernorm",))
def _layer_norm(cx, n, ins):
    return lower.layer_norm(cx, cx.tensor(ins[0]), cx.const(ins[1]), cx.param(ins[2], optional=True),
                            cx.param(ins[3], optional=True), cx.const(ins[4]))


def _activation(op, attrs=lambda cx, ins: {}):
    def h(cx, n, ins):
        return cx.add(op, [cx.tensor(ins[0])], attrs(cx, ins))
    return h


handles("aten::relu", "aten::relu_", emits=("relu",))(_activation("relu"))
handles("aten::relu6", "aten::relu6_", emits=("clamp",))(_activation("clamp", lambda cx, ins: {"min": 0.0, "max": 6.0}))
handles("aten::hardtanh", "aten::hardtanh_", "aten::clamp", "aten::clamp_", emits=("clamp",))(_activation(
    "clamp", lambda cx, ins: {k: None if v is None else float(v) for k, v in zip(("min", "max"),
                                                                                 (cx.const(i) for i in ins[1:3]))}))
for _name in ("silu", "sigmoid", "tanh", "hardswish", "hardsigmoid"):
    handles(f"aten::{_name}", f"aten::{_name}_", emits=(_name,))(_activation(_name))
handles("aten::gelu", emits=("gelu",))(_activation("gelu", lambda cx, ins: {"approximate": cx.const(ins[1])}))


def _binary(op):
    def h(cx, n, ins):
        a, b = cx.value(ins[0]), cx.value(ins[1])
        alpha = cx.const(ins[2]) if len(ins) > 2 and op in ("add", "sub") else 1
        if not isinstance(a, (Tensor, str)) and not isinstance(b, (Tensor, str)):
            return {"add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.truediv}[op](
                a, b * alpha)
        return lower.binary(cx, op, a, b, alpha)
    return h


for _op in ("add", "sub", "mul", "div"):
    handles(f"aten::{_op}", f"aten::{_op}_", emits=(_op,))(_binary(_op))


@handles("aten::cat", emits=("concat",))
def _cat(cx, n, ins):
    items = cx.sym(ins[0])
    if items.kind != "list" or not all(t.kind == "tensor" for t in items.value):
        raise cx.unsupported("cat", "the tensors must be a list")
    return lower.concat(cx, [t.value for t in items.value], int(cx.const(ins[1])))


@handles("aten::max_pool2d", emits=("maxpool2d",))
def _max_pool(cx, n, ins):
    kernel, stride, pad, dil, ceil = (cx.const(v) for v in ins[1:6])
    return lower.max_pool2d(cx, cx.tensor(ins[0]), kernel, stride or None, pad, dil, ceil)


@handles("aten::avg_pool2d", emits=("avgpool2d",))
def _avg_pool(cx, n, ins):
    kernel, stride, pad, ceil, cip, div = (cx.const(v) for v in ins[1:7])
    if div is not None:
        raise cx.unsupported("avg_pool2d", "divisor_override")
    return lower.avg_pool2d(cx, cx.tensor(ins[0]), kernel, stride or None, pad, ceil, cip)


@handles("aten::adaptive_avg_pool2d", emits=("adaptive_avgpool2d",))
def _adaptive(cx, n, ins):
    return lower.adaptive_avg_pool2d(cx, cx.tensor(ins[0]), cx.const(ins[1]))


@handles("aten::flatten", emits=("flatten", "reshape"))
def _flatten(cx, n, ins):
    return lower.flatten(cx, cx.tensor(ins[0]), int(cx.const(ins[1])), int(cx.const(ins[2])))


@handles("aten::view", "aten::reshape", emits=("reshape", "flatten"))
def _reshape(cx, n, ins):
    return lower.reshape(cx, cx.tensor(ins[0]), list(cx.const(ins[1])), BATCH)


@handles("aten::permute", emits=("permute",))
def _permute(cx, n, ins):
    return lower.permute(cx, cx.tensor(ins[0]), list(cx.const(ins[1])))


@handles("aten::transpose", emits=("permute",))
def _transpose(cx, n, ins):
    return lower.transpose(cx, cx.tensor(ins[0]), cx.const(ins[1]), cx.const(ins[2]))


@handles("aten::mean", emits=("mean",))
def _mean(cx, n, ins):
    if len(ins) < 3:
        raise cx.unsupported("mean", "over every dimension, the batch included")
    return lower.mean(cx, cx.tensor(ins[0]), cx.const(ins[1]), cx.const(ins[2]))


@handles("aten::chunk", emits=("slice",))
def _chunk(cx, n, ins):
    return lower.chunk(cx, cx.tensor(ins[0]), cx.const(ins[1]), cx.const(ins[2]))


@handles("aten::split", "aten::split_with_sizes", emits=("slice",))
def _split(cx, n, ins):
    return lower.split(cx, cx.tensor(ins[0]), cx.const(ins[1]), cx.const(ins[2]))


@handles("aten::matmul", "aten::bmm", emits=("matmul",))
def _matmul(cx, n, ins):
    return lower.matmul(cx, cx.tensor(ins[0]), cx.tensor(ins[1]))


@handles("aten::softmax", emits=("softmax",))
def _softmax(cx, n, ins):
    return lower.softmax(cx, cx.tensor(ins[0]), cx.const(ins[1]))


def supported() -> str:
    return ", ".join(sorted(k.split("::")[1] for k in ATEN if k.startswith("aten::") and not k.endswith("_")))
