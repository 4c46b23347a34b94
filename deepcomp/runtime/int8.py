"""Runtime steps for int8 conv2d / linear nodes (docs/int8.md). Deploy side: numpy and
deepcomp._native only, never torch.

An int8 node takes and gives a :class:`QTensor` (uint8 values with their scale and zero point, in
the channel-blocked layout for images, plain [N, features] for vectors) or a float32 array. A conv
whose consumer is another int8 conv writes straight into the consumer's padded layout
(``out_padding``), so a chain of int8 convs never repacks; at a border with fp32 ops,
:func:`dequantize` and the steps' own quantization of fp32 input convert.

    step = Int8ConvStep(w, bias, stride=1, padding=1, in_q=(s_in, 0), out_q=(s_out, 0), relu=True,
                        pool=(2, 2), out_padding=1)
    y = step(x)              # x: float32 NCHW or a QTensor; y: QTensor (or float32 with out_q=None)

The weight is the decoded fp32 tensor, or (what a loaded file gives, :func:`coded_to_int8`) a
:class:`CodedInt8`: the file's CSR arrays with a per-channel table of the centroids' int8 values,
from which the native layers build their blocks without a dense copy. A BatchNorm after a conv
(``bn=(scale, shift)``, per channel) folds into the epilogue (:func:`_requant`).

Without the native int8 kernels (an older build) the steps run the numpy integer reference, which
gives the same bits, slowly.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from deepcomp.runtime import int8_reference as ref

try:
    from deepcomp import _native
except ImportError:  # pragma: no cover - a build without the extension
    _native = None

QMAX = 127


def native_int8() -> bool:
    return _native is not None and hasattr(_native, "Int8Conv2d")


class QTensor(NamedTuple):
    """uint8 values ``x = scale * (q - zp)``. Images: data is [N, layout bytes] in the blocked layout
    of shape (N, C, H, W) with ``padding``; vectors: data is [N, F] and padding is None."""

    data: np.ndarray
    scale: float
    zp: int
    shape: tuple
    padding: tuple | None = None

    def values(self) -> np.ndarray:
        """The uint8 values, NCHW (or [N, F])."""
        if self.padding is None:
            return self.data
        N, C, H, W = self.shape
        return ref.unpack(self.data, C, H, W, self.padding)


def dequantize(t: QTensor) -> np.ndarray:
    return (t.values().astype(np.float32) - np.float32(t.zp)) * np.float32(t.scale)


def weights_to_int8(w: np.ndarray, scale: np.ndarray | None = None, *, qmax: int = QMAX) -> tuple[np.ndarray, np.ndarray]:
    """Decoded fp32 weights [O, ...] -> (int8 weights, per-channel scales s_o = max|w_o| / qmax).

    ``q = clamp(rint(w / s_o), -127, 127)`` in float32; an all-zero channel gets s_o = 0 and q = 0.
    With k-means-shared weights every q of a channel comes from one of the layer's centroids, so
    this is the codebook mapped to a per-channel int8 grid (docs/dcz-format.md, int8 additions).
    ``scale``: the file's ``weight_scale`` tensor, used instead of recomputing s_o. ``qmax`` (the
    compress side's choice, then held by the scales): 127, or 63 for 7-bit weights, whose products
    pair up without saturating AVX2's ``vpmaddubsw``.
    """
    w = np.asarray(w, np.float32)
    flat = w.reshape(w.shape[0], -1)
    if scale is not None:
        s = _scales(scale, w.shape[0])
    else:
        s = (np.abs(flat).max(axis=1) / np.float32(qmax)).astype(np.float32)
    safe = np.where(s > 0, s, np.float32(1)).astype(np.float32)
    q = np.clip(np.rint(flat / safe[:, None]), -QMAX, QMAX).astype(np.int8)
    return q.reshape(w.shape), s


def _scales(scale, rows: int) -> np.ndarray:
    s = np.ascontiguousarray(scale, np.float32).reshape(-1)
    if s.shape[0] != rows or not np.all(np.isfinite(s)) or (s < 0).any():
        raise ValueError(f"weight_scale must hold {rows} finite entries >= 0")
    return s


class CodedInt8(NamedTuple):
    """An int8 weight as a file's CSR arrays: row o's entries ``row_ptr[o]:row_ptr[o + 1]`` sit at
    the columns ``col`` of the flattened [in, kh, kw] (or [in]) row and have the int8 values
    ``table[o, cluster]``: the codebook mapped to channel o's grid."""

    shape: tuple
    row_ptr: np.ndarray  # int64 [O + 1]
    col: np.ndarray      # int32
    cluster: np.ndarray  # uint8
    table: np.ndarray    # int8 [O, K]

    def dense(self) -> np.ndarray:
        O = self.shape[0]
        q = np.zeros((O, int(np.prod(self.shape[1:]))), np.int8)
        rows = np.repeat(np.arange(O), np.diff(self.row_ptr))
        q[rows, self.col] = self.table[rows, self.cluster]
        return q.reshape(self.shape)

    def native(self) -> dict:
        """The form the native Int8Conv2d / Int8Linear take."""
        return {"row_ptr": self.row_ptr, "col": self.col, "cluster": self.cluster, "table": self.table,
                "shape": list(self.shape)}


