"""Execute a .dcz graph with the native sparse kernels. Deploy side: numpy and deepcomp._native only.

A :class:`RuntimeModel` is planned once, when it is built: every node's output shape is inferred
from the graph's input shape (so a malformed graph fails at load time, not mid-inference), each
conv2d / linear gets a native kernel object holding its CSR weight (cluster indices + codebook for
coded tensors; a dense weight becomes CSR at 100% density), a BatchNorm recorded on a convolution
becomes the kernel's per-channel scale/shift epilogue, a ReLU whose input feeds nothing else is
fused into the op that produced it, and each intermediate is dropped after its last use.

Calling the model only reads the plan, so one RuntimeModel may be called from several threads at
once (the native kernels release the GIL).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Callable, NamedTuple

import numpy as np

from deepcomp.errors import DczError, InputShapeError, UnsupportedOpError
from deepcomp.runtime import reference

try:  # the extension may be missing in a broken install; the reference ops still run a graph
    from deepcomp import _native
except ImportError:  # pragma: no cover - exercised only without a build
    _native = None


class LayerInfo(NamedTuple):
    """One weighted layer: name, op, density (kept / total weights), nnz (kept weights), and bytes
    (the weight's size in memory at run time: CSR row pointers, columns and cluster indices plus the
    codebook, or float32 values for an uncoded weight)."""

    name: str
    op: str
    density: float
    nnz: int
    bytes: int


_OPS = ("conv2d", "linear", "batchnorm2d", "relu", "maxpool2d", "avgpool2d", "adaptive_avgpool2d",
        "flatten", "add", "concat")
# Ops whose output is a new buffer nobody else holds.
_FRESH = {"conv2d", "linear", "batchnorm2d", "maxpool2d", "avgpool2d", "adaptive_avgpool2d", "add", "concat", "relu"}


def kernel(name: str):
    """The native implementation of an op when the extension has it, else the numpy reference."""
    impl = getattr(_native, name, None) if _native is not None else None
    return impl if impl is not None else getattr(reference, name)


def native_kernels() -> list[str]:
    """Which ops run natively (for diagnostics)."""
    names = ["SparseLinear", "SparseConv2d", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "relu_"]
    return [n for n in names if _native is not None and hasattr(_native, n)]


def _bad(msg: str) -> DczError:
    return DczError(f"invalid graph: {msg}")


def _pair(v, what: str) -> tuple[int, int]:
    if isinstance(v, bool) or not isinstance(v, (list, tuple)) or len(v) != 2 or \
            not all(isinstance(a, int) and not isinstance(a, bool) for a in v):
        raise _bad(f"{what} must be a pair of integers, got {v!r}")
    return int(v[0]), int(v[1])


def _int(v, what: str, lo: int = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise _bad(f"{what} must be an integer >= {lo}, got {v!r}")
    return v


def _f32(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


class _Weight:
    """A conv/linear weight as CSR arrays plus its bookkeeping."""

    def __init__(self, name: str, shape: tuple[int, ...], csr: dict, nnz: int, nbytes: int):
        self.name, self.shape, self.csr, self.nnz, self.bytes = name, shape, csr, nnz, nbytes

    @property
    def rows(self) -> int:
        return self.shape[0]

    @property
    def cols(self) -> int:
        return int(math.prod(self.shape[1:]))


class _Step(NamedTuple):
    name: str
    inputs: tuple[str, ...]
    run: Callable[..., np.ndarray]
    free: tuple[str, ...]
    kernel: object = None  # the native SparseConv2d / SparseLinear of a weighted layer


class RuntimeModel:
    """A compressed model ready to run: ``model(x)`` with x float32 ``[N, *input_shape]``.

    Build it with :func:`load` (a .dcz path), :meth:`from_loaded` (the dict of
    ``deepcomp._native.load_dcz``) or directly from the graph dict and the dense / coded tensor dicts
    in the loader's format.
    """

    def __init__(self, graph: dict, dense: dict, coded: dict, meta: dict | None = None, *, release: bool = False):
        """``release=True`` hands the tensor dicts over: each coded tensor is dropped from ``coded`` as
        soon as the kernels of its last user hold their own layout, so the loader's CSR arrays and the
        kernels' copies are never all alive at once (peak memory), and none stay alive after."""
        self.graph = graph
        self.meta = meta or {}
        self._dense = dense
        self._coded = coded
        self._release = release
        self._coded_users: dict[str, int] = {}
        self._kernels: dict[str, Any] = {}  # node name -> its native kernel (weighted layers)
        self.layers: list[LayerInfo] = []
        self._plan()
        if release:
            self._coded.clear()

    # -- construction -----------------------------------------------------------------------------

    @classmethod
    def from_loaded(cls, loaded: dict, *, release: bool = False) -> "RuntimeModel":
        def parse(key):
            raw = loaded.get(key)
            try:
                value = json.loads(raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw)
            except (TypeError, ValueError, UnicodeDecodeError) as e:
                raise DczError(f"the {key.upper()} section is not valid UTF-8 JSON: {e}") from None
            if not isinstance(value, dict):
                raise DczError(f"the {key.upper()} section must be a JSON object")
            return value

        return cls(parse("graph"), loaded.get("dense", {}), loaded.get("coded", {}), parse("meta"), release=release)

    def _weight_shape(self, name: Any, where: str) -> tuple[int, ...]:
        if not isinstance(name, str):
            raise _bad(f"node {where!r} has no weight tensor name")
        if name in self._coded:
            return tuple(int(d) for d in self._coded[name]["shape"])
        if name in self._dense:
            return tuple(int(d) for d in np.shape(self._dense[name]))
        raise DczError(f"node {where!r} uses the tensor {name!r}, which the file does not hold")

    def _weight(self, name: Any, where: str) -> _Weight:
        if not isinstance(name, str):
            raise _bad(f"node {where!r} has no weight tensor name")
        if name in self._coded:
            c = self._coded[name]
            shape = tuple(int(d) for d in c["shape"])
            csr = {
                "row_ptr": np.ascontiguousarray(c["row_ptr"], dtype=np.int64),
                "col": np.ascontiguousarray(c["col"], dtype=np.int32),
                "cluster": np.ascontiguousarray(c["cluster"], dtype=np.uint8),
                "codebook": _f32(c["codebook"]),
            }
            nbytes = sum(a.nbytes for a in csr.values())
            return _Weight(name, shape, csr, int(len(csr["col"])), nbytes)
        if name in self._dense:
            w = _f32(self._dense[name])
            if w.ndim < 2:
                raise _bad(f"weight {name!r} of node {where!r} must have at least 2 dimensions, has {w.ndim}")
            rows, cols = w.shape[0], int(math.prod(w.shape[1:]))
            csr = {
                "row_ptr": np.arange(rows + 1, dtype=np.int64) * cols,
                "col": np.tile(np.arange(cols, dtype=np.int32), rows),
                "values": w.reshape(-1),
            }
            nbytes = sum(a.nbytes for a in csr.values())
            return _Weight(name, tuple(w.shape), csr, rows * cols, nbytes)
        raise DczError(f"node {where!r} uses the tensor {name!r}, which the file does not hold")

    def _built(self, name: str) -> None:
        """A kernel now holds its own copy of weight ``name``: drop the loader's arrays when allowed."""
        if self._release and name in self._coded_users:
            self._coded_users[name] -= 1
            if self._coded_users[name] == 0:
                self._coded.pop(name, None)

    def _vector(self, name: Any, length: int, where: str, what: str) -> np.ndarray | None:
        if name is None:
            return None
        if not isinstance(name, str) or name not in self._dense:
            raise DczError(f"node {where!r} uses the tensor {name!r} as its {what}, which the file does not hold "
                           "as a dense tensor")
        v = _f32(self._dense[name]).reshape(-1)
        if v.shape[0] != length:
            raise _bad(f"{what} {name!r} of node {where!r} has {v.shape[0]} entries, expected {length}")
        return v

    def _bn(self, bn: dict, channels: int, where: str) -> tuple[np.ndarray, np.ndarray]:
        if not isinstance(bn, dict):
            raise _bad(f"the batch norm of node {where!r} must be an object")
        mean = self._vector(bn.get("running_mean"), channels, where, "running_mean")
        var = self._vector(bn.get("running_var"), channels, where, "running_var")
        if mean is None or var is None:
            raise _bad(f"the batch norm of node {where!r} needs running_mean and running_var")
        weight = self._vector(bn.get("weight"), channels, where, "batch norm weight")
        bias = self._vector(bn.get("bias"), channels, where, "batch norm bias")
        eps = bn.get("eps")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
            raise _bad(f"the batch norm eps of node {where!r} must be a number >= 0")
        scale = 1.0 / np.sqrt(var.astype(np.float64) + float(eps))
        if weight is not None:
            scale = scale * weight
        shift = -mean.astype(np.float64) * scale
        if bias is not None:
            shift = shift + bias
        return _f32(scale), _f32(shift)

    def _plan(self) -> None:
        g = self.graph
        if g.get("format") != "deepcomp-graph":
            raise _bad(f"format must be 'deepcomp-graph', got {g.get('format')!r}")
        if g.get("version") != 1:
            raise DczError(f"graph version {g.get('version')!r} is not supported (this runtime reads version 1); "
                           "upgrade deepcomp")
        inp = g.get("input")
        if not isinstance(inp, dict) or not isinstance(inp.get("name"), str) or not isinstance(inp.get("shape"), list):
            raise _bad("input must be an object with a name and a shape")
        self.input_name = inp["name"]
        self.input_shape = tuple(_int(d, "an input dimension", 1) for d in inp["shape"])
        nodes = g.get("nodes")
        if not isinstance(nodes, list):
            raise _bad("nodes must be a list")
        output = g.get("output")

        # Pass 1: validate structure and infer shapes.
        shapes: dict[str, tuple[int, ...]] = {self.input_name: self.input_shape}
        producer_op: dict[str, str] = {self.input_name: "input"}
        for i, node in enumerate(nodes):
            if not isinstance(node, dict):
                raise _bad(f"node {i} is not an object")
            name, op, inputs = node.get("name"), node.get("op"), node.get("inputs")
            if not isinstance(name, str) or name in shapes:
                raise _bad(f"node {i} has a missing or duplicate name {name!r}")
            if op not in _OPS:
                raise UnsupportedOpError(f"node {name!r} has the op {op!r}, which this runtime does not know; "
                                         "upgrade deepcomp")
            if not isinstance(inputs, list) or not all(isinstance(s, str) and s in shapes for s in inputs):
                raise _bad(f"the inputs {inputs!r} of node {name!r} must name the graph input or earlier nodes")
            want = 2 if op == "add" else None
            if op == "concat":
                if len(inputs) < 2:
                    raise _bad(f"concat node {name!r} needs at least 2 inputs")
            elif len(inputs) != (want or 1):
                raise _bad(f"{op} node {name!r} takes {want or 1} input(s), has {len(inputs)}")
            if not isinstance(node.get("attrs", {}), dict):
                raise _bad(f"attrs of node {name!r} must be an object")
            shapes[name] = self._infer(node, [shapes[s] for s in inputs])
            producer_op[name] = op
        if not isinstance(output, str) or output not in shapes:
            raise _bad(f"output {output!r} names no node")
        self.output_name = output
        self.output_shape = shapes[output]
        self._shapes = shapes

        # Pass 2: fuse ReLUs into their producer when nothing else reads the producer's output.
        alias: dict[str, str] = {}

        def res(n: str) -> str:
            while n in alias:
                n = alias[n]
            return n

        uses: dict[str, int] = {}
        for node in nodes:
            for s in node["inputs"]:
                uses[s] = uses.get(s, 0) + 1
        uses[output] = uses.get(output, 0) + 1
        fused_relu: set[str] = set()
        by_name = {n["name"]: n for n in nodes}

        def fresh(n: str) -> bool:
            op = producer_op[n]
            if op in _FRESH:
                return True
            if op == "flatten":
                src = res(by_name[n]["inputs"][0])
                return fresh(src) and uses.get(src, 0) == 1
            return False

        for node in nodes:
            if node["op"] != "relu":
                continue
            src = res(node["inputs"][0])
            if src != self.input_name and uses.get(src, 0) == 1 and fresh(src):
                alias[node["name"]] = src
                fused_relu.add(src)
                uses[src] = uses.get(node["name"], 0)
        self.output_name_resolved = res(output)

        for node in nodes:
            wname = node.get("attrs", {}).get("weight") if node["op"] in ("conv2d", "linear") else None
            if isinstance(wname, str) and wname in self._coded:
                self._coded_users[wname] = self._coded_users.get(wname, 0) + 1

        # Pass 3: steps, with inputs resolved through the aliases and buffers freed after last use.
        plan_nodes = [n for n in nodes if n["name"] not in alias]
        last_use: dict[str, int] = {}
        for i, node in enumerate(plan_nodes):
            for s in node["inputs"]:
                last_use[res(s)] = i
        final_uses: dict[str, int] = {}
        for node in plan_nodes:
            for s in node["inputs"]:
                final_uses[res(s)] = final_uses.get(res(s), 0) + 1
        out = self.output_name_resolved
        final_uses[out] = final_uses.get(out, 0) + 1

        def owned(n: str) -> bool:
            """True when node n's output buffer may be overwritten by its single consumer."""
            if n == self.input_name or final_uses.get(n, 0) != 1:
                return False
            op = producer_op[n]
            if op == "flatten":
                return owned(res(by_name[n]["inputs"][0]))
            return op in _FRESH

        steps: list[_Step] = []
        for i, node in enumerate(plan_nodes):
            name = node["name"]
            inputs = tuple(res(s) for s in node["inputs"])
            run = self._compile(node, inputs, name in fused_relu, owned)
            free = tuple(s for s in dict.fromkeys(inputs) if last_use.get(s) == i and s != out)
            steps.append(_Step(name, inputs, run, free, self._kernels.get(name)))
        self._steps = steps

    def _infer(self, node: dict, ins: list[tuple[int, ...]]) -> tuple[int, ...]:
        name, op, a = node["name"], node["op"], node.get("attrs", {})
        x = ins[0]

        def need_rank(r):
            if len(x) != r:
                raise _bad(f"{op} node {name!r} gets a tensor of shape [N, {', '.join(map(str, x))}]")

        if op == "conv2d":
            need_rank(3)
            wshape = self._weight_shape(a.get("weight"), name)
            if len(wshape) != 4:
                raise _bad(f"conv2d weight {a.get('weight')!r} must be 4-D, is {list(wshape)}")
            groups = _int(a.get("groups"), f"groups of {name!r}", 1)
            oc, icg, kh, kw = wshape
            if icg * groups != x[0] or oc % groups:
                raise _bad(f"conv2d node {name!r}: weight {list(wshape)} with groups={groups} does not fit "
                           f"{x[0]} input channels")
            sh, sw = _pair(a.get("stride"), f"stride of {name!r}")
            ph, pw = _pair(a.get("padding"), f"padding of {name!r}")
            dh, dw = _pair(a.get("dilation"), f"dilation of {name!r}")
            if min(sh, sw, dh, dw) < 1 or min(ph, pw) < 0:
                raise _bad(f"conv2d node {name!r} has a non-positive stride or dilation or a negative padding")
            oh = (x[1] + 2 * ph - dh * (kh - 1) - 1) // sh + 1
            ow = (x[2] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
            out = (oc, oh, ow)
        elif op == "linear":
            need_rank(1)
            wshape = self._weight_shape(a.get("weight"), name)
            if len(wshape) != 2 or wshape[1] != x[0]:
                raise _bad(f"linear node {name!r}: weight {list(wshape)} does not fit {x[0]} input features")
            out = (wshape[0],)
        elif op in ("batchnorm2d", "relu"):
            out = x
            if op == "batchnorm2d" and len(x) != 3:
                need_rank(3)
        elif op in ("maxpool2d", "avgpool2d"):
            need_rank(3)
            kh, kw = _pair(a.get("kernel_size"), f"kernel_size of {name!r}")
            sh, sw = _pair(a.get("stride"), f"stride of {name!r}")
            ph, pw = _pair(a.get("padding"), f"padding of {name!r}")
            dh, dw = _pair(a.get("dilation", [1, 1]), f"dilation of {name!r}") if op == "maxpool2d" else (1, 1)
            if min(kh, kw, sh, sw, dh, dw) < 1 or min(ph, pw) < 0 or ph > kh // 2 or pw > kw // 2:
                raise _bad(f"{op} node {name!r} has invalid kernel/stride/padding (padding at most half the kernel)")
            ceil = bool(a.get("ceil_mode", False))
            out = (x[0], reference.pool_out(x[1], kh, sh, ph, dh, ceil), reference.pool_out(x[2], kw, sw, pw, dw, ceil))
        elif op == "adaptive_avgpool2d":
            need_rank(3)
            oh, ow = _pair(a.get("output_size"), f"output_size of {name!r}")
            if oh < 1 or ow < 1:
                raise _bad(f"output_size of {name!r} must be positive")
            out = (x[0], oh, ow)
        elif op == "flatten":
            if a.get("start_dim", 1) != 1:
                raise UnsupportedOpError(f"flatten node {name!r} with start_dim={a.get('start_dim')!r}; only 1 is supported")
            out = (int(math.prod(x)),)
        elif op == "add":
            if ins[0] != ins[1]:
                raise _bad(f"add node {name!r} adds shapes {list(ins[0])} and {list(ins[1])}")
            out = x
        elif op == "concat":
            dim = _int(a.get("dim"), f"dim of {name!r}", 1)
            if dim > len(x) or any(len(s) != len(x) for s in ins):
                raise _bad(f"concat node {name!r}: dim {dim} out of range")
            d = dim - 1
            for s in ins[1:]:
                if s[:d] + s[d + 1:] != x[:d] + x[d + 1:]:
                    raise _bad(f"concat node {name!r} joins mismatched shapes {[list(t) for t in ins]}")
            out = x[:d] + (sum(s[d] for s in ins),) + x[d + 1:]
        else:  # pragma: no cover - ops are checked before
            raise UnsupportedOpError(op)
        if any(d < 1 for d in out):
            raise _bad(f"{op} node {name!r} produces the empty shape {list(out)} from {list(x)}")
        return out

    def _compile(self, node: dict, inputs: tuple[str, ...], relu: bool, owned) -> Callable:
        name, op, a = node["name"], node["op"], node.get("attrs", {})
        relu_ = kernel("relu_")

        def post(fn):
            if not relu:
                return fn

            def run(*xs):
                return relu_(fn(*xs))
            return run

        try:
            if op == "conv2d":
                w = self._weight(a["weight"], name)
                oc, icg, kh, kw = w.shape
                groups = int(a["groups"])
                bias = self._vector(a.get("bias"), oc, name, "bias")
                scale = shift = None
                if a.get("bn") is not None:
                    scale, shift = self._bn(a["bn"], oc, name)
                k = kernel("SparseConv2d")(w.csr["row_ptr"], w.csr["col"], icg * groups, oc, (kh, kw),
                                           tuple(a["stride"]), tuple(a["padding"]), tuple(a["dilation"]), groups,
                                           values=w.csr.get("values"), cluster=w.csr.get("cluster"),
                                           codebook=w.csr.get("codebook"), bias=bias)
                self.layers.append(LayerInfo(name, op, w.nnz / max(math.prod(w.shape), 1), w.nnz, w.bytes))
                self._built(a["weight"])
                self._kernels[name] = k
                return lambda x: k.forward(x, relu, scale, shift)
            if op == "linear":
                w = self._weight(a["weight"], name)
                bias = self._vector(a.get("bias"), w.rows, name, "bias")
                k = kernel("SparseLinear")(w.csr["row_ptr"], w.csr["col"], w.cols, values=w.csr.get("values"),
                                           cluster=w.csr.get("cluster"), codebook=w.csr.get("codebook"), bias=bias)
                self.layers.append(LayerInfo(name, op, w.nnz / max(math.prod(w.shape), 1), w.nnz, w.bytes))
                self._built(a["weight"])
                self._kernels[name] = k
                return lambda x: k.forward(x, relu)
        except ValueError as e:  # the kernels validate the CSR arrays
            raise DczError(f"the weight of node {name!r} is malformed: {e}") from None

        if op == "batchnorm2d":
            c = self._shapes[inputs[0]][0]
            scale, shift = self._bn(a, c, name)
            scale4, shift4 = scale[None, :, None, None], shift[None, :, None, None]
            inplace = owned(inputs[0])

            def bn(x):
                if inplace:
                    x *= scale4
                    x += shift4
                    return x
                return x * scale4 + shift4
            return post(bn)
        if op == "relu":
            return lambda x: np.maximum(x, np.float32(0))
        if op == "maxpool2d":
            mp = kernel("max_pool2d")
            k, s, p, d = (tuple(a[key]) for key in ("kernel_size", "stride", "padding", "dilation"))
            ceil = bool(a.get("ceil_mode", False))
            return post(lambda x: mp(x, k, s, p, d, ceil))
        if op == "avgpool2d":
            ap = kernel("avg_pool2d")
            k, s, p = (tuple(a[key]) for key in ("kernel_size", "stride", "padding"))
            ceil, cip = bool(a.get("ceil_mode", False)), bool(a.get("count_include_pad", True))
            return post(lambda x: ap(x, k, s, p, ceil, cip))
        if op == "adaptive_avgpool2d":
            aap = kernel("adaptive_avg_pool2d")
            size = tuple(a["output_size"])
            return post(lambda x: aap(x, size))
        if op == "flatten":
            return post(lambda x: x.reshape(x.shape[0], -1))
        if op == "add":
            left, right = owned(inputs[0]), owned(inputs[1])

            def add(x, y):
                if left:
                    return np.add(x, y, out=x)
                if right:
                    return np.add(x, y, out=y)
                return np.add(x, y)
            return post(add)
        if op == "concat":
            dim = int(a["dim"])
            return post(lambda *xs: np.concatenate(xs, axis=dim))
        raise UnsupportedOpError(op)  # pragma: no cover

    # -- running ----------------------------------------------------------------------------------

    def _check_input(self, x) -> tuple[np.ndarray, bool]:
        try:
            arr = np.asarray(x)
        except (ValueError, TypeError) as e:
            raise InputShapeError(f"the input is not an array: {e}") from None
        if arr.dtype.kind not in "fiub":
            raise InputShapeError(f"the input must hold numbers (float32), got dtype {arr.dtype}")
        shape = self.input_shape
        want = "[N, " + ", ".join(map(str, shape)) + "]"
        if arr.shape == shape:
            return np.ascontiguousarray(arr[None], dtype=np.float32), True
        if arr.ndim != len(shape) + 1 or arr.shape[1:] != shape:
            raise InputShapeError(f"input of shape {list(arr.shape)} does not fit this model, which takes "
                                  f"{want} (or one sample of shape {list(shape)})")
        return np.ascontiguousarray(arr, dtype=np.float32), False

    def __call__(self, x) -> np.ndarray:
        """Run the model on float32 ``[N, *input_shape]`` (or one sample ``input_shape``)."""
        x, single = self._check_input(x)
        if x.shape[0] == 0:
            return np.zeros((0, *self.output_shape), dtype=np.float32)
        env = {self.input_name: x}
        for step in self._steps:
            env[step.name] = step.run(*(env[s] for s in step.inputs))
            for s in step.free:
                del env[s]
        y = env[self.output_name_resolved]
        if y is x:  # an identity graph: never hand back the caller's own buffer
            y = y.copy()
        return y[0] if single else y

    run = __call__

    @property
    def steps(self) -> tuple:
        """The planned steps in execution order. Each has ``name`` (the graph node it computes; a fused
        ReLU is part of its producer's step), ``inputs`` (node names) and ``run(*arrays) -> array``,
        which calls the kernel with its fused epilogue: what ``deepcomp bench`` times per layer."""
        return tuple(self._steps)

    @property
    def num_threads(self) -> int:
        return get_num_threads()

    def __repr__(self) -> str:
        nnz = sum(layer.nnz for layer in self.layers)
        return (f"RuntimeModel({self.meta.get('model', self.meta.get('arch', '?'))}, input {list(self.input_shape)}, "
                f"{len(self._steps)} steps, {len(self.layers)} weighted layers, {nnz} weights kept)")


def load(path: str | os.PathLike) -> RuntimeModel:
    """Load a .dcz file and plan its execution. Raises DczError for a bad file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DczError(f"{path!r} does not exist or is not a file")
    if _native is None or not hasattr(_native, "load_dcz"):
        raise DczError("the native extension deepcomp._native is not available; reinstall deepcomp (pip install .)")
    return RuntimeModel.from_loaded(_native.load_dcz(path), release=True)


def loads(data: bytes) -> RuntimeModel:
    """Like :func:`load`, from the bytes of a .dcz file."""
    if _native is None or not hasattr(_native, "parse_dcz"):
        raise DczError("the native extension deepcomp._native is not available; reinstall deepcomp (pip install .)")
    return RuntimeModel.from_loaded(_native.parse_dcz(bytes(data)), release=True)


def set_num_threads(n: int) -> None:
    """Threads the native kernels use (default: DEEPCOMP_NUM_THREADS or the number of cores)."""
    kernel("set_num_threads")(int(n))


def get_num_threads() -> int:
    return int(kernel("get_num_threads")())
