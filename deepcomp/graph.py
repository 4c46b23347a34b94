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


def _capture_script(model, input_shape: tuple) -> dict:
    raise UnsupportedOpError(
        "capturing a TorchScript module is not supported yet; save the model as a state_dict and pass "
        "--arch, or as a deepcomp model file"
    )
