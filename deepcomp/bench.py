"""`deepcomp bench`: the deepcomp runtime against dense PyTorch on the same weights, per layer and end
to end. One process, the same inputs, the same thread count for both, median of repeated runs."""

from __future__ import annotations

import os
import statistics
import time
import warnings
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from deepcomp.cpuload import ForeignLoad
from deepcomp.errors import DeepcompError
from deepcomp.runtime.ops import OPS, check_attrs


BLOCK_S = 0.05  # target wall time of one block of back-to-back calls


SETTLE_S = 0.015  # a block's calls that start earlier than this are discarded too


def steady_heap() -> bool:
    """Keep freed memory in the process (glibc): no mmap for large blocks, no trimming of the heap.

    Without it, PyTorch's dense convolutions page-fault on fresh scratch memory in every call once
    glibc's heap layout tips a large allocation over to mmap, which depends on what else the process
    holds: measured on AlexNet conv1 at batch 1, 0.53 ms without faults and 1.5 ms with 535 faults
    per call, from one run to the next. Benchmarks call this first so that the dense baseline runs at
    its best (deepcomp's runtime reuses its buffers either way). Returns whether it took effect."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 1 << 30)) and bool(mallopt(m_trim_threshold, 1 << 30))


def median_ms(*fns: Callable[[], object], repeat: int, warmup: int = 2, block_s: float = BLOCK_S,
              settle_s: float = SETTLE_S) -> list[float]:
    """Median wall time per call of each function, in ms, in steady state.

    The functions take turns in blocks (a a a a, b b b b, a a a a, ...): ``repeat`` rounds, each
    running every function back to back for about ``block_s`` seconds (3 to 20 kept calls). The
    start of every block is discarded: its first quarter, and every call that starts within
    ``settle_s`` of the block's start. Right after the other function ran, PyTorch's OpenMP workers
    are still spinning on the cores for a few milliseconds (measured: AlexNet conv3 at batch 8 takes
    7 ms for its first two calls after a torch block, 4.2 ms after that) and caches hold the other
    side's data. The rest of the block is the steady state that repeated inference sees, and
    alternating blocks make a burst of load on a shared machine hit both sides alike, so their ratio
    stays honest. Block lengths come from a timed call after the warmup, so one-off work in the
    first call (planning a convolution for its input shape) does not shorten them."""
    per_call = []
    for fn in fns:
        for _ in range(max(1, warmup)):
            fn()
        t = time.perf_counter_ns()
        fn()
        per_call.append((time.perf_counter_ns() - t) / 1e9)
    blocks = [min(20, max(3, int(block_s / max(pc, 1e-6)))) for pc in per_call]
    times: list[list[int]] = [[] for _ in fns]
    for _ in range(max(1, repeat)):
        for fn, ts, k in zip(fns, times, blocks):
            start = time.perf_counter_ns()
            kept, n = 0, 0
            while kept < k:
                t = time.perf_counter_ns()
                fn()
                dt = time.perf_counter_ns() - t
                if n >= max(1, k // 4) and t - start >= settle_s * 1e9:
                    ts.append(dt)
                    kept += 1
                n += 1
    return [statistics.median(ts) / 1e6 for ts in times]


def _bn_args(bn: dict, t: dict):
    return [t[bn[k]] if bn.get(k) else None for k in ("running_mean", "running_var", "weight", "bias")]


def _torch_conv(a, t):
    w, b = t[a["weight"]], t[a["bias"]] if a["bias"] else None

    def conv(x):
        return F.conv2d(x, w, b, a["stride"], a["padding"], a["dilation"], a["groups"])
    if a["bn"] is None:
        return conv
    bn, args = a["bn"], _bn_args(a["bn"], t)
    return lambda x: F.batch_norm(conv(x), *args, False, 0.0, bn["eps"])


def _torch_bn(a, t):
    args = _bn_args(a, t)
    return lambda x: F.batch_norm(x, *args, False, 0.0, a["eps"])


def _torch_binary(fn, a):
    if a["scalar"] is None:
        return fn
    s = a["scalar"]
    return (lambda x: fn(torch.tensor(s), x)) if a["reverse"] else (lambda x: fn(x, s))


def _torch_layer_norm(a, t):
    w, b = (t[a[k]] if a[k] else None for k in ("weight", "bias"))
    if a["dim"] != 1:
        return lambda x: F.layer_norm(x, (x.shape[-1],), w, b, a["eps"])
    return lambda x: F.layer_norm(x.movedim(1, -1), (x.shape[1],), w, b, a["eps"]).movedim(-1, 1)


# The dense PyTorch form of every op of the runtime's table (deepcomp.runtime.ops): op -> (checked
# attrs, {tensor name: torch tensor}) -> the function a plain nn.Module's forward would call.
def _torch_constant(a, t):
    c = t[a["tensor"]]
    if a["index"] is not None:
        c = c.reshape(-1, c.shape[-1] if c.dim() > 1 else 1)[t[a["index"]].reshape(-1).long()]
    c = c.reshape(1, *a["shape"])
    return lambda x: c.expand(x.shape[0], *a["shape"])


def _torch_window_mask(a, t):
    from deepcomp.runtime.ops.shapes import window_mask

    m = torch.from_numpy(window_mask(a["size"], a["window"], a["shift"]))[None]
    return lambda x: m.expand(x.shape[0], *m.shape[1:])


TORCH_OPS: dict[str, Callable] = {
    "conv2d": _torch_conv,
    "linear": lambda a, t: (lambda x: F.linear(x, t[a["weight"]], t[a["bias"]] if a["bias"] else None))
    if a["dim"] is None else (lambda x: F.conv2d(x, t[a["weight"]][:, :, None, None], t[a["bias"]] if a["bias"] else None)),
    "batchnorm2d": _torch_bn,
    "relu": lambda a, t: F.relu,
    "maxpool2d": lambda a, t: lambda x: F.max_pool2d(x, a["kernel_size"], a["stride"], a["padding"], a["dilation"],
                                                     a["ceil_mode"]),
    "avgpool2d": lambda a, t: lambda x: F.avg_pool2d(x, a["kernel_size"], a["stride"], a["padding"], a["ceil_mode"],
                                                     a["count_include_pad"]),
    "adaptive_avgpool2d": lambda a, t: lambda x: F.adaptive_avg_pool2d(x, a["output_size"]),
    "flatten": lambda a, t: lambda x: torch.flatten(x, a["start_dim"]),
    "add": lambda a, t: _torch_binary(torch.add, a),
    "concat": lambda a, t: lambda *xs: torch.cat(xs, a["dim"]),
    "constant": _torch_constant,
    "clamp": lambda a, t: lambda x: torch.clamp(x, a["min"], a["max"]),
    "sigmoid": lambda a, t: torch.sigmoid,
    "silu": lambda a, t: F.silu,
    "tanh": lambda a, t: torch.tanh,
    "hardswish": lambda a, t: F.hardswish,
    "hardsigmoid": lambda a, t: F.hardsigmoid,
    "gelu": lambda a, t: lambda x: F.gelu(x, approximate=a["approximate"]),
    "mul": lambda a, t: _torch_binary(torch.mul, a),
    "sub": lambda a, t: _torch_binary(torch.sub, a),
    "div": lambda a, t: _torch_binary(torch.div, a),
    "mean": lambda a, t: lambda x: torch.mean(x, a["dims"], a["keepdim"]),
    "permute": lambda a, t: lambda x: x.permute(a["dims"]),
    "reshape": lambda a, t: lambda x: x.reshape(x.shape[0], *a["shape"]),
    "slice": lambda a, t: lambda x: x[(slice(None),) * a["dim"] + (slice(a["start"], a["stop"], a["step"]),)],
    "layernorm": _torch_layer_norm,
    "pad": lambda a, t: lambda x: F.pad(x, [p for d in reversed(range(x.dim() - 1))
                                            for p in a["pads"][2 * d: 2 * d + 2]], value=a["value"]),
    "roll": lambda a, t: lambda x: torch.roll(x, a["shifts"], a["dims"]),
    "window_mask": _torch_window_mask,
    "matmul": lambda a, t: torch.matmul,
    "softmax": lambda a, t: lambda x: torch.softmax(x, a["dim"]),
    "normalize": lambda a, t: lambda x: F.normalize(x, dim=a["dim"], eps=a["eps"]),
    "exp": lambda a, t: torch.exp,
}


class DenseTorchGraph(torch.nn.Module):
    """A .dcz graph run by PyTorch eager ops on dense tensors: the plain-PyTorch baseline (the same
    weights as the .dcz, decompressed). Each node is one torch.nn.functional call (TORCH_OPS), as an
    nn.Module's forward would make it."""

    def __init__(self, graph: dict, state: dict[str, np.ndarray]):
        super().__init__()
        self.graph = graph
        self.t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
        self.fns = {n["name"]: self._compile(n) for n in graph["nodes"]}

    def _compile(self, node):
        op = OPS.get(node["op"])
        if op is None or node["op"] not in TORCH_OPS:
            raise DeepcompError(f"bench: op {node['op']!r} has no dense PyTorch equivalent here")
        return TORCH_OPS[node["op"]](check_attrs(op.attrs, node.get("attrs", {}), node["name"]), self.t)

    def forward(self, x, record: dict | None = None):
        env = {self.graph["input"]["name"]: x}
        for n in self.graph["nodes"]:
            ins = [env[s] for s in n["inputs"]]
            if record is not None:
                record[n["name"]] = ins
            env[n["name"]] = self.fns[n["name"]](*ins)
        return env[self.graph["output"]]


