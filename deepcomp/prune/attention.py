"""The packed input projection of ``nn.MultiheadAttention`` as a prunable layer.

``nn.MultiheadAttention`` keeps its q/k/v projection as a bare parameter (``in_proj_weight``, used
through a functional linear), not as an ``nn.Linear``, so a pass over Conv2d and Linear modules
misses it: in ViT-B/16 that is a third of the weights, left dense. :class:`PackedProjection` is a
child module (``<attention>.in_proj``) that owns no parameter of its own; its ``weight`` is the
attention's ``in_proj_weight`` itself, so masks, weight sharing and retraining reach the real
parameter, and the state_dict keeps the original keys (the layer's weight is stored under
``weight_key``, ``<attention>.in_proj_weight``). The capture lowers the projection as one linear
layer of 3 * embed_dim outputs on that key.
"""

from __future__ import annotations

from torch import nn


class PackedProjection(nn.Module):
    """A view of one attention's ``in_proj_weight`` as a linear layer's weight (no parameter of its own)."""

    def __init__(self, attention: nn.MultiheadAttention, key: str):
        super().__init__()
        object.__setattr__(self, "_attention", attention)  # not a child: the module tree stays a tree
        self.weight_key = key

    @property
    def weight(self) -> nn.Parameter:
        return self._attention.in_proj_weight

    def extra_repr(self) -> str:
        return f"view of {self.weight_key}, {tuple(self.weight.shape)}"


def packed(module: nn.Module) -> bool:
    """An attention whose q/k/v projection is one packed parameter (embed dims equal)."""
    return isinstance(module, nn.MultiheadAttention) and getattr(module, "in_proj_weight", None) is not None


def packed_projections(model: nn.Module) -> dict[str, PackedProjection]:
    """``{"<attention>.in_proj": PackedProjection}`` for every packed attention of ``model``; the
    views are attached to their attentions once (the same objects on later calls)."""
    out = {}
    for name, m in list(model.named_modules()):
        if not packed(m):
            continue
        view = m._modules.get("in_proj")
        if not isinstance(view, PackedProjection):
            view = PackedProjection(m, f"{name}.in_proj_weight" if name else "in_proj_weight")
            m.add_module("in_proj", view)
        out[f"{name}.in_proj" if name else "in_proj"] = view
    return out
