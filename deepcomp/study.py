"""Method studies: every pruning method of the seed write-ups over a range of sparsities (``sweep``),
and each layer pruned alone (``sensitivity``), with CSV tables and matplotlib plots.

A sweep point prunes a fresh copy of the trained model with one method at one sparsity, optionally
retrains it (masks fixed), measures its test accuracy in torch, writes it as a .dcz (conv 8 / fc 5
bits, the pruned layers' exact densities) and times the file on deepcomp's runtime against the
pruned model in dense PyTorch (batch 1, alternating blocks, median). Points are appended to
``DIR/sweep.csv`` as they finish, so an interrupted sweep continues where it stopped.

Sparsity means removed weights for the unstructured methods and removed channels (filters,
neurons) for the structured ones (``l1-filter``, ``slimming``), whose ``params`` column counts the
smaller model's parameters.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
from pathlib import Path

import torch
from torch import nn

from deepcomp.errors import DeepcompError, RecipeError

METHODS = ("magnitude-global", "magnitude-layer", "l1-filter", "slimming", "wanda", "relevance", "taylor",
           "column-norm", "sap")
STRUCTURED = ("l1-filter", "slimming")
COLUMNS = ("method", "sparsity", "accuracy", "params", "file_bytes", "runtime_ms", "torch_ms")


def parse_methods(text: str) -> list[str]:
    """``all`` or a comma-separated list of :data:`METHODS`."""
    names = list(METHODS) if text.strip() == "all" else [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in names if m not in METHODS]
    if bad or not names:
        raise RecipeError(f"unknown method(s) {', '.join(bad) or text!r}; choose from {', '.join(METHODS)} or all")
    return names


def parse_sparsities(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise RecipeError(f"sparsities are comma-separated fractions, got {text!r}") from None
    if not values or any(not 0.0 <= v < 1.0 for v in values):
        raise RecipeError(f"sparsities must be fractions in [0, 1), got {text!r}")
    return values


# ------------------------------------------------------------------------------------------ methods


def _sap_budget(model, layers, sparsity: float) -> dict[str, float]:
    """SAP's per-layer cuts (one round of Diao et al.'s rule, gamma = beta = 1) scaled by one factor so
    that ``sparsity`` of all weights go: the PQ Index decides where, the budget how much."""
    from deepcomp.prune import sap_amounts

    frac = sap_amounts(model, gamma=1.0, beta=1.0, layers=layers)
    sizes = {n: m.weight.numel() for n, m in layers.items()}
    goal = sparsity * sum(sizes.values())

    def removed(c):
        return sum(min(c * frac[n], 0.99) * sizes[n] for n in layers)

    lo, hi = 0.0, 1.0
    while removed(hi) < goal and hi < 1e6:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if removed(mid) < goal else (lo, mid)
    return {n: min(hi * frac[n], 0.99) for n in layers}


def prune_with(method: str, model: nn.Module, sparsity: float, *, train_data=None, input_shape=None, seed: int = 0):
    """Prune ``model`` with ``method``. Returns ``(model, masks)``: the same model with masks applied
    (unstructured methods), or a new smaller model and ``None`` (structured methods)."""
    from deepcomp.prune import UnitNorm, apply_masks, compute_masks, prunable_layers, prune_channels, slim
    from deepcomp.train import criterion_from_data

    if method in STRUCTURED:
        shape = (1, *input_shape)
        if method == "l1-filter":
            return prune_channels(model, sparsity, "l1", example_input_shape=shape), None
        if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            raise RecipeError("slimming prunes by BatchNorm scales and the model has no BatchNorm")
        return slim(model, sparsity, shape), None
    layers = prunable_layers(model)
    if method in ("magnitude-global", "magnitude-layer"):
        masks = compute_masks(model, sparsity, scope="global" if method == "magnitude-global" else "layer")
    elif method in ("wanda", "relevance", "taylor"):
        crit = criterion_from_data(method, train_data, batches=4, seed=seed)(model)
        masks = compute_masks(model, sparsity, criterion=crit)
    elif method == "column-norm":  # whole units; the class outputs stay
        last = list(layers)[-1]
        inner = {n: m for n, m in layers.items() if n != last}
        masks = compute_masks(model, sparsity, criterion=UnitNorm(), layers=inner)
        masks[last] = torch.ones_like(layers[last].weight, dtype=torch.bool)
    elif method == "sap":
        masks = compute_masks(model, _sap_budget(model, layers, sparsity), layers=layers)
    else:
        raise RecipeError(f"unknown method {method!r}")
    apply_masks(model, masks)
    return model, masks


# ------------------------------------------------------------------------------------- measurement


def _params(model: nn.Module, masks) -> int:
    if masks is None:
        return int(sum(p.numel() for p in model.parameters()))
    modules = dict(model.named_modules())
    masked = {id(modules[n].weight) for n in masks}
    return int(sum(int(m.sum()) for m in masks.values())
               + sum(p.numel() for p in model.parameters() if id(p) not in masked))


def _write_dcz(model, masks, input_shape, path: str, seed: int) -> int:
    """The pruned model as a .dcz: each layer keeps exactly its nonzeros (magnitude at its density)."""
    from deepcomp.pipeline import compress
    from deepcomp.prune import prunable_layers
    from deepcomp.recipes import DEFAULTS, Recipe

    layers = prunable_layers(model)
    dens = {n: (float(masks[n].float().mean()) if masks is not None and n in masks else 1.0) for n in layers}
    recipe = Recipe(name="sweep", source="deepcomp.study", defaults=dict(DEFAULTS),
                    layers={n: {"density": d} for n, d in dens.items()})
    result = compress(copy.deepcopy(model), recipe=recipe, input_shape=tuple(input_shape), progress=False, seed=seed)
    return result.save(path)


def time_vs_torch(model: nn.Module, path: str, input_shape) -> tuple[float, float]:
    """Median ms per batch-1 call of the .dcz on deepcomp's runtime and of ``model`` in PyTorch
    (alternating blocks, one process: deepcomp.bench.median_ms)."""
    import numpy as np

    import deepcomp.runtime as rt
    from deepcomp.bench import median_ms

    runtime = rt.load(path)
    x = np.random.default_rng(0).standard_normal((1, *input_shape)).astype(np.float32)
    xt = torch.from_numpy(x)
    model.eval()
    with torch.no_grad():
        r_ms, t_ms = median_ms(lambda: runtime(x), lambda: model(xt), repeat=3)
    return float(r_ms), float(t_ms)


def _accuracy(model, test_data) -> float:
    from deepcomp.data import make_loader
    from deepcomp.train import evaluate

    return float(evaluate(model, make_loader(test_data, batch_size=512))["top1"])


# --------------------------------------------------------------------------------------------- sweep


def _read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _write_csv(path: Path, rows: list[dict], columns) -> None:
    from deepcomp.dcz import atomic_write

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write(path, buf.getvalue().encode())


def _check_config(out: Path, config: dict) -> None:
    """The sweep's settings are stored beside its CSV; resuming with other settings would mix results."""
    from deepcomp.dcz import atomic_write

    cfg_path = out / "sweep.json"
    if cfg_path.exists():
        old = json.loads(cfg_path.read_text())
        diff = sorted(k for k in config if old.get(k) != config[k] and k not in ("methods", "sparsities"))
        if diff:
            raise DeepcompError(f"{out} holds a sweep with other settings ({', '.join(diff)}); "
                                f"use another -o directory or delete {cfg_path}")
    atomic_write(cfg_path, json.dumps(config, indent=2).encode())


