"""Dependency tracing: which channels of which layers must be removed together.

The model is traced with torch.fx and run once on an example input to learn every tensor's shape.
Each tensor then gets a *layout*: the channel spaces its dimension 1 is made of, in order, each with
the number of features one channel takes there (1 in a feature map, H*W after flattening an H x W
map). Walking the graph in order:

- a Conv2d (groups=1) or a Linear opens a new space for its output channels, and *consumes* the
  spaces of its input (their input columns shrink with them);
- per-channel operations (BatchNorm, activations, pooling, dropout, a depthwise convolution) pass the
  layout on; a flatten multiplies the features per channel;
- an element-wise add / sub / mul / div of two tensors with the same channels ties their spaces into
  one (a union-find): the channels of a ResNet or MobileNetV2 residual stage are one space;
- a concat along channels lays its inputs' spaces side by side, so a DenseNet layer's new features
  keep their own space and every later BatchNorm and convolution that reads them is a member of it,
  at the offset where the concat put them;
- a space whose channels reach the model's output, its input, or an operation not listed here is
  *fixed*: none of its channels can go.

Every space that is not fixed and has a producer is one :class:`ChannelGroup`: its channels are
scored together and removed together from every member.
"""

from __future__ import annotations

import contextlib
import math
import operator
from dataclasses import dataclass, field
from typing import NamedTuple, Sequence

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from deepcomp.errors import InputShapeError, RecipeError, UnsupportedOpError

BN = (nn.BatchNorm1d, nn.BatchNorm2d)
PASS_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid, nn.Tanh,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout,
    nn.Identity, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Upsample,
)
PASS_FUNCTIONS = {
    F.relu, torch.relu, F.relu_, torch.relu_, F.relu6, F.leaky_relu, F.elu, F.selu, F.gelu, F.silu, F.mish,
    F.hardswish, F.hardsigmoid, F.hardtanh, F.softplus, torch.sigmoid, torch.tanh, F.sigmoid, F.tanh,
    F.dropout, F.dropout1d, F.dropout2d, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d,
    F.interpolate, F.pad,  # spatial; a pad that adds channels fails the width check made after every node
}
PASS_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "contiguous", "clone", "detach"}
ELEMENTWISE_FUNCTIONS = {
    operator.add, operator.iadd, torch.add, operator.sub, operator.isub, torch.sub,
    operator.mul, operator.imul, torch.mul, operator.truediv, operator.itruediv, torch.div,
}
ELEMENTWISE_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_"}
HARMLESS_METHODS = {"size", "dim"}


class Slot(NamedTuple):
    """Where a group's channels sit in one layer: channel c is index ``offset + c * per_channel + j``
    (j < per_channel) of the layer's output rows (producer, depthwise, BatchNorm) or input columns
    (consumer)."""

    layer: str
    offset: int = 0
    per_channel: int = 1


@dataclass
class ChannelGroup:
    """Channels that are scored and removed as one, and every layer that shrinks with them.

    ``producers`` are the Conv2d / Linear layers whose output rows are these channels (several when
    residual adds tie them), ``depthwise`` the depthwise convolutions they pass through,
    ``bns`` the BatchNorms that normalise them, ``consumers`` the layers whose input columns read them.
    The group is named after its first producer.
    """

    name: str
    channels: int
    producers: list[Slot] = field(default_factory=list)
    depthwise: list[Slot] = field(default_factory=list)
    bns: list[Slot] = field(default_factory=list)
    consumers: list[Slot] = field(default_factory=list)
    direct_bns: dict[str, str] = field(default_factory=dict)  # producer -> the BatchNorm right after it

    @property
    def layers(self) -> list[str]:
        """Every layer whose output channels belong to the group (producers and depthwise)."""
        return [s.layer for s in self.producers + self.depthwise]


# --- the example input and the trace --------------------------------------------------------------

