"""Importance criteria: one small object per criterion, with one method.

A criterion scores every weight of a layer; pruning keeps the highest scores. A new criterion is one
new class here and nothing else changes (the pruners take it as an argument).
"""

from __future__ import annotations

import torch
from torch import nn


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
