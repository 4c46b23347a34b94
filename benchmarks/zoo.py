"""Every torchvision classification model through deepcomp: compress with the default recipe
(sparsity 0.8, conv 8 / fc 5 bits, depthwise layers kept dense), load on the runtime, compare with
PyTorch on the same weights, and time both at batch 1.

    python benchmarks/zoo.py [--models mobilenet_v2,resnet18] [--threads 2] [--repeat 5]
                             [--out benchmarks/results/zoo.md]

Weights are random. Zero-initialised weights (classifier heads) get random values, and after
pruning and weight sharing BatchNorm statistics are re-estimated on random inputs, so activations
do not vanish or explode and the comparison means something; a row whose logits do not vary with
the input says so. "max diff" is the largest |deepcomp - torch| over the logits divided by the
largest |logit|; "same top-1" compares the argmax of 4 random inputs. Where max diff is above
TOLERANCE (1e-4), both deepcomp and PyTorch fp32 are also compared with the same model run in float64:
on deep models (resnet152) fp32 rounding alone moves PyTorch that far from the exact result, and the
row then passes when deepcomp is no farther from float64 than PyTorch's own fp32 is. Times are the steady-state
median of --repeat rounds of alternating blocks (deepcomp.bench.bench_file), the dense baseline
being the same graph run by PyTorch eager ops on the decompressed weights, same thread count.
A model that fails says why in the table.

Each finished model is merged into --json at once (keyed by name), so a long run that stops half-way
keeps what it measured, and several runs (a quiet one for the common models, a long one for the
largest) add up to one table of every model stored there. A row timed while other processes used
the CPU is marked, and its times are not to be quoted.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from deepcomp.bench import bench_file
from deepcomp.dcz import atomic_write
from deepcomp.errors import DeepcompError
from deepcomp.pipeline import compress

CNN_EXCLUDE = ("vit_", "swin", "maxvit")  # the transformer families, outside the CNN geometric mean
TOLERANCE = 1e-4  # max |deepcomp - torch| over the largest |logit| (issue 10)


def all_models() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def input_size(name: str) -> int:
    import torchvision

    if name.startswith("inception"):
        return 299
    weights = torchvision.models.get_model_weights(name)
    return int(next(iter(weights)).transforms().crop_size[0]) if name.startswith("efficientnet") else 224


def nonvanishing(model: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2 and not p.any():
                p.normal_(0, 0.02)
    return model


def reestimate_batchnorm(model: torch.nn.Module, shape, batches: int = 4, seed: int = 0) -> None:
    """Running statistics of every BatchNorm from random inputs through the compressed weights."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    g = torch.Generator().manual_seed(seed)
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches
    model.eval()
    for m in bns:
        m.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn((2, *shape), generator=g))
    model.eval()


def run_model(name: str, threads: int, repeat: int, workdir: Path) -> dict:
    import torchvision

    import deepcomp

    torch.manual_seed(0)
    size = input_size(name)
    shape = (3, size, size)
    model = nonvanishing(torchvision.models.get_model(name, weights=None).eval())
    params = sum(p.numel() for p in model.parameters())
    res = compress(model, input_shape=shape, progress=False)
    reestimate_batchnorm(res.model, shape)
    path = workdir / f"{name}.dcz"
    size_bytes = res.save(path)
    rt_model = deepcomp.load(path)
    x = np.random.default_rng(0).standard_normal((4, *shape)).astype(np.float32)
    with torch.no_grad():
        ref = res.model(torch.from_numpy(x)).numpy()
    y = rt_model(x)
    scale = max(float(np.abs(ref).max()), 1e-30)
    max_diff = float(np.abs(y - ref).max()) / scale
    fp64 = float64_errors(res.model, x, {"deepcomp": y, "torch": ref}, scale) if max_diff > TOLERANCE else None
    bench = bench_file(path, batches=(1,), threads=threads, repeat=repeat, layers=False)[0]
    e2e = bench["end_to_end"]
    return {"model": name, "params": params, "file_bytes": size_bytes, "ratio": 4 * params / size_bytes,
            "max_diff": max_diff, **({"fp64_diff": fp64} if fp64 else {}), "spread": float(ref.std()),
            "same_top1": bool((y.argmax(1) == ref.argmax(1)).all()), "dense_ms": e2e["dense_ms"],
            "deepcomp_ms": e2e["sparse_ms"], "speedup": e2e["speedup"], "threads": threads,
            "foreign_cores": bench["foreign_cores"]["end_to_end"], "busy": bool(bench["unreliable"])}