def sweep(loaded, train_data, test_data, out_dir, *, methods=METHODS, sparsities=(0.5, 0.7, 0.8, 0.9, 0.95),
          finetune_epochs: int = 0, lr: float = 1e-3, batch_size: int = 256, seed: int = 0,
          progress: bool = True, label: str = "") -> list[dict]:
    """Run (or continue) the sweep into ``out_dir``; returns every row of ``out_dir/sweep.csv``."""
    from deepcomp.train import train

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _check_config(out, {"model": label or str(getattr(loaded, "source", "")), "finetune_epochs": int(finetune_epochs),
                        "lr": lr, "batch_size": batch_size, "seed": seed, "methods": list(methods),
                        "sparsities": list(sparsities)})
    csv_path = out / "sweep.csv"
    rows = _read_rows(csv_path)
    done = {(r["method"], float(r["sparsity"])) for r in rows}
    todo = [(m, s) for m in methods for s in sparsities if (m, float(s)) not in done]
    shape = tuple(loaded.input_shape)
    base = loaded.model
    bar = _bar(todo, "sweep", progress)
    for method, s in bar:
        if hasattr(bar, "set_postfix_str"):
            bar.set_postfix_str(f"{method} {s:.2f}")
        row = {"method": method, "sparsity": s}
        try:
            model, masks = prune_with(method, copy.deepcopy(base), s, train_data=train_data, input_shape=shape, seed=seed)
        except RecipeError as e:  # the method does not apply to this model: an empty row says so
            row.update({c: "" for c in COLUMNS[2:]})
            rows.append(row)
            _write_csv(csv_path, rows, COLUMNS)
            _note(bar, f"{method} at {s}: skipped ({e})")
            continue
        if finetune_epochs > 0:
            train(model, train_data, epochs=finetune_epochs, lr=lr, batch_size=batch_size, seed=seed,
                  progress=False, masks=masks, stage=f"{method}-{s}")
            model.cpu()
        dcz = out / f"{method}-{s:g}.dcz"
        row.update(accuracy=round(_accuracy(model, test_data), 6), params=_params(model, masks),
                   file_bytes=_write_dcz(model, masks, shape, str(dcz), seed))
        r_ms, t_ms = time_vs_torch(model, str(dcz), shape)
        row.update(runtime_ms=round(r_ms, 4), torch_ms=round(t_ms, 4))
        rows.append(row)
        _write_csv(csv_path, rows, COLUMNS)  # the state: a restart skips every point written here
    plot_sweep(rows, out / "sweep.png", title=f"{label} (retraining: {finetune_epochs} epochs)")
    return rows


