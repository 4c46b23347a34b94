"""Shared pieces of the structured-pruning tests."""

import torch
from torch import nn

from deepcomp.prune import apply_channel_plan


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def randomize_bn(model, seed=0):
    """BatchNorms with random statistics and affine parameters, so that they matter to the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g))
                m.running_mean.copy_(torch.randn(m.num_features, generator=g))
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model


def same_outputs(model, new, plan, shape, atol=1e-5):
    """The smaller model computes what the original computes with the removed channels zeroed."""
    ref = apply_channel_plan(model, plan, mode="zero")
    x = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        a, b = new.eval()(x), ref.eval()(x)
    assert a.shape == b.shape
    assert torch.allclose(a, b, atol=atol, rtol=1e-4), float((a - b).abs().max())
    return a
