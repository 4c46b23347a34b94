"""Source-level operations lowered to the graph's ops, shared by every capture front.

Each function takes the front's capture object ``cx`` (``cx.add(op, inputs, attrs)`` appends a node
and returns its :class:`~deepcomp.capture.builder.Tensor`, ``cx.tensor(v, like)`` turns a parameter
into a constant, ``cx.unsupported(op, why)`` makes the error, ``cx.b`` is the builder) and the
operation's arguments as plain Python values with torch's meaning (negative dims, ``-1`` sizes,
``padding='same'``). No torch here: an ONNX front lowers onto the same functions.
"""

from __future__ import annotations

import math

from deepcomp.capture.builder import Tensor, bn_attrs, conv_padding, pair


def conv2d(cx, x: Tensor, weight: str, bias, stride, padding, dilation, groups) -> Tensor:
    if x.rank != 4:
        raise cx.unsupported("conv2d", "only 2-D convolutions on NCHW inputs are supported")
    kernel = cx.b.tensor_shape(weight, cx.where)[2:]
    padding = conv_padding(padding, kernel, dilation, lambda why: cx.unsupported("conv2d", why))
    attrs = {"weight": weight, "bias": bias, "stride": pair(stride, "stride"), "padding": padding,
             "dilation": pair(dilation, "dilation"), "groups": int(groups), "bn": None}
    return cx.add("conv2d", [x], attrs, _module(weight, ".weight"))


def linear(cx, x: Tensor, weight: str, bias) -> Tensor:
    return cx.add("linear", [x], {"weight": weight, "bias": bias}, _module(weight, ".weight"))


def batch_norm(cx, x: Tensor, weight, bias, mean, var, eps) -> Tensor:
    return cx.add("batchnorm2d", [x], bn_attrs(weight, bias, mean, var, eps), _module(mean, ".running_mean"))


def layer_norm(cx, x: Tensor, normalized_shape, weight, bias, eps) -> Tensor:
    shape = [normalized_shape] if isinstance(normalized_shape, int) else list(normalized_shape)
    if shape != [x.shape[-1]]:
        raise cx.unsupported("layer_norm", f"normalized_shape {shape} on {list(x.shape)}; only the last dimension")
    return cx.add("layernorm", [x], {"weight": weight, "bias": bias, "eps": float(eps), "dim": x.rank - 1})


def _module(key, suffix: str):
    return key[: -len(suffix)] if isinstance(key, str) and key.endswith(suffix) else None


def _pool_stride(stride, kernel):
    return pair(stride, "stride") if stride is not None and stride != [] and stride != () else list(kernel)


def max_pool2d(cx, x: Tensor, kernel_size, stride, padding, dilation, ceil_mode) -> Tensor:
    k = pair(kernel_size, "kernel_size")
    return cx.add("maxpool2d", [x], {"kernel_size": k, "stride": _pool_stride(stride, k),
                                     "padding": pair(padding, "padding"), "dilation": pair(dilation, "dilation"),
                                     "ceil_mode": bool(ceil_mode)})


def avg_pool2d(cx, x: Tensor, kernel_size, stride, padding, ceil_mode, count_include_pad) -> Tensor:
    k = pair(kernel_size, "kernel_size")
    return cx.add("avgpool2d", [x], {"kernel_size": k, "stride": _pool_stride(stride, k),
                                     "padding": pair(padding, "padding"), "ceil_mode": bool(ceil_mode),
                                     "count_include_pad": bool(count_include_pad)})


def adaptive_avg_pool2d(cx, x: Tensor, output_size) -> Tensor:
    if x.rank != 4:
        raise cx.unsupported("adaptive_avg_pool2d", "input is not 4-D (N, C, H, W)")
    size = [output_size, output_size] if isinstance(output_size, int) else list(output_size)
    size = size * 2 if len(size) == 1 else size
    size = [x.shape[1 + i] if v is None else int(v) for i, v in enumerate(size)]
    return cx.add("adaptive_avgpool2d", [x], {"output_size": size})