def _bar(items, desc: str, enabled: bool):
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="point", dynamic_ncols=True)


def _note(bar, text: str) -> None:
    if hasattr(bar, "write"):
        bar.write(text)


def _float(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def plot_sweep(rows: list[dict], path, *, title: str = "", baseline: float | None = None) -> None:
    """Accuracy against sparsity, one line per method (matplotlib, headless)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in dict.fromkeys(r["method"] for r in rows):
        pts = sorted((_float(r["sparsity"]), _float(r["accuracy"])) for r in rows if r["method"] == method)
        pts = [(s, a) for s, a in pts if not math.isnan(a)]
        if pts:
            ax.plot([100 * s for s, _ in pts], [100 * a for _, a in pts], marker="o", label=method,
                    linestyle="--" if method in STRUCTURED else "-")
    if baseline is not None:
        ax.axhline(100 * baseline, color="gray", linewidth=0.8, label="dense baseline")
    ax.set_xlabel("sparsity (% of weights; structured: % of channels)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise DeepcompError("plots need matplotlib: pip install 'deepcomp[plot]' (or pip install matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> None:
    from deepcomp.dcz import atomic_write

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    _pyplot().close(fig)
    atomic_write(path, buf.getvalue())


# --------------------------------------------------------------------------------------- sensitivity


def sensitivity(loaded, test_data, out_dir, *, sparsities=(0.3, 0.5, 0.7, 0.8, 0.9, 0.95),
                progress: bool = True) -> tuple[float, list[dict]]:
    """Prune each layer alone (magnitude) at each sparsity and measure the accuracy drop, as Deep
    Compression and Distiller chose per-layer densities. Writes ``sensitivity.csv`` and
    ``sensitivity.png`` to ``out_dir``; returns ``(baseline accuracy, rows)``."""
    from deepcomp.prune import apply_masks, compute_masks, prunable_layers

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base_acc = _accuracy(loaded.model, test_data)
    rows = []
    layers = list(prunable_layers(loaded.model))
    for name, s in _bar([(n, s) for n in layers for s in sparsities], "sensitivity", progress):
        model = copy.deepcopy(loaded.model)
        module = dict(model.named_modules())[name]
        apply_masks(model, compute_masks(model, {name: s}, layers={name: module}))
        acc = _accuracy(model, test_data)
        rows.append({"layer": name, "sparsity": s, "accuracy": round(acc, 6), "drop": round(base_acc - acc, 6)})
    _write_csv(out / "sensitivity.csv", rows, ("layer", "sparsity", "accuracy", "drop"))
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in layers:
        pts = [(r["sparsity"], r["accuracy"]) for r in rows if r["layer"] == name]
        ax.plot([100 * s for s, _ in pts], [100 * a for _, a in pts], marker="o", label=name)
    ax.axhline(100 * base_acc, color="gray", linewidth=0.8, label="dense baseline")
    ax.set_xlabel("sparsity of this layer alone (%)")
    ax.set_ylabel("test top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    _save(fig, out / "sensitivity.png")
    return base_acc, rows


def sensitivity_table(base_acc: float, rows: list[dict]) -> str:
    """Accuracy drop in points, one row per layer, one column per sparsity."""
    sps = list(dict.fromkeys(r["sparsity"] for r in rows))
    lines = [f"baseline top-1 {100 * base_acc:.2f}%; drop in points when only this layer is pruned", "",
             "| layer | " + " | ".join(f"{100 * s:g}%" for s in sps) + " |", "|---" * (len(sps) + 1) + "|"]
    for name in dict.fromkeys(r["layer"] for r in rows):
        drops = {r["sparsity"]: r["drop"] for r in rows if r["layer"] == name}
        lines.append(f"| {name} | " + " | ".join(f"{100 * drops[s]:+.2f}" for s in sps) + " |")
    return "\n".join(lines)


def rows_table(rows: list[dict]) -> str:
    """The sweep's rows as a markdown table."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|---" * len(COLUMNS) + "|"]
    for r in rows:
        acc = _float(r["accuracy"])
        cells = [r["method"], f"{100 * _float(r['sparsity']):g}%", "n/a" if math.isnan(acc) else f"{100 * acc:.2f}%",
                 *(str(r[c]) for c in COLUMNS[3:])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
