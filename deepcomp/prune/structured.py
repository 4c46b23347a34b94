"""Structured pruning that really shrinks the model: whole filters / neurons are removed.

Removing output channel c of a Conv2d (or output neuron c of a Linear -- the seeds' "unit pruning")
removes row c of its weight and bias, entry c of a BatchNorm that normalises that output, and the
input channel(s) fed by c in every layer that consumes it: input channel c of a following Conv2d,
input feature c of a following Linear, or the block of features c*S .. c*S+S-1 of a Linear that
sits after a flatten of S spatial positions per channel.

The producer -> consumer edges come from a torch.fx trace of the model and shapes from one forward
pass on an example input. A layer is pruned only when everything its output reaches, through
channel-wise operations (activations, pooling, dropout, BatchNorm, flatten), is a Conv2d (groups=1)
or a Linear that it can shrink. A layer is *skipped* -- and listed with the reason in
``ChannelPlan.skipped`` -- when its output reaches anything else: a residual ``add``, a ``cat``, a
grouped or depthwise convolution, the model's output (the classifier), an operation deepcomp does not
know. So on a ResNet only the inner convolutions of each block are pruned; the channels joined by an
add are left whole (coupled pruning of residual groups is not implemented).

The pruned model is a new module (a deep copy; the input is never changed) of the same class with
smaller layers. In eval mode its outputs equal those of the original in which the removed channels'
contributions to the following layers are zeroed -- ``apply_channel_plan(model, plan, mode="zero")``
builds that same-shape reference.
"""

from __future__ import annotations

import copy
import math
import operator
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from deepcomp.errors import RecipeError, UnsupportedOpError
from deepcomp.prune.criteria import Criterion

BN = (nn.BatchNorm1d, nn.BatchNorm2d)
PASS_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid, nn.Tanh,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout,
    nn.Identity, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
)
PASS_FUNCTIONS = {
    F.relu, torch.relu, F.relu_, torch.relu_, F.relu6, F.leaky_relu, F.elu, F.selu, F.gelu, F.silu, F.mish,
    F.hardswish, F.hardsigmoid, F.hardtanh, F.softplus, torch.sigmoid, torch.tanh, F.sigmoid, F.tanh,
    F.dropout, F.dropout1d, F.dropout2d, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d,
}
PASS_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "contiguous", "clone", "detach"}
HARMLESS_METHODS = {"size", "dim"}


# --- channel criteria -----------------------------------------------------------------------------

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

    Comparable across layers, so it is the criterion for global channel selection. A layer not
    followed by a BatchNorm has no score; it is skipped.
    """

    name = "bn"

    def score(self, name, module, bn):
        if bn is None or bn.weight is None:
            raise _NoScore(f"no affine BatchNorm follows {name}, so the BN-gamma criterion cannot score it")
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


class _NoScore(Exception):
    pass


CHANNEL_CRITERIA = {"l1": FilterL1, "l2": FilterL2, "bn": BNScale, "bn_gamma": BNScale, "slimming": BNScale}


def _resolve_channel_criterion(criterion) -> ChannelCriterion:
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


# --- graph analysis -------------------------------------------------------------------------------

@dataclass
class ChannelGroup:
    """One prunable layer and everything that shrinks with it.

    ``bns`` and ``consumers`` are ``(layer name, S)``: S features per channel (1 before any flatten,
    H*W after flattening an H x W map).
    """

    producer: str
    channels: int
    bns: list[tuple[str, int]] = field(default_factory=list)
    consumers: list[tuple[str, int]] = field(default_factory=list)


@dataclass
class ChannelPlan:
    """What prune_channels will do: the kept output channels of each pruned layer (sorted indices)."""

    groups: dict[str, ChannelGroup]
    skipped: dict[str, str]
    keep: dict[str, torch.Tensor] = field(default_factory=dict)

    def removed(self) -> dict[str, int]:
        return {n: self.groups[n].channels - len(k) for n, k in self.keep.items()}


def _trace(model: nn.Module) -> torch.fx.GraphModule:
    try:
        return torch.fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many types for untraceable code
        raise UnsupportedOpError(
            f"structured pruning needs a torch.fx-traceable model; tracing {type(model).__name__} failed "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). Remove data-dependent "
            "control flow from forward(), or prune with unstructured masks instead") from exc


def _example(model: nn.Module, example_input_shape, example_input):
    if example_input is not None:
        return example_input
    if example_input_shape is None:
        raise RecipeError("structured pruning needs example_input_shape=(1, C, H, W) (or (1, features)) to "
                          "follow shapes through flatten; pass the shape of one input batch")
    try:
        shape = tuple(int(s) for s in example_input_shape)
    except (TypeError, ValueError):
        raise RecipeError(f"example_input_shape must be a tuple of ints, got {example_input_shape!r}") from None
    p = next(iter(model.parameters()), None)
    return torch.zeros(shape, dtype=p.dtype if p is not None else torch.float32,
                       device=p.device if p is not None else "cpu")


def _shape(node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, torch.fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _propagate_shapes(gm: torch.fx.GraphModule, model: nn.Module, example) -> None:
    from torch.fx.passes.shape_prop import ShapeProp
    modes = {m: m.training for m in model.modules()}
    model.eval()
    gm.eval()
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(example)
    except Exception as exc:
        raise RecipeError(f"the example input of shape {tuple(example.shape)} does not run through the model "
                          f"({type(exc).__name__}: {exc}); pass the shape of a real input batch") from exc
    finally:
        for m, t in modes.items():
            m.training = t


def _flatten_dims(node) -> tuple[int, int] | None:
    """(start_dim, end_dim) of a flatten call, or None if the node is not a flatten."""
    if node.op == "call_function" and node.target is torch.flatten or node.op == "call_method" and node.target == "flatten":
        args = list(node.args[1:])
        start = node.kwargs.get("start_dim", args[0] if args else 0)
        end = node.kwargs.get("end_dim", args[1] if len(args) > 1 else -1)
        return start, end
    return None


def _other_inputs_are_constant(node, src) -> bool:
    """True when the node's only tensor input is ``src`` (first argument)."""
    if not node.args or node.args[0] is not src:
        return False
    nodes = [a for a in list(node.args[1:]) + list(node.kwargs.values()) if isinstance(a, torch.fx.Node)]
    return not nodes


