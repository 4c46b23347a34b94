"""Channel planning: score each channel group and decide which of its channels stay.

A :class:`ChannelCriterion` scores the output channels of one layer. A group with several producers
(the convolutions whose outputs a residual add ties together) scores a channel by the mean of its
producers' scores, the way Torch-Pruning's group importance reduces over a group.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch
from torch import nn

from deepcomp.errors import RecipeError
from deepcomp.prune.criteria import Criterion
from deepcomp.prune.structured.trace import ChannelGroup, find_channel_groups


class ChannelCriterion:
    """Scores the output channels of one layer: a tensor of shape (out_channels,), higher = keep.

    ``bn`` is the BatchNorm that directly normalises the layer's output, or None.
    """

    name = "channel"

    def score(self, name: str, module: nn.Module, bn: nn.Module | None) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class FilterL1(ChannelCriterion):
    """Sum of |w| over each filter (Li et al. 2017, "Pruning Filters for Efficient ConvNets")."""

    name = "l1"

    def score(self, name, module, bn):
        w = module.weight.detach().float().cpu()
        return w.reshape(w.shape[0], -1).abs().sum(1)


class FilterL2(ChannelCriterion):
    """L2 norm of each filter / neuron's weights."""

    name = "l2"

    def score(self, name, module, bn):
        w = module.weight.detach().float().cpu()
        return w.reshape(w.shape[0], -1).norm(dim=1)


class BNScale(ChannelCriterion):
    """|gamma| of the BatchNorm after the layer (network slimming, Liu et al. 2017).

    Comparable across layers, so it is the criterion for global channel selection. A group none of
    whose producers is followed by a BatchNorm has no score; it is skipped.
    """

    name = "bn"

    def score(self, name, module, bn):
        if bn is None or bn.weight is None:
            raise NoScore(f"no affine BatchNorm follows {name}, so the BN-gamma criterion cannot score it")
        return bn.weight.detach().float().cpu().abs()


class SummedWeightScores(ChannelCriterion):
    """A weight criterion (e.g. RelevanceCriterion, WandaCriterion(group='layer')) summed over each filter."""

    def __init__(self, criterion: Criterion):
        self.criterion = criterion
        self.name = f"sum({getattr(criterion, 'name', 'criterion')})"

    def score(self, name, module, bn):
        s = self.criterion.score(name, module).detach().float().cpu()
        return s.reshape(s.shape[0], -1).sum(1)

    def __repr__(self) -> str:
        return f"SummedWeightScores({self.criterion!r})"


class NoScore(Exception):
    """Raised by a criterion that cannot score a layer; the layer's group is skipped."""


CHANNEL_CRITERIA = {"l1": FilterL1, "l2": FilterL2, "bn": BNScale, "bn_gamma": BNScale, "slimming": BNScale}


def resolve_channel_criterion(criterion) -> ChannelCriterion:
    if isinstance(criterion, ChannelCriterion):
        return criterion
    if isinstance(criterion, Criterion):
        return SummedWeightScores(criterion)
    if isinstance(criterion, str):
        key = criterion.lower()
        if key == "relevance":
            raise RecipeError("the relevance criterion needs data: pass "
                              "criterion=RelevanceCriterion.from_batches(model, batches)")
        if key in CHANNEL_CRITERIA:
            return CHANNEL_CRITERIA[key]()
    raise RecipeError(f"unknown channel criterion {criterion!r}; use 'l1', 'l2', 'bn', a ChannelCriterion "
                      "or a weight Criterion such as RelevanceCriterion")


@dataclass
class ChannelPlan:
    """What prune_channels will do: the kept channels of each pruned group (sorted indices), by group
    name (its first producer)."""

    groups: dict[str, ChannelGroup]
    skipped: dict[str, str]
    keep: dict[str, torch.Tensor] = field(default_factory=dict)

    def removed(self) -> dict[str, int]:
        return {n: self.groups[n].channels - len(k) for n, k in self.keep.items()}

    def group_of(self, layer: str) -> str | None:
        """The name of the group whose output channels ``layer`` (a producer or depthwise conv) carries."""
        return next((n for n, g in self.groups.items() if layer in g.layers), None)


