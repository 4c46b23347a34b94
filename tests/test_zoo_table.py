"""benchmarks/zoo.py's bookkeeping on made-up rows (no models): the JSON a run merges into after
each model, and the table's marks for rows that were timed on a busy machine or another thread count."""

import json
import sys
from pathlib import Path

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
