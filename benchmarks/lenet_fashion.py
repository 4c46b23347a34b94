"""Deep Compression's LeNet results (paper Table 1 / Table 7) reproduced on Fashion-MNIST.

    python benchmarks/lenet_fashion.py                 # the full run (README numbers), ~30 min on 2 cores
    python benchmarks/lenet_fashion.py --quick         # a few minutes: subset, few epochs (CI-sized)

For LeNet-300-100 and LeNet-5: train a dense baseline, compress it with recipe "deep-compression" (the
paper's per-layer densities, 8% kept overall; fc 5-bit, conv 8-bit weights) with iterative pruning +
masked retraining + trained quantization, write the .dcz, and evaluate the file on deepcomp's native
runtime. Then the transfer demo: a LeNet-5 compressed on classes 0-4, transferred to classes 5-9
(`deepcomp.train.finetune_dcz`), beside a dense LeNet-5 trained on 5-9 alone.

Prints a markdown table and writes it to benchmarks/results/lenet_fashion.md (``--out``). Needs the
Debian package dataset-fashion-mnist (or --data fashion-mnist:DIR).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch


def kb(n: int) -> str:
    return f"{n / 1024:.1f} KB"


def recipe_for(spec: str, arch: str) -> str:
    """'paper' -> the paper's preset ("deep-compression"); 'fashion' -> fashion-mnist-<arch>."""
    return {"paper": "deep-compression", "fashion": f"fashion-mnist-{arch}"}.get(spec, spec)


def run_model(arch: str, args, train_ds, test_ds, workdir: str, tag: str = "", recipes=("paper",)) -> list[dict]:
    from deepcomp.data import make_loader
    from deepcomp.pipeline import compress
    from deepcomp.train import evaluate, load_dcz_for_eval, make_hooks, train
    from deepcomp.zoo import LoadedModel, resolve_arch, save_model

    name = f"{arch}{tag}"
    log = os.path.join(workdir, f"{name}.jsonl")
    if os.path.exists(log):
        os.unlink(log)
    test_loader = make_loader(test_ds, batch_size=1000)
    torch.manual_seed(args.seed)
    model, shape = resolve_arch(arch, train_ds.num_classes)
    t0 = time.time()
    train(model, train_ds, test_data=test_ds, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
          weight_decay=args.weight_decay, seed=args.seed, progress=args.progress, log_path=log, stage="baseline")
    t_base = time.time() - t0
    save_model(os.path.join(workdir, f"{name}.pt"), model, arch, shape)
    base = evaluate(model, test_loader)
    print(f"[{name}] baseline: top-1 {base['top1']:.4f} ({t_base:.0f} s)", flush=True)

    hooks = make_hooks(None, train_data=train_ds, test_data=test_ds, finetune_epochs=args.finetune_epochs,
                       codebook_epochs=args.codebook_epochs, lr=args.finetune_lr, batch_size=args.batch_size,
                       weight_decay=args.weight_decay,
                       log_path=log, seed=args.seed, progress=args.progress)
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    out = []
    for spec in recipes:
        recipe = recipe_for(spec, arch)
        model.load_state_dict(trained)  # every recipe starts from the same baseline
        t0 = time.time()
        result = compress(LoadedModel(model, arch, shape, f"benchmark:{name}"), recipe=recipe,
                          iterative=args.iterative, seed=args.seed, progress=False, **hooks)
        path = os.path.join(workdir, f"{name}-{spec}.dcz")
        size = result.save(path)
        t_comp = time.time() - t0
        runtime_model, engine = load_dcz_for_eval(path)
        comp = evaluate(runtime_model, test_loader)
        torch_comp = evaluate(result.model, test_loader)
        st = result.meta["stages"]
        orig = result.meta["original_bytes"]
        kept = sum(sw.nnz for sw in result.shared.values()) / sum(sw.numel for sw in result.shared.values())
        print(f"[{name}] recipe {recipe}: top-1 {comp['top1']:.4f} on {engine}, {size} bytes, {orig / size:.1f}x "
              f"({t_comp:.0f} s)", flush=True)
        out.append({"arch": arch, "recipe": recipe, "base": base, "comp": comp, "torch_comp": torch_comp,
                    "engine": engine, "file_bytes": size, "original_bytes": orig, "ratio": orig / size, "stages": st,
                    "kept": kept, "params": result.meta["num_params"], "seconds_baseline": t_base,
                    "seconds_compress": t_comp, "dcz": path})
    return out