def group_scores(crit: ChannelCriterion, group: ChannelGroup, modules: Mapping[str, nn.Module]) -> torch.Tensor:
    """One score per channel of the group: the mean over its producers that the criterion can score."""
    scores, why = [], None
    for slot in group.producers:
        bn_name = group.direct_bns.get(slot.layer)  # never "": that key is the root module
        bn = modules[bn_name] if bn_name else None
        try:
            s = crit.score(slot.layer, modules[slot.layer], bn).detach().float().cpu().reshape(-1)
        except NoScore as e:
            why = why or str(e)
            continue
        if s.numel() != group.channels:
            raise RecipeError(f"{crit!r} gave {s.numel()} scores for {slot.layer}, which has {group.channels} channels")
        scores.append(s)
    if not scores:
        raise NoScore(why)
    return torch.stack(scores).mean(0)


def _n_remove(amount: float, channels: int, min_channels: int, what: str) -> int:
    try:
        amount = float(amount)
    except (TypeError, ValueError):
        raise RecipeError(f"{what} must be a fraction in [0, 1], got {amount!r}") from None
    if not 0.0 <= amount <= 1.0:
        raise RecipeError(f"{what} must be a fraction in [0, 1], got {amount}")
    return max(0, min(int(round(amount * channels)), channels - min_channels))


def _targets(amount, groups: dict[str, ChannelGroup], skipped: dict[str, str]) -> dict[str, float]:
    """{group name: fraction} from one fraction or a {layer: fraction} map."""
    if not isinstance(amount, Mapping):
        return {name: amount for name in groups}
    owner = {layer: name for name, g in groups.items() for layer in g.layers}
    targets: dict[str, float] = {}
    for layer, frac in amount.items():
        if layer in skipped:
            raise RecipeError(f"layer {layer!r} cannot lose channels: {skipped[layer]}")
        if layer not in owner:
            raise RecipeError(f"{layer!r} is not a Conv2d/Linear layer that forward() reaches; "
                              f"prunable layers: {sorted(owner)}")
        name = owner[layer]
        if name in targets and targets[name] != frac:
            raise RecipeError(f"{layer!r} shares its channels with {sorted(groups[name].layers)} (they meet at "
                              f"a residual add); give them one fraction, not {targets[name]} and {frac}")
        targets[name] = frac
    return targets


def plan_channel_pruning(
    model: nn.Module,
    amount: float | Mapping[str, float],
    criterion="l1",
    *,
    example_input_shape: Sequence[int] | None = None,
    example_input: torch.Tensor | None = None,
    scope: str = "layer",
    min_channels: int = 1,
) -> ChannelPlan:
    """Decide which channels each group keeps (see :func:`deepcomp.prune.prune_channels`)."""
    if scope not in ("layer", "global"):
        raise RecipeError(f"scope must be 'layer' or 'global', got {scope!r}")
    if isinstance(amount, Mapping) and scope == "global":
        raise RecipeError("global channel pruning takes one fraction, not a per-layer map")
    if isinstance(min_channels, bool) or int(min_channels) != min_channels or min_channels < 1:
        raise RecipeError(f"min_channels must be a whole number >= 1, got {min_channels!r}")
    crit = resolve_channel_criterion(criterion)
    groups, skipped = find_channel_groups(model, example_input_shape=example_input_shape, example_input=example_input)
    modules = dict(model.named_modules())
    targets = _targets(amount, groups, skipped)

    scores = {}
    for name in targets:
        try:
            scores[name] = group_scores(crit, groups[name], modules)
        except NoScore as why:
            if isinstance(amount, Mapping):
                raise RecipeError(str(why)) from None
            for layer in groups[name].layers:
                skipped.setdefault(layer, str(why))

    plan = ChannelPlan({n: g for n, g in groups.items() if n in scores or n not in targets}, skipped)
    if scope == "layer":
        for name, s in scores.items():
            k = _n_remove(targets[name], s.numel(), min_channels, f"amount for {name}")
            order = torch.argsort(s, stable=True)  # ascending: the first k go
            plan.keep[name] = torch.sort(order[k:]).values
        return plan

    # global: one threshold over every group's scores
    n_total = _n_remove(amount, sum(s.numel() for s in scores.values()), 0, "amount")
    entries = sorted((float(v), name, i) for name, s in scores.items() for i, v in enumerate(s.tolist()))
    left = {name: s.numel() for name, s in scores.items()}
    drop: dict[str, set[int]] = {name: set() for name in scores}
    removed = 0
    for _, name, i in entries:
        if removed >= n_total:
            break
        if left[name] > min_channels:
            drop[name].add(i)
            left[name] -= 1
            removed += 1
    for name, s in scores.items():
        plan.keep[name] = torch.tensor([i for i in range(s.numel()) if i not in drop[name]], dtype=torch.long)
    return plan
