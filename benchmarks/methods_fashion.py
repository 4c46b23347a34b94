"""The methods study on Fashion-MNIST: every pruning method of the seed write-ups on LeNet-5 and on a
conv-heavy VGG-16-style model, checked against the write-ups' claims.

    python benchmarks/methods_fashion.py            # the full run (README figures): < 60 min on 2 cores
    python benchmarks/methods_fashion.py --quick    # a few minutes: subsets, 2 sparsities, 1 epoch

1. Baselines: zoo:lenet-5 (28x28) and zoo:vgg16-small (VGG-16's layout at 1/8 width with BatchNorm,
   Fashion-MNIST zero-padded to 32x32).
2. ``deepcomp.study.sweep`` for both at 50/70/80/90/95% with every method, without retraining and with
   ``--finetune-epochs`` of masked retraining on ``--retrain-limit`` samples per point.
3. vgg16-small through the paper's VGG-16 recipe (Table 5 densities, conv 8 / fc 5 bits) with iterative
   pruning and retraining: the LeNet benchmark's table (baseline, compressed top-1 on the runtime,
   per-stage sizes, ratio) and batch-1 speed on deepcomp's runtime against dense PyTorch.
4. Iterative against one-shot pruning at 90/95% with the same retraining epochs; whole filters
   removed by relevance against by L1 norm (UCF's structured step), retrained.
5. Network slimming as Liu et al. run it (models with BatchNorm): ``--slim-epochs`` more epochs of
   sparsity training (``train(bn_l1=)``, L1 on the BatchNorm gammas), then slimmed and retrained,
   against the same extra epochs without the penalty.
6. Transfer learning: compressed on classes 0-4, ``finetune_dcz`` to 5-9, against a dense model trained
   on 5-9 alone, for both models.
7. A verdict on each claim of the write-ups from the numbers above.

Stages run in ``--jobs`` worker processes (default 2, one thread each on 2 cores; stage_pool.py), the
costliest ready stage first. Interrupted runs resume: the baselines are kept as WORKDIR/ARCH-baseline.pt,
the sweeps point by point, every other stage as WORKDIR/STAGE.json (settings.json refuses a resume with
other settings); the workers' logs are WORKDIR/logs/ARCH-STAGE.log. When every stage is stored, this
process puts the report together and times the paper-recipe files on all cores.

Accuracy figures do not depend on machine load; the ms columns do (measured in one process,
alternating blocks, median; rerun on a quiet machine for the README). Writes
benchmarks/results/methods_fashion[_quick].md and the plots beside it.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import shutil
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks.stage_pool
HERE = os.path.dirname(os.path.abspath(__file__))
DATA = {"lenet-5": "fashion-mnist", "vgg16-small": "fashion-mnist?pad=2"}


def kb(n) -> str:
    return f"{n / 1024:.1f} KB"


def cached(args, name, fn):
    """``fn()``'s result, stored as ``WORKDIR/name.json`` once computed: a restarted run skips every
    stage that finished (the sweeps resume point by point on their own)."""
    import json

    from deepcomp.dcz import atomic_write

    path = os.path.join(args.workdir, f"{name}.json")
    if os.path.exists(path):
        with open(path) as f:
            print(f"[{name}] reused from {path}", flush=True)
            return json.load(f)
    t0 = time.time()
    out = fn()
    atomic_write(path, json.dumps(out, indent=1).encode())
    note_time(args, name, time.time() - t0)
    return out


def note_time(args, name, seconds) -> None:
    """Wall seconds per stage in WORKDIR/seconds.PID.json (one file per process, so processes that run
    the models side by side do not overwrite each other), summed by the report over restarts."""
    import json

    from deepcomp.dcz import atomic_write

    path = os.path.join(args.workdir, f"seconds.{os.getpid()}.json")
    times = json.load(open(path)) if os.path.exists(path) else {}
    times[name] = round(times.get(name, 0) + seconds, 1)
    atomic_write(path, json.dumps(times, indent=1).encode())


def check_settings(args) -> None:
    """The stored stages of WORKDIR were computed with its settings.json; resuming with others would
    mix results."""
    import json

    from deepcomp.dcz import atomic_write

    keys = ("sparsities", "epochs", "lr", "finetune_epochs", "retrain_limit", "iterative", "recipe_epochs",
            "train_limit", "test_limit", "transfer_limit", "seed", "slim_l1", "slim_epochs")
    now = {k: getattr(args, k) for k in keys}
    path = os.path.join(args.workdir, "settings.json")
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        diff = [k for k in keys if old.get(k) != now[k]]
        if diff:
            sys.exit(f"error: {args.workdir} holds a run with other settings ({', '.join(diff)}); "
                     f"pass another --workdir or delete it")
    atomic_write(path, json.dumps(now, indent=1).encode())


def baseline(arch, args, train_ds, test_ds):
    from deepcomp.data import make_loader
    from deepcomp.train import evaluate, train
    from deepcomp.zoo import LoadedModel, resolve_arch

    model, shape = resolve_arch(arch, 10, seed=args.seed)
    path = os.path.join(args.workdir, f"{arch}-baseline.pt")
    if os.path.exists(path):  # a restarted run keeps the baseline its sweeps were measured on
        saved = torch.load(path, weights_only=True)
        model.load_state_dict(saved["state"])
        print(f"[{arch}] baseline reused from {path}: top-1 {saved['top1']:.4f}", flush=True)
        return LoadedModel(model.eval(), arch, shape, f"benchmark:{arch}"), saved["top1"]
    t0 = time.time()
    train(model, train_ds, epochs=args.epochs, lr=args.lr, batch_size=256, weight_decay=5e-4, seed=args.seed,
          progress=args.progress, stage=f"baseline {arch}")
    model.cpu().eval()
    acc = evaluate(model, make_loader(test_ds, batch_size=1000))["top1"]
    print(f"[{arch}] baseline top-1 {acc:.4f} ({time.time() - t0:.0f} s)", flush=True)
    note_time(args, f"{arch}-baseline", time.time() - t0)
    torch.save({"state": model.state_dict(), "top1": acc}, path)
    return LoadedModel(model, arch, shape, f"benchmark:{arch}"), acc


def run_sweeps(arch, loaded, args, train_ds, test_ds, retrain_ds, which=None):
    from deepcomp.study import parse_methods, sweep

    out = {}
    for epochs in dict.fromkeys(which if which is not None else (0, args.finetune_epochs)):
        d = os.path.join(args.workdir, f"{arch}-sweep-ft{epochs}")
        t0 = time.time()
        rows = sweep(loaded, retrain_ds, test_ds, d, methods=parse_methods(args.methods), sparsities=args.sparsities,
                     finetune_epochs=epochs, seed=args.seed, progress=args.progress,
                     label=f"{arch}, baseline {args.epochs} epochs, lr {args.lr}, {args.train_limit or 'all'} samples")
        out[epochs] = rows
        if time.time() - t0 > 5:  # not a resumed, finished sweep
            note_time(args, f"{arch}-sweep-ft{epochs}", time.time() - t0)
        png = os.path.join(args.results, f"methods_fashion{args.suffix}_{arch}_ft{epochs}.png")
        shutil.copyfile(os.path.join(d, "sweep.png"), png)
    return out


def paper_recipe(loaded, args, train_ds, test_ds):
    """The paper's preset with iterative pruning + retraining + centroid training: the table row (its
    speed is measured by ``model_stages`` once every stage is done)."""
    from deepcomp.pipeline import compress, evaluate_file

    t0 = time.time()
    result = compress(copy.deepcopy(loaded), data=(train_ds, test_ds), iterative=args.iterative,
                      finetune_epochs=args.recipe_epochs, codebook_epochs=args.recipe_epochs, seed=args.seed,
                      progress=args.progress)
    path = os.path.join(args.workdir, f"{loaded.arch}-paper.dcz")
    size = result.save(path)
    comp = evaluate_file(result, path)
    kept = sum(sw.nnz for sw in result.shared.values()) / sum(sw.numel for sw in result.shared.values())
    print(f"[{loaded.arch}] paper recipe: top-1 {comp['top1']:.4f}, {size} bytes ({time.time() - t0:.0f} s)", flush=True)
    return {"arch": loaded.arch, "recipe": result.meta["recipe"]["name"], "base": result.accuracy["baseline"]["top1"],
            "comp": comp["top1"], "kept": kept, "orig": result.meta["original_bytes"], "stages": result.meta["stages"],
            "file_bytes": size, "dcz": path}


def iterative_vs_oneshot(loaded, args, retrain_ds, test_ds):
    """Same total retraining epochs: one shot then all of them, or ``steps`` prune/retrain rounds."""
    from deepcomp.data import make_loader
    from deepcomp.prune import apply_masks, compute_masks, iterative_prune
    from deepcomp.train import evaluate, train

    steps = args.iterative
    rows = []
    for s in [s for s in args.sparsities if s >= 0.9] or args.sparsities[-1:]:
        res = {"sparsity": s}
        for mode in ("one-shot", "iterative"):
            model = copy.deepcopy(loaded.model)

            def retrain(m, masks, step, n=1):
                train(m, retrain_ds, epochs=n, lr=1e-3, batch_size=256, seed=args.seed + step, progress=False,
                      masks=masks, stage=mode)
                m.cpu()

            if mode == "one-shot":
                masks = compute_masks(model, s)
                apply_masks(model, masks)
                retrain(model, masks, 0, n=steps)
            else:
                iterative_prune(model, s, steps, retrain, kind="geometric")
            res[mode] = evaluate(model, make_loader(test_ds, batch_size=1000))["top1"]
        rows.append(res)
        print(f"[{loaded.arch}] {100 * s:g}%: one-shot {res['one-shot']:.4f}, iterative {res['iterative']:.4f}", flush=True)
    return rows


def structured_relevance(loaded, args, retrain_ds, test_ds):
    """UCF's second step: whole filters removed by summed relevance (LRP-0) against by L1 norm, then
    retrained like the sweep's points."""
    from itertools import islice

    from deepcomp.data import make_loader
    from deepcomp.prune import RelevanceCriterion, prune_channels
    from deepcomp.train import evaluate, train

    batches = list(islice(iter(make_loader(retrain_ds, batch_size=64, shuffle=True, seed=args.seed)), 4))
    rows = []
    for s in [s for s in args.sparsities if s <= 0.7] or args.sparsities[:1]:
        res = {"sparsity": s}
        for name in ("l1", "relevance"):
            model = copy.deepcopy(loaded.model)
            crit = "l1" if name == "l1" else RelevanceCriterion.from_batches(model, batches, rule="lrp0")
            small = prune_channels(model, s, crit, example_input_shape=(1, *loaded.input_shape))
            train(small, retrain_ds, epochs=args.finetune_epochs, lr=1e-3, batch_size=256, seed=args.seed,
                  progress=False, stage=f"filters-{name}")
            small.cpu()
            res[name] = evaluate(small, make_loader(test_ds, batch_size=1000))["top1"]
            res["params"] = sum(p.numel() for p in small.parameters())
        rows.append(res)
        print(f"[{loaded.arch}] filters {100 * s:g}%: l1 {res['l1']:.4f}, relevance {res['relevance']:.4f}", flush=True)
    return rows