def run_transfer(args, data, workdir: str) -> dict:
    from deepcomp.data import load_dataset, make_loader
    from deepcomp.train import evaluate, finetune_dcz, train
    from deepcomp.zoo import resolve_arch

    lim = args.limit
    src_tr = load_dataset(data, "train", classes=range(0, 5), limit=lim)
    src_te = load_dataset(data, "test", classes=range(0, 5))
    dst_tr = load_dataset(data, "train", classes=range(5, 10), limit=lim)
    dst_te = load_dataset(data, "test", classes=range(5, 10))
    src = run_model("lenet-5", args, src_tr, src_te, workdir, tag="-classes0-4", recipes=(args.transfer_recipe,))[0]
    t0 = time.time()
    tr = finetune_dcz(src["dcz"], None, num_classes=5, out_path=os.path.join(workdir, "lenet-5-transfer5-9.dcz"),
                      epochs=args.transfer_epochs, lr=args.finetune_lr, batch_size=args.batch_size, seed=args.seed,
                      progress=args.progress, log_path=os.path.join(workdir, "transfer.jsonl"),
                      train_data=dst_tr, test_data=dst_te)
    t_tr = time.time() - t0
    torch.manual_seed(args.seed)
    dense, _ = resolve_arch("lenet-5", 5)
    t0 = time.time()
    train(dense, dst_tr, test_data=dst_te, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
          weight_decay=args.weight_decay, seed=args.seed, progress=args.progress, stage="dense-5-9")
    t_dense = time.time() - t0
    dense_acc = evaluate(dense, make_loader(dst_te, batch_size=1000))
    print(f"[transfer] 0-4 -> 5-9: top-1 {tr['accuracy']['top1']:.4f} ({tr['file_bytes']} bytes); dense on 5-9: "
          f"{dense_acc['top1']:.4f}", flush=True)
    return {"source": src, "transfer": {k: v for k, v in tr.items() if k not in ("result", "history")},
            "dense": dense_acc, "dense_bytes": 4 * sum(p.numel() for p in dense.parameters()), "seconds_transfer": t_tr, "seconds_dense": t_dense}