def float64_errors(model: torch.nn.Module, x: np.ndarray, outputs: dict[str, np.ndarray], scale: float) -> dict:
    """How far each fp32 output is from the same model run in float64, over the largest |logit|."""
    import copy

    with torch.no_grad():
        exact = copy.deepcopy(model).double()(torch.from_numpy(x).double()).numpy()
    return {k: float(np.abs(v - exact).max()) / scale for k, v in outputs.items()}


def within_tolerance(r: dict) -> bool:
    """max diff within TOLERANCE, or deepcomp no farther from float64 than PyTorch's fp32 is."""
    e = r.get("fp64_diff")
    return r["max_diff"] <= TOLERANCE or (e is not None and e["deepcomp"] <= e["torch"])


def _diff_cell(r: dict) -> str:
    e = r.get("fp64_diff")
    cell = f"{r['max_diff']:.1e}"
    if e:
        cell += f" (vs float64: deepcomp {e['deepcomp']:.1e}, torch fp32 {e['torch']:.1e})"
    return cell if within_tolerance(r) else cell + " **over**"


def table(rows: list[dict], threads: int) -> str:
    lines = [f"batch 1, {threads} thread(s); random weights, default recipe; `python benchmarks/zoo.py`; "
             "(busy): other processes used the CPU while that row was timed, its times are not valid; "
             "(N thread): timed on N threads", "",
             "| model | params | file | ratio | max diff | same top-1 | dense PyTorch ms | deepcomp ms | speedup |",
             "|---|---:|---:|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | | | | | fails: {r['error']} | | | |")
            continue
        top1 = "yes" if r["same_top1"] else "no"
        if r["spread"] < 1e-6:
            top1 += " (logits do not vary)"
        lines.append(f"| {r['model']} | {r['params'] / 1e6:.1f}M | {r['file_bytes'] / 2**20:.2f} MB | "
                     f"{r['ratio']:.1f}x | {_diff_cell(r)} | {top1} | {r['dense_ms']:.2f} | "
                     f"{r['deepcomp_ms']:.2f} | {r['speedup']:.2f}x{_marks(r, threads)} |")
    quiet = [r for r in rows if "error" not in r and not _marks(r, threads)]
    cnn = [r["speedup"] for r in quiet if not r["model"].startswith(CNN_EXCLUDE)]
    if cnn:
        geo = math.exp(sum(math.log(s) for s in cnn) / len(cnn))
        lines += ["", f"Geometric mean speedup over the {len(cnn)} CNN models timed on a quiet machine: {geo:.2f}x; "
                      f"slower than PyTorch: {sum(s < 1 for s in cnn)}."]
    done = [r for r in rows if "error" not in r]
    lines += ["", f"Outputs: {sum(r['same_top1'] for r in done)} of {len(done)} models give the same top-1; "
                  f"{sum(within_tolerance(r) for r in done)} are within the tolerance (max diff <= {TOLERANCE:g}, "
                  "or no farther from float64 than PyTorch fp32)."]
    return "\n".join(lines) + "\n"


def _marks(r: dict, threads: int) -> str:
    """What keeps a row's times from standing beside the table's: another thread count, a busy machine."""
    marks = [f"{r['threads']} thread"] if r.get("threads", threads) != threads else []
    return "".join(f" ({m})" for m in marks + (["busy"] if r.get("busy") else []))


def load_rows(path: str) -> dict[str, dict]:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", help="comma-separated torchvision names (default: every classification model)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/results/zoo.md", help="where the markdown table goes")
    ap.add_argument("--json", default="benchmarks/results/zoo.json",
                    help="rows by model, merged after each model; the table shows every row stored here")
    args = ap.parse_args(argv)
    names = [n for n in args.models.split(",") if n.strip()] if args.models is not None else all_models()
    if not names:
        ap.error("--models names no model")
    stored = load_rows(args.json)
    with tempfile.TemporaryDirectory() as tmp:
        for name in tqdm(names, desc="zoo", unit="model"):
            t = time.perf_counter()
            try:
                stored[name] = run_model(name, args.threads, args.repeat, Path(tmp))
            except DeepcompError as e:
                stored[name] = {"model": name, "error": str(e).split(":")[0][:120].replace("|", "/")}
            finally:
                for f in Path(tmp).glob("*.dcz"):
                    f.unlink()
            atomic_write(args.json, (json.dumps(stored, indent=1, sort_keys=True) + "\n").encode())
            tqdm.write(f"{name}: {time.perf_counter() - t:.0f} s")
    order = {n: i for i, n in enumerate(all_models())}
    rows = sorted(stored.values(), key=lambda r: order.get(r["model"], len(order)))
    text = table(rows, args.threads)
    atomic_write(args.out, text.encode())
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
