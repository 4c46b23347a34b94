"""Capture a torch model as the GRAPH section of a .dcz file (docs/dcz-format.md, "GRAPH").

:func:`capture` traces the model with ``torch.fx`` (eval mode), runs it once on zeros to learn every
tensor's shape, and translates each traced operation into one of the ops of the format: conv2d,
linear, batchnorm2d, relu, maxpool2d, avgpool2d, adaptive_avgpool2d, flatten, add, concat. Dropout
and other identities disappear; a BatchNorm2d that directly follows a convolution whose output feeds
nothing else is recorded on that convolution (``bn`` attribute) and not as a node of its own. The
weights stay unfolded (decompressing returns the original state_dict); the runtime folds BatchNorm
into a per-channel scale and shift when it loads the file.

TorchScript modules (what :func:`deepcomp.zoo.load_model` returns for a TorchScript file) are
captured from their inlined TorchScript graph instead; see :func:`_capture_script`.

Anything else raises :class:`deepcomp.errors.UnsupportedOpError` naming the op and where it is.
"""

from __future__ import annotations

import builtins
import math
import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deepcomp.errors import ModelLoadError, UnsupportedOpError

GRAPH_FORMAT = "deepcomp-graph"
GRAPH_VERSION = 1

SUPPORTED = (
    "Conv2d, Linear, BatchNorm2d, ReLU, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, Flatten "
    "(flatten / view(N, -1) / reshape(N, -1)), Dropout and Identity (removed), residual add and "
    "torch.cat along channels"
)

OPS = (
    "conv2d", "linear", "batchnorm2d", "relu", "maxpool2d", "avgpool2d", "adaptive_avgpool2d",
    "flatten", "add", "concat",
)

_IDENTITY_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                     nn.FeatureAlphaDropout, nn.Identity)
_RELU_FUNCS = {F.relu, torch.relu, torch.relu_, F.relu_}
_ADD_FUNCS = {operator.add, operator.iadd, torch.add}
_CAT_FUNCS = {torch.cat, torch.concat, torch.concatenate}
_DROPOUT_FUNCS = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
                  F.feature_alpha_dropout, torch.dropout}
_IDENTITY_METHODS = {"contiguous", "clone", "detach"}


def _unsupported(op: str, where: str, why: str = "") -> UnsupportedOpError:
    extra = f" ({why})" if why else ""
    return UnsupportedOpError(f"unsupported op '{op}' at '{where}'{extra}: deepcomp supports {SUPPORTED}")


def _pair(v, what: str = "value") -> list[int]:
    if isinstance(v, int):
        return [int(v), int(v)]
    if isinstance(v, (tuple, list)):
        if len(v) == 1:
            return [int(v[0]), int(v[0])]
        if len(v) == 2:
            return [int(v[0]), int(v[1])]
    raise UnsupportedOpError(f"expected an int or a pair for {what}, got {v!r}")


def _bind(args: tuple, kwargs: dict, names: list[str], defaults: dict) -> dict:
    """Arguments of a functional call by parameter name (positional or keyword, with defaults)."""
    out = dict(defaults)
    for name, value in zip(names, args):
        out[name] = value
    out.update(kwargs)
    return out


# --------------------------------------------------------------------------------------------------
# The graph being built


class _Builder:
    """Accumulates the graph's nodes; keeps names unique and remembers who consumes what."""

    def __init__(self, input_name: str, input_shape, state_keys: set[str] | None):
        self.input_name = input_name
        self.input_shape = [int(d) for d in input_shape]
        self.nodes: list[dict] = []
        self.by_name: dict[str, dict] = {}
        self.used = {input_name}
        self.state_keys = state_keys

    def unique(self, base: str) -> str:
        name, k = base, 1
        while name in self.used:
            name = f"{base}#{k}"
            k += 1
        self.used.add(name)
        return name

    def tensor_key(self, key: str | None, where: str) -> str | None:
        if key is not None and self.state_keys is not None and key not in self.state_keys:
            raise UnsupportedOpError(
                f"the tensor {key!r} used at '{where}' is not in the model's state_dict; deepcomp needs "
                "every weight to be a registered parameter or buffer"
            )
        return key

    def add(self, base: str, op: str, inputs: list[str], attrs: dict) -> str:
        name = self.unique(base)
        node = {"name": name, "op": op, "inputs": list(inputs), "attrs": attrs}
        self.nodes.append(node)
        self.by_name[name] = node
        return name

    def result(self, output: str) -> dict:
        return {
            "format": GRAPH_FORMAT,
            "version": GRAPH_VERSION,
            "input": {"name": self.input_name, "shape": self.input_shape},
            "output": output,
            "nodes": self.nodes,
        }


