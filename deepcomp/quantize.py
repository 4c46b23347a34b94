"""Weight sharing: per-layer 1-D k-means over the surviving weights (Deep Compression, section 3).

The k-means works on the sorted values: with sorted data every cluster is a contiguous run, so each
Lloyd step is a binary search for the k-1 boundaries plus prefix sums, O(k log n) after one sort.
Millions of weights take milliseconds per iteration.

Trained quantization (Deep Compression, Eq. 3) lives here too: :class:`CodebookTraining` makes each
shared layer's weight a function of a small trainable codebook, ``W[positions] = codebook[clusters]``
(zero elsewhere). Backward gives each centroid the sum of the gradients of the weights assigned to it
(one ``index_add_`` over the kept positions), so assignments and masks cannot change and every
optimizer, trainer or DDP wrapper sees ordinary parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch
from torch import nn

from deepcomp.errors import RecipeError
from deepcomp.prune.attention import weight_owner
from deepcomp.prune.unstructured import weight_key

INITS = ("linear", "density", "random", "kmeans++")


@dataclass
class SharedWeight:
    """A pruned, weight-shared tensor: kept positions (flat, ascending) and their cluster indices."""

    name: str                 # state_dict key of the weight
    shape: tuple[int, ...]
    codebook: np.ndarray      # float32 [k]
    positions: np.ndarray     # int64 [nnz], flat row-major positions of the kept weights
    clusters: np.ndarray      # uint16 [nnz], index into codebook
    bits: int                 # 2^bits is the most centroids this layer may have

    @property
    def nnz(self) -> int:
        return int(self.positions.size)

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def values(self) -> np.ndarray:
        return self.codebook[self.clusters] if self.nnz else np.zeros(0, np.float32)

    def dense(self) -> np.ndarray:
        """The tensor as float32: codebook values at kept positions, exactly 0.0 elsewhere."""
        out = np.zeros(self.numel, dtype=np.float32)
        out[self.positions] = self.values()
        return out.reshape(self.shape)


def _init_centroids(sorted_vals: np.ndarray, k: int, init: str, rng: np.random.Generator) -> np.ndarray:
    lo, hi = float(sorted_vals[0]), float(sorted_vals[-1])
    n = sorted_vals.size
    if init == "linear":
        return np.linspace(lo, hi, k)
    if init == "density":
        # equally spaced on the CDF: centroids where the weights are dense
        q = (np.arange(k) + 0.5) / k
        return sorted_vals[np.minimum((q * n).astype(np.int64), n - 1)].astype(np.float64)
    if init == "random":  # Forgy: k distinct observations
        return np.sort(rng.choice(sorted_vals, size=k, replace=False)).astype(np.float64)
    if init == "kmeans++":
        sample = sorted_vals if n <= 65536 else sorted_vals[np.sort(rng.choice(n, 65536, replace=False))]
        sample = sample.astype(np.float64)
        cents = [sample[rng.integers(sample.size)]]
        d2 = (sample - cents[0]) ** 2
        for _ in range(1, k):
            total = d2.sum()
            if total <= 0:
                break
            c = sample[np.searchsorted(np.cumsum(d2), rng.random() * total, side="right").clip(0, sample.size - 1)]
            cents.append(c)
            d2 = np.minimum(d2, (sample - c) ** 2)
        return np.sort(np.asarray(cents))
    raise RecipeError(f"unknown centroid init {init!r}; choose one of {', '.join(INITS)}")


def kmeans_1d(
    values: np.ndarray,
    k: int,
    *,
    init: str = "linear",
    max_iter: int = 100,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Cluster 1-D ``values`` into at most ``k`` centroids.

    Returns ``(codebook float32 [k'], labels uint16 [n])`` with k' <= k (empty clusters are dropped,
    so every codebook entry is used). Labels assign each value to its nearest centroid.
    """
    if k < 1:
        raise RecipeError(f"k-means needs at least one cluster, got {k}")
    values = np.asarray(values, dtype=np.float32).reshape(-1)
    n = values.size
    if n == 0:
        return np.zeros(0, np.float32), np.zeros(0, np.uint16)
    sv = np.sort(values)
    if np.count_nonzero(sv[1:] != sv[:-1]) + 1 <= k:
        uniq = np.unique(sv)
        # exact: one centroid per distinct value
        labels = np.searchsorted(uniq, values).astype(np.uint16)
        return uniq.astype(np.float32), labels
    rng = np.random.default_rng(seed)
    c = np.unique(_init_centroids(sv, k, init, rng))
    csum = np.concatenate([[0.0], np.cumsum(sv, dtype=np.float64)])
    prev = None
    for _ in range(max_iter):
        bounds = (c[:-1] + c[1:]) / 2
        cut = np.concatenate([[0], np.searchsorted(sv, bounds, side="right"), [n]])
        if prev is not None and np.array_equal(cut, prev):
            break
        prev = cut
        counts = np.diff(cut)
        sums = csum[cut[1:]] - csum[cut[:-1]]
        nonempty = counts > 0
        c = np.where(nonempty, sums / np.maximum(counts, 1), c)
        c = c[nonempty]  # an empty cluster stays empty in 1-D Lloyd; drop it
        c = np.sort(c)
    # Final assignment against the float32 codebook that will be stored.
    cb = np.unique(c.astype(np.float32))
    bounds = (cb[:-1].astype(np.float64) + cb[1:]) / 2
    labels = np.searchsorted(bounds, values.astype(np.float64), side="left").astype(np.uint16)
    used = np.bincount(labels, minlength=cb.size) > 0
    if not used.all():
        remap = np.cumsum(used) - 1
        cb = cb[used]
        labels = remap[labels].astype(np.uint16)
    return cb, labels


