"""conv2d, linear and the normalisations: the ops that hold weights."""
from __future__ import annotations

import math

import numpy as np

from deepcomp.runtime import reference
from deepcomp.runtime.ops import int8
from deepcomp.runtime.ops.base import (BN_ATTRS, REQUIRED, Bad, Op, _native, batchnorm, choice, integer, kernel,
                                     need_rank, number, optional, pair, tensor_name)
from deepcomp.runtime.tensors import Weight, f32


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
    int8.check_shape(a, "conv2d", oc, ins, ts)
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
    if a["int8"] is not None:
        return int8.conv_build(a, cx)
    if _depthwise(a, cx.ins) and _native is not None and hasattr(_native, "DepthwiseConv2d"):
        return _depthwise_build(a, cx)
    w, bias, scale, shift = _conv_parts(a, cx)
    k = _conv_kernel(kernel("SparseConv2d"), a, w, bias)
    cx.record(k, w)
    relu = cx.act is not None  # the plan fuses nothing but a ReLU into this kernel
    return lambda x: k.forward(x, relu, scale, shift)


def _conv_ref(a, cx, x):
    if a["int8"] is not None:
        return int8.conv_ref(a, cx, x)
    w, bias, scale, shift = _conv_parts(a, cx)
    return _conv_kernel(reference.SparseConv2d, a, w, bias).forward(x, False, scale, shift)


def _linear_shape(a, ins, ts):
    x = ins[0]
    w = ts(a["weight"])
    if a["dim"] == 1:  # over the channels of NCHW: a 1x1 convolution
        if a["int8"] is not None:
            raise Bad("runs int8 over the last dimension only, not with dim 1")
        need_rank(x, 3)
        if len(w) != 2 or w[1] != x[0]:
            raise Bad(f"weight {list(w)} does not fit {x[0]} input channels")
        return (w[0], x[1], x[2])
    if len(x) < 1 or len(w) != 2 or w[1] != x[-1]:
        raise Bad(f"weight {list(w)} does not fit {x[-1] if x else 0} input features")
    int8.check_shape(a, "linear", w[0], ins, ts)
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


def _pointwise_kernel(factory, w, bias):
    """A linear layer over the channels of NCHW (``dim`` 1) on the convolution kernel, as a 1x1
    convolution: the weight's CSR rows are already the conv's (one tap per input channel)."""
    return factory(w.csr["row_ptr"], w.csr["col"], w.cols, w.rows, (1, 1), (1, 1), (0, 0), (1, 1), 1,
                   values=w.csr.get("values"), cluster=w.csr.get("cluster"), codebook=w.csr.get("codebook"),
                   bias=bias)


def _linear_build(a, cx):
    if a["int8"] is not None:
        return int8.linear_build(a, cx)
    w, bias = _linear_parts(a, cx)
    relu = cx.act is not None
    if a["dim"] == 1:
        k = _pointwise_kernel(kernel("SparseConv2d"), w, bias)
        cx.record(k, w)
        return lambda x: k.forward(x, relu, None, None)
    k = _linear_kernel(kernel("SparseLinear"), w, bias)
    cx.record(k, w)
    return lambda x: _rows(lambda r: k.forward(r, relu), x)


def _linear_ref(a, cx, x):
    if a["int8"] is not None:
        return int8.linear_ref(a, cx, x)
    w, bias = _linear_parts(a, cx)
    if a["dim"] == 1:
        return _pointwise_kernel(reference.SparseConv2d, w, bias).forward(x, False, None, None)
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


CONV_ATTRS = {"weight": (tensor_name, REQUIRED), "bias": (optional(tensor_name), None),
              "stride": (pair(1), REQUIRED), "padding": (pair(0), REQUIRED), "dilation": (pair(1), REQUIRED),
              "groups": (integer(1), REQUIRED), "bn": (optional(batchnorm), None),
              "int8": (optional(int8.int8_attrs), None)}
LINEAR_ATTRS = {"weight": (tensor_name, REQUIRED), "bias": (optional(tensor_name), None),
                "dim": (optional(choice(1)), None), "int8": (optional(int8.int8_attrs), None)}


TABLE = [
    Op("conv2d", (1, 1), CONV_ATTRS, _conv_shape, _conv_ref,
       "`weight`, `bias` (name or null), `stride`, `padding`, `dilation` (pairs), `groups`, `bn`: null or "
       "`{\"weight\", \"bias\", \"running_mean\", \"running_var\", \"eps\"}` (a BatchNorm2d folded into this "
       "convolution: `y = (conv(x) - mean) * weight / sqrt(var + eps) + bias`, per output channel); " + int8.DOC,
       build=_conv_build, native="SparseConv2d", epilogue=_conv_epilogue),
    Op("linear", (1, 1), LINEAR_ATTRS, _linear_shape, _linear_ref,
       "`weight`, `bias`; applies to the last dimension (an input [N, ..., in] runs as N * ... rows), or with "
       "`dim`: 1 to the channels of an NCHW input (a 1x1 convolution; ConvNeXt's MLP captured channels-first; "
       "version 3); " + int8.DOC,
       build=_linear_build, native="SparseLinear", attr_since={"dim": 3},
       epilogue=lambda a, ins, act, act_attrs: (0.0, math.inf) if act == "relu" else None),
    Op("batchnorm2d", (1, 1), BN_ATTRS, _bn_shape, _bn_ref,
       "`weight`, `bias`, `running_mean`, `running_var`, `eps` (one that no convolution precedes; channels "
       "are dimension 1)", build=_bn_build),
    Op("layernorm", (1, 1), {"weight": (optional(tensor_name), None), "bias": (optional(tensor_name), None),
                             "eps": (number(0), REQUIRED), "dim": (integer(1), REQUIRED)},
       _layernorm_shape, _layernorm_ref, "`weight`, `bias` (or null), `eps`, `dim`: the normalised dimension, the "
       "last one or 1 (channels of NCHW)", build=_layernorm_build, since=2),
]
