"""Speed of compressed AlexNet and VGG-16 on the deepcomp runtime against dense PyTorch, beside the
paper's Table 8 (MKL CSRMV vs CBLAS GEMV on a Haswell i7-5930K), plus load time and peak memory.

    python benchmarks/speed.py [--batch 1,8] [--repeat 10] [--out benchmarks/results/speed.md]

Everything is measured in this process, on the same inputs, with the same thread count for torch
and deepcomp (default: all cores), as the steady-state median of --repeat rounds of alternating
blocks of back-to-back calls (deepcomp.bench.median_ms). Weights are random,
pruned to the paper's per-layer densities (recipe deep-compression): speed depends on the sparsity
pattern's density, not on the values.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from deepcomp.bench import bench_file
from deepcomp.pipeline import compress
from deepcomp.zoo import load_model

# Deep Compression, Table 8: batch 1, dense GEMV vs sparse CSRMV, microseconds.
PAPER_TABLE8 = {
    ("alexnet", "fc6"): (7516.2, 3066.5), ("alexnet", "fc7"): (6187.1, 1282.1), ("alexnet", "fc8"): (1134.9, 890.5),
    ("vgg16", "fc6"): (35022.8, 3774.3), ("vgg16", "fc7"): (5372.8, 545.1), ("vgg16", "fc8"): (774.2, 777.3),
}
FC_LABELS = {"alexnet": {"classifier.1": "fc6", "classifier.4": "fc7", "classifier.6": "fc8"},
             "vgg16": {"classifier.0": "fc6", "classifier.3": "fc7", "classifier.6": "fc8"}}

_PROBE = r"""
import json, sys, time
import numpy as np
t = time.perf_counter()
import deepcomp.runtime as rt
m = rt.load(sys.argv[1])
load_s = time.perf_counter() - t
t = time.perf_counter()
m(np.zeros((1, *m.input_shape), np.float32))  # the first run also plans each conv for its input shape
first_s = time.perf_counter() - t
# VmHWM, not ru_maxrss: after fork+exec, ru_maxrss still holds the parent's high-water mark
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"load_s": load_s, "first_run_s": first_s, "peak_rss_mb": hwm / 1024,
                  "torch_imported": "torch" in sys.modules}))
"""


def deploy_probe(path: str) -> dict:
    """Load-to-ready time and peak RSS of running the file in a fresh process without torch."""
    out = subprocess.run([sys.executable, "-c", _PROBE, path], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def run(arch: str, batches, repeat: int, threads: int | None, workdir: str) -> tuple[list[dict], dict]:
    torch.manual_seed(0)
    path = os.path.join(workdir, f"{arch}.dcz")
    compress(load_model(f"torchvision:{arch}"), progress=False).save(path)
    probe = deploy_probe(path)
    return bench_file(path, batches=batches, threads=threads, repeat=repeat), probe


def markdown(arch: str, results: list[dict], probe: dict) -> str:
    lines = [f"### {arch}", ""]
    for r in results:
        lines += [f"batch {r['batch']}, {r['threads']} threads, kernels {r['isa']}, steady-state medians of alternating blocks:", "",
                  "| layer | kept % | kernel | dense PyTorch ms | deepcomp ms | speedup | torch.sparse CSR ms | deepcomp vs torch.sparse |",
                  "|---|---|---|---|---|---|---|---|"]
        for l in r["layers"]:
            label = FC_LABELS[arch].get(l["name"], l["name"])
            ts, l_sparse = l["torch_sparse_ms"], l["sparse_ms"]
            lines.append(f"| {label} | {100 * l['density']:.1f} | {l['kernel']} | {l['dense_ms']:.3f} | {l['sparse_ms']:.3f} | "
                         f"**{l['speedup']:.2f}x** | {'-' if ts is None else f'{ts:.3f}'} | "
                         f"{'-' if ts is None else f'{ts / l_sparse:.2f}x'} |")
        conv = [l for l in r["layers"] if l["kind"] == "conv"]
        d, s = sum(l["dense_ms"] for l in conv), sum(l["sparse_ms"] for l in conv)
        e = r["end_to_end"]
        lines += [f"| all conv | | | {d:.2f} | {s:.2f} | **{d / s:.2f}x** | | |",
                  f"| end to end | | | {e['dense_ms']:.2f} | {e['sparse_ms']:.2f} | **{e['speedup']:.2f}x** | | |", ""]
        lines += [f"- UNRELIABLE: {w}" for w in r.get("unreliable", [])] + ([""] if r.get("unreliable") else [])
    b1 = next((r for r in results if r["batch"] == 1), None)
    if b1:
        lines += ["Beside the paper's Table 8 (batch 1; paper: MKL CSRMV vs CBLAS GEMV, i7-5930K):", "",
                  "| layer | paper dense us | paper sparse us | paper speedup | ours dense us | ours sparse us | our speedup |",
                  "|---|---|---|---|---|---|---|"]
        for l in b1["layers"]:
            label = FC_LABELS[arch].get(l["name"])
            if label:
                pd, ps = PAPER_TABLE8[(arch, label)]
                lines.append(f"| {arch} {label} | {pd:.1f} | {ps:.1f} | {pd / ps:.2f}x | {1000 * l['dense_ms']:.1f} | "
                             f"{1000 * l['sparse_ms']:.1f} | **{l['speedup']:.2f}x** |")
        lines.append("")
    lines += [f"Deploy (fresh process, torch not imported: {not probe['torch_imported']}): load to ready "
              f"{probe['load_s']:.2f} s (import, read, decode, build the kernels); the first batch-1 run, which "
              f"also plans each convolution for its input shape, {probe['first_run_s']:.2f} s; peak RSS running "
              f"batch 1: {probe['peak_rss_mb']:.0f} MB.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", default="1,8", help="comma-separated batch sizes (default 1,8)")
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--arch", action="append", choices=["alexnet", "vgg16"])
    ap.add_argument("--out", help="also write the markdown here")
    ap.add_argument("--json", help="also write the raw results here")
    args = ap.parse_args(argv)
    batches = [int(b) for b in args.batch.split(",")]
    texts, raw = [], {}
    with tempfile.TemporaryDirectory() as d:
        for arch in args.arch or ["alexnet", "vgg16"]:
            results, probe = run(arch, batches, args.repeat, args.threads, d)
            raw[arch] = {"bench": results, "deploy": probe}
            texts.append(markdown(arch, results, probe))
            print(texts[-1], flush=True)
    if args.out:
        Path(args.out).write_text("\n".join(texts))
    if args.json:
        Path(args.json).write_text(json.dumps(raw, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
