"""Network slimming (Liu et al. 2017): an L1 penalty on BatchNorm gammas while training, then the
channels with the smallest |gamma| removed with one threshold across the model."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from deepcomp.errors import RecipeError
from deepcomp.prune.structured.surgery import prune_channels


def _bn_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None]


class SlimmingRegularizer:
    """The sparsity penalty of network slimming: lam * sum |gamma| over BatchNorms.

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

    Only groups with a BatchNorm right after a producer (and prunable, see :func:`prune_channels`)
    take part; ``amount`` is a fraction of their channels. ``example_input_shape`` is the shape of
    one sample, such as ``(3, 224, 224)``.
    """
    if isinstance(amount, Mapping):
        raise RecipeError("slim takes one global fraction; use prune_channels(..., criterion='bn') for per-layer amounts")
    return prune_channels(model, amount, "bn", example_input_shape=example_input_shape, example_input=example_input,
                          scope="global", min_channels=min_channels, return_plan=return_plan)
