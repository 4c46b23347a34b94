"""Activation calibration for the int8 path (docs/int8.md): the uint8 scale and zero point of every
conv / linear layer's input, from data.

Each layer's input is observed with a forward pre-hook over the calibration batches; an
:class:`ActivationSample` keeps its min, max and a bounded random sample of its values, from which
:func:`qparams` picks the clip range by one of ``METHODS``:

- ``minmax``: the observed range;
- ``percentile``: the given percentile of |x| per side (99.99 by default), which ignores rare spikes;
- ``mse``: the clip that minimizes the mean squared quantization error over the sample.

Non-negative inputs (after a ReLU) get zero point 0 and all 256 levels on [0, hi]; signed ones (the
network input) an asymmetric range whose zero point makes 0.0 exact. Without data, calibration
runs on random inputs (:func:`random_batches`) and its result means nothing for accuracy:
callers print ``RANDOM_CALIBRATION_WARNING``. The int8 weights come from the decoded codebook
weights at load time (:func:`deepcomp.runtime.int8.weights_to_int8`), so both sides agree.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np
import torch
from torch import nn

from deepcomp.errors import RecipeError
from deepcomp.prune.attention import calibration_forward
from deepcomp.prune.unstructured import prunable_layers
from deepcomp.recipes import CALIBRATION_METHODS as METHODS
RANDOM_CALIBRATION_WARNING = ("int8 activations calibrated on random inputs (no --data): the file runs and its "
                              "speed is real, but its accuracy means nothing")
SAMPLE_CAP = 1 << 20
PER_BATCH = 1 << 16


class ActivationSample:
    """Min, max and a bounded, seeded random sample of the values of one tensor over many batches."""

    def __init__(self, seed: int = 0, cap: int = SAMPLE_CAP):
        self.rng = np.random.default_rng(seed)
        self.cap = cap
        self.lo, self.hi = np.inf, -np.inf
        self.parts: list[np.ndarray] = []
        self.count = 0

    def add(self, x) -> None:
        v = np.asarray(x, np.float32).reshape(-1)
        if v.size == 0:
            return
        self.lo, self.hi = min(self.lo, float(v.min())), max(self.hi, float(v.max()))
        if v.size > PER_BATCH:
            v = v[self.rng.choice(v.size, PER_BATCH, replace=False)]
        self.parts.append(v.copy())
        self.count += v.size
        if self.count > 2 * self.cap:
            self.parts = [self.values()]
            self.count = self.parts[0].size

    def values(self) -> np.ndarray:
        v = np.concatenate(self.parts) if self.parts else np.zeros(0, np.float32)
        if v.size > self.cap:
            v = v[self.rng.choice(v.size, self.cap, replace=False)]
        return v


def _range_to_qparams(lo: float, hi: float) -> tuple[float, int]:
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi - lo <= 0:
        return 1.0, 0
    if lo == 0:
        return float(np.float32(hi / 255.0)), 0
    scale = float(np.float32((hi - lo) / 255.0))
    return scale, int(np.clip(np.rint(-lo / scale), 0, 255))


def _quant_error(v: np.ndarray, scale: float, zp: int) -> float:
    q = np.clip(np.rint(v / np.float32(scale)) + zp, 0, 255)
    return float(np.mean((v - (q - zp) * np.float32(scale)) ** 2))


def qparams(sample: ActivationSample, method: str = "percentile", percentile: float = 99.99) -> tuple[float, int]:
    """(scale, zero point) of the uint8 quantization ``x = scale * (q - zp)`` for the sampled tensor."""
    if method not in METHODS:
        raise RecipeError(f"calibration method must be one of {', '.join(METHODS)}, got {method!r}")
    if not 0 < percentile <= 100:
        raise RecipeError(f"calibration percentile must be in (0, 100], got {percentile}")
    if sample.count == 0:
        raise RecipeError("no activations were observed: give calibration data that reaches every int8 layer")
    lo, hi = min(sample.lo, 0.0), max(sample.hi, 0.0)
    if method == "minmax":
        return _range_to_qparams(lo, hi)
    v = sample.values()
    if method == "percentile":
        p_hi = float(np.percentile(v[v > 0], percentile)) if (v > 0).any() else 0.0
        p_lo = -float(np.percentile(-v[v < 0], percentile)) if (v < 0).any() else 0.0
        return _range_to_qparams(max(p_lo, lo), min(p_hi, hi))
    best = None
    for f in np.geomspace(1e-3, 1.0, 120):  # shrink the observed range, keep the ratio of its sides
        s, zp = _range_to_qparams(lo * f, hi * f)
        err = _quant_error(v, s, zp)
        if best is None or err < best[0]:
            best = (err, s, zp)
    return best[1], best[2]


def random_batches(input_shape, n: int = 8, batch: int = 8, seed: int = 0) -> list[torch.Tensor]:
    """Standard-normal inputs for calibration without data (see RANDOM_CALIBRATION_WARNING)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn((batch, *input_shape), generator=g) for _ in range(n)]