def _is_harmless(node) -> bool:
    if node.op == "call_method" and node.target in HARMLESS_METHODS:
        return True
    if node.op == "call_function" and node.target is getattr and len(node.args) > 1 and node.args[1] in ("shape", "dtype", "device"):
        return True
    return False


def _follow(gm, modules, call_sites, start, channels):
    """Walk from a producer's output to the layers that consume its channels. Returns (bns, consumers)
    or raises _Skip with the reason."""
    bns, consumers = [], []
    stack = [(start, 1)]
    seen = set()
    while stack:
        node, S = stack.pop()
        if (node, S) in seen:
            continue
        seen.add((node, S))
        if not node.users:
            raise _Skip("its output is not used")
        for user in node.users:
            if _is_harmless(user):
                continue
            if user.op == "output":
                raise _Skip("its output is the model's output")
            if user.op == "call_module":
                mod = modules[user.target]
                if user.args[0] is not node or len(user.args) > 1 or user.kwargs:
                    raise _Skip(f"it feeds {user.target} in an unsupported way")
                if isinstance(mod, BN):
                    if mod.num_features != channels * S or call_sites[user.target] > 1:
                        raise _Skip(f"BatchNorm {user.target} does not match its channels")
                    bns.append((user.target, S))
                    stack.append((user, S))
                elif isinstance(mod, PASS_MODULES):
                    stack.append((user, S))
                elif isinstance(mod, nn.Flatten):
                    in_shape = _shape(node)
                    if mod.start_dim != 1 or in_shape is None or mod.end_dim not in (-1, len(in_shape) - 1):
                        raise _Skip(f"it is flattened by {user.target} in a way that mixes the batch dimension")
                    stack.append((user, S * math.prod(in_shape[2:])))
                elif isinstance(mod, nn.Conv2d):
                    if S != 1:
                        raise _Skip(f"it reaches convolution {user.target} after a flatten")
                    if mod.groups != 1:
                        raise _Skip(f"it feeds grouped/depthwise convolution {user.target}")
                    if mod.in_channels != channels or call_sites[user.target] > 1:
                        raise _Skip(f"it feeds {user.target} whose input does not match its channels")
                    consumers.append((user.target, 1))
                elif isinstance(mod, nn.Linear):
                    shape = _shape(node)
                    if shape is None or len(shape) != 2 or mod.in_features != channels * S or call_sites[user.target] > 1:
                        raise _Skip(f"it feeds Linear {user.target} on a tensor whose last dimension is not its channels")
                    consumers.append((user.target, S))
                else:
                    raise _Skip(f"it feeds {type(mod).__name__} {user.target}, which channel pruning does not handle")
            elif user.op in ("call_function", "call_method"):
                dims = _flatten_dims(user)
                if dims is not None:
                    in_shape = _shape(node)
                    if in_shape is None or user.args[0] is not node or dims[0] != 1 or dims[1] not in (-1, len(in_shape) - 1):
                        raise _Skip("it is flattened in a way that mixes the batch dimension")
                    stack.append((user, S * math.prod(in_shape[2:])))
                elif user.op == "call_method" and user.target in ("view", "reshape") and user.args[0] is node:
                    in_shape, out_shape = _shape(node), _shape(user)
                    if in_shape is None or out_shape is None or len(out_shape) != 2 or out_shape[0] != in_shape[0] \
                            or out_shape[1] != math.prod(in_shape[1:]):
                        raise _Skip(f"its output is reshaped ({user.target}) other than into (batch, features)")
                    stack.append((user, S * math.prod(in_shape[2:])))
                elif (user.target in PASS_FUNCTIONS if user.op == "call_function" else user.target in PASS_METHODS) \
                        and _other_inputs_are_constant(user, node):
                    stack.append((user, S))
                else:
                    what = getattr(user.target, "__name__", str(user.target))
                    if user.target in (operator.add, torch.add, operator.iadd, torch.cat, torch.concat) or what in ("add", "add_", "cat"):
                        raise _Skip(f"its output joins a residual add / concatenation ({what}); coupled channels are not pruned")
                    raise _Skip(f"its output goes through {what}, which channel pruning does not handle")
            else:
                raise _Skip(f"its output is used by a {user.op} node")
    if not consumers:
        raise _Skip("no layer consumes its channels")
    return bns, consumers


