"""The op table's building blocks: the Op record, attribute checks and shape helpers."""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import numpy as np

from deepcomp.runtime import reference

try:  # the extension may be missing in a broken install; the reference ops still run a graph
    from deepcomp import _native
except ImportError:  # pragma: no cover - exercised only without a build
    _native = None


class Bad(Exception):
    """A node the op's rules reject; the planner turns it into a DczError naming the node."""


class BuildContext(NamedTuple):
    """What an op's build and reference get besides its attributes."""

    name: str                      # the node
    tensors: Any                   # deepcomp.runtime.tensors.Tensors
    ins: tuple                     # input shapes (no batch)
    out: tuple                     # output shape (no batch)
    donate: tuple                  # per input: may the op overwrite it
    act: tuple | None              # (lo, hi): a clamp (ReLU, ReLU6) fused into this op's kernel
    record: Callable               # record(kernel, LayerInfo fields) for weighted layers
    int8: dict | None = None       # an int8 node's fusion as planned (deepcomp.runtime.plan_int8)


class Op(NamedTuple):
    name: str
    arity: tuple[int, int | None]
    attrs: dict
    shape: Callable
    reference: Callable
    doc: str
    build: Callable | None = None
    native: str | None = None
    buffer: str = "fresh"
    inplace: Callable | None = None
    epilogue: Callable | None = None
    since: int = 1
    attr_since: dict | None = None  # attribute -> the graph version that introduced it (when set)

    def version_of(self, attrs: dict) -> int:
        """The lowest graph version that can hold a node of this op with these attributes."""
        later = [v for k, v in (self.attr_since or {}).items() if attrs.get(k) is not None]
        return max([self.since, *later])


def kernel(name: str):
    """The native implementation of a binding when the extension has it, else the numpy reference's."""
    impl = getattr(_native, name, None) if _native is not None else None
    return impl if impl is not None else getattr(reference, name)


# --------------------------------------------------------------------------------------------------
# attribute checks: each returns the normalised value or raises Bad

REQUIRED = object()


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def integer(lo: int | None = 0):
    def check(v, what):
        if not _is_int(v) or (lo is not None and v < lo):
            raise Bad(f"{what} must be an integer{'' if lo is None else f' >= {lo}'}, got {v!r}")
        return v
    return check


def pair(lo: int = 0):
    def check(v, what):
        if not isinstance(v, list) or len(v) != 2 or not all(_is_int(a) and a >= lo for a in v):
            raise Bad(f"{what} must be a pair of integers >= {lo}, got {v!r}")
        return (v[0], v[1])
    return check


def number(lo: float | None = None):
    def check(v, what):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or \
                (lo is not None and not v >= lo):
            raise Bad(f"{what} must be a finite number{'' if lo is None else f' >= {lo}'}, got {v!r}")
        return float(v)
    return check


def flag(v, what):
    if not isinstance(v, bool):
        raise Bad(f"{what} must be true or false, got {v!r}")
    return v


def tensor_name(v, what):
    if not isinstance(v, str):
        raise Bad(f"{what} must name a tensor, got {v!r}")
    return v


def optional(check):
    def opt(v, what):
        return None if v is None else check(v, what)
    return opt


def batchnorm(v, what):
    if not isinstance(v, dict):
        raise Bad(f"{what} must be an object")
    return check_attrs(BN_ATTRS, v, what)


def check_attrs(spec: dict, given: dict, where: str) -> dict:
    if not isinstance(given, dict):
        raise Bad("attrs must be an object")
    out = {}
    for key, (check, default) in spec.items():
        if key not in given:
            if default is REQUIRED:
                raise Bad(f"misses the attribute {key!r}")
            out[key] = default
        else:
            out[key] = check(given[key], f"{key} of {where!r}")
    return out


BN_ATTRS = {"weight": (optional(tensor_name), None), "bias": (optional(tensor_name), None),
            "running_mean": (tensor_name, REQUIRED), "running_var": (tensor_name, REQUIRED),
            "eps": (number(0), REQUIRED)}


# --------------------------------------------------------------------------------------------------
# shape helpers

def need_rank(x: tuple, r: int) -> None:
    if len(x) != r:
        raise Bad(f"gets a tensor of shape [N, {', '.join(map(str, x))}], needs rank {r + 1}")


def same(a, ins, ts):
    return ins[0]


def choice(*values):
    def check(v, what):
        if v not in values:
            raise Bad(f"{what} must be one of {', '.join(map(repr, values))}, got {v!r}")
        return v
    return check


def dims_list(v, what):
    if not isinstance(v, list) or not v or not all(_is_int(d) and d >= 0 for d in v) or len(set(v)) != len(v):
        raise Bad(f"{what} must be a list of distinct dimensions, got {v!r}")
    return tuple(v)


def shape_list(v, what):
    if not isinstance(v, list) or not all(_is_int(d) and d >= 1 for d in v):
        raise Bad(f"{what} must be a list of sizes >= 1, got {v!r}")
    return tuple(v)


def _broadcast(ins):
    if len({len(s) for s in ins}) != 1:
        raise Bad(f"combines shapes {[list(s) for s in ins]} of different ranks")
    try:
        return tuple(np.broadcast_shapes(*ins))
    except ValueError:
        raise Bad(f"cannot broadcast shapes {[list(s) for s in ins]}") from None


