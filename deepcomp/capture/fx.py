"""The torch.fx front: a model traced with ``torch.fx.symbolic_trace`` (eval mode), interpreted node
by node through three handler tables, keyed by module type (``MODULES``), function (``FUNCTIONS``)
and tensor method name (``METHODS``). Every handler gets the values of the node's arguments
(:class:`~deepcomp.capture.builder.Tensor` for tensors the model computed, :class:`Param` for its
parameters and buffers, plain Python values for the rest; the batch size is :data:`BATCH`) and
returns the node's value. Arithmetic on plain values (shape computations) is evaluated as Python.
"""

from __future__ import annotations

import math
import operator
from typing import Any, Callable, NamedTuple

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from deepcomp.capture import lower, windows
from deepcomp.capture.builder import GraphBuilder, Handlers, Tensor
from deepcomp.errors import UnsupportedOpError


class _Batch:
    """The batch size: known to be the same everywhere, never a number the graph may compute with."""

    def __repr__(self):
        return "N"


BATCH = _Batch()


class Param(str):
    """A parameter or buffer of the model, by its state_dict key."""


class Folded(NamedTuple):
    """A value computed from parameters and buffers alone, without the batch: the stored tensor
    ``tensor`` (its rows picked by the stored integer tensor ``index`` when set: a relative position
    bias gathered from its table) of shape ``base``, then ``steps`` ("reshape", shape) and
    ("permute", dims) to ``shape``. It becomes graph nodes (a constant, then the same steps) where it
    meets a tensor of the model (Capture.tensor)."""

    tensor: str
    index: str | None
    base: tuple
    steps: tuple
    shape: tuple

    def reshape(self, sizes) -> "Folded":
        sizes = list(sizes)
        if sizes.count(-1) == 1:
            known = math.prod(s for s in sizes if s != -1)
            sizes[sizes.index(-1)] = math.prod(self.shape) // known if known else 0
        if math.prod(sizes) != math.prod(self.shape) or any(s < 1 for s in sizes):
            raise ValueError(f"cannot reshape {list(self.shape)} to {sizes}")
        return self._replace(steps=(*self.steps, ("reshape", tuple(sizes))), shape=tuple(sizes))

    def permute(self, dims) -> "Folded":
        dims = [d % len(self.shape) for d in dims]
        if sorted(dims) != list(range(len(self.shape))):
            raise ValueError(f"dims {dims} do not permute a rank-{len(self.shape)} value")
        return self._replace(steps=(*self.steps, ("permute", tuple(dims))),
                             shape=tuple(self.shape[d] for d in dims))


EMITS: set[str] = {"constant"}  # ops of the runtime's table handlers here emit (tests/test_ops.py);
# "constant": any parameter used as an operand (Capture.tensor)
MODULES = Handlers(EMITS)    # module type -> handler(capture, module, "path.", *args, **kwargs)
FUNCTIONS = Handlers(EMITS)  # function -> handler(capture, *args, **kwargs)
METHODS = Handlers(EMITS)    # tensor method name -> handler(capture, self, *args, **kwargs)