class _Skip(Exception):
    pass


def find_channel_groups(
    model: nn.Module,
    *,
    example_input_shape: Sequence[int] | None = None,
    example_input: torch.Tensor | None = None,
) -> tuple[dict[str, ChannelGroup], dict[str, str]]:
    """The prunable layers with what shrinks with each, and the skipped layers with the reason."""
    gm = _trace(model)
    _propagate_shapes(gm, model, _example(model, example_input_shape, example_input))
    modules = dict(model.named_modules())
    call_sites: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            call_sites[node.target] = call_sites.get(node.target, 0) + 1
    groups, skipped = {}, {}
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        mod = modules.get(node.target)
        if not isinstance(mod, (nn.Conv2d, nn.Linear)) or node.target in groups or node.target in skipped:
            continue
        name = node.target
        try:
            if call_sites[name] > 1:
                raise _Skip("the layer is called more than once in forward()")
            if isinstance(mod, nn.Conv2d) and mod.groups != 1:
                raise _Skip("grouped/depthwise convolutions are not pruned")
            if isinstance(mod, nn.Linear) and (_shape(node) is None or len(_shape(node)) != 2):
                raise _Skip("a Linear is pruned only when its output is (batch, features)")
            channels = mod.out_channels if isinstance(mod, nn.Conv2d) else mod.out_features
            bns, consumers = _follow(gm, modules, call_sites, node, channels)
            groups[name] = ChannelGroup(name, channels, bns, consumers)
        except _Skip as why:
            skipped[name] = str(why)
    return groups, skipped


# --- planning -------------------------------------------------------------------------------------

def _direct_bn(model_modules, group: ChannelGroup):
    for bn_name, S in group.bns:
        if S == 1:
            return model_modules[bn_name]
    return None


