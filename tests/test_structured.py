"""Structured (channel / unit) pruning that rebuilds smaller layers, and network slimming."""

import pytest
import torch
import torchvision
from torch import nn

from deepcomp.errors import InputShapeError, RecipeError, UnsupportedOpError
from deepcomp.prune import (
    RelevanceCriterion,
    SlimmingRegularizer,
    apply_channel_plan,
    find_channel_groups,
    plan_channel_pruning,
    prune_channels,
    slim,
    slimming_step,
)
from deepcomp.zoo import LeNet5, LeNet300100
from structured_helpers import n_params, randomize_bn, same_outputs


def vgg_bn():
    torch.manual_seed(0)
    return randomize_bn(nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(),
        nn.Linear(32, 10),
    ))


def test_lenet5_filters_removed_and_outputs_match_hand_masked_original():
    torch.manual_seed(0)
    model = LeNet5().eval()
    new, plan = prune_channels(model, 0.5, "l1", example_input_shape=(1, 28, 28), return_plan=True)
    assert new.conv1.weight.shape == (10, 1, 5, 5) and new.conv1.bias.shape == (10,)
    assert new.conv2.weight.shape == (25, 10, 5, 5)
    assert new.fc1.weight.shape == (250, 25 * 16)
    assert new.fc2.weight.shape == (10, 250)
    assert (new.conv1.out_channels, new.conv2.in_channels, new.fc1.in_features) == (10, 10, 400)
    assert n_params(new) < 0.3 * n_params(model)
    assert model.conv1.weight.shape == (20, 1, 5, 5)  # the input model is untouched
    assert "fc2" in plan.skipped
    # L1 (Li et al.): the kept filters are the 10 with the largest sum |w|
    l1 = model.conv1.weight.detach().abs().sum((1, 2, 3))
    assert set(plan.keep["conv1"].tolist()) == set(torch.argsort(l1, descending=True)[:10].tolist())
    # independent reference: zero what the removed channels feed in the next layers
    ref = LeNet5().eval()
    ref.load_state_dict(model.state_dict())
    with torch.no_grad():
        gone = lambda name, n: torch.tensor([i for i in range(n) if i not in set(plan.keep[name].tolist())])
        ref.conv2.weight[:, gone("conv1", 20)] = 0
        g2 = gone("conv2", 50)
        ref.fc1.weight[:, (g2.unsqueeze(1) * 16 + torch.arange(16)).reshape(-1)] = 0
        ref.fc2.weight[:, gone("fc1", 500)] = 0
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(new(x), ref(x), atol=1e-5)
    same_outputs(model, new, plan, (4, 1, 28, 28))


def test_unit_pruning_of_linear_neurons():
    torch.manual_seed(0)
    model = LeNet300100().eval()
    new, plan = prune_channels(model, {"fc1": 0.5, "fc2": 0.3}, "l2", example_input_shape=(1, 28, 28),
                               return_plan=True)
    assert new.fc1.weight.shape == (150, 784) and new.fc2.weight.shape == (70, 150)
    assert new.fc3.weight.shape == (10, 70)
    same_outputs(model, new, plan, (5, 1, 28, 28))


def test_vgg_like_with_batchnorm():
    model = vgg_bn().eval()
    new, plan = prune_channels(model, 0.5, "l1", example_input_shape=(2, 3, 8, 8), return_plan=True)
    assert new[0].weight.shape == (4, 3, 3, 3) and new[1].num_features == 4
    assert new[3].weight.shape == (8, 4, 3, 3) and new[4].weight.shape == (8,)
    assert new[8].weight.shape == (16, 8 * 16) and new[9].running_mean.shape == (16,)
    k = plan.keep["3"]
    assert torch.equal(new[4].running_var, model[4].running_var[k])
    assert n_params(new) < n_params(model) / 3
    same_outputs(model, new, plan, (3, 3, 8, 8))


@pytest.mark.parametrize("crit", ["l2", "bn"])
def test_criteria_on_vgg_like(crit):
    model = vgg_bn().eval()
    new, plan = prune_channels(model, {"0": 0.25, "3": 0.5}, crit, example_input_shape=(3, 8, 8), return_plan=True)
    assert plan.removed() == {"0": 2, "3": 8}
    if crit == "bn":
        gamma = model[4].weight.detach().abs()
        assert set(plan.keep["3"].tolist()) == set(torch.argsort(gamma, descending=True)[:8].tolist())
    same_outputs(model, new, plan, (2, 3, 8, 8))


def test_relevance_criterion_ranks_filters():
    model = vgg_bn().eval()
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g))]
    rel = RelevanceCriterion.from_batches(model, data)
    new, plan = prune_channels(model, 0.5, rel, example_input_shape=(3, 8, 8), return_plan=True)
    per_filter = rel.score("3", model[3]).sum((1, 2, 3))
    assert set(plan.keep["3"].tolist()) == set(torch.argsort(per_filter, descending=True)[:8].tolist())
    same_outputs(model, new, plan, (2, 3, 8, 8))


