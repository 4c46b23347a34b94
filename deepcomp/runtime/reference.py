"""Pure-numpy reference implementations of the runtime's ops, with the native kernels' signatures.

The executor uses one of these only when ``deepcomp._native`` lacks the corresponding kernel (an
older build); the tests use them to cross-check the native kernels. They favour clarity over speed:
a sparse layer is densified once at construction.

Semantics follow torch.nn.functional (conv2d, linear, max_pool2d, avg_pool2d, adaptive_avg_pool2d,
relu) on float32 NCHW arrays.
"""

from __future__ import annotations

import math

import numpy as np


def _pair(v) -> tuple[int, int]:
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    v = tuple(int(a) for a in v)
    return (v[0], v[0]) if len(v) == 1 else (v[0], v[1])


def csr_to_dense(row_ptr, col, cols: int, *, values=None, cluster=None, codebook=None) -> np.ndarray:
    """The dense [rows, cols] float32 matrix of a CSR weight (values, or cluster indices + codebook)."""
    row_ptr = np.asarray(row_ptr, dtype=np.int64)
    col = np.asarray(col, dtype=np.int64)
    rows = len(row_ptr) - 1
    if values is None:
        values = np.asarray(codebook, dtype=np.float32)[np.asarray(cluster, dtype=np.int64)]
    w = np.zeros((rows, cols), dtype=np.float32)
    r = np.repeat(np.arange(rows), np.diff(row_ptr))
    w[r, col] = np.asarray(values, dtype=np.float32)
    return w


class SparseLinear:
    def __init__(self, row_ptr, col, in_features, *, values=None, cluster=None, codebook=None, bias=None):
        self.w = csr_to_dense(row_ptr, col, int(in_features), values=values, cluster=cluster, codebook=codebook)
        self.b = None if bias is None else np.asarray(bias, dtype=np.float32)

    def forward(self, x, relu=False, out=None):
        y = np.asarray(x, dtype=np.float32) @ self.w.T
        if self.b is not None:
            y += self.b
        if relu:
            np.maximum(y, 0, out=y)
        if out is not None:
            out[...] = y
            return out
        return y

    __call__ = forward


def _windows(xp, kh, kw, sh, sw, dh, dw, oh, ow):
    """Yield (i, j, view [N, C, oh, ow]) of the padded input for each kernel tap."""
    for i in range(kh):
        for j in range(kw):
            y0, x0 = i * dh, j * dw
            yield i, j, xp[:, :, y0:y0 + sh * (oh - 1) + 1:sh, x0:x0 + sw * (ow - 1) + 1:sw]


