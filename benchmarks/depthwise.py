"""deepcomp's native depthwise convolution against PyTorch's, layer by layer: every distinct
depthwise conv shape (channels, kernel, stride, padding, input size) of MobileNet v2, MobileNet
v3-Large, EfficientNet-B0 and ConvNeXt-T at 224x224, batch 1 and 8.

    python benchmarks/depthwise.py [--threads 2] [--repeat 3] [--out benchmarks/results/depthwise.md]

Both sides get the same random weights, bias and input: deepcomp's ``_native.DepthwiseConv2d`` (the
kernel the runtime builds for a conv2d node with groups == channels, deepcomp.runtime.ops.layers)
and ``torch.nn.functional.conv2d(..., groups=C)``, same thread count. Outputs must agree within
1e-4 of the output's scale. Times are medians of --repeat rounds of alternating blocks
(deepcomp.bench.median_ms); the CPU that other processes used meanwhile is reported with the
table, since a loaded machine makes the figures noise.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from deepcomp import _native
from deepcomp.bench import median_ms, steady_heap
from deepcomp.cpuload import ForeignLoad
from deepcomp.dcz import atomic_write
from deepcomp.runtime import set_num_threads

MODELS = ("mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0", "convnext_tiny")
SIZE = 224


def depthwise_shapes(models=MODELS, size: int = SIZE) -> dict[tuple, list[str]]:
    """(channels, multiplier, kernel, stride, padding, dilation, H, W) -> the models that have it,
    from one forward pass of each model on a [1, 3, size, size] input."""
    import torchvision

    shapes: dict[tuple, list[str]] = {}
    for name in models:
        model = torchvision.models.get_model(name).eval()

        def hook(m, inputs, out, name=name):
            h, w = inputs[0].shape[2:]
            key = (m.in_channels, m.out_channels // m.in_channels, m.kernel_size, m.stride, m.padding, m.dilation,
                   int(h), int(w))
            if name not in shapes.setdefault(key, []):
                shapes[key].append(name)

        handles = [m.register_forward_hook(hook) for m in model.modules()
                   if isinstance(m, torch.nn.Conv2d) and m.groups == m.in_channels > 1]
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size))
        for h in handles:
            h.remove()
    return shapes


def label(key: tuple) -> str:
    c, mult, k, s, p, d, h, w = key
    extra = (f" x{mult}" if mult != 1 else "") + (f" d{d[0]}" if d != (1, 1) else "")
    return f"{c}ch {k[0]}x{k[1]} s{s[0]} p{p[0]} {h}x{w}{extra}"


def run_case(key: tuple, batch: int, repeat: int, rng) -> tuple[float, float, float]:
    """(torch ms, deepcomp ms, max |difference| over the output's scale) for one shape and batch."""
    c, mult, k, s, p, d, h, w = key
    weight = rng.standard_normal((c * mult, 1, *k)).astype(np.float32) * (1.0 / math.prod(k)) ** 0.5
    bias = rng.standard_normal(c * mult).astype(np.float32) * 0.1
    x = rng.standard_normal((batch, c, h, w)).astype(np.float32)
    kernel = _native.DepthwiseConv2d(weight, bias, c, s, p, d)
    tw, tb, tx = torch.from_numpy(weight), torch.from_numpy(bias), torch.from_numpy(x)

    def run_torch():
        with torch.no_grad():
            return F.conv2d(tx, tw, tb, s, p, d, groups=c)

    def run_deepcomp():
        return kernel.forward(x, None, None)

    ref = run_torch().numpy()
    err = float(np.abs(run_deepcomp() - ref).max() / max(float(np.abs(ref).max()), 1e-30))
    t_torch, t_dc = median_ms(run_torch, run_deepcomp, repeat=repeat)
    return t_torch, t_dc, err


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--out", default="benchmarks/results/depthwise.md")
    args = ap.parse_args(argv)
    steady_heap()
    torch.set_num_threads(args.threads)
    set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    shapes = depthwise_shapes()
    rng = np.random.default_rng(0)
    rows, bad = [], []
    load = ForeignLoad().start()
    for key in sorted(shapes, key=lambda k: (k[0] * k[6] * k[7], k)):
        for batch in batches:
            t_torch, t_dc, err = run_case(key, batch, args.repeat, rng)
            if err > 1e-4:
                bad.append(f"{label(key)} batch {batch}: max difference {err:.1e} of the output's scale")
            rows.append((key, batch, t_torch, t_dc))
    foreign = load.stop()
    command = (f"python benchmarks/depthwise.py --threads {args.threads} --repeat {args.repeat} "
               f"--batches {args.batches}")
    lines = [f"`{command}`, {len(shapes)} shapes of {', '.join(MODELS)} at {SIZE}x{SIZE}; foreign CPU load during the run: "
             + ("unknown" if foreign is None else f"{foreign:.2f} cores"), "",
             "| shape | models | batch | torch ms | deepcomp ms | speedup |", "|---|---|---:|---:|---:|---:|"]
    for key, batch, t_torch, t_dc in rows:
        lines.append(f"| {label(key)} | {', '.join(shapes[key])} | {batch} | {t_torch:.3f} | {t_dc:.3f} | "
                     f"{t_torch / t_dc:.2f}x |")
    for batch in batches:
        ratios = [t / d for _, b, t, d in rows if b == batch]
        slower = sum(r < 1 for r in ratios)
        lines.append("")
        lines.append(f"batch {batch}: geometric mean speedup {math.exp(sum(map(math.log, ratios)) / len(ratios)):.2f}x,"
                     f" {slower} of {len(ratios)} shapes slower than PyTorch")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    atomic_write(Path(args.out), text.encode())
    for b in bad:
        print(f"MISMATCH {b}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