def _layer_consumers(graph: dict) -> dict[str, list[str]]:
    users: dict[str, list[str]] = {}
    for n in graph["nodes"]:
        for s in n["inputs"]:
            users.setdefault(s, []).append(n["name"])
    return users


def _runtime_inputs(model, x) -> dict:
    """{step name: the inputs the runtime hands that step} for one call (a QTensor for an int8 step
    that takes another's uint8 output)."""
    env, out = {model.input_name: x}, {}
    for st in model.steps:
        out[st.name] = [env[s] for s in st.inputs]
        env[st.name] = st.run(*out[st.name])
    return out


def _int8_dense(dense_fn, fusion: dict):
    """The dense PyTorch work an int8 step does: its op, the fused ReLU and max-pool."""
    def fn(t):
        y = dense_fn(t)
        y = F.relu(y) if fusion["relu"] else y
        return F.max_pool2d(y, *fusion["pool"]) if fusion["pool"] else y
    return fn


def bench_file(path, *, batches=(1,), threads: int | None = None, repeat: int = 10,
               layers: bool = True, seed: int = 0, int8: str = "auto") -> list[dict]:
    """Per batch size: ``{"threads", "batch", "layers": [...], "end_to_end": {...}, "fp32_fallback"}``;
    each layer row also says which kernel runs it (``"kernel"``: "sparse", "dense", "winograd" or
    "winograd-streamed"; "int8").
    ``int8``: as for deepcomp.load; ``fp32_fallback`` names the int8 nodes that ran fp32 and why.
    Calls :func:`steady_heap` first, a process-wide glibc setting that stays in effect afterwards."""
    import deepcomp.runtime as rt
    from deepcomp.dcz import decompress

    steady_heap()
    n = int(threads or int(os.environ.get("DEEPCOMP_NUM_THREADS", 0)) or os.cpu_count() or 1)
    torch.set_num_threads(n)
    rt.set_num_threads(n)
    model = rt.load(path, int8=int8)
    c_dense = DenseTorchGraph(model.graph, decompress(path)).eval()
    users = _layer_consumers(model.graph)
    by_name = {nd["name"]: nd for nd in model.graph["nodes"]}
    steps = {s.name: s for s in model.steps}  # the runtime's planned steps (kernel + fused epilogue)
    info = {l.name: l for l in model.layers}
    fusion = {s.name: s.int8 for s in model.plan.steps if s.int8 is not None}
    rng = np.random.default_rng(seed)
    results = []
    for batch in batches:
        x = rng.standard_normal((batch, *model.input_shape), dtype=np.float32)
        xt = torch.from_numpy(x)
        rows = []
        layer_load = ForeignLoad().start()
        if layers:
            record: dict = {}
            with torch.inference_mode():
                c_dense(xt, record)
            rt_inputs = _runtime_inputs(model, x) if fusion else {}
            for name, layer in info.items():
                node = by_name[name]
                xin = record[name][0].contiguous()
                dense_fn = c_dense.fns[name]
                fused_relu = [u for u in users.get(name, []) if by_name[u]["op"] == "relu"]
                if fused_relu and len(users[name]) == 1:
                    # the runtime fused this ReLU into the kernel: time the same work on the dense side
                    base = dense_fn
                    dense_fn = lambda t, base=base: F.relu(base(t))
                xin_np = xin.numpy()
                step = steps[name]
                if name in fusion:  # int8: the fused ReLU / pool on the dense side, the runtime's own input
                    dense_fn = _int8_dense(c_dense.fns[name], fusion[name])
                    xin_np = rt_inputs[name][0]
                fns = [lambda: dense_fn(xin), lambda: step.run(xin_np)]
                if node["op"] == "linear":
                    w = c_dense.t[node["attrs"]["weight"]]
                    b = c_dense.t.get(node["attrs"].get("bias")) if node["attrs"].get("bias") else None
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
                        w_csr = w.to_sparse_csr()
                    xt_t = xin.t().contiguous()

                    def ts():
                        y = (w_csr @ xt_t).t()
                        return y + b if b is not None else y
                    fns.append(ts)
                with torch.inference_mode():
                    dense_ms, sparse_ms, *rest = median_ms(*fns, repeat=repeat)
                torch_sparse_ms = rest[0] if rest else None
                conv = node["op"] == "conv2d"
                kern = ("int8" if name in fusion else
                        step.kernel.kernel_for(*xin.shape[2:], xin.shape[0]) if conv else "sparse")
                rows.append({"name": name, "kind": "conv" if conv else "fc", "kernel": kern,
                             "density": layer.density, "dense_ms": dense_ms, "sparse_ms": sparse_ms,
                             "torch_sparse_ms": torch_sparse_ms, "speedup": dense_ms / sparse_ms})
        layer_load.stop()
        with ForeignLoad() as e2e_load, torch.inference_mode():
            dense_e2e, sparse_e2e = median_ms(lambda: c_dense(xt), lambda: model(x), repeat=repeat)
        results.append({"threads": n, "batch": int(batch), "layers": rows,
                        "end_to_end": {"dense_ms": dense_e2e, "sparse_ms": sparse_e2e,
                                       "speedup": dense_e2e / sparse_e2e},
                        "isa": _isa() + (f", int8 {_int8_isa()}" if fusion else ""),
                        "fp32_fallback": dict(model.fp32_fallback)})
        _add_trust(results[-1], layer_load if layers else None, e2e_load)
    return results


