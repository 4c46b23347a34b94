"""`deepcomp sweep` / `sensitivity` on scikit-learn's digits: every method, CSV columns, PNG, resume."""

import csv

import numpy as np
import pytest
import torch
from torch import nn

from deepcomp.data import from_arrays
from deepcomp.zoo import LoadedModel


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = d.target.astype(np.int64)
    return from_arrays(x[:1400], y[:1400]), from_arrays(x[1400:], y[1400:])


@pytest.fixture(scope="module")
def trained(digits):
    from deepcomp.train import train

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Flatten(),
                          nn.Linear(16 * 16, 64), nn.ReLU(), nn.Linear(64, 10))
    train(model, digits[0], epochs=4, lr=3e-3, batch_size=64, progress=False)
    return model.cpu().eval()


def _loaded(model):
    import copy

    return LoadedModel(copy.deepcopy(model), "digits-cnn", (1, 8, 8), "test:digits")


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_sweep_every_method_and_resume(tmp_path, digits, trained, monkeypatch):
    import deepcomp.study as study
    from deepcomp.train import evaluate
    from deepcomp.data import make_loader

    base = evaluate(trained, make_loader(digits[1], batch_size=512))["top1"]
    assert base > 0.85
    out = tmp_path / "sw"
    real = study._write_dcz
    calls = {"n": 0}

    def interrupt_after_five(*a, **k):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(study, "_write_dcz", interrupt_after_five)
    with pytest.raises(KeyboardInterrupt):
        study.sweep(_loaded(trained), *digits, out, sparsities=(0.5, 0.9), progress=False, label="digits")
    first = _rows(out / "sweep.csv")
    assert first[0] == list(study.COLUMNS) and len(first) == 1 + 5
    monkeypatch.setattr(study, "_write_dcz", real)
    rows = study.sweep(_loaded(trained), *digits, out, sparsities=(0.5, 0.9), progress=False, label="digits")
    table = _rows(out / "sweep.csv")
    assert table[:6] == first  # the points written before the interruption are kept, not redone
    assert [(r["method"], float(r["sparsity"])) for r in rows] == [(m, s) for m in study.METHODS for s in (0.5, 0.9)]
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    by = {(r["method"], float(r["sparsity"])): r for r in rows}
    for (m, s), r in by.items():
        acc = float(r["accuracy"])
        assert 0.0 <= acc <= 1.0 and int(r["file_bytes"]) > 0 and float(r["runtime_ms"]) > 0, (m, s)
    dense_params = sum(p.numel() for p in trained.parameters())
    # unstructured methods keep ~(1 - s) of the prunable weights; structured ones shrink the model
    assert int(by[("magnitude-layer", 0.9)]["params"]) < 0.2 * dense_params
    assert int(by[("l1-filter", 0.5)]["params"]) < 0.6 * dense_params
    # at 50% magnitude pruning keeps most of the accuracy, at 90% one-shot it loses more
    assert float(by[("magnitude-global", 0.5)]["accuracy"]) > base - 0.1
    assert float(by[("magnitude-layer", 0.9)]["accuracy"]) < float(by[("magnitude-layer", 0.5)]["accuracy"])
    with pytest.raises(Exception, match="other settings"):
        study.sweep(_loaded(trained), *digits, out, sparsities=(0.5,), finetune_epochs=1, progress=False,
                    label="digits")


def test_sweep_with_retraining_recovers_accuracy(tmp_path, digits, trained):
    import deepcomp.study as study

    kw = dict(methods=["magnitude-layer"], sparsities=(0.9,), progress=False, label="digits")
    (once,) = study.sweep(_loaded(trained), *digits, tmp_path / "a", **kw)
    (re,) = study.sweep(_loaded(trained), *digits, tmp_path / "b", finetune_epochs=2, **kw)
    assert float(re["accuracy"]) > float(once["accuracy"])
    assert int(re["params"]) == int(once["params"])  # retraining keeps the masks


def test_sensitivity_table_csv_png(tmp_path, digits, trained):
    import deepcomp.study as study

    base, rows = study.sensitivity(_loaded(trained), digits[1], tmp_path, sparsities=(0.5, 0.95), progress=False)
    assert [(r["layer"], r["sparsity"]) for r in rows] == [(n, s) for n in ("0", "4", "8", "10") for s in (0.5, 0.95)]
    for name in ("0", "4", "8", "10"):
        a = {r["sparsity"]: r["drop"] for r in rows if r["layer"] == name}
        assert a[0.95] >= a[0.5] - 0.02, name
    assert _rows(tmp_path / "sensitivity.csv")[0] == ["layer", "sparsity", "accuracy", "drop"]
    assert (tmp_path / "sensitivity.png").stat().st_size > 1000
    assert "| 10 |" in study.sensitivity_table(base, rows)


def test_cli_rejects_unknown_methods(tmp_path, capsys):
    from deepcomp.cli import main

    assert main(["sweep", "zoo:lenet-5", "--data", "npz:x.npz", "--methods", "magnitude,bogus", "-o", str(tmp_path)]) == 2
    assert "bogus" in capsys.readouterr().err
