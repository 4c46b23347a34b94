"""The graph builder every capture front shares (torch.fx, TorchScript, and any later one: ONNX).

A front walks its source graph and calls :meth:`GraphBuilder.add` with one op of the runtime's table
(deepcomp.runtime.ops) per operation, passing the names the builder returned for the op's inputs.
The builder checks the attributes and infers the output shape with the runtime's own rules, so a
capture fails where the model has something the runtime would reject, and fronts can ask any
value's shape. Helpers here turn source-level conventions into graph attributes once for every
front (``padding='same'``, BatchNorm statistics, negative dimensions, constants broadcast over the
batch). :meth:`result` runs the graph passes (dead nodes out, BatchNorm folded into the convolution
before it) and returns the GRAPH object.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from deepcomp.errors import UnsupportedOpError
from deepcomp.runtime.ops import OPS, Bad, check_attrs, graph_version

GRAPH_FORMAT = "deepcomp-graph"
GRAPH_VERSION = 4  # the newest; a graph records the lowest version it needs (ops.graph_version)


class Tensor(NamedTuple):
    """A value of the graph being built: its node name and its shape without the batch dimension."""

    name: str
    shape: tuple

    @property
    def rank(self) -> int:  # with the batch dimension
        return len(self.shape) + 1


class GraphBuilder:
    """Accumulates the nodes of one graph. ``tensor_shapes`` maps every tensor the file will hold
    (the model's state_dict keys) to its shape; ``unsupported(op, where, why)`` makes the front's
    error (it lists what that front supports)."""

    def __init__(self, input_name: str, input_shape, tensor_shapes: dict, unsupported: Callable):
        self.input = Tensor(input_name, tuple(int(d) for d in input_shape))
        self.tensor_shapes = {k: tuple(int(d) for d in v) for k, v in tensor_shapes.items()}
        self.unsupported = unsupported
        self.nodes: list[dict] = []
        self.used = {input_name}

    def _unique(self, base: str) -> str:
        name, k = base, 1
        while name in self.used:
            name = f"{base}#{k}"
            k += 1
        self.used.add(name)
        return name

    def tensor_shape(self, key: str, where: str) -> tuple:
        if key not in self.tensor_shapes:
            raise UnsupportedOpError(
                f"the tensor {key!r} used at '{where}' is not in the model's state_dict; deepcomp needs "
                "every weight to be a registered parameter or buffer")
        return self.tensor_shapes[key]

    def add(self, op: str, inputs: list, attrs: dict, where: str, base: str | None = None) -> Tensor:
        """Append one node; returns its value. ``inputs`` are Tensors of this builder."""
        spec = OPS[op]
        try:
            checked = check_attrs(spec.attrs, attrs, where)
            shape = tuple(spec.shape(checked, [t.shape for t in inputs], lambda k: self.tensor_shape(k, where)))
        except Bad as e:
            raise self.unsupported(op, where, str(e)) from None
        if any(d < 1 for d in shape):
            raise self.unsupported(op, where, f"produces the empty shape {list(shape)}")
        name = self._unique(base or where)
        self.nodes.append({"name": name, "op": op, "inputs": [t.name for t in inputs], "attrs": attrs})
        return Tensor(name, shape)

    # -- conventions every front needs ----------------------------------------------------------

    def dim(self, d: int, t: Tensor, where: str, batch_ok: bool = False) -> int:
        """A dimension index of ``t`` (negative counts from the end), never the batch unless allowed."""
        r = t.rank
        if not -r <= d < r:
            raise self.unsupported("dim", where, f"dimension {d} of a rank-{r} tensor")
        d = d + r if d < 0 else d
        if d == 0 and not batch_ok:
            raise self.unsupported("dim", where, "an operation along the batch dimension")
        return d

    def constant(self, key: str, like_rank: int, where: str) -> Tensor:
        """The stored tensor ``key`` as a value broadcast over the batch, right-aligned against a
        tensor of rank ``like_rank`` (a rank-equal tensor's leading dimension must be 1)."""
        shape = self.tensor_shape(key, where)
        if len(shape) == like_rank:
            if shape[0] != 1:
                raise self.unsupported("constant", where, f"a tensor of shape {list(shape)} that varies over the batch")
            shape = shape[1:]
        elif len(shape) < like_rank:
            shape = (1,) * (like_rank - 1 - len(shape)) + shape
        else:
            raise self.unsupported("constant", where, f"a tensor of rank {len(shape)} against rank {like_rank}")
        return self.add("constant", [self.input], {"tensor": key, "shape": list(shape)}, where)

    def result(self, output: Tensor) -> dict:
        graph = {"format": GRAPH_FORMAT, "version": GRAPH_VERSION,
                 "input": {"name": self.input.name, "shape": list(self.input.shape)},
                 "output": output.name, "nodes": self.nodes}
        graph = channels_first(fold_batchnorm(drop_dead(graph)))
        return {**graph, "version": graph_version(graph["nodes"])}


class Handlers(dict):
    """A front's handler table (key -> handler) that also collects the graph ops its handlers emit
    (``emits``, shared by a front's tables; tests/test_ops.py checks every op has a capture rule)."""

    def __init__(self, emits: set):
        super().__init__()
        self.emits = emits

    def register(self, *keys, emits: tuple = ()):
        def register(fn):
            for k in keys:
                self[k] = fn
            self.emits.update(emits)
            return fn
        return register


def pair(v, what: str = "value") -> list[int]:
    if isinstance(v, int):
        return [int(v), int(v)]
    if isinstance(v, (tuple, list)) and len(v) in (1, 2):
        return [int(v[0]), int(v[-1])]
    raise UnsupportedOpError(f"expected an int or a pair for {what}, got {v!r}")


def same_padding(kernel_size, dilation, unsupported: Callable) -> list[int]:
    """The symmetric padding of ``padding='same'`` (stride 1); an even kernel pads asymmetrically."""
    pads = []
    for k, d in zip(pair(kernel_size), pair(dilation)):
        total = d * (k - 1)
        if total % 2:
            raise unsupported("padding='same' with an even kernel pads asymmetrically")
        pads.append(total // 2)
    return pads


def conv_padding(padding, kernel_size, dilation, unsupported: Callable) -> list[int]:
    if padding == "valid":
        return [0, 0]
    if padding == "same":
        return same_padding(kernel_size, dilation, unsupported)
    if isinstance(padding, str):
        raise unsupported(f"padding={padding!r}")
    return pair(padding, "padding")


def bn_attrs(weight, bias, running_mean, running_var, eps) -> dict:
    return {"weight": weight, "bias": bias, "running_mean": running_mean, "running_var": running_var,
            "eps": float(eps)}


# --------------------------------------------------------------------------------------------------
# graph passes


def _uses(graph: dict) -> dict[str, int]:
    uses = {graph["output"]: 1}
    for node in graph["nodes"]:
        for i in node["inputs"]:
            uses[i] = uses.get(i, 0) + 1
    return uses


def drop_dead(graph: dict) -> dict:
    """Remove nodes the output does not depend on (a front may emit values nothing reads)."""
    live = {graph["output"]}
    for node in reversed(graph["nodes"]):
        if node["name"] in live:
            live.update(node["inputs"])
    graph["nodes"] = [n for n in graph["nodes"] if n["name"] in live]
    return graph


def fold_batchnorm(graph: dict) -> dict:
    """Record each batchnorm2d on the conv2d before it when nothing else reads that conv's output;
    the weights stay unfolded in the file (decompressing returns the original state_dict) and the
    runtime folds the statistics into a per-channel scale and shift."""
    uses = _uses(graph)
    by_name = {node["name"]: node for node in graph["nodes"]}
    rename: dict[str, str] = {}
    kept = []
    for node in graph["nodes"]:
        node["inputs"] = [rename.get(i, i) for i in node["inputs"]]
        if node["op"] == "batchnorm2d":
            src = node["inputs"][0]
            conv = by_name.get(src)
            if conv is not None and conv["op"] == "conv2d" and conv["attrs"].get("bn") is None and uses.get(src) == 1:
                conv["attrs"]["bn"] = node["attrs"]
                rename[node["name"]] = src
                continue
        kept.append(node)
    graph["nodes"] = kept
    graph["output"] = rename.get(graph["output"], graph["output"])
    return graph


# ops that act on the last dimension alone, elementwise or along it: they commute with moving the
# channels from dimension 1 to the end, once told which dimension the channels are
_UNARY = {"relu", "clamp", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid", "gelu"}


def channels_first(graph: dict) -> dict:
    """``permute(0, 2, 3, 1) -> layernorm / linear / activations -> permute(0, 3, 1, 2)`` (ConvNeXt's
    blocks and its LayerNorm2d, written channels-last) becomes the same chain over dimension 1 of the
    NCHW tensor: the permutes go, layernorm gets ``dim`` 1, linear gets ``dim`` 1 (a 1x1 convolution
    on the planes instead of a matrix on H*W token rows). Only chains whose inner values feed
    nothing else are rewritten."""
    uses = _uses(graph)
    nodes = graph["nodes"]
    users: dict[str, list[dict]] = {}
    for n in nodes:
        for i in n["inputs"]:
            users.setdefault(i, []).append(n)
    drop, rename = set(), {}
    for start in nodes:
        if start["op"] != "permute" or start["attrs"].get("dims") != [0, 2, 3, 1] or uses.get(start["name"]) != 1:
            continue
        chain, cur = [], start
        while True:
            nxt = users.get(cur["name"], [])
            if len(nxt) != 1 or uses.get(cur["name"]) != 1:
                chain = None
                break
            cur = nxt[0]
            if cur["op"] == "permute" and cur["attrs"].get("dims") == [0, 3, 1, 2]:
                break
            ok = (cur["op"] == "layernorm" and cur["attrs"].get("dim") == 3) or \
                 (cur["op"] == "linear" and cur["attrs"].get("dim") is None) or cur["op"] in _UNARY
            if not ok or len(cur["inputs"]) != 1:
                chain = None
                break
            chain.append(cur)
        if not chain:
            continue
        end = cur
        chain[0]["inputs"] = [start["inputs"][0]]
        for n in chain:
            if n["op"] in ("layernorm", "linear"):
                n["attrs"]["dim"] = 1
        drop.update((start["name"], end["name"]))
        rename[end["name"]] = chain[-1]["name"]
    if not drop:
        return graph
    graph["nodes"] = [n for n in nodes if n["name"] not in drop]
    for n in graph["nodes"]:
        n["inputs"] = [rename.get(i, i) for i in n["inputs"]]
    graph["output"] = rename.get(graph["output"], graph["output"])
    return graph