def coded_to_int8(csr: dict, shape, scale) -> tuple[CodedInt8, np.ndarray]:
    """A coded weight (CSR ``row_ptr``, ``col``, ``cluster``, ``codebook``, as deepcomp.runtime.tensors
    holds it) and the file's per-channel ``weight_scale`` -> (CodedInt8, scales): the int8 values
    :func:`weights_to_int8` gives for the decoded weight, computed per (channel, centroid)."""
    shape = tuple(int(d) for d in shape)
    s = _scales(scale, shape[0])
    safe = np.where(s > 0, s, np.float32(1)).astype(np.float32)
    cb = np.ascontiguousarray(csr["codebook"], np.float32).reshape(-1)
    table = np.clip(np.rint(cb[None, :] / safe[:, None]), -QMAX, QMAX).astype(np.int8)
    return CodedInt8(shape, np.ascontiguousarray(csr["row_ptr"], np.int64), np.ascontiguousarray(csr["col"], np.int32),
                     np.ascontiguousarray(csr["cluster"], np.uint8), table), s


def _int8_weight(weight, scale):
    """(int8 dense array or CodedInt8, per-channel scales) of a step's weight argument."""
    if isinstance(weight, CodedInt8):
        return weight, _scales(scale, weight.shape[0])
    return weights_to_int8(weight, scale)


def _negate_channels(w, neg: np.ndarray):
    """The int8 weight with the channels ``neg`` negated (exact: -128 is never used)."""
    if not neg.any():
        return w
    if isinstance(w, CodedInt8):
        t = w.table.copy()
        t[neg] = -t[neg]
        return w._replace(table=t)
    q = w.copy()
    q[neg] = -q[neg]
    return q


def _requant(s_in: float, s_w: np.ndarray, bias, out_q, bn=None):
    """m and b of the epilogue (docs/int8.md): to uint8 with out_q = (scale, zp), else to fp32.

    A BatchNorm ``bn = (scale, shift)`` after the layer folds in: ``m = s_in * s_w * |scale|``, ``b =
    bias * scale + shift`` (the channels with scale < 0 have their int8 weights negated, so that m
    stays >= 0 and the fused max-pool's monotone epilogue holds)."""
    b = np.zeros(len(s_w), np.float32) if bias is None else np.asarray(bias, np.float32)
    m = np.float32(s_in) * s_w
    if bn is not None:
        scale, shift = (np.asarray(v, np.float32).reshape(-1) for v in bn)
        m = m * np.abs(scale)
        b = b * scale + shift
    if out_q is not None:
        m = m / np.float32(out_q[0])
        b = b / np.float32(out_q[0])
    return m.astype(np.float32), b.astype(np.float32)


def _pair(v) -> tuple[int, int]:
    return ref._pair(v)


def _into(out, y: np.ndarray) -> np.ndarray:
    """The reference's result y, copied into the caller's buffer ``out`` when there is one."""
    if out is None:
        return y
    if not isinstance(out, np.ndarray) or out.dtype != y.dtype or out.shape != y.shape or not out.flags.writeable:
        raise ValueError(f"out must be a writable {y.dtype} array of shape {list(y.shape)}")
    np.copyto(out, y)
    return out


