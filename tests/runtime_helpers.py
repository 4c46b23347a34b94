"""Build the runtime's inputs (graph + loader-format tensors) straight from a torch model, so the
executor can be tested without the .dcz writer."""

import numpy as np
import torch
from torch import nn

from deepcomp.capture import capture
from deepcomp.prune.unstructured import prunable_layers, weight_key


def prune_and_share(model: nn.Module, density: float = 0.4, bits: int = 5, seed: int = 0) -> nn.Module:
    """Magnitude-prune every conv/linear weight (and attention's packed projection) to ``density`` and
    snap the kept weights to 2**bits evenly spaced centroids, in place (so torch and the runtime see
    the very same weights)."""
    g = torch.Generator().manual_seed(seed)
    layers = set(map(id, prunable_layers(model).values()))
    with torch.no_grad():
        for m in list(model.modules()):
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
            if id(m) not in layers:
                continue
            w = m.weight.detach().numpy()  # shares memory with the parameter
            k = max(1, int(round(density * w.size)))
            a = np.abs(w)
            thr = float(np.partition(a.reshape(-1), a.size - k)[a.size - k]) if k < a.size else -1.0
            mask = a >= thr
            kept = w[mask]
            lo, hi = float(kept.min()), float(kept.max())
            levels = 2 ** bits
            cb = np.linspace(lo, hi, levels).astype(np.float32)
            # evenly spaced centroids: the nearest one is a rounding (no [numel, levels] temporary)
            idx = np.rint((w - lo) * ((levels - 1) / max(hi - lo, 1e-12))).clip(0, levels - 1).astype(np.int64)
            q = cb[idx]
            q[~mask] = 0.0
            w[...] = q
            m._test_codebook = cb  # lets coded_entry skip a sort of every weight
    return model


def coded_entry(w: np.ndarray, bits: int = 8, codebook: np.ndarray | None = None) -> dict:
    """A conv/linear weight in the loader's CSR format (codebook = its distinct nonzero values, or
    the given sorted codebook that holds every nonzero value exactly)."""
    rows = w.shape[0]
    flat = w.reshape(rows, -1)
    nz = flat != 0
    if codebook is None:
        codebook, inverse = np.unique(flat[nz], return_inverse=True)
    else:
        inverse = np.searchsorted(codebook, flat[nz])
        assert np.array_equal(codebook[inverse], flat[nz])
    assert len(codebook) <= 256
    cc = np.nonzero(nz.reshape(-1))[0] % flat.shape[1]
    row_ptr = np.zeros(rows + 1, np.int64)
    np.cumsum(nz.sum(1), out=row_ptr[1:])
    return {
        "shape": tuple(w.shape), "bits": bits, "index_bits": 5,
        "codebook": codebook.astype(np.float32), "row_ptr": row_ptr,
        "col": cc.astype(np.int32), "cluster": inverse.reshape(-1).astype(np.uint8), "nnz": int(nz.sum()),
    }


def loaded_parts(model: nn.Module, input_shape, dense_weights=()):
    """(graph, dense, coded) as deepcomp._native.load_dcz would return them for this model."""
    graph = capture(model, input_shape)
    sd = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    weights = {n["attrs"]["weight"] for n in graph["nodes"] if n["op"] in ("conv2d", "linear")}
    modules = {weight_key(n, m): m for n, m in prunable_layers(model).items()}
    # weights prune_and_share coded; others stay dense
    shared = {k: getattr(modules.get(k), "_test_codebook", None) for k in weights}
    coded = {k: coded_entry(sd[k], codebook=cb) for k, cb in shared.items() if cb is not None and k not in dense_weights}
    dense = {k: v for k, v in sd.items() if k not in coded}
    return graph, dense, coded