def example_input(model: nn.Module, example_input_shape, example_input=None) -> torch.Tensor:
    """A zero batch of one sample: ``example_input_shape`` is the shape of one sample, as deepcomp's
    models record it ((3, 224, 224)). (A shape with its batch dimension, (1, 3, 224, 224), is tried
    as such when the model does not run on a batch of one sample of that shape.)"""
    if example_input is not None:
        if not isinstance(example_input, torch.Tensor):
            raise InputShapeError(f"example_input must be a torch.Tensor batch, got {type(example_input).__name__}")
        return example_input
    if example_input_shape is None:
        raise InputShapeError("structured pruning needs example_input_shape, the shape of one input sample "
                              "such as (3, 224, 224), to follow shapes through the model")
    try:
        shape = tuple(int(s) for s in example_input_shape)
    except (TypeError, ValueError):
        raise InputShapeError(f"example_input_shape must be a tuple of ints such as (3, 224, 224), "
                              f"got {example_input_shape!r}") from None
    if not shape or min(shape) < 1:
        raise InputShapeError(f"example_input_shape must be positive sizes such as (3, 224, 224), got {shape}")
    p = next(iter(model.parameters()), None)
    return torch.zeros((1, *shape), dtype=p.dtype if p is not None else torch.float32,
                       device=p.device if p is not None else "cpu")


