"""One small model of every torchvision classification family, captured and run by the runtime on
pruned and shared weights, against PyTorch on the same weights (benchmarks/zoo.py runs the full
models). Inputs are small where the architecture allows, so each case takes a few seconds."""

import numpy as np
import pytest
import torch

from deepcomp.runtime import RuntimeModel

from runtime_helpers import loaded_parts, prune_and_share

tv = pytest.importorskip("torchvision")


def _vit():
    return tv.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
                                       mlp_dim=64, num_classes=10)


def _convnext():
    from torchvision.models.convnext import CNBlockConfig

    cfg = [CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)]
    return tv.models.ConvNeXt(cfg, stochastic_depth_prob=0.1, num_classes=10)


def _swin():
    """Two stages of two blocks on a 16x16 then 8x8 map with 4x4 windows: the second block of each
    stage is shifted (roll, mask), the stage boundary merges patches."""
    from torchvision.models.swin_transformer import SwinTransformer

    return SwinTransformer(patch_size=[2, 2], embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=[4, 4],
                           stochastic_depth_prob=0.1, num_classes=10)


def _swin_v2(**kw):
    """_swin's shape with Swin v2's blocks (post-norm, cosine attention, continuous position bias)
    and patch merging (norm after the reduction)."""
    from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformer, SwinTransformerBlockV2

    return SwinTransformer(**{**dict(patch_size=[2, 2], embed_dim=16, depths=[2, 2], num_heads=[2, 4],
                                     window_size=[4, 4], stochastic_depth_prob=0.1, num_classes=10), **kw},
                           block=SwinTransformerBlockV2, downsample_layer=PatchMergingV2)


def _maxvit():
    """Two MaxViT blocks (MBConv with squeeze-excitation, window and grid attention) on 8x8 then 4x4."""
    from torchvision.models.maxvit import MaxVit

    return MaxVit(input_size=(32, 32), stem_channels=8, partition_size=2, block_channels=[16, 32],
                  block_layers=[1, 1], head_dim=8, stochastic_depth_prob=0.1, num_classes=10)


FAMILIES = {
    "mobilenet_v2": (lambda: tv.models.mobilenet_v2(width_mult=0.35, num_classes=10), 64),
    "mobilenet_v3_small": (lambda: tv.models.mobilenet_v3_small(num_classes=10), 64),
    "efficientnet_b0": (lambda: tv.models.efficientnet_b0(num_classes=10), 64),
    "regnet_y_400mf": (lambda: tv.models.regnet_y_400mf(num_classes=10), 64),
    "mnasnet0_5": (lambda: tv.models.mnasnet0_5(num_classes=10), 64),
    "shufflenet_v2_x0_5": (lambda: tv.models.shufflenet_v2_x0_5(num_classes=10), 64),
    "convnext": (_convnext, 32),
    "vit": (_vit, 32),
    "swin": (_swin, 32),
    "swin_v2": (_swin_v2, 32),
    "maxvit": (_maxvit, 32),
}