# Foreign load (cores used by other processes) above which a figure is reported as unreliable.
MAX_FOREIGN_CORES = 0.25
# Weighted layers are part of the end-to-end work: their sum may exceed the end-to-end time only by
# this factor (timer and cache effects) before the figures contradict each other.
MAX_LAYER_SUM_RATIO = 1.15


def _add_trust(r: dict, layer_load: ForeignLoad | None, e2e_load: ForeignLoad) -> None:
    """Records the foreign load around the two passes and what makes the result untrustworthy."""
    r["foreign_cores"] = {"layers": layer_load.cores if layer_load else None, "end_to_end": e2e_load.cores}
    r["unreliable"] = trust_warnings(r)


def trust_warnings(r: dict) -> list[str]:
    """Plain statements of why the figures of one bench_file result cannot be trusted (empty if
    nothing was noticed): other processes using the CPU meanwhile, or per-layer times that add up to
    more than the end-to-end time they are part of."""
    out = []
    for what, cores in r.get("foreign_cores", {}).items():
        if cores is not None and cores > MAX_FOREIGN_CORES:
            out.append(f"other processes used {cores:.2f} cores while the {what.replace('_', ' ')} times were "
                       f"measured ({r['threads']} thread(s) here): these figures are unreliable; rerun on a quiet "
                       "machine")
    e = r["end_to_end"]
    for side, key in (("dense PyTorch", "dense_ms"), ("deepcomp", "sparse_ms")):
        total = sum(l[key] for l in r["layers"])
        if r["layers"] and total > MAX_LAYER_SUM_RATIO * e[key]:
            out.append(f"{side}'s per-layer times add up to {total:.2f} ms, more than its end-to-end time of "
                       f"{e[key]:.2f} ms that contains them: the per-layer figures are unreliable")
    return out


def _int8_isa() -> str:
    try:
        from deepcomp import _native

        return _native.int8_isa()
    except (ImportError, AttributeError):  # pragma: no cover
        return "numpy reference"


def _isa() -> str:
    try:
        from deepcomp import _native

        return _native.isa()
    except (ImportError, AttributeError):  # pragma: no cover
        return "?"

