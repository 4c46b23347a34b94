"""End-to-end int8 AlexNet / VGG-16 on the int8 runtime steps, against deepcomp's fp32 runtime on the
same architecture at the same densities, in one process.

    python benchmarks/int8_e2e.py [--arch alexnet] [--batch 1] [--repeat 5] [--block 1x4,4x4]

Weights are torchvision's architecture with random weights (torch.manual_seed(0)), block-pruned at
Deep Compression's per-layer densities (recipe deep-compression-<arch>), int8 per output channel;
activations calibrated min-max on random inputs (the speed is real, the accuracy means nothing).
The chain is built here from the torchvision module lists (conv + ReLU [+ max-pool] -> one
Int8ConvStep writing the next conv's padded layout; linear [+ ReLU] -> Int8LinearStep, the last
one fp32 out), a benchmark-only stand-in for the executor's int8 steps (not wired yet). fp32: the
same model compressed with the deep-compression recipe and run by deepcomp.runtime.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np
import torch
from torch import nn

from deepcomp.bench import median_ms, steady_heap
from deepcomp.prune.block import compute_block_masks
from deepcomp.quantize_int8 import calibrate_inputs, random_batches
from deepcomp.recipes import load_recipe
from deepcomp.runtime import int8 as rt8
from deepcomp.zoo import load_model


def layer_densities(arch: str) -> dict[str, float]:
    r = load_recipe(f"deep-compression-{arch}")
    return {name: spec["density"] for name, spec in r.layers.items()}


def chain_of(model: nn.Module, q: dict) -> list:
    """Int8 steps for a torchvision AlexNet/VGG (features, avgpool, classifier Sequentials)."""
    mods = [(f"features.{i}", m) for i, m in enumerate(model.features)]
    mods += [(f"classifier.{i}", m) for i, m in enumerate(model.classifier)]
    convs = [(i, n, m) for i, (n, m) in enumerate(mods) if isinstance(m, (nn.Conv2d, nn.Linear))]
    steps = []
    for k, (i, name, m) in enumerate(convs):
        relu = i + 1 < len(mods) and isinstance(mods[i + 1][1], nn.ReLU)
        nxt = convs[k + 1] if k + 1 < len(convs) else None
        out_q = q[nxt[1]] if nxt else None
        w = m.weight.detach().numpy()
        b = m.bias.detach().numpy()
        if isinstance(m, nn.Conv2d):
            pool = None
            j = i + 2 if relu else i + 1
            if j < len(mods) and isinstance(mods[j][1], nn.MaxPool2d):
                pool = (mods[j][1].kernel_size, mods[j][1].stride)
            pad = nxt[2].padding if nxt is not None and isinstance(nxt[2], nn.Conv2d) else 0
            steps.append(rt8.Int8ConvStep(w, b, stride=m.stride, padding=m.padding, in_q=q[name], out_q=out_q,
                                          relu=relu, pool=pool, out_padding=pad))
        else:
            steps.append(rt8.Int8LinearStep(w, b, in_q=q[name], out_q=out_q, relu=relu))
    return steps


def run_chain(steps, x):
    for s in steps:
        x = s(x)
    return x


def build(arch: str, out_block: int, batches):
    torch.manual_seed(0)
    model = load_model(f"torchvision:{arch}").model.eval()
    dens = layer_densities(arch)
    with torch.no_grad():
        masks = compute_block_masks(model, {n: 1 - d for n, d in dens.items()}, out_block=out_block)
        for name, m in model.named_modules():
            if name in masks:
                m.weight.mul_(masks[name])
    q = calibrate_inputs(model, batches, method="minmax")
    return chain_of(model, q)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="alexnet", choices=["alexnet", "vgg16"])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--block", default="1x4,4x4")
    ap.add_argument("--no-fp32", action="store_true", help="skip compressing and timing the fp32 model")
    a = ap.parse_args(argv)
    import deepcomp._native as nat
    steady_heap()  # the steps allocate their outputs: no page faults on fresh memory
    batches = random_batches((3, 224, 224), n=1, batch=2)
    x = torch.randn(a.batch, 3, 224, 224, generator=torch.Generator().manual_seed(1)).numpy()
    fns, labels = [], []
    for blk in a.block.split(","):
        chain = build(a.arch, int(blk.split("x")[0]), batches)
        fns.append(lambda chain=chain: run_chain(chain, x))
        labels.append(f"int8 {blk}")
    if not a.no_fp32:
        from deepcomp.pipeline import compress
        import deepcomp.runtime as rt
        torch.manual_seed(0)
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "m.dcz")
            compress(load_model(f"torchvision:{a.arch}"), progress=False).save(path)
            fp32 = rt.load(path)
        fns.append(lambda: fp32(x))
        labels.append("fp32 sparse (deepcomp runtime)")
    ms = median_ms(*fns, repeat=a.repeat)
    print(f"{a.arch}, batch {a.batch}, {nat.get_num_threads()} threads, int8 {nat.int8_isa()}, fp32 {nat.isa()}; "
          "medians of alternating blocks in one process")
    for lab, t in zip(labels, ms):
        extra = f" ({ms[-1] / t:.2f}x vs fp32 sparse)" if not a.no_fp32 and lab.startswith("int8") else ""
        print(f"- {lab}: {t:.2f} ms{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
