"""Unstructured criteria, calibration, schedules, iterative and adaptive pruning."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deepcomp.errors import DataError, DeepcompError, RecipeError
from deepcomp.prune import (
    AdaptivePruner,
    Magnitude,
    RelevanceCriterion,
    UnitNorm,
    WandaCriterion,
    collect_activation_norms,
    collect_gradients,
    compute_masks,
    iterative_prune,
    iterative_schedule,
    mean_column_norm_amounts,
    pq_index,
    prune,
    sap_amounts,
)


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 6, 3, stride=2, groups=2), nn.ReLU(),
        nn.Flatten(), nn.Linear(6 * 3 * 3, 10),
    )


def batches(n=3, shape=(4, 3, 8, 8), classes=10, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(shape, generator=g), torch.randint(0, classes, (shape[0],), generator=g)) for _ in range(n)]


# --- calibration ----------------------------------------------------------------------------------

def test_activation_norms_match_unfold_reference():
    model = small_cnn()
    data = batches()
    norms = collect_activation_norms(model, data)
    assert norms["0"].shape == (3, 3, 3)
    assert norms["2"].shape == (8, 3, 3)
    assert norms["5"].shape == (54,)
    xs = torch.cat([x for x, _ in data])
    ref0 = F.unfold(xs, 3, padding=1).pow(2).sum((0, 2)).sqrt().reshape(3, 3, 3)
    assert torch.allclose(norms["0"], ref0, rtol=1e-5)
    with torch.no_grad():
        h = torch.relu(model[0](xs))
    ref2 = F.unfold(h, 3, stride=2).pow(2).sum((0, 2)).sqrt().reshape(8, 3, 3)
    assert torch.allclose(norms["2"], ref2, rtol=1e-5)


def test_calibration_errors_and_mode_restored():
    model = small_cnn().train()
    with pytest.raises(DataError):
        collect_activation_norms(model, [])
    with pytest.raises(DataError):
        collect_gradients(model, [torch.randn(2, 3, 8, 8)], nn.CrossEntropyLoss())
    with pytest.raises(RecipeError):
        collect_activation_norms(model, batches(1), layers=["1"])
    collect_activation_norms(model, batches(1))
    assert model.training


def test_collect_gradients_is_mean_gradient_and_leaves_grad_alone():
    model = small_cnn()
    data = batches(2)
    grads = collect_gradients(model, data, nn.CrossEntropyLoss())
    assert all(model.get_submodule(n).weight.grad is None for n in grads)
    model.eval()
    total = sum(nn.CrossEntropyLoss()(model(x), y) for x, y in data) / 2
    total.backward()
    for name, g in grads.items():
        assert torch.allclose(g, model.get_submodule(name).weight.grad, atol=1e-6)


# --- criteria -------------------------------------------------------------------------------------

def test_criteria_score_shapes():
    model = small_cnn()
    data = batches()
    crits = [Magnitude(), WandaCriterion.from_batches(model, data), WandaCriterion.from_batches(model, data, group="layer"),
             RelevanceCriterion.from_batches(model, data), RelevanceCriterion.from_batches(model, data, rule="taylor"),
             UnitNorm()]
    for c in crits:
        for name, m in [("0", model[0]), ("2", model[2]), ("5", model[5])]:
            assert c.score(name, m).shape == m.weight.shape, (c, name)


def test_wanda_differs_from_magnitude_when_activations_are_skewed():
    layer = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 0.8, 0.5, 0.1]]))
    x = torch.tensor([[1.0, 1.0, 1.0, 100.0]]).repeat(8, 1)  # feature 3 is an outlier
    model = nn.Sequential(layer)
    wanda = WandaCriterion.from_batches(model, [x])
    mag = compute_masks(model, 0.5, criterion=Magnitude())["0"]
    wan = compute_masks(model, 0.5, criterion=wanda)["0"]
    assert mag.tolist() == [[True, True, False, False]]
    assert wan.tolist() == [[True, False, False, True]]  # the small weight on the big input survives


def test_wanda_row_group_prunes_every_row_equally():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 6))
    with torch.no_grad():
        model[0].weight.mul_(torch.arange(1, 7).float().unsqueeze(1) ** 3)  # rows of very different scale
    data = [torch.randn(16, 10)]
    row = compute_masks(model, 0.4, criterion=WandaCriterion.from_batches(model, data))["0"]
    assert row.sum(1).tolist() == [6] * 6
    layer = compute_masks(model, 0.4, criterion=WandaCriterion.from_batches(model, data, group="layer"))["0"]
    assert int(layer.sum()) == 36 and len(set(layer.sum(1).tolist())) > 1
    with pytest.raises(RecipeError):
        WandaCriterion({}, group="column")
    with pytest.raises(RecipeError):
        WandaCriterion({}).score("0", model[0])


def test_wanda_grouped_conv_uses_each_groups_channels():
    conv = nn.Conv2d(4, 4, 1, groups=2, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    norms = {"c": torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(4, 1, 1)}
    s = WandaCriterion(norms, group="layer").score("c", conv)
    assert s.reshape(4, 2).tolist() == [[1, 2], [1, 2], [3, 4], [3, 4]]


def test_relevance_rules_on_a_linear_model():
    layer = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -2.0, 0.5], [0.5, 1.0, -1.0]]))
    model = nn.Sequential(layer)
    x = torch.tensor([[1.0, 0.0, 2.0], [3.0, 0.0, 1.0]])
    y = torch.tensor([0, 1])
    rel = RelevanceCriterion.from_batches(model, [(x, y)]).score("0", layer)
    # LRP-0 of a linear model: R_cj = w_cj * sum of x_j over the samples of class c
    expect = torch.tensor([[1.0 * 1, -2.0 * 0, 0.5 * 2], [0.5 * 3, 1.0 * 0, -1.0 * 1]]).abs()
    assert torch.allclose(rel, expect)
    assert rel[0, 1] == 0 and rel[1, 1] == 0  # weights that never see a signal are irrelevant
    tay = RelevanceCriterion.from_batches(model, [(x, y)], rule="taylor").score("0", layer)
    w = layer.weight.detach().clone().requires_grad_(True)
    loss = F.cross_entropy(x @ w.T, y)
    (g,) = torch.autograd.grad(loss, w)
    assert torch.allclose(tay, (w.detach() * g).abs(), atol=1e-6)
    with pytest.raises(RecipeError):
        RelevanceCriterion.from_batches(model, [(x, y)], rule="lrp-magic")


def test_unit_norm_zeroes_whole_rows():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8))
    masks = compute_masks(model, 0.25, criterion=UnitNorm())["0"]
    rows = masks.all(1)
    assert int((~masks.any(1)).sum()) == 2 and int(rows.sum()) == 6
    norms = model[0].weight.detach().norm(dim=1)
    assert set(torch.argsort(norms)[:2].tolist()) == set(torch.nonzero(~rows).reshape(-1).tolist())


@pytest.mark.parametrize("crit", ["magnitude", "wanda"])
def test_global_and_per_layer_amounts_are_exact(crit):
    model = small_cnn()
    c = Magnitude() if crit == "magnitude" else WandaCriterion.from_batches(model, batches(), group="layer")
    masks = compute_masks(model, 0.6, scope="global", criterion=c)
    total = sum(m.numel() for m in masks.values())
    assert total - sum(int(m.sum()) for m in masks.values()) == round(0.6 * total)
    amounts = {"0": 0.25, "2": 0.5, "5": 0.9}
    masks = compute_masks(model, amounts, criterion=c)
    for name, a in amounts.items():
        assert masks[name].numel() - int(masks[name].sum()) == round(a * masks[name].numel())


# --- schedules and iterative pruning --------------------------------------------------------------

@pytest.mark.parametrize("kind", ["linear", "geometric", "cubic"])
def test_schedule_monotone_and_ends_at_target(kind):
    s = iterative_schedule(0.9, 7, kind)
    assert len(s) == 7 and s[-1] == 0.9
    assert all(b >= a for a, b in zip(s, s[1:])) and s[0] > 0
    assert iterative_schedule(0.8, 1, kind) == [0.8]


def test_schedule_shapes_and_errors():
    lin, geo, cub = (iterative_schedule(0.9, 3, k) for k in ("linear", "geometric", "cubic"))
    assert lin == pytest.approx([0.3, 0.6, 0.9])
    assert [1 - s for s in geo] == pytest.approx([0.1 ** (1 / 3), 0.1 ** (2 / 3), 0.1])
    assert cub[0] == pytest.approx(0.9 - 0.9 * (2 / 3) ** 3) and cub[0] > lin[0]  # cubic front-loads
    for bad in [dict(steps=0), dict(kind="exp"), dict(target_sparsity=1.2)]:
        args = dict(target_sparsity=0.5, steps=3, kind="linear") | bad
        with pytest.raises(RecipeError):
            iterative_schedule(**args)


def test_iterative_prune_never_revives_a_weight():
    model = small_cnn()
    history = []

    def retrain(m, masks, step):
        # a careless retraining loop that writes into pruned positions
        with torch.no_grad():
            for p in m.parameters():
                p.add_(torch.randn_like(p))
        history.append({k: v.clone() for k, v in masks.items()})

    final = iterative_prune(model, 0.8, 4, retrain, scope="global", kind="cubic")
    assert len(history) == 4
    for before, after in zip(history, history[1:]):
        for k in before:
            assert not (after[k] & ~before[k]).any()
    for name, mask in final.items():
        assert (model.get_submodule(name).weight[~mask] == 0).all()
    total = sum(m.numel() for m in final.values())
    assert sum(int(m.sum()) for m in final.values()) == total - round(0.8 * total)


def test_iterative_prune_recalibrates_with_a_criterion_factory():
    model = small_cnn()
    calls = []

    def factory(m):
        calls.append(1)
        return WandaCriterion.from_batches(m, batches(1))

    masks = iterative_prune(model, {"0": 0.5, "2": 0.75}, 3, None, criterion=factory)
    assert len(calls) == 3
    assert 1 - masks["0"].float().mean() == pytest.approx(0.5, abs=0.02)
    assert masks["5"].all()


# --- adaptive (PQ Index / SAP, mean column norm) --------------------------------------------------

def test_pq_index_bounds_and_order():
    d = 100
    assert pq_index(torch.ones(d)) == pytest.approx(0.0)
    one_hot = torch.zeros(d)
    one_hot[3] = 5.0
    assert pq_index(one_hot) == pytest.approx(1 - d ** (1 - 2))  # the upper bound 1 - d^(1/q-1/p)
    torch.manual_seed(0)
    dense = torch.randn(1000)
    sparse = dense * (torch.rand(1000) < 0.1)
    assert pq_index(sparse) > pq_index(dense)
    assert pq_index(dense * 7.0) == pytest.approx(pq_index(dense))  # scale-invariant
    assert pq_index(sparse, mask=sparse != 0) < pq_index(sparse)  # only live weights counted
    with pytest.raises(RecipeError):
        pq_index(dense, p=1.0, q=0.5)


def test_sap_prunes_more_where_pq_index_is_higher():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(50, 40), nn.ReLU(), nn.Linear(40, 30))
    with torch.no_grad():
        model[0].weight.copy_(torch.randn(40, 50) * (torch.rand(40, 50) < 0.2))  # concentrated
        model[2].weight.copy_(torch.sign(torch.randn(30, 40)))  # all magnitudes equal
    amounts = sap_amounts(model)
    assert pq_index(model[0].weight) > pq_index(model[2].weight)
    assert amounts["0"] > 0.5 and amounts["2"] == 0.0
    assert 0 < sap_amounts(model, scope="global") < 1
    assert sap_amounts(model, beta=0.3)["0"] == pytest.approx(0.3, abs=1e-3)  # beta caps one round


def test_adaptive_pruner_steps_only_remove():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 40), nn.ReLU(), nn.Linear(40, 10))
    pruner = AdaptivePruner("pqi", beta=0.5)
    m1 = pruner.step(model)
    m2 = pruner.step(model, m1)
    for k in m1:
        assert not (m2[k] & ~m1[k]).any()
        assert (model.get_submodule(k).weight[~m2[k]] == 0).all()
    assert sum(int((~m).sum()) for m in m2.values()) > sum(int((~m).sum()) for m in m1.values())


def test_mean_column_norm_rule():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0] * 4, [1.1] * 4, [0.1] * 4, [1.2] * 4]))  # norms 2, 2.2, 0.2, 2.4
    amounts = mean_column_norm_amounts(model)
    assert amounts == {"0": 0.25}  # one unit below the mean norm (1.7); the last layer is left alone
    assert mean_column_norm_amounts(model, factor=1.2) == {"0": 0.5}  # bar 2.04
    masks = AdaptivePruner("mean_column_norm").step(model)
    assert masks["0"].all(1).tolist() == [True, True, False, True] and masks["2"].all()


def test_errors_are_deepcomp_errors():
    model = small_cnn()
    for call in [lambda: AdaptivePruner("random"), lambda: sap_amounts(model, beta=2.0),
                 lambda: iterative_prune(model, {"0": 0.5}, 2, scope="global")]:
        with pytest.raises(DeepcompError):
            call()


# --- a small real-data check ------------------------------------------------------------------------

def _digits_mlp():
    datasets = pytest.importorskip("sklearn.datasets")
    d = datasets.load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    tr, te = perm[:1300], perm[1300:]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(15):
        for i in range(0, 1300, 64):
            idx = tr[i:i + 64]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval(), x[tr], x[te], y[te]


def test_digits_wanda_vs_magnitude():
    model, xtr, xte, yte = _digits_mlp()

    def acc(m):
        with torch.no_grad():
            return float((m(xte).argmax(1) == yte).float().mean())

    base = acc(model)
    assert base > 0.93
    wanda = WandaCriterion.from_batches(model, [xtr[i:i + 256] for i in range(0, 1024, 256)])
    # WANDA's objective: the layer's output error on (held-out) inputs, |W - W_pruned| X
    inputs = {"0": xte}
    with torch.no_grad():
        inputs["2"] = torch.relu(model[0](xte))
        inputs["4"] = torch.relu(model[2](inputs["2"]))
    results = {}
    for s in (0.5, 0.7):
        err = {"magnitude": {}, "wanda": {}}
        for name, h in inputs.items():
            w = model.get_submodule(name).weight.detach()
            for label, c in (("magnitude", Magnitude()), ("wanda", wanda)):
                mask = compute_masks(model, {name: s}, criterion=c)[name]
                err[label][name] = float(((h @ (w * ~mask).T) ** 2).sum())
        print("layer output error at", s, err)
        # raw pixels (many always zero) are the most skewed inputs: a large, robust gap there
        assert err["wanda"]["0"] < 0.6 * err["magnitude"]["0"]
        assert sum(err["wanda"].values()) < sum(err["magnitude"].values())
        for label, c in (("magnitude", Magnitude()), ("wanda", wanda)):
            m = copy.deepcopy(model)
            prune(m, s, criterion=c)
            results[(label, s)] = acc(m)
    print("digits MLP accuracy: dense", round(base, 4), {k: round(v, 4) for k, v in results.items()})
    # At 50% both keep the dense accuracy to within ~2 points; at 70% WANDA is NOT reliably better than
    # magnitude on this small MLP (seed-dependent), so that is reported, not asserted.
    assert results[("wanda", 0.5)] >= results[("magnitude", 0.5)] - 0.02
    assert results[("wanda", 0.5)] >= base - 0.03