def table(results: list[dict], transfer: dict | None, args, elapsed: float) -> str:
    paper = {"lenet-300-100": ("LeNet-300-100", "40x, 1.64% -> 1.58% error", 40.0),
             "lenet-5": ("LeNet-5", "39x, 0.80% -> 0.74% error", 39.0)}
    lines = [
        "| model | recipe | baseline top-1 | compressed top-1 (.dcz, native runtime) | Δ points | kept | fp32 params | "
        "pruned only | + shared weights | + Huffman (.dcz file) | ratio | paper (MNIST) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        st, orig = r["stages"], r["original_bytes"]
        label, ref, _ = paper[r["arch"]]
        delta = 100 * (r["comp"]["top1"] - r["base"]["top1"])
        lines.append(
            f"| {label} | {r['recipe']} | {100 * r['base']['top1']:.2f}% | {100 * r['comp']['top1']:.2f}% | {delta:+.2f} | "
            f"{100 * r['kept']:.1f}% | {kb(orig)} | {kb(st['pruned_bytes'])} ({orig / st['pruned_bytes']:.1f}x) | "
            f"{kb(st['quantized_bytes'])} ({orig / st['quantized_bytes']:.1f}x) | {kb(r['file_bytes'])} | "
            f"**{r['ratio']:.1f}x** | {ref} |")
    out = ["## Deep Compression on Fashion-MNIST (LeNet rows of the paper's Table 1)", "",
           *lines, "",
           "Ratio = fp32 parameter bytes / .dcz bytes on disk. Stages as in the paper's Table 7: pruned only = "
           "fp32 values + fixed-width relative index; + shared weights = fixed-width cluster indices + codebooks; "
           "+ Huffman = the .dcz file. Uncompressed tensors (biases) are counted at fp32 in every stage.", ""]
    if transfer:
        t = transfer["transfer"]
        s = transfer["source"]
        out += ["## Transfer learning (LeNet-5, Fashion-MNIST classes 0-4 -> 5-9)", "",
                "| model | test top-1 on classes 5-9 | size |", "|---|---|---|",
                f"| dense LeNet-5 trained on 5-9 alone ({args.epochs} epochs) | {100 * transfer['dense']['top1']:.2f}% | "
                f"{kb(transfer['dense_bytes'])} |",
                f"| LeNet-5 compressed on 0-4 ({100 * s['comp']['top1']:.2f}% there), new head fine-tuned on 5-9 "
                f"(sparse shared backbone kept; {args.transfer_epochs} epochs per stage) | "
                f"{100 * t['accuracy']['top1']:.2f}% | {kb(t['file_bytes'])} ({t['ratio']:.1f}x) |", ""]
    cfg = (f"baseline {args.epochs} epochs (Adam lr {args.lr}, cosine, batch {args.batch_size}, weight decay "
           f"{args.weight_decay}); iterative pruning in {args.iterative} steps with {args.finetune_epochs} epochs of "
           f"masked retraining each (lr {args.finetune_lr}); {args.codebook_epochs} epochs of centroid training; "
           f"seed {args.seed}" + (f"; training subset of {args.limit} samples" if args.limit else ""))
    out += [f"Settings: {cfg}.", "",
            f"Generated by `python benchmarks/lenet_fashion.py{' --quick' if args.quick else ''}` in "
            f"{elapsed / 60:.1f} min on a {os.cpu_count()}-core machine ({platform.processor() or platform.machine()}), "
            f"torch {torch.__version__} with {torch.get_num_threads()} thread(s).", ""]
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="fashion-mnist", help="dataset spec (default: fashion-mnist)")
    ap.add_argument("--quick", action="store_true", help="CI-sized run: 6000 training samples, 2 epochs per stage")
    ap.add_argument("--epochs", type=int, default=None, help="baseline epochs (default 15; quick 2)")
    ap.add_argument("--finetune-epochs", type=int, default=None, help="retraining epochs per pruning step (default 3; quick 1)")
    ap.add_argument("--codebook-epochs", type=int, default=None, help="centroid-training epochs (default 2; quick 1)")
    ap.add_argument("--transfer-epochs", type=int, default=None, help="epochs per transfer stage (default 2; quick 1)")
    ap.add_argument("--iterative", type=int, default=None, help="pruning steps (default 5; quick 2)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--finetune-lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=5e-4, help="L2 (Adam, coupled) in every stage (default 5e-4)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--limit", type=int, default=None, help="training samples per run (default all; quick 6000)")
    ap.add_argument("--models", default="lenet-300-100,lenet-5")
    ap.add_argument("--recipes", default="paper,fashion",
                    help="recipes to compress each baseline with: 'paper' (deep-compression, the paper's tables), "
                         "'fashion' (fashion-mnist-<arch>), or recipe names/paths (default: paper,fashion)")
    ap.add_argument("--transfer-recipe", default="fashion", help="recipe of the transfer demo's source model")
    ap.add_argument("--no-transfer", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None, help="where the .pt/.dcz/.jsonl files go (default benchmarks/results/lenet_fashion)")
    ap.add_argument("--out", default=None, help="markdown file (default benchmarks/results/lenet_fashion[_quick].md)")
    ap.add_argument("--json", default=None, help="also write the raw results as JSON here")
    ap.add_argument("--progress", action="store_true", help="tqdm bars")
    args = ap.parse_args(argv)
    q = args.quick
    args.epochs = args.epochs or (2 if q else 15)
    args.finetune_epochs = args.finetune_epochs if args.finetune_epochs is not None else (1 if q else 3)
    args.codebook_epochs = args.codebook_epochs if args.codebook_epochs is not None else (1 if q else 2)
    args.transfer_epochs = args.transfer_epochs if args.transfer_epochs is not None else (1 if q else 2)
    args.iterative = args.iterative or (2 if q else 5)
    args.limit = args.limit or (6000 if q else None)
    here = os.path.dirname(os.path.abspath(__file__))
    args.workdir = args.workdir or os.path.join(here, "results", "lenet_fashion" + ("_quick" if q else ""))
    args.out = args.out or os.path.join(here, "results", "lenet_fashion" + ("_quick" if q else "") + ".md")
    os.makedirs(args.workdir, exist_ok=True)
    torch.manual_seed(args.seed)

    from deepcomp.data import load_dataset

    t0 = time.time()
    train_ds = load_dataset(args.data, "train", limit=args.limit)
    test_ds = load_dataset(args.data, "test")
    recipes = tuple(r.strip() for r in args.recipes.split(",") if r.strip())
    results = [r for a in args.models.split(",") if a.strip()
               for r in run_model(a.strip(), args, train_ds, test_ds, args.workdir, recipes=recipes)]
    transfer = None if args.no_transfer else run_transfer(args, args.data, args.workdir)
    elapsed = time.time() - t0
    md = table(results, transfer, args, elapsed)
    print()
    print(md)
    with open(args.out, "w") as f:
        f.write(md)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "transfer": transfer, "elapsed": elapsed}, f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
