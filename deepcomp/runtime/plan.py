"""Planning a .dcz graph, as plain data: validation, shapes, fusion, liveness, peak memory.

:func:`make_plan` checks the GRAPH object against the op table (deepcomp.runtime.ops), infers every
node's output shape from the input shape, fuses each elementwise activation whose input feeds
nothing else into the step that produced it (a ReLU after a conv/linear goes into the kernel's
epilogue, as does a ReLU6 after a depthwise one; the others run in place on the producer's fresh output;
int8 conv / linear nodes absorb their ReLU, max-pool and the nodes their uint8 output skips first,
deepcomp.runtime.plan_int8), marks the steps that compute from stored tensors alone (static: run once,
at load), says which inputs a step may
overwrite, frees each buffer after its last use, and computes the peak activation memory of one
sample. A plan that needs more than the memory limit is refused before anything is allocated.
The executor (deepcomp.runtime.executor) turns the steps into calls.
"""

from __future__ import annotations

import math
import os
from typing import NamedTuple

from deepcomp.errors import DczError, UnsupportedOpError
from deepcomp.runtime.ops import OPS, Bad, check_attrs
from deepcomp.runtime.plan_int8 import fuse_int8

GRAPH_VERSIONS = (1, 2, 3, 4)  # version N added the ops and attributes whose ``since`` is N (docs/dcz-format.md)
_memory_limit: int | None = None


def default_memory_limit() -> int:
    """Half the machine's physical memory (or DEEPCOMP_MEMORY_LIMIT bytes when set)."""
    env = os.environ.get("DEEPCOMP_MEMORY_LIMIT")
    if env:
        try:
            return int(float(env))
        except ValueError:
            raise DczError(f"DEEPCOMP_MEMORY_LIMIT={env!r} is not a number of bytes") from None
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 8 << 30


def set_memory_limit(nbytes: int | None) -> None:
    """Largest activation memory (bytes, for a whole call) a plan may need; None: the default."""
    global _memory_limit
    _memory_limit = None if nbytes is None else int(nbytes)


def memory_limit() -> int:
    return _memory_limit if _memory_limit is not None else default_memory_limit()


class Step(NamedTuple):
    name: str                  # the graph node this step computes
    op: str
    attrs: dict                # checked, defaults filled in
    inputs: tuple              # node names (after fusion)
    ins: tuple                 # their shapes (no batch)
    out: tuple                 # the output shape (no batch)
    act: tuple | None          # (lo, hi): an activation fused into the op's kernel as a clamp
    epilogue: tuple            # (op, attrs) of activations applied in place to the output, in order
    donate: tuple              # per input: the step may overwrite it
    free: tuple                # buffers dropped after this step
    int8: dict | None = None   # an int8 node's fusion (deepcomp.runtime.plan_int8.fuse_int8)
    static: bool = False       # the value is the same for every input (stored tensors only): computed at load


class Plan(NamedTuple):
    input_name: str
    input_shape: tuple
    output: str                # the node whose buffer is the result (after fusion)
    output_shape: tuple
    steps: tuple
    peak_bytes: int            # activation memory of one sample at its peak (input included)


def _bad(msg: str) -> DczError:
    return DczError(f"invalid graph: {msg}")


def _nbytes(shape) -> int:
    return 4 * math.prod(shape)


def _header(g: dict) -> tuple[str, tuple, list, object]:
    if not isinstance(g, dict) or g.get("format") != "deepcomp-graph":
        raise _bad(f"format must be 'deepcomp-graph', got {g.get('format') if isinstance(g, dict) else g!r}")
    if g.get("version") not in GRAPH_VERSIONS:
        raise DczError(f"graph version {g.get('version')!r} is not supported (this runtime reads versions "
                       f"{', '.join(map(str, GRAPH_VERSIONS))}); upgrade deepcomp")
    inp = g.get("input")
    if not isinstance(inp, dict) or not isinstance(inp.get("name"), str) or not isinstance(inp.get("shape"), list):
        raise _bad("input must be an object with a name and a shape")
    shape = inp["shape"]
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape):
        raise _bad(f"input dimensions must be integers >= 1, got {shape!r}")
    if not isinstance(g.get("nodes"), list):
        raise _bad("nodes must be a list")
    return inp["name"], tuple(shape), g["nodes"], g.get("output")


