"""Per-layer speed of the native sparse kernels vs dense PyTorch (and torch.sparse CSR for linear).

Every AlexNet and VGG-16 conv and fc layer (torchvision shapes) at Deep Compression's per-layer
densities (Tables 4 and 5), random weights pruned by magnitude, codebook layout (8-bit conv, 5-bit fc,
linear centroids). All implementations run in one process with the same thread count.

    pytest benchmarks/bench_layers.py --benchmark-only           # pytest-benchmark, grouped per layer
    python benchmarks/bench_layers.py --quick                    # markdown table of medians and ratios
    python benchmarks/bench_layers.py --full                     # also batch 64 for every conv layer
    python benchmarks/bench_layers.py --ab register-tiling       # kernel A/B: knob off vs on, same process
    python benchmarks/bench_layers.py --ab max-nv=8,7            # planning knob at value A vs value B
    python benchmarks/bench_layers.py --ab stream-bytes          # output stores cached vs non-temporal
    python benchmarks/bench_layers.py --ab winograd              # direct kernels vs Winograd

DEEPCOMP_BENCH_NETS=alexnet limits the networks; DEEPCOMP_NUM_THREADS sets both libraries' threads.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

import deepcomp._native as nat
from deepcomp.bench import steady_heap

steady_heap()  # the dense baseline at its best: no page faults on fresh scratch memory

# name, kind, geometry, density. conv geometry: (cin, cout, k, stride, pad, input hw); fc: (in, out).
ALEXNET = [
    ("conv1", "conv", (3, 64, 11, 4, 2, 224), 0.84),
    ("conv2", "conv", (64, 192, 5, 1, 2, 27), 0.38),
    ("conv3", "conv", (192, 384, 3, 1, 1, 13), 0.35),
    ("conv4", "conv", (384, 256, 3, 1, 1, 13), 0.37),
    ("conv5", "conv", (256, 256, 3, 1, 1, 13), 0.37),
    ("fc6", "fc", (9216, 4096), 0.09),
    ("fc7", "fc", (4096, 4096), 0.09),
    ("fc8", "fc", (4096, 1000), 0.25),
]
_VGG_CONV = [
    ("conv1_1", 3, 64, 224, 0.58), ("conv1_2", 64, 64, 224, 0.22),
    ("conv2_1", 64, 128, 112, 0.34), ("conv2_2", 128, 128, 112, 0.36),
    ("conv3_1", 128, 256, 56, 0.53), ("conv3_2", 256, 256, 56, 0.24), ("conv3_3", 256, 256, 56, 0.42),
    ("conv4_1", 256, 512, 28, 0.32), ("conv4_2", 512, 512, 28, 0.27), ("conv4_3", 512, 512, 28, 0.34),
    ("conv5_1", 512, 512, 14, 0.35), ("conv5_2", 512, 512, 14, 0.29), ("conv5_3", 512, 512, 14, 0.36),
]
VGG16 = [(n, "conv", (ci, co, 3, 1, 1, hw), d) for n, ci, co, hw, d in _VGG_CONV] + [
    ("fc6", "fc", (25088, 4096), 0.04),
    ("fc7", "fc", (4096, 4096), 0.04),
    ("fc8", "fc", (4096, 1000), 0.23),
]
NETS = {"alexnet": ALEXNET, "vgg16": VGG16}


def threads() -> int:
    return nat.get_num_threads()


def sync_threads() -> None:
    torch.set_num_threads(threads())


def prune_quantize(w: np.ndarray, density: float, bits: int, rng):
    """Magnitude pruning to `density`, then `bits`-bit linear-centroid weight sharing. Returns the
    dense (pruned, shared) weights and their CSR codebook arrays."""
    rows = w.shape[0]
    flat = w.reshape(rows, -1)
    a = np.abs(flat).ravel()
    keep = max(1, int(round(density * a.size)))
    thr = np.partition(a, a.size - keep)[a.size - keep]
    mask = np.abs(flat) >= thr
    k = 1 << bits
    vals = flat[mask]
    codebook = np.linspace(vals.min(), vals.max(), k).astype(np.float32)
    step = (codebook[-1] - codebook[0]) / (k - 1) if k > 1 else 1.0
    cl = np.clip(np.rint((vals - codebook[0]) / step), 0, k - 1).astype(np.uint8)
    r, c = np.nonzero(mask)
    row_ptr = np.zeros(rows + 1, np.int64)
    np.cumsum(np.bincount(r, minlength=rows), out=row_ptr[1:])
    dense = np.zeros_like(flat)
    dense[r, c] = codebook[cl]
    return dense.reshape(w.shape), row_ptr, c.astype(np.int32), cl, codebook


@functools.lru_cache(maxsize=4)
def build(net: str, name: str):
    """The layer in all three forms, cached (VGG fc6 takes a few seconds to prune)."""
    layer = dict((n, (kind, geo, d)) for n, kind, geo, d in NETS[net])[name]
    kind, geo, density = layer
    rng = np.random.default_rng(abs(hash((net, name))) % 2**32)
    if kind == "fc":
        fin, fout = geo
        w = rng.standard_normal((fout, fin), dtype=np.float32) * np.float32(1 / np.sqrt(fin))
        dense, rp, col, cl, cb = prune_quantize(w, density, 5, rng)
        bias = rng.standard_normal(fout).astype(np.float32)
        ours = nat.SparseLinear(rp, col, fin, cluster=cl, codebook=cb, bias=bias)
        vals = torch.from_numpy(cb[cl])
        csr = torch.sparse_csr_tensor(torch.from_numpy(rp), torch.from_numpy(col.astype(np.int64)), vals, (fout, fin))
        return dict(kind=kind, geo=geo, density=density, w=torch.from_numpy(dense), b=torch.from_numpy(bias),
                    ours=ours, csr=csr)
    cin, cout, k, s, p, hw = geo
    w = rng.standard_normal((cout, cin, k, k), dtype=np.float32) * np.float32(1 / np.sqrt(cin * k * k))
    dense, rp, col, cl, cb = prune_quantize(w, density, 8, rng)
    bias = rng.standard_normal(cout).astype(np.float32)
    ours = nat.SparseConv2d(rp, col, cin, cout, k, s, p, 1, 1, cluster=cl, codebook=cb, bias=bias)
    return dict(kind=kind, geo=geo, density=density, w=torch.from_numpy(dense), b=torch.from_numpy(bias), ours=ours)


def make_input(L, batch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(batch)
    if L["kind"] == "fc":
        return torch.randn(batch, L["geo"][0], generator=g)
    cin, _, _, _, _, hw = L["geo"]
    return torch.relu(torch.randn(batch, cin, hw, hw, generator=g))


def runners(L, x: torch.Tensor):
    """impl name -> zero-arg callable, all computing the same layer (bias + ReLU fused where possible)."""
    xn = x.numpy()
    out = {}
    if L["kind"] == "fc":
        w, b = L["w"], L["b"]
        out["torch-dense"] = lambda: F.relu(F.linear(x, w, b))
        xt = x.t().contiguous()
        csr = L["csr"]
        out["torch-sparse-csr"] = lambda: F.relu(torch.mm(csr, xt).t() + b)
        ours = L["ours"]
        y = np.empty((x.shape[0], L["geo"][1]), np.float32)
        out["deepcomp"] = lambda: ours.forward(xn, True, out=y)
    else:
        _, _, _, s, p, _ = L["geo"]
        w, b = L["w"], L["b"]
        out["torch-dense"] = lambda: F.relu(F.conv2d(x, w, b, s, p))
        ours = L["ours"]
        oh, ow = ours.output_size(x.shape[2], x.shape[3])
        y = np.empty((x.shape[0], L["geo"][1], oh, ow), np.float32)  # preallocated, like the executor
        out["deepcomp"] = lambda: ours.forward(xn, True, out=y)
    return out


# Planning knobs an A/B run can set: name -> (setter, default A value, default B value). The plan
# cache is keyed by them, so switching between calls picks each side's own cached plan. A setter
# returns the previous value; 0 restores an ISA default where the knob has one.
AB_KNOBS = {
    "register-tiling": (lambda v: nat._set_conv_register_tiling(bool(v)), 0, 1),
    "max-nv": (lambda v: nat._set_conv_max_nv(int(v)), 8, 7),
    # Non-temporal output stores from this many bytes (A: never, B: from 8 MB).
    "stream-bytes": (lambda v: nat._set_conv_stream_bytes(int(v)), 2**62, 8 << 20),
    "l1-budget": (lambda v: nat._set_conv_l1_budget(int(v)), 32768, 24576),
    "dense-threshold": (lambda v: nat._set_conv_dense_threshold(float(v)), 2.0, 0.0),
    # 3x3 and 5x5 stride-1 layers in Winograd form from this estimated saving (A: never, B: every one that fits).
    "winograd": (lambda v: nat._set_conv_winograd_threshold(float(v)), 99.0, 0.0),
    # layers over the Winograd memory budget: direct kernels vs the streamed form
    "winograd-stream": (lambda v: nat._set_winograd_streaming(bool(v)), 0, 1),
    # 0: the planning the 16-lane (AVX-512) figures chose, on any ISA (register tiling, blocks up to 8
    # vectors, dense from 0.55); 1: this ISA's defaults.
    "isa-defaults": (lambda v: _set_tuning(bool(v)), 0, 1),
}


def _set_tuning(isa_defaults: bool):
    """Sets the register-tiling, block and dense-threshold knobs together (see AB_KNOBS)."""
    rt = nat._set_conv_register_tiling(nat.isa() == "avx512" if isa_defaults else True)
    nv = nat._set_conv_max_nv(0 if isa_defaults else 8)
    thr = nat._set_conv_dense_threshold(-1.0 if isa_defaults else 0.55)
    return (rt, nv, thr)


def parse_ab(spec: str) -> tuple[str, float, float]:
    """'knob' or 'knob=A,B' -> (knob, A, B); argparse type, so a bad spec is a one-line error."""
    name, _, vals = spec.partition("=")
    if name not in AB_KNOBS:
        raise argparse.ArgumentTypeError(f"unknown knob {name!r}; one of {', '.join(sorted(AB_KNOBS))}")
    if not vals:
        return name, AB_KNOBS[name][1], AB_KNOBS[name][2]
    try:
        a, b = (float(v) for v in vals.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{spec!r}: expected {name}=A,B with two numbers") from None
    return name, a, b


def ab_runners(L, x: torch.Tensor, ab: tuple) -> dict:
    """deepcomp with the knob at value A ("A") and at value B ("B"), plus dense torch, same layer."""
    r = runners(L, x)
    name, a, b = ab
    ours, set_knob = r["deepcomp"], AB_KNOBS[name][0]

    def side(v):
        def run():
            set_knob(v)
            return ours()
        return run
    return {"torch-dense": r["torch-dense"], "A": side(a), "B": side(b)}


def check(L, x) -> None:
    r = runners(L, x)
    ref = r["torch-dense"]().numpy()
    got = np.asarray(r["deepcomp"]())
    err = np.abs(got - ref).max() / max(1.0, np.abs(ref).max())
    assert err < 1e-3, f"mismatch {err}"


def median_ms(fns: dict, repeat: int = 7) -> dict:
    """Median steady-state time in ms of each callable: deepcomp.bench's protocol (alternating blocks
    of back-to-back calls, the start of each block discarded), so torch's spinning OpenMP workers
    and the other side's cache footprint do not leak into the next measurement."""
    from deepcomp.bench import median_ms as block_median_ms

    names = list(fns)
    return dict(zip(names, block_median_ms(*(fns[k] for k in names), repeat=repeat)))


