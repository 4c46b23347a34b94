"""The packed input projection of ``nn.MultiheadAttention`` as a prunable layer.

``nn.MultiheadAttention`` keeps its q/k/v projection as a bare parameter (``in_proj_weight``, used
through a functional linear), not as an ``nn.Linear``, so a pass over Conv2d and Linear modules
misses it: in ViT-B/16 that is a third of the weights, left dense. :class:`PackedProjection` is a
child module (``<attention>.in_proj``) that owns no parameter of its own; its ``weight`` is the
attention's ``in_proj_weight`` itself, so masks, weight sharing and retraining reach the real
parameter, and the state_dict keeps the original keys (the layer's weight is stored under
``weight_key``, ``<attention>.in_proj_weight``). The capture lowers the projection as one linear
layer of 3 * embed_dim outputs on that key.

The data-driven criteria (WANDA, relevance, Taylor) and the int8 calibration observe each layer's
input with module hooks, but ``nn.MultiheadAttention`` applies both of its projections inside
``F.multi_head_attention_forward``: ``out_proj`` is never called as a module and ``in_proj`` is not a
module there at all. :func:`calibration_forward` is the one place that fixes this for every
collector: while it is active, each attention runs through :func:`_attention_forward`, which calls
``in_proj`` (on the query) and ``out_proj`` (on the attention context) as modules and otherwise gives
the module's own output.
"""

from __future__ import annotations

import contextlib
import functools

import torch
import torch.nn.functional as F
from torch import nn

from deepcomp.errors import RecipeError


class PackedProjection(nn.Module):
    """A view of one attention's ``in_proj_weight`` as a linear layer's weight (no parameter of its own)."""

    def __init__(self, attention: nn.MultiheadAttention, key: str):
        super().__init__()
        object.__setattr__(self, "_attention", attention)  # not a child: the module tree stays a tree
        self.weight_key = key

    @property
    def weight(self) -> nn.Parameter:
        return self._attention.in_proj_weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The packed q/k/v projection of ``x`` (only :func:`calibration_forward` calls it)."""
        return F.linear(x, self.weight, self._attention.in_proj_bias)

    def extra_repr(self) -> str:
        return f"view of {self.weight_key}, {tuple(self.weight.shape)}"


def weight_owner(layer: nn.Module) -> tuple[nn.Module, str]:
    """The module and attribute name that hold a prunable layer's weight parameter, for code that
    replaces the parameter itself (parametrizations): the attention and ``in_proj_weight`` for a
    :class:`PackedProjection`, else the layer and ``weight``."""
    return (layer._attention, "in_proj_weight") if isinstance(layer, PackedProjection) else (layer, "weight")


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


def _attention_forward(m: nn.MultiheadAttention, name: str, query, key, value, key_padding_mask=None,
                       need_weights=True, attn_mask=None, average_attn_weights=True, is_causal=False):
    """``m(query, key, value, ...)`` with its projections called as modules, so their hooks fire.

    Same outputs as ``nn.MultiheadAttention.forward`` (to float rounding). A packed attention must be
    self-attention (its one projection layer sees one input); an unpacked one (kdim/vdim differ)
    projects q/k/v functionally, its weights are not prunable layers. ``is_causal`` is a hint in
    torch; ``attn_mask`` must be given with it and is what is applied.
    """
    if m.bias_k is not None or m.add_zero_attn:
        raise RecipeError(f"attention {name!r} has bias_k/bias_v or add_zero_attn, which the data-driven "
                          "criteria do not support; use --criterion magnitude")
    if is_causal and attn_mask is None:
        raise RecipeError(f"attention {name!r} is called with is_causal=True but no attn_mask; pass the mask")
    batched = query.dim() == 3

    def tokens_first(t):  # -> [N, tokens, features]
        if not batched:
            return t.unsqueeze(0)
        return t if m.batch_first else t.transpose(0, 1)

    e, h = m.embed_dim, m.num_heads
    q = tokens_first(query)
    n, length = q.shape[:2]
    if packed(m):
        if not (query is key is value):
            raise RecipeError(f"attention {name!r} is called as cross-attention (query, key and value are "
                              "different tensors); the data-driven criteria support only self-attention in "
                              "nn.MultiheadAttention: use --criterion magnitude")
        q, k, v = m.in_proj(q).chunk(3, dim=-1)
    else:
        b = m.in_proj_bias.chunk(3) if m.in_proj_bias is not None else (None, None, None)
        q, k, v = (F.linear(tokens_first(t), w, bias)
                   for t, w, bias in zip((query, key, value), (m.q_proj_weight, m.k_proj_weight, m.v_proj_weight), b))
    s = k.shape[1]
    q, k, v = (t.reshape(n, -1, h, e // h).transpose(1, 2) for t in (q, k, v))  # [N, heads, tokens, head dim]
    scores = q @ k.transpose(-2, -1) * (e // h) ** -0.5
    if attn_mask is not None:
        mask = attn_mask.reshape(n, h, length, s) if attn_mask.dim() == 3 else attn_mask
        scores = scores.masked_fill(mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    if key_padding_mask is not None:
        kpm = key_padding_mask.reshape(-1, 1, 1, s)
        scores = scores.masked_fill(kpm, float("-inf")) if kpm.dtype == torch.bool else scores + kpm
    weights = F.dropout(scores.softmax(-1), m.dropout, training=m.training)
    context = (weights @ v).transpose(1, 2).reshape(n, length, e)
    out = m.out_proj(context)
    if not batched:
        out, weights = out.squeeze(0), weights.squeeze(0)
    elif not m.batch_first:
        out = out.transpose(0, 1)
    if not need_weights:
        return out, None
    return out, weights.mean(-3) if average_attn_weights else weights


@contextlib.contextmanager
def calibration_forward(model: nn.Module):
    """While active, every ``nn.MultiheadAttention`` of ``model`` runs through
    :func:`_attention_forward` (its projections called as modules) and torch's fused fast path of
    ``nn.TransformerEncoderLayer`` is off (it would bypass the attention's forward altogether).
    Every collector of layer inputs or gradients runs the model inside it."""
    if isinstance(model, torch.jit.ScriptModule):
        yield
        return
    packed_projections(model)
    attentions = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
    saved = [m.__dict__.get("forward") for _, m in attentions]  # an instance-level forward, if any
    fastpath = torch.backends.mha.get_fastpath_enabled()
    try:
        torch.backends.mha.set_fastpath_enabled(False)
        for name, m in attentions:
            m.forward = functools.partial(_attention_forward, m, name)
        yield
    finally:
        for (_, m), old in zip(attentions, saved):
            if old is None:
                m.__dict__.pop("forward", None)
            else:
                m.forward = old
        torch.backends.mha.set_fastpath_enabled(fastpath)
