"""Pools and the ops that move data: flatten, concat, constants, mean, permute, reshape, slice,
roll, matmul, softmax, and the shifted-window attention mask."""
from __future__ import annotations

import functools
import math

import numpy as np

from deepcomp.errors import DczError
from deepcomp.runtime import blas, reference
from deepcomp.runtime.ops.base import (REQUIRED, Bad, Op, _broadcast, _native, dims_list, flag, integer, kernel,
                                     need_rank, number, optional, pair, shape_list, tensor_name)


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


def _constant_shape(a, ins, ts):
    src = ts(a["tensor"])
    held = math.prod(src) if a["index"] is None else math.prod(ts(a["index"])) * _row_length(src)
    if held != math.prod(a["shape"]):
        what = f"the {held} values of {a['tensor']!r}" + ("" if a["index"] is None else f" picked by {a['index']!r}")
        raise Bad(f"shape {list(a['shape'])} does not hold {what}")
    return tuple(a["shape"])


def _row_length(shape) -> int:
    """The length of a row of a table ``constant`` gathers from: its last dimension (one value for a vector)."""
    return shape[-1] if len(shape) > 1 else 1


def _constant_value(a, cx) -> np.ndarray:
    """[1, *shape]: the stored tensor, or with ``index`` its rows (the tensor as a matrix of rows of its
    last dimension: Swin v1's bias table [positions, heads], Swin v2's coordinates [1, h, w, 2]) picked
    by the stored integer tensor ``index``, once, at load."""
    c = cx.tensors.array(a["tensor"], cx.name)
    if a["index"] is not None:
        idx = cx.tensors.dense.get(a["index"])
        if idx is None or not np.issubdtype(np.asarray(idx).dtype, np.integer):
            raise DczError(f"node {cx.name!r}: index {a['index']!r} is not a dense integer tensor of the file")
        idx = np.asarray(idx).reshape(-1)
        c = c.reshape(-1, _row_length(c.shape))
        if idx.size and (idx.min() < 0 or idx.max() >= c.shape[0]):
            raise DczError(f"node {cx.name!r}: index {a['index']!r} points outside the {c.shape[0]} rows of "
                           f"{a['tensor']!r}")
        c = c[idx]
    return np.ascontiguousarray(c).reshape(1, *a["shape"])


def _constant_ref(a, cx, x):
    return np.broadcast_to(_constant_value(a, cx), (x.shape[0], *a["shape"]))


def _constant_build(a, cx):
    c = _constant_value(a, cx)
    return lambda x: np.broadcast_to(c, (x.shape[0], *a["shape"]))


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


def _pad_shape(a, ins, ts):
    x, pads = ins[0], a["pads"]
    if len(pads) != 2 * len(x) or min(pads) < 0:
        raise Bad(f"pads {list(pads)}: needs a (before, after) pair of sizes >= 0 for each of the {len(x)} "
                  "dimensions after the batch")
    return tuple(s + pads[2 * d] + pads[2 * d + 1] for d, s in enumerate(x))


def _pad_ref(a, cx, x):
    pads = a["pads"]
    return np.pad(x, [(0, 0)] + [(pads[2 * d], pads[2 * d + 1]) for d in range(x.ndim - 1)],
                  constant_values=np.float32(a["value"]))


def _roll_shape(a, ins, ts):
    x = ins[0]
    if len(a["shifts"]) != len(a["dims"]) or 0 in a["dims"] or max(a["dims"]) > len(x):
        raise Bad(f"rolls dims {list(a['dims'])} by {list(a['shifts'])} in a rank-{len(x) + 1} tensor (one shift "
                  "per dim, never the batch)")
    return x


def _roll_ref(a, cx, x):
    return np.roll(x, a["shifts"], axis=a["dims"])


