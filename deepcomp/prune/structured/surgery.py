"""Channel surgery: rebuild the layers of a model smaller (or zero the removed channels in place).

Each layer may be a member of several groups (a convolution that reads a DenseNet concat consumes
the channels of every layer before it), so the removed indices are first gathered per layer and
dimension -- output rows of producers, depthwise convolutions and BatchNorms; input columns of
consumers -- and every layer is cut once.
"""

from __future__ import annotations

import copy
import itertools
from typing import Mapping, Sequence

import torch
from torch import nn

from deepcomp.errors import RecipeError
from deepcomp.prune.structured.plan import ChannelPlan, plan_channel_pruning


def removed_indices(plan: ChannelPlan) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The removed output rows and input columns of every layer the plan changes, as sorted indices."""
    rows: dict[str, list[torch.Tensor]] = {}
    cols: dict[str, list[torch.Tensor]] = {}
    for name, keep in plan.keep.items():
        group = plan.groups[name]
        gone = torch.ones(group.channels, dtype=torch.bool)
        gone[keep] = False
        gone = torch.nonzero(gone).reshape(-1)
        if not len(gone):
            continue
        for slots, into in ((group.producers + group.depthwise + group.bns, rows), (group.consumers, cols)):
            for s in slots:
                idx = (gone.unsqueeze(1) * s.per_channel + torch.arange(s.per_channel)).reshape(-1) + s.offset
                into.setdefault(s.layer, []).append(idx)
    cat = lambda d: {k: torch.sort(torch.cat(v)).values for k, v in d.items()}  # noqa: E731
    return cat(rows), cat(cols)


def _device(mod: nn.Module) -> torch.device:
    return next(itertools.chain(mod.parameters(), mod.buffers()), torch.empty(0)).device


def _kept(n: int, gone: torch.Tensor, mod: nn.Module) -> torch.Tensor:
    keep = torch.ones(n, dtype=torch.bool)
    keep[gone] = False
    return torch.nonzero(keep).reshape(-1).to(_device(mod))


def _set_param(module: nn.Module, attr: str, value: torch.Tensor) -> None:
    old = getattr(module, attr)
    setattr(module, attr, nn.Parameter(value.contiguous(), requires_grad=old.requires_grad))


def _cut_rows(mod: nn.Module, gone: torch.Tensor) -> None:
    n = mod.num_features if isinstance(mod, nn.modules.batchnorm._BatchNorm) else mod.weight.shape[0]
    k = _kept(n, gone, mod)
    for attr in ("weight", "bias"):
        if getattr(mod, attr, None) is not None:
            _set_param(mod, attr, getattr(mod, attr).index_select(0, k))
    if isinstance(mod, nn.modules.batchnorm._BatchNorm):
        for attr in ("running_mean", "running_var"):
            if getattr(mod, attr) is not None:
                setattr(mod, attr, getattr(mod, attr).index_select(0, k))
        mod.num_features = len(k)
    elif isinstance(mod, nn.Conv2d):
        if mod.groups > 1:  # depthwise: its input channels and groups follow its output channels
            mod.in_channels = mod.groups = len(k)
        mod.out_channels = len(k)
    else:
        mod.out_features = len(k)


def _cut_cols(mod: nn.Module, gone: torch.Tensor) -> None:
    k = _kept(mod.weight.shape[1], gone, mod)
    _set_param(mod, "weight", mod.weight.index_select(1, k))
    if isinstance(mod, nn.Conv2d):
        mod.in_channels = len(k)
    else:
        mod.in_features = len(k)


@torch.no_grad()
def _remove(model: nn.Module, plan: ChannelPlan) -> None:
    modules = dict(model.named_modules())
    rows, cols = removed_indices(plan)
    for name, gone in rows.items():
        _cut_rows(modules[name], gone)
    for name, gone in cols.items():
        _cut_cols(modules[name], gone)


@torch.no_grad()
def _zero(model: nn.Module, plan: ChannelPlan) -> None:
    modules = dict(model.named_modules())
    rows, cols = removed_indices(plan)
    for name, gone in rows.items():
        mod = modules[name]
        for attr in ("weight", "bias"):
            if getattr(mod, attr, None) is not None:
                getattr(mod, attr)[gone.to(_device(mod))] = 0
    for name, gone in cols.items():
        mod = modules[name]
        mod.weight[:, gone.to(mod.weight.device)] = 0


def apply_channel_plan(model: nn.Module, plan: ChannelPlan, mode: str = "remove") -> nn.Module:
    """A deep copy of ``model`` with the plan applied.

    ``mode="remove"`` rebuilds the layers smaller. ``mode="zero"`` keeps every shape and zeroes the
    removed channels instead (the producers' and depthwise convolutions' filters and biases, the
    BatchNorms' gamma and beta, and the input columns that read them in the consumers): the same
    function as the removed model, for checking or for retraining with channel masks.
    """
    if mode not in ("remove", "zero"):
        raise RecipeError(f"mode must be 'remove' or 'zero', got {mode!r}")
    new = copy.deepcopy(model)
    (_remove if mode == "remove" else _zero)(new, plan)
    return new


def prune_channels(
    model: nn.Module,
    amount: float | Mapping[str, float],
    criterion="l1",
    *,
    example_input_shape: Sequence[int] | None = None,
    example_input: torch.Tensor | None = None,
    scope: str = "layer",
    min_channels: int = 1,
    return_plan: bool = False,
):
    """Remove a fraction of the output channels (filters of Conv2d, neurons of Linear) and return a
    new, smaller model of the same class. ``model`` itself is not changed.

    Channels that meet at a residual add (ResNet, MobileNetV2) are one group: they are scored and
    removed together from every convolution, BatchNorm and depthwise convolution that carries them
    and every layer that reads them; channels that feed a concat (DenseNet, GoogLeNet) are removed
    from every layer that reads the concat. Channels that reach the model's output (the classifier)
    or an operation the tracer does not follow stay; ``plan.skipped`` lists those layers and why.

    ``amount``: fraction of each group's channels to remove, or ``{layer: fraction}`` (a layer names
    its group; naming one that cannot be pruned raises RecipeError saying why). With
    ``scope="global"`` one fraction of all prunable channels goes, chosen by one threshold over the
    criterion's scores (they must be comparable across layers, as BN-gamma is). At least
    ``min_channels`` channels stay in every group; counts are rounded.

    ``criterion``: ``"l1"`` (Li et al.), ``"l2"``, ``"bn"`` (|gamma| of the BatchNorm after each
    producer; groups without one are skipped), a :class:`ChannelCriterion`, or a weight
    :class:`Criterion` (such as ``RelevanceCriterion``) whose scores are summed over each filter.
    A group's channel score is the mean over its producers.

    ``example_input_shape`` is the shape of one sample, such as ``(3, 224, 224)`` (``(1, 3, 224,
    224)`` is accepted too), or pass ``example_input``, a batch. With ``return_plan=True`` returns
    ``(new_model, plan)``.
    """
    plan = plan_channel_pruning(model, amount, criterion, example_input_shape=example_input_shape,
                                example_input=example_input, scope=scope, min_channels=min_channels)
    new = apply_channel_plan(model, plan, "remove")
    return (new, plan) if return_plan else new