class Capture:
    """One model's capture: the builder, the fx node -> value environment, the module table."""

    def __init__(self, model: nn.Module, gm: fx.GraphModule, input_shape: tuple, unsupported: Callable):
        self.model = model
        self.modules = dict(gm.named_modules())
        self.params = dict(model.named_parameters()) | dict(model.named_buffers())
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise UnsupportedOpError(f"the model's forward takes {len(placeholders)} inputs; deepcomp captures "
                                     "models with exactly one input tensor")
        self.where = ""
        self._unsupported = unsupported
        self.b = GraphBuilder(placeholders[0].name, input_shape, shapes,
                              lambda op, where, why="": unsupported(op, where, why))
        self.gm = gm
        self.env: dict[fx.Node, Any] = {}

    def unsupported(self, op: str, why: str = "") -> UnsupportedOpError:
        return self._unsupported(op, self.where, why)

    # values

    batch = BATCH

    def tensor(self, v, like: Tensor | None = None) -> Tensor:
        """A Tensor from a handler argument; a Param or a Folded value becomes a constant (broadcast
        against ``like``)."""
        if isinstance(v, Tensor):
            return v
        if isinstance(v, Folded):
            return self.materialise(v, like.rank if like is not None else len(v.shape))
        if isinstance(v, Param):
            rank = like.rank if like is not None else len(self.b.tensor_shape(v, self.where))
            return self.b.constant(v, rank, self.where)
        raise self.unsupported("value", f"expected a tensor computed by the model, got {v!r}")

    def add(self, op: str, inputs: list, attrs: dict, base: str | None = None) -> Tensor:
        return self.b.add(op, inputs, attrs, self.where, base)

    def folded(self, v) -> Folded:
        """A Param as a Folded value (its shape, no steps yet), a Folded as itself."""
        if isinstance(v, Folded):
            return v
        shape = self.b.tensor_shape(v, self.where)
        return Folded(str(v), None, shape, (), shape)

    def materialise(self, f: Folded, like_rank: int) -> Tensor:
        """The graph nodes that compute ``f`` for every sample, right-aligned against rank ``like_rank``."""
        t = self.add("constant", [self.b.input], {"tensor": f.tensor, "shape": list(f.base),
                                                  **({"index": f.index} if f.index is not None else {})})
        for kind, arg in f.steps:
            t = lower.reshape(self, t, [BATCH, *arg], BATCH) if kind == "reshape" else \
                lower.permute(self, t, [0, *(d + 1 for d in arg)])
        shape = list(f.shape)
        if len(shape) == like_rank:
            if shape[0] != 1:
                raise self.unsupported("constant", f"a value of shape {shape} that varies over the batch")
            shape = shape[1:]
        elif len(shape) < like_rank:
            shape = [1] * (like_rank - 1 - len(shape)) + shape
        else:
            raise self.unsupported("constant", f"a value of rank {len(shape)} against rank {like_rank}")
        return lower.reshape(self, t, [BATCH, *shape], BATCH)

    # walking

    def run(self) -> dict:
        output = None
        for node in self.gm.graph.nodes:
            self.where = _where(node)
            if node.op == "placeholder":
                self.env[node] = self.b.input
            elif node.op == "output":
                output = self.env.get(node.args[0]) if isinstance(node.args[0], fx.Node) else None
                if not isinstance(output, Tensor):
                    raise UnsupportedOpError("the model returns several values (or a container); deepcomp "
                                             "captures models that return one tensor")
            else:
                self.env[node] = self.call(node)
        return self.b.result(output), output.shape

    def value(self, a):
        return fx.node.map_arg(a, lambda n: self.env[n])

    def call(self, node: fx.Node):
        args, kwargs = self.value(node.args), self.value(node.kwargs)
        if node.op == "get_attr":
            return self.get_attr(node.target)
        if node.op == "call_module":
            mod = self.modules[node.target]
            handler = next((MODULES[t] for t in type(mod).__mro__ if t in MODULES), None)
            if handler is None:
                raise self.unsupported(type(mod).__name__)
            return handler(self, mod, f"{node.target}.", *args, **kwargs)
        if node.op == "call_function":
            fn = node.target
            if _plain(args, kwargs) and getattr(fn, "__module__", None) in ("_operator", "operator", "builtins"):
                return _evaluate(self, fn, args, kwargs)  # shape arithmetic
            if fn in FUNCTIONS:
                return FUNCTIONS[fn](self, *args, **kwargs)
            if _plain(args, kwargs):
                return _evaluate(self, fn, args, kwargs)
            raise self.unsupported(getattr(fn, "__name__", str(fn)))
        if node.op == "call_method":
            if isinstance(args[0], (Tensor, Param, Folded)) and node.target in METHODS:
                return METHODS[node.target](self, *args, **kwargs)
            if _plain(args, kwargs):
                return _evaluate(self, getattr(type(args[0]), node.target), args, kwargs)
            raise self.unsupported(f"Tensor.{node.target}")
        raise self.unsupported(node.op)  # pragma: no cover - fx has no other opcodes

    def get_attr(self, target: str):
        if target in self.params:
            return Param(target)
        obj = self.model
        for part in target.split("."):
            obj = getattr(obj, part)
        if isinstance(obj, torch.Tensor):
            key = self._viewed(obj)
            if key is None:
                raise self.unsupported(f"get_attr {target}", "a tensor that is not a registered parameter or buffer")
            return self.folded(Param(key)).reshape(list(obj.shape))
        return obj

    def _viewed(self, t: torch.Tensor) -> str | None:
        """The parameter or buffer a tensor constant of the trace is a reshaped view of (tracing
        evaluates ``buffer.view(-1)`` once, as MaxViT's relative position index), if any."""
        for key, p in self.params.items():
            if p.numel() == t.numel() and p.dtype == t.dtype and p.is_contiguous() and t.is_contiguous() and \
                    p.untyped_storage().data_ptr() == t.untyped_storage().data_ptr() and \
                    p.storage_offset() == t.storage_offset():
                return key
        return None