def _conv_attrs(conv: nn.Conv2d, prefix: str, where: str) -> dict:
    if conv.padding_mode != "zeros":
        raise _unsupported("Conv2d", where, f"padding_mode={conv.padding_mode!r}; only 'zeros' is supported")
    padding = conv.padding
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0, 0)
        elif padding == "same":
            pads = []
            for k, d in zip(conv.kernel_size, conv.dilation):
                total = d * (k - 1)
                if total % 2:
                    raise _unsupported("Conv2d", where, "padding='same' with an even kernel pads asymmetrically")
                pads.append(total // 2)
            padding = tuple(pads)
        else:
            raise _unsupported("Conv2d", where, f"padding={padding!r}")
    return {
        "weight": f"{prefix}weight",
        "bias": f"{prefix}bias" if conv.bias is not None else None,
        "stride": _pair(conv.stride, "stride"),
        "padding": _pair(padding, "padding"),
        "dilation": _pair(conv.dilation, "dilation"),
        "groups": int(conv.groups),
        "bn": None,
    }


def _bn_attrs(bn: nn.BatchNorm2d, prefix: str, where: str) -> dict:
    if bn.running_mean is None or bn.running_var is None:
        raise _unsupported("BatchNorm2d", where, "track_running_stats=False uses batch statistics at inference")
    return {
        "weight": f"{prefix}weight" if bn.weight is not None else None,
        "bias": f"{prefix}bias" if bn.bias is not None else None,
        "running_mean": f"{prefix}running_mean",
        "running_var": f"{prefix}running_var",
        "eps": float(bn.eps),
    }


def _maxpool_attrs(kernel_size, stride, padding, dilation, ceil_mode, where) -> dict:
    k = _pair(kernel_size, "kernel_size")
    s = _pair(stride, "stride") if stride is not None and stride != [] and stride != () else list(k)
    return {"kernel_size": k, "stride": s, "padding": _pair(padding, "padding"),
            "dilation": _pair(dilation, "dilation"), "ceil_mode": bool(ceil_mode)}


def _avgpool_attrs(kernel_size, stride, padding, ceil_mode, count_include_pad, where) -> dict:
    k = _pair(kernel_size, "kernel_size")
    s = _pair(stride, "stride") if stride is not None and stride != [] and stride != () else list(k)
    return {"kernel_size": k, "stride": s, "padding": _pair(padding, "padding"),
            "ceil_mode": bool(ceil_mode), "count_include_pad": bool(count_include_pad)}


def _adaptive_size(output_size, in_shape) -> list[int]:
    if isinstance(output_size, int):
        return [output_size, output_size]
    size = list(output_size)
    if len(size) == 1:
        size = size * 2
    out = []
    for i, v in enumerate(size):
        out.append(int(in_shape[2 + i]) if v is None else int(v))
    return out


# --------------------------------------------------------------------------------------------------
# torch.fx capture


def capture(model: nn.Module, input_shape: tuple) -> dict:
    """The GRAPH JSON object (a dict) for ``model`` run on inputs of shape ``[N, *input_shape]``.

    Raises UnsupportedOpError for an operation outside the format's op table.
    """
    input_shape = tuple(int(d) for d in input_shape)
    if isinstance(model, torch.jit.ScriptModule):
        return _capture_script(model, input_shape)
    was_training = model.training
    model.eval()
    try:
        return _capture_fx(model, input_shape)
    finally:
        model.train(was_training)


def _trace(model: nn.Module):
    import torch.fx as fx

    try:
        return fx.symbolic_trace(model)
    except Exception as e:  # noqa: BLE001 - any tracing failure is the model's construction
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnsupportedOpError(
            f"cannot trace {type(model).__name__} with torch.fx: {first}. deepcomp captures models whose "
            "forward has no data-dependent control flow; rewrite the forward, or save it with "
            "torch.jit.trace and compress the TorchScript file"
        ) from None


def _shapes(gm, input_shape) -> dict[str, Any]:
    """Run the traced module once on zeros; returns {fx node name: output shape or None}."""
    shapes: dict[str, Any] = {}

    import torch.fx as fx

    class _Recorder(fx.Interpreter):
        def run_node(self, n):
            value = super().run_node(n)
            shapes[n.name] = tuple(value.shape) if isinstance(value, torch.Tensor) else None
            return value

    x = torch.zeros((1, *input_shape))
    try:
        with torch.no_grad():
            _Recorder(gm).run(x)
    except Exception as e:  # noqa: BLE001
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(
            f"the model does not run on an input of shape [N, {', '.join(map(str, input_shape))}]: {first}. "
            "Pass the right input shape"
        ) from None
    return shapes


def _where(node) -> str:
    stack = node.meta.get("nn_module_stack") if hasattr(node, "meta") else None
    if stack:
        path = list(stack.values())[-1][0] if isinstance(list(stack.values())[-1], tuple) else list(stack)[-1]
        return f"{path} ({node.name})"
    return node.name


def _capture_fx(model: nn.Module, input_shape: tuple) -> dict:
    import torch.fx as fx

    gm = _trace(model)
    shapes = _shapes(gm, input_shape)
    modules = dict(gm.named_modules())
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise UnsupportedOpError(
            f"the model's forward takes {len(placeholders)} inputs; deepcomp captures models with exactly one input tensor"
        )
    b = _Builder(placeholders[0].name, input_shape, set(model.state_dict().keys()))

    # fx node -> ("tensor", graph name) | ("shape", name) | ("dim", name, d)
    env: dict[fx.Node, tuple] = {}
    conv_node_of: dict[str, fx.Node] = {}  # graph conv name -> the fx node that produced it

    def tensor(arg, where: str) -> str:
        if isinstance(arg, fx.Node) and arg in env and env[arg][0] == "tensor":
            return env[arg][1]
        raise UnsupportedOpError(f"at '{where}': expected a tensor computed by the model, got {arg!r}")

    def rank(arg) -> int:
        s = shapes.get(arg.name) if isinstance(arg, fx.Node) else None
        return len(s) if s is not None else -1

    def emit(node, base, op, inputs, attrs):
        env[node] = ("tensor", b.add(base, op, inputs, attrs))

    def alias(node, src):
        env[node] = ("tensor", tensor(src, _where(node)))

    def flatten_from(node, src, start_dim, end_dim=-1):
        r = rank(src)
        sd = start_dim + r if start_dim < 0 else start_dim
        ed = end_dim + r if end_dim < 0 else end_dim
        if sd != 1 or ed != r - 1:
            raise _unsupported("flatten", _where(node), f"start_dim={start_dim}, end_dim={end_dim} on a rank-{r} "
                               "tensor; only flattening every dimension after the batch is supported")
        emit(node, node.name, "flatten", [tensor(src, _where(node))], {"start_dim": 1})

    def view_as_flatten(node, src, sizes):
        where = _where(node)
        if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
            sizes = list(sizes[0])
        in_shape = shapes.get(src.name)
        feat = math.prod(in_shape[1:]) if in_shape else None

        def is_batch(v):
            return isinstance(v, fx.Node) and env.get(v, ("",))[0] == "dim" and env[v][2] == 0

        ok = False
        if len(sizes) == 2:
            first, second = sizes
            if is_batch(first) and (second == -1 or second == feat):
                ok = True
            elif first == -1 and isinstance(second, int) and second == feat:
                ok = True
        if not ok:
            shown = ["N" if is_batch(s) else (s if not isinstance(s, fx.Node) else "?") for s in sizes]
            raise _unsupported(f"{node.target}({', '.join(map(str, shown))})", where,
                               "only view/reshape to (N, -1), i.e. a flatten, is supported")
        emit(node, node.name, "flatten", [tensor(src, where)], {"start_dim": 1})

    def add_node(node, a, c, alpha=1):
        where = _where(node)
        if alpha != 1:
            raise _unsupported("add", where, "alpha other than 1")
        if not (isinstance(a, fx.Node) and isinstance(c, fx.Node)):
            raise _unsupported("add", where, "adding a constant")
        sa, sc = shapes.get(a.name), shapes.get(c.name)
        if sa is not None and sc is not None and sa != sc:
            raise _unsupported("add", where, f"broadcasting {list(sa)} + {list(sc)}")
        emit(node, node.name, "add", [tensor(a, where), tensor(c, where)], {})

    def cat_node(node, tensors, dim):
        where = _where(node)
        if not isinstance(tensors, (list, tuple)):
            raise _unsupported("cat", where, "the tensors must be a list")
        names = [tensor(t, where) for t in tensors]
        if len(names) == 1:
            env[node] = ("tensor", names[0])
            return
        r = rank(tensors[0])
        d = dim + r if dim < 0 else dim
        if d < 1:
            raise _unsupported("cat", where, "concatenating along the batch dimension")
        emit(node, node.name, "concat", names, {"dim": int(d)})

    output_name = None
    for node in gm.graph.nodes:
        where = _where(node)
        if node.op == "placeholder":
            env[node] = ("tensor", b.input_name)
        elif node.op == "output":
            out = node.args[0]
            if not isinstance(out, fx.Node):
                raise UnsupportedOpError(
                    "the model returns several values (or a container); deepcomp captures models that return one tensor"
                )
            output_name = tensor(out, "output")
        elif node.op == "get_attr":
            raise _unsupported(f"get_attr {node.target}", where, "a tensor attribute used directly in forward")
        elif node.op == "call_module":
            mod = modules[node.target]
            path = str(node.target)
            prefix = f"{path}."
            src = node.args[0] if node.args else None
            if len(node.args) != 1 or node.kwargs:
                raise _unsupported(type(mod).__name__, path, "called with more than one argument")
            if isinstance(mod, nn.Conv2d):
                if rank(src) != 4:
                    raise _unsupported("Conv2d", path, "input is not 4-D (N, C, H, W)")
                attrs = _conv_attrs(mod, prefix, path)
                b.tensor_key(attrs["weight"], path)
                b.tensor_key(attrs["bias"], path)
                emit(node, path, "conv2d", [tensor(src, path)], attrs)
                conv_node_of[env[node][1]] = node
            elif isinstance(mod, nn.Linear):
                if rank(src) != 2:
                    raise _unsupported("Linear", path, f"input of rank {rank(src)}; only (N, features) inputs are supported")
                attrs = {"weight": f"{prefix}weight", "bias": f"{prefix}bias" if mod.bias is not None else None}
                b.tensor_key(attrs["weight"], path)
                b.tensor_key(attrs["bias"], path)
                emit(node, path, "linear", [tensor(src, path)], attrs)
            elif isinstance(mod, nn.BatchNorm2d):
                attrs = _bn_attrs(mod, prefix, path)
                for key in ("weight", "bias", "running_mean", "running_var"):
                    b.tensor_key(attrs[key], path)
                src_name = tensor(src, path)
                producer = b.by_name.get(src_name)
                if (producer is not None and producer["op"] == "conv2d" and producer["attrs"]["bn"] is None
                        and conv_node_of.get(src_name) is src and len(src.users) == 1):
                    producer["attrs"]["bn"] = attrs
                    env[node] = ("tensor", src_name)
                else:
                    emit(node, path, "batchnorm2d", [src_name], attrs)
            elif type(mod) is nn.ReLU:
                emit(node, path, "relu", [tensor(src, path)], {})
            elif type(mod) is nn.MaxPool2d:
                if mod.return_indices:
                    raise _unsupported("MaxPool2d", path, "return_indices=True")
                emit(node, path, "maxpool2d", [tensor(src, path)],
                     _maxpool_attrs(mod.kernel_size, mod.stride, mod.padding, mod.dilation, mod.ceil_mode, path))
            elif type(mod) is nn.AvgPool2d:
                if mod.divisor_override is not None:
                    raise _unsupported("AvgPool2d", path, "divisor_override")
                emit(node, path, "avgpool2d", [tensor(src, path)],
                     _avgpool_attrs(mod.kernel_size, mod.stride, mod.padding, mod.ceil_mode, mod.count_include_pad, path))
            elif type(mod) is nn.AdaptiveAvgPool2d:
                emit(node, path, "adaptive_avgpool2d", [tensor(src, path)],
                     {"output_size": _adaptive_size(mod.output_size, shapes[src.name])})
            elif type(mod) is nn.Flatten:
                flatten_from(node, src, mod.start_dim, mod.end_dim)
            elif isinstance(mod, _IDENTITY_MODULES):
                alias(node, src)
            else:
                raise _unsupported(type(mod).__name__, path)
        elif node.op == "call_function":
            fn = node.target
            args, kwargs = node.args, node.kwargs
            if fn in _RELU_FUNCS:
                emit(node, node.name, "relu", [tensor(args[0], where)], {})
            elif fn in _ADD_FUNCS:
                p = _bind(args, kwargs, ["input", "other"], {"alpha": 1})
                add_node(node, p["input"], p["other"], p["alpha"])
            elif fn in _CAT_FUNCS:
                p = _bind(args, kwargs, ["tensors", "dim"], {"dim": 0})
                if "axis" in kwargs:
                    p["dim"] = kwargs["axis"]
                cat_node(node, p["tensors"], p["dim"])
            elif fn is torch.flatten:
                p = _bind(args, kwargs, ["input", "start_dim", "end_dim"], {"start_dim": 0, "end_dim": -1})
                flatten_from(node, p["input"], p["start_dim"], p["end_dim"])
            elif fn is F.max_pool2d or fn is torch.max_pool2d:
                p = _bind(args, kwargs, ["input", "kernel_size", "stride", "padding", "dilation", "ceil_mode",
                                         "return_indices"],
                          {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False, "return_indices": False})
                if p["return_indices"]:
                    raise _unsupported("max_pool2d", where, "return_indices=True")
                emit(node, node.name, "maxpool2d", [tensor(p["input"], where)],
                     _maxpool_attrs(p["kernel_size"], p["stride"], p["padding"], p["dilation"], p["ceil_mode"], where))
            elif fn is F.avg_pool2d:
                p = _bind(args, kwargs, ["input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                                         "divisor_override"],
                          {"stride": None, "padding": 0, "ceil_mode": False, "count_include_pad": True,
                           "divisor_override": None})
                if p["divisor_override"] is not None:
                    raise _unsupported("avg_pool2d", where, "divisor_override")
                emit(node, node.name, "avgpool2d", [tensor(p["input"], where)],
                     _avgpool_attrs(p["kernel_size"], p["stride"], p["padding"], p["ceil_mode"],
                                    p["count_include_pad"], where))
            elif fn is F.adaptive_avg_pool2d:
                p = _bind(args, kwargs, ["input", "output_size"], {})
                emit(node, node.name, "adaptive_avgpool2d", [tensor(p["input"], where)],
                     {"output_size": _adaptive_size(p["output_size"], shapes[p["input"].name])})
            elif fn in _DROPOUT_FUNCS:
                alias(node, args[0] if args else kwargs["input"])
            elif fn is builtins.getattr and len(args) == 2 and args[1] == "shape":
                env[node] = ("shape", tensor(args[0], where))
            elif fn is operator.getitem and isinstance(args[0], fx.Node) and env.get(args[0], ("",))[0] == "shape":
                if not isinstance(args[1], int):
                    raise _unsupported("shape slicing", where)
                env[node] = ("dim", env[args[0]][1], args[1])
            else:
                name = getattr(fn, "__name__", str(fn))
                raise _unsupported(name, where)
        elif node.op == "call_method":
            m = node.target
            args, kwargs = node.args, node.kwargs
            if m in ("relu", "relu_"):
                emit(node, node.name, "relu", [tensor(args[0], where)], {})
            elif m in ("view", "reshape"):
                sizes = list(args[1:]) or list(kwargs.get("shape", kwargs.get("size", ())))
                view_as_flatten(node, args[0], sizes)
            elif m == "flatten":
                p = _bind(args, kwargs, ["self", "start_dim", "end_dim"], {"start_dim": 0, "end_dim": -1})
                flatten_from(node, p["self"], p["start_dim"], p["end_dim"])
            elif m == "size":
                p = _bind(args, kwargs, ["self", "dim"], {"dim": None})
                src = tensor(p["self"], where)
                env[node] = ("shape", src) if p["dim"] is None else ("dim", src, int(p["dim"]) % max(rank(p["self"]), 1))
            elif m in ("add", "add_"):
                p = _bind(args, kwargs, ["self", "other"], {"alpha": 1})
                add_node(node, p["self"], p["other"], p["alpha"])
            elif m in _IDENTITY_METHODS:
                alias(node, args[0])
            else:
                raise _unsupported(f"Tensor.{m}", where)
        else:  # pragma: no cover - fx has no other opcodes
            raise _unsupported(node.op, where)

    if output_name is None:
        raise UnsupportedOpError("the traced model has no output")
    return b.result(output_name)


# --------------------------------------------------------------------------------------------------
# TorchScript capture


_TS_IDENTITY = {"aten::dropout", "aten::dropout_", "aten::feature_dropout", "aten::feature_dropout_",
                "aten::alpha_dropout", "aten::alpha_dropout_", "aten::feature_alpha_dropout",
                "aten::contiguous", "aten::detach", "aten::clone"}
_TS_COMPARE = {"aten::eq": operator.eq, "aten::ne": operator.ne, "aten::lt": operator.lt, "aten::le": operator.le,
               "aten::gt": operator.gt, "aten::ge": operator.ge, "aten::__and__": lambda a, c: a and c,
               "aten::__or__": lambda a, c: a or c, "aten::__is__": operator.is_, "aten::__isnot__": operator.is_not}


class _Sym:
    """A value of the TorchScript graph as the capture sees it."""

    __slots__ = ("kind", "value")

    def __init__(self, kind: str, value):
        self.kind, self.value = kind, value  # kind: const | module | param | tensor | shape | dim | list

    def __repr__(self):
        return f"{self.kind}:{self.value!r}"


def _capture_script(model, input_shape: tuple) -> dict:
    """Capture a TorchScript module (scripted or traced) from its inlined graph.

    The graph is walked like an interpreter that knows only constants, module attributes and the
    op table: ``prim::If`` branches are taken when their condition is a constant (``self.training``
    is False in eval mode, ``bias is None`` ...), so the training-only code of BatchNorm and Dropout
    disappears. A condition that depends on tensor values, loops, or any other op raise
    UnsupportedOpError.
    """
    was_training = model.training
    model.eval()
    try:
        return _ScriptCapture(model, input_shape).run()
    finally:
        model.train(was_training)


class _ScriptCapture:
    def __init__(self, model, input_shape):
        self.model = model
        self.state_keys = set(model.state_dict().keys())
        self.graph = model.inlined_graph
        inputs = list(self.graph.inputs())
        if len(inputs) != 2:
            raise UnsupportedOpError(
                f"the TorchScript model's forward takes {len(inputs) - 1} inputs; deepcomp captures models with "
                "exactly one input tensor")
        self.input_name = "x"
        self.b = _Builder(self.input_name, input_shape, self.state_keys)
        self.env: dict = {inputs[0]: _Sym("module", ""), inputs[1]: _Sym("tensor", self.input_name)}
        self.rank = {self.input_name: 1 + len(input_shape)}
        self.producer_value: dict[str, Any] = {}  # graph conv name -> jit value it came from
        self.counter = 0

    # -- helpers

    def where(self, n) -> str:
        scope = n.scopeName() if hasattr(n, "scopeName") else ""
        scope = scope.replace("__module.", "").split("/")[-1] if scope else ""
        return scope or n.kind()

    def sym(self, v) -> _Sym:
        if v not in self.env:
            raise UnsupportedOpError(f"TorchScript value %{v.debugName()} is not understood by deepcomp")
        return self.env[v]

    def const(self, v, n):
        s = self.sym(v)
        if s.kind == "const":
            return s.value
        if s.kind == "list" and all(x.kind == "const" for x in s.value):
            return [x.value for x in s.value]
        raise _unsupported(n.kind(), self.where(n), f"a non-constant {s.kind} argument")

    def tensor(self, v, n) -> str:
        s = self.sym(v)
        if s.kind != "tensor":
            raise _unsupported(n.kind(), self.where(n), f"expected a tensor computed by the model, got {s.kind}")
        return s.value

    def param(self, v, n, optional=False):
        s = self.sym(v)
        if optional and s.kind == "const" and s.value is None:
            return None
        if s.kind != "param":
            raise _unsupported(n.kind(), self.where(n), "weights must be parameters or buffers of the module")
        return s.value

    def module_path(self, key: str, suffix: str) -> str:
        return key[: -len(suffix)] if key.endswith(suffix) else key

    def emit(self, n, base, op, inputs, attrs, rank):
        if base is None:
            scope = n.scopeName().replace("__module.", "").split("/")[-1] if n.scopeName() else ""
            base = scope or f"{op}_{self.counter}"
        name = self.b.add(base, op, inputs, attrs)
        self.counter += 1
        self.rank[name] = rank
        self.env[n.output()] = _Sym("tensor", name)
        return name

    # -- walking

    def run(self) -> dict:
        self.block(self.graph.nodes())
        outs = list(self.graph.outputs())
        if len(outs) != 1 or self.sym(outs[0]).kind != "tensor":
            raise UnsupportedOpError("the TorchScript model returns several values (or a container); deepcomp "
                                     "captures models that return one tensor")
        return self.fold_batchnorm(self.b.result(self.sym(outs[0]).value))

    @staticmethod
    def fold_batchnorm(graph: dict) -> dict:
        """Record each batchnorm2d on the conv2d before it when nothing else reads that conv's output
        (a scripted graph's unused training branches make the TorchScript use counts useless)."""
        nodes = graph["nodes"]
        uses: dict[str, int] = {graph["output"]: 1}
        for node in nodes:
            for i in node["inputs"]:
                uses[i] = uses.get(i, 0) + 1
        by_name = {node["name"]: node for node in nodes}
        rename: dict[str, str] = {}
        kept = []
        for node in nodes:
            node["inputs"] = [rename.get(i, i) for i in node["inputs"]]
            if node["op"] == "batchnorm2d":
                src = node["inputs"][0]
                conv = by_name.get(src)
                if conv is not None and conv["op"] == "conv2d" and conv["attrs"]["bn"] is None and uses.get(src) == 1:
                    conv["attrs"]["bn"] = node["attrs"]
                    rename[node["name"]] = src
                    continue
            kept.append(node)
        graph["nodes"] = kept
        graph["output"] = rename.get(graph["output"], graph["output"])
        return graph

    def block(self, nodes):
        for n in nodes:
            self.node(n)

    def node(self, n):
        k = n.kind()
        ins = list(n.inputs())
        where = self.where(n)
        if k == "prim::Constant":
            self.env[n.output()] = _Sym("const", n.output().toIValue())
        elif k == "prim::GetAttr":
            base = self.sym(ins[0])
            if base.kind != "module":
                raise _unsupported(k, where, "attribute of a non-module")
            attr = n.s("name")
            obj = self.model
            for part in filter(None, base.value.split(".")):
                obj = getattr(obj, part)
            value = getattr(obj, attr)
            path = f"{base.value}.{attr}" if base.value else attr
            if isinstance(value, torch.jit.ScriptModule) or isinstance(value, nn.Module):
                self.env[n.output()] = _Sym("module", path)
            elif isinstance(value, torch.Tensor):
                if path not in self.state_keys:
                    raise _unsupported("tensor attribute", path, "not a registered parameter or buffer")
                self.env[n.output()] = _Sym("param", path)
            else:
                self.env[n.output()] = _Sym("const", value)
        elif k in ("prim::ListConstruct", "prim::TupleConstruct"):
            self.env[n.output()] = _Sym("list", [self.sym(v) for v in ins])
        elif k in ("prim::ListUnpack", "prim::TupleUnpack"):
            s = self.sym(ins[0])
            items = s.value if s.kind == "list" else [_Sym("const", v) for v in s.value] if s.kind == "const" else None
            if items is None or len(items) != len(list(n.outputs())):
                raise _unsupported(k, where)
            for out, item in zip(n.outputs(), items):
                self.env[out] = item
        elif k == "prim::If":
            cond = self.sym(ins[0])
            if cond.kind != "const":
                raise _unsupported("if", where, "a condition that depends on tensor values")
            blocks = list(n.blocks())
            chosen = blocks[0] if cond.value else blocks[1]
            self.block(chosen.nodes())
            for out, ret in zip(n.outputs(), chosen.returnNode().inputs()):
                self.env[out] = self.sym(ret)
        elif k == "prim::RaiseException":
            raise UnsupportedOpError(f"the TorchScript model raises an exception at '{where}' for this input shape")
        elif k in ("prim::NumToTensor", "aten::Int", "aten::ScalarImplicit", "aten::Float"):
            self.env[n.output()] = self.sym(ins[0])
        elif k == "aten::__not__":
            self.env[n.output()] = _Sym("const", not self.const(ins[0], n))
        elif k in _TS_COMPARE:
            a, c = self.sym(ins[0]), self.sym(ins[1])
            if a.kind == "const" and c.kind == "const":
                self.env[n.output()] = _Sym("const", _TS_COMPARE[k](a.value, c.value))
            elif k in ("aten::__is__", "aten::__isnot__"):
                # a tensor or module is never None
                self.env[n.output()] = _Sym("const", k == "aten::__isnot__")
            else:
                raise _unsupported(k, where, "a comparison of tensor-dependent values")
        elif k == "aten::len":
            s = self.sym(ins[0])
            if s.kind == "shape":
                self.env[n.output()] = _Sym("const", self.rank[s.value])
            else:
                self.env[n.output()] = _Sym("const", len(self.const(ins[0], n)))
        elif k == "aten::dim":
            self.env[n.output()] = _Sym("const", self.rank[self.tensor(ins[0], n)])
        elif k == "aten::size":
            t = self.tensor(ins[0], n)
            if len(ins) == 1:
                self.env[n.output()] = _Sym("shape", t)
            else:
                d = int(self.const(ins[1], n))
                d = d + self.rank[t] if d < 0 else d
                self.env[n.output()] = _Sym("dim", (t, d))
        elif k == "aten::__getitem__":
            s = self.sym(ins[0])
            i = self.const(ins[1], n)
            if s.kind == "shape":
                r = self.rank[s.value]
                self.env[n.output()] = _Sym("dim", (s.value, i + r if i < 0 else i))
            elif s.kind == "list":
                self.env[n.output()] = s.value[i]
            else:
                self.env[n.output()] = _Sym("const", self.const(ins[0], n)[i])
        elif k in _TS_IDENTITY:
            self.env[n.output()] = _Sym("tensor", self.tensor(ins[0], n))
        elif k in ("aten::_convolution", "aten::conv2d", "aten::_convolution_mode"):
            self.conv(n, ins)
        elif k == "aten::linear":
            w = self.param(ins[1], n)
            b = self.param(ins[2], n, optional=True)
            x = self.tensor(ins[0], n)
            if self.rank[x] != 2:
                raise _unsupported("linear", where, f"input of rank {self.rank[x]}")
            self.emit(n, self.module_path(w, ".weight"), "linear", [x], {"weight": w, "bias": b}, 2)
        elif k == "aten::t":
            self.env[n.output()] = _Sym("param_t", self.param(ins[0], n))
        elif k == "aten::addmm":
            bias, x, wt = self.sym(ins[0]), self.tensor(ins[1], n), self.sym(ins[2])
            beta, alpha = self.const(ins[3], n), self.const(ins[4], n)
            if bias.kind != "param" or wt.kind != "param_t" or beta != 1 or alpha != 1:
                raise _unsupported("addmm", where, "only bias + x @ weight.t() is supported")
            self.emit(n, self.module_path(wt.value, ".weight"), "linear", [x], {"weight": wt.value, "bias": bias.value}, 2)
        elif k in ("aten::relu", "aten::relu_"):
            x = self.tensor(ins[0], n)
            self.emit(n, None, "relu", [x], {}, self.rank[x])
        elif k == "aten::max_pool2d":
            x = self.tensor(ins[0], n)
            kernel, stride, pad, dil, ceil = (self.const(v, n) for v in ins[1:6])
            self.emit(n, None, "maxpool2d", [x], _maxpool_attrs(kernel, stride or None, pad, dil, ceil, where), 4)
        elif k == "aten::avg_pool2d":
            x = self.tensor(ins[0], n)
            kernel, stride, pad, ceil, cip, div = (self.const(v, n) for v in ins[1:7])
            if div is not None:
                raise _unsupported("avg_pool2d", where, "divisor_override")
            self.emit(n, None, "avgpool2d", [x], _avgpool_attrs(kernel, stride or None, pad, ceil, cip, where), 4)
        elif k == "aten::adaptive_avg_pool2d":
            x = self.tensor(ins[0], n)
            size = self.const(ins[1], n)
            if isinstance(size, (list, tuple)) and any(v is None for v in size):
                raise _unsupported("adaptive_avg_pool2d", where, "output_size with None")
            self.emit(n, None, "adaptive_avgpool2d", [x], {"output_size": _pair(size, "output_size")}, 4)
        elif k == "aten::flatten":
            x = self.tensor(ins[0], n)
            r = self.rank[x]
            sd, ed = (int(self.const(v, n)) for v in ins[1:3])
            sd, ed = sd + r if sd < 0 else sd, ed + r if ed < 0 else ed
            if sd != 1 or ed != r - 1:
                raise _unsupported("flatten", where, "only flattening every dimension after the batch is supported")
            self.emit(n, None, "flatten", [x], {"start_dim": 1}, 2)
        elif k in ("aten::view", "aten::reshape"):
            x = self.tensor(ins[0], n)
            size = self.sym(ins[1])
            items = size.value if size.kind == "list" else None
            ok = (items is not None and len(items) == 2 and items[0].kind == "dim" and items[0].value[1] == 0
                  and items[1].kind == "const" and items[1].value == -1)
            if not ok:
                raise _unsupported(k.split("::")[1], where, "only view/reshape to (N, -1), i.e. a flatten, is supported")
            self.emit(n, None, "flatten", [x], {"start_dim": 1}, 2)
        elif k in ("aten::add", "aten::add_"):
            a, c = self.sym(ins[0]), self.sym(ins[1])
            alpha = self.const(ins[2], n) if len(ins) > 2 else 1
            if a.kind == "tensor" and c.kind == "tensor" and alpha == 1:
                self.emit(n, None, "add", [a.value, c.value], {}, self.rank[a.value])
            elif a.kind == "const" and c.kind == "const":
                self.env[n.output()] = _Sym("const", a.value + c.value * alpha)
            else:
                raise _unsupported("add", where, "only adding two tensors of the model")
        elif k == "aten::cat":
            items = self.sym(ins[0])
            if items.kind != "list" or not all(t.kind == "tensor" for t in items.value):
                raise _unsupported("cat", where, "the tensors must be a list")
            names = [t.value for t in items.value]
            dim = int(self.const(ins[1], n))
            r = self.rank[names[0]]
            dim = dim + r if dim < 0 else dim
            if dim < 1:
                raise _unsupported("cat", where, "concatenating along the batch dimension")
            if len(names) == 1:
                self.env[n.output()] = _Sym("tensor", names[0])
            else:
                self.emit(n, None, "concat", names, {"dim": dim}, r)
        elif k == "aten::batch_norm":
            self.batch_norm(n, ins)
        elif k == "aten::warn":
            pass
        else:
            raise _unsupported(k, where)

    def conv(self, n, ins):
        where = self.where(n)
        x = self.tensor(ins[0], n)
        w = self.param(ins[1], n)
        b = self.param(ins[2], n, optional=True)
        if n.kind() == "aten::_convolution_mode":
            stride, padding, dilation, groups = (self.const(v, n) for v in ins[3:7])
        elif n.kind() == "aten::_convolution":
            stride, padding, dilation, transposed, _, groups = (self.const(v, n) for v in ins[3:9])
            if transposed:
                raise _unsupported("conv_transpose2d", where)
        else:
            stride, padding, dilation, groups = (self.const(v, n) for v in ins[3:7])
        if self.rank[x] != 4 or len(stride) != 2:
            raise _unsupported("conv", where, "only 2-D convolutions on NCHW inputs are supported")
        if isinstance(padding, str):
            weight = dict(self.model.named_parameters()).get(w)
            if padding == "valid":
                padding = [0, 0]
            elif padding == "same" and weight is not None:
                pads = []
                for kk, d in zip(weight.shape[2:], dilation):
                    total = d * (kk - 1)
                    if total % 2:
                        raise _unsupported("conv2d", where, "padding='same' with an even kernel pads asymmetrically")
                    pads.append(total // 2)
                padding = pads
            else:
                raise _unsupported("conv2d", where, f"padding={padding!r}")
        attrs = {"weight": w, "bias": b, "stride": _pair(stride), "padding": _pair(padding),
                 "dilation": _pair(dilation), "groups": int(groups), "bn": None}
        name = self.emit(n, self.module_path(w, ".weight"), "conv2d", [x], attrs, 4)
        self.producer_value[name] = n.output()

    def batch_norm(self, n, ins):
        where = self.where(n)
        x = self.tensor(ins[0], n)
        weight = self.param(ins[1], n, optional=True)
        bias = self.param(ins[2], n, optional=True)
        mean = self.param(ins[3], n, optional=True)
        var = self.param(ins[4], n, optional=True)
        training = self.const(ins[5], n)
        eps = float(self.const(ins[7], n))
        if training or mean is None or var is None:
            raise _unsupported("batch_norm", where, "batch statistics (training mode or no running stats)")
        attrs = {"weight": weight, "bias": bias, "running_mean": mean, "running_var": var, "eps": eps}
        producer = self.b.by_name.get(x)
        value = self.producer_value.get(x)
        if (producer is not None and producer["op"] == "conv2d" and producer["attrs"]["bn"] is None
                and value is not None and len(value.uses()) == 1):
            producer["attrs"]["bn"] = attrs
            self.env[n.output()] = _Sym("tensor", x)
        else:
            self.emit(n, self.module_path(mean, ".running_mean"), "batchnorm2d", [x], attrs, self.rank[x])
