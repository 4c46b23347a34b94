"""Structured pruning that hardens: ResNet-50 and MobileNetV2 with 50% of their channels removed (residual
groups included), checked against the masked model, saved as TorchScript, and timed against the
original in PyTorch and on the deepcomp runtime.

    python benchmarks/structured.py [--arch resnet50,mobilenet_v2] [--amount 0.5] [--batch 1,8]
                                    [--sparsity 0,0.8] [--repeat 7] [--threads N] [--out benchmarks/results/structured.md]

Weights are torchvision's random initialisation with random BatchNorm statistics (nothing can be
downloaded here; removal and speed do not depend on the values). Channels are chosen by filter L1
(Li et al.), per group. "masked" is ``apply_channel_plan(model, plan, mode="zero")``: the original
shapes with the removed channels zeroed; the hardened model must compute the same.

PyTorch: eager original against eager hardened, same process, same thread count, same input, as
the steady-state median of --repeat rounds of alternating blocks (deepcomp.bench.median_ms). Runtime:
the original and the hardened model each compressed with the same recipe (deep-compression's bits,
at each --sparsity of unstructured pruning on top: 0 keeps every remaining weight, dense kernels),
loaded with deepcomp.runtime and timed the same way. A model the runtime cannot capture is reported
with the reason. About 6 minutes on 2 quiet cores (11 with 1 thread on a loaded machine).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn

from deepcomp.bench import median_ms, steady_heap
from deepcomp.errors import DeepcompError
from deepcomp.prune import apply_channel_plan, prune_channels


def random_model(arch: str) -> nn.Module:
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    return model.eval()


def macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of the Conv2d and Linear layers for input x."""
    total = 0

    def hook(mod, inp, out):
        nonlocal total
        per_out = mod.weight[0].numel()  # (in_channels / groups) * kh * kw, or in_features
        total += out.numel() * per_out

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return total


def torchscript_check(model: nn.Module, x: torch.Tensor, path: str) -> float:
    """Script, save and load the model; the largest difference of the loaded one's outputs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(model), path)
        loaded = torch.jit.load(path)
    with torch.no_grad():
        return float((loaded(x) - model(x)).abs().max())


def runtime_pair(original: nn.Module, hardened: nn.Module, size: int, sparsity: float, workdir: str):
    """The two models compressed with the same recipe and loaded on the runtime, or the reason why not."""
    import deepcomp.runtime as rt
    from deepcomp.pipeline import compress

    loaded = []
    for tag, model in (("original", original), ("hardened", hardened)):
        path = os.path.join(workdir, f"{tag}-{sparsity}.dcz")
        try:
            compress(copy.deepcopy(model), input_shape=(3, size, size), sparsity=sparsity, progress=False).save(path)
        except DeepcompError as e:
            return None, str(e)
        loaded.append(rt.load(path))
    return loaded, None


def run(arch: str, args, workdir: str) -> list[str]:
    size = args.size
    model = random_model(arch)
    hardened, plan = prune_channels(model, args.amount, "l1", example_input_shape=(3, size, size), return_plan=True)
    hardened.eval()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = apply_channel_plan(model, plan, mode="zero").eval()(x)
        diff = float((hardened(x) - ref).abs().max()) / float(ref.abs().max())
    ts_diff = torchscript_check(hardened, x, os.path.join(workdir, f"{arch}.pt"))
    params = [sum(p.numel() for p in m.parameters()) for m in (model, hardened)]
    flops = [macs(m, x[:1]) for m in (model, hardened)]
    lines = [f"### {arch}, {int(100 * args.amount)}% of each group's channels removed (L1), {size}x{size}", "",
             f"{len(plan.keep)} channel groups ({sum(len(g.producers) > 1 for g in plan.groups.values())} of them "
             f"tied by residual adds), layers left whole: {', '.join(sorted(plan.skipped)) or 'none'}. "
             f"Parameters {params[0] / 1e6:.2f} M -> {params[1] / 1e6:.2f} M, "
             f"MACs {flops[0] / 1e9:.2f} G -> {flops[1] / 1e9:.2f} G per image. "
             f"Hardened vs masked outputs: max |difference| / max |output| = {diff:.1e}; "
             f"TorchScript (script, save, load): max |difference| {ts_diff:.1e}.", "",
             f"{args.threads} thread{'s' * (args.threads != 1)}, steady-state medians of alternating blocks, "
             "ms per batch:", "",
             "| where | batch | original ms | hardened ms | speedup |", "|---|---|---|---|---|"]
    for batch in args.batches:
        xb = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
        with torch.inference_mode():
            a, b = median_ms(lambda: model(xb), lambda: hardened(xb), repeat=args.repeat)
        lines.append(f"| PyTorch eager | {batch} | {a:.2f} | {b:.2f} | **{a / b:.2f}x** |")
        print(lines[-1], flush=True)
    blocked = None
    for sparsity in args.sparsities:
        pair, blocked = runtime_pair(model, hardened, size, sparsity, workdir)
        if pair is None:
            break
        for batch in args.batches:
            xn = np.random.default_rng(1).standard_normal((batch, 3, size, size), dtype=np.float32)
            a, b = median_ms(lambda: pair[0](xn), lambda: pair[1](xn), repeat=args.repeat)
            lines.append(f"| deepcomp runtime, both compressed at {int(100 * sparsity)}% unstructured sparsity | "
                         f"{batch} | {a:.2f} | {b:.2f} | **{a / b:.2f}x** |")
            print(lines[-1], flush=True)
    if blocked:
        lines += ["", f"Not on the deepcomp runtime: {blocked}"]
    return lines + [""]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet50,mobilenet_v2", help="comma-separated torchvision names")
    ap.add_argument("--amount", type=float, default=0.5, help="fraction of each group's channels to remove")
    ap.add_argument("--size", type=int, default=224, help="input height and width")
    ap.add_argument("--batch", default="1,8", help="comma-separated batch sizes")
    ap.add_argument("--sparsity", default="0,0.8", help="unstructured sparsity of the runtime's compressed files")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("DEEPCOMP_NUM_THREADS", 0)) or os.cpu_count())
    ap.add_argument("--out", help="also write the markdown here")
    args = ap.parse_args(argv)
    args.batches = [int(b) for b in args.batch.split(",")]
    args.sparsities = [float(s) for s in args.sparsity.split(",")]
    import deepcomp.runtime as rt

    steady_heap()
    torch.set_num_threads(args.threads)
    rt.set_num_threads(args.threads)
    lines = []
    with tempfile.TemporaryDirectory() as d:
        for arch in args.arch.split(","):
            part = run(arch, args, d)
            lines += part
            print("\n".join(part), flush=True)
    if args.out:
        tmp = Path(args.out + ".tmp")
        tmp.write_text("\n".join(lines))
        tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
