"""The Deep Compression pipeline: prune (and retrain) -> share weights (and train centroids) -> Huffman
-> .dcz. The CLI's `compress` is a thin layer over :func:`compress`."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np
import torch
from torch import nn

from deepcomp.dcz import write_dcz
from deepcomp.encode import EncodedWeight, encode_shared
from deepcomp.encode_block import encode_block_shared
from deepcomp.errors import DeepcompError, RecipeError
from deepcomp.prune import compute_masks, iterative_prune, layer_kind, prunable_layers
from deepcomp.prune.block import columns_blocks, mixed_masks
from deepcomp.prune.criteria import Criterion
from deepcomp.prune.unstructured import weight_key
from deepcomp.quantize import SharedWeight, share_weights
from deepcomp.recipes import DEFAULT_SPARSITY, INT8_WEIGHT_BITS, INT8_WEIGHT_BITS_DEFAULT, Recipe, load_recipe, normalize_arch
from deepcomp.runtime.plan import static_nodes

FinetuneFn = Callable[[nn.Module, dict, str], None]
CodebookFn = Callable[[nn.Module, dict], None]


@dataclass
class LayerPlan:
    name: str            # module name
    kind: str            # "conv" or "fc"
    density: float       # fraction kept
    bits: int
    index_bits: int
    label: str = ""      # the paper's name (conv1, fc6, ...) where a preset gives one
    int8: bool = False   # runs on the int8 kernels (an int8 recipe: block-pruned, calibrated)


@dataclass(repr=False)
class CompressResult:
    """What :func:`compress` produced. ``model`` holds the final (pruned, shared) weights."""

    model: nn.Module
    arch: str
    input_shape: tuple[int, ...]
    graph: dict
    plan: dict[str, LayerPlan]
    masks: dict[str, torch.Tensor]
    shared: dict[str, SharedWeight]
    encoded: dict[str, EncodedWeight]
    meta: dict
    elapsed: float = 0.0
    notes: list[str] = field(default_factory=list)
    datasets: tuple | None = None    # (train, test) when compress() had data
    accuracy: dict = field(default_factory=dict)  # "baseline" (torch), "compressed" (the file, runtime)
    extra_dense: dict = field(default_factory=dict)  # tensors the file adds to the state_dict's (int8 scales)

    def __repr__(self) -> str:
        """One line: what was compressed, how sparse, how big (not the masks, codebooks and bitstreams)."""
        kept = sum(sw.nnz for sw in self.shared.values())
        total = sum(sw.numel for sw in self.shared.values()) or 1
        st = self.meta.get("stages", {})
        size = self.meta.get("file_bytes") or st.get("huffman_bytes", 0)
        orig = self.meta.get("original_bytes", 0)
        ratio = f", {orig / size:.1f}x" if size else ""
        return (f"CompressResult({self.arch}, {len(self.plan)} layers, {100 * kept / total:.1f}% of weights kept, "
                f"{orig} -> {size} bytes{ratio}, recipe {self.meta.get('recipe', {}).get('name', '?')!r})")

    __str__ = __repr__

    def state_dict(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy() for k, v in self.model.state_dict().items()}

    def save(self, path) -> int:
        """Write the .dcz file (atomically). Returns its size in bytes."""
        sd = self.model.state_dict()
        coded = {e.name: e for e in self.encoded.values()}
        dense = {k: v.detach().cpu().numpy() for k, v in sd.items() if k not in coded}
        dense.update(self.extra_dense)
        meta = dict(self.meta)
        size = write_dcz(path, meta=meta, graph=self.graph, dense=dense, coded=coded,  # minor: what it holds
                         order=[*sd.keys(), *self.extra_dense])
        self.meta["file_bytes"] = size
        return size


def default_output(loaded) -> str:
    arch = normalize_arch(getattr(loaded, "arch", "") or "model") or "model"
    return f"{arch.replace('/', '_')}.dcz"


def _progress(iterable, desc: str, enabled: bool, total: int | None = None):
    """A tqdm bar over ``iterable`` (or a manual one when it is None); ``iterable`` itself when disabled."""
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency of the compress extra
        return iterable
    return tqdm(iterable, desc=desc, total=total, file=sys.stderr, leave=False, unit="layer")


def _depthwise(module) -> bool:
    groups = getattr(module, "groups", 1)
    return groups > 1 and groups == getattr(module, "in_channels", 0)


def constant_layers(graph: dict) -> set[str]:
    """The weights (state_dict keys) of the graph's layers that see stored values only, never the
    input (static nodes, deepcomp.runtime.plan.static_nodes): Swin v2's position-bias MLP on its
    coordinates table. The runtime runs them once, at load, so pruning them would save no work per
    sample, only change the table: they are kept dense."""
    static = static_nodes((n["name"], n["op"], n["inputs"]) for n in graph["nodes"])
    return {n["attrs"]["weight"] for n in graph["nodes"] if n["name"] in static and n["op"] in ("conv2d", "linear")
            and isinstance(n["attrs"].get("weight"), str)}


def status(message: str, enabled: bool = True) -> None:
    """Say what a long stage without a bar of its own is doing, on stderr when it is a terminal (so
    that a mistake found meanwhile still ends in one line where stderr is read by a program)."""
    if enabled and sys.stderr.isatty():
        print(message, file=sys.stderr, flush=True)


def make_plan(
    layers: Mapping[str, nn.Module],
    recipe: Recipe,
    *,
    sparsity: float | None = None,
    conv_bits: int | None = None,
    fc_bits: int | None = None,
    index_bits: int | None = None,
    constant: frozenset | set = frozenset(),
) -> tuple[dict[str, LayerPlan], list[str]]:
    """Per-layer density and bits from a recipe plus flag overrides. Returns (plan, notes).
    ``constant``: the weight keys of layers applied to stored values only (:func:`constant_layers`),
    kept dense unless the recipe names them."""
    for flag, value, top in (("conv-bits", conv_bits, 8), ("fc-bits", fc_bits, 8), ("index-bits", index_bits, 12)):
        if value is not None and not 1 <= int(value) <= top:
            raise RecipeError(f"--{flag} must be in 1..{top}, got {value}")
    notes = []
    unknown = set(recipe.layers) - set(layers)
    if unknown:
        raise RecipeError(f"recipe {recipe.name} names layer(s) this model does not have: "
                          f"{', '.join(sorted(unknown))}; the model's prunable layers are: "
                          f"{', '.join(layers)}")
    d = recipe.defaults
    default_sparsity = d.get("sparsity")
    missing = [n for n in layers if n not in recipe.layers]
    if sparsity is None and missing and default_sparsity is None:
        default_sparsity = DEFAULT_SPARSITY
    if sparsity is None and missing and recipe.name in ("deep-compression", "sparse-int8"):
        notes.append(f"no paper table for this architecture: the paper's bits (conv {conv_bits or d['conv_bits']}, "
                     f"fc {fc_bits or d['fc_bits']}) with sparsity {default_sparsity:.2f} per layer "
                     f"(set --sparsity to change it)")
    plan = {}
    for name, module in layers.items():
        spec = recipe.layers.get(name, {})
        kind = layer_kind(module)
        if "density" not in spec and _depthwise(module):
            density = 1.0  # few weights, and the depthwise kernel runs them dense: keep them all
            spec = {**spec, "label": spec.get("label") or "depthwise, kept dense"}
        elif "density" not in spec and weight_key(name, module) in constant:
            density = 1.0  # the same output for every input (a position-bias MLP): nothing to save per sample
            spec = {**spec, "label": spec.get("label") or "on stored values only, kept dense"}
        elif sparsity is not None:
            density = 1.0 - sparsity
        elif "density" in spec:
            density = float(spec["density"])
        else:
            density = 1.0 - float(default_sparsity)
        flag = conv_bits if kind == "conv" else fc_bits
        bits = flag if flag is not None else spec.get("bits", d[f"{kind}_bits"])
        ib = index_bits if index_bits is not None else spec.get("index_bits", d["index_bits"])
        if not 1 <= int(bits) <= 8:
            raise RecipeError(f"{name}: weight bits must be in 1..8, got {bits}")
        if not 1 <= int(ib) <= 12:
            raise RecipeError(f"{name}: index bits must be in 1..12, got {ib}")
        plan[name] = LayerPlan(name=name, kind=kind, density=density, bits=int(bits), index_bits=int(ib),
                               label=str(spec.get("label", "")))
    return plan, notes


def _resolve_model(model, input_shape):
    """(nn.Module, arch, input_shape, source) from a LoadedModel, a spec string or a module."""
    if isinstance(model, str):
        from deepcomp.zoo import load_model

        model = load_model(model)
    if isinstance(model, nn.Module):
        if input_shape is None:
            raise DeepcompError("compress(model) of a bare nn.Module needs input_shape=(C, H, W)")
        return model, type(model).__name__.lower(), tuple(input_shape), "python"
    module = getattr(model, "model", None)
    if not isinstance(module, nn.Module):
        raise DeepcompError(f"cannot compress a {type(model).__name__}: pass an nn.Module, a model spec or a LoadedModel")
    shape = tuple(input_shape) if input_shape else tuple(model.input_shape)
    return module, str(model.arch), shape, str(getattr(model, "source", ""))


def require_trainable(module) -> None:
    """Retraining runs the model in torch: a model that only holds weights (from ONNX) cannot."""
    why = getattr(module, "not_trainable", None)
    if why:
        raise DeepcompError(why)


def compress(
    model,
    *,
    recipe: str | Recipe | None = "deep-compression",
    sparsity: float | None = None,
    scope: str | None = None,
    conv_bits: int | None = None,
    fc_bits: int | None = None,
    index_bits: int | None = None,
    init: str | None = None,
    criterion: str | Criterion | Callable[[nn.Module], Criterion] | None = None,
    iterative: int | None = None,
    int8_weight_bits: int | None = None,
    input_shape: tuple[int, ...] | None = None,
    seed: int = 0,
    progress: bool = True,
    data=None,
    finetune_epochs: int | None = None,
    codebook_epochs: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    weight_decay: float | None = None,
    calibration_batches: int = 8,
    log_path: str | None = None,
    finetune: FinetuneFn | None = None,
    train_codebooks: CodebookFn | None = None,
) -> CompressResult:
    """Prune, share weights and Huffman-code ``model``.

    ``model`` is an nn.Module (with ``input_shape``), a :class:`deepcomp.zoo.LoadedModel` or a model
    spec such as ``"torchvision:alexnet"``. ``recipe`` is a recipe name, a TOML path or a
    :class:`Recipe`; the keyword overrides win over it. ``criterion`` scores weights for pruning
    (default magnitude); a function ``model -> Criterion`` is called again before every pruning step,
    so data-driven criteria (WANDA, relevance) see the retrained model. ``iterative=K`` prunes in K steps, calling
    ``finetune(model, masks, stage)`` after each (masked retraining). ``train_codebooks(model, shared)``
    may fine-tune the centroids (assignments fixed) after k-means. Call ``.save(path)`` on the result.

    With ``data`` (a dataset spec such as ``"fashion-mnist"``, or ``(train, test)`` datasets) the
    recipe's whole schedule runs: its criterion (a name: magnitude, wanda, relevance, taylor), its
    pruning steps with masked retraining after each, its centroid training; ``finetune_epochs``,
    ``codebook_epochs``, ``lr``, ``batch_size``, ``weight_decay``, ``iterative`` and a criterion name
    override the recipe's fields, and ``log_path`` receives the per-stage JSON-lines records. The
    result then carries ``accuracy["baseline"]`` (the model before compression, on the test split);
    :func:`evaluate_file` adds the written file's, measured on deepcomp's runtime.
    """
    t0 = time.perf_counter()
    module, arch, shape, source = _resolve_model(model, input_shape)
    if data is not None or finetune is not None or train_codebooks is not None:
        require_trainable(module)
    module.eval()
    with torch.no_grad():
        for p in module.parameters():
            if p.dtype != torch.float32:
                raise DeepcompError("deepcomp compresses float32 models; convert it first (model.float())")

    from deepcomp.capture import capture

    status(f"capturing the graph of {arch} ...", progress)
    graph = capture(module, shape)  # fails fast on an unsupported op, before the heavy work

    rec = recipe if isinstance(recipe, Recipe) else load_recipe(recipe, arch)
    if int8_weight_bits is not None:
        rec = _with_int8_weight_bits(rec, int8_weight_bits)
    layers = prunable_layers(module)
    if not layers:
        raise DeepcompError("the model has no Conv2d or Linear layer to compress")
    plan, notes = make_plan(layers, rec, sparsity=sparsity, conv_bits=conv_bits, fc_bits=fc_bits,
                            index_bits=index_bits, constant=constant_layers(graph))
    int8 = _int8_layers(rec, module, graph, plan, notes)  # {layer: graph node}; empty for fp32 recipes
    scope = scope or rec.defaults.get("scope", "layer")
    init = init or rec.defaults.get("init", "linear")
    if iterative is not None and int(iterative) < 1:
        raise RecipeError(f"--iterative takes a number of steps >= 1, got {iterative}")
    sched = rec.schedule_with(criterion=criterion if isinstance(criterion, str) else None, iterative=iterative,
                              finetune_epochs=finetune_epochs, codebook_epochs=codebook_epochs, lr=lr,
                              batch_size=batch_size, weight_decay=weight_decay)
    datasets, accuracy = None, {}
    if data is not None:
        datasets = _datasets(data)
        hooks = _schedule_hooks(sched, datasets, seed=seed, progress=progress, log_path=log_path)
        finetune = finetune or hooks["finetune"]
        train_codebooks = train_codebooks or hooks["train_codebooks"]
        accuracy["baseline"] = _evaluate(module, datasets[1])
    if criterion is None or isinstance(criterion, str):
        from deepcomp.train import criterion_from_data

        criterion = criterion_from_data(sched["criterion"], datasets[0] if datasets else None,
                                        batches=calibration_batches, seed=seed)
    # the steps exist for retraining between them: without it the recipe's steps are not taken
    steps = int(iterative if iterative is not None else (sched["iterative"] if finetune is not None else 1))
    total_weights = sum(layers[n].weight.numel() for n in plan)
    overall_density = sum(plan[n].density * layers[n].weight.numel() for n in plan) / total_weights

    # 1. prune (and retrain): the library's schedule driver; the kept fraction shrinks geometrically
    # (Han et al.), linearly when a layer goes to zero
    if scope == "global":
        target = 1.0 - overall_density
    else:
        target = {n: 1.0 - p.density for n, p in plan.items()}
    top = target if scope == "global" else max(target.values())

    def retrain(m, masks, step):  # iterative_prune counts steps from 0
        finetune(m, masks, f"prune-{step + 1}/{steps}")

    def bar(step):
        desc = "prune" if steps == 1 else f"prune {step + 1}/{steps}"
        if scope == "global":  # one selection over all weights: no per-layer loop to draw a bar for
            status(f"{desc}: one magnitude threshold over all layers ...", progress)
        return lambda items: _progress(items, desc, progress, total=len(layers))

    compute = mixed_masks(int8, out_block=rec.defaults["block"][0]) if int8 else compute_masks
    masks = iterative_prune(module, target, steps, retrain if finetune is not None else None, scope=scope,
                            criterion=criterion, kind="geometric" if top < 1.0 else "linear", progress=bar,
                            compute=compute)
    if scope == "global":
        for n, m in masks.items():
            plan[n].density = float(m.float().mean())

    # 2. share weights (k-means; the model then holds the shared values), train the centroids
    bar = _progress(None, "k-means", progress, total=len(plan))
    shared = share_weights(module, masks, {n: p.bits for n, p in plan.items()}, init=init, seed=seed,
                           progress=(lambda name: bar.update()) if bar is not None else None)
    if bar is not None:
        bar.close()
    if train_codebooks is not None:
        train_codebooks(module, shared)
        with torch.no_grad():  # the model holds exactly what the file will hold
            for name, sw in shared.items():
                layers[name].weight.copy_(torch.from_numpy(sw.dense()))

    # 3. Huffman-code: int8 layers block by block (one gap per block: CODED_BLOCK sections), except
    # those pruned in blocks of kernel columns (columns_blocks), whose blocks CODED_BLOCK cannot say
    def coder(name):
        return encode_block_shared if plan[name].int8 and not columns_blocks(layers[name]) else encode_shared

    encoded = {name: coder(name)(shared[name], plan[name].index_bits)
               for name in _progress(list(plan), "huffman", progress)}

    # 4. int8: calibrate the activations, mark the int8 nodes, store the weight scales
    int8_meta, extra = None, {}
    if int8:
        graph, extra, int8_meta = _int8_annotate(module, graph, int8, shared, rec, datasets, shape,
                                                 calibration_batches, seed, notes, progress)

    original_params = sum(p.numel() for p in module.parameters())
    sd = module.state_dict()
    dense_bytes = sum(v.numel() * 4 for k, v in sd.items() if k not in {e.name for e in encoded.values()}
                      and v.is_floating_point()) + sum(v.nbytes for v in extra.values())
    meta = {
        "deepcomp_version": _version(),
        "model": source,
        "arch": arch,
        "input_shape": list(shape),
        "num_params": int(original_params),
        "original_bytes": int(original_params * 4),
        "state_dict_keys": list(sd.keys()),
        "recipe": {"name": rec.name, "scope": scope, "init": init, "iterative": steps, "criterion": sched["criterion"],
                   **({"schedule": sched} if data is not None else {}),
                   "retrained": finetune is not None, "trained_centroids": train_codebooks is not None,
                   **({"int8": int8_meta} if int8_meta else {}),
                   "layers": {n: {"kind": p.kind, "density": round(p.density, 6), "bits": p.bits,
                                  "index_bits": p.index_bits, "label": p.label, **({"int8": True} if p.int8 else {})}
                              for n, p in plan.items()}},
        "stages": stage_sizes(encoded.values(), dense_bytes),
    }
    result = CompressResult(model=module, arch=arch, input_shape=shape, graph=graph, plan=plan, masks=masks,
                            shared=shared, encoded=encoded, meta=meta, notes=notes, datasets=datasets,
                            accuracy=accuracy, extra_dense=extra)
    result.elapsed = time.perf_counter() - t0
    return result


def _int8_layers(rec: Recipe, module: nn.Module, graph: dict, plan: dict[str, LayerPlan], notes: list) -> dict:
    """{layer: graph node} of the layers an int8 recipe (one with a block shape) runs int8: all but
    those it says ``int8 = false`` for and those the int8 kernels cannot run (noted)."""
    if not rec.defaults.get("block"):
        return {}
    from deepcomp.quantize_int8 import int8_nodes

    wanted = [n for n in plan if rec.layers.get(n, {}).get("int8", True)]
    shapes = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    nodes, why = int8_nodes(graph, shapes, wanted)
    notes.extend(f"{n} stays fp32: {w}" for n, w in why.items())
    for n in nodes:
        plan[n].int8 = True
    return nodes


def _with_int8_weight_bits(rec: Recipe, bits) -> Recipe:
    """``rec`` with its int8 weight grid overridden (the int8_weight_bits argument / flag)."""
    from dataclasses import replace

    if bits not in INT8_WEIGHT_BITS:
        raise RecipeError(f"--int8-weight-bits must be 7 or 8, got {bits!r}")
    if "block" not in rec.defaults:
        raise RecipeError(f"--int8-weight-bits needs an int8 recipe (sparse-int8); {rec.name} runs fp32")
    return replace(rec, defaults={**rec.defaults, "int8_weight_bits": bits})


def _int8_annotate(module, graph, int8: dict, shared, rec: Recipe, datasets, shape, batches: int, seed: int,
                   notes: list, progress: bool):
    """(the graph with its int8 attributes, the weight scale tensors, META's recipe.int8)."""
    from deepcomp.quantize_int8 import RANDOM_CALIBRATION_WARNING, annotate_graph, calibrate_inputs, calibration_data
    from deepcomp.runtime.int8 import weights_to_int8

    status(f"calibrating the int8 activations of {len(int8)} layers ...", progress)
    data, source = calibration_data(datasets[0] if datasets else None, shape, batches, seed=seed)
    if source["calibration"] == "random":
        notes.append(RANDOM_CALIBRATION_WARNING)
    method = rec.defaults.get("calibration", "percentile")
    layers = prunable_layers(module)
    q = calibrate_inputs(module, data, layers={n: layers[n] for n in int8}, method=method)
    shapes = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    bits = rec.defaults.get("int8_weight_bits", INT8_WEIGHT_BITS_DEFAULT)
    extra = {f"{n}.weight_scale": weights_to_int8(shared[n].dense(), qmax=2 ** (bits - 1) - 1)[1] for n in int8}
    shapes.update({k: v.shape for k, v in extra.items()})
    graph = annotate_graph(graph, shapes, int8, q, rec.defaults["block"])
    return graph, extra, {"block": list(rec.defaults["block"]), **source, "method": method, "weight_bits": bits}


def _datasets(data) -> tuple:
    """(train, test) datasets from a spec or a pair."""
    if isinstance(data, (tuple, list)):
        if len(data) != 2:
            raise DeepcompError("data= takes a dataset spec or a (train, test) pair of datasets")
        return tuple(data)
    from deepcomp.data import load_dataset

    return load_dataset(data, "train"), load_dataset(data, "test")


def _schedule_hooks(sched: dict, datasets, *, seed: int, progress: bool, log_path: str | None) -> dict:
    from deepcomp.train import make_hooks

    return make_hooks(None, train_data=datasets[0], test_data=datasets[1], finetune_epochs=sched["finetune_epochs"],
                      codebook_epochs=sched["codebook_epochs"], lr=sched["lr"], batch_size=sched["batch_size"],
                      weight_decay=sched["weight_decay"], log_path=log_path, seed=seed, progress=progress)


def _evaluate(model_or_runtime, test_data) -> dict:
    from deepcomp.data import make_loader
    from deepcomp.train import evaluate

    return evaluate(model_or_runtime, make_loader(test_data, batch_size=512))


def evaluate_file(result: CompressResult, path) -> dict:
    """Accuracy of the written .dcz on deepcomp's runtime (as ``deepcomp eval`` measures it), on the
    test split ``compress(data=...)`` used; stored as ``result.accuracy["compressed"]``."""
    if result.datasets is None:
        raise DeepcompError("evaluate_file needs a result of compress(data=...)")
    from deepcomp.train import load_dcz_for_eval

    result.accuracy["compressed"] = _evaluate(load_dcz_for_eval(str(path))[0], result.datasets[1])
    return result.accuracy["compressed"]


def stage_sizes(encoded, dense_bytes: int) -> dict[str, int]:
    """Bytes after each stage, as in the paper's Table 7: pruned only (fp32 values + fixed-width relative
    index), + quantized (fixed-width cluster index + codebook), + Huffman (the coded streams)."""
    pruned = quantized = huffman = dense_bytes
    for e in encoded:
        index = e.entries * e.index_bits
        pruned += (e.kept * 32 + index + 7) // 8  # kept weights (a block weight's nnz counts blocks)
        quantized += (e.kept * e.bits + index + 7) // 8 + 4 * e.codebook.size
        huffman += (e.weight_stream_bits + 7) // 8 + (e.gap_stream_bits + 7) // 8 + 4 * e.codebook.size
    return {"dense_bytes": int(dense_bytes), "pruned_bytes": int(pruned), "quantized_bytes": int(quantized),
            "huffman_bytes": int(huffman)}


def _version() -> str:
    from deepcomp import __version__

    return __version__