class SparseConv2d:
    def __init__(self, row_ptr, col, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, *, values=None, cluster=None, codebook=None, bias=None):
        self.kh, self.kw = _pair(kernel_size)
        self.sh, self.sw = _pair(stride)
        self.ph, self.pw = _pair(padding)
        self.dh, self.dw = _pair(dilation)
        self.groups = int(groups)
        self.cin, self.cout = int(in_channels), int(out_channels)
        cols = (self.cin // self.groups) * self.kh * self.kw
        w = csr_to_dense(row_ptr, col, cols, values=values, cluster=cluster, codebook=codebook)
        self.w = w.reshape(self.cout, self.cin // self.groups, self.kh, self.kw)
        self.b = None if bias is None else np.asarray(bias, dtype=np.float32)

    def output_size(self, h, w):
        oh = (h + 2 * self.ph - self.dh * (self.kh - 1) - 1) // self.sh + 1
        ow = (w + 2 * self.pw - self.dw * (self.kw - 1) - 1) // self.sw + 1
        return oh, ow

    def forward(self, x, relu=False, scale=None, shift=None, out=None):
        x = np.asarray(x, dtype=np.float32)
        squeeze = x.ndim == 3
        if squeeze:
            x = x[None]
        n, c, h, w = x.shape
        oh, ow = self.output_size(h, w)
        xp = np.pad(x, ((0, 0), (0, 0), (self.ph, self.ph), (self.pw, self.pw)))
        g, cg, og = self.groups, self.cin // self.groups, self.cout // self.groups
        y = np.zeros((n, self.cout, oh, ow), dtype=np.float32)
        for i, j, win in _windows(xp, self.kh, self.kw, self.sh, self.sw, self.dh, self.dw, oh, ow):
            for gi in range(g):
                xs = win[:, gi * cg:(gi + 1) * cg]                      # [N, cg, oh, ow]
                ws = self.w[gi * og:(gi + 1) * og, :, i, j]             # [og, cg]
                y[:, gi * og:(gi + 1) * og] += np.einsum("nchw,oc->nohw", xs, ws, optimize=True)
        if self.b is not None:
            y += self.b[None, :, None, None]
        if scale is not None:
            y *= np.asarray(scale, dtype=np.float32)[None, :, None, None]
        if shift is not None:
            y += np.asarray(shift, dtype=np.float32)[None, :, None, None]
        if relu:
            np.maximum(y, 0, out=y)
        if squeeze:
            y = y[0]
        if out is not None:
            out[...] = y
            return out
        return y

    __call__ = forward


def pool_out(size, k, s, p, d, ceil_mode) -> int:
    """torch's pooling output size along one axis."""
    num = size + 2 * p - d * (k - 1) - 1
    out = (-(-num // s) if ceil_mode else num // s) + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def _pool_setup(x, kernel_size, stride, padding, dilation, ceil_mode, fill):
    """The common part of the pools: ``(squeeze, padded input, (kh, kw, sh, sw, dh, dw), (oh, ow),
    (h, w, ph, pw))``. A 3-D input gets a batch axis (``squeeze`` says to drop it again); the input
    is padded with ``fill`` far enough for every window of the output."""
    x = np.asarray(x, dtype=np.float32)
    squeeze = x.ndim == 3
    if squeeze:
        x = x[None]
    kh, kw = _pair(kernel_size)
    sh, sw = _pair(stride if stride is not None else (kh, kw))
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    n, c, h, w = x.shape
    oh, ow = pool_out(h, kh, sh, ph, dh, ceil_mode), pool_out(w, kw, sw, pw, dw, ceil_mode)
    need_h = sh * (oh - 1) + dh * (kh - 1) + 1
    need_w = sw * (ow - 1) + dw * (kw - 1) + 1
    xp = np.full((n, c, max(need_h, h + 2 * ph), max(need_w, w + 2 * pw)), fill, dtype=np.float32)
    xp[:, :, ph:ph + h, pw:pw + w] = x
    return squeeze, xp, (kh, kw, sh, sw, dh, dw), (oh, ow), (h, w, ph, pw)


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    squeeze, xp, geo, (oh, ow), _ = _pool_setup(x, kernel_size, stride, padding, dilation, ceil_mode, -np.inf)
    y = np.full((*xp.shape[:2], oh, ow), -np.inf, dtype=np.float32)
    for _, _, win in _windows(xp, *geo, oh, ow):
        np.maximum(y, win, out=y)
    return y[0] if squeeze else y


def _avg_divisors(size, k, s, p, out, count_include_pad):
    div = np.empty(out, dtype=np.float32)
    for o in range(out):
        start = o * s - p
        end = min(start + k, size + p)
        full = end - start
        start, end = max(start, 0), min(end, size)
        div[o] = full if count_include_pad else (end - start)
    return div


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
    squeeze, xp, geo, (oh, ow), (h, w, ph, pw) = _pool_setup(x, kernel_size, stride, padding, 1, ceil_mode, 0.0)
    kh, kw, sh, sw = geo[:4]
    y = np.zeros((*xp.shape[:2], oh, ow), dtype=np.float32)
    for _, _, win in _windows(xp, *geo, oh, ow):
        y += win
    div = np.outer(_avg_divisors(h, kh, sh, ph, oh, count_include_pad),
                   _avg_divisors(w, kw, sw, pw, ow, count_include_pad))
    y /= div
    return y[0] if squeeze else y


def adaptive_avg_pool2d(x, output_size):
    x = np.asarray(x, dtype=np.float32)
    squeeze = x.ndim == 3
    if squeeze:
        x = x[None]
    oh, ow = _pair(output_size)
    n, c, h, w = x.shape
    y = np.empty((n, c, oh, ow), dtype=np.float32)
    for i in range(oh):
        y0, y1 = (i * h) // oh, math.ceil((i + 1) * h / oh)
        for j in range(ow):
            x0, x1 = (j * w) // ow, math.ceil((j + 1) * w / ow)
            y[:, :, i, j] = x[:, :, y0:y1, x0:x1].mean(axis=(2, 3))
    return y[0] if squeeze else y


def relu_(x):
    np.maximum(x, 0, out=x)
    return x


_threads = 1


def set_num_threads(n):
    global _threads
    _threads = int(n)


def get_num_threads():
    return _threads
