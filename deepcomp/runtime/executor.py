"""Execute a .dcz graph with the native sparse kernels. Deploy side: numpy and deepcomp._native only.

A :class:`RuntimeModel` is planned once, when it is built (deepcomp.runtime.plan: shapes, fusion,
liveness, peak memory, so a malformed or hostile graph fails at load time, not mid-inference); each
planned step then gets its implementation from the op table (deepcomp.runtime.ops): conv2d / linear
a native kernel object holding its CSR weight (cluster indices + codebook for coded tensors; a dense
weight becomes CSR at 100% density), with a BatchNorm recorded on a convolution as the kernel's
per-channel scale/shift epilogue and a fused ReLU in the kernel; other fused activations run in
place on the step's output.

Calling the model only reads the plan, so one RuntimeModel may be called from several threads at
once (the native kernels release the GIL).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Callable, NamedTuple

import numpy as np

from deepcomp.errors import DczError, InputShapeError
from deepcomp.runtime import ops, precision
from deepcomp.runtime.ops import OPS, BuildContext, kernel, native_bindings
from deepcomp.runtime.plan import check_memory, make_plan
from deepcomp.runtime.tensors import Tensors

_native = ops._native


class LayerInfo(NamedTuple):
    """One weighted layer: name, op, density (kept / total weights), nnz (kept weights), bytes
    (the weight's size in memory at run time: CSR row pointers, columns and cluster indices plus the
    codebook, or float32 values for an uncoded weight; int8 weights for an int8 layer) and precision
    ("fp32", or "int8" for a node that runs on the int8 kernels)."""

    name: str
    op: str
    density: float
    nnz: int
    bytes: int
    precision: str = "fp32"


def native_kernels() -> list[str]:
    """Which of the op table's bindings run natively (for diagnostics)."""
    return native_bindings()


class _Step(NamedTuple):
    name: str
    inputs: tuple[str, ...]
    run: Callable[..., np.ndarray]
    free: tuple[str, ...]
    kernel: object = None  # the native SparseConv2d / SparseLinear of a weighted layer


def _repeat(value: np.ndarray) -> Callable:
    """A static step: its value at load (batch 1), repeated over the batch of its first input."""
    value.flags.writeable = False
    return lambda x, *_: np.broadcast_to(value, (x.shape[0], *value.shape[1:]))


def _batch_of(x, *_):
    """A static step only static steps read: they take nothing from it but the batch size."""
    return x


