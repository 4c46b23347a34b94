"""Activation calibration (deepcomp.quantize_int8): ranges, zero points and the three methods."""

import numpy as np
import pytest
import torch
from torch import nn

from deepcomp.errors import RecipeError
from deepcomp.quantize_int8 import ActivationSample, calibrate_inputs, qparams, random_batches


def sample_of(v, seed=0):
    s = ActivationSample(seed)
    s.add(v)
    return s


def test_relu_output_gets_zero_point_zero_and_covers_the_max():
    v = np.abs(np.random.default_rng(0).standard_normal(10000)).astype(np.float32)
    scale, zp = qparams(sample_of(v), "minmax")
    assert zp == 0 and scale == pytest.approx(v.max() / 255, rel=1e-6)


def test_signed_input_keeps_zero_exact():
    v = np.random.default_rng(1).uniform(-1.0, 3.0, 5000).astype(np.float32)
    scale, zp = qparams(sample_of(v), "minmax")
    assert 0 < zp < 255
    assert scale * (0 - zp) <= v.min() + scale and scale * (255 - zp) >= v.max() - scale


def test_percentile_clips_a_rare_spike():
    v = np.abs(np.random.default_rng(2).standard_normal(200000)).astype(np.float32)
    v[0] = 1000.0  # one outlier
    s_mm, _ = qparams(sample_of(v), "minmax")
    s_p, _ = qparams(sample_of(v), "percentile")
    assert s_p < s_mm / 50


def test_mse_clip_beats_minmax_on_its_own_criterion():
    v = np.abs(np.random.default_rng(3).standard_normal(50000)).astype(np.float32)
    err = lambda s: np.mean((v - np.clip(np.rint(v / s), 0, 255) * s) ** 2)  # noqa: E731
    s_mm, _ = qparams(sample_of(v), "minmax")
    s_mse, zp = qparams(sample_of(v), "mse")
    assert zp == 0 and s_mse < s_mm and err(s_mse) < err(s_mm)


def test_calibrate_inputs_hooks_every_layer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    q = calibrate_inputs(model, random_batches((1, 8, 8), n=2, batch=4), method="minmax")
    assert set(q) == {"0", "3"}
    assert q["0"][1] > 0 and q["3"][1] == 0  # signed image, ReLU output
    assert model.training


def test_errors_say_what_to_do():
    with pytest.raises(RecipeError, match="method"):
        qparams(sample_of(np.ones(3)), "kl")
    with pytest.raises(RecipeError, match="no activations"):
        qparams(ActivationSample(), "minmax")