def slimming_study(loaded, args, train_ds, retrain_ds, test_ds):
    """Network slimming as Liu et al. run it: the baseline trained ``--slim-epochs`` more epochs with the
    penalty ``--slim-l1`` * sum |gamma| (sparsity training, ``train(bn_l1=)``), then slimmed at each
    sweep fraction and retrained like a sweep point. The control gets the same extra epochs without
    the penalty, so the penalty's effect is told apart from the extra training; L1 filter pruning
    of the control model is the simple method at the same training budget."""
    from deepcomp.data import make_loader
    from deepcomp.prune import prune_channels, slim
    from deepcomp.train import evaluate, train

    if not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in loaded.model.modules()):
        return []
    shape = (1, *loaded.input_shape)
    bases, small_gamma = {}, {}
    for name, lam in (("control", 0.0), ("sparse", args.slim_l1)):
        m = copy.deepcopy(loaded.model)
        train(m, train_ds, epochs=args.slim_epochs, lr=1e-3, batch_size=256, weight_decay=5e-4, seed=args.seed,
              progress=args.progress, stage=f"{loaded.arch} extra training (bn_l1 {lam:g})", bn_l1=lam)
        bases[name] = m.cpu().eval()
        g = torch.cat([b.weight.detach().abs() for b in m.modules() if isinstance(b, torch.nn.BatchNorm2d)])
        small_gamma[name] = float((g < 1e-2).float().mean())
    rows = []
    for s in args.sparsities:
        res = {"sparsity": s}
        for key, base, how in (("slim-control", "control", "slim"), ("slim-sparse", "sparse", "slim"),
                               ("l1-control", "control", "l1")):
            m = copy.deepcopy(bases[base])
            small = slim(m, s, shape) if how == "slim" else prune_channels(m, s, "l1", example_input_shape=shape)
            train(small, retrain_ds, epochs=args.finetune_epochs, lr=1e-3, batch_size=256, seed=args.seed,
                  progress=False, stage=key)
            res[key] = evaluate(small.cpu(), make_loader(test_ds, batch_size=1000))["top1"]
        rows.append(res)
        print(f"[{loaded.arch}] slimming {100 * s:g}%: control {res['slim-control']:.4f}, sparsity-trained "
              f"{res['slim-sparse']:.4f}, L1 filter (control) {res['l1-control']:.4f}", flush=True)
    return {"rows": rows, "small_gamma": small_gamma}