# --------------------------------------------------------------------------------------------------
# elementwise


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def binary(cx, op: str, a, b, alpha=1) -> Tensor:
    """``a op b`` (torch's ``alpha`` must be 1) on tensors, parameters and numbers."""
    if alpha != 1:
        raise cx.unsupported(op, "alpha other than 1")
    reverse = _number(a)
    if reverse:
        a, b = b, a
    if _number(b):
        return cx.add(op, [cx.tensor(a)], {"scalar": float(b), "reverse": reverse})
    if not isinstance(a, Tensor) and not isinstance(b, Tensor):
        raise cx.unsupported(op, "arithmetic between parameters only")
    left = cx.tensor(a, like=b if isinstance(b, Tensor) else None)
    right = cx.tensor(b, like=left)
    if left.rank != right.rank:
        raise cx.unsupported(op, f"broadcasting a rank-{left.rank} tensor with a rank-{right.rank} one")
    return cx.add(op, [right, left] if reverse else [left, right], {})


def concat(cx, xs: list, dim: int) -> Tensor:
    d = cx.b.dim(dim, xs[0], cx.where)
    if len(xs) == 1:
        return xs[0]
    return cx.add("concat", xs, {"dim": d})


def softmax(cx, x: Tensor, dim) -> Tensor:
    if dim is None:
        raise cx.unsupported("softmax", "without a dim")
    return cx.add("softmax", [x], {"dim": cx.b.dim(dim, x, cx.where)})


def mean(cx, x: Tensor, dim, keepdim: bool) -> Tensor:
    if dim is None:
        raise cx.unsupported("mean", "over every dimension, the batch included")
    dims = sorted({cx.b.dim(d, x, cx.where) for d in ([dim] if isinstance(dim, int) else dim)})
    return cx.add("mean", [x], {"dims": dims, "keepdim": bool(keepdim)})


def matmul(cx, a: Tensor, b: Tensor) -> Tensor:
    if a.rank != b.rank or a.rank < 3:
        raise cx.unsupported("matmul", f"ranks {a.rank} and {b.rank}; deepcomp multiplies batches of matrices "
                             "of equal rank")
    return cx.add("matmul", [a, b], {})


