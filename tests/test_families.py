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


FAMILIES = {
    "mobilenet_v2": (lambda: tv.models.mobilenet_v2(width_mult=0.35, num_classes=10), 64),
    "mobilenet_v3_small": (lambda: tv.models.mobilenet_v3_small(num_classes=10), 64),
    "efficientnet_b0": (lambda: tv.models.efficientnet_b0(num_classes=10), 64),
    "regnet_y_400mf": (lambda: tv.models.regnet_y_400mf(num_classes=10), 64),
    "mnasnet0_5": (lambda: tv.models.mnasnet0_5(num_classes=10), 64),
    "shufflenet_v2_x0_5": (lambda: tv.models.shufflenet_v2_x0_5(num_classes=10), 64),
    "convnext": (_convnext, 32),
    "vit": (_vit, 32),
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


@pytest.mark.parametrize("make, op, where", [
    (lambda: tv.models.swin_t(), "_get_relative_position_bias", "features.1.0.attn"),
    (lambda: tv.models.maxvit_t(), "einsum", "blocks.0.layers.0.layers.window_attention.attn_layer.1"),
])
def test_refused_families_name_op_path_and_supported_ops(make, op, where):
    """Swin's relative position bias (an fx-wrapped function) and MaxViT's einsum are not captured
    yet: the error is one line naming the op, the module path and what is supported."""
    from deepcomp.capture import capture
    from deepcomp.errors import UnsupportedOpError

    with pytest.raises(UnsupportedOpError) as e:
        capture(make().eval(), (3, 224, 224))
    msg = str(e.value)
    assert "\n" not in msg and f"'{op}'" in msg and where in msg and "deepcomp supports" in msg and "Conv2d" in msg
