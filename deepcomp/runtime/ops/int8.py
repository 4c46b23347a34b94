"""The int8 forms of conv2d and linear (docs/int8.md; attributes in docs/dcz-format.md, "int8
additions"): the check of a node's ``int8`` attribute, and the steps that run a node carrying it.

A node's ``int8`` attribute gives its input's uint8 quantization and the form of its output; what
the node absorbs (a following ReLU and max-pool, a flatten before a linear) and whether its output
stays uint8 is the planner's decision (deepcomp.runtime.plan_int8), handed to the build as
``cx.int8``. The weights are the file's codebook mapped to int8 with its per-channel
``weight_scale``, taken from the coded CSR arrays without decoding a dense tensor; a BatchNorm
recorded on a conv (``bn``) folds into the epilogue. The steps are deepcomp.runtime.int8's (native
kernels, or the numpy integer reference when ``cx.int8["reference"]`` is set or the extension lacks
them).
"""

from __future__ import annotations

import math


from deepcomp.runtime.int8 import Int8ConvStep, Int8LinearStep, coded_to_int8
from deepcomp.runtime.ops.base import REQUIRED, Bad, check_attrs, choice, optional, tensor_name
from deepcomp.runtime.tensors import Weight

BLOCKS = ([1, 4], [4, 4])


def _positive(v, what):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not v > 0:
        raise Bad(f"{what} must be a finite number > 0, got {v!r}")
    return float(v)


def _zero_point(v, what):
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 255:
        raise Bad(f"{what} must be an integer in [0, 255], got {v!r}")
    return v


def _block(v, what):
    if v not in BLOCKS:
        raise Bad(f"{what} must be [1, 4] or [4, 4], got {v!r}")
    return tuple(v)


INT8_ATTRS = {"block": (_block, (1, 4)), "weight_scale": (tensor_name, REQUIRED),
              "in_scale": (_positive, REQUIRED), "in_zp": (_zero_point, REQUIRED),
              "out": (choice("u8", "f32"), "f32"), "out_scale": (optional(_positive), None),
              "out_zp": (_zero_point, 0)}

DOC = ("`int8`: null, or the node's int8 form (docs/dcz-format.md, int8 additions): `block`, "
       "`weight_scale`, `in_scale`, `in_zp`, `out` (\"u8\" / \"f32\"), `out_scale`, `out_zp`")


def int8_attrs(v, what):
    """The checked ``int8`` attribute of a conv2d / linear node."""
    a = check_attrs(INT8_ATTRS, v, what)
    if a["out"] == "u8" and a["out_scale"] is None:
        raise Bad(f"{what} has out \"u8\" but no out_scale")
    return a


def check_shape(a, op: str, out_channels: int, ins, ts) -> None:
    """What an int8 node needs beyond its fp32 form (called by the conv2d / linear shape rules)."""
    q = a["int8"]
    if q is None:
        return
    if math.prod(ts(q["weight_scale"])) != out_channels:
        raise Bad(f"int8 weight_scale {q['weight_scale']!r} does not have {out_channels} entries")
    if op == "conv2d" and a["groups"] != 1:
        raise Bad("runs int8, which needs groups 1")
    if op == "linear" and len(ins[0]) != 1:
        raise Bad(f"runs int8 on an input of shape {list(ins[0])}; int8 linear layers take [N, features]")


def _parts(a, cx):
    """(weight: a CodedInt8 for a coded tensor, else the dense fp32 array; bias; weight scales; the
    folded BatchNorm's (scale, shift) or None)."""
    name = a["weight"]
    shape = cx.tensors.shape(name, cx.name)
    oc = shape[0]
    bias = cx.tensors.vector(a["bias"], oc, cx.name, "bias")
    scale = cx.tensors.vector(a["int8"]["weight_scale"], oc, cx.name, "int8 weight_scale")
    if name in cx.tensors.coded:
        w, scale = coded_to_int8(cx.tensors.coded[name], shape, scale)
    else:
        w = cx.tensors.array(name, cx.name)
    bn = cx.tensors.bn(a["bn"], oc, cx.name) if a.get("bn") is not None else None
    return w, bias, scale, bn


def _fusion(cx) -> dict:
    """The planner's decisions for this node (none when the op table's reference runs it alone)."""
    p = cx.int8 or {}
    return {"relu": p.get("relu", False), "clamp": p.get("clamp"), "pool": p.get("pool"), "out_q": p.get("out_q"),
            "out_padding": p.get("out_padding", (0, 0)), "native": not p.get("reference", False)}


def _record(cx, a, step) -> None:
    """The layer's LayerInfo: nnz counts the int8 weights that are not 0; bytes the kernel's block
    layout (the dense int8 weight on the reference) and the per-channel epilogue."""
    cx.record(step, Weight(a["weight"], step.shape, {}, step.nonzeros, step.nbytes))


def conv_step(a, cx) -> Int8ConvStep:
    w, bias, scale, bn = _parts(a, cx)
    q, f = a["int8"], _fusion(cx)
    return Int8ConvStep(w, bias, stride=a["stride"], padding=a["padding"], dilation=a["dilation"],
                        in_q=(q["in_scale"], q["in_zp"]), out_q=f["out_q"], relu=f["relu"], clamp=f["clamp"],
                        pool=f["pool"], out_padding=f["out_padding"], weight_scale=scale, bn=bn, native=f["native"])


def linear_step(a, cx) -> Int8LinearStep:
    w, bias, scale, _ = _parts(a, cx)
    q, f = a["int8"], _fusion(cx)
    return Int8LinearStep(w, bias, in_q=(q["in_scale"], q["in_zp"]), out_q=f["out_q"], relu=f["relu"],
                          weight_scale=scale, native=f["native"])


def conv_build(a, cx):
    step = conv_step(a, cx)
    _record(cx, a, step)
    return step


def linear_build(a, cx):
    step = linear_step(a, cx)
    _record(cx, a, step)
    return step


def conv_ref(a, cx, x):
    """The node alone on the numpy integer reference: fp32 (or QTensor) in, fp32 out."""
    w, bias, scale, bn = _parts(a, cx)
    return Int8ConvStep(w, bias, stride=a["stride"], padding=a["padding"], dilation=a["dilation"],
                        in_q=(a["int8"]["in_scale"], a["int8"]["in_zp"]), weight_scale=scale, bn=bn, native=False)(x)


def linear_ref(a, cx, x):
    w, bias, scale, _ = _parts(a, cx)
    return Int8LinearStep(w, bias, in_q=(a["int8"]["in_scale"], a["int8"]["in_zp"]), weight_scale=scale,
                          native=False)(x)