@pytest.mark.parametrize("arch,shape", [("alexnet", (3, 64, 64)), ("vgg11", (3, 32, 32))])
def test_torchvision_models(arch, shape):
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(num_classes=10).eval()
    new, plan = prune_channels(model, 0.5, "l1", example_input_shape=shape, return_plan=True)
    assert n_params(new) < 0.3 * n_params(model)
    first = new.features[0]
    assert first.out_channels == model.features[0].out_channels // 2
    i = next(i for i, m in enumerate(model.classifier) if isinstance(m, nn.Linear))
    assert new.classifier[i].in_features == model.classifier[i].in_features // 2  # 36 / 49 features per channel
    assert set(plan.skipped) == {"classifier.6"}
    same_outputs(model, new, plan, (2, *shape))


def test_global_scope_and_min_channels():
    model = vgg_bn().eval()
    with torch.no_grad():
        model[1].weight.fill_(1e-3)  # every gamma of the first BN is tiny
    new, plan = prune_channels(model, 0.5, "bn", example_input_shape=(3, 8, 8), scope="global",
                               return_plan=True, min_channels=2)
    removed = plan.removed()
    assert removed["0"] == 6  # the tiny ones go first, but two channels stay
    assert sum(removed.values()) == round(0.5 * (8 + 16 + 32))
    same_outputs(model, new, plan, (2, 3, 8, 8))


def test_groups_and_errors():
    model = vgg_bn()
    groups, skipped = find_channel_groups(model, example_input_shape=(3, 8, 8))
    assert groups["0"].bns == [("1", 0, 1)] and groups["0"].consumers == [("3", 0, 1)]
    assert groups["3"].consumers == [("8", 0, 16)] and groups["8"].bns == [("9", 0, 1)]
    with pytest.raises(InputShapeError, match="example_input_shape"):
        prune_channels(model, 0.5)
    with pytest.raises(RecipeError):
        prune_channels(model, 0.5, "entropy", example_input_shape=(3, 8, 8))
    with pytest.raises(RecipeError):
        prune_channels(model, {"nope": 0.5}, example_input_shape=(3, 8, 8))
    with pytest.raises(RecipeError):
        prune_channels(model, 1.5, example_input_shape=(3, 8, 8))
    with pytest.raises(InputShapeError, match="does not run"):
        prune_channels(model, 0.5, example_input_shape=(3, 9))

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 1)

        def forward(self, x):
            if x.sum() > 0:
                return self.conv(x)
            return x

    with pytest.raises(UnsupportedOpError):
        prune_channels(Branchy(), 0.5, example_input_shape=(1, 4, 4))
    plan = plan_channel_pruning(model, 0.0, example_input_shape=(3, 8, 8))
    assert all(v == 0 for v in plan.removed().values())


# --- network slimming -----------------------------------------------------------------------------

def test_slimming_penalty_and_subgradient():
    model = vgg_bn()
    with torch.no_grad():
        model[1].weight[0] = -0.7
    reg = SlimmingRegularizer(model, lam=1e-2)
    gammas = [model[1].weight, model[4].weight, model[9].weight]
    assert float(reg.penalty().detach()) == pytest.approx(1e-2 * sum(float(g.detach().abs().sum()) for g in gammas), rel=1e-6)
    reg.penalty().backward()
    for g in gammas:
        assert torch.allclose(g.grad, 1e-2 * torch.sign(g.detach()))
    model.zero_grad()
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    nn.functional.cross_entropy(model(x), y).backward()
    before = [g.grad.clone() for g in gammas]
    slimming_step(model, 1e-2)
    for g, b in zip(gammas, before):
        assert torch.allclose(g.grad, b + 1e-2 * torch.sign(g.detach()))
    with pytest.raises(RecipeError):
        SlimmingRegularizer(nn.Sequential(nn.Linear(2, 2)), 1e-4)


def test_slim_removes_smallest_gammas_globally():
    model = vgg_bn().eval()
    with torch.no_grad():
        model[1].weight[:3] = torch.tensor([0.01, -0.02, 0.03])
        model[4].weight[5:7] = torch.tensor([0.015, -0.025])
    new, plan = slim(model, 5 / 56, (3, 8, 8), return_plan=True)
    assert plan.removed() == {"0": 3, "3": 2, "8": 0}
    assert 5 not in plan.keep["3"].tolist() and 6 not in plan.keep["3"].tolist()
    assert new[0].out_channels == 5 and new[3].out_channels == 14
    same_outputs(model, new, plan, (2, 3, 8, 8))
