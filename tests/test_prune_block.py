"""Block pruning (deepcomp.prune.block): 1x4 blocks along the input channels at one tap (and 4x4
with out_block=4) are kept or removed whole, by norm of any criterion's scores, at the asked
per-layer sparsity."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from deepcomp.errors import RecipeError
from deepcomp.prune import Criterion
from deepcomp.prune.block import block_density, block_mask, block_scores, columns_blocks, compute_block_masks


def blocks_whole(mask: torch.Tensor, out_block: int = 1) -> bool:
    """Every out_block x 4 block of the mask is all True or all False."""
    O, C = mask.shape[:2]
    for o in range(0, O, out_block):
        for g in range(0, C, 4):
            b = mask[o:o + out_block, g:g + 4]
            if not (b.all(dim=(0, 1)) | (~b).all(dim=(0, 1))).all():
                return False
    return True


@settings(max_examples=40, deadline=None)
@given(o=st.integers(1, 9), c=st.integers(1, 11), k=st.sampled_from([(), (1, 1), (3, 3), (2, 5)]),
       amount=st.floats(0, 1), norm=st.sampled_from(["l1", "l2"]), ob=st.sampled_from([1, 4]),
       seed=st.integers(0, 2**31))
def test_block_mask_is_whole_blocks_at_the_amount(o, c, k, amount, norm, ob, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn((o, c) + k, generator=g)
    mask = block_mask(w.abs(), amount, norm, ob)
    assert mask.shape == w.shape and mask.dtype == torch.bool
    assert blocks_whole(mask, ob)
    b = block_scores(w.abs(), norm, ob)
    kept = block_scores(mask.float(), "l1", ob) > 0
    assert int(kept.sum()) == b.numel() - round(amount * b.numel())
    # every kept block scores at least as high as every removed one
    if kept.any() and (~kept).any():
        assert b[kept].min() >= b[~kept].max()


def test_scores_are_norms_of_the_block():
    w = torch.arange(2 * 6 * 1 * 2, dtype=torch.float32).reshape(2, 6, 1, 2) - 10
    s = block_scores(w.abs(), "l2")
    assert s.shape == (2, 2, 1, 2)
    assert torch.allclose(s[1, 0, 0, 1], w[1, 0:4, 0, 1].norm())
    assert torch.allclose(s[0, 1, 0, 0], w[0, 4:6, 0, 0].norm())  # the partial last block
    assert torch.allclose(block_scores(w.abs(), "l1")[0, 0, 0, 0], w[0, 0:4, 0, 0].abs().sum())
    s4 = block_scores(w.abs(), "l2", out_block=4)
    assert s4.shape == (1, 2, 1, 2) and torch.allclose(s4[0, 0, 0, 0], w[:, 0:4, 0, 0].norm())


class Reversed(Criterion):
    """Prefers small weights: shows any criterion plugs in."""

    def score(self, name, module):
        return -module.weight.detach().abs()


def test_compute_block_masks_per_layer_with_any_criterion_keeps_old_masks():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 10))
    masks = compute_block_masks(model, {"0": 0.5, "3": 0.75})
    assert set(masks) == {"0", "3"}
    assert abs(block_density(model[0].weight.detach() * masks["0"]) - 0.5) < 1e-6
    assert abs(block_density(model[3].weight.detach() * masks["3"]) - 0.25) < 1e-6
    again = compute_block_masks(model, 0.8, masks=masks)
    assert not (again["0"] & ~masks["0"]).any()  # never revives a pruned block
    rev = compute_block_masks(model, {"0": 0.5}, criterion=Reversed(), norm="l1")
    assert rev["3"].all()  # left out of the map: keeps everything
    big = block_scores(model[0].weight.detach().abs(), "l1")
    kept = block_scores(rev["0"].float(), "l1") > 0
    assert big[kept].max() <= big[~kept].min()


def test_stride4_conv_is_pruned_in_blocks_of_kernel_columns():
    """A conv the int8 runtime runs with 4 columns per lane (3 channels, stride 4: AlexNet's conv1)
    keeps or removes 4 consecutive kernel columns of one input channel whole, at the asked fraction
    of those blocks, and never revives one an earlier mask removed."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 8, 11, stride=4, padding=2), nn.ReLU(), nn.Conv2d(8, 4, 3))
    assert columns_blocks(model[0]) and not columns_blocks(model[2])
    masks = compute_block_masks(model, {"0": 0.3})
    m = masks["0"].numpy()
    cols = np.concatenate([m, m[..., 10:]], axis=-1)  # the 12th column is no weight: as the 11th
    blocks = cols.reshape(8, 3, 11, 3, 4)
    assert (blocks.all(-1) | ~blocks.any(-1)).all()  # whole blocks
    kept = blocks.any(-1)
    assert kept.sum() == kept.size - round(0.3 * kept.size)
    again = compute_block_masks(model, {"0": 0.6}, masks=masks)["0"]
    assert not (again & ~masks["0"]).any()


def test_bad_arguments_say_what_to_do():
    w = torch.randn(4, 4, 3, 3)
    with pytest.raises(RecipeError, match="l1"):
        block_scores(w, "l3")
    with pytest.raises(RecipeError, match="negative"):
        block_scores(-w.abs(), "l2")
    with pytest.raises(RecipeError, match="out_block"):
        block_scores(w, "l2", 3)
    with pytest.raises(RecipeError, match="fraction"):
        block_mask(w, 1.5)
