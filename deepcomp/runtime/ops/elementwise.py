"""Elementwise ops: ReLU, the other activations, broadcasting arithmetic."""
from __future__ import annotations

from typing import Callable

import numpy as np

from deepcomp.runtime.ops.base import Bad, Op, _broadcast, _native, choice, flag, kernel, number, optional, same


# --------------------------------------------------------------------------------------------------
# elementwise and structural ops

def _relu_ref(a, cx, x):
    return np.maximum(x, np.float32(0))


def _relu_inplace(a, x):
    return kernel("relu_")(x)


def _erf(x, out):
    """erf to within 1.5e-7 (Abramowitz and Stegun 7.1.26), in place on float32 ``out``."""
    ax = np.abs(x)
    t = 1.0 / (1.0 + np.float32(0.3275911) * ax)
    poly = t * (np.float32(0.254829592) + t * (np.float32(-0.284496736) + t * (np.float32(1.421413741) + t * (
        np.float32(-1.453152027) + t * np.float32(1.061405429)))))
    np.copysign(1.0 - poly * np.exp(-ax * ax), x, out=out)
    return out


def _gelu(a, x):
    if a["approximate"] == "tanh":
        inner = x * (np.float32(0.7978845608) * (1 + np.float32(0.044715) * x * x))
        np.tanh(inner, out=inner)
    else:
        inner = _erf(x * np.float32(0.7071067812), np.empty_like(x))
    inner += 1
    inner *= np.float32(0.5)
    x *= inner
    return x


def _sigmoid(a, x):  # 0.5 (1 + tanh(x / 2)): no overflow for large |x|
    x *= np.float32(0.5)
    np.tanh(x, out=x)
    x += 1
    x *= np.float32(0.5)
    return x


def _silu(a, x):
    x *= _sigmoid(a, x.copy())
    return x


def _hardswish(a, x):
    x *= np.clip(x + 3, 0, 6) * np.float32(1 / 6)
    return x


def _hardsigmoid(a, x):
    x *= np.float32(1 / 6)
    x += np.float32(0.5)
    return np.clip(x, 0, 1, out=x)


def _clamp(a, x):
    return np.clip(x, a["min"], a["max"], out=x) if a["min"] is not None or a["max"] is not None else x


def _tanh(a, x):
    return np.tanh(x, out=x)


def _exp(a, x):
    return np.exp(x, out=x)


def activation(name: str, fn: Callable, attrs: dict | None = None, doc: str = "none", kind=None, since: int = 2) -> Op:
    """An elementwise op given by its in-place numpy form ``fn(attrs, x) -> x`` on a float32 array;
    ``kind(attrs)`` is its number for the native ``activation_`` kernel, which runs it when present."""
    def ref(a, cx, x):
        return fn(a, np.array(x, dtype=np.float32))

    def inplace(a, x):
        native = getattr(_native, "activation_", None) if _native is not None else None
        if native is not None and x.flags.c_contiguous and x.flags.writeable:
            return native(x, kind(a))
        return fn(a, x)

    def build(a, cx):
        return lambda x: inplace(a, np.array(x, dtype=np.float32))

    if kind is None:
        return Op(name, (1, 1), attrs or {}, same, ref, doc, inplace=fn, since=since)
    return Op(name, (1, 1), attrs or {}, same, ref, doc, build=build, inplace=inplace, native="activation_",
              since=since)


def _binary_shape(a, ins, ts):
    if (len(ins) == 1) != (a["scalar"] is not None):
        raise Bad("takes two inputs, or one input and a scalar")
    return ins[0] if len(ins) == 1 else _broadcast(ins)


def binary(name: str, ufunc, doc: str, since: int = 2) -> Op:
    """Elementwise arithmetic with numpy broadcasting, on two inputs or on one and a number."""
    def ref(a, cx, *xs):
        if a["scalar"] is not None:
            s = np.float32(a["scalar"])
            return ufunc(s, xs[0]) if a["reverse"] else ufunc(xs[0], s)
        return ufunc(*xs)

    def build(a, cx):
        # write into an input this step may overwrite when it has the output's full shape
        into = next((i for i, (d, s) in enumerate(zip(cx.donate, cx.ins)) if d and s == cx.out), None)
        if a["scalar"] is not None:
            s, rev = np.float32(a["scalar"]), a["reverse"]
            if into is None:
                return lambda x: ufunc(s, x) if rev else ufunc(x, s)
            return lambda x: ufunc(s, x, out=x) if rev else ufunc(x, s, out=x)
        if into is None:
            return ufunc
        return lambda x, y: ufunc(x, y, out=(x, y)[into])

    attrs = {"scalar": (optional(number()), None), "reverse": (flag, False)}
    return Op(name, (1, 2), attrs, _binary_shape, ref, doc, build=build, since=since)


TABLE = [
    Op("relu", (1, 1), {}, same, _relu_ref, "none", native="relu_", inplace=_relu_inplace),
    binary("add", np.add, "`scalar` (null, or a number added to the one input; version 2), `reverse`; two inputs "
           "broadcast as numpy does (version 1: equal shapes only)", since=1),
    activation("clamp", _clamp, {"min": (optional(number()), None), "max": (optional(number()), None)},
               "`min`, `max` (numbers or null): ReLU6, hardtanh"),
    activation("sigmoid", _sigmoid, kind=lambda a: 0),
    activation("silu", _silu, doc="none (`x * sigmoid(x)`)", kind=lambda a: 1),
    activation("tanh", _tanh),
    activation("hardswish", _hardswish, doc="none (`x * clamp(x + 3, 0, 6) / 6`)"),
    activation("hardsigmoid", _hardsigmoid, doc="none (`clamp(x / 6 + 1/2, 0, 1)`)"),
    activation("gelu", _gelu, {"approximate": (choice("none", "tanh"), "none")}, "`approximate`: \"none\" (erf) or \"tanh\"",
               kind=lambda a: 2 if a["approximate"] == "none" else 3),
    binary("mul", np.multiply, "as `add`"),
    binary("sub", np.subtract, "as `add` (`reverse`: scalar - input)"),
    binary("div", np.divide, "as `add` (`reverse`: scalar / input)"),
    activation("exp", _exp, doc="none (Swin v2's attention scale, exp of a clamped parameter); version 4", since=4),
]
