"""Block pruning for the int8 kernels: 1x4 blocks along the input channels at the same kernel tap.

VNNI's ``vpdpbusd`` multiplies four consecutive 8-bit values per 32-bit lane, and the int8 kernels
lay activations out so that a lane holds four consecutive input channels of one pixel
(docs/int8.md). A block is therefore the four weights ``w[o, 4g:4g+4, ky, kx]`` of a conv (or
``w[o, 4g:4g+4]`` of a linear layer); it is kept or removed whole. A block's score is the L2 (or L1)
norm of its weights' scores under any :mod:`deepcomp.prune` criterion (default: magnitude), and the
masks have the weight's shape, so everything that takes unstructured masks (retraining, weight
sharing, the writer) takes these too.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deepcomp.errors import RecipeError
from deepcomp.prune.criteria import Criterion, Magnitude
from deepcomp.prune.unstructured import _check_amount, _current_mask, _keep_top, prunable_layers

BLOCK = 4  # input channels per block: one 32-bit lane of four 8-bit values


def _pad_to(t: torch.Tensor, dim: int, multiple: int, value) -> torch.Tensor:
    extra = (-t.shape[dim]) % multiple
    if not extra:
        return t
    shape = list(t.shape)
    shape[dim] = extra
    return torch.cat([t, torch.full(shape, value, dtype=t.dtype)], dim)


def block_scores(scores: torch.Tensor, norm: str = "l2", out_block: int = 1) -> torch.Tensor:
    """Per-weight scores [out, in, ...] -> per-block scores [ceil(out / out_block), ceil(in / 4), ...].

    A block is ``out_block`` output channels by 4 input channels at one tap (1x4 is the int8
    kernels' unit; 4x4 lets them feed four output channels from one input load, docs/int8.md).
    ``norm="l2"``: the L2 norm of the block's scores (scores must be >= 0, as magnitude and WANDA
    give); ``"l1"``: their sum (any criterion, also one with negative scores). Partial blocks at the
    edges are scored over the weights they have. Scores of -inf (already pruned) count as 0, and a
    block whose every weight was pruned stays -inf, so an iterative schedule never revives it.
    """
    if scores.dim() < 2:
        raise ValueError(f"block scores need a weight of at least 2 dimensions, got {tuple(scores.shape)}")
    if norm not in ("l1", "l2"):
        raise RecipeError(f"block norm must be 'l1' or 'l2', got {norm!r}")
    if out_block not in (1, 2, 4):
        raise RecipeError(f"out_block must be 1, 2 or 4 output channels, got {out_block!r}")
    dead = torch.isneginf(scores)
    v = torch.where(dead, torch.zeros_like(scores), scores)
    if norm == "l2":
        if (v < 0).any():
            raise RecipeError("this criterion gives negative scores: use block norm 'l1' (their sum)")
        v = v.square()
    v, dead = _pad_to(_pad_to(v, 1, BLOCK, 0.0), 0, out_block, 0.0), _pad_to(_pad_to(dead, 1, BLOCK, True), 0, out_block, True)
    shape = (v.shape[0] // out_block, out_block, v.shape[1] // BLOCK, BLOCK) + tuple(v.shape[2:])
    out = v.reshape(shape).sum((1, 3))
    out = out.sqrt() if norm == "l2" else out
    return torch.where(dead.reshape(shape).all(3).all(1), torch.full_like(out, float("-inf")), out)


def expand_blocks(block_mask: torch.Tensor, shape, out_block: int = 1) -> torch.Tensor:
    """Block mask [out / out_block, G, ...] -> weight mask of ``shape`` (each block's value on its weights)."""
    m = block_mask.repeat_interleave(out_block, dim=0).repeat_interleave(BLOCK, dim=1)
    return m[:shape[0], :shape[1]]


def block_mask(scores: torch.Tensor, amount: float, norm: str = "l2", out_block: int = 1) -> torch.Tensor:
    """The weight mask (True = keep) that removes ``amount`` of the blocks, lowest scores first."""
    amount = _check_amount(amount, "sparsity")
    b = block_scores(scores, norm, out_block)
    n_keep = b.numel() - int(round(amount * b.numel()))
    return expand_blocks(_keep_top(b, n_keep), scores.shape, out_block)


def columns_blocks(module: nn.Module) -> bool:
    """Whether the int8 runtime runs this layer rewritten with 4 columns of one channel per lane
    (deepcomp.runtime.int8_reference.columns_pay: a conv of stride 4 along W with few channels, as
    AlexNet's conv1), so that its blocks are 4 consecutive kernel columns of one input channel."""
    from deepcomp.runtime.int8_reference import columns_pay

    return (isinstance(module, nn.Conv2d) and module.groups == 1
            and columns_pay(module.in_channels, module.kernel_size[1], module.stride, module.dilation))


def _columns_block_mask(scores: torch.Tensor, amount: float, norm: str, out_block: int) -> torch.Tensor:
    """block_mask over blocks of 4 consecutive kernel columns of one input channel (columns_blocks):
    the scores rewritten as the runtime rewrites the weight, blocked along its channels, and back."""
    from deepcomp.runtime.int8_reference import columns_unweight, columns_weight

    # the columns past kw are no weight: dead (-inf), so they count as 0 in their block's norm
    rewritten = columns_weight(scores.numpy().astype(np.float32), fill=-np.inf)
    m = block_mask(torch.from_numpy(rewritten), amount, norm, out_block)
    return torch.from_numpy(columns_unweight(m.numpy(), scores.shape[3]))


def compute_block_masks(
    model: nn.Module,
    amount: float | Mapping[str, float],
    *,
    criterion: Criterion | None = None,
    norm: str = "l2",
    out_block: int = 1,
    masks: Mapping[str, torch.Tensor] | None = None,
    layers: Mapping[str, nn.Module] | None = None,
) -> dict[str, torch.Tensor]:
    """Masks like :func:`deepcomp.prune.compute_masks` (``amount`` is the fraction removed, one for
    every layer or ``{layer: fraction}``), over 1x4 blocks instead of single weights.

    Positions already pruned in ``masks`` stay pruned. Layers missing from a per-layer map keep their
    current mask. Block sparsity is per layer: the blocks of different layers are not compared.
    """
    criterion = criterion or Magnitude()
    layers = dict(layers) if layers is not None else prunable_layers(model)
    out: dict[str, torch.Tensor] = {}
    for name, module in layers.items():
        old = _current_mask(module, masks, name)
        if isinstance(amount, Mapping) and name not in amount:
            out[name] = old.cpu() if old is not None else torch.ones_like(module.weight, dtype=torch.bool).cpu()
            continue
        a = amount[name] if isinstance(amount, Mapping) else amount
        s = criterion.score(name, module).detach().float().cpu()
        if s.shape != module.weight.shape:
            raise ValueError(f"{criterion!r} gave scores of shape {tuple(s.shape)} for {name} "
                             f"whose weight is {tuple(module.weight.shape)}")
        if old is not None:
            s = torch.where(old.cpu(), s, torch.full_like(s, float("-inf")))
        out[name] = (_columns_block_mask if columns_blocks(module) else block_mask)(s, a, norm, out_block)
    return out


def block_density(weight: torch.Tensor) -> float:
    """Fraction of the 1x4 blocks that hold any nonzero weight (what the int8 kernels execute)."""
    nz = (weight != 0).float()
    return float((block_scores(nz, "l1") > 0).float().mean())


def mixed_masks(int8_layers, out_block: int = 1, norm: str = "l2"):
    """A ``compute`` for :func:`deepcomp.prune.iterative_prune`: block masks for the layers named in
    ``int8_layers``, single-weight masks (:func:`compute_masks`) for the others (the fp32 layers of
    an int8 recipe). Per layer only: block sparsity is not compared across layers."""
    from deepcomp.prune.unstructured import compute_masks

    int8_layers = set(int8_layers)

    def compute(model, amount, *, scope="layer", criterion=None, masks=None, progress=None):
        if scope != "layer":
            raise RecipeError("block pruning (an int8 recipe) chooses blocks per layer: drop --global / scope = 'global'")
        layers = prunable_layers(model)
        amounts = amount if isinstance(amount, Mapping) else {n: amount for n in layers}
        blocks = {n: a for n, a in amounts.items() if n in int8_layers}
        rest = {n: a for n, a in amounts.items() if n not in int8_layers}
        out = {}
        if blocks:
            out.update(compute_block_masks(model, blocks, criterion=criterion, norm=norm, out_block=out_block,
                                           masks=masks, layers={n: layers[n] for n in blocks}))
        if rest:
            out.update(compute_masks(model, rest, scope="layer", criterion=criterion, masks=masks,
                                     layers={n: layers[n] for n in rest}, progress=progress))
        return out
    return compute