def _n_remove(amount: float, channels: int, min_channels: int, what: str) -> int:
    amount = float(amount)
    if not 0.0 <= amount <= 1.0:
        raise RecipeError(f"{what} must be a fraction in [0, 1], got {amount}")
    return max(0, min(int(round(amount * channels)), channels - min_channels))


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
    """Decide which output channels each prunable layer keeps (see :func:`prune_channels`)."""
    if scope not in ("layer", "global"):
        raise RecipeError(f"scope must be 'layer' or 'global', got {scope!r}")
    if int(min_channels) != min_channels or min_channels < 1:
        raise RecipeError(f"min_channels must be a whole number >= 1, got {min_channels!r}")
    crit = _resolve_channel_criterion(criterion)
    groups, skipped = find_channel_groups(model, example_input_shape=example_input_shape, example_input=example_input)
    modules = dict(model.named_modules())

    if isinstance(amount, Mapping):
        if scope == "global":
            raise RecipeError("global channel pruning takes one fraction, not a per-layer map")
        for name in amount:
            if name in skipped:
                raise RecipeError(f"layer {name!r} cannot lose channels: {skipped[name]}")
            if name not in groups:
                raise RecipeError(f"{name!r} is not a Conv2d/Linear layer of the model; "
                                  f"prunable layers: {sorted(groups)}")
        targets = {name: amount[name] for name in amount}
    else:
        targets = {name: amount for name in groups}

    scores = {}
    for name in targets:
        g = groups[name]
        try:
            s = crit.score(name, modules[name], _direct_bn(modules, g)).detach().float().cpu().reshape(-1)
        except _NoScore as why:
            if isinstance(amount, Mapping):
                raise RecipeError(str(why)) from None
            skipped[name] = str(why)
            continue
        if s.numel() != g.channels:
            raise RecipeError(f"{crit!r} gave {s.numel()} scores for {name}, which has {g.channels} channels")
        scores[name] = s

    plan = ChannelPlan({n: groups[n] for n in groups if n not in skipped}, skipped)
    if scope == "layer":
        for name, s in scores.items():
            k = _n_remove(targets[name], s.numel(), min_channels, f"amount for {name}")
            order = torch.argsort(s, stable=True)  # ascending: the first k go
            plan.keep[name] = torch.sort(order[k:]).values
        return plan

    total = sum(s.numel() for s in scores.values())
    n_total = _n_remove(amount, total, 0, "amount")
    entries = sorted(((float(v), name, i) for name, s in scores.items() for i, v in enumerate(s.tolist())))
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


# --- applying -------------------------------------------------------------------------------------

def _expand(keep: torch.Tensor, S: int) -> torch.Tensor:
    if S == 1:
        return keep
    return (keep.unsqueeze(1) * S + torch.arange(S)).reshape(-1)


def _set_param(module: nn.Module, attr: str, value: torch.Tensor) -> None:
    old = getattr(module, attr)
    setattr(module, attr, nn.Parameter(value.contiguous(), requires_grad=old.requires_grad))


@torch.no_grad()
def _remove(model: nn.Module, plan: ChannelPlan) -> None:
    modules = dict(model.named_modules())
    for name, keep in plan.keep.items():
        group = plan.groups[name]
        if len(keep) == group.channels:
            continue
        prod = modules[name]
        dev = prod.weight.device
        k = keep.to(dev)
        _set_param(prod, "weight", prod.weight.index_select(0, k))
        if prod.bias is not None:
            _set_param(prod, "bias", prod.bias.index_select(0, k))
        if isinstance(prod, nn.Conv2d):
            prod.out_channels = len(keep)
        else:
            prod.out_features = len(keep)
        for bn_name, S in group.bns:
            bn = modules[bn_name]
            idx = _expand(keep, S).to(dev)
            if bn.weight is not None:
                _set_param(bn, "weight", bn.weight.index_select(0, idx))
                _set_param(bn, "bias", bn.bias.index_select(0, idx))
            if bn.running_mean is not None:
                bn.running_mean = bn.running_mean.index_select(0, idx)
                bn.running_var = bn.running_var.index_select(0, idx)
            bn.num_features = len(idx)
        for cons_name, S in group.consumers:
            cons = modules[cons_name]
            idx = _expand(keep, S).to(dev)
            _set_param(cons, "weight", cons.weight.index_select(1, idx))
            if isinstance(cons, nn.Conv2d):
                cons.in_channels = len(idx)
            else:
                cons.in_features = len(idx)


@torch.no_grad()
def _zero(model: nn.Module, plan: ChannelPlan) -> None:
    modules = dict(model.named_modules())
    for name, keep in plan.keep.items():
        group = plan.groups[name]
        gone = torch.ones(group.channels, dtype=torch.bool)
        gone[keep] = False
        if not gone.any():
            continue
        prod = modules[name]
        prod.weight[gone.to(prod.weight.device)] = 0
        if prod.bias is not None:
            prod.bias[gone.to(prod.weight.device)] = 0
        for bn_name, S in group.bns:
            bn = modules[bn_name]
            idx = _expand(torch.nonzero(gone).reshape(-1), S)
            if bn.weight is not None:
                bn.weight[idx] = 0
                bn.bias[idx] = 0
        for cons_name, S in group.consumers:
            cons = modules[cons_name]
            idx = _expand(torch.nonzero(gone).reshape(-1), S)
            cons.weight[:, idx] = 0


