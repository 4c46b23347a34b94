"""The data-driven criteria on nn.MultiheadAttention: calibration_forward runs each attention with its
projections called as modules (so in_proj sees the query and out_proj the attention context) and
gives the module's own output; WANDA, LRP-0 and Taylor then prune both projections."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deepcomp.errors import RecipeError
from deepcomp.prune import (
    Magnitude,
    RelevanceCriterion,
    WandaCriterion,
    collect_activation_norms,
    compute_masks,
)
from deepcomp.prune.attention import calibration_forward


class TinyViT(nn.Module):
    """Tokens [N, 6, 16] -> self-attention -> mean over tokens -> classes; ``scale`` skews the
    input features' magnitudes (what makes WANDA differ from magnitude)."""

    def __init__(self, batch_first=True):
        super().__init__()
        torch.manual_seed(0)
        self.register_buffer("scale", torch.logspace(-2, 1, 16))
        self.attn = nn.MultiheadAttention(16, 2, batch_first=batch_first)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = x * self.scale
        if not self.attn.batch_first:
            x = x.transpose(0, 1)
        y, _ = self.attn(x, x, x, need_weights=False)
        return self.head(y.mean(1 if self.attn.batch_first else 0))


def _data(n=3):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(4, 6, 16, generator=g), torch.randint(0, 5, (4,), generator=g)) for _ in range(n)]


def _bool_mask(*shape):
    m = torch.rand(*shape, generator=torch.Generator().manual_seed(2)) < 0.3
    m[..., 0] = False  # every row keeps one key (a fully masked row is NaN in torch too)
    return m


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("kw", [
    dict(need_weights=False),
    dict(),
    dict(average_attn_weights=False),
    dict(attn_mask=_bool_mask(5, 5)),
    dict(attn_mask=torch.randn(4 * 2, 5, 5)),
    dict(key_padding_mask=_bool_mask(4, 5), need_weights=False),
    dict(attn_mask=torch.triu(torch.full((5, 5), float("-inf")), 1), is_causal=True, need_weights=False),
])
def test_calibration_forward_equals_the_module(batch_first, kw):
    m = nn.MultiheadAttention(16, 2, batch_first=batch_first).eval()
    x = torch.randn(4, 5, 16) if batch_first else torch.randn(5, 4, 16)
    ref = m(x, x, x, **kw)
    with calibration_forward(m):
        got = m(x, x, x, **kw)
    torch.testing.assert_close(got[0], ref[0], atol=1e-5, rtol=1e-5)
    assert (got[1] is None) == (ref[1] is None)
    if ref[1] is not None:
        torch.testing.assert_close(got[1], ref[1], atol=1e-6, rtol=1e-5)


def test_calibration_forward_unbatched_and_unpacked_cross_attention():
    m = nn.MultiheadAttention(16, 4).eval()
    x = torch.randn(5, 16)
    ref = m(x, x, x, average_attn_weights=False)
    with calibration_forward(m):
        got = m(x, x, x, average_attn_weights=False)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    cross = nn.MultiheadAttention(16, 2, kdim=8, vdim=12, batch_first=True).eval()  # q/k/v in three parameters
    q, k, v = torch.randn(2, 5, 16), torch.randn(2, 7, 8), torch.randn(2, 7, 12)
    ref = cross(q, k, v)
    with calibration_forward(cross):
        got = cross(q, k, v)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_projections_see_query_and_context_and_the_module_is_restored():
    m = TinyViT().eval()
    x, _ = _data(1)[0]
    norms = collect_activation_norms(m, [x])
    xs = x * m.scale
    torch.testing.assert_close(norms["attn.in_proj"], xs.reshape(-1, 16).norm(dim=0))
    # the context from torch's own attention weights and value projection
    with torch.no_grad():
        _, w = m.attn(xs, xs, xs, average_attn_weights=False)  # [N, heads, L, S]
        v = F.linear(xs, m.attn.in_proj_weight[32:], m.attn.in_proj_bias[32:]).reshape(4, 6, 2, 8).transpose(1, 2)
        context = (w @ v).transpose(1, 2).reshape(-1, 16)
    torch.testing.assert_close(norms["attn.out_proj"], context.norm(dim=0), atol=1e-5, rtol=1e-5)
    assert "forward" not in m.attn.__dict__ and torch.backends.mha.get_fastpath_enabled()


def test_transformer_encoder_layer_fast_path_is_bypassed():
    torch.manual_seed(0)
    model = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 2,
                                  enable_nested_tensor=False).eval()
    x = torch.randn(3, 5, 16)
    with torch.no_grad():
        ref = model(x)
        with calibration_forward(model):
            torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=1e-5)
    norms = collect_activation_norms(model, [x])
    assert {"layers.0.self_attn.in_proj", "layers.1.self_attn.out_proj"} <= set(norms)


@pytest.mark.parametrize("make", [
    lambda m, d: WandaCriterion.from_batches(m, [x for x, _ in d]),
    lambda m, d: RelevanceCriterion.from_batches(m, d, rule="lrp0"),
    lambda m, d: RelevanceCriterion.from_batches(m, d, rule="taylor"),
], ids=["wanda", "lrp0", "taylor"])
def test_every_criterion_prunes_both_projections(make):
    m = TinyViT().eval()
    data = _data()
    criterion = make(m, data)
    masks = compute_masks(m, 0.75, criterion=criterion)
    magnitude = compute_masks(m, 0.75, criterion=Magnitude())
    layers = dict(m.named_modules())
    for name in ("attn.in_proj", "attn.out_proj"):
        scores = criterion.score(name, layers[name])
        assert torch.isfinite(scores).all() and scores.std() > 0  # real statistics, not zeros
        assert masks[name].float().mean().item() == pytest.approx(0.25, abs=1e-3)
        assert not torch.equal(masks[name], magnitude[name])  # the data changed the choice


def test_wanda_follows_the_input_scales():
    m = TinyViT().eval()
    mask = compute_masks(m, 0.5, criterion=WandaCriterion.from_batches(m, [x for x, _ in _data()]))["attn.in_proj"]
    kept = mask.float().mean(0)  # per input feature; scale grows with the feature index
    assert kept[:4].mean() < 0.2 and kept[-4:].mean() > 0.8


def test_taylor_of_the_calibration_forward_is_the_modules_gradient():
    m = TinyViT().eval()
    data = _data(1)
    rel = RelevanceCriterion.from_batches(m, data, rule="taylor").relevance
    x, y = data[0]
    w = m.attn.in_proj_weight
    g_in, g_out = torch.autograd.grad(F.cross_entropy(m(x), y), [w, m.attn.out_proj.weight])  # torch's own forward
    wo = m.attn.out_proj.weight
    torch.testing.assert_close(rel["attn.in_proj"], (w * g_in).abs().detach(), atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(rel["attn.out_proj"], (wo * g_out).abs().detach(), atol=1e-6, rtol=1e-4)


def test_not_batch_first_works_and_cross_attention_is_one_line_error():
    m = TinyViT(batch_first=False).eval()
    assert "attn.out_proj" in collect_activation_norms(m, [x for x, _ in _data(1)])

    class Cross(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(16, 2, batch_first=True)

        def forward(self, x):
            return self.attn(x, x + 1, x + 1)[0].mean(1)

    with pytest.raises(RecipeError, match="attn.*cross-attention.*only self-attention.*--criterion magnitude"):
        WandaCriterion.from_batches(Cross(), [torch.randn(2, 4, 16)])
