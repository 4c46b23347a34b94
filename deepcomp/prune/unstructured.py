"""Unstructured pruning: masks per layer (one sparsity each) or global (one threshold for all)."""

from __future__ import annotations

from typing import Callable, Iterable, Mapping

import numpy as np
import torch
from torch import nn

from deepcomp.errors import RecipeError
from deepcomp.prune.attention import PackedProjection, packed_projections
from deepcomp.prune.criteria import Criterion, Magnitude

PRUNABLE = (nn.Conv2d, nn.Linear)


def _original_name(m: nn.Module) -> str:
    """The class name, also for a TorchScript submodule (a RecursiveScriptModule keeps it)."""
    return getattr(m, "original_name", type(m).__name__) if isinstance(m, torch.jit.ScriptModule) else type(m).__name__


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The layers whose weights deepcomp prunes and codes: every Conv2d and Linear, by qualified name
    (in a TorchScript model too), and the packed q/k/v projection of each nn.MultiheadAttention
    (``<attention>.in_proj``, see deepcomp.prune.attention)."""
    if not isinstance(model, torch.jit.ScriptModule):
        packed_projections(model)
    return {name: m for name, m in model.named_modules()
            if isinstance(m, (*PRUNABLE, PackedProjection))
            or (isinstance(m, torch.jit.ScriptModule) and _original_name(m) in ("Conv2d", "Linear"))}


def weight_key(name: str, module: nn.Module) -> str:
    """The state_dict key of a prunable layer's weight (the file stores its coded weight under it)."""
    return getattr(module, "weight_key", None) or f"{name}.weight"


def layer_kind(module: nn.Module) -> str:
    """'conv' or 'fc', the paper's two kinds (they get different default bit widths)."""
    return "conv" if isinstance(module, nn.Conv2d) or _original_name(module) == "Conv2d" else "fc"


def _check_amount(value: float, what: str) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise RecipeError(f"{what} must be a fraction in [0, 1], got {value}")
    return value


def _keep_top(scores: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Boolean mask of the n_keep highest scores; ties at the threshold go to the earliest positions.

    Uses a selection (numpy's introselect), not a sort: VGG-16's fc6 (103M weights) takes well under
    a second.
    """
    flat = scores.reshape(-1)
    n = flat.numel()
    if n_keep >= n:
        return torch.ones_like(scores, dtype=torch.bool)
    if n_keep <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    values = flat.numpy()
    thr = torch.tensor(np.partition(values, n - n_keep)[n - n_keep])
    keep = flat > thr
    need = n_keep - int(keep.sum())
    if need > 0:
        ties = torch.nonzero(flat == thr).reshape(-1)[:need]
        keep[ties] = True
    return keep.view_as(scores)


def _current_mask(module: nn.Module, masks: Mapping[str, torch.Tensor] | None, name: str) -> torch.Tensor | None:
    if masks is not None and name in masks:
        return masks[name].to(torch.bool)
    return None


def compute_masks(
    model: nn.Module,
    amount: float | Mapping[str, float],
    *,
    scope: str = "layer",
    criterion: Criterion | None = None,
    masks: Mapping[str, torch.Tensor] | None = None,
    layers: Mapping[str, nn.Module] | None = None,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> dict[str, torch.Tensor]:
    """Masks (True = keep) that remove ``amount`` of the weights (the sparsity, as in torch's prune).

    ``amount`` is one fraction for every layer or a map ``{layer name: fraction}``; with
    ``scope="global"`` one threshold is chosen across all layers so that ``amount`` of all weights go.
    Already-pruned positions (``masks``) stay pruned: their score is treated as -inf, so an iterative
    schedule only ever removes more. ``progress`` wraps the per-layer loop (e.g. in a tqdm bar).
    """
    progress = progress or (lambda items: items)
    criterion = criterion or Magnitude()
    layers = dict(layers) if layers is not None else prunable_layers(model)
    if scope not in ("layer", "global"):
        raise RecipeError(f"scope must be 'layer' or 'global', got {scope!r}")
    scores: dict[str, torch.Tensor] = {}
    for name, module in layers.items():
        s = criterion.score(name, module).detach().float().cpu()
        if s.shape != module.weight.shape:
            raise ValueError(f"{criterion!r} gave scores of shape {tuple(s.shape)} for {name} "
                             f"whose weight is {tuple(module.weight.shape)}")
        old = _current_mask(module, masks, name)
        if old is not None:
            s = torch.where(old.cpu(), s, torch.full_like(s, float("-inf")))
        scores[name] = s
    out: dict[str, torch.Tensor] = {}
    if scope == "global":
        if isinstance(amount, Mapping):
            raise RecipeError("global pruning takes one sparsity for the whole model, not a per-layer map")
        amount = _check_amount(amount, "sparsity")
        total = sum(s.numel() for s in scores.values())
        n_keep = total - int(round(amount * total))
        if not scores:
            return out
        flat = torch.cat([s.reshape(-1) for s in scores.values()])
        keep = _keep_top(flat, n_keep)
        start = 0
        for name, s in scores.items():
            out[name] = keep[start:start + s.numel()].view_as(s)
            start += s.numel()
        return out
    for name, s in progress(scores.items()):
        if isinstance(amount, Mapping):
            if name not in amount:
                continue
            a = _check_amount(amount[name], f"sparsity of {name}")
        else:
            a = _check_amount(amount, "sparsity")
        n_keep = s.numel() - int(round(a * s.numel()))
        out[name] = _keep_top(s, n_keep)
    # layers left out of a per-layer map keep their current mask
    for name in layers:
        if name not in out:
            old = _current_mask(layers[name], masks, name)
            out[name] = old.cpu() if old is not None else torch.ones_like(layers[name].weight, dtype=torch.bool).cpu()
    return out


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Zero the pruned weights in place."""
    layers = dict(model.named_modules())
    for name, mask in masks.items():
        w = layers[name].weight
        w.mul_(mask.to(device=w.device, dtype=w.dtype))


def prune(
    model: nn.Module,
    amount: float | Mapping[str, float],
    *,
    scope: str = "layer",
    criterion: Criterion | None = None,
    masks: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Compute masks and apply them (weights set to exactly zero). Returns the masks."""
    new = compute_masks(model, amount, scope=scope, criterion=criterion, masks=masks)
    apply_masks(model, new)
    return new


def sparsity_report(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Density (kept fraction) per layer and overall."""
    out = {name: float(m.float().mean()) for name, m in masks.items()}
    total = sum(m.numel() for m in masks.values())
    out["__total__"] = float(sum(m.sum().item() for m in masks.values()) / max(total, 1))
    return out