def apply_channel_plan(model: nn.Module, plan: ChannelPlan, mode: str = "remove") -> nn.Module:
    """A deep copy of ``model`` with the plan applied.

    ``mode="remove"`` rebuilds the layers smaller. ``mode="zero"`` keeps every shape and zeroes the
    removed channels instead (their filter and bias, their BatchNorm gamma and beta, and the input
    columns that read them in the consumers): the same function as the removed model, for checking or
    for retraining with channel masks.
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
    new, smaller model. ``model`` itself is not changed.

    ``amount``: fraction of each prunable layer's channels to remove, or ``{layer: fraction}``
    (naming a layer that cannot be pruned -- e.g. one whose output feeds a residual add -- raises
    RecipeError saying why). With ``scope="global"`` one fraction of all prunable channels goes,
    chosen by one threshold over the criterion's scores (they must be comparable across layers, as
    BN-gamma is). At least ``min_channels`` channels stay in every layer; counts are rounded.

    ``criterion``: ``"l1"`` (Li et al.), ``"l2"``, ``"bn"`` (|gamma| of the following BatchNorm;
    layers without one are skipped), a :class:`ChannelCriterion`, or a weight :class:`Criterion`
    (such as ``RelevanceCriterion``) whose scores are summed over each filter.

    ``example_input_shape`` (e.g. ``(1, 3, 224, 224)``) is needed to follow shapes through flatten.
    With ``return_plan=True`` returns ``(new_model, plan)``; ``plan.skipped`` lists the layers left
    whole and why.
    """
    plan = plan_channel_pruning(model, amount, criterion, example_input_shape=example_input_shape,
                                example_input=example_input, scope=scope, min_channels=min_channels)
    new = apply_channel_plan(model, plan, "remove")
    return (new, plan) if return_plan else new


# --- network slimming -----------------------------------------------------------------------------

def _bn_layers(model: nn.Module) -> list[nn.Module]:
    bns = [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d))
           and m.weight is not None]
    return bns


class SlimmingRegularizer:
    """The sparsity penalty of network slimming (Liu et al. 2017): lam * sum |gamma| over BatchNorms.

    Either add ``reg.penalty()`` to the loss before ``backward()``, or call ``reg.step()`` after
    ``backward()`` and before ``optimizer.step()`` to add the subgradient lam * sign(gamma) to the
    BatchNorm weights' gradients (the paper's implementation) -- not both.
    """

    def __init__(self, model: nn.Module, lam: float = 1e-4):
        if lam < 0:
            raise RecipeError(f"the slimming penalty lam must be >= 0, got {lam}")
        self.lam = float(lam)
        self.bns = _bn_layers(model)
        if not self.bns:
            raise RecipeError("network slimming needs BatchNorm layers with affine=True; the model has none")

    def penalty(self) -> torch.Tensor:
        return self.lam * sum(bn.weight.abs().sum() for bn in self.bns)

    @torch.no_grad()
    def step(self) -> None:
        for bn in self.bns:
            g = torch.sign(bn.weight) * self.lam
            if bn.weight.grad is None:
                bn.weight.grad = g.clone()
            else:
                bn.weight.grad.add_(g)


def slimming_step(model: nn.Module, lam: float = 1e-4) -> None:
    """Add lam * sign(gamma) to every BatchNorm weight's gradient (call between backward and step)."""
    SlimmingRegularizer(model, lam).step()


def slim(
    model: nn.Module,
    amount: float,
    example_input_shape: Sequence[int] | None = None,
    *,
    example_input: torch.Tensor | None = None,
    min_channels: int = 1,
    return_plan: bool = False,
):
    """Network slimming's pruning step: remove the ``amount`` fraction of channels with the smallest
    |gamma|, with one threshold across all BatchNorm layers, and return the smaller model.

    Only layers directly followed by a BatchNorm (and prunable, see :func:`prune_channels`) take
    part; ``amount`` is a fraction of their channels.
    """
    if isinstance(amount, Mapping):
        raise RecipeError("slim takes one global fraction; use prune_channels(..., criterion='bn') for per-layer amounts")
    return prune_channels(model, amount, "bn", example_input_shape=example_input_shape, example_input=example_input,
                          scope="global", min_channels=min_channels, return_plan=return_plan)