def _plain(*values) -> bool:
    """No tensors among the arguments: a computation on Python values (shapes, sizes)."""
    for v in values:
        if isinstance(v, (Tensor, Param, Folded)):
            return False
        if isinstance(v, (tuple, list)) and not _plain(*v):
            return False
        if isinstance(v, dict) and not _plain(*v.values()):
            return False
    return True


def _evaluate(cx: Capture, fn, args, kwargs):
    try:
        return fn(*args, **kwargs)
    except TypeError:
        raise cx.unsupported(getattr(fn, "__name__", str(fn)), "arithmetic on the batch size") from None


def _where(node) -> str:
    stack = node.meta.get("nn_module_stack") if hasattr(node, "meta") else None
    if node.op == "call_module":
        return str(node.target)
    if stack:
        last = list(stack.values())[-1]
        path = last[0] if isinstance(last, tuple) else list(stack)[-1]
        return f"{path} ({node.name})" if path else node.name
    return node.name


# module types traced as one call (their handler in MODULES lowers the whole module: Swin v2's
# attention, whose position-bias MLP on stored coordinates the handler emits as it needs)
LEAVES: set[type] = set()


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, tuple(LEAVES)) or super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> fx.GraphModule:
    try:
        return fx.GraphModule(model, _Tracer().trace(model), type(model).__name__)
    except Exception as e:  # noqa: BLE001 - any tracing failure is the model's construction
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnsupportedOpError(
            f"cannot trace {type(model).__name__} with torch.fx: {first}. deepcomp captures models whose "
            "forward has no data-dependent control flow; rewrite the forward, or save it with "
            "torch.jit.trace and compress the TorchScript file"
        ) from None


# module types known to be unsupported, refused before the model is run or traced with a reason
# that says what to do (without it, tracing fails on their control flow, or the model fails on the
# zeros capture runs it on): type -> why; a subclass is refused with its base
_TRANSFORMER = ("torch's Transformer modules are not captured, their forward branches on the input: "
                "build the block from nn.MultiheadAttention(batch_first=True), nn.LayerNorm and nn.Linear, as "
                "torchvision's ViT does, and it is")
_TOKENS = "token ids are not captured: a .dcz graph takes one float tensor (compress the model after its embedding)"
REFUSED: dict[type, str] = {
    nn.RNNBase: "recurrent layers (LSTM, GRU, RNN) are not captured: a .dcz graph runs feed-forward models",
    nn.RNNCellBase: "recurrent cells are not captured: a .dcz graph runs feed-forward models",
    nn.Transformer: _TRANSFORMER,
    nn.TransformerEncoder: _TRANSFORMER,
    nn.TransformerEncoderLayer: _TRANSFORMER,
    nn.TransformerDecoder: _TRANSFORMER,
    nn.TransformerDecoderLayer: _TRANSFORMER,
    nn.Embedding: _TOKENS,
    nn.EmbeddingBag: _TOKENS,
}


def refuse(model: nn.Module, unsupported: Callable) -> None:
    """Raise ``unsupported`` for the first module of ``model`` whose type is in REFUSED."""
    for path, m in model.named_modules():
        why = next((REFUSED[t] for t in type(m).__mro__ if t in REFUSED), None)
        if why is not None:
            raise unsupported(type(m).__name__, path, why)


def capture_fx(model: nn.Module, input_shape: tuple, unsupported: Callable) -> dict:
    """The graph of ``model`` (already checked by :func:`refuse`, which ``capture`` runs first)."""
    return Capture(model, trace(model), input_shape, unsupported).run()


# --------------------------------------------------------------------------------------------------
# handlers: modules. Each takes (capture, module, "path.", *args, **kwargs).

def _bind(args, kwargs, names: list[str], defaults: dict) -> dict:
    out = dict(defaults)
    out.update(zip(names, args))
    out.update(kwargs)
    return out


@MODULES.register(nn.Conv2d, emits=("conv2d",))
def _conv(cx, m, p, x):
    if m.padding_mode != "zeros":
        raise cx.unsupported("Conv2d", f"padding_mode={m.padding_mode!r}; only 'zeros' is supported")
    return lower.conv2d(cx, cx.tensor(x), f"{p}weight", f"{p}bias" if m.bias is not None else None,
                        m.stride, m.padding, m.dilation, m.groups)


@MODULES.register(nn.Linear, emits=("linear",))
def _linear(cx, m, p, x):
    return lower.linear(cx, cx.tensor(x), f"{p}weight", f"{p}bias" if m.bias is not None else None)