def _check_nodes(nodes: list, input_name: str, input_shape: tuple, tensor_shape, version: int):
    """Validate every node; returns (checked nodes as (name, op, inputs, attrs), shapes)."""
    shapes = {input_name: input_shape}
    checked = []
    for i, node in enumerate(nodes):
        if not isinstance(node, dict):
            raise _bad(f"node {i} is not an object")
        name, op_name, inputs = node.get("name"), node.get("op"), node.get("inputs")
        if not isinstance(name, str) or name in shapes:
            raise _bad(f"node {i} has a missing or duplicate name {name!r}")
        op = OPS.get(op_name) if isinstance(op_name, str) else None
        if op is None or op.since > version:
            raise UnsupportedOpError(f"node {name!r} has the op {op_name!r}, which this runtime does not know "
                                     f"in graph version {version}; upgrade deepcomp")
        attrs = node.get("attrs")
        if isinstance(attrs, dict) and op.version_of(attrs) > version:
            raise _bad(f"node {name!r} uses attributes of graph version {op.version_of(attrs)} in a version "
                       f"{version} graph")
        if not isinstance(inputs, list) or not all(isinstance(s, str) and s in shapes for s in inputs):
            raise _bad(f"the inputs {inputs!r} of node {name!r} must name the graph input or earlier nodes")
        lo, hi = op.arity
        if len(inputs) < lo or (hi is not None and len(inputs) > hi):
            want = lo if lo == hi else f"at least {lo}" if hi is None else f"{lo} to {hi}"
            raise _bad(f"{op_name} node {name!r} takes {want} input(s), has {len(inputs)}")
        try:
            attrs = check_attrs(op.attrs, node.get("attrs", {}), name)
            out = tuple(op.shape(attrs, [shapes[s] for s in inputs], lambda t: tensor_shape(t, name)))
        except Bad as e:
            raise _bad(f"{op_name} node {name!r} {e}") from None
        if any(d < 1 for d in out):
            raise _bad(f"{op_name} node {name!r} produces the empty shape {list(out)}")
        shapes[name] = out
        checked.append((name, op_name, tuple(inputs), attrs))
    return checked, shapes


def check_graph(graph: dict, tensor_shape) -> tuple[list, dict]:
    """The graph's nodes checked against the op table, as (name, op, inputs, checked attrs), and every
    node's shape (no batch): what planning starts from, for the compress side's int8 writer too."""
    input_name, input_shape, nodes, _ = _header(graph)
    return _check_nodes(nodes, input_name, input_shape, tensor_shape, graph["version"])


def static_nodes(nodes) -> set[str]:
    """The names of the nodes, given as (name, op, inputs) in order, that compute from stored tensors
    alone: a "shared" op (its input gives only the batch size: constant, window_mask) and what follows
    from such ops only (Swin v2's position-bias MLP). The executor runs them once, at load; they hold
    their value like a constant (never fused into, never overwritten)."""
    static: set[str] = set()
    for name, op, ins in nodes:
        if OPS[op].buffer == "shared" or (ins and all(s in static for s in ins)):
            static.add(name)
    return static