def _first_line(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


@contextlib.contextmanager
def _in_mode(model: nn.Module, training: bool):
    """Every module in train or eval mode for the block, then back to the mode each had."""
    modes = {m: m.training for m in model.modules()}
    model.train(training)
    try:
        yield
    finally:
        for m, t in modes.items():
            m.training = t


def trace(model: nn.Module) -> torch.fx.GraphModule:
    """The model's graph, traced in training mode so that branches taken only in training (auxiliary
    classifiers) are seen too."""
    try:
        with _in_mode(model, True):
            return torch.fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many types for untraceable code
        raise UnsupportedOpError(
            f"structured pruning needs a torch.fx-traceable model; tracing {type(model).__name__} failed "
            f"({_first_line(exc)}). Remove data-dependent control flow from forward(), or prune with "
            "unstructured masks instead") from None


class _ShapeRecorder(torch.fx.Interpreter):
    """Runs the graph and stores each tensor's shape in ``node.meta['dc_shape']``, without the
    traceback printing of torch.fx's ShapeProp."""

    def __init__(self, gm):
        super().__init__(gm)
        self.extra_traceback = False

    def run_node(self, n):
        result = super().run_node(n)
        if isinstance(result, torch.Tensor):
            n.meta["dc_shape"] = tuple(result.shape)
        return result


def _run_example(gm: torch.fx.GraphModule, model: nn.Module, x: torch.Tensor) -> None:
    try:
        with _in_mode(model, False), torch.no_grad():
            _ShapeRecorder(gm).run(x)
    except Exception as exc:
        raise InputShapeError(
            f"an example input of shape {tuple(x.shape)} (batch first) does not run through "
            f"{type(model).__name__} ({_first_line(exc)}); pass example_input_shape, the shape of one "
            "sample such as (3, 224, 224)") from None


def traced_with_shapes(model: nn.Module, example_input_shape=None, example=None) -> torch.fx.GraphModule:
    gm = trace(model)
    if example is not None or example_input_shape is None:
        _run_example(gm, model, example_input(model, example_input_shape, example))
        return gm
    x = example_input(model, example_input_shape)
    try:
        _run_example(gm, model, x)
    except InputShapeError as first:
        try:
            _run_example(gm, model, x[0])  # the shape already had its batch dimension
        except InputShapeError:
            raise first from None
    return gm


def _shape(node) -> tuple[int, ...] | None:
    return node.meta.get("dc_shape") if isinstance(node, torch.fx.Node) else None


# --- channel spaces -------------------------------------------------------------------------------

class _Spaces:
    """Union-find over channel spaces; a root may be fixed, with the reason."""

    def __init__(self):
        self.parent: list[int] = []
        self.size: list[int] = []
        self.fixed: dict[int, str] = {}

    def new(self, size: int, fixed: str | None = None) -> int:
        self.parent.append(len(self.parent))
        self.size.append(size)
        if fixed:
            self.fixed[len(self.parent) - 1] = fixed
        return len(self.parent) - 1

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        a, b = sorted((self.find(a), self.find(b)))  # the older root stays: it names the group
        if a != b:
            self.parent[b] = a
            if b in self.fixed:
                self.fixed.setdefault(a, self.fixed.pop(b))

    def fix(self, i: int, why: str) -> None:
        self.fixed.setdefault(self.find(i), why)


Layout = tuple  # of (space id, features per channel)


def _what(node) -> str:
    if node.op == "call_module":
        return str(node.target)
    return getattr(node.target, "__name__", str(node.target))


class _Tracer:
    def __init__(self, gm: torch.fx.GraphModule, modules: dict[str, nn.Module]):
        self.gm, self.modules = gm, modules
        self.spaces = _Spaces()
        self.layout: dict[torch.fx.Node, Layout] = {}
        self.origin: dict[torch.fx.Node, str] = {}  # node -> producer it comes from through pass-through ops
        self.module_in: dict[str, Layout] = {}
        self.module_out: dict[str, int] = {}
        self.slots: list[tuple[int, str, Slot]] = []  # (space, role, slot)
        self.direct_bn: dict[str, str] = {}
        self.skipped: dict[str, str] = {}
        owners: dict[int, list[str]] = {}
        for name, mod in modules.items():
            for p in mod.parameters(recurse=False):
                owners.setdefault(id(p), []).append(name)
        self.tied = {n for names in owners.values() if len(names) > 1 for n in names}  # cut once, not per owner

    # layouts
    def width(self, layout: Layout) -> int:
        return sum(self.spaces.size[s] * k for s, k in layout)

    def fix_inputs(self, node, why: str) -> None:
        for a in node.all_input_nodes:
            for s, _ in self.layout.get(a, ()):
                self.spaces.fix(s, why)

    def opaque(self, node, why: str) -> None:
        """An operation the tracer does not follow: its inputs' channels are fixed, so is its output."""
        self.fix_inputs(node, why)
        shape = _shape(node)
        if shape is not None and len(shape) >= 2:
            self.layout[node] = ((self.spaces.new(shape[1], f"its channels come from {_what(node)}"), 1),)

    def unify(self, a: Layout, b: Layout, why: str) -> None:
        size = self.spaces.size
        if len(a) == len(b) and all(size[s] == size[t] and k == m for (s, k), (t, m) in zip(a, b)):
            for (s, _), (t, _) in zip(a, b):
                self.spaces.union(s, t)
        else:
            for s, _ in a + b:
                self.spaces.fix(s, why)

    def slots_for(self, role: str, name: str, layout: Layout) -> None:
        offset = 0
        for s, k in layout:
            self.slots.append((s, role, Slot(name, offset, k)))
            offset += self.spaces.size[s] * k

    def module_input(self, name: str, layout: Layout, role: str) -> None:
        """Record the module's input; a module called again must see the same channels."""
        if name in self.module_in:
            self.unify(self.module_in[name], layout, f"{name} is called on different channels")
        else:
            self.module_in[name] = layout
            self.slots_for(role, name, layout)

    def pass_on(self, node, src) -> None:
        self.layout[node] = self.layout[src]
        if src in self.origin:
            self.origin[node] = self.origin[src]

    # the walk
    def run(self) -> None:
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                shape = _shape(node)
                if shape is not None and len(shape) >= 2:
                    self.layout[node] = ((self.spaces.new(shape[1], "its channels meet the model's input"), 1),)
            elif node.op == "output":
                self.fix_inputs(node, "its channels reach the model's output")
            elif node.op == "get_attr":
                self.opaque(node, "a parameter used in forward()")
            elif node.op == "call_module":
                self.call_module(node)
            else:
                self.call_function(node)
            shape = _shape(node)
            if node in self.layout and (shape is None or len(shape) < 2 or shape[1] != self.width(self.layout[node])):
                self.opaque(node, f"{_what(node)} changes the channels in a way pruning does not follow")

    def tensor_input(self, node):
        """The node's single tensor input (its first argument), or None."""
        ins = node.all_input_nodes
        if len(ins) == 1 and node.args and node.args[0] is ins[0] and ins[0] in self.layout:
            return ins[0]
        return None

    def call_module(self, node) -> None:
        name, mod = node.target, self.modules[node.target]
        src = self.tensor_input(node)
        if src is None or len(node.args) > 1 or node.kwargs:
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                self.skipped.setdefault(name, "it is called in a way channel pruning does not follow")
            return self.opaque(node, f"it feeds {name} in a way channel pruning does not follow")
        layout, shape = self.layout[src], _shape(src)
        if name in self.tied:
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                self.skipped[name] = "it shares a parameter with another layer"
            return self.opaque(node, f"it feeds {name}, which shares a parameter with another layer")
        if isinstance(mod, nn.Conv2d):
            self.conv(node, name, mod, layout)
        elif isinstance(mod, nn.Linear):
            if len(shape) != 2:
                self.skipped[name] = "a Linear is pruned only when its input is (batch, features)"
                return self.opaque(node, f"it feeds Linear {name} on a tensor that is not (batch, features)")
            self.producer(node, name, mod.out_features, layout)
        elif isinstance(mod, BN):
            self.module_input(name, layout, "bn")
            if src in self.origin and layout == ((self.module_out[self.origin[src]], 1),):
                self.direct_bn.setdefault(self.origin[src], name)
            self.layout[node] = layout
        elif isinstance(mod, PASS_MODULES):
            self.pass_on(node, src)
        elif isinstance(mod, nn.Flatten):
            self.flatten(node, src, mod.start_dim, mod.end_dim)
        else:
            self.opaque(node, f"its channels go through {type(mod).__name__} {name}, which channel pruning "
                              "does not handle")

    def conv(self, node, name: str, mod: nn.Conv2d, layout: Layout) -> None:
        if mod.groups == 1:
            return self.producer(node, name, mod.out_channels, layout)
        if mod.groups == mod.in_channels == mod.out_channels:  # depthwise: channel c stays channel c
            self.module_input(name, layout, "depthwise")
            self.layout[node] = layout
            return
        self.skipped[name] = f"grouped convolutions (groups={mod.groups}) are not pruned"
        self.opaque(node, f"its channels feed grouped convolution {name}")

    def producer(self, node, name: str, channels: int, layout: Layout) -> None:
        self.module_input(name, layout, "consumer")
        if name not in self.module_out:
            self.module_out[name] = self.spaces.new(channels)
            self.slots.append((self.module_out[name], "producer", Slot(name)))
        self.layout[node] = ((self.module_out[name], 1),)
        self.origin[node] = name

    def flatten(self, node, src, start: int, end: int) -> None:
        shape = _shape(src)
        if start != 1 or end not in (-1, len(shape) - 1):
            return self.opaque(node, "it is flattened in a way that mixes it with other dimensions")
        S = math.prod(shape[2:])
        self.layout[node] = tuple((s, k * S) for s, k in self.layout[src])

    def call_function(self, node) -> None:
        t, method = node.target, node.op == "call_method"
        if (method and t in HARMLESS_METHODS) or (not method and t is getattr):
            return
        if (method and t == "flatten") or (not method and t is torch.flatten):
            src = self.tensor_input(node)
            if src is None:
                return self.opaque(node, "flatten")
            args = list(node.args[1:])
            start = node.kwargs.get("start_dim", args[0] if args else 0)
            end = node.kwargs.get("end_dim", args[1] if len(args) > 1 else -1)
            return self.flatten(node, src, start, end)
        if method and t in ("view", "reshape") or not method and t is torch.reshape:
            return self.reshape(node)
        if (t in PASS_METHODS if method else t in PASS_FUNCTIONS):
            src = self.tensor_input(node)
            return self.pass_on(node, src) if src is not None else self.opaque(node, _what(node))
        if (t in ELEMENTWISE_METHODS if method else t in ELEMENTWISE_FUNCTIONS):
            return self.elementwise(node)
        if not method and t in (torch.cat, torch.concat):
            return self.cat(node)
        if (method and t == "mean") or (not method and t is torch.mean):
            return self.spatial_mean(node)
        if _shape(node) is None and node.users and all(u.op == "output" for u in node.users):
            return self.fix_inputs(node, "its channels reach the model's output")  # e.g. a named tuple of outputs
        self.opaque(node, f"its channels go through {_what(node)}, which channel pruning does not handle")

    def reshape(self, node) -> None:
        src = node.args[0] if node.args else None
        in_shape, out_shape = _shape(src), _shape(node)
        if src in self.layout and out_shape is not None and len(out_shape) == 2 \
                and out_shape[0] == in_shape[0] and out_shape[1] == math.prod(in_shape[1:]):
            return self.flatten(node, src, 1, -1)
        self.opaque(node, f"it is reshaped ({node.target}) other than into (batch, features)")

    def elementwise(self, node) -> None:
        tensors = [a for a in node.all_input_nodes if _shape(a) is not None]
        if len(tensors) == 1 and tensors[0] in self.layout:
            return self.pass_on(node, tensors[0])  # with a scalar
        if len(tensors) != 2 or not all(a in self.layout for a in tensors):
            return self.opaque(node, _what(node))
        a, b = tensors
        sa, sb = _shape(a), _shape(b)
        if len(sa) != len(sb):
            return self.opaque(node, f"{_what(node)} of tensors of different ranks")
        if sa[1] == sb[1]:
            self.unify(self.layout[a], self.layout[b], f"its channels are joined ({_what(node)}) with channels "
                                                       "split differently")
            self.layout[node] = self.layout[a]
        elif 1 in (sa[1], sb[1]):  # one side broadcast over the channels
            one, full = (a, b) if sa[1] == 1 else (b, a)
            self.fix_inputs_of(one, f"it is broadcast over channels by {_what(node)}")
            self.layout[node] = self.layout[full]
        else:
            self.opaque(node, _what(node))

    def fix_inputs_of(self, node, why: str) -> None:
        for s, _ in self.layout[node]:
            self.spaces.fix(s, why)

    def cat(self, node) -> None:
        tensors = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        shape = _shape(node)
        if not isinstance(tensors, (list, tuple)) or not all(a in self.layout for a in tensors) \
                or not isinstance(dim, int) or shape is None:
            return self.opaque(node, "cat")
        dim %= len(shape)
        if dim == 1:
            self.layout[node] = tuple(seg for a in tensors for seg in self.layout[a])
        elif dim == 0:
            for a in tensors[1:]:
                self.unify(self.layout[tensors[0]], self.layout[a], "it is concatenated over the batch with "
                                                                    "channels split differently")
            self.layout[node] = self.layout[tensors[0]]
        else:
            self.opaque(node, f"cat along dimension {dim}")

    def spatial_mean(self, node) -> None:
        src = self.tensor_input(node)
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        dims = (dims,) if isinstance(dims, int) else dims
        if src is None or not isinstance(dims, (list, tuple)) or not dims:
            return self.opaque(node, "mean")
        ndim = len(_shape(src))
        if all(isinstance(d, int) and d % ndim >= 2 for d in dims):
            return self.pass_on(node, src)
        self.opaque(node, "mean over the channels")

    # the result
    def groups(self) -> tuple[dict[str, ChannelGroup], dict[str, str]]:
        by_root: dict[int, dict[str, list[Slot]]] = {}
        for space, role, slot in self.slots:
            by_root.setdefault(self.spaces.find(space), {}).setdefault(role, []).append(slot)
        groups, skipped = {}, dict(self.skipped)
        for root, members in sorted(by_root.items()):
            producers = members.get("producer", [])
            if not producers:
                continue
            why = self.spaces.fixed.get(root)
            if why is None and not members.get("consumer"):
                why = "no layer consumes its channels"
            if why is not None:
                for p in producers:
                    skipped.setdefault(p.layer, why)
                continue
            name = producers[0].layer
            groups[name] = ChannelGroup(
                name, self.spaces.size[root], producers, members.get("depthwise", []), members.get("bn", []),
                members.get("consumer", []), {p.layer: self.direct_bn[p.layer] for p in producers
                                             if p.layer in self.direct_bn})
        return groups, skipped


def find_channel_groups(
    model: nn.Module,
    *,
    example_input_shape: Sequence[int] | None = None,
    example_input: torch.Tensor | None = None,
) -> tuple[dict[str, ChannelGroup], dict[str, str]]:
    """The channel groups of the model (by name), and the Conv2d / Linear layers whose output channels
    cannot be pruned, with the reason."""
    if not isinstance(model, nn.Module):
        raise RecipeError(f"structured pruning takes an nn.Module, got {type(model).__name__}")
    gm = traced_with_shapes(model, example_input_shape, example_input)
    tracer = _Tracer(gm, dict(gm.named_modules()))
    tracer.run()
    return tracer.groups()