def nonvanishing(model):
    """Weights initialised to zero (classifier heads) get random values, so outputs vary with x."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2 and not p.any():
                p.normal_(0, 0.05)
    return model


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_runs_like_torch(family):
    make, size = FAMILIES[family]
    torch.manual_seed(0)
    model = prune_and_share(nonvanishing(make().eval()))
    graph, dense, coded = loaded_parts(model, (3, size, size))
    m = RuntimeModel(graph, dense, coded)
    x = np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    y = m(x)
    assert ref.std() > 1e-3, "the logits do not vary: the comparison would prove nothing"
    np.testing.assert_allclose(y, ref, atol=1e-4 * np.abs(ref).max(), rtol=0)
    assert (y.argmax(1) == ref.argmax(1)).all()


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("how", ["trace", "script"])
@pytest.mark.parametrize("family", ["shufflenet_v2_x0_5", "mobilenet_v3_small", "convnext"])
def test_family_as_torchscript(family, how):
    from deepcomp.bench import DenseTorchGraph
    from deepcomp.capture import capture

    make, size = FAMILIES[family]
    torch.manual_seed(0)
    model = nonvanishing(make().eval())
    x = torch.randn(2, 3, size, size)
    sm = torch.jit.trace(model, x[:1]) if how == "trace" else torch.jit.script(model)
    g = capture(sm, (3, size, size))
    with torch.no_grad():
        y = DenseTorchGraph(g, {k: v.numpy() for k, v in model.state_dict().items()})(x)
        torch.testing.assert_close(y, model(x), atol=1e-4, rtol=1e-4)
    assert [n["op"] for n in g["nodes"]] == [n["op"] for n in capture(model, (3, size, size))["nodes"]]


@pytest.mark.parametrize("family", ["swin", "swin_v2", "maxvit"])
def test_windowed_family_compresses_saves_loads_and_matches_torch(family, tmp_path):
    """The default recipe (sparsity 0.8, conv 8 / fc 5 bits) through the .dcz file and deepcomp.load,
    against PyTorch on the compressed weights; attention projections are pruned like other linears,
    Swin v2's position-bias MLP (applied to stored coordinates only) is kept dense but shared, and
    the runtime computes the bias from the weights the file stores."""
    import deepcomp
    from deepcomp.pipeline import compress

    make, size = FAMILIES[family]
    torch.manual_seed(0)
    res = compress(nonvanishing(make().eval()), input_shape=(3, size, size), progress=False)
    assert any(k.endswith("qkv") or k.endswith("to_qkv") for k in res.plan), "attention projections not compressed"
    assert {"roll", "window_mask"} <= {n["op"] for n in res.graph["nodes"]} or family == "maxvit"
    assert res.graph["version"] == 4  # constant's index (and roll, window_mask) are version 4
    cpb = [k for k in res.plan if ".cpb_mlp." in k]
    assert len(cpb) == (8 if family == "swin_v2" else 0)
    assert all(res.plan[k].density == 1.0 and "kept dense" in res.plan[k].label for k in cpb)
    path = tmp_path / f"{family}.dcz"
    res.save(path)
    m = deepcomp.load(path)
    x = np.random.default_rng(0).standard_normal((3, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        ref = res.model(torch.from_numpy(x)).numpy()
    y = m(x)
    assert ref.std() > 1e-3, "the logits do not vary: the comparison would prove nothing"
    np.testing.assert_allclose(y, ref, atol=1e-4 * np.abs(ref).max(), rtol=0)
    assert (y.argmax(1) == ref.argmax(1)).all()


class _Einsum(torch.nn.Module):
    def __init__(self, equation):
        super().__init__()
        self.equation = equation
        self.fc = torch.nn.Linear(4, 4)

    def forward(self, x):  # x [N, 2, 3, 4]
        y = self.fc(x)
        return torch.einsum(self.equation, x, y)


@pytest.mark.parametrize("equation", ["bhid,bhjd->bhij", "bhij,bhjk->bhik", "bhdi,bhdj->bhji"])
def test_einsum_matrix_products_run_like_torch(equation):
    from deepcomp.bench import DenseTorchGraph
    from deepcomp.capture import capture

    model = _Einsum(equation).eval()
    shape = (2, 3, 4) if equation != "bhij,bhjk->bhik" else (2, 4, 4)
    g = capture(model, shape)
    x = torch.randn(2, *shape)
    with torch.no_grad():
        ref = model(x)
    m = RuntimeModel(g, {k: v.numpy() for k, v in model.state_dict().items()}, {})
    np.testing.assert_allclose(m(x.numpy()), ref.numpy(), atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(DenseTorchGraph(g, {k: v.numpy() for k, v in model.state_dict().items()})(x), ref)


@pytest.mark.parametrize("size", [24, 40])
def test_swin_pads_maps_its_windows_do_not_tile(size):
    """12x12 then 6x6 maps under 4x4 windows (24), 20x20 then 10x10 (40): padded, attended, cropped;
    5x5 maps merge with padding too (40)."""
    from torchvision.models.swin_transformer import SwinTransformer

    from deepcomp.capture import capture

    torch.manual_seed(0)
    model = nonvanishing(SwinTransformer(patch_size=[2, 2], embed_dim=16, depths=[2, 2, 2], num_heads=[2, 2, 4],
                                         window_size=[4, 4], stochastic_depth_prob=0.0, num_classes=10).eval())
    g = capture(model, (3, size, size))
    assert "pad" in {n["op"] for n in g["nodes"]}
    m = RuntimeModel(g, {k: v.numpy() for k, v in model.state_dict().items()}, {})
    x = np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(m(x), ref, atol=1e-4 * np.abs(ref).max(), rtol=0)


def test_swin_v2_key_bias_and_clamped_logit_scale_run_like_torch():
    """A trained v2 may hold a nonzero key third in its q/k/v bias (the attention zeroes it: the
    graph subtracts it from k) and logit scales above log(100) (clamped); a 6x6 window on a 12x12
    map pads nothing, a stage with one window shifts nothing."""
    from deepcomp.capture import capture

    torch.manual_seed(0)
    model = nonvanishing(_swin_v2(window_size=[6, 6], stochastic_depth_prob=0.0).eval())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("qkv.bias"):
                p.normal_(0, 0.5)
            if name.endswith("logit_scale"):
                p.copy_(torch.linspace(1.0, 6.0, p.numel()).reshape(p.shape))
    g = capture(model, (3, 24, 24))
    assert {"sub", "normalize", "exp"} <= {n["op"] for n in g["nodes"]}
    m = RuntimeModel(g, {k: v.numpy() for k, v in model.state_dict().items()}, {})
    x = np.random.default_rng(0).standard_normal((2, 3, 24, 24)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert ref.std() > 1e-3
    np.testing.assert_allclose(m(x), ref, atol=1e-4 * np.abs(ref).max(), rtol=0)


@pytest.mark.parametrize("make, shape, op, where", [
    (lambda: _Einsum("bhid,bhjd->bhjid"), (2, 3, 4), "einsum", "einsum"),
    (lambda: _Einsum("bhid,bhjd->bhd"), (2, 3, 4), "einsum", "einsum"),
])
def test_refused_name_op_path_and_supported_ops(make, shape, op, where):
    """An einsum that is no batched matrix product is refused at capture: one line
    naming the op, the module path and what is supported."""
    from deepcomp.capture import capture
    from deepcomp.errors import UnsupportedOpError

    with pytest.raises(UnsupportedOpError) as e:
        capture(make().eval(), shape)
    msg = str(e.value)
    assert "\n" not in msg and f"'{op}'" in msg and where in msg and "deepcomp supports" in msg and "Conv2d" in msg