# ---- pytest-benchmark ---------------------------------------------------------------------------

try:
    import pytest
except ImportError:  # script mode without pytest
    pytest = None

if pytest is not None:
    _nets = os.environ.get("DEEPCOMP_BENCH_NETS", "alexnet,vgg16").split(",")
    CASES = []
    for _net in _nets:
        for _name, _kind, _geo, _d in NETS[_net]:
            for _batch in (1, 64):
                for _impl in ("torch-dense", "deepcomp") + (("torch-sparse-csr",) if _kind == "fc" else ()):
                    CASES.append(pytest.param(_net, _name, _batch, _impl, id=f"{_net}-{_name}-b{_batch}-{_impl}"))

    @pytest.mark.parametrize("net,name,batch,impl", CASES)
    def test_layer(benchmark, net, name, batch, impl):
        sync_threads()
        L = build(net, name)
        x = make_input(L, batch)
        if impl == "deepcomp":
            check(L, x)
        fn = runners(L, x)[impl]
        benchmark.group = f"{net} {name} batch {batch}"
        benchmark.extra_info.update(threads=threads(), density=L["density"], isa=nat.isa())
        heavy = L["kind"] == "conv" and batch > 8
        if heavy:
            benchmark.pedantic(fn, rounds=3, iterations=1, warmup_rounds=1)
        else:
            benchmark(fn)


