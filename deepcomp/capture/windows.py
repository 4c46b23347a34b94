"""Windowed attention lowered to the graph's primitive ops: torchvision's Swin (its fx-wrapped
``shifted_window_attention`` and ``_patch_merging_pad``; v2's cosine attention and continuous
position bias) and the einsum equations of MaxViT's
attention. Shapes are static (from the builder), so the window partition is reshape + permute, maps the
window does not tile a ``pad`` (cropped back after), the cyclic shift a ``roll``, the shift's attention mask a ``window_mask`` node the runtime makes once
at load. No torch here, like deepcomp.capture.lower.

The batch stays dimension 0 throughout: where torchvision folds the windows into the batch
([N * windows, L, C]) the graph keeps them as a dimension of their own ([N, windows, L, C]); the
q/k/v and output projections are the Linear modules' own weights, so they are pruned and shared
like any linear layer.
"""

from __future__ import annotations

import math

from deepcomp.capture import lower
from deepcomp.capture.builder import Tensor


def continuous_position_bias(cx, p: str, mlp, window, heads: int) -> Tensor:
    """Swin v2's relative position bias [1, heads, L, L] (before the batch): 16 * sigmoid of the
    module's MLP (``mlp``, an nn.Sequential of Linear and ReLU at path ``p`` + "cpb_mlp.") on its
    stored coordinates table. Each row of the table goes through the MLP alone, so the rows are
    gathered first (a constant with ``index``, at load) and the MLP runs on the gathered [L * L, 2]:
    computed from the weights the file stores, as the model does."""
    n = int(window[0]) * int(window[1])
    t = cx.add("constant", [cx.b.input], {"tensor": f"{p}relative_coords_table", "shape": [n * n, 2],
                                          "index": f"{p}relative_position_index"})
    for i, layer in enumerate(mlp):
        kind = type(layer).__name__
        if kind == "Linear":
            bias = f"{p}cpb_mlp.{i}.bias" if layer.bias is not None else None
            t = lower.linear(cx, t, f"{p}cpb_mlp.{i}.weight", bias)
        elif kind == "ReLU":
            t = cx.add("relu", [t], {})
        else:
            raise cx.unsupported("ShiftedWindowAttentionV2", f"a {kind} in cpb_mlp; Linear and ReLU expected")
    if t.shape[-1] != heads:
        raise cx.unsupported("ShiftedWindowAttentionV2", f"cpb_mlp gives {t.shape[-1]} values per position, "
                             f"not one per head ({heads})")
    t = cx.add("mul", [cx.add("sigmoid", [t], {})], {"scalar": 16.0, "reverse": False})
    t = lower.permute(cx, lower.reshape(cx, t, [cx.batch, n, n, heads], cx.batch), [0, 3, 1, 2])
    return lower.reshape(cx, t, [cx.batch, 1, heads, n, n], cx.batch)  # [N, 1, heads, L, L] against the windows


