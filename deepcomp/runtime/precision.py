"""Which of a file's int8 nodes run on the int8 kernels on this CPU (docs/int8.md, "Per-node
precision"). Deploy side: plain data, no torch.

A file marks the nodes its recipe quantized (the ``int8`` attribute of a conv2d / linear node). The
file also holds every such node's shared fp32 weights (the codebook and cluster indices the int8
grid is derived from), so any of them can run on the fp32 kernels instead. ``int8=`` of
:func:`deepcomp.load` picks:

- ``"auto"`` (default): the file's int8 nodes, except those the rule for this CPU's int8 path says
  run slower than in fp32;
- ``"file"``: every node the file marks int8 (what the numpy integer reference defines);
- ``"off"``: none; every node fp32 on its shared weights (to tell what int8 activations cost).

A node moved to fp32 takes and gives float32; its int8 neighbours quantize their input and hand on
float32 at that border, as they do next to any fp32 op (deepcomp.runtime.plan_int8).

The rules look at chains: int8 nodes joined by uint8 edges (one hands its output to the next
without leaving uint8), as the planner forms them. A chain pays at its start, where fp32 input is
quantized and packed, and gains along its uint8 edges (a quarter of the memory traffic) and in the
int8 kernels.
"""

from __future__ import annotations

MODES = ("auto", "file", "off")

# AVX2 without VNNI: a chain pays when it holds a linear layer (the int8 linear kernels are 4-7x
# faster than fp32) or at least 2 convs; a single conv between fp32 ops (MobileNetV2's 1x1 convs
# around its fp32 depthwise ones) mostly does not repay quantizing and packing its fp32 input
# (measurements: docs/int8.md, "Per-node precision").
AVX2_MIN_CONV_CHAIN = 2


def _avx2_rule(chain: list[tuple[str, str]]) -> str | None:
    ops = [op for _, op in chain]
    if "linear" in ops or len(chain) >= AVX2_MIN_CONV_CHAIN:
        return None
    names = ", ".join(n for n, _ in chain)
    return (f"int8 chain of {len(chain)} conv(s) ({names}) between fp32 ops: on avx2 a chain shorter than "
            f"{AVX2_MIN_CONV_CHAIN} convs does not repay quantizing its input")


# int8 ISA path (deepcomp._native.int8_isa()) -> rule over one chain; a path without one runs every int8 node
RULES = {"avx2": _avx2_rule}


def check_mode(mode) -> str:
    if mode not in MODES:
        raise ValueError(f"int8 must be one of {', '.join(map(repr, MODES))}, got {mode!r}")
    return mode


def chains(steps) -> list[list[tuple[str, str]]]:
    """The planned int8 steps grouped into chains of uint8 edges, in execution order: [[(name, op)]]."""
    int8 = [s for s in steps if s.int8 is not None]
    by_input: dict[str, str] = {}
    for s in int8:
        for i in s.inputs:
            by_input[i] = s.name
    nxt = {s.name: by_input[s.name] for s in int8 if s.int8.get("out_q") is not None and s.name in by_input}
    starts = set(nxt.values())
    op = {s.name: s.op for s in int8}
    out = []
    for s in int8:
        if s.name in starts:
            continue
        chain, n = [], s.name
        while n is not None:
            chain.append((n, op[n]))
            n = nxt.get(n)
        out.append(chain)
    return out


def fp32_nodes(plan, mode: str, isa: str | None) -> dict[str, str]:
    """{int8 node that runs fp32: why}, from the plan of the file's graph."""
    check_mode(mode)
    if mode == "file":
        return {}
    rule = RULES.get(isa or "") if mode == "auto" else (lambda chain: 'int8="off"')
    out = {}
    for chain in chains(plan.steps):
        reason = rule(chain) if rule else None
        if reason:
            out.update((name, reason) for name, _ in chain)
    return out


def without_int8(graph: dict, names) -> dict:
    """A copy of ``graph`` whose nodes in ``names`` have no int8 form (the rest shared, not copied)."""
    names = set(names)
    if not names:
        return graph
    nodes = [dict(n, attrs=dict(n["attrs"], int8=None)) if n.get("name") in names else n for n in graph["nodes"]]
    return dict(graph, nodes=nodes)