# ---- script mode --------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="batch 1 and 8 everywhere, batch 64 for fc layers")
    ap.add_argument("--full", action="store_true", help="also batch 64 for every conv layer (slow)")
    ap.add_argument("--nets", default="alexnet,vgg16")
    ap.add_argument("--layers", default="", help="comma-separated layer names to keep")
    ap.add_argument("--batches", default="", help="override batch sizes, e.g. 1,8,64")
    ap.add_argument("--threads", type=int, default=0, help="thread count for both libraries (default: ours)")
    ap.add_argument("--repeat", type=int, default=7, help="rounds of alternating blocks (default 7)")
    ap.add_argument("--ab", type=parse_ab, metavar="KNOB[=A,B]",
                    help=f"time deepcomp with a planning knob at A and at B ({', '.join(sorted(AB_KNOBS))}; "
                         "default values: off/on, 8,7, 32768,24576, 2,0; isa-defaults: the AVX-512 tuning vs this ISA's)")
    args = ap.parse_args(argv)
    if args.threads:
        nat.set_num_threads(args.threads)
    sync_threads()
    if args.ab:
        return ab_main(args)
    print(f"threads={threads()} isa={nat.isa()} torch={torch.__version__}\n")
    print("| net | layer | density | batch | torch dense ms | torch CSR ms | deepcomp ms | vs dense | vs CSR |")
    print("|---|---|---|---|---|---|---|---|---|")
    totals = {}
    for net in args.nets.split(","):
        for name, kind, geo, density in NETS[net]:
            if args.layers and name not in args.layers.split(","):
                continue
            if args.batches:
                batches = [int(b) for b in args.batches.split(",")]
            elif kind == "fc" or args.full:
                batches = [1, 8, 64]
            else:
                batches = [1, 8]
            L = build(net, name)
            for batch in batches:
                x = make_input(L, batch)
                check(L, x)
                r = runners(L, x)
                t = median_ms(r, args.repeat)
                d, o = t["torch-dense"], t["deepcomp"]
                c = t.get("torch-sparse-csr")
                key = (net, kind, batch)
                td, to = totals.get(key, (0.0, 0.0))
                totals[key] = (td + d, to + o)
                print(f"| {net} | {name} | {density:.2f} | {batch} | {d:.3f} | "
                      f"{'' if c is None else f'{c:.3f}'} | {o:.3f} | {d / o:.2f}x | "
                      f"{'' if c is None else f'{c / o:.2f}x'} |", flush=True)
    print("\n| net | layers | batch | torch dense ms | deepcomp ms | speedup |")
    print("|---|---|---|---|---|---|")
    for (net, kind, batch), (d, o) in totals.items():
        print(f"| {net} | all {kind} | {batch} | {d:.2f} | {o:.2f} | {d / o:.2f}x |")
    return 0


