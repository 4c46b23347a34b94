"""nn.MultiheadAttention's packed q/k/v projection (a bare parameter, not an nn.Linear) is pruned and
coded like a linear layer's weight, and the file still holds the model's own state_dict keys."""

import numpy as np
import pytest
import torch
from torch import nn

import deepcomp
from deepcomp.dcz import decompress, read_dcz
from deepcomp.pipeline import compress
from deepcomp.prune.unstructured import prunable_layers, weight_key

tv = pytest.importorskip("torchvision")


def _vit():
    torch.manual_seed(0)
    m = tv.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
                                    mlp_dim=64, num_classes=10).eval()
    with torch.no_grad():
        m.heads.head.weight.normal_(0, 0.05)
    return m


def test_packed_projection_is_a_layer_without_new_keys():
    m = _vit()
    keys = list(m.state_dict())
    layers = prunable_layers(m)
    name = "encoder.layers.encoder_layer_0.self_attention.in_proj"
    assert name in layers and layers[name].weight is m.encoder.layers[0].self_attention.in_proj_weight
    assert weight_key(name, layers[name]) == "encoder.layers.encoder_layer_0.self_attention.in_proj_weight"
    assert list(m.state_dict()) == keys  # the view owns no parameter
    assert prunable_layers(m)[name] is layers[name]  # attached once
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = m(x)
        layers[name].weight.zero_()  # the view writes the attention's own parameter
        assert not torch.equal(m(x), ref)


def test_vit_compresses_its_attention_projection(tmp_path):
    m = _vit()
    res = compress(m, input_shape=(3, 32, 32), progress=False)
    path = tmp_path / "vit.dcz"
    res.save(path)
    c = read_dcz(path)
    key = "encoder.layers.encoder_layer_1.self_attention.in_proj_weight"
    assert key in c.coded and key not in c.dense
    w = m.encoder.layers[1].self_attention.in_proj_weight
    assert 0.15 < float((w != 0).float().mean()) < 0.25  # the default recipe's 80% sparsity
    sd = decompress(path)
    assert set(sd) == set(m.state_dict())
    rt = deepcomp.load(path)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        ref = m(torch.from_numpy(x)).numpy()
    y = rt(x)
    assert ref.std() > 1e-3
    np.testing.assert_allclose(y, ref, atol=1e-4 * np.abs(ref).max(), rtol=0)
    assert (y.argmax(1) == ref.argmax(1)).all()


def test_unpacked_attention_is_left_alone():
    att = nn.MultiheadAttention(16, 2, kdim=8, vdim=8, batch_first=True)  # q/k/v in three parameters
    assert not any(k.endswith("in_proj") for k in prunable_layers(att))


def test_codebook_training_reaches_the_packed_projection():
    from deepcomp.prune import prune
    from deepcomp.quantize import CodebookTraining, share_weights

    m = _vit()
    masks = prune(m, 0.8)
    name = "encoder.layers.encoder_layer_0.self_attention.in_proj"
    shared = share_weights(m, {name: masks[name]}, {name: 3})
    ct = CodebookTraining(m, shared)  # parametrizes the attention's in_proj_weight
    x = torch.randn(2, 3, 32, 32)
    (m(x) ** 2).sum().backward()
    (cb,) = ct.params()
    assert cb.grad is not None and cb.grad.abs().sum() > 0
    with torch.no_grad():
        cb.add_(0.1)
    ct.finish()
    w = m.encoder.layers[0].self_attention.in_proj_weight
    assert isinstance(w, nn.Parameter) and prunable_layers(m)[name].weight is w
    np.testing.assert_allclose(w.detach().numpy(), shared[name].dense(), atol=1e-6)
    assert set(m.state_dict()) == set(_vit().state_dict())  # (the re-made parameter comes last, as in a Linear)
