"""`deepcomp compress` as a new user runs it: flags checked, logs written, same command same bytes."""

import json

import pytest

from deepcomp.cli import main


@pytest.mark.parametrize("flag", ["--conv-bits", "--fc-bits", "--index-bits"])
@pytest.mark.parametrize("value", ["0", "-1"])
def test_zero_or_negative_bits_are_rejected(tmp_path, capsys, flag, value):
    out = tmp_path / "m.dcz"
    assert main(["compress", "zoo:lenet-300-100", flag, value, "-q", "-o", str(out)]) == 2
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