@MODULES.register(nn.BatchNorm1d, nn.BatchNorm2d, emits=("batchnorm2d",))
def _bn(cx, m, p, x):
    if m.running_mean is None or m.running_var is None:
        raise cx.unsupported(type(m).__name__, "track_running_stats=False uses batch statistics at inference")
    return lower.batch_norm(cx, cx.tensor(x), f"{p}weight" if m.weight is not None else None,
                            f"{p}bias" if m.bias is not None else None, f"{p}running_mean", f"{p}running_var", m.eps)


@MODULES.register(nn.LayerNorm, emits=("layernorm",))
def _layer_norm(cx, m, p, x):
    return lower.layer_norm(cx, cx.tensor(x), m.normalized_shape, f"{p}weight" if m.weight is not None else None,
                            f"{p}bias" if getattr(m, "bias", None) is not None else None, m.eps)


# activation modules: type -> (op, attrs from the module)
_ACTIVATION_MODULES = {
    nn.ReLU: ("relu", lambda m: {}),
    nn.ReLU6: ("clamp", lambda m: {"min": 0.0, "max": 6.0}),
    nn.Hardtanh: ("clamp", lambda m: {"min": float(m.min_val), "max": float(m.max_val)}),
    nn.SiLU: ("silu", lambda m: {}),
    nn.Sigmoid: ("sigmoid", lambda m: {}),
    nn.Tanh: ("tanh", lambda m: {}),
    nn.Hardswish: ("hardswish", lambda m: {}),
    nn.Hardsigmoid: ("hardsigmoid", lambda m: {}),
    nn.GELU: ("gelu", lambda m: {"approximate": m.approximate}),
}


def _activation_module(op, attrs):
    def module(cx, m, p, x):
        return cx.add(op, [cx.tensor(x)], attrs(m))
    return module


for _type, (_op, _attrs) in _ACTIVATION_MODULES.items():
    MODULES.register(_type, emits=(_op,))(_activation_module(_op, _attrs))


@MODULES.register(nn.MaxPool2d, emits=("maxpool2d",))
def _maxpool(cx, m, p, x):
    if m.return_indices:
        raise cx.unsupported("MaxPool2d", "return_indices=True")
    return lower.max_pool2d(cx, cx.tensor(x), m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode)


@MODULES.register(nn.AvgPool2d, emits=("avgpool2d",))
def _avgpool(cx, m, p, x):
    if m.divisor_override is not None:
        raise cx.unsupported("AvgPool2d", "divisor_override")
    return lower.avg_pool2d(cx, cx.tensor(x), m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad)


@MODULES.register(nn.AdaptiveAvgPool2d, emits=("adaptive_avgpool2d",))
def _adaptive(cx, m, p, x):
    return lower.adaptive_avg_pool2d(cx, cx.tensor(x), m.output_size)


@MODULES.register(nn.Flatten, emits=("flatten", "reshape"))
def _flatten_module(cx, m, p, x):
    return lower.flatten(cx, cx.tensor(x), m.start_dim, m.end_dim)


@MODULES.register(nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
         nn.Identity)
def _identity_module(cx, m, p, x, *rest, **kw):
    return cx.tensor(x)


@MODULES.register(nn.Softmax, emits=("softmax",))
def _softmax_module(cx, m, p, x):
    return lower.softmax(cx, cx.tensor(x), m.dim)