def make_plan(graph: dict, tensor_shape, *, limit: int | None = None) -> Plan:
    """The plan of ``graph``; ``tensor_shape(name, node)`` gives a stored tensor's shape."""
    input_name, input_shape, nodes, output = _header(graph)
    checked, shapes = _check_nodes(nodes, input_name, input_shape, tensor_shape, graph["version"])
    if not isinstance(output, str) or output not in shapes:
        raise _bad(f"output {output!r} names no node")
    op_of = {name: op for name, op, _, _ in checked}
    op_of[input_name] = None
    src_of = {name: ins for name, _, ins, _ in checked}

    static = static_nodes((name, op, ins) for name, op, ins, _ in checked)

    uses: dict[str, int] = {output: 1}
    for _, _, ins, _ in checked:
        for s in ins:
            uses[s] = uses.get(s, 0) + 1

    # int8 nodes first: each absorbs its ReLU / max-pool and the nodes its uint8 output skips
    alias, int8_of = fuse_int8(checked, shapes, output)
    for n, src in alias.items():
        uses[src] = uses.get(n, 0)

    def res(n: str) -> str:
        while n in alias:
            n = alias[n]
        return n

    def fresh(n: str) -> bool:
        """n's output is a buffer nobody else holds (a view of a fresh buffer read only by n counts)."""
        op = op_of[n]
        if op is None or OPS[op].buffer == "shared" or n in static:
            return False
        if OPS[op].buffer == "view":
            src = res(src_of[n][0])
            return fresh(src) and uses.get(src, 0) == 1
        return True

    # fusion: an activation whose input feeds nothing else runs in place in its producer's step
    act_of: dict[str, tuple] = {}
    epilogue: dict[str, list] = {}
    attrs_of = {name: attrs for name, _, _, attrs in checked}
    ins_of = {name: [shapes[s] for s in ins] for name, _, ins, _ in checked}
    for name, op, ins, attrs in checked:
        if OPS[op].inplace is None or name in alias:
            continue
        src = res(ins[0])
        if src == input_name or src in int8_of or uses.get(src, 0) != 1 or not fresh(src):
            continue
        alias[name] = src
        uses[src] = uses.get(name, 0)
        producer = OPS[op_of[src]]
        act = None
        if producer.epilogue is not None and not epilogue.get(src) and src not in act_of:
            act = producer.epilogue(attrs_of[src], ins_of[src], op, attrs)
        if act is not None:
            act_of[src] = act
        else:
            epilogue.setdefault(src, []).append((op, attrs))
    out = res(output)

    kept = [(name, op, tuple(res(s) for s in ins), attrs) for name, op, ins, attrs in checked if name not in alias]
    last_use: dict[str, int] = {}
    final_uses: dict[str, int] = {out: 1}
    for i, (_, _, ins, _) in enumerate(kept):
        for s in ins:
            last_use[s] = i
            final_uses[s] = final_uses.get(s, 0) + 1
    src_of = {name: ins for name, _, ins, _ in kept}

    def owned(n: str) -> bool:
        """n's buffer may be overwritten by its single consumer."""
        if n == input_name or final_uses.get(n, 0) != 1 or OPS[op_of[n]].buffer == "shared" or n in static:
            return False
        if OPS[op_of[n]].buffer == "view":
            return owned(src_of[n][0])
        return True

    steps = []
    for i, (name, op, ins, attrs) in enumerate(kept):
        donate = tuple(owned(s) and ins.count(s) == 1 for s in ins)
        free = tuple(s for s in dict.fromkeys(ins) if last_use.get(s) == i and s != out)
        steps.append(Step(name, op, attrs, ins, tuple(shapes[s] for s in ins), shapes[name], act_of.get(name),
                          tuple(epilogue.get(name, ())), donate, free, int8_of.get(name), name in static))
    plan = Plan(input_name, input_shape, out, shapes[out], tuple(steps), peak_bytes(steps, input_name, input_shape))
    check_memory(plan, 1, limit)
    return plan


def peak_bytes(steps, input_name: str, input_shape: tuple) -> int:
    """The most activation memory alive at once for one sample: inputs, outputs, views free."""
    live = {input_name: _nbytes(input_shape)}
    peak = live[input_name]
    for s in steps:
        size = _nbytes(s.out) if OPS[s.op].buffer == "fresh" and not s.static else 0
        peak = max(peak, sum(live.values()) + size)
        live[s.name] = size
        for f in s.free:
            live.pop(f, None)
    return peak


def check_memory(plan: Plan, batch: int, limit: int | None = None) -> None:
    limit = memory_limit() if limit is None else limit
    need = plan.peak_bytes * batch
    if need > limit:
        raise DczError(f"running this graph on {batch} sample(s) of shape {list(plan.input_shape)} needs "
                       f"{need / 2**20:.0f} MiB of activations, more than the limit of {limit / 2**20:.0f} MiB; "
                       "the file may be hostile. Raise the limit with deepcomp.runtime.set_memory_limit(bytes) "
                       "or DEEPCOMP_MEMORY_LIMIT if you trust it, or use a smaller batch")