def transfer(arch, args):
    from deepcomp.data import load_dataset, make_loader
    from deepcomp.pipeline import compress, evaluate_file
    from deepcomp.train import evaluate, finetune_dcz, train
    from deepcomp.zoo import LoadedModel, resolve_arch

    data = DATA[arch]
    lim = args.transfer_limit
    src = [load_dataset(data, "train", classes=range(5), limit=lim), load_dataset(data, "test", classes=range(5))]
    dst = [load_dataset(data, "train", classes=range(5, 10), limit=lim), load_dataset(data, "test", classes=range(5, 10))]
    model, shape = resolve_arch(arch, 5, seed=args.seed)
    train(model, src[0], epochs=args.epochs, lr=args.lr, batch_size=256, weight_decay=5e-4, seed=args.seed,
          progress=args.progress, stage=f"{arch} 0-4")
    model.cpu()
    result = compress(LoadedModel(model, arch, shape, "benchmark"), data=tuple(src), iterative=args.iterative,
                      finetune_epochs=args.recipe_epochs, codebook_epochs=args.recipe_epochs, seed=args.seed,
                      progress=False)
    path = os.path.join(args.workdir, f"{arch}-0-4.dcz")
    result.save(path)
    src_acc = evaluate_file(result, path)["top1"]
    tr = finetune_dcz(path, None, num_classes=5, out_path=os.path.join(args.workdir, f"{arch}-transfer-5-9.dcz"),
                      epochs=args.recipe_epochs, lr=1e-3, batch_size=256, seed=args.seed, progress=args.progress,
                      train_data=dst[0], test_data=dst[1])
    dense, _ = resolve_arch(arch, 5, seed=args.seed)
    train(dense, dst[0], epochs=args.epochs, lr=args.lr, batch_size=256, weight_decay=5e-4, seed=args.seed,
          progress=args.progress, stage=f"{arch} 5-9")
    dense_acc = evaluate(dense.cpu(), make_loader(dst[1], batch_size=1000))["top1"]
    print(f"[{arch}] transfer 0-4 -> 5-9: {tr['accuracy']['top1']:.4f} ({tr['file_bytes']} B); dense on 5-9: "
          f"{dense_acc:.4f}", flush=True)
    return {"arch": arch, "source": src_acc, "transfer": tr["accuracy"]["top1"], "file_bytes": tr["file_bytes"],
            "ratio": tr["ratio"], "dense": dense_acc, "dense_bytes": 4 * sum(p.numel() for p in dense.parameters())}