@MODULES.register(nn.MultiheadAttention, emits=("matmul", "softmax", "permute", "reshape", "slice", "mul"))
def _mha(cx, m, p, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
         average_attn_weights=True, is_causal=False):
    """Self-attention as torchvision's ViT calls it: one packed input projection, no masks, the
    attention weights not used (returns (output, None))."""
    if not (query is key is value) or key_padding_mask is not None or attn_mask is not None or is_causal:
        raise cx.unsupported("MultiheadAttention", "only self-attention (query is key is value) without masks")
    if m.in_proj_weight is None or m.bias_k is not None or m.add_zero_attn:
        raise cx.unsupported("MultiheadAttention", "separate q/k/v projections, bias_k or add_zero_attn")
    x = cx.tensor(query)
    if not m.batch_first:
        raise cx.unsupported("MultiheadAttention", "batch_first=False (the batch must be dimension 0)")
    if x.rank != 3:
        raise cx.unsupported("MultiheadAttention", f"an input of rank {x.rank}; [N, tokens, features] expected")
    e, h = m.embed_dim, m.num_heads
    qkv = lower.linear(cx, x, f"{p}in_proj_weight", f"{p}in_proj_bias" if m.in_proj_bias is not None else None)
    q, k, v = (lower.permute(cx, lower.reshape(cx, t, [BATCH, x.shape[0], h, e // h], BATCH), [0, 2, 1, 3])
               for t in lower.split(cx, qkv, e, -1))
    out = lower.permute(cx, lower.attention(cx, q, k, v), [0, 2, 1, 3])
    out = lower.reshape(cx, out, [BATCH, x.shape[0], e], BATCH)
    out_proj = m.out_proj
    return lower.linear(cx, out, f"{p}out_proj.weight", f"{p}out_proj.bias" if out_proj.bias is not None else None), None


# --------------------------------------------------------------------------------------------------
# handlers: functions and methods. Each takes (capture, *args, **kwargs) as the call had them.

def _fn(*fns, emits: tuple = (), method: tuple = ()):
    """Register one handler for functions and tensor methods of the same signature."""
    def register(h):
        FUNCTIONS.register(*fns, emits=emits)(h)
        METHODS.register(*method, emits=emits)(h)
        return h
    return register


def _unary(op, names=(), defaults=None, attrs=lambda p: {}):
    """An activation function: its arguments after the input bound by ``names``, then ``attrs``."""
    def h(cx, x, *args, **kwargs):
        p = _bind(args, kwargs, list(names), dict(defaults or {}))
        return cx.add(op, [cx.tensor(x)], attrs(p))
    return h


_fn(F.relu, F.relu_, torch.relu, torch.relu_, method=("relu", "relu_"), emits=("relu",))(_unary("relu", ["inplace"]))
_fn(F.relu6, emits=("clamp",))(_unary("clamp", ["inplace"], attrs=lambda p: {"min": 0.0, "max": 6.0}))
_fn(F.hardtanh, F.hardtanh_, emits=("clamp",))(_unary(
    "clamp", ["min_val", "max_val", "inplace"], {"min_val": -1.0, "max_val": 1.0},
    lambda p: {"min": float(p["min_val"]), "max": float(p["max_val"])}))
_fn(torch.clamp, torch.clip, method=("clamp", "clamp_", "clip"), emits=("clamp",))(_unary(
    "clamp", ["min", "max"], {"min": None, "max": None},
    lambda p: {"min": None if p["min"] is None else float(p["min"]), "max": None if p["max"] is None else float(p["max"])}))
_fn(F.silu, emits=("silu",))(_unary("silu", ["inplace"]))
_fn(torch.sigmoid, F.sigmoid, method=("sigmoid", "sigmoid_"), emits=("sigmoid",))(_unary("sigmoid"))
_fn(torch.tanh, F.tanh, method=("tanh", "tanh_"), emits=("tanh",))(_unary("tanh"))
_fn(F.hardswish, emits=("hardswish",))(_unary("hardswish", ["inplace"]))
_fn(F.hardsigmoid, emits=("hardsigmoid",))(_unary("hardsigmoid", ["inplace"]))
_fn(F.gelu, emits=("gelu",))(_unary("gelu", [], {"approximate": "none"}, lambda p: {"approximate": p["approximate"]}))


def _binary(op: str):
    def h(cx, a, b, *, alpha=1, out=None):
        return lower.binary(cx, op, a, b, alpha)
    return h


_fn(operator.add, operator.iadd, torch.add, method=("add", "add_", "__add__", "__radd__"),
    emits=("add",))(_binary("add"))
_fn(operator.mul, operator.imul, torch.mul, method=("mul", "mul_", "__mul__", "__rmul__"),
    emits=("mul",))(_binary("mul"))
_fn(operator.sub, operator.isub, torch.sub, method=("sub", "sub_", "__sub__"), emits=("sub",))(_binary("sub"))
_fn(operator.truediv, operator.itruediv, torch.div, method=("div", "div_", "__truediv__"),
    emits=("div",))(_binary("div"))


@_fn(torch.cat, torch.concat, torch.concatenate, emits=("concat",))
def _cat(cx, tensors, dim=0, *, axis=None):
    return lower.concat(cx, [cx.tensor(t, like=next(v for v in tensors if isinstance(v, Tensor))) for t in tensors],
                        dim if axis is None else axis)


@_fn(torch.flatten, method=("flatten",), emits=("flatten", "reshape"))
def _flatten(cx, x, start_dim=0, end_dim=-1):
    return lower.flatten(cx, cx.tensor(x), start_dim, end_dim)


@_fn(torch.reshape, method=("view", "reshape"), emits=("reshape", "flatten"))
def _reshape(cx, x, *shape, **kw):
    sizes = list(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)) else list(shape)
    if not sizes:
        sizes = list(kw.get("shape", kw.get("size", ())))
    if isinstance(x, (Param, Folded)) and all(isinstance(v, int) for v in sizes):
        return _fold(cx, "reshape", lambda: cx.folded(x).reshape(sizes))
    return lower.reshape(cx, cx.tensor(x), sizes, batch=BATCH)


def _fold(cx, what, step):
    try:
        return step()
    except ValueError as e:
        raise cx.unsupported(what, str(e)) from None


@_fn(torch.permute, method=("permute",), emits=("permute",))
def _permute(cx, x, *dims, **kw):
    dims = list(dims[0]) if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else list(dims or kw["dims"])
    if isinstance(x, Folded):
        return _fold(cx, "permute", lambda: x.permute(dims))
    return lower.permute(cx, cx.tensor(x), dims)


@_fn(torch.transpose, torch.swapaxes, torch.swapdims, method=("transpose", "swapaxes", "swapdims"),
     emits=("permute",))
def _transpose(cx, x, dim0, dim1):
    if isinstance(x, Folded):
        dims = list(range(len(x.shape)))
        dims[dim0], dims[dim1] = dims[dim1], dims[dim0]
        return _fold(cx, "transpose", lambda: x.permute(dims))
    return lower.transpose(cx, cx.tensor(x), dim0, dim1)


@_fn(torch.unsqueeze, method=("unsqueeze",), emits=("reshape",))
def _unsqueeze(cx, x, dim):
    if isinstance(x, (Param, Folded)):
        f = cx.folded(x)
        d = dim + len(f.shape) + 1 if dim < 0 else dim
        return _fold(cx, "unsqueeze", lambda: f.reshape([*f.shape[:d], 1, *f.shape[d:]]))
    x = cx.tensor(x)
    d = cx.b.dim(dim, Tensor("", (*x.shape, 1)), cx.where)  # a dimension of the result, not the batch
    return lower.reshape(cx, x, [BATCH, *x.shape[:d - 1], 1, *x.shape[d - 1:]], BATCH)


@_fn(torch.einsum, emits=("matmul", "permute"))
def _einsum(cx, equation, *operands):
    ops = list(operands[0]) if len(operands) == 1 and isinstance(operands[0], (tuple, list)) else list(operands)
    if not isinstance(equation, str) or len(ops) != 2:
        raise cx.unsupported("einsum", f"{len(ops)} operands; deepcomp maps two-operand matrix products")
    return windows.einsum(cx, equation, cx.tensor(ops[0]), cx.tensor(ops[1]))


@_fn(torch.mean, method=("mean",), emits=("mean",))
def _mean(cx, x, dim=None, keepdim=False, *, dtype=None):
    return lower.mean(cx, cx.tensor(x), dim, keepdim)


@_fn(torch.chunk, method=("chunk",), emits=("slice",))
def _chunk(cx, x, chunks, dim=0):
    return lower.chunk(cx, cx.tensor(x), chunks, dim)


@_fn(torch.split, method=("split",), emits=("slice",))
def _split(cx, x, split_size_or_sections, dim=0):
    return lower.split(cx, cx.tensor(x), split_size_or_sections, dim)


@_fn(torch.matmul, torch.bmm, operator.matmul, method=("matmul", "bmm", "__matmul__"), emits=("matmul",))
def _matmul(cx, a, b):
    return lower.matmul(cx, cx.tensor(a), cx.tensor(b))


@_fn(F.softmax, torch.softmax, method=("softmax",), emits=("softmax",))
def _softmax(cx, x, dim=None, _stacklevel=3, dtype=None):
    return lower.softmax(cx, cx.tensor(x), dim)


@_fn(F.layer_norm, emits=("layernorm",))
def _layer_norm_fn(cx, x, normalized_shape, weight=None, bias=None, eps=1e-5):
    return lower.layer_norm(cx, cx.tensor(x), normalized_shape, weight, bias, eps)


@_fn(F.scaled_dot_product_attention, emits=("matmul", "softmax", "mul", "permute"))
def _sdpa(cx, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kw):
    if attn_mask is not None or is_causal:
        raise cx.unsupported("scaled_dot_product_attention", "an attention mask")
    return lower.attention(cx, cx.tensor(q), cx.tensor(k), cx.tensor(v), scale)


@_fn(F.normalize, emits=("normalize",))
def _normalize(cx, x, p=2.0, dim=1, eps=1e-12, out=None):
    if p != 2:
        raise cx.unsupported("normalize", f"p={p}; only the L2 norm (p=2)")
    x = cx.tensor(x)
    return cx.add("normalize", [x], {"dim": cx.b.dim(dim, x, cx.where), "eps": float(eps)})


_fn(torch.exp, method=("exp", "exp_"), emits=("exp",))(_unary("exp"))


@_fn(F.max_pool2d, torch.max_pool2d, emits=("maxpool2d",))
def _max_pool_fn(cx, *args, **kwargs):
    p = _bind(args, kwargs, ["input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"],
              {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False, "return_indices": False})
    if p["return_indices"]:
        raise cx.unsupported("max_pool2d", "return_indices=True")
    return lower.max_pool2d(cx, cx.tensor(p["input"]), p["kernel_size"], p["stride"], p["padding"], p["dilation"],
                            p["ceil_mode"])


@_fn(F.avg_pool2d, emits=("avgpool2d",))
def _avg_pool_fn(cx, *args, **kwargs):
    p = _bind(args, kwargs, ["input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                             "divisor_override"],
              {"stride": None, "padding": 0, "ceil_mode": False, "count_include_pad": True, "divisor_override": None})
    if p["divisor_override"] is not None:
        raise cx.unsupported("avg_pool2d", "divisor_override")
    return lower.avg_pool2d(cx, cx.tensor(p["input"]), p["kernel_size"], p["stride"], p["padding"], p["ceil_mode"],
                            p["count_include_pad"])


@_fn(F.pad, emits=("pad",))
def _pad(cx, x, pad, mode="constant", value=None):
    if mode != "constant":
        raise cx.unsupported("pad", f"mode {mode!r}; only 'constant'")
    return lower.pad(cx, cx.tensor(x), pad, 0.0 if value is None else value)


@_fn(F.adaptive_avg_pool2d, emits=("adaptive_avgpool2d",))
def _adaptive_fn(cx, x, output_size):
    return lower.adaptive_avg_pool2d(cx, cx.tensor(x), output_size)


def _identity(cx, x, *args, **kwargs):
    return cx.tensor(x) if isinstance(x, Param) else x


def _same(cx, x, *args, **kwargs):  # contiguous/clone/detach: a Folded value stays one
    return x if isinstance(x, Folded) else _identity(cx, x)


_fn(F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout, torch.dropout,
    )(_identity)
METHODS.register("contiguous", "clone", "detach")(_same)


@_fn(getattr)
def _getattr(cx, obj, name):
    if isinstance(obj, Tensor) and name == "shape":
        return (BATCH, *obj.shape)
    if isinstance(obj, Tensor) and name == "ndim":
        return obj.rank
    if isinstance(obj, Folded) and name == "shape":
        return obj.shape
    if isinstance(obj, (Tensor, Param, Folded)):
        raise cx.unsupported(f"Tensor.{name}")
    return getattr(obj, name)


@_fn(torch._assert)
def _assert(cx, condition, message):
    if condition is not True:
        raise cx.unsupported("_assert", f"an assertion on tensor values, or one that fails: {message}")


@METHODS.register("size")
def _size(cx, x, dim=None):
    shape = (BATCH, *cx.tensor(x).shape)
    return shape if dim is None else shape[dim]


@METHODS.register("dim")
def _dim(cx, x):
    return cx.tensor(x).rank


@_fn(operator.getitem, emits=("slice", "reshape"))
def _getitem(cx, x, index):
    if not isinstance(x, (Tensor, Param, Folded)):
        return x[index]
    if isinstance(x, Param) and isinstance(index, (Param, Folded)):
        return _gather(cx, x, cx.folded(index))
    return lower.index(cx, cx.tensor(x), index)


def _gather(cx, table: Param, index: Folded) -> Folded:
    """``table[index]`` on stored tensors (a relative position bias): rows of the table in the
    index's order, gathered once at load (a constant with ``index``)."""
    if index.index is not None or any(kind != "reshape" for kind, _ in index.steps):
        raise cx.unsupported("getitem", "indexing a parameter by a computed tensor")
    rest = cx.b.tensor_shape(table, cx.where)[1:]
    if len(rest) > 1:  # a constant's index picks rows of the last dimension
        raise cx.unsupported("getitem", f"indexing a stored table of rank {len(rest) + 1}; rank 1 or 2")
    f = Folded(str(table), index.tensor, (math.prod(index.shape), *rest), (), (math.prod(index.shape), *rest))
    return f if len(index.shape) == 1 else f.reshape([*index.shape, *rest])


@METHODS.register("expand")
def _expand(cx, x, *sizes):
    """``param.expand(N, -1, ...)``: a stored tensor repeated over the batch (ViT's class token)."""
    sizes = list(sizes[0]) if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)) else list(sizes)
    if isinstance(x, Param) and sizes and sizes[0] is BATCH and all(s == -1 for s in sizes[1:]):
        return cx.tensor(x, like=Tensor("", (1,) * (len(sizes) - 1)))
    raise cx.unsupported("Tensor.expand", "only a parameter expanded over the batch, as expand(N, -1, ...)")


def _torchvision_handlers():
    """torchvision's own modules and wrapped functions, when torchvision is installed."""
    try:
        from torchvision.ops import StochasticDepth, stochastic_depth
    except ImportError:  # pragma: no cover
        return
    MODULES.register(StochasticDepth)(_identity_module)
    FUNCTIONS.register(stochastic_depth)(_identity)
    from torchvision.ops.misc import FrozenBatchNorm2d

    LEAVES.add(FrozenBatchNorm2d)  # traced through, its eps becomes a tensor constant of the trace

    @MODULES.register(FrozenBatchNorm2d, emits=("batchnorm2d",))
    def _frozen_bn(cx, m, p, x):
        return lower.batch_norm(cx, cx.tensor(x), f"{p}weight", f"{p}bias", f"{p}running_mean",
                                f"{p}running_var", m.eps)
    from torchvision.models import swin_transformer as swin

    LEAVES.add(swin.ShiftedWindowAttentionV2)

    @MODULES.register(swin.ShiftedWindowAttentionV2, emits=("constant", "linear", "relu", "sigmoid", "mul",
                                                            "normalize", "clamp", "exp", "sub", "slice"))
    def _window_attention_v2(cx, m, p, x):
        bias = windows.continuous_position_bias(cx, p, m.cpb_mlp, m.window_size, m.num_heads)
        qkv_bias = f"{p}qkv.bias" if m.qkv.bias is not None else None
        c = m.qkv.in_features
        key_bias = qkv_bias if qkv_bias is not None and bool(m.qkv.bias[c:2 * c].any()) else None
        return windows.shifted_window_attention(
            cx, cx.tensor(x), f"{p}qkv.weight", f"{p}proj.weight", bias, m.window_size, m.num_heads, m.shift_size,
            qkv_bias, f"{p}proj.bias" if m.proj.bias is not None else None, Param(f"{p}logit_scale"), key_bias)

    @FUNCTIONS.register(swin._get_relative_position_bias)
    def _relative_position_bias(cx, table, index, window_size):
        if not isinstance(table, Param) or not isinstance(index, Param):
            raise cx.unsupported("_get_relative_position_bias", "a bias table computed by the model outside "
                                 "torchvision's ShiftedWindowAttentionV2")
        n = int(window_size[0]) * int(window_size[1])
        f = _gather(cx, table, cx.folded(index))
        return _fold(cx, "_get_relative_position_bias",
                     lambda: f.reshape([n, n, -1]).permute([2, 0, 1]).reshape([1, f.shape[-1], n, n]))

    @FUNCTIONS.register(swin.shifted_window_attention, emits=("roll", "window_mask", "linear", "matmul", "softmax",
                                                              "add", "mul", "permute", "reshape", "slice",
                                                              "normalize", "clamp", "exp", "sub"))
    def _shifted_window_attention(cx, x, qkv_weight, proj_weight, relative_position_bias, window_size, num_heads,
                                  shift_size, attention_dropout=0.0, dropout=0.0, qkv_bias=None, proj_bias=None,
                                  logit_scale=None, training=True):
        if not all(isinstance(p, Param) or p is None for p in (qkv_weight, proj_weight, qkv_bias, proj_bias)):
            raise cx.unsupported("shifted_window_attention", "projection weights that are not parameters")
        if logit_scale is not None and not isinstance(logit_scale, Param):
            raise cx.unsupported("shifted_window_attention", "a logit scale that is not a parameter")
        key_bias = qkv_bias if logit_scale is not None and qkv_bias is not None else None  # v2 zeroes its key third
        return windows.shifted_window_attention(cx, cx.tensor(x), qkv_weight, proj_weight, relative_position_bias,
                                                window_size, num_heads, shift_size, qkv_bias, proj_bias, logit_scale,
                                                key_bias)

    @FUNCTIONS.register(swin._patch_merging_pad, emits=("pad", "reshape", "permute"))
    def _patch_merging_pad(cx, x):
        return windows.patch_merging(cx, cx.tensor(x))


_torchvision_handlers()


def supported() -> str:
    mods = sorted({t.__name__ for t in MODULES})
    fns = sorted({getattr(f, "__name__", str(f)) for f in FUNCTIONS})
    return (f"modules {', '.join(mods)}; functions {', '.join(fns)}; tensor methods "
            f"{', '.join(sorted(m for m in METHODS if not m.startswith('__')))}")