def _window_mask_shape(a, ins, ts):
    (h, w), (wh, ww), (sh, sw) = a["size"], a["window"], a["shift"]
    if h % wh or w % ww or sh >= wh or sw >= ww:
        raise Bad(f"windows {wh}x{ww} shifted by {sh}x{sw} do not tile a {h}x{w} map")
    n = wh * ww
    return ((h // wh) * (w // ww), 1, n, n)


def window_mask(size, window, shift) -> np.ndarray:
    """[windows, 1, L, L]: 0 where two positions of a window come from the same region of the
    cyclically shifted map, -100 where the shift brought them together from different regions
    (torchvision's Swin mask: region slices (0, -window), (-window, -shift), (-shift, end))."""
    (h, w), (wh, ww), (sh, sw) = size, window, shift
    region = np.zeros((h, w), np.float32)
    count = 0
    for hs in (slice(0, -wh), slice(-wh, -sh), slice(-sh, None)):
        for ws in (slice(0, -ww), slice(-ww, -sw), slice(-sw, None)):
            region[hs, ws] = count
            count += 1
    r = region.reshape(h // wh, wh, w // ww, ww).transpose(0, 2, 1, 3).reshape(-1, wh * ww)
    diff = r[:, None, :] - r[:, :, None]
    return np.where(diff != 0, np.float32(-100.0), np.float32(0.0))[:, None]


def _window_mask_build(a, cx):
    m = window_mask(a["size"], a["window"], a["shift"])[None]
    return lambda x: np.broadcast_to(m, (x.shape[0], *m.shape[1:]))


def _window_mask_ref(a, cx, x):
    return _window_mask_build(a, cx)(x)


def _ints(v, what):
    if not isinstance(v, list) or not v or not all(isinstance(s, int) and not isinstance(s, bool) for s in v):
        raise Bad(f"{what} must be a list of integers, got {v!r}")
    return tuple(v)


def _matmul_shape(a, ins, ts):
    x, y = ins
    if len(x) != len(y) or len(x) < 2 or x[-1] != y[-2]:
        raise Bad(f"multiplies shapes {list(x)} and {list(y)}")
    return _broadcast([x[:-2], y[:-2]]) + (x[-2], y[-1])


def _matmul_ref(a, cx, x, y):
    return np.matmul(x, y)


def _matmul_build(a, cx):
    def matmul(x, y):
        with blas.one_thread():
            return np.matmul(x, y)
    return matmul


def _softmax_shape(a, ins, ts):
    if not 1 <= a["dim"] <= len(ins[0]):
        raise Bad(f"dim {a['dim']} out of range (never the batch)")
    return ins[0]


def _softmax_ref(a, cx, x):
    y = x - x.max(axis=a["dim"], keepdims=True)
    np.exp(y, out=y)
    y /= y.sum(axis=a["dim"], keepdims=True)
    return y


@functools.cache
def _native_exp():
    """The extension's in-place exp (activation_ kind 4), or None in a build that predates it."""
    f = getattr(_native, "activation_", None) if _native is not None else None
    try:
        f(np.zeros(1, np.float32), 4)
    except (TypeError, ValueError):
        return None
    return f


def _softmax_build(a, cx):
    """The reference's passes, in the input's buffer when this step may overwrite it, exp on the
    extension's vectorised kernel (numpy's exp is most of a softmax's time)."""
    d, into = a["dim"], bool(cx.donate and cx.donate[0])
    native = _native_exp()

    def softmax(x):
        m = x.max(axis=d, keepdims=True)
        if into and x.flags.c_contiguous and x.flags.writeable:
            y = np.subtract(x, m, out=x)
        else:
            y = np.ascontiguousarray(x - m)
        if native is not None:
            native(y, 4)
        else:
            np.exp(y, out=y)
        y /= y.sum(axis=d, keepdims=True)
        return y
    return softmax


def _normalize_ref(a, cx, x):
    norm = np.sqrt(np.sum(np.square(x), axis=a["dim"], keepdims=True, dtype=np.float32))
    return (x / np.maximum(norm, np.float32(a["eps"]))).astype(np.float32, copy=False)


def _normalize_build(a, cx):
    """The reference, dividing in the input's buffer when this step may overwrite it."""
    d, eps, into = a["dim"], np.float32(a["eps"]), bool(cx.donate and cx.donate[0])

    def normalize(x):
        norm = np.sqrt(np.einsum("...i,...i->...", x, x)[..., None]) if d == x.ndim - 1 else \
            np.sqrt(np.sum(np.square(x), axis=d, keepdims=True, dtype=np.float32))
        np.maximum(norm, eps, out=norm)
        if into and x.flags.writeable:
            return np.divide(x, norm, out=x)
        return x / norm
    return normalize


TABLE = [
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
    Op("concat", (2, None), {"dim": (integer(1), REQUIRED)}, _concat_shape, _concat_ref,
       "`dim`"),
    Op("constant", (1, 1), {"tensor": (tensor_name, REQUIRED), "shape": (shape_list, REQUIRED),
                            "index": (optional(tensor_name), None)}, _constant_shape,
       _constant_ref, "`tensor` (a stored tensor), `shape` (without the batch): the tensor reshaped to [1, *shape] "
       "and repeated over the batch of the input, which gives only the batch size; `index` (null, or a stored "
       "integer tensor; version 4): the rows of `tensor` (rows of its last dimension) it picks, in its order (a "
       "relative position bias gathered from its table, Swin v2's coordinates), are what is reshaped",
       build=_constant_build, buffer="shared", since=2, attr_since={"index": 4}),
    Op("mean", (1, 1), {"dims": (dims_list, REQUIRED), "keepdim": (flag, False)}, _mean_shape, _mean_ref,
       "`dims` (never 0, the batch), `keepdim`", since=2),
    Op("permute", (1, 1), {"dims": (dims_list, REQUIRED)}, _permute_shape, _permute_ref,
       "`dims`: a permutation with dims[0] = 0 (transpose is a permute)", since=2),
    Op("reshape", (1, 1), {"shape": (shape_list, REQUIRED)}, _reshape_shape, _reshape_ref,
       "`shape` without the batch dimension (view, reshape)", buffer="view", since=2),
    Op("slice", (1, 1), {"dim": (integer(1), REQUIRED), "start": (integer(0), REQUIRED),
                         "stop": (integer(1), REQUIRED), "step": (integer(1), 1)},
       _slice_shape, _slice_ref, "`dim` (not 0), `start`, `stop`, `step` (chunk, split, basic indexing)",
       buffer="view", since=2),  # a view: a slice already contiguous (dimension 1 at batch 1) is not copied,
    Op("pad", (1, 1), {"pads": (_ints, REQUIRED), "value": (number(), 0.0)}, _pad_shape, _pad_ref,
       "`pads`: sizes before and after, for dimension 1 first, then 2, ...; `value` (0): constant padding "
       "(Swin's feature maps to a multiple of the window); version 4", since=4),
    Op("roll", (1, 1), {"shifts": (_ints, REQUIRED), "dims": (dims_list, REQUIRED)}, _roll_shape, _roll_ref,
       "`shifts`, `dims` (not 0), one shift per dim: torch.roll (Swin's cyclic shift); version 4", since=4),
    Op("window_mask", (1, 1), {"size": (pair(1), REQUIRED), "window": (pair(1), REQUIRED),
                               "shift": (pair(0), REQUIRED)}, _window_mask_shape, _window_mask_ref,
       "`size` (the map, a multiple of the window), `window`, `shift` (pairs): Swin's shifted-window attention "
       "mask, [windows, 1, L, L] of 0 and -100 (L = window area), repeated over the batch of the input; version 4",
       build=_window_mask_build, buffer="shared", since=4),
    Op("matmul", (2, 2), {}, _matmul_shape, _matmul_ref,
       "none; inputs of equal rank, leading dimensions broadcast", build=_matmul_build, since=2),
    Op("softmax", (1, 1), {"dim": (integer(1), REQUIRED)}, _softmax_shape, _softmax_ref, "`dim` (not 0)",
       build=_softmax_build, since=2),
    Op("normalize", (1, 1), {"dim": (integer(1), REQUIRED), "eps": (number(), 1e-12)}, _softmax_shape,
       _normalize_ref, "`dim` (not 0), `eps` (1e-12): x / max(the L2 norm along dim, eps), F.normalize (Swin v2's "
       "cosine attention); version 4", build=_normalize_build, since=4),
]
