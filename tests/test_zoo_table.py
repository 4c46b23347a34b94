"""benchmarks/zoo.py's bookkeeping on made-up rows (no models): the JSON a run merges into after
each model, and the table's marks for rows that were timed on a busy machine or another thread count."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # benchmarks/ is a directory of the repository, not an installed package
from benchmarks import zoo  # noqa: E402
from deepcomp.errors import DeepcompError  # noqa: E402


def row(name, speedup, **kw):
    return {"model": name, "params": 1e6, "file_bytes": 2**20, "ratio": 4.0, "max_diff": 1e-6, "spread": 0.1,
            "same_top1": True, "dense_ms": 2.0 * speedup, "deepcomp_ms": 2.0, "speedup": speedup, "threads": 2,
            "busy": False, **kw}


def test_marked_rows_stay_out_of_the_mean():
    text = zoo.table([row("resnet18", 2.0), row("resnet50", 8.0), row("vgg16", 100.0, busy=True),
                      row("alexnet", 50.0, threads=1), row("vit_b_16", 0.5)], 2)
    assert "100.00x (busy) |" in text and "50.00x (1 thread) |" in text
    assert "over the 2 CNN models timed on a quiet machine: 4.00x; slower than PyTorch: 0." in text


def test_each_model_is_kept_as_it_finishes(tmp_path, monkeypatch):
    store = tmp_path / "zoo.json"
    store.write_text(json.dumps({"alexnet": row("alexnet", 3.0)}))

    def fake(name, threads, repeat, workdir):
        if name == "bad":
            raise DeepcompError("unsupported op 'frobnicate': at features.3")
        if name == "boom":
            raise RuntimeError("killed half-way")
        return row(name, 2.5)

    monkeypatch.setattr(zoo, "run_model", fake)
    monkeypatch.setattr(zoo, "all_models", lambda: ["alexnet", "bad", "resnet18", "boom"])
    with pytest.raises(RuntimeError):
        zoo.main(["--models", "resnet18,bad,boom", "--json", str(store), "--out", str(tmp_path / "zoo.md")])
    kept = json.loads(store.read_text())
    assert set(kept) == {"alexnet", "resnet18", "bad"}  # the earlier run's row, and what finished before the crash
    assert kept["bad"]["error"] == "unsupported op 'frobnicate'"
    assert zoo.main(["--models", "resnet18", "--json", str(store), "--out", str(tmp_path / "zoo.md")]) == 0
    text = (tmp_path / "zoo.md").read_text()
    assert text.index("| alexnet") < text.index("| bad") < text.index("| resnet18")  # torchvision's order


def test_a_row_over_tolerance_passes_only_when_torch_fp32_is_as_far_from_float64():
    close = row("resnet152", 2.8, max_diff=1.8e-4, fp64_diff={"deepcomp": 1.4e-4, "torch": 1.5e-4})
    far = row("resnet101", 2.7, max_diff=1.8e-4, fp64_diff={"deepcomp": 1.6e-4, "torch": 1.0e-5})
    unchecked = row("resnet50", 2.5, max_diff=2e-4)
    assert [zoo.within_tolerance(r) for r in (row("resnet18", 2.0), close, far, unchecked)] == [True, True, False, False]
    text = zoo.table([close, far, unchecked], 2)
    assert "1.8e-04 (vs float64: deepcomp 1.4e-04, torch fp32 1.5e-04) |" in text
    assert text.count("**over**") == 2
    assert "3 of 3 models give the same top-1; 1 are within the tolerance" in text


def test_float64_errors_measure_distance_from_the_exact_model():
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()
    x = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    with torch.no_grad():
        y = model(torch.from_numpy(x)).numpy()
    err = zoo.float64_errors(model, x, {"same": y, "shifted": y + 0.5}, 1.0)
    assert err["same"] < 1e-6 and abs(err["shifted"] - 0.5) < 1e-6
    assert next(model.parameters()).dtype == torch.float32  # the caller's model is left as it was


def test_an_empty_model_list_is_refused(tmp_path):
    with pytest.raises(SystemExit):
        zoo.main(["--models", " ,", "--json", str(tmp_path / "z.json"), "--out", str(tmp_path / "z.md")])
