"""Numpy integer reference of the int8 path (docs/int8.md): the uint8 activation layout, quantizing
into it, and whole int8 conv / linear layers with their requantization.

The native kernels (``deepcomp._native.Int8Conv2d``, ``Int8Linear``, ``int8_pack``) must equal these
bit for bit on every ISA path: the sums are integers, and the requantization is the same float32
operations in the same order, ``y = float32(acc - comp) * m`` then ``y + b`` (never fused), ReLU as
``y > 0 ? y : 0``, uint8 as ``rint(clip(y, -zp, 255 - zp)) + zp`` (round half to even).
"""

from __future__ import annotations

import numpy as np

LANES = 4  # input channels per 32-bit lane (the block's length)
SLACK_VECTOR = 16  # pixels of slack after the last plane, beyond one row (the widest path's lanes)


def _pair(v) -> tuple[int, int]:
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    a, b = v
    return int(a), int(b)


def layout(C: int, H: int, W: int, padding=0, stride=1) -> dict:
    """The uint8 layout of one C x H x W image, as ``deepcomp._native.int8_layout`` returns it."""
    ph, pw = _pair(padding)
    sh, sw = _pair(stride)
    G = -(-C // LANES)
    # at stride 1 along W a row's right padding is the next row's left padding
    Hq, Wq = -(-(H + 2 * ph) // sh), W + pw if sw == 1 else -(-(W + 2 * pw) // sw)
    plane = Hq * Wq
    group = sh * sw * plane
    slack = Wq + SLACK_VECTOR
    return dict(C=C, H=H, W=W, ph=ph, pw=pw, sh=sh, sw=sw, G=G, Hq=Hq, Wq=Wq, plane=plane, group=group,
                slack=slack, bytes=4 * (G * group + slack))


def quantize(x: np.ndarray, inv_scale: float, zp: int) -> np.ndarray:
    """fp32 -> uint8: clip(rint(x * inv_scale) + zp, 0, 255), in float32; NaN -> 0."""
    v = np.rint(np.asarray(x, np.float32) * np.float32(inv_scale))
    v[np.isnan(v)] = -zp
    return (np.clip(v, np.float32(-zp), np.float32(255 - zp)).astype(np.int32) + zp).astype(np.uint8)


def pack_u8(q: np.ndarray, zp: int, padding=0, stride=1) -> np.ndarray:
    """uint8 NCHW -> [N, bytes] in the blocked, padded, stride-phase-split layout."""
    N, C, H, W = q.shape
    L = layout(C, H, W, padding, stride)
    G, Hq, Wq, sh, sw = L["G"], L["Hq"], L["Wq"], L["sh"], L["sw"]
    full = np.full((N, G * LANES, Hq * sh, Wq * sw), zp, np.uint8)
    full[:, :C, L["ph"]:L["ph"] + H, L["pw"]:L["pw"] + W] = q
    # [N, G, 4, Hq, sh, Wq, sw] -> [N, G, sh, sw, Hq, Wq, 4]
    blocked = full.reshape(N, G, LANES, Hq, sh, Wq, sw).transpose(0, 1, 4, 6, 3, 5, 2)
    out = np.full((N, L["bytes"]), zp, np.uint8)
    out[:, :4 * G * L["group"]] = blocked.reshape(N, -1)
    return out


def pack(x: np.ndarray, inv_scale: float, zp: int, padding=0, stride=1) -> np.ndarray:
    """What ``deepcomp._native.int8_pack`` computes: quantize fp32 NCHW, then lay it out."""
    return pack_u8(quantize(x, inv_scale, zp), zp, padding, stride)


# ---- columns in lanes: a conv of stride 4 along W rewritten as one of stride 1 ---------------------
# With 3 input channels a lane of 4 channels carries one byte of padding, and every tap is a dot
# product: 121 per output of an 11x11 kernel. Rewritten so that a lane holds 4 consecutive columns of
# one channel (the 4 stride phases along W), an output needs C x kh x ceil(kw / 4) of them: 99.


def columns_pay(C: int, kw: int, stride, dilation) -> bool:
    """Whether the columns-in-lanes rewrite runs fewer dot products than the channel-blocked conv."""
    return _pair(stride)[1] == LANES and _pair(dilation) == (1, 1) and C * -(-kw // LANES) < -(-C // LANES) * kw


def columns_width(W: int, pw: int, kw: int) -> int:
    """Width of the rewritten input: the output's width plus the rewritten kernel's, less one."""
    return (W + 2 * pw - kw) // LANES + 1 + -(-kw // LANES) - 1


def columns_in_lanes(x: np.ndarray, pw: int, width: int, fill=0) -> np.ndarray:
    """[N, C, H, W] -> [N, 4C, H, width]: channel 4c + b at column j is column 4j + b - pw of channel c
    (``fill`` outside). What ``deepcomp._native.int8_pack_columns`` lays out, before quantizing."""
    N, C, H, W = x.shape
    full = np.full((N, C, H, LANES * width), fill, x.dtype)
    n = max(0, min(W, LANES * width - pw))
    full[..., pw:pw + n] = x[..., :n]
    return full.reshape(N, C, H, width, LANES).transpose(0, 1, 4, 2, 3).reshape(N, LANES * C, H, width)


def columns_weight(w: np.ndarray, fill=0) -> np.ndarray:
    """[O, C, kh, kw] -> [O, 4C, kh, ceil(kw / 4)]: the weight of the rewritten conv (``fill`` past kw)."""
    O, C, kh, kw = w.shape
    k4 = -(-kw // LANES)
    full = np.full((O, C, kh, LANES * k4), fill, w.dtype)
    full[..., :kw] = w
    return full.reshape(O, C, kh, k4, LANES).transpose(0, 1, 4, 2, 3).reshape(O, LANES * C, kh, k4)


def columns_unweight(w4: np.ndarray, kw: int) -> np.ndarray:
    """The inverse of :func:`columns_weight`: [O, 4C, kh, ceil(kw / 4)] -> [O, C, kh, kw]."""
    O, C4, kh, k4 = w4.shape
    w = w4.reshape(O, C4 // LANES, LANES, kh, k4).transpose(0, 1, 3, 4, 2).reshape(O, C4 // LANES, kh, LANES * k4)
    return np.ascontiguousarray(w[..., :kw])


def unpack(buf: np.ndarray, C: int, H: int, W: int, padding=0) -> np.ndarray:
    """[N, bytes] in a stride-1 layout -> uint8 NCHW (the inverse of pack_u8 with stride 1)."""
    L = layout(C, H, W, padding, 1)
    buf = np.asarray(buf, np.uint8).reshape(-1, L["bytes"])
    G, Hq, Wq = L["G"], L["Hq"], L["Wq"]
    b = buf[:, :4 * G * L["group"]].reshape(-1, G, Hq, Wq, LANES)
    b = b[:, :, L["ph"]:L["ph"] + H, L["pw"]:L["pw"] + W]
    return np.ascontiguousarray(b.transpose(0, 1, 4, 2, 3).reshape(-1, G * LANES, H, W)[:, :C])


def requantize(acc: np.ndarray, comp, m, b, relu: bool) -> np.ndarray:
    """int sums -> float32 y, per output channel along axis 1 (comp, m, b broadcast there)."""
    shape = (1, -1) + (1,) * (acc.ndim - 2)
    y = (acc - np.asarray(comp, np.int64).reshape(shape)).astype(np.float32)
    y = y * np.asarray(m, np.float32).reshape(shape)
    y = y + np.asarray(b, np.float32).reshape(shape)
    return np.where(y > 0, y, np.float32(0)) if relu else y


def to_u8(y: np.ndarray, zp: int) -> np.ndarray:
    q = np.rint(np.clip(y, np.float32(-zp), np.float32(255 - zp))).astype(np.int32) + zp
    return q.astype(np.uint8)


def _max_pool(y: np.ndarray, k: int, s: int) -> np.ndarray:
    N, C, H, W = y.shape
    oh, ow = (H - k) // s + 1, (W - k) // s + 1
    out = np.full((N, C, oh, ow), -np.inf, np.float32)
    for i in range(k):
        for j in range(k):
            np.maximum(out, y[:, :, i:i + s * (oh - 1) + 1:s, j:j + s * (ow - 1) + 1:s], out=out)
    return out


def conv2d(q: np.ndarray, zp_in: int, w: np.ndarray, m, b, *, stride=1, padding=0, dilation=1, relu=False,
           pool=None, out="u8", zp_out=0) -> np.ndarray:
    """int8 conv of uint8 NCHW input q (zero point zp_in) with int8 weights [OC, C, kh, kw].

    Returns uint8 NCHW (out="u8") or float32 NCHW ("f32"); pool=(k, s) max-pools after the ReLU.
    """
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    N, C, H, W = q.shape
    OC, _, kh, kw = w.shape
    x = np.full((N, C, H + 2 * ph, W + 2 * pw), zp_in, np.int64)
    x[:, :, ph:ph + H, pw:pw + W] = q
    oh = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    acc = np.zeros((N, OC, oh, ow), np.int64)
    w64 = w.astype(np.int64)
    for i in range(kh):
        for j in range(kw):
            v = x[:, :, i * dh:i * dh + sh * (oh - 1) + 1:sh, j * dw:j * dw + sw * (ow - 1) + 1:sw]
            acc += np.einsum("nchw,oc->nohw", v, w64[:, :, i, j])
    comp = zp_in * w64.reshape(OC, -1).sum(1)
    y = requantize(acc, comp, m, b, relu)
    if pool is not None:
        y = _max_pool(y, *_pair(pool))
    return to_u8(y, zp_out) if out == "u8" else y


def linear(q: np.ndarray, zp_in: int, w: np.ndarray, m, b, *, relu=False, out="f32", zp_out=0) -> np.ndarray:
    """int8 linear of uint8 [N, in] input with int8 weights [out, in]."""
    w64 = w.astype(np.int64)
    acc = np.asarray(q, np.int64) @ w64.T
    y = requantize(acc, zp_in * w64.sum(1), m, b, relu)
    return to_u8(y, zp_out) if out == "u8" else y
