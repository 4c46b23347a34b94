"""How much to prune, and when: iterative schedules, the prune-retrain driver, adaptive amounts.

* :func:`iterative_schedule` -- per-step sparsities (linear, geometric, or Zhu & Gupta's cubic).
* :func:`iterative_prune` -- prune, hand the model to a retraining function, repeat; pruned weights
  stay pruned.
* :func:`pq_index`, :func:`sap_amounts` -- the PQ Index and the sparsity-informed adaptive pruning
  rule of Diao et al. 2023 ("Pruning Deep Neural Networks from a Sparsity Perspective").
* :func:`mean_column_norm_amounts` -- the dynamic "mean column norm" unit-selection rule.
* :class:`AdaptivePruner` -- one object that applies either adaptive rule step after step.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Mapping

import torch
from torch import nn

from deepcomp.errors import RecipeError
from deepcomp.prune.criteria import Criterion, Magnitude, UnitNorm
from deepcomp.prune.unstructured import apply_masks, compute_masks, prunable_layers

KINDS = ("linear", "geometric", "cubic")


def iterative_schedule(target_sparsity: float, steps: int, kind: str = "linear",
                       initial_sparsity: float = 0.0) -> list[float]:
    """Sparsity after each of ``steps`` pruning steps; non-decreasing and ending exactly at the target.

    * ``linear``: equal increments of sparsity.
    * ``geometric``: the same fraction of the remaining weights goes at every step (density falls
      geometrically), as in Han et al.'s iterative pruning.
    * ``cubic``: Zhu & Gupta 2017, s_t = s_f + (s_i - s_f) (1 - t/n)^3: large steps first, while there
      are many redundant weights, small ones at the end.
    """
    if kind not in KINDS:
        raise RecipeError(f"schedule kind must be one of {KINDS}, got {kind!r}")
    if int(steps) != steps or steps < 1:
        raise RecipeError(f"steps must be a positive whole number, got {steps!r}")
    steps = int(steps)
    s_f, s_i = float(target_sparsity), float(initial_sparsity)
    if not 0.0 <= s_i <= s_f <= 1.0:
        raise RecipeError(f"need 0 <= initial_sparsity ({s_i}) <= target_sparsity ({s_f}) <= 1")
    out = []
    for t in range(1, steps + 1):
        f = t / steps
        if kind == "linear":
            s = s_i + (s_f - s_i) * f
        elif kind == "geometric":
            if s_f >= 1.0:
                raise RecipeError("a geometric schedule cannot reach sparsity 1.0; use 'linear' or a target below 1")
            s = 1.0 - (1.0 - s_i) * ((1.0 - s_f) / (1.0 - s_i)) ** f
        else:
            s = s_f + (s_i - s_f) * (1.0 - f) ** 3
        out.append(min(max(s, s_i), s_f))
    out[-1] = s_f
    for k in range(1, steps):  # guard against float wobble
        out[k] = max(out[k], out[k - 1])
    return out


def _resolve_criterion(criterion, model: nn.Module) -> Criterion:
    if criterion is None:
        return Magnitude()
    if isinstance(criterion, Criterion):
        return criterion
    if callable(criterion):
        c = criterion(model)
        if not isinstance(c, Criterion):
            raise RecipeError("a criterion factory must return a Criterion (e.g. lambda m: WandaCriterion.from_batches(m, batches))")
        return c
    raise RecipeError(f"criterion must be a Criterion or a function model -> Criterion, got {type(criterion).__name__}")


def iterative_prune(
    model: nn.Module,
    target: float | Mapping[str, float],
    steps: int,
    retrain_fn: Callable[[nn.Module, dict, int], object] | None = None,
    *,
    scope: str = "layer",
    criterion: Criterion | Callable[[nn.Module], Criterion] | None = None,
    kind: str = "linear",
    masks: Mapping[str, torch.Tensor] | None = None,
    progress: Callable[[int], Callable[[Iterable], Iterable]] | None = None,
    compute: Callable[..., dict[str, torch.Tensor]] = compute_masks,
) -> dict[str, torch.Tensor]:
    """Prune in ``steps`` rounds towards ``target`` sparsity, calling ``retrain_fn(model, masks, step)``
    after each round (step counts from 0). Returns the final masks.

    ``target`` is one sparsity, or ``{layer: sparsity}`` (each layer then follows its own schedule;
    with ``scope="layer"`` only). ``criterion`` may be a function ``model -> Criterion``, called
    before each round, so data-driven criteria (WANDA, relevance) are recalibrated on the retrained
    model. A weight pruned in one round is never revived: the new masks are intersected with the old
    ones, and the masks are re-applied after ``retrain_fn`` returns (so a retraining loop that forgets
    to hold pruned weights at zero cannot bring them back). ``progress(step)``, when given, returns the
    wrapper (a progress bar) that round's per-layer loop runs through. ``compute`` makes one round's
    masks, with :func:`compute_masks`' arguments (block pruning for int8 layers passes its own).
    """
    if isinstance(target, Mapping):
        if scope != "layer":
            raise RecipeError("a per-layer target map needs scope='layer'")
        plans = {name: iterative_schedule(s, steps, kind) for name, s in target.items()}
        amounts = [{name: plan[k] for name, plan in plans.items()} for k in range(int(steps))]
    else:
        amounts = iterative_schedule(target, steps, kind)
    current = {k: v.to(torch.bool).cpu() for k, v in masks.items()} if masks is not None else None
    if current is not None:
        apply_masks(model, current)
    for step, amount in enumerate(amounts):
        crit = _resolve_criterion(criterion, model)
        new = compute(model, amount, scope=scope, criterion=crit, masks=current,
                      progress=progress(step) if progress is not None else None)
        if current is not None:
            new = {k: (v & current[k]) if k in current else v for k, v in new.items()}
        current = new
        apply_masks(model, current)
        if retrain_fn is not None:
            retrain_fn(model, current, step)
            apply_masks(model, current)
    return current if current is not None else {}


# --- adaptive amounts -----------------------------------------------------------------------------

def pq_index(w: torch.Tensor, p: float = 0.5, q: float = 1.0, mask: torch.Tensor | None = None) -> float:
    """PQ Index of Diao et al. 2023: I(w) = 1 - d^(1/q - 1/p) ||w||_p / ||w||_q, with 0 < p < q.

    In [0, 1 - d^(1/q - 1/p)]: 0 for a vector whose entries all have the same magnitude, larger the
    more the magnitude is concentrated in few entries (the sparser / more compressible the weights).
    ``d`` counts the entries considered: all of ``w``, or those where ``mask`` is True (the weights
    still alive). A vector that is all zeros has index 1 by convention (nothing left to keep).
    """
    if not 0 < p < q:
        raise RecipeError(f"the PQ Index needs 0 < p < q, got p={p}, q={q}")
    v = w.detach().reshape(-1).double().abs()
    if mask is not None:
        v = v[mask.reshape(-1).to(device=v.device, dtype=torch.bool)]
    d = v.numel()
    if d == 0:
        return 1.0
    vmax = float(v.max())
    if vmax == 0.0:
        return 1.0
    v = v / vmax  # scale-invariant; avoids overflow of small-p powers
    norm_p = float(v.pow(p).sum()) ** (1.0 / p)
    norm_q = float(v.pow(q).sum()) ** (1.0 / q)
    return 1.0 - d ** (1.0 / q - 1.0 / p) * norm_p / norm_q


def _sap_prune_count(d: int, index: float, p: float, q: float, eta_r: float, gamma: float, beta: float) -> int:
    """How many of d remaining weights SAP removes: r = d (1+eta_r)^(-q/(q-p)) (1-I)^(qp/(q-p)) is the
    lower bound on the weights to retain, c = floor(d * min(gamma * (1 - r/d), beta))."""
    if d == 0:
        return 0
    r = d * (1.0 + eta_r) ** (-q / (q - p)) * max(1.0 - index, 0.0) ** (q * p / (q - p))
    frac = min(gamma * max(1.0 - r / d, 0.0), beta)
    return int(math.floor(d * frac))


def _check_sap(p, q, eta_r, gamma, beta):
    if not 0 < p < q:
        raise RecipeError(f"SAP needs 0 < p < q, got p={p}, q={q}")
    if eta_r < 0 or gamma < 0 or not 0 <= beta <= 1:
        raise RecipeError("SAP needs eta_r >= 0, gamma >= 0 and the maximum pruning ratio beta in [0, 1]")


def sap_amounts(
    model: nn.Module,
    *,
    p: float = 0.5,
    q: float = 1.0,
    eta_r: float = 0.0,
    gamma: float = 1.0,
    beta: float = 0.9,
    masks: Mapping[str, torch.Tensor] | None = None,
    scope: str = "layer",
    layers: Mapping[str, nn.Module] | None = None,
) -> dict[str, float] | float:
    """One round of Sparsity-informed Adaptive Pruning (SAP, Diao et al. 2023).

    For each layer (``scope="layer"``) or the whole model (``scope="global"``), the PQ Index of the
    remaining weights gives a lower bound r on how many must stay; SAP removes
    floor(d * min(gamma * (1 - r/d), beta)) of the d remaining ones. A high PQ Index (magnitude
    concentrated in few weights: a sparse, compressible layer) means a small r and so a large cut; a
    layer whose weights are all alike (index near 0) is left nearly untouched. ``eta_r`` >= 0 makes
    the bound looser (prunes more), ``gamma`` scales the cut, ``beta`` caps it per round.

    Returns cumulative sparsities in compute_masks' convention (already-pruned weights count):
    ``{layer: sparsity}`` for ``scope="layer"``, one float for ``scope="global"``.
    """
    _check_sap(p, q, eta_r, gamma, beta)
    layers = dict(layers) if layers is not None else prunable_layers(model)
    if scope not in ("layer", "global"):
        raise RecipeError(f"scope must be 'layer' or 'global', got {scope!r}")

    def alive(name, module):
        if masks is not None and name in masks:
            return masks[name].to(torch.bool).cpu()
        return torch.ones(module.weight.shape, dtype=torch.bool)

    if scope == "global":
        ws = torch.cat([m.weight.detach().reshape(-1).cpu() for m in layers.values()])
        ms = torch.cat([alive(n, m).reshape(-1) for n, m in layers.items()])
        d = int(ms.sum())
        c = _sap_prune_count(d, pq_index(ws, p, q, ms), p, q, eta_r, gamma, beta)
        return (ms.numel() - d + c) / max(ms.numel(), 1)
    out = {}
    for name, module in layers.items():
        m = alive(name, module)
        d = int(m.sum())
        c = _sap_prune_count(d, pq_index(module.weight, p, q, m), p, q, eta_r, gamma, beta)
        out[name] = (m.numel() - d + c) / m.numel()
    return out


def mean_column_norm_amounts(
    model: nn.Module,
    factor: float = 1.0,
    *,
    layers: Mapping[str, nn.Module] | None = None,
    skip_last: bool = True,
) -> dict[str, float]:
    """The dynamic "mean column norm" rule: in each layer, the units (output neurons / filters; the
    columns of a TensorFlow kernel, the rows of a torch weight) whose L2 norm is below ``factor`` x
    the layer's mean unit norm are pruned. Returns ``{layer: fraction of units to prune}``, which
    decides where and how much to prune without a user-chosen sparsity: feed it to
    ``prune_channels`` (removal) or to ``compute_masks`` with ``UnitNorm()`` (masks). When no unit is
    below the bar the fraction is 0 -- the signal to stop pruning. Units already zeroed count as
    norm 0 and stay pruned. ``skip_last`` leaves the model's last layer (the classes) alone.
    """
    if factor < 0:
        raise RecipeError(f"factor must be >= 0, got {factor}")
    layers = dict(layers) if layers is not None else prunable_layers(model)
    names = list(layers)
    out = {}
    for i, (name, module) in enumerate(layers.items()):
        if skip_last and i == len(names) - 1:
            continue
        w = module.weight.detach().float().cpu()
        norms = w.reshape(w.shape[0], -1).norm(dim=1)
        bar = factor * float(norms.mean())
        out[name] = float((norms < bar).sum()) / w.shape[0]
    return out


class AdaptivePruner:
    """Chooses per-layer sparsities itself, step after step (use between retraining rounds).

    ``rule="pqi"``: SAP (:func:`sap_amounts`), scoring weights with ``criterion`` (magnitude by
    default, as in the paper). ``rule="mean_column_norm"``: whole units below ``factor`` x the mean
    unit norm are masked (:func:`mean_column_norm_amounts` with the :class:`UnitNorm` criterion).

    ``step(model, masks)`` computes and applies new masks (never reviving pruned weights) and returns
    them; ``amounts(model, masks)`` only reports what it would do.
    """

    def __init__(self, rule: str = "pqi", *, p: float = 0.5, q: float = 1.0, eta_r: float = 0.0,
                 gamma: float = 1.0, beta: float = 0.9, factor: float = 1.0, scope: str = "layer",
                 criterion: Criterion | None = None):
        if rule not in ("pqi", "mean_column_norm"):
            raise RecipeError(f"AdaptivePruner rule must be 'pqi' or 'mean_column_norm', got {rule!r}")
        if rule == "pqi":
            _check_sap(p, q, eta_r, gamma, beta)
        self.rule, self.p, self.q, self.eta_r, self.gamma, self.beta = rule, p, q, eta_r, gamma, beta
        self.factor, self.scope, self.criterion = factor, scope, criterion

    def amounts(self, model: nn.Module, masks: Mapping[str, torch.Tensor] | None = None):
        if self.rule == "pqi":
            return sap_amounts(model, p=self.p, q=self.q, eta_r=self.eta_r, gamma=self.gamma,
                               beta=self.beta, masks=masks, scope=self.scope)
        return mean_column_norm_amounts(model, self.factor)

    def step(self, model: nn.Module, masks: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        amounts = self.amounts(model, masks)
        if self.rule == "pqi":
            new = compute_masks(model, amounts, scope=self.scope, criterion=self.criterion or Magnitude(),
                                masks=masks)
        else:
            # a fraction of units is the same fraction of weights (a unit is a whole row); layers
            # missing from the map (the last one) keep their current masks
            new = compute_masks(model, amounts, scope="layer", criterion=self.criterion or UnitNorm(), masks=masks)
        if masks is not None:
            new = {k: (v & masks[k].to(torch.bool).cpu()) if k in masks else v for k, v in new.items()}
        apply_masks(model, new)
        return new
