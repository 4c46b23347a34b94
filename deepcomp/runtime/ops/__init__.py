"""The op table: every op a .dcz graph may hold, in one place. Deploy side: numpy and _native only.

One :class:`Op` per op says everything the rest of deepcomp needs to know about it:

- ``arity`` (min, max inputs) and ``attrs`` (each attribute's check and default);
- ``shape``: the output shape from the checked attributes and the input shapes (shapes exclude the
  batch dimension; attributes that name dimensions count it, so dim 0 is the batch);
- ``buffer``: "fresh" when the output is a new array nobody else holds (a fused activation or a
  consumer may overwrite it), "view" when it may share its first input's memory, "shared" when it
  must never be written (a constant's read-only view);
- ``reference``: the numpy semantics (torch.nn.functional's), used to test the runtime and to run
  an op that has no faster implementation;
- ``build``: the runtime implementation, made once per node at load time (None: the reference runs);
  ``native`` names the extension's binding it calls, if any;
- ``inplace``: for elementwise activations, the in-place form a producer's step applies to its own
  fresh output (fusion); ``epilogue(attrs, ins, act, act_attrs)`` says which activation the op's
  kernel applies itself, as a clamp range (lo, hi), or None;
- ``doc``: the attributes column of the op table in docs/dcz-format.md; ``since``: the graph
  version that introduced the op, ``attr_since`` the version of each attribute added later (a
  graph records the lowest version that holds it: ``graph_version``).

The capture fronts (deepcomp.capture), the dense PyTorch baseline (deepcomp.bench) and the docs are
checked against this table by tests/test_ops.py.

The entries live by kind: ``layers`` (conv2d, linear, the normalisations), ``elementwise``
(activations, arithmetic) and ``shapes`` (pools and data movement); ``base`` holds the Op record,
the attribute checks and the shape helpers.

Adding an op (``tanh`` as the example): its entry in ``elementwise.TABLE`` (a 2-line in-place numpy
function and one ``activation(...)`` line), its torch form in deepcomp.bench.TORCH_OPS (1 line), its
capture rules in deepcomp/capture/fx.py (module and function tables, 2 lines) and torchscript.py (1
name), a SAMPLES entry in tests/test_ops.py, then ``python scripts/update-op-docs.py`` for the docs row.
"""

from __future__ import annotations

from deepcomp.runtime.ops import elementwise, layers, shapes
from deepcomp.runtime.ops.base import REQUIRED, Bad, BuildContext, Op, _native, check_attrs, kernel

__all__ = ["OPS", "REQUIRED", "Bad", "BuildContext", "Op", "_native", "check_attrs", "docs_table", "graph_version",
           "kernel", "native_bindings"]

# each module's entries, in the order of docs/dcz-format.md's op table
_TABLE = [*layers.TABLE, *elementwise.TABLE, *shapes.TABLE]
OPS: dict[str, Op] = {op.name: op for op in _TABLE}


def graph_version(nodes: list) -> int:
    """The lowest graph version that holds these nodes (a writer records it, so an older reader
    refuses a graph it would misread instead of ignoring an attribute it does not know)."""
    return max([2, *(OPS[n["op"]].version_of(n["attrs"]) for n in nodes)])


def native_bindings() -> list[str]:
    """The extension's bindings the table uses that this build has (for diagnostics)."""
    names = dict.fromkeys(op.native for op in _TABLE if op.native)
    return [n for n in names if _native is not None and hasattr(_native, n)]


def docs_table() -> str:
    """The op table of docs/dcz-format.md, as this table defines it."""
    rows = ["| op | inputs | attrs |", "|---|---|---|"]
    for op in _TABLE:
        lo, hi = op.arity
        inputs = str(lo) if lo == hi else f"{lo}+" if hi is None else f"{lo}-{hi}"
        rows.append(f"| `{op.name}` | {inputs} | {op.doc} |")
    return "\n".join(rows)


if __name__ == "__main__":  # python -m deepcomp.runtime.ops: print the docs' op table
    print(docs_table())
