"""`deepcomp compress` as a new user runs it: flags checked, logs written, same command same bytes."""

import json

import pytest

from deepcomp.cli import main


@pytest.mark.parametrize("flag", ["--conv-bits", "--fc-bits", "--index-bits"])
@pytest.mark.parametrize("value", ["0", "-1"])
def test_zero_or_negative_bits_are_rejected(tmp_path, capsys, flag, value):
    out = tmp_path / "m.dcz"
    with pytest.raises(SystemExit) as exit_:  # argparse's one-line error
        main(["compress", "zoo:lenet-300-100", flag, value, "-q", "-o", str(out)])
    assert exit_.value.code == 2
    assert flag in capsys.readouterr().err
    assert not out.exists()


def test_same_command_same_bytes_and_seed_reaches_the_init(tmp_path):
    files = []
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        path = tmp_path / f"{name}.dcz"
        assert main(["compress", "zoo:lenet-5", "--seed", seed, "-q", "-o", str(path)]) == 0
        files.append(path.read_bytes())
    assert files[0] == files[1]
    assert files[0] != files[2]


def test_log_file_without_data_records_the_written_file(tmp_path):
    log = tmp_path / "log.jsonl"
    out = tmp_path / "m.dcz"
    assert main(["compress", "zoo:lenet-300-100", "-q", "-o", str(out), "--log-file", str(log)]) == 0
    (rec,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert rec["stage"] == "written" and rec["size"] == out.stat().st_size
    assert rec["sparsity"] == pytest.approx(0.92, abs=0.01)  # the paper's LeNet-300-100 table keeps 8%


def test_result_prints_as_a_short_summary():
    from deepcomp.pipeline import compress

    result = compress("zoo:lenet-300-100", progress=False)
    text = str(result)
    assert len(text) < 300 and "lenet-300-100" in text and "kept" in text
    assert repr(result) == text


def _tiny_npz(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(path, x_train=rng.random((64, 1, 28, 28), dtype=np.float32), y_train=rng.integers(0, 10, 64),
             x_test=rng.random((32, 1, 28, 28), dtype=np.float32), y_test=rng.integers(0, 10, 32))
    return f"npz:{path}"


def _stages(log):
    return [json.loads(line)["stage"] for line in log.read_text().splitlines()]


def test_recipe_schedule_runs_with_data_and_flags_override_each_field(tmp_path, capsys):
    data = _tiny_npz(tmp_path)
    recipe = tmp_path / "r.toml"
    recipe.write_text('name = "r"\n[defaults]\nsparsity = 0.5\n[schedule]\niterative = 2\nfinetune_epochs = 1\n'
                      'codebook_epochs = 1\nlr = 0.01\nbatch_size = 32\nweight_decay = 0.0\n')
    log = tmp_path / "a.jsonl"
    out = tmp_path / "a.dcz"
    assert main(["compress", "zoo:lenet-300-100", "--recipe", str(recipe), "--data", data, "-q", "--json",
                 "-o", str(out), "--log-file", str(log)]) == 0
    assert _stages(log) == ["prune-1/2", "prune-2/2", "codebooks", "written"]
    report = json.loads(capsys.readouterr().out)
    acc = report["accuracy"]
    assert set(acc) == {"baseline", "compressed"} and acc["compressed"]["samples"] == 32
    from deepcomp.dcz import read_dcz

    sched = read_dcz(out).meta["recipe"]["schedule"]
    assert sched == {"criterion": "magnitude", "iterative": 2, "finetune_epochs": 1, "lr": 0.01,
                     "codebook_epochs": 1, "batch_size": 32, "weight_decay": 0.0}
    log2 = tmp_path / "b.jsonl"
    out2 = tmp_path / "b.dcz"
    assert main(["compress", "zoo:lenet-300-100", "--recipe", str(recipe), "--data", data, "-q", "-o", str(out2),
                 "--log-file", str(log2), "--iterative", "3", "--codebook-epochs", "0", "--lr", "0.001",
                 "--batch-size", "16", "--weight-decay", "0.001", "--finetune-epochs", "2",
                 "--criterion", "wanda", "--calibration-batches", "1"]) == 0
    assert _stages(log2) == ["prune-1/3"] * 2 + ["prune-2/3"] * 2 + ["prune-3/3"] * 2 + ["written"]
    assert read_dcz(out2).meta["recipe"]["schedule"] == {
        "criterion": "wanda", "iterative": 3, "finetune_epochs": 2, "lr": 0.001, "codebook_epochs": 0,
        "batch_size": 16, "weight_decay": 0.001}


def test_text_report_prints_both_accuracies(tmp_path, capsys):
    data = _tiny_npz(tmp_path)
    assert main(["compress", "zoo:lenet-300-100", "--data", data, "-q", "-o", str(tmp_path / "m.dcz"),
                 "--iterative", "1", "--finetune-epochs", "1", "--codebook-epochs", "0"]) == 0
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("test top-1")]
    assert len(line) == 1 and "baseline" in line[0] and "deepcomp runtime" in line[0]


@pytest.mark.parametrize("body, word", [
    ("[schedule]\nepochs = 3\n", "epochs"),
    ("[schedule]\ncriterion = \"random\"\n", "criterion"),
    ("[schedule]\niterative = 0\n", "iterative"),
    ("[schedule]\nlr = -1.0\n", "lr"),
])
def test_bad_schedule_fields_are_rejected(tmp_path, capsys, body, word):
    recipe = tmp_path / "r.toml"
    recipe.write_text(body)
    assert main(["compress", "zoo:lenet-300-100", "--recipe", str(recipe), "-q", "-o", str(tmp_path / "m.dcz")]) == 2
    assert word in capsys.readouterr().err


def test_without_data_the_recipe_schedule_does_not_prune_in_steps(tmp_path):
    from deepcomp.dcz import read_dcz

    out = tmp_path / "m.dcz"
    assert main(["compress", "zoo:lenet-300-100", "-q", "-o", str(out)]) == 0
    rec = read_dcz(out).meta["recipe"]
    assert rec["iterative"] == 1 and not rec["retrained"] and "schedule" not in rec