def shifted_window_attention(cx, x: Tensor, qkv_weight: str, proj_weight: str, bias, window, heads: int, shift,
                             qkv_bias, proj_bias, logit_scale=None, key_bias=None) -> Tensor:
    """Swin's (shifted) window multi-head self-attention on x [N, H, W, C]; ``bias`` is the relative
    position bias as a capture value (cx.tensor materialises it against the scores). With
    ``logit_scale`` (a stored [heads, 1, 1]) it is Swin v2's cosine attention: q and k L2-normalised,
    the scores scaled by exp(min(logit_scale, log 100)); ``key_bias`` (the stored q/k/v bias, or None
    when its key third is zero) is subtracted from k, as v2 zeroes the key's bias."""
    what = "shifted_window_attention"
    if x.rank != 4:
        raise cx.unsupported(what, f"an input of rank {x.rank}; [N, H, W, C] expected")
    rows, cols, c = x.shape
    wh, ww = (int(v) for v in window)
    x = lower.pad(cx, x, [0, 0, 0, -cols % ww, 0, -rows % wh])  # to a multiple of the window, as torchvision
    h, w = x.shape[:2]
    sh, sw = (0 if wh >= h else int(shift[0])), (0 if ww >= w else int(shift[1]))
    gh, gw, n, d = h // wh, w // ww, wh * ww, c // heads
    if sh or sw:
        x = cx.add("roll", [x], {"shifts": [-sh, -sw], "dims": [1, 2]})
    # partition: [N, gh, wh, gw, ww, C] -> [N, gh, gw, wh, ww, C] -> [N, windows, L, C]
    x = lower.reshape(cx, x, [cx.batch, gh, wh, gw, ww, c], cx.batch)
    x = lower.reshape(cx, lower.permute(cx, x, [0, 1, 3, 2, 4, 5]), [cx.batch, gh * gw, n, c], cx.batch)
    # q, k, v [N, windows, heads, L, d]: one permute of the projection to [N, 3, windows, heads, L, d],
    # whose slices along dimension 1 need no copy at batch 1
    qkv = lower.reshape(cx, lower.linear(cx, x, qkv_weight, qkv_bias), [cx.batch, gh * gw, n, 3, heads, d], cx.batch)
    q, k, v = (lower.reshape(cx, t, [cx.batch, gh * gw, heads, n, d], cx.batch)
               for t in lower.split(cx, lower.permute(cx, qkv, [0, 3, 1, 4, 2, 5]), 1, 1))
    if key_bias is not None:  # the key's third of the bias, [1, heads, 1, d] before the batch
        kb = cx.add("constant", [cx.b.input], {"tensor": key_bias, "shape": [3, heads, 1, d]})
        k = cx.add("sub", [k, lower.index(cx, kb, (slice(None), slice(1, 2)))], {})
    if logit_scale is None:
        q = cx.add("mul", [q], {"scalar": d ** -0.5, "reverse": False})
    else:  # cosine attention; the scale goes onto q, which is smaller than the scores
        scale = cx.add("clamp", [cx.tensor(logit_scale, like=q)], {"min": None, "max": math.log(100.0)})
        q = cx.add("normalize", [q], {"dim": 4, "eps": 1e-12})
        q = cx.add("mul", [q, cx.add("exp", [scale], {})], {})
        k = cx.add("normalize", [k], {"dim": 4, "eps": 1e-12})
    scores = cx.add("matmul", [q, lower.permute(cx, k, [0, 1, 2, 4, 3])], {})  # [N, windows, heads, L, L]
    scores = cx.add("add", [scores, cx.tensor(bias, like=scores)], {})
    if sh or sw:
        mask = cx.add("window_mask", [cx.b.input], {"size": [h, w], "window": [wh, ww], "shift": [sh, sw]})
        scores = cx.add("add", [scores, mask], {})
    out = cx.add("matmul", [cx.add("softmax", [scores], {"dim": 4}), v], {})
    out = lower.reshape(cx, lower.permute(cx, out, [0, 1, 3, 2, 4]), [cx.batch, gh * gw, n, c], cx.batch)
    out = lower.linear(cx, out, proj_weight, proj_bias)
    # reverse the partition: [N, gh, gw, wh, ww, C] -> [N, gh, wh, gw, ww, C] -> [N, H, W, C]
    out = lower.reshape(cx, out, [cx.batch, gh, gw, wh, ww, c], cx.batch)
    out = lower.reshape(cx, lower.permute(cx, out, [0, 1, 3, 2, 4, 5]), [cx.batch, h, w, c], cx.batch)
    if sh or sw:
        out = cx.add("roll", [out], {"shifts": [sh, sw], "dims": [1, 2]})
    return lower.index(cx, out, (slice(None), slice(0, rows), slice(0, cols)))  # crop the padding


def patch_merging(cx, x: Tensor) -> Tensor:
    """Swin's patch merging gather: [N, H, W, C] -> [N, H/2, W/2, 4C], the four 2x2 neighbours in the
    order (0, 0), (1, 0), (0, 1), (1, 1) along the channels; one reshape-permute-reshape."""
    if x.rank != 4:
        raise cx.unsupported("_patch_merging_pad", f"an input of rank {x.rank}; [N, H, W, C] expected")
    x = lower.pad(cx, x, [0, 0, 0, x.shape[1] % 2, 0, x.shape[0] % 2])  # odd sides padded, as torchvision
    h, w, c = x.shape
    x = lower.reshape(cx, x, [cx.batch, h // 2, 2, w // 2, 2, c], cx.batch)  # [N, H/2, dh, W/2, dw, C]
    x = lower.permute(cx, x, [0, 1, 3, 4, 2, 5])                            # [N, H/2, W/2, dw, dh, C]
    return lower.reshape(cx, x, [cx.batch, h // 2, w // 2, 4 * c], cx.batch)


def einsum(cx, equation: str, a: Tensor, b: Tensor) -> Tensor:
    """A batched matrix product written as einsum (MaxViT: 'bghid,bghjd->bghij', 'bghij,bghjd->bghid'):
    equal leading letters, one contracted letter among the last two of each operand."""
    eq = equation.replace(" ", "")
    bad = cx.unsupported("einsum", f"the equation {equation!r}; deepcomp maps batched matrix products "
                         "('...ik,...kj->...ij', either operand or the result transposed) onto matmul")
    if eq.count("->") != 1 or eq.count(",") != 1:
        raise bad
    ins, out = eq.split("->")
    sa, sb = ins.split(",")
    r = len(out)
    if not (len(sa) == len(sb) == r == a.rank == b.rank) or r < 3 or len(set(out)) != r:
        raise bad
    lead = out[:-2]
    if sa[:-2] != lead or sb[:-2] != lead or len(set(sa)) != r or len(set(sb)) != r:
        raise bad
    i, j = out[-2:]
    if j in sa and i in sb:  # the result transposed: (a b)^T = b^T a^T, so b comes first
        a, b, sa, sb = b, a, sb, sa
    k = set(sa[-2:]) & set(sb[-2:])
    if len(k) != 1 or set(sa[-2:]) != {i, *k} or set(sb[-2:]) != {j, *k}:
        raise bad
    k = k.pop()
    swap = list(range(r - 2)) + [r - 1, r - 2]
    if sa[-2:] != i + k:
        a = lower.permute(cx, a, swap)
    if sb[-2:] != k + j:
        b = lower.permute(cx, b, swap)
    return cx.add("matmul", [a, b], {})