class _Int8Step:
    """What both steps share: the int8 weight, held by the native layer (which keeps only its block
    layout) or, for the numpy reference, as a dense int8 array."""

    native = None
    _q = None

    def _weight(self, weight, weight_scale, bn):
        w, self.s_w = _int8_weight(weight, weight_scale)
        self.shape = tuple(int(d) for d in w.shape)
        if bn is not None:
            w = _negate_channels(w, np.asarray(bn[0], np.float32).reshape(-1) < 0)
        return w

    def _keep(self, w) -> None:
        """After the native layer is built (or not): a weight that came coded (a loaded file) is kept
        dense only for the reference; one given dense stays (the caller had it dense anyway)."""
        if not isinstance(w, CodedInt8):
            self._q = w
        elif self.native is None:
            self._q = w.dense()

    @property
    def q(self) -> np.ndarray:
        """The int8 weight, dense (BatchNorm sign folded in); a step built from a coded weight on the
        native kernels does not hold it."""
        if self._q is None:
            raise AttributeError("the native int8 layer holds this step's weights as blocks only")
        return self._q

    @property
    def nonzeros(self) -> int:
        return int(self.native.nonzeros if self.native is not None else np.count_nonzero(self.q))

    @property
    def nbytes(self) -> int:
        """The weight layout (int8 dense for the reference) and the per-channel epilogue."""
        w = self.native.bytes if self.native is not None else self.q.nbytes
        return int(w + self.m.nbytes + self.b.nbytes)


class Int8ConvStep(_Int8Step):
    """One int8 conv2d (+ BatchNorm, + ReLU, + clamp or max-pool) node. ``in_q``/``out_q``: (scale, zero
    point) of the input and output; out_q=None gives float32 NCHW. ``bn``: (scale, shift) per channel.
    ``clamp``: (min, max), either None, applied to the float32 output after the ReLU (out_q=None only)."""

    def __init__(self, weight, bias=None, *, stride=1, padding=0, dilation=1, in_q, out_q=None, relu=False,
                 clamp=None, pool=None, out_padding=0, kernel="auto", weight_scale=None, bn=None, native=True):
        clamp = None if clamp is None or clamp == (None, None) else tuple(clamp)
        if clamp is not None and (out_q is not None or pool is not None):
            raise ValueError("an int8 conv takes a clamp on float32 output without a pool only")
        w = self._weight(weight, weight_scale, bn)
        self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
        self.in_q, self.out_q = (float(in_q[0]), int(in_q[1])), out_q
        self.relu, self.clamp, self.pool, self.out_padding = bool(relu), clamp, pool, _pair(out_padding)
        self.m, self.b = _requant(self.in_q[0], self.s_w, bias, out_q, bn)
        self.out = "u8" if out_q is not None else "f32"
        use_native = bool(native and native_int8())
        # the native layer runs the columns-in-lanes rewrite where it saves dot products (int8_reference)
        self.columns = use_native and ref.columns_pay(self.shape[1], self.shape[3], self.stride, self.dilation)
        # At stride 1 the native layer takes at most dilation * (kw - 1) of padding along W (its rows
        # share their padding columns, docs/int8.md); more becomes zero-point columns of the input.
        reach = self.dilation[1] * (self.shape[3] - 1)
        self.extra_w = max(0, self.padding[1] - reach) if self.stride[1] == 1 else 0
        if use_native:
            nw, stride, padding = w.native() if isinstance(w, CodedInt8) else w, self.stride, self.padding
            padding = (padding[0], padding[1] - self.extra_w)
            if self.columns:
                nw = ref.columns_weight(w.dense() if isinstance(w, CodedInt8) else w)
                stride, padding = (self.stride[0], 1), (self.padding[0], 0)
            self.native = _native.Int8Conv2d(nw, self.m, self.b, stride=stride, padding=padding, dilation=self.dilation,
                                             zp_in=self.in_q[1], relu=self.relu, out=self.out,
                                             zp_out=0 if out_q is None else int(out_q[1]),
                                             out_padding=self.out_padding, pool=pool, clamp=clamp, kernel=kernel)
        self._keep(w)

    def _values(self, x) -> np.ndarray:
        """The input as uint8 NCHW in this step's quantization."""
        s, zp = self.in_q
        if isinstance(x, QTensor):
            if abs(x.scale - s) > 1e-6 * s or x.zp != zp:
                raise ValueError(f"int8 conv input has scale {x.scale} / zp {x.zp}, the step expects {s} / {zp}")
            return x.values()
        return ref.quantize(x, np.float32(1.0) / np.float32(s), zp)

    def _packed(self, x):
        """(uint8 [N, bytes] in the native layer's input layout, N, H, W of its input)."""
        if self.columns:
            return self._packed_columns(x)
        if self.extra_w:
            e, zp = self.extra_w, self.in_q[1]
            q = np.pad(self._values(x), ((0, 0), (0, 0), (0, 0), (e, e)), constant_values=zp)
            return ref.pack_u8(q, zp, (self.padding[0], self.padding[1] - e), self.stride), q.shape[0], q.shape[2], q.shape[3]
        if isinstance(x, QTensor) and x.padding == self.padding and self.stride == (1, 1):
            if abs(x.scale - self.in_q[0]) > 1e-6 * self.in_q[0] or x.zp != self.in_q[1]:
                raise ValueError(f"int8 conv input has scale {x.scale} / zp {x.zp}, the step expects {self.in_q}")
            return (x.data,) + tuple(x.shape[:1]) + tuple(x.shape[2:])
        if not isinstance(x, QTensor):
            x = np.asarray(x, np.float32)
            data = _native.int8_pack(x, np.float32(1.0) / np.float32(self.in_q[0]), self.in_q[1], self.padding,
                                     self.stride)
            return (data, x.shape[0]) + tuple(x.shape[2:])
        q = self._values(x)
        return (ref.pack_u8(q, self.in_q[1], self.padding, self.stride), q.shape[0]) + tuple(q.shape[2:])

    def _packed_columns(self, x):
        N, _, H, W = x.shape
        (ph, pw), zp = self.padding, self.in_q[1]
        width = ref.columns_width(W, pw, self.shape[3])
        if isinstance(x, QTensor):
            q = ref.columns_in_lanes(self._values(x), pw, width, fill=zp)
            return ref.pack_u8(q, zp, (ph, 0), (self.stride[0], 1)), N, H, width
        data = _native.int8_pack_columns(np.asarray(x, np.float32), np.float32(1.0) / np.float32(self.in_q[0]), zp,
                                         self.padding, self.stride[0], width)
        return data, N, H, width

    def __call__(self, x, out=None):
        """``out``: an array of a previous result's data (the QTensor's ``data``, or the float32 output)
        to write this result into instead of allocating one."""
        O = self.shape[0]
        zp_out = 0 if self.out_q is None else int(self.out_q[1])
        if self.native is not None:
            data, N, H, W = self._packed(x)
            y = self.native.forward(data, H, W, out=out)
            oh, ow = self.native.out_size(H, W)
        else:
            q = self._values(x)
            y = ref.conv2d(q, self.in_q[1], self.q, self.m, self.b, stride=self.stride, padding=self.padding,
                           dilation=self.dilation, relu=self.relu, pool=self.pool, out=self.out, zp_out=zp_out)
            N, _, oh, ow = y.shape
            if self.out == "u8":
                y = ref.pack_u8(y, zp_out, self.out_padding, 1)
            elif self.clamp is not None:
                y = np.clip(y, *self.clamp, out=y)
            y = _into(out, y)
        if self.out == "f32":
            return y
        return QTensor(y, float(self.out_q[0]), zp_out, (N, O, oh, ow), self.out_padding)


