"""Accuracy of the sparse int8 path on a model trained on real data, beside the fp32 recipes.

    python benchmarks/int8_accuracy.py                       # LeNet-5 on Fashion-MNIST
    python benchmarks/int8_accuracy.py --quick               # a small, CI-sized run (minutes)
    python benchmarks/int8_accuracy.py --model vgg16-small   # the conv-heavy model (long on 2 cores)

Trains a dense fp32 baseline, then compresses the same baseline with each recipe, every one with
``--data`` (retraining after each pruning step, centroid training, and for int8 the activation
calibration on the training split): ``deep-compression`` (fp32 sparse), ``sparse-int8`` with 1x4
blocks and with 4x4 blocks. Each file is evaluated on deepcomp's runtime (the int8 nodes on the
int8 kernels). Prints top-1 against the dense baseline and the file sizes as a markdown table, and
writes it to ``--out`` (default benchmarks/results/int8_accuracy.md).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch


def recipes(model: str):
    """(label, Recipe) of each compression compared."""
    from deepcomp.recipes import load_recipe

    fp32 = load_recipe("deep-compression", model)
    b14 = load_recipe("sparse-int8", model)
    b44 = load_recipe("sparse-int8", model)
    b44.defaults = {**b44.defaults, "block": [4, 4]}
    b44.name = f"{b44.name} (block 4x4)"
    return [("fp32 deep-compression", fp32), ("int8, 1x4 blocks", b14), ("int8, 4x4 blocks", b44)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="lenet-5", choices=["lenet-5", "vgg16-small"])
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--epochs", type=int, default=8, help="baseline training epochs")
    ap.add_argument("--iterative", type=int, default=3)
    ap.add_argument("--finetune-epochs", type=int, default=2)
    ap.add_argument("--codebook-epochs", type=int, default=1)
    ap.add_argument("--limit", type=int, default=None, help="training samples (default: all)")
    ap.add_argument("--quick", action="store_true", help="2 baseline epochs, 1 step of 1 epoch, 10k samples")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "int8_accuracy.md"))
    a = ap.parse_args(argv)
    if a.quick:
        a.epochs, a.iterative, a.finetune_epochs, a.codebook_epochs, a.limit = 2, 1, 1, 0, a.limit or 10000

    from deepcomp.data import load_dataset, make_loader
    from deepcomp.pipeline import compress, evaluate_file
    from deepcomp.train import evaluate, train
    from deepcomp.zoo import LoadedModel, resolve_arch

    t_start = time.time()
    train_ds = load_dataset(a.data, "train", limit=a.limit)
    test_ds = load_dataset(a.data, "test")
    torch.manual_seed(a.seed)
    model, shape = resolve_arch(a.model, train_ds.num_classes)
    train(model, train_ds, test_data=test_ds, epochs=a.epochs, seed=a.seed, progress=False, stage="baseline")
    base = evaluate(model, make_loader(test_ds, batch_size=1000))
    print(f"dense fp32 baseline: top-1 {100 * base['top1']:.2f}%", flush=True)
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for label, rec in recipes(a.model):
            model.load_state_dict(trained)  # every recipe starts from the same baseline
            t0 = time.time()
            r = compress(LoadedModel(model, a.model, shape, f"benchmark:{a.model}"), recipe=rec,
                         data=(train_ds, test_ds), iterative=a.iterative, finetune_epochs=a.finetune_epochs,
                         codebook_epochs=a.codebook_epochs, seed=a.seed, progress=False)
            path = os.path.join(d, "m.dcz")
            size = r.save(path)
            acc = evaluate_file(r, path)["top1"]
            rows.append((label, acc, size, r.meta["original_bytes"], time.time() - t0))
            print(f"{label}: top-1 {100 * acc:.2f}% ({100 * (acc - base['top1']):+.2f} points), {size} bytes", flush=True)
    lines = [f"{a.model} on {a.data}: dense fp32 baseline top-1 {100 * base['top1']:.2f}% ({a.epochs} epochs); "
             f"each recipe with --data: {a.iterative} pruning step(s) of {a.finetune_epochs} epoch(s), "
             f"{a.codebook_epochs} of centroid training; seed {a.seed}"
             + (f"; {a.limit} training samples" if a.limit else ""), "",
             "| compression | top-1 (file, deepcomp runtime) | vs dense | file | ratio |", "|---|---|---|---|---|"]
    for label, acc, size, orig, _ in rows:
        lines.append(f"| {label} | {100 * acc:.2f}% | {100 * (acc - base['top1']):+.2f} | {size / 1024:.1f} KB | "
                     f"{orig / size:.1f}x |")
    lines += ["", f"`python benchmarks/int8_accuracy.py{' --quick' if a.quick else ''}"
                  f"{'' if a.model == 'lenet-5' else ' --model ' + a.model}`, {time.time() - t_start:.0f} s"]
    text = "\n".join(lines)
    print("\n" + text)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
