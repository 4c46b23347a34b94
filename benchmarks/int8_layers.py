"""Per-layer speed of the int8 kernels against the fp32 sparse kernel and dense fp32 (PyTorch).

Every AlexNet and VGG-16 conv and fc layer (torchvision shapes) at Deep Compression's per-layer
densities (benchmarks/bench_layers.py). fp32 sparse: the unstructured magnitude-pruned layer on
deepcomp's fp32 kernel. int8: the same density as whole 1x4 blocks (deepcomp.prune.block, L2 norm),
per-channel int8 weights, uint8 input, bias + ReLU fused, uint8 output in the next layer's padded
layout (conv) or fp32 (fc); int8 dense: every block kept, on the dense int8 kernel. All run in one
process, same threads, medians of alternating blocks of calls (deepcomp.bench.median_ms).

    python benchmarks/int8_layers.py [--nets alexnet,vgg16] [--layers conv3,fc6] [--batch 1] [--repeat 5] [--out FILE]

GMAC/s counts the MACs each kernel executes (kept weights x output positions; dense: all).

--cpu measures per-core efficiency on a busy machine: one thread everywhere, each call timed by
the calling thread's CPU time (time.thread_time), medians over alternating rounds, so time the
thread spends preempted by other processes is not counted (their cache pollution still is).
Layers whose input is the fp32 image (conv1, conv1_1) include quantizing and packing it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_layers as bl  # noqa: E402

import deepcomp._native as nat  # noqa: E402
from deepcomp.prune.block import block_mask  # noqa: E402

FIRST = {"conv1", "conv1_1"}


def int8_weights(w: np.ndarray, density: float, out_block: int = 1):
    """Block-prune to density (out_block x 4 along inputs), then symmetric per-channel int8."""
    keep = block_mask(torch.from_numpy(np.abs(w)), 1.0 - density, out_block=out_block).numpy()
    wp = w * keep
    scale = np.abs(wp.reshape(w.shape[0], -1)).max(1) / 127.0
    scale[scale == 0] = 1.0
    q = np.rint(wp / scale.reshape((-1,) + (1,) * (w.ndim - 1))).astype(np.int8)
    return q, scale.astype(np.float32), float(keep.mean())


def conv_case(L, batch: int, rng):
    cin, cout, k, s, p, hw = L["geo"]
    w = L["w"].numpy()
    x = bl.make_input(L, batch).numpy()
    xs = float(x.max()) / 255.0
    oh = (hw + 2 * p - k) // s + 1
    cases = {}
    for label, dens, kernel, ob in (("int8 1x4", L["density"], "auto", 1), ("int8 1x4 per channel", L["density"], "sparse", 1),
                                    ("int8 4x4", L["density"], "auto", 4), ("int8 dense", 1.0, "dense", 1)):
        # the dense case keeps every block of an unpruned weight of the same shape
        wq, ws, kept = int8_weights(w if dens < 1 else rng.standard_normal(w.shape).astype(np.float32), dens, ob)
        m = (xs * ws / 0.05).astype(np.float32)
        conv = nat.Int8Conv2d(wq, m, L["b"].numpy() / 0.05, stride=s, padding=p, relu=True, out="u8",
                              out_padding=1, kernel=kernel)
        if L["name"] in FIRST:
            fn = (lambda conv=conv: conv.forward(nat.int8_pack(x, 1.0 / xs, 0, p, s), hw, hw))
        else:
            xb = nat.int8_pack(x, 1.0 / xs, 0, p, s)
            fn = (lambda conv=conv, xb=xb: conv.forward(xb, hw, hw))
        macs = conv.executed_blocks * 4 * oh * oh * batch
        cases[label] = (fn, macs, conv.dense_groups, conv.blocks / conv.total_blocks)
    return cases


def fc_case(L, batch: int, rng):
    fin, fout = L["geo"]
    w = L["w"].numpy()
    q = rng.integers(0, 256, (batch, fin)).astype(np.uint8)
    cases = {}
    for label, dens, kernel in (("int8 1x4", L["density"], "sparse"), ("int8 dense", 1.0, "dense")):
        wq, ws, kept = int8_weights(w if dens < 1 else rng.standard_normal(w.shape).astype(np.float32), dens)
        lin = nat.Int8Linear(wq, ws * 0.01, L["b"].numpy(), relu=True, out="f32", kernel=kernel)
        cases[label] = ((lambda lin=lin: lin.forward(q)), lin.blocks * 4 * batch, int(lin.dense), lin.blocks / lin.total_blocks)
    return cases


def cpu_median_ms(fns: dict, repeat: int) -> dict:
    """Median CPU time of the calling thread per call, in ms, alternating the functions each round."""
    for f in fns.values():
        f()
    times = {k: [] for k in fns}
    for _ in range(max(3, repeat)):
        for k, f in fns.items():
            t = time.thread_time()
            f()
            times[k].append(time.thread_time() - t)
    return {k: 1e3 * float(np.median(v)) for k, v in times.items()}


def run(nets, batch: int, repeat: int, layers=None, cpu: bool = False):
    if cpu:
        nat.set_num_threads(1)
    bl.sync_threads()
    rng = np.random.default_rng(0)
    rows = []
    for net in nets:
        for name, kind, geo, density in bl.NETS[net]:
            if layers and name not in layers:
                continue
            L = dict(bl.build(net, name), name=name)
            x = bl.make_input(L, batch)
            base = bl.runners(L, x)
            cases = conv_case(L, batch, rng) if kind == "conv" else fc_case(L, batch, rng)
            fns = {"dense fp32": base["torch-dense"], "fp32 sparse": base["deepcomp"]}
            fns.update({k: v[0] for k, v in cases.items()})
            ms = cpu_median_ms(fns, repeat) if cpu else bl.median_ms(fns, repeat=repeat)
            if kind == "conv":
                cin, cout, k, s, p, hw = geo
                oh = (hw + 2 * p - k) // s + 1
                dense_macs = cin * cout * k * k * oh * oh * batch
            else:
                dense_macs = geo[0] * geo[1] * batch
            rows.append(dict(net=net, layer=name, density=density, ms=ms, dense_macs=dense_macs,
                             macs={k: v[1] for k, v in cases.items()}, block_density=cases["int8 1x4"][3],
                             grouped={k: v[2] for k, v in cases.items()}))
            print(f"{net} {name}: " + ", ".join(f"{k} {v:.3f} ms" for k, v in ms.items()), flush=True)
    return rows


def markdown(rows, batch: int, cpu: bool = False) -> str:
    how = ("CPU time of the calling thread per call, medians of alternating rounds" if cpu
           else "wall time, medians of alternating blocks")
    out = [f"batch {batch}, {nat.get_num_threads()} threads, int8 path {nat.int8_isa()}, fp32 path {nat.isa()}; "
           f"{how}, in one process; GMAC/s of the MACs each kernel executes", "",
           "| net | layer | kept | dense fp32 ms | fp32 sparse ms | int8 1x4 ms (GMAC/s) | int8 1x4 per channel ms "
           "(GMAC/s) | int8 4x4 ms (GMAC/s) | int8 dense ms (GMAC/s) | 1x4 vs fp32 sparse | 1x4 vs dense fp32 | "
           "1x4 vs per channel | 4x4 vs 1x4 |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    tot = {}
    for r in rows:
        ms = r["ms"]
        for k, v in ms.items():
            tot[(r["net"], k)] = tot.get((r["net"], k), 0.0) + v
        s8, fs, df = ms["int8 1x4"], ms["fp32 sparse"], ms["dense fp32"]
        cell = {k: (f"{ms[k]:.3f} ({r['macs'][k] / ms[k] / 1e6:.0f})" if k in ms else "-")
                for k in ("int8 1x4", "int8 1x4 per channel", "int8 4x4", "int8 dense")}
        b44 = f"{s8 / ms['int8 4x4']:.2f}x" if "int8 4x4" in ms else "-"
        bpc = f"{ms['int8 1x4 per channel'] / s8:.2f}x" if "int8 1x4 per channel" in ms else "-"
        out.append(f"| {r['net']} | {r['layer']} | {100 * r['block_density']:.0f}% | {df:.3f} | {fs:.3f} | "
                   f"{cell['int8 1x4']} | {cell['int8 1x4 per channel']} | {cell['int8 4x4']} | {cell['int8 dense']} | "
                   f"**{fs / s8:.2f}x** | {df / s8:.2f}x | {bpc} | {b44} |")
    out.append("")
    for net in dict.fromkeys(r["net"] for r in rows):
        for kind in ("conv", "fc"):
            sel = [r for r in rows if r["net"] == net and r["layer"].startswith(kind)]
            t = {}
            for r in sel:
                for k, v in r["ms"].items():
                    t[k] = t.get(k, 0.0) + v
            if not t:
                continue
            extra = f", int8 4x4 {t['int8 4x4']:.2f} ms" if "int8 4x4" in t else ""
            if "int8 1x4 per channel" in t:
                extra += (f", int8 1x4 per channel {t['int8 1x4 per channel']:.2f} ms "
                          f"(tiling {t['int8 1x4 per channel'] / t['int8 1x4']:.2f}x)")
            out.append(f"- {net} all {kind}: dense fp32 {t['dense fp32']:.2f} ms, fp32 sparse {t['fp32 sparse']:.2f} ms, "
                       f"int8 1x4 {t['int8 1x4']:.2f} ms ({t['fp32 sparse'] / t['int8 1x4']:.2f}x vs fp32 sparse, "
                       f"{t['dense fp32'] / t['int8 1x4']:.2f}x vs dense fp32){extra}, int8 dense {t['int8 dense']:.2f} ms")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nets", default="alexnet,vgg16")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--layers", help="comma-separated layer names (default: all)")
    ap.add_argument("--cpu", action="store_true", help="1 thread, CPU time per call (for a busy machine)")
    ap.add_argument("--out", help="also write the markdown table here")
    a = ap.parse_args(argv)
    rows = run(a.nets.split(","), a.batch, a.repeat, a.layers.split(",") if a.layers else None, a.cpu)
    md = markdown(rows, a.batch, a.cpu)
    print(md)
    if a.out:
        tmp = a.out + ".tmp"
        with open(tmp, "w") as f:
            f.write(md)
        os.replace(tmp, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