class Int8LinearStep(_Int8Step):
    """One int8 linear (+ ReLU) node. Input: a QTensor (an image is flattened NCHW, as torch's
    flatten does), or float32 [N, F]. out_q=None gives float32 [N, out]."""

    def __init__(self, weight, bias=None, *, in_q, out_q=None, relu=False, kernel="auto", weight_scale=None,
                 native=True):
        w = self._weight(weight, weight_scale, None)
        self.in_q, self.out_q, self.relu = (float(in_q[0]), int(in_q[1])), out_q, bool(relu)
        self.m, self.b = _requant(self.in_q[0], self.s_w, bias, out_q)
        self.out = "u8" if out_q is not None else "f32"
        if native and native_int8():
            self.native = _native.Int8Linear(w.native() if isinstance(w, CodedInt8) else w, self.m, self.b,
                                             zp_in=self.in_q[1], relu=self.relu, out=self.out,
                                             zp_out=0 if out_q is None else int(out_q[1]), kernel=kernel)
        self._keep(w)

    def __call__(self, x, out=None):
        """``out``: as for Int8ConvStep."""
        s, zp = self.in_q
        if isinstance(x, QTensor):
            if abs(x.scale - s) > 1e-6 * s or x.zp != zp:
                raise ValueError(f"int8 linear input has scale {x.scale} / zp {x.zp}, the step expects {s} / {zp}")
            q = np.ascontiguousarray(x.values().reshape(x.shape[0], -1))
        else:
            q = ref.quantize(np.asarray(x, np.float32), np.float32(1.0) / np.float32(s), zp)
        if self.native is not None:
            y = self.native.forward(q, out=out)
        else:
            y = _into(out, ref.linear(q, zp, self.q, self.m, self.b, relu=self.relu, out=self.out,
                                      zp_out=0 if self.out_q is None else int(self.out_q[1])))
        if self.out == "f32":
            return y
        return QTensor(y, float(self.out_q[0]), int(self.out_q[1]), y.shape, None)