# -------------------------------------------------------------------------------------------- claims


def _acc(rows, method, s):
    for r in rows:
        if r["method"] == method and abs(float(r["sparsity"]) - s) < 1e-9 and r["accuracy"] != "":
            return float(r["accuracy"])
    return None


def _wins(rows_by_model, a, b, sparsities):
    """(points where method a >= method b, points compared) over models, sparsities and retraining."""
    win = n = 0
    for sweeps in rows_by_model.values():
        for rows in sweeps.values():
            for s in sparsities:
                x, y = _acc(rows, a, s), _acc(rows, b, s)
                if x is not None and y is not None:
                    n += 1
                    win += x >= y
    return win, n


def _verdict(win, n, strong=0.75):
    if n == 0:
        return "not measured"
    return "confirmed" if win >= strong * n else ("refuted" if win <= (1 - strong) * n else "mixed")


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"


def claims(sweeps, iters, args, structured=None, slimming=None, transfers=None) -> list[tuple[str, str, str]]:
    hi = [s for s in args.sparsities if s >= 0.9] or args.sparsities[-1:]
    out = []
    w, n = _wins(sweeps, "magnitude-global", "magnitude-layer", hi)
    out.append(("Global magnitude pruning keeps accuracy better than per-layer at high sparsity (ESE 539)",
                _verdict(w, n), f"global >= per-layer in {w} of {n} points at {', '.join(f'{100 * s:g}%' for s in hi)}"))
    pts = [(r["iterative"], r["one-shot"]) for rs in iters.values() for r in rs]
    w = sum(a >= b for a, b in pts)
    out.append(("Iterative pruning beats one-shot at the same retraining budget (ESE 539, Deep Compression)",
                _verdict(w, len(pts)), f"iterative >= one-shot in {w} of {len(pts)} (model, sparsity) pairs"))
    ranks = {}
    ft = args.finetune_epochs
    for arch, sw in sweeps.items():
        rows = sw[ft]
        score = {}
        for m in dict.fromkeys(r["method"] for r in rows):
            vals = [_acc(rows, m, s) for s in args.sparsities]
            if all(v is not None for v in vals):
                score[m] = sum(vals) / len(vals)
        ranks[arch] = sorted(score, key=score.get, reverse=True)
    best = {a: r[0] for a, r in ranks.items() if r}
    wanda_top = sum(r.index("wanda") < 3 for r in ranks.values() if "wanda" in r)
    out.append(("WANDA gives the best sparsity/accuracy balance (CMU 10-605)",
                "confirmed" if all(b == "wanda" for b in best.values()) else ("mixed" if wanda_top else "refuted"),
                "best mean accuracy over the sparsities (with retraining): "
                + "; ".join(f"{a}: {b} (wanda ranks {ranks[a].index('wanda') + 1 if 'wanda' in ranks[a] else '-'})"
                            for a, b in best.items())))
    out.append(("L1 filter pruning is the simplest (CMU 10-605)", "not measurable",
                "a design property: it needs no data and no retraining hook; its accuracy is in the table"))
    gains = {}
    for m in ("slimming", "l1-filter", "magnitude-layer"):
        g = [(_acc(sw[ft], m, s) or 0) - (_acc(sw[0], m, s) or 0) for sw in sweeps.values() for s in args.sparsities
             if _acc(sw[ft], m, s) is not None and _acc(sw[0], m, s) is not None]
        gains[m] = sum(g) / len(g) if g else None
    gain_text = "mean accuracy gained by one retraining: " + ", ".join(
        f"{k} {100 * v:+.1f} pts" for k, v in gains.items() if v is not None)
    sl = [(arch, st) for arch, st in (slimming or {}).items() if st]
    if sl:  # the fair test: slimming after sparsity training, against the same training without the penalty
        parts, ok = [], []
        for arch, st in sl:
            rows = st["rows"]
            mean = {k: sum(r[k] for r in rows) / len(rows) for k in ("slim-control", "slim-sparse", "l1-control")}
            plain = [_acc(sweeps[arch][ft], "slimming", r["sparsity"]) for r in rows]
            l1 = [_acc(sweeps[arch][ft], "l1-filter", r["sparsity"]) for r in rows]
            mean["slim-plain"] = sum(plain) / len(plain) if None not in plain else None
            mean["l1-plain"] = sum(l1) / len(l1) if None not in l1 else None
            ok.append(mean["slim-sparse"] - mean["slim-control"] > 0.005)
            parts.append(f"{arch}, mean over the fractions: slimming {_pct(mean['slim-plain'])} without extra "
                         f"training, {_pct(mean['slim-control'])} after {args.slim_epochs} more epochs, "
                         f"{_pct(mean['slim-sparse'])} after them with the penalty ({args.slim_l1:g}); L1 filter "
                         f"{_pct(mean['l1-plain'])} / {_pct(mean['l1-control'])}; |gamma| < 0.01: "
                         f"{100 * st['small_gamma']['control']:.0f}% -> {100 * st['small_gamma']['sparse']:.0f}%")
        verdict = "confirmed" if all(ok) else ("mixed" if any(ok) else "refuted")
        out.append(("Network slimming needs more training (CMU 10-605)", verdict, "; ".join(parts) + "; " + gain_text))
    else:
        sg = gains["slimming"]
        others = [v for k, v in gains.items() if k != "slimming" and v is not None]
        out.append(("Network slimming needs more training (CMU 10-605)",
                    "not measured" if sg is None else ("confirmed" if sg > max(others) else "refuted"), gain_text))
    w, n = _wins(sweeps, "magnitude-layer", "column-norm", args.sparsities)
    out.append(("Weight pruning holds accuracy better than unit pruning as sparsity grows (TensorFlow tool)",
                _verdict(w, n), f"weights >= units in {w} of {n} points"))
    holds = []
    for arch, sw in sweeps.items():
        base = args.baselines[arch]
        a80 = _acc(sw[ft], "magnitude-layer", 0.8)
        if a80 is not None:
            holds.append((arch, 100 * (base - a80)))
    out.append(("Weight pruning holds accuracy to about 80% sparsity (TensorFlow tool)",
                "not measured" if not holds else ("confirmed" if all(d <= 1.0 for _, d in holds) else "refuted"),
                "drop at 80% with retraining: " + ", ".join(f"{a} {d:.2f} pts" for a, d in holds)))
    w, n = _wins(sweeps, "relevance", "magnitude-layer", args.sparsities)
    out.append(("The relevance criterion beats magnitude (UCF)", _verdict(w, n),
                f"relevance >= per-layer magnitude in {w} of {n} points"))
    pts = [(r["relevance"], r["l1"]) for rs in (structured or {}).values() for r in rs]
    w = sum(a >= b for a, b in pts)
    out.append(("Relevance also ranks whole filters better than their L1 norm (UCF, structured step)",
                _verdict(w, len(pts)), f"relevance >= L1 in {w} of {len(pts)} (model, fraction) pairs, retrained"))
    if "vgg16-small" in sweeps:  # UCF: VGG-16 91.2% smaller, 74.44% -> 74.15% (0.29 points) on CIFAR-100
        rows, base = sweeps["vgg16-small"][ft], args.baselines["vgg16-small"]
        pts = [(s, _acc(rows, "relevance", s)) for s in args.sparsities if s >= 0.9]
        pts = [(s, a) for s, a in pts if a is not None]
        drop = {s: 100 * (base - a) for s, a in pts}
        out.append(("Relevance pruning makes VGG-16 91.2% smaller with a minimal accuracy drop (UCF: -0.29 points)",
                    "not measured" if not drop else ("confirmed" if drop.get(0.9, 99) <= 1.0 else "refuted"),
                    f"vgg16-small, relevance, {args.finetune_epochs} retraining epoch(s), baseline {100 * base:.2f}%: "
                    + ", ".join(f"{100 * s:g}% pruned {100 * (base - d / 100):.2f}% ({-d:+.2f} points)"
                                for s, d in drop.items())))
    for t in transfers or []:  # ESE 539: a compressed model is a backbone for new classes
        gap = 100 * (t["dense"] - t["transfer"])
        out.append((f"A compressed model transfers to new classes about as well as a dense model trained on them "
                    f"(ESE 539; {t['arch']})", "confirmed" if gap <= 1.0 else ("mixed" if gap <= 3.0 else "refuted"),
                    f"0-4 -> 5-9 with deepcomp finetune {100 * t['transfer']:.2f}% at {t['ratio']:.1f}x smaller, "
                    f"dense on 5-9 alone {100 * t['dense']:.2f}% ({-gap:+.2f} points)"))
    return out