class RuntimeModel:
    """A compressed model ready to run: ``model(x)`` with x float32 ``[N, *input_shape]``.

    Build it with :func:`load` (a .dcz path), :meth:`from_loaded` (the dict of
    ``deepcomp._native.load_dcz``) or directly from the graph dict and the dense / coded tensor dicts
    in the loader's format.
    """

    def __init__(self, graph: dict, dense: dict, coded: dict, meta: dict | None = None, *, release: bool = False,
                 int8_reference: bool = False, int8: str = "auto"):
        """``release=True`` hands the tensor dicts over: each coded tensor is dropped from ``coded`` as
        soon as the kernels of its last user hold their own layout, so the loader's CSR arrays and the
        kernels' copies are never all alive at once (peak memory), and none stay alive after.
        ``int8_reference=True`` runs the int8 nodes on the numpy integer reference (the definition of
        their results; slow) instead of the native int8 kernels, every node the file marks int8.
        ``int8``: which of those run int8 on the native kernels, "auto", "file" or "off"
        (deepcomp.runtime.precision); ``fp32_fallback`` then says which run fp32 and why."""
        self._int8_reference = bool(int8_reference)
        self.meta = meta or {}
        self._tensors = Tensors(dense, coded)
        self._kernels: dict[str, Any] = {}  # node name -> its native kernel (weighted layers)
        self.layers: list[LayerInfo] = []
        self.plan = make_plan(graph, self._tensors.shape)  # validates the graph as the file gives it
        isa = _native.int8_isa() if _native is not None and hasattr(_native, "int8_isa") else None
        self.fp32_fallback = precision.fp32_nodes(self.plan, "file" if int8_reference else precision.check_mode(int8),
                                                  isa)
        if self.fp32_fallback:
            graph = precision.without_int8(graph, self.fp32_fallback)
            self.plan = make_plan(graph, self._tensors.shape)
        self.graph = graph
        self.input_name, self.input_shape = self.plan.input_name, self.plan.input_shape
        self.output_name, self.output_shape = graph["output"], self.plan.output_shape
        users: dict[str, int] = {}
        for s in self.plan.steps:
            w = s.attrs.get("weight") if s.op in ("conv2d", "linear") else None
            if isinstance(w, str) and w in coded:
                users[w] = users.get(w, 0) + 1
        self._steps = []
        # static steps: their values for one sample, now; each call repeats over the batch those that
        # other steps read, and passes the batch through the rest
        held: dict[str, np.ndarray] = {}
        read = {i for s in self.plan.steps if not s.static for i in s.inputs} | {self.plan.output}
        for s in self.plan.steps:
            run = self._compile(s)
            if s.static:
                # a shared op reads only its input's batch size: a computed input is zeros here
                args = [held[i] if i in held else np.zeros((1, *shape), np.float32)
                        for i, shape in zip(s.inputs, s.ins)]
                held[s.name] = np.asarray(run(*args), dtype=np.float32)
                run = _repeat(held[s.name]) if s.name in read else _batch_of
                for f in s.free:
                    held.pop(f, None)
            self._steps.append(_Step(s.name, s.inputs, run, s.free, self._kernels.get(s.name)))
            w = s.attrs.get("weight") if s.op in ("conv2d", "linear") else None
            if release and w in users:  # the kernel holds its own copy now
                users[w] -= 1
                if users[w] == 0:
                    coded.pop(w, None)
        if release:
            coded.clear()

    @classmethod
    def from_loaded(cls, loaded: dict, *, release: bool = False, int8_reference: bool = False,
                    int8: str = "auto") -> "RuntimeModel":
        def parse(key):
            raw = loaded.get(key)
            try:
                value = json.loads(raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw)
            except (TypeError, ValueError, UnicodeDecodeError) as e:
                raise DczError(f"the {key.upper()} section is not valid UTF-8 JSON: {e}") from None
            except RecursionError:
                raise DczError(f"the {key.upper()} section nests JSON too deeply") from None
            if not isinstance(value, dict):
                raise DczError(f"the {key.upper()} section must be a JSON object")
            return value

        return cls(parse("graph"), loaded.get("dense", {}), loaded.get("coded", {}), parse("meta"), release=release,
                   int8_reference=int8_reference, int8=int8)

    def _compile(self, s) -> Callable:
        op = OPS[s.op]

        def record(k, w):
            self._kernels[s.name] = k
            self.layers.append(LayerInfo(s.name, s.op, w.nnz / max(math.prod(w.shape), 1), w.nnz, w.bytes,
                                         "int8" if s.int8 is not None else "fp32"))

        int8 = dict(s.int8, reference=self._int8_reference) if s.int8 is not None else None
        cx = BuildContext(s.name, self._tensors, s.ins, s.out, s.donate, s.act, record, int8)
        try:
            if op.build is not None:
                fn = op.build(s.attrs, cx)
            else:
                ref, attrs = op.reference, s.attrs
                fn = lambda *xs: ref(attrs, cx, *xs)  # noqa: E731
        except ValueError as e:  # the kernels validate the CSR arrays
            raise DczError(f"the weight of node {s.name!r} is malformed: {e}") from None
        post = [(OPS[name].inplace, attrs) for name, attrs in s.epilogue]
        if not post:
            return fn

        def run(*xs):
            y = fn(*xs)
            for inplace, attrs in post:
                y = inplace(attrs, y)
            return y
        return run

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
        check_memory(self.plan, x.shape[0])
        env = {self.input_name: x}
        for step in self._steps:
            env[step.name] = step.run(*(env[s] for s in step.inputs))
            for s in step.free:
                del env[s]
        y = env[self.plan.output]
        if not y.flags.writeable or np.may_share_memory(y, x):  # a view of the input or of a constant
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


def load(path: str | os.PathLike, *, int8_reference: bool = False, int8: str = "auto") -> RuntimeModel:
    """Load a .dcz file and plan its execution. Raises DczError for a bad file. ``int8_reference``,
    ``int8``: see :class:`RuntimeModel`."""
    precision.check_mode(int8)
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DczError(f"{path!r} does not exist or is not a file")
    if _native is None or not hasattr(_native, "load_dcz"):
        raise DczError("the native extension deepcomp._native is not available; reinstall deepcomp (pip install .)")
    return RuntimeModel.from_loaded(_native.load_dcz(path), release=True, int8_reference=int8_reference, int8=int8)


def loads(data: bytes, *, int8: str = "auto") -> RuntimeModel:
    """Like :func:`load`, from the bytes of a .dcz file."""
    precision.check_mode(int8)
    if _native is None or not hasattr(_native, "parse_dcz"):
        raise DczError("the native extension deepcomp._native is not available; reinstall deepcomp (pip install .)")
    return RuntimeModel.from_loaded(_native.parse_dcz(bytes(data)), release=True, int8=int8)


def set_num_threads(n: int) -> None:
    """Threads the native kernels use (default: DEEPCOMP_NUM_THREADS or the number of cores)."""
    kernel("set_num_threads")(int(n))


def get_num_threads() -> int:
    return int(kernel("get_num_threads")())
