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
  version that introduced the op.

The capture fronts (deepcomp.capture), the dense PyTorch baseline (deepcomp.bench) and the docs are
checked against this table by tests/test_ops.py.

Adding an op (``tanh`` as the example): its entry here (a 2-line in-place numpy function and one
``activation(...)`` line), its torch form in deepcomp.bench.TORCH_OPS (1 line), its capture rules
in deepcomp/capture/fx.py (module and function tables, 2 lines) and torchscript.py (1 name), a
SAMPLES entry in tests/test_ops.py, then ``python scripts/update-op-docs.py`` for the docs row.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import numpy as np

from deepcomp.runtime import reference
from deepcomp.runtime.tensors import Weight, f32

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


# --------------------------------------------------------------------------------------------------
# conv2d and linear: the weighted layers, on the native sparse kernels

def _conv_shape(a, ins, ts):
    x = ins[0]
    need_rank(x, 3)
    w = ts(a["weight"])
    if len(w) != 4:
        raise Bad(f"weight {a['weight']!r} must be 4-D, is {list(w)}")
    oc, icg, kh, kw = w
    g = a["groups"]
    if icg * g != x[0] or oc % g:
        raise Bad(f"weight {list(w)} with groups={g} does not fit {x[0]} input channels")
    (sh, sw), (ph, pw), (dh, dw) = a["stride"], a["padding"], a["dilation"]
    oh = (x[1] + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (x[2] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    return (oc, oh, ow)


def _conv_parts(a, cx):
    w = cx.tensors.weight(a["weight"], cx.name)
    oc = w.shape[0]
    bias = cx.tensors.vector(a["bias"], oc, cx.name, "bias")
    scale, shift = cx.tensors.bn(a["bn"], oc, cx.name) if a["bn"] is not None else (None, None)
    return w, bias, scale, shift


def _conv_kernel(factory, a, w, bias):
    oc, icg, kh, kw = w.shape
    g = a["groups"]
    return factory(w.csr["row_ptr"], w.csr["col"], icg * g, oc, (kh, kw), a["stride"], a["padding"],
                   a["dilation"], g, values=w.csr.get("values"), cluster=w.csr.get("cluster"),
                   codebook=w.csr.get("codebook"), bias=bias)


def _depthwise(a, ins) -> bool:
    return a["groups"] > 1 and a["groups"] == ins[0][0]


def _conv_epilogue(a, ins, act, act_attrs):
    """ReLU in every conv kernel; ReLU6 / hardtanh in the depthwise one."""
    if act == "relu":
        return (0.0, math.inf)
    if act == "clamp" and _depthwise(a, ins) and _native is not None and hasattr(_native, "DepthwiseConv2d"):
        lo, hi = act_attrs["min"], act_attrs["max"]
        return (-math.inf if lo is None else lo, math.inf if hi is None else hi)
    return None


def _depthwise_build(a, cx):
    """Depthwise layers on the dense depthwise kernel, BatchNorm folded into weights and bias."""
    w = cx.tensors.array(a["weight"], cx.name)
    oc = w.shape[0]
    bias = cx.tensors.vector(a["bias"], oc, cx.name, "bias")
    bias = np.zeros(oc, np.float32) if bias is None else bias
    if a["bn"] is not None:
        scale, shift = cx.tensors.bn(a["bn"], oc, cx.name)
        w, bias = w * scale[:, None, None, None], bias * scale + shift
    k = _native.DepthwiseConv2d(f32(w), f32(bias), cx.ins[0][0], a["stride"], a["padding"], a["dilation"])
    nnz = int(np.count_nonzero(w))
    cx.record(k, Weight(a["weight"], tuple(w.shape), {}, nnz, w.nbytes))
    lo, hi = cx.act if cx.act is not None else (None, None)
    return lambda x: k.forward(x, lo, hi)


def _conv_build(a, cx):
    if _depthwise(a, cx.ins) and _native is not None and hasattr(_native, "DepthwiseConv2d"):
        return _depthwise_build(a, cx)
    w, bias, scale, shift = _conv_parts(a, cx)
    k = _conv_kernel(kernel("SparseConv2d"), a, w, bias)
    cx.record(k, w)
    relu = cx.act is not None  # the plan fuses nothing but a ReLU into this kernel
    return lambda x: k.forward(x, relu, scale, shift)


def _conv_ref(a, cx, x):
    w, bias, scale, shift = _conv_parts(a, cx)
    return _conv_kernel(reference.SparseConv2d, a, w, bias).forward(x, False, scale, shift)


def _linear_shape(a, ins, ts):
    x = ins[0]
    w = ts(a["weight"])
    if len(x) < 1 or len(w) != 2 or w[1] != x[-1]:
        raise Bad(f"weight {list(w)} does not fit {x[-1] if x else 0} input features")
    return x[:-1] + (w[0],)


def _linear_parts(a, cx):
    w = cx.tensors.weight(a["weight"], cx.name)
    bias = cx.tensors.vector(a["bias"], w.rows, cx.name, "bias")
    return w, bias


def _linear_kernel(factory, w, bias):
    return factory(w.csr["row_ptr"], w.csr["col"], w.cols, values=w.csr.get("values"),
                   cluster=w.csr.get("cluster"), codebook=w.csr.get("codebook"), bias=bias)


def _rows(fn, x):
    """A linear layer on [N, ..., features]: one batch of N * ... rows through the 2-D kernel."""
    if x.ndim == 2:
        return fn(x)
    y = fn(x.reshape(-1, x.shape[-1]))
    return y.reshape(*x.shape[:-1], y.shape[-1])


def _linear_build(a, cx):
    w, bias = _linear_parts(a, cx)
    k = _linear_kernel(kernel("SparseLinear"), w, bias)
    cx.record(k, w)
    relu = cx.act is not None
    return lambda x: _rows(lambda r: k.forward(r, relu), x)


def _linear_ref(a, cx, x):
    w, bias = _linear_parts(a, cx)
    k = _linear_kernel(reference.SparseLinear, w, bias)
    return _rows(k.forward, x)


# --------------------------------------------------------------------------------------------------
# batch norm outside a convolution: a per-channel scale and shift

def _bn_shape(a, ins, ts):
    if len(ins[0]) < 1:
        raise Bad("needs a channel dimension")
    return ins[0]


def _bn_scale_shift(a, cx):
    c = cx.ins[0][0]
    scale, shift = cx.tensors.bn(a, c, cx.name)
    tail = (1,) * (len(cx.ins[0]) - 1)
    return scale.reshape(1, c, *tail), shift.reshape(1, c, *tail)


def _bn_ref(a, cx, x):
    scale, shift = _bn_scale_shift(a, cx)
    return x * scale + shift


def _bn_build(a, cx):
    scale, shift = _bn_scale_shift(a, cx)
    if not cx.donate[0]:
        return lambda x: x * scale + shift

    def bn(x):
        x *= scale
        x += shift
        return x
    return bn


# --------------------------------------------------------------------------------------------------
# pools

def _pool_shape(a, ins, ts, dilation=True):
    x = ins[0]
    need_rank(x, 3)
    (kh, kw), (sh, sw), (ph, pw) = a["kernel_size"], a["stride"], a["padding"]
    dh, dw = a["dilation"] if dilation else (1, 1)
    if ph > kh // 2 or pw > kw // 2:
        raise Bad("has a padding of more than half the kernel")
    ceil = a["ceil_mode"]
    return (x[0], reference.pool_out(x[1], kh, sh, ph, dh, ceil), reference.pool_out(x[2], kw, sw, pw, dw, ceil))


POOL_ATTRS = {"kernel_size": (pair(1), REQUIRED), "stride": (pair(1), REQUIRED), "padding": (pair(0), REQUIRED),
              "ceil_mode": (flag, False)}


def _maxpool_ref(a, cx, x, impl=reference.max_pool2d):
    return impl(x, a["kernel_size"], a["stride"], a["padding"], a["dilation"], a["ceil_mode"])


def _avgpool_ref(a, cx, x, impl=reference.avg_pool2d):
    return impl(x, a["kernel_size"], a["stride"], a["padding"], a["ceil_mode"], a["count_include_pad"])


def _adaptive_shape(a, ins, ts):
    need_rank(ins[0], 3)
    return (ins[0][0], *a["output_size"])


def _adaptive_ref(a, cx, x, impl=reference.adaptive_avg_pool2d):
    return impl(x, a["output_size"])


def _native_pool(ref, binding):
    def build(a, cx):
        impl = kernel(binding)
        return lambda x: ref(a, cx, x, impl)
    return build


# --------------------------------------------------------------------------------------------------
# elementwise and structural ops

def _relu_ref(a, cx, x):
    return np.maximum(x, np.float32(0))


def _relu_inplace(a, x):
    return kernel("relu_")(x)


def _flatten_shape(a, ins, ts):
    if a["start_dim"] != 1:
        raise Bad(f"flattens from start_dim={a['start_dim']}; only 1 is supported")
    return (int(math.prod(ins[0])),)


def _flatten_ref(a, cx, x):
    return x.reshape(x.shape[0], -1)


def _concat_shape(a, ins, ts):
    x, dim = ins[0], a["dim"]
    if dim > len(x) or any(len(s) != len(x) for s in ins):
        raise Bad(f"dim {dim} out of range")
    d = dim - 1
    for s in ins[1:]:
        if s[:d] + s[d + 1:] != x[:d] + x[d + 1:]:
            raise Bad(f"joins mismatched shapes {[list(t) for t in ins]}")
    return x[:d] + (sum(s[d] for s in ins),) + x[d + 1:]


def _concat_ref(a, cx, *xs):
    return np.concatenate(xs, axis=a["dim"])


# --------------------------------------------------------------------------------------------------
# graph version 2: constants, activations, broadcasting arithmetic, shapes, normalisation, attention


def _constant_shape(a, ins, ts):
    if math.prod(ts(a["tensor"])) != math.prod(a["shape"]):
        raise Bad(f"shape {a['shape']} does not hold the {math.prod(ts(a['tensor']))} values of {a['tensor']!r}")
    return tuple(a["shape"])


def _constant_ref(a, cx, x):
    c = cx.tensors.array(a["tensor"], cx.name).reshape(1, *a["shape"])
    return np.broadcast_to(c, (x.shape[0], *a["shape"]))


def _constant_build(a, cx):
    c = cx.tensors.array(a["tensor"], cx.name).reshape(1, *a["shape"])
    return lambda x: np.broadcast_to(c, (x.shape[0], *a["shape"]))


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


def choice(*values):
    def check(v, what):
        if v not in values:
            raise Bad(f"{what} must be one of {', '.join(map(repr, values))}, got {v!r}")
        return v
    return check


def activation(name: str, fn: Callable, attrs: dict | None = None, doc: str = "none", kind=None) -> Op:
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
        return Op(name, (1, 1), attrs or {}, same, ref, doc, inplace=fn, since=2)
    return Op(name, (1, 1), attrs or {}, same, ref, doc, build=build, inplace=inplace, native="activation_", since=2)


def _broadcast(ins):
    if len({len(s) for s in ins}) != 1:
        raise Bad(f"combines shapes {[list(s) for s in ins]} of different ranks")
    try:
        return tuple(np.broadcast_shapes(*ins))
    except ValueError:
        raise Bad(f"cannot broadcast shapes {[list(s) for s in ins]}") from None


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


def dims_list(v, what):
    if not isinstance(v, list) or not v or not all(_is_int(d) and d >= 0 for d in v) or len(set(v)) != len(v):
        raise Bad(f"{what} must be a list of distinct dimensions, got {v!r}")
    return tuple(v)


def shape_list(v, what):
    if not isinstance(v, list) or not all(_is_int(d) and d >= 1 for d in v):
        raise Bad(f"{what} must be a list of sizes >= 1, got {v!r}")
    return tuple(v)


def _mean_shape(a, ins, ts):
    x = ins[0]
    if 0 in a["dims"] or max(a["dims"]) > len(x):
        raise Bad(f"averages over dims {list(a['dims'])} of a rank-{len(x) + 1} tensor (never the batch)")
    if a["keepdim"]:
        return tuple(1 if d + 1 in a["dims"] else s for d, s in enumerate(x))
    return tuple(s for d, s in enumerate(x) if d + 1 not in a["dims"])


def _mean_ref(a, cx, x):
    return np.mean(x, axis=a["dims"], keepdims=a["keepdim"], dtype=np.float32)


def _permute_shape(a, ins, ts):
    x, dims = ins[0], a["dims"]
    if sorted(dims) != list(range(len(x) + 1)) or dims[0] != 0:
        raise Bad(f"dims {list(dims)} are not a permutation of a rank-{len(x) + 1} tensor keeping the batch first")
    return tuple(x[d - 1] for d in dims[1:])


def _permute_ref(a, cx, x):
    return np.ascontiguousarray(np.transpose(x, a["dims"]))


def _reshape_shape(a, ins, ts):
    if math.prod(a["shape"]) != math.prod(ins[0]):
        raise Bad(f"reshapes {list(ins[0])} to {list(a['shape'])}")
    return a["shape"]


def _reshape_ref(a, cx, x):
    return x.reshape(x.shape[0], *a["shape"])


def _slice_shape(a, ins, ts):
    x, d = ins[0], a["dim"]
    if not 1 <= d <= len(x):
        raise Bad(f"slices dim {d} of a rank-{len(x) + 1} tensor (never the batch)")
    n = len(range(a["start"], min(a["stop"], x[d - 1]), a["step"]))
    return x[:d - 1] + (n,) + x[d:]


def _slice_ref(a, cx, x):
    index = (slice(None),) * a["dim"] + (slice(a["start"], a["stop"], a["step"]),)
    return np.ascontiguousarray(x[index])


def _layernorm_shape(a, ins, ts):
    x, d = ins[0], a["dim"]
    if d not in (1, len(x)):
        raise Bad(f"normalises dim {d} of a rank-{len(x) + 1} tensor; only 1 (channels) or the last")
    for key in ("weight", "bias"):
        if a[key] is not None and math.prod(ts(a[key])) != x[d - 1]:
            raise Bad(f"{key} {a[key]!r} does not have {x[d - 1]} entries")
    return x


def _layernorm_parts(a, cx):
    d, n = a["dim"], cx.ins[0][a["dim"] - 1]
    shape = [1] * (len(cx.ins[0]) + 1)
    shape[d] = n
    w = cx.tensors.vector(a["weight"], n, cx.name, "weight")
    b = cx.tensors.vector(a["bias"], n, cx.name, "bias")
    return d, None if w is None else w.reshape(shape), None if b is None else b.reshape(shape)


def _layernorm_ref(a, cx, x):
    d, w, b = _layernorm_parts(a, cx)
    mu = x.mean(axis=d, keepdims=True)
    xc = x - mu
    var = np.mean(xc * xc, axis=d, keepdims=True)
    y = xc / np.sqrt(var + np.float32(a["eps"]))
    y = y * w if w is not None else y
    return y + b if b is not None else y


def _layernorm_build(a, cx):
    d, w, b = _layernorm_parts(a, cx)
    eps = np.float32(a["eps"])

    def ln(x):
        y = x - x.mean(axis=d, keepdims=True)
        var = np.mean(np.square(y), axis=d, keepdims=True)
        var += eps
        np.sqrt(var, out=var)
        y /= var
        if w is not None:
            y *= w
        if b is not None:
            y += b
        return y
    return ln


def _matmul_shape(a, ins, ts):
    x, y = ins
    if len(x) != len(y) or len(x) < 2 or x[-1] != y[-2]:
        raise Bad(f"multiplies shapes {list(x)} and {list(y)}")
    return _broadcast([x[:-2], y[:-2]]) + (x[-2], y[-1])


def _matmul_ref(a, cx, x, y):
    return np.matmul(x, y)


def _softmax_shape(a, ins, ts):
    if not 1 <= a["dim"] <= len(ins[0]):
        raise Bad(f"dim {a['dim']} out of range (never the batch)")
    return ins[0]


def _softmax_ref(a, cx, x):
    y = x - x.max(axis=a["dim"], keepdims=True)
    np.exp(y, out=y)
    y /= y.sum(axis=a["dim"], keepdims=True)
    return y


# --------------------------------------------------------------------------------------------------
# the table

CONV_ATTRS = {"weight": (tensor_name, REQUIRED), "bias": (optional(tensor_name), None),
              "stride": (pair(1), REQUIRED), "padding": (pair(0), REQUIRED), "dilation": (pair(1), REQUIRED),
              "groups": (integer(1), REQUIRED), "bn": (optional(batchnorm), None)}

_TABLE = [
    Op("conv2d", (1, 1), CONV_ATTRS, _conv_shape, _conv_ref,
       "`weight`, `bias` (name or null), `stride`, `padding`, `dilation` (pairs), `groups`, `bn`: null or "
       "`{\"weight\", \"bias\", \"running_mean\", \"running_var\", \"eps\"}` (a BatchNorm2d folded into this "
       "convolution: `y = (conv(x) - mean) * weight / sqrt(var + eps) + bias`, per output channel)",
       build=_conv_build, native="SparseConv2d", epilogue=_conv_epilogue),
    Op("linear", (1, 1), {"weight": (tensor_name, REQUIRED), "bias": (optional(tensor_name), None)},
       _linear_shape, _linear_ref,
       "`weight`, `bias`; applies to the last dimension (an input [N, ..., in] runs as N * ... rows)",
       build=_linear_build, native="SparseLinear",
       epilogue=lambda a, ins, act, act_attrs: (0.0, math.inf) if act == "relu" else None),
    Op("batchnorm2d", (1, 1), BN_ATTRS, _bn_shape, _bn_ref,
       "`weight`, `bias`, `running_mean`, `running_var`, `eps` (one that no convolution precedes; channels "
       "are dimension 1)", build=_bn_build),
    Op("relu", (1, 1), {}, same, _relu_ref, "none", native="relu_", inplace=_relu_inplace),
    Op("maxpool2d", (1, 1), {**POOL_ATTRS, "dilation": (pair(1), (1, 1))}, _pool_shape, _maxpool_ref,
       "`kernel_size`, `stride`, `padding`, `dilation` (pairs), `ceil_mode`",
       build=_native_pool(_maxpool_ref, "max_pool2d"), native="max_pool2d"),
    Op("avgpool2d", (1, 1), {**POOL_ATTRS, "count_include_pad": (flag, True)},
       lambda a, ins, ts: _pool_shape(a, ins, ts, dilation=False), _avgpool_ref,
       "`kernel_size`, `stride`, `padding` (pairs), `ceil_mode`, `count_include_pad`",
       build=_native_pool(_avgpool_ref, "avg_pool2d"), native="avg_pool2d"),
    Op("adaptive_avgpool2d", (1, 1), {"output_size": (pair(1), REQUIRED)}, _adaptive_shape, _adaptive_ref,
       "`output_size` (pair)", build=_native_pool(_adaptive_ref, "adaptive_avg_pool2d"),
       native="adaptive_avg_pool2d"),
    Op("flatten", (1, 1), {"start_dim": (integer(0), 1)}, _flatten_shape, _flatten_ref,
       "`start_dim` (1); flattens dimensions start_dim..end", buffer="view"),
    binary("add", np.add, "`scalar` (null, or a number added to the one input; version 2), `reverse`; two inputs "
           "broadcast as numpy does (version 1: equal shapes only)", since=1),
    Op("concat", (2, None), {"dim": (integer(1), REQUIRED)}, _concat_shape, _concat_ref,
       "`dim`"),
    # version 2
    Op("constant", (1, 1), {"tensor": (tensor_name, REQUIRED), "shape": (shape_list, REQUIRED)}, _constant_shape,
       _constant_ref, "`tensor` (a stored tensor), `shape` (without the batch): the tensor reshaped to [1, *shape] "
       "and repeated over the batch of the input, which gives only the batch size",
       build=_constant_build, buffer="shared", since=2),
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
    Op("mean", (1, 1), {"dims": (dims_list, REQUIRED), "keepdim": (flag, False)}, _mean_shape, _mean_ref,
       "`dims` (never 0, the batch), `keepdim`", since=2),
    Op("permute", (1, 1), {"dims": (dims_list, REQUIRED)}, _permute_shape, _permute_ref,
       "`dims`: a permutation with dims[0] = 0 (transpose is a permute)", since=2),
    Op("reshape", (1, 1), {"shape": (shape_list, REQUIRED)}, _reshape_shape, _reshape_ref,
       "`shape` without the batch dimension (view, reshape)", buffer="view", since=2),
    Op("slice", (1, 1), {"dim": (integer(1), REQUIRED), "start": (integer(0), REQUIRED),
                         "stop": (integer(1), REQUIRED), "step": (integer(1), 1)},
       _slice_shape, _slice_ref, "`dim` (not 0), `start`, `stop`, `step` (chunk, split, basic indexing)", since=2),
    Op("layernorm", (1, 1), {"weight": (optional(tensor_name), None), "bias": (optional(tensor_name), None),
                             "eps": (number(0), REQUIRED), "dim": (integer(1), REQUIRED)},
       _layernorm_shape, _layernorm_ref, "`weight`, `bias` (or null), `eps`, `dim`: the normalised dimension, the "
       "last one or 1 (channels of NCHW)", build=_layernorm_build, since=2),
    Op("matmul", (2, 2), {}, _matmul_shape, _matmul_ref,
       "none; inputs of equal rank, leading dimensions broadcast", since=2),
    Op("softmax", (1, 1), {"dim": (integer(1), REQUIRED)}, _softmax_shape, _softmax_ref, "`dim` (not 0)", since=2),
]

OPS: dict[str, Op] = {op.name: op for op in _TABLE}


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