def share_layer(
    name: str,
    weight: np.ndarray,
    mask: np.ndarray | None,
    bits: int,
    *,
    init: str = "linear",
    seed: int = 0,
) -> SharedWeight:
    """k-means over the kept weights of one tensor with 2^bits centroids."""
    if not 1 <= int(bits) <= 8:
        raise RecipeError(f"{name}: weight bits must be in 1..8, got {bits}")
    w = np.asarray(weight, dtype=np.float32)
    flat = w.reshape(-1)
    if mask is None:
        positions = np.arange(flat.size, dtype=np.int64)
    else:
        positions = np.flatnonzero(np.asarray(mask).reshape(-1)).astype(np.int64)
    cb, labels = kmeans_1d(flat[positions], 1 << int(bits), init=init, seed=seed)
    return SharedWeight(name=name, shape=tuple(w.shape), codebook=cb, positions=positions,
                        clusters=labels, bits=int(bits))


def share_weights(
    model,
    masks: Mapping[str, object],
    bits: Mapping[str, int],
    *,
    init: str = "linear",
    seed: int = 0,
    progress=None,
) -> dict[str, SharedWeight]:
    """Share the weights of every masked layer of ``model`` and write the shared values back into it.

    ``masks`` and ``bits`` are keyed by layer (module) name; the result by layer name too.
    """
    modules = dict(model.named_modules())
    out: dict[str, SharedWeight] = {}
    for name, mask in masks.items():
        module = modules[name]
        w = module.weight.detach().cpu().numpy()
        m = mask.cpu().numpy() if hasattr(mask, "cpu") else np.asarray(mask)
        sw = share_layer(weight_key(name, module), w, m, bits[name], init=init, seed=seed)
        with torch.no_grad():
            module.weight.copy_(torch.from_numpy(sw.dense()))
        out[name] = sw
        if progress is not None:
            progress(name)
    return out


# ------------------------------------------------------------------ trained quantization (Eq. 3)


class _GatherShared(torch.autograd.Function):
    """dense.flat[positions] = codebook[clusters]; backward: Eq. 3, a scatter-add over the clusters."""

    @staticmethod
    def forward(ctx, codebook, positions, clusters, numel):
        ctx.save_for_backward(positions, clusters)
        ctx.k = codebook.numel()
        out = codebook.new_zeros(numel)
        out[positions] = codebook[clusters]
        return out

    @staticmethod
    def backward(ctx, grad):
        positions, clusters = ctx.saved_tensors
        g = grad.new_zeros(ctx.k).index_add_(0, clusters, grad[positions])
        return g, None, None, None


class SharedParametrization(nn.Module):
    """torch.nn.utils.parametrize: the layer's ``weight`` computed from its codebook (the original)."""

    def __init__(self, positions: np.ndarray, clusters: np.ndarray, shape, codebook: torch.Tensor):
        super().__init__()
        self.register_buffer("positions", torch.as_tensor(np.asarray(positions, np.int64)), persistent=False)
        self.register_buffer("clusters", torch.as_tensor(np.asarray(clusters).astype(np.int64)), persistent=False)
        self.shape = tuple(shape)
        self.numel = int(np.prod(self.shape, dtype=np.int64))
        self._init = codebook

    def forward(self, codebook):
        return _GatherShared.apply(codebook, self.positions, self.clusters, self.numel).view(self.shape)

    def right_inverse(self, weight):
        # registering: the stored original is the codebook, not the dense weight
        return self._init.to(device=weight.device, dtype=weight.dtype)


class CodebookTraining:
    """Parametrise every shared layer of ``model`` by its codebook (assignments and masks fixed).

    ``params()`` are the codebooks (trainable ``nn.Parameter``s, also reachable through
    ``model.parameters()``); ``finish()`` copies them into ``shared[layer].codebook`` (float32, in place),
    removes the parametrisations and leaves the dense shared weights in the model.
    """

    def __init__(self, model: nn.Module, shared: Mapping[str, object]):
        from torch.nn.utils import parametrize

        self.model = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        self.shared = shared
        modules = dict(self.model.named_modules())
        self.layers: dict[str, tuple[nn.Module, str]] = {}  # layer -> (module, attribute) parametrised
        for name, sw in shared.items():
            if sw.nnz == 0 or sw.codebook.size == 0:
                continue
            m, attr = weight_owner(modules[name])
            w = getattr(m, attr)
            cb = torch.from_numpy(np.asarray(sw.codebook, np.float32).copy()).to(w.device, w.dtype)
            p = SharedParametrization(sw.positions, sw.clusters, sw.shape, cb).to(w.device)
            parametrize.register_parametrization(m, attr, p, unsafe=True)
            self.layers[name] = (m, attr)

    def params(self) -> list[nn.Parameter]:
        return list(self.codebooks().values())

    def codebooks(self) -> dict[str, torch.Tensor]:
        return {n: getattr(m.parametrizations, attr).original for n, (m, attr) in self.layers.items()}

    @torch.no_grad()
    def finish(self) -> None:
        from torch.nn.utils import parametrize

        for name, (m, attr) in self.layers.items():
            cb = getattr(m.parametrizations, attr).original.detach().cpu().numpy().astype(np.float32)
            self.shared[name].codebook[...] = cb
            parametrize.remove_parametrizations(m, attr, leave_parametrized=True)
        self.layers = {}