# --------------------------------------------------------------------------------------------- report


def report(args, sweeps, paper, iters, transfers, verdicts, elapsed, structured=None, slimming=None) -> str:
    from deepcomp.study import rows_table

    lines = [f"## Pruning methods on Fashion-MNIST{' (quick configuration)' if args.quick else ''}", ""]
    for arch, sw in sweeps.items():
        for ep, rows in sw.items():
            lines += [f"### {arch}, {'no retraining' if ep == 0 else f'{ep} epoch(s) of masked retraining per point'}"
                      f" (baseline {100 * args.baselines[arch]:.2f}%)", "", rows_table(rows), "",
                      f"![{arch} ft{ep}](methods_fashion{args.suffix}_{arch}_ft{ep}.png)", ""]
    lines += ["### vgg16-small and LeNet-5 through the paper's recipe", "",
              "| model | recipe | baseline top-1 | compressed top-1 (.dcz, runtime) | Δ points | kept | fp32 params | "
              "pruned only | + shared weights | + Huffman (.dcz) | ratio | runtime ms | dense torch ms | speedup |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in paper:
        st, o = p["stages"], p["orig"]
        lines.append(f"| {p['arch']} | {p['recipe']} | {100 * p['base']:.2f}% | {100 * p['comp']:.2f}% | "
                     f"{100 * (p['comp'] - p['base']):+.2f} | {100 * p['kept']:.1f}% | {kb(o)} | "
                     f"{kb(st['pruned_bytes'])} ({o / st['pruned_bytes']:.1f}x) | {kb(st['quantized_bytes'])} "
                     f"({o / st['quantized_bytes']:.1f}x) | {kb(p['file_bytes'])} | **{o / p['file_bytes']:.1f}x** | "
                     f"{p['runtime_ms']:.3f} | {p['torch_ms']:.3f} | {p['torch_ms'] / p['runtime_ms']:.2f}x |")
    lines += ["", "### Iterative against one-shot (same retraining epochs)", "",
              "| model | sparsity | one-shot + retraining | iterative |", "|---|---|---|---|"]
    for arch, rs in iters.items():
        for r in rs:
            lines.append(f"| {arch} | {100 * r['sparsity']:g}% | {100 * r['one-shot']:.2f}% | {100 * r['iterative']:.2f}% |")
    lines += ["", "### Structured pruning: filters ranked by relevance or by L1 norm, retrained", "",
              "| model | channels removed | params left | L1 filter | relevance filter |", "|---|---|---|---|---|"]
    for arch, rs in (structured or {}).items():
        for r in rs:
            lines.append(f"| {arch} | {100 * r['sparsity']:g}% | {r['params']} | {100 * r['l1']:.2f}% | "
                         f"{100 * r['relevance']:.2f}% |")
    for arch, st in (slimming or {}).items():
        if not st:
            continue
        lines += ["", f"### Network slimming with sparsity training ({arch})", "",
                  f"The baseline trained {args.slim_epochs} more epochs (Adam lr 1e-3) without the penalty (control) "
                  f"or with {args.slim_l1:g} * sum |gamma| (sparsity training, `deepcomp train --bn-l1`); then "
                  f"channels removed and {args.finetune_epochs} epoch(s) of retraining as in the sweep. BatchNorm "
                  f"scales below 0.01: {100 * st['small_gamma']['control']:.0f}% (control), "
                  f"{100 * st['small_gamma']['sparse']:.0f}% (sparsity-trained).", "",
                  "| channels removed | slimming, baseline (sweep) | slimming, control | slimming, sparsity-trained | "
                  "L1 filter, baseline (sweep) | L1 filter, control |", "|---|---|---|---|---|---|"]
        ft = args.finetune_epochs
        for r in st["rows"]:
            s_ = r["sparsity"]
            lines.append(f"| {100 * s_:g}% | {_pct(_acc(sweeps[arch][ft], 'slimming', s_))} | {_pct(r['slim-control'])} | "
                         f"{_pct(r['slim-sparse'])} | {_pct(_acc(sweeps[arch][ft], 'l1-filter', s_))} | "
                         f"{_pct(r['l1-control'])} |")
    lines += ["", "### Transfer learning (classes 0-4 -> 5-9)", "",
              "| model | compressed on 0-4 | transferred to 5-9 (deepcomp finetune) | size | dense on 5-9 alone | size |",
              "|---|---|---|---|---|---|"]
    for t in transfers:
        lines.append(f"| {t['arch']} | {100 * t['source']:.2f}% | {100 * t['transfer']:.2f}% | {kb(t['file_bytes'])} "
                     f"({t['ratio']:.1f}x) | {100 * t['dense']:.2f}% | {kb(t['dense_bytes'])} |")
    lines += ["", "### The write-ups' claims on our data", "", "| claim | verdict | evidence |", "|---|---|---|"]
    lines += [f"| {c} | **{v}** | {e} |" for c, v, e in verdicts]
    lines += ["", "UCF's figure (VGG-16, CIFAR-100: 91.2% smaller, 74.44% -> 74.15%) is checked on the relevance "
              "rows of the vgg16-small sweep at 90% and 95% (its claim row above).", "",
              f"Settings: baselines {args.epochs} epochs (Adam lr {args.lr}, cosine, weight decay 5e-4); sweeps at "
              f"{', '.join(f'{100 * s:g}%' for s in args.sparsities)}, retraining {args.finetune_epochs} epoch(s) on "
              f"{args.retrain_limit or 'all'} samples per point; paper recipe and transfer: {args.iterative} steps of "
              f"{args.recipe_epochs} epoch(s), {args.recipe_epochs} of centroid training; seed {args.seed}"
              + (f"; training subset {args.train_limit}, test subset {args.test_limit}" if args.train_limit or args.test_limit else "")
              + ".", "",
              f"Generated by `python benchmarks/methods_fashion.py{' --quick' if args.quick else ''}` on a "
              f"{os.cpu_count()}-core machine ({platform.processor() or platform.machine()}), torch {torch.__version__}: "
              f"{run_text(args.runs, elapsed)}. Accuracy does not depend on load. The sweeps' ms columns were measured "
              f"{'while the other workers trained' if args.runs else 'between training stages'}; the paper-recipe rows were timed at the end, after the workers, on "
              f"{torch.get_num_threads()} thread(s)" + (f" ({args.machine_note})" if args.machine_note else "") + ".", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- stages

STAGES = ("baseline", "sweep-ft0", "sweep-ft", "paper", "iterative", "filters", "slimming", "transfer")


def model_stages(arch, args, only=None) -> dict:
    """Every stage of one model, each reused once stored; ``only``: just that one (a worker's job)."""
    from deepcomp.data import ArrayDataset, load_dataset

    if only == "transfer":
        return {"transfer": cached(args, f"{arch}-transfer", lambda: transfer(arch, args))}
    train_ds = load_dataset(DATA[arch], "train", limit=args.train_limit)
    test_ds = load_dataset(DATA[arch], "test", limit=args.test_limit)
    retrain_ds = ArrayDataset(train_ds.x[:args.retrain_limit], train_ds.y[:args.retrain_limit],
                              classes=train_ds.classes, name=train_ds.name)
    loaded, base = baseline(arch, args, train_ds, test_ds)
    out = {"base": base}
    if only in (None, "sweep-ft0", "sweep-ft"):
        which = {None: None, "sweep-ft0": (0,), "sweep-ft": (args.finetune_epochs,)}[only]
        out["sweeps"] = run_sweeps(arch, loaded, args, train_ds, test_ds, retrain_ds, which)
    if only in (None, "paper"):
        p = cached(args, f"{arch}-paper", lambda: paper_recipe(loaded, args, train_ds, test_ds))
        if only is None:  # timed here, after every worker has finished, not beside another worker's training
            p["runtime_ms"], p["torch_ms"] = time_on_quiet_cores(loaded, p["dcz"])
        out["paper"] = p
    if only in (None, "iterative"):
        out["iterative"] = cached(args, f"{arch}-iterative", lambda: iterative_vs_oneshot(loaded, args, retrain_ds, test_ds))
    if only in (None, "filters"):
        out["filters"] = cached(args, f"{arch}-filters", lambda: structured_relevance(loaded, args, retrain_ds, test_ds))
    if only in (None, "slimming"):
        out["slimming"] = cached(args, f"{arch}-slimming",
                                 lambda: slimming_study(loaded, args, train_ds, retrain_ds, test_ds))
    if only is None and not args.no_transfer:
        out["transfer"] = cached(args, f"{arch}-transfer", lambda: transfer(arch, args))
    return out


def time_on_quiet_cores(loaded, dcz) -> tuple[float, float]:
    from deepcomp.study import time_vs_torch

    torch.set_num_threads(os.cpu_count() or 1)
    return time_vs_torch(loaded.model, dcz, loaded.input_shape)


def stage_cost(arch, stage, args) -> float:
    """A rough cost for ordering the workers' stages: samples passed through training (a test pass
    counted at half a training pass, for evaluation and the sweep's file writing), scaled by model."""
    from deepcomp.study import parse_methods

    n, test, r, ft = args.train_limit or 60000, args.test_limit or 10000, args.retrain_limit, args.finetune_epochs
    points = len(parse_methods(args.methods)) * len(args.sparsities)
    hi = len([s for s in args.sparsities if s >= 0.9]) or 1
    lo = len([s for s in args.sparsities if s <= 0.7]) or 1
    cost = {"baseline": args.epochs * n, "sweep-ft0": points * test / 2, "sweep-ft": points * (ft * r + test / 2),
            "paper": (args.iterative + 1) * args.recipe_epochs * n, "iterative": hi * 2 * args.iterative * r,
            "filters": lo * 2 * ft * r, "slimming": 2 * args.slim_epochs * n + len(args.sparsities) * 3 * ft * r,
            "transfer": (2 * args.epochs + args.iterative + 2) * args.transfer_limit}[stage]
    return cost * (1.6 if arch.startswith("vgg") else 1.0)


def run_in_workers(args, argv) -> list[str]:
    """Every stage of every model in ``--jobs`` worker processes (benchmarks/stage_pool.py); returns the
    failed stages. The wall time and the foreign CPU load of the run go to WORKDIR/runs.json."""
    import json

    from benchmarks.stage_pool import Stage, run_stages
    from deepcomp.cpuload import ForeignLoad
    from deepcomp.dcz import atomic_write

    base = [sys.executable, os.path.abspath(__file__), *(sys.argv[1:] if argv is None else argv)]
    stages = []
    for arch in args.archs:
        for st in STAGES:
            if st == "transfer" and args.no_transfer:
                continue
            needs = [] if st in ("baseline", "transfer") else [f"{arch}:baseline"]
            stages.append(Stage(f"{arch}:{st}", base + ["--stage", f"{arch}:{st}"], stage_cost(arch, st, args), needs))
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    print(f"{len(stages)} stages in {args.jobs} worker processes, {threads} thread(s) each; logs in "
          f"{args.workdir}/logs", flush=True)
    t0 = time.time()
    with ForeignLoad(children=True) as load:
        failed = run_stages(stages, args.jobs, os.path.join(args.workdir, "logs"), threads=threads)
    path = os.path.join(args.workdir, "runs.json")
    runs = json.load(open(path)) if os.path.exists(path) else []
    runs.append({"jobs": args.jobs, "threads": threads, "wall_s": round(time.time() - t0, 1),
                 "foreign_cores": None if load.cores is None else round(load.cores, 2), "failed": failed})
    atomic_write(path, json.dumps(runs, indent=1).encode())
    return failed


def run_text(runs, stage_seconds) -> str:
    """The report's line on how long the study took: wall time of the worker runs (summed over restarts)
    and the foreign CPU load during them, beside the stage time summed over processes."""
    wall = sum(r["wall_s"] for r in runs)
    loads = [r["foreign_cores"] for r in runs if r.get("foreign_cores") is not None]
    how = (f"{wall / 60:.1f} min of wall time in {len(runs)} run(s) of {runs[-1]['jobs']} worker processes x "
           f"{runs[-1]['threads']} thread(s)" + (f", other processes using {max(loads):.2f} cores at most" if loads else "")
           if runs else "stages run in one process")
    return f"{how}; {stage_seconds / 60:.1f} min of stage time summed over stages, restarts and processes"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a few minutes: subsets, 2 sparsities, 1 epoch")
    ap.add_argument("--models", default="lenet-5,vgg16-small")
    ap.add_argument("--methods", default="all")
    ap.add_argument("--sparsities", default=None, help="default 0.5,0.7,0.8,0.9,0.95 (quick: 0.5,0.9)")
    ap.add_argument("--epochs", type=int, default=None, help="baseline epochs (default 6; quick 1)")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--finetune-epochs", type=int, default=1, help="retraining epochs per sweep point (default 1)")
    ap.add_argument("--retrain-limit", type=int, default=None, help="samples of retraining per point (default 6000; quick 2000)")
    ap.add_argument("--iterative", type=int, default=None, help="steps of the paper recipe / iterative study (default 3; quick 2)")
    ap.add_argument("--recipe-epochs", type=int, default=1, help="retraining epochs per step of the paper recipe (default 1)")
    ap.add_argument("--train-limit", type=int, default=None, help="baseline training samples (default all; quick 6000)")
    ap.add_argument("--test-limit", type=int, default=None, help="test samples (default all; quick 2000)")
    ap.add_argument("--transfer-limit", type=int, default=None, help="samples per transfer split (default 10000; quick 3000)")
    ap.add_argument("--slim-epochs", type=int, default=None, help="extra epochs of the slimming study (default 1)")
    ap.add_argument("--slim-l1", type=float, default=1e-3,
                    help="the slimming study's penalty on |gamma| (default 1e-3: the gammas' loss gradients are ~1e-3, and Adam "
                         "over 1-2 epochs needs a penalty of their size where Liu et al.'s SGD over 160 epochs used 1e-4)")
    ap.add_argument("--no-transfer", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--jobs", type=int, default=2,
                    help="stages run in this many worker processes, the cores shared among them (default 2: on 2 "
                         "cores two 1-thread processes train these small models faster than one on 2 threads); "
                         "1 runs every stage in this process")
    ap.add_argument("--stage", default=None, help=argparse.SUPPRESS)  # ARCH:STAGE, one worker's stage
    ap.add_argument("--machine-note", default="", help="a note on the machine's load for the report's last line")
    args = ap.parse_args(argv)
    q = args.quick
    args.suffix = "_quick" if q else ""
    args.sparsities = [float(s) for s in (args.sparsities or ("0.5,0.9" if q else "0.5,0.7,0.8,0.9,0.95")).split(",")]
    args.epochs = args.epochs or (1 if q else 6)
    args.retrain_limit = args.retrain_limit or (2000 if q else 6000)
    args.iterative = args.iterative or (2 if q else 3)
    args.train_limit = args.train_limit or (6000 if q else None)
    args.test_limit = args.test_limit or (2000 if q else None)
    args.transfer_limit = args.transfer_limit or (3000 if q else 10000)
    args.slim_epochs = args.slim_epochs or 1
    args.archs = [a.strip() for a in args.models.split(",") if a.strip()]
    args.results = os.path.join(HERE, "results")
    args.workdir = args.workdir or os.path.join(args.results, "methods_fashion" + args.suffix)
    os.makedirs(args.workdir, exist_ok=True)
    check_settings(args)

    if args.stage:
        arch, stage = args.stage.split(":")
        model_stages(arch, args, only=stage)
        return 0
    if args.jobs > 1:
        failed = run_in_workers(args, argv)
        if failed:
            sys.exit(f"error: stage(s) {', '.join(failed)} failed (logs in {args.workdir}/logs); the finished "
                     f"stages are kept: rerun the same command to retry the rest")
    sweeps, paper, iters, structured, slimming, transfers, args.baselines = {}, [], {}, {}, {}, [], {}
    for arch in args.archs:
        st = model_stages(arch, args)
        args.baselines[arch] = st["base"]
        sweeps[arch], iters[arch], structured[arch], slimming[arch] = st["sweeps"], st["iterative"], st["filters"], st["slimming"]
        paper.append(st["paper"])
        if "transfer" in st:
            transfers.append(st["transfer"])
    verdicts = claims(sweeps, iters, args, structured, slimming, transfers)
    import glob
    import json

    elapsed = 0.0
    for path in glob.glob(os.path.join(args.workdir, "seconds.*.json")):
        with open(path) as f:
            elapsed += sum(json.load(f).values())
    runs_path = os.path.join(args.workdir, "runs.json")
    args.runs = json.load(open(runs_path)) if os.path.exists(runs_path) else []
    md = report(args, sweeps, paper, iters, transfers, verdicts, elapsed, structured, slimming)
    print("\n" + md)
    with open(os.path.join(args.results, f"methods_fashion{args.suffix}.md"), "w") as f:
        f.write(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
