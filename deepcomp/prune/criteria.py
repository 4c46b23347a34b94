"""Importance criteria: one small object per criterion, with one method.

A criterion scores every weight of a layer; pruning keeps the highest scores. A new criterion is one
new class here and nothing else changes (the pruners take it as an argument).
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping

import torch
from torch import nn

from deepcomp.errors import RecipeError
from deepcomp.prune.attention import PackedProjection

LINEAR = (nn.Linear, PackedProjection)  # layers whose weight is [outputs, inputs]


class Criterion:
    """Scores the weights of one layer: a tensor of the weight's shape, higher means more important.

    ``name`` is the layer's qualified name in the model, ``module`` the Conv2d or Linear itself.
    Scores must be comparable across layers when the criterion is used for global pruning.
    """

    name = "criterion"

    def score(self, name: str, module: nn.Module) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Magnitude(Criterion):
    """|w| (L1), the criterion of Deep Compression and torch.nn.utils.prune.l1_unstructured."""

    name = "magnitude"

    def score(self, name: str, module: nn.Module) -> torch.Tensor:
        return module.weight.detach().abs()


def _row_ranks(scores: torch.Tensor) -> torch.Tensor:
    """Replace each score by its rank inside its output row, scaled to (0, 1].

    compute_masks compares scores across the whole layer; after this transform every row holds the
    same ranks 1/n .. n/n, so a per-layer amount removes the same number of weights from every row
    (exactly when amount * row length is a whole number, otherwise rows differ by at most one, the
    extra kept weights going to the first rows). Ties inside a row keep their original order.
    """
    rows = scores.reshape(scores.shape[0], -1)
    n = rows.shape[1]
    order = torch.argsort(rows, dim=1, stable=True)
    ranks = torch.empty_like(rows, dtype=torch.float32)
    ranks.scatter_(1, order, torch.arange(1, n + 1, dtype=torch.float32).expand_as(rows).contiguous() / n)
    return ranks.view_as(scores)


def _check_group(group: str) -> str:
    if group not in ("row", "layer"):
        raise RecipeError(f"group must be 'row' (compare weights within each output row) or 'layer', got {group!r}")
    return group


class WandaCriterion(Criterion):
    """WANDA (Sun et al. 2023): |W_ij| * ||X_j||_2, the weight times the norm of the input it multiplies.

    ``norms`` come from :func:`deepcomp.prune.calibrate.collect_activation_norms` (or build the
    criterion with :meth:`from_batches`). For a Conv2d the norm is taken per input channel and kernel
    offset (the unfolded convolution), so the score is WANDA's on the im2col matrix.

    ``group="row"`` (the paper's choice, default) makes the comparison group each output row (each
    output neuron / filter): scores are turned into within-row ranks, so a per-layer ``amount``
    removes that fraction from every row. With ``scope="global"`` that means the same sparsity in every
    row of every layer. ``group="layer"`` returns the raw products, compared across the layer (or the
    model, with ``scope="global"``).
    """

    name = "wanda"

    def __init__(self, norms: Mapping[str, torch.Tensor], group: str = "row"):
        self.norms = {k: v.detach().float().cpu() for k, v in norms.items()}
        self.group = _check_group(group)

    @classmethod
    def from_batches(cls, model: nn.Module, batches: Iterable, *, group: str = "row",
                     layers: Iterable[str] | None = None) -> "WandaCriterion":
        """Run the calibration batches through ``model`` and build the criterion."""
        from deepcomp.prune.calibrate import collect_activation_norms
        return cls(collect_activation_norms(model, batches, layers), group=group)

    def _expanded_norms(self, name: str, module: nn.Module) -> torch.Tensor:
        if name not in self.norms:
            raise RecipeError(f"WANDA has no activation norms for layer {name!r}; calibrate every layer you "
                              "prune (collect_activation_norms(model, batches) with layers=None)")
        norms = self.norms[name]
        w = module.weight
        if isinstance(module, LINEAR):
            if norms.shape != (w.shape[1],):
                raise RecipeError(f"activation norms of {name} have shape {tuple(norms.shape)}, the layer takes "
                                  f"{w.shape[1]} inputs; recalibrate after changing the model")
            return norms.unsqueeze(0)
        if isinstance(module, nn.Conv2d):
            g = module.groups
            cin = w.shape[1] * g
            if norms.shape != (cin, *w.shape[2:]):
                raise RecipeError(f"activation norms of {name} have shape {tuple(norms.shape)}, expected "
                                  f"{(cin, *w.shape[2:])}; recalibrate after changing the model")
            if g == 1:
                return norms.unsqueeze(0)
            per_group = norms.reshape(g, w.shape[1], *w.shape[2:])
            return per_group.repeat_interleave(w.shape[0] // g, dim=0)
        raise RecipeError(f"WANDA scores Conv2d and Linear layers, not {type(module).__name__} ({name})")

    def score(self, name: str, module: nn.Module) -> torch.Tensor:
        w = module.weight.detach().float().cpu().abs()
        s = w * self._expanded_norms(name, module)
        return _row_ranks(s) if self.group == "row" else s

    def __repr__(self) -> str:
        return f"WandaCriterion(group={self.group!r}, layers={len(self.norms)})"


class RelevanceCriterion(Criterion):
    """Relevance of each weight, accumulated over calibration batches (explainable-AI pruning).

    Two rules, chosen with ``rule`` in :meth:`from_batches`:

    * ``"lrp0"`` (default): LRP-0 relevance of each weight for the target-class logit (the label ``y``
      of each sample, or the predicted class for bare inputs), summed over samples; the score is its
      absolute value. LRP-0's weight relevance a_i * w_ij * R_j / z_j equals w_ij * d f_c / d w_ij in a
      network of linear layers, ReLUs, max pooling and eval-mode BatchNorm, so it is computed exactly
      with autograd as weight x gradient of the summed target logits. (Yeom et al. 2021, "Pruning by
      explaining", use the LRP-epsilon / z+ rules; those differ from LRP-0 only in stabilisers and in
      treating negative contributions, and are not implemented.)
    * ``"taylor"``: first-order Taylor relevance |w * dL/dw| of the loss, taken per batch and summed
      over batches (Molchanov et al.), so sign changes between batches do not cancel.

    The scores are on one scale for every layer (relevance is conserved through the network), so
    ``scope="global"`` is meaningful. Summed over a filter's weights, the score ranks filters for
    structured pruning (``prune_channels(..., criterion=RelevanceCriterion(...))``).
    """

    name = "relevance"

    def __init__(self, relevance: Mapping[str, torch.Tensor], rule: str = "lrp0"):
        self.relevance = {k: v.detach().float().cpu().abs() for k, v in relevance.items()}
        self.rule = rule

    @classmethod
    def from_batches(cls, model: nn.Module, batches: Iterable, *, rule: str = "lrp0",
                     loss_fn: Callable | None = None, layers: Iterable[str] | None = None) -> "RelevanceCriterion":
        from deepcomp.prune.calibrate import collect_gradients
        if rule == "taylor":
            rel = collect_gradients(model, batches, loss_fn, layers, average=False,
                                    accumulate=lambda n, m, g: (m.weight.detach() * g).abs())
        elif rule == "lrp0":
            def target_logits(out: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
                if out.dim() != 2:
                    raise RecipeError("LRP relevance needs a classifier output of shape (batch, classes); "
                                      "use rule='taylor' with a loss for other models")
                idx = out.argmax(1) if y is None else y.reshape(-1).long()
                return out.gather(1, idx.unsqueeze(1)).sum()
            rel = collect_gradients(model, batches, None, layers, average=False, objective=target_logits,
                                    accumulate=lambda n, m, g: m.weight.detach() * g)
        else:
            raise RecipeError(f"relevance rule must be 'lrp0' or 'taylor', got {rule!r}")
        return cls(rel, rule=rule)

    def score(self, name: str, module: nn.Module) -> torch.Tensor:
        if name not in self.relevance:
            raise RecipeError(f"no relevance was collected for layer {name!r}; build the criterion with "
                              "RelevanceCriterion.from_batches(model, batches) on the model you prune")
        r = self.relevance[name]
        if r.shape != module.weight.shape:
            raise RecipeError(f"relevance of {name} has shape {tuple(r.shape)} but the weight is "
                              f"{tuple(module.weight.shape)}; recompute it on the current model")
        return r

    def __repr__(self) -> str:
        return f"RelevanceCriterion(rule={self.rule!r}, layers={len(self.relevance)})"


class UnitNorm(Criterion):
    """Unit pruning in mask form: every weight scores the L2 norm of its output row (neuron / filter).

    compute_masks then zeroes whole units, smallest norm first (the "unit pruning" of the project's
    seeds). The amount is still counted in weights: when it is not a whole number of rows, the
    boundary row is cut partly. To physically remove units use
    :func:`deepcomp.prune.structured.prune_channels`.
    """

    name = "unit_norm"

    def score(self, name: str, module: nn.Module) -> torch.Tensor:
        w = module.weight.detach().float().cpu()
        norms = w.reshape(w.shape[0], -1).norm(dim=1)
        return norms.view(-1, *([1] * (w.dim() - 1))).expand_as(w).clone()