def ab_main(args) -> int:
    """Same-process A/B of a planning knob over the chosen layers (conv only), with the foreign CPU
    load measured around each layer's timing."""
    from deepcomp.cpuload import ForeignLoad

    knob, a, b = args.ab
    print(f"threads={threads()} isa={nat.isa()} A/B: {knob} = {a:g} (A) vs {b:g} (B)\n")
    restore = AB_KNOBS[knob][0](a)
    print("| net | layer | density | batch | torch ms | A ms | B ms | B speedup over A | B vs torch | foreign cores |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    tot = {}
    batches = [int(b) for b in (args.batches or "1").split(",")]
    for net in args.nets.split(","):
        for name, kind, geo, density in NETS[net]:
            if kind != "conv" or (args.layers and name not in args.layers.split(",")):
                continue
            L = build(net, name)
            for batch in batches:
                x = make_input(L, batch)
                r = ab_runners(L, x, args.ab)
                ref = r["torch-dense"]().numpy()
                for k in ("A", "B"):
                    err = np.abs(np.asarray(r[k]()) - ref).max() / max(1.0, np.abs(ref).max())
                    assert err < 1e-3, f"{name} {k}: mismatch {err}"
                with ForeignLoad() as load:
                    t = median_ms(r, args.repeat)
                a, b, d = t["A"], t["B"], t["torch-dense"]
                ta, tb, td = tot.get((net, batch), (0.0, 0.0, 0.0))
                tot[(net, batch)] = (ta + a, tb + b, td + d)
                print(f"| {net} | {name} | {density:.2f} | {batch} | {d:.3f} | {a:.3f} | {b:.3f} | {a / b:.3f}x | "
                      f"{d / b:.2f}x | {load.cores if load.cores is not None else float('nan'):.2f} |", flush=True)
    for (net, batch), (a, b, d) in tot.items():
        print(f"| {net} | all conv | | {batch} | {d:.2f} | {a:.2f} | {b:.2f} | {a / b:.3f}x | {d / b:.2f}x | |")
    if knob == "isa-defaults":
        _set_tuning(True)
    else:
        AB_KNOBS[knob][0](restore)
    return 0


if __name__ == "__main__":
    sys.exit(main())
