"""zoo:vgg16-small and 32x32 padded data: shapes, the paper's VGG-16 preset on it, the runtime agrees."""

import numpy as np
import torch

from deepcomp.data import from_arrays, load_dataset
from deepcomp.pipeline import compress
from deepcomp.recipes import load_recipe
from deepcomp.zoo import resolve_arch


def test_vgg16_small_layout_and_preset(tmp_path):
    model, shape = resolve_arch("zoo:vgg16-small")
    assert shape == (1, 32, 32)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 13 and sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 13
    assert model(torch.zeros(2, *shape)).shape == (2, 10)
    rec = load_recipe("deep-compression", "zoo:vgg16-small")
    assert rec.layers["features.0"]["label"] == "conv1_1" and rec.layers["classifier.0"]["density"] == 0.04
    result = compress("zoo:vgg16-small", progress=False)
    result.save(tmp_path / "v.dcz")
    import deepcomp.runtime as rt

    x = np.random.default_rng(0).standard_normal((2, *shape)).astype(np.float32)
    with torch.no_grad():
        want = result.model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(rt.load(str(tmp_path / "v.dcz"))(x), want, rtol=1e-3, atol=1e-3)


def test_pad_option_pads_with_the_black_value(tmp_path):
    x = np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.arange(4), x_test=x, y_test=np.arange(4))
    ds = load_dataset(f"npz:{tmp_path / 'd.npz'}?pad=2", "test")
    assert ds.x.shape == (4, 1, 32, 32)
    np.testing.assert_array_equal(ds.x[:, :, 2:30, 2:30], x)
    assert np.all(ds.x[:, :, :2] == x.min())
    assert from_arrays(x, np.arange(4)).x.shape == (4, 1, 28, 28)