@torch.no_grad()
def calibrate_inputs(model: nn.Module, batches: Iterable, *, layers: Mapping[str, nn.Module] | None = None,
                     method: str = "percentile", percentile: float = 99.99) -> dict[str, tuple[float, int]]:
    """{layer name: (scale, zero point)} of the input of every Conv2d / Linear (or of ``layers``),
    observed over ``batches`` (tensors, or (input, target) pairs) in eval mode."""
    layers = dict(layers) if layers is not None else prunable_layers(model)
    samples = {name: ActivationSample(seed=i) for i, name in enumerate(layers)}
    hooks = [m.register_forward_pre_hook(lambda mod, args, name=name: samples[name].add(args[0].detach().float().cpu()))
             for name, m in layers.items()]
    was_training = model.training
    model.eval()
    try:
        with calibration_forward(model):  # attentions' in_proj / out_proj see their inputs
            for b in batches:
                x = b[0] if isinstance(b, (tuple, list)) else b
                model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return {name: qparams(s, method, percentile) for name, s in samples.items()}


# ---------------------------------------------------------------------------------------------------
# the int8 nodes of a captured graph (what the writer puts in the file; docs/dcz-format.md)

def _f32(v: float) -> float:
    """A float32 value as the JSON number with the shortest repr that round-trips it."""
    return float(str(np.float32(v)))


def _checked(graph: dict, shapes: Mapping[str, tuple]):
    from deepcomp.runtime.plan import check_graph

    return check_graph(graph, lambda name, where: tuple(shapes[name]))


def int8_nodes(graph: dict, shapes: Mapping[str, tuple], layers) -> tuple[dict[str, str], dict[str, str]]:
    """({layer: its graph node} for the layers of ``layers`` the int8 kernels can run, {layer: why not}
    for the others). int8 runs conv2d with groups 1 (a BatchNorm folded into it folds into the int8
    epilogue), and linear on [N, features];
    ``shapes``: every stored tensor's shape, by name."""
    checked, node_shapes = _checked(graph, shapes)
    by_weight = {attrs.get("weight"): (name, op, ins, attrs) for name, op, ins, attrs in checked
                 if op in ("conv2d", "linear")}
    ok, why = {}, {}
    for layer in layers:
        node = by_weight.get(f"{layer}.weight")
        if node is None:
            why[layer] = "not a conv2d / linear node of the graph"
            continue
        name, op, ins, attrs = node
        if op == "conv2d" and attrs["groups"] != 1:
            why[layer] = "a grouped convolution"
        elif op == "linear" and len(node_shapes[ins[0]]) != 1:
            why[layer] = "a linear layer on more than one dimension"
        else:
            ok[layer] = name
    return ok, why


def annotate_graph(graph: dict, shapes: Mapping[str, tuple], nodes: Mapping[str, str],
                   qparams: Mapping[str, tuple[float, int]], block) -> dict:
    """A copy of ``graph`` whose int8 nodes (``nodes``: {layer: node}) carry the ``int8`` attribute:
    their input's (scale, zp) from ``qparams`` ({layer: ...}), the weight scale tensor
    ``<layer>.weight_scale``, and ``out`` "u8" with the consumer's input quantization wherever the
    runtime's planner keeps the output uint8 (deepcomp.runtime.plan_int8.u8_consumers), else "f32"."""
    from deepcomp.runtime.plan_int8 import u8_consumers

    checked, node_shapes = _checked(graph, shapes)
    layer_of = {node: layer for layer, node in nodes.items()}
    links = u8_consumers(checked, node_shapes, graph["output"], set(layer_of))
    out = dict(graph)
    out["nodes"] = []
    for n in graph["nodes"]:
        layer = layer_of.get(n["name"])
        if layer is not None:
            s, zp = qparams[layer]
            q = {"block": list(block), "weight_scale": f"{layer}.weight_scale", "in_scale": _f32(s), "in_zp": int(zp),
                 "out": "f32"}
            if n["name"] in links:
                so, zo = qparams[layer_of[links[n["name"]][0]]]
                q.update(out="u8", out_scale=_f32(so), out_zp=int(zo))
            n = {**n, "attrs": {**n.get("attrs", {}), "int8": q}}
        out["nodes"].append(n)
    return out


def calibration_data(train_data, input_shape, batches: int = 8, batch_size: int = 32, seed: int = 0):
    """(batches, what the file's META records): ``batches`` seeded batches of the training split, or
    random inputs without data (the file's accuracy then means nothing: RANDOM_CALIBRATION_WARNING)."""
    if train_data is None:
        n = max(1, min(int(batches), 2))  # the ranges of random inputs tell nothing: keep it cheap
        return random_batches(input_shape, n=n, batch=4, seed=seed), {"calibration": "random", "samples": 4 * n}
    from itertools import islice

    from deepcomp.data import make_loader

    got = list(islice(iter(make_loader(train_data, batch_size=batch_size, shuffle=True, seed=seed)), max(1, int(batches))))
    return got, {"calibration": "data", "samples": int(sum(len(b[0]) for b in got))}