def attention(cx, q: Tensor, k: Tensor, v: Tensor, scale=None) -> Tensor:
    """softmax(q k^T * scale) v over the last two dimensions (scaled dot-product attention)."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    r = k.rank
    kt = cx.add("permute", [k], {"dims": list(range(r - 2)) + [r - 1, r - 2]})
    scores = cx.add("matmul", [cx.add("mul", [q], {"scalar": scale, "reverse": False}), kt], {})
    return cx.add("matmul", [cx.add("softmax", [scores], {"dim": r - 1}), v], {})


# --------------------------------------------------------------------------------------------------
# shapes


def flatten(cx, x: Tensor, start_dim: int, end_dim: int) -> Tensor:
    sd = cx.b.dim(start_dim, x, cx.where, batch_ok=True)
    ed = cx.b.dim(end_dim, x, cx.where, batch_ok=True)
    if sd == 0:
        raise cx.unsupported("flatten", "flattening the batch dimension into others")
    if sd == 1 and ed == x.rank - 1:
        return cx.add("flatten", [x], {"start_dim": 1})
    shape = list(x.shape[: sd - 1]) + [math.prod(x.shape[sd - 1: ed])] + list(x.shape[ed:])
    return cx.add("reshape", [x], {"shape": shape})


def reshape(cx, x: Tensor, sizes: list, batch) -> Tensor:
    """view/reshape to ``sizes`` (``batch`` marks the batch size); the batch must stay dimension 0."""
    numel = math.prod(x.shape)
    if not sizes or any(s is not batch and not isinstance(s, int) for s in sizes):
        raise cx.unsupported("reshape", f"to sizes {sizes!r} that are not integers")
    rest = list(sizes[1:])
    if sizes[0] is not batch and not (sizes[0] == -1 and -1 not in rest and math.prod(rest) == numel):
        raise cx.unsupported("reshape", f"to {['N' if s is batch else s for s in sizes]}: the batch dimension "
                             "must stay the first one")
    if rest.count(-1) > 1 or any(s is batch for s in rest):
        raise cx.unsupported("reshape", "with more than one inferred size")
    if -1 in rest:
        known = math.prod(s for s in rest if s != -1)
        if known == 0 or numel % known:
            raise cx.unsupported("reshape", f"to {rest} from {list(x.shape)}")
        rest[rest.index(-1)] = numel // known
    if math.prod(rest) != numel:
        raise cx.unsupported("reshape", f"to {rest} from {list(x.shape)}")
    if len(rest) == 1 and x.rank > 2:
        return cx.add("flatten", [x], {"start_dim": 1})
    if tuple(rest) == x.shape:
        return x
    return cx.add("reshape", [x], {"shape": rest})


def permute(cx, x: Tensor, dims: list) -> Tensor:
    dims = [cx.b.dim(d, x, cx.where, batch_ok=True) for d in dims]
    if sorted(dims) != list(range(x.rank)) or dims[0] != 0:
        raise cx.unsupported("permute", f"dims {dims}: a permutation that keeps the batch first")
    if dims == list(range(x.rank)):
        return x
    return cx.add("permute", [x], {"dims": dims})


def transpose(cx, x: Tensor, dim0: int, dim1: int) -> Tensor:
    dims = list(range(x.rank))
    a, b = cx.b.dim(dim0, x, cx.where), cx.b.dim(dim1, x, cx.where)
    dims[a], dims[b] = dims[b], dims[a]
    return permute(cx, x, dims)


def pad(cx, x: Tensor, pads, value=0.0) -> Tensor:
    """torch.nn.functional.pad in constant mode: ``pads`` are (before, after) pairs from the last
    dimension backwards, never reaching the batch."""
    pads = [int(p) for p in pads]
    if len(pads) % 2 or len(pads) // 2 > x.rank - 1 or min(pads, default=0) < 0:
        raise cx.unsupported("pad", f"pads {pads} on a rank-{x.rank} tensor (pairs >= 0, never the batch)")
    if not any(pads):
        return x
    per_dim = [0] * (2 * (x.rank - 1))
    for i in range(len(pads) // 2):
        d = x.rank - 2 - i  # position of dimension rank-1-i among the dimensions after the batch
        per_dim[2 * d: 2 * d + 2] = pads[2 * i: 2 * i + 2]
    return cx.add("pad", [x], {"pads": per_dim, "value": float(value)})


def _slice(cx, x: Tensor, d: int, start: int, stop: int, step: int = 1) -> Tensor:
    if start == 0 and stop >= x.shape[d - 1] and step == 1:
        return x
    return cx.add("slice", [x], {"dim": d, "start": start, "stop": stop, "step": step})


def chunk(cx, x: Tensor, chunks: int, dim: int) -> tuple:
    d = cx.b.dim(dim, x, cx.where)
    size = -(-x.shape[d - 1] // int(chunks))
    return tuple(_slice(cx, x, d, s, min(s + size, x.shape[d - 1])) for s in range(0, x.shape[d - 1], size))


def split(cx, x: Tensor, sizes, dim: int) -> tuple:
    d = cx.b.dim(dim, x, cx.where)
    n = x.shape[d - 1]
    if isinstance(sizes, int):
        sizes = [min(sizes, n - s) for s in range(0, n, sizes)]
    if sum(sizes) != n:
        raise cx.unsupported("split", f"sizes {list(sizes)} of a dimension of {n}")
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return tuple(_slice(cx, x, d, s, s + k) for s, k in zip(starts, sizes))


def index(cx, x: Tensor, idx) -> Tensor:
    """``x[idx]`` for basic indexing that keeps the batch: ``x[:, 0]``, ``x[:, :, 1:5]``."""
    idx = idx if isinstance(idx, tuple) else (idx,)
    if not idx or idx[0] != slice(None) or any(not isinstance(i, (int, slice)) for i in idx):
        raise cx.unsupported("getitem", f"index {idx!r}; only integers and slices after ':' for the batch")
    drop = []
    for d, i in enumerate(idx[1:], start=1):
        n = x.shape[d - 1]
        if isinstance(i, int):
            i = i + n if i < 0 else i
            if not 0 <= i < n:
                raise cx.unsupported("getitem", f"index {i} of a dimension of {n}")
            x = _slice(cx, x, d, i, i + 1)
            drop.append(d)
        else:
            start, stop, step = i.indices(n)
            if step < 1 or stop <= start:
                raise cx.unsupported("getitem", f"slice {i!r}")
            x = _slice(cx, x, d, start, stop, step)
    if drop:
        shape = [s for d, s in enumerate(x.shape, start=1) if d not in drop]
        if not shape:
            raise cx.unsupported("getitem", "to a scalar per sample")
        x = cx.add("reshape", [x], {"shape": shape})
    return x
