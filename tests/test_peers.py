"""The peer benchmark's machinery on a small model: worker processes, output check, foreign-load
measurement, per-layer profiling, the table. ONNX Runtime only, one round."""

import json
import os
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # benchmarks/ is a directory of the repository, not an installed package
from benchmarks.peers import driver, profiling  # noqa: E402


def test_peers_small_model(tmp_path, capsys):
    out, raw = tmp_path / "peers.md", tmp_path / "peers.json"
    rc = driver.main(["--arch", "zoo:lenet-5", "--runtimes", "onnxruntime,deepcomp", "--rounds", "1", "--batch", "1,2",
                     "--threads", "1", "--seconds", "0.05", "--min-calls", "2", "--retries", "0",
                     "--workdir", str(tmp_path / "w"), "--out", str(out), "--json", str(raw)])
    assert rc == 0
    text = out.read_text()
    assert "| 1 | lenet-5 |" in text and "| 2 | lenet-5 |" in text
    assert "wrong output" not in text
    data = json.loads(raw.read_text())
    s = data["summaries"][0]
    for rt in ("onnxruntime", "deepcomp"):
        for b in ("1", "2"):
            e = s[rt]["batches"][b]
            assert e["ok"] and e["rel_err"] < 1e-3 and e["median"] > 0
            assert 0 <= e["foreign_max"] <= os.cpu_count()  # cores
        assert s[rt]["peak_rss_mb"] > 10 and s[rt]["load_s"] > 0
    # Per-layer rows: both runtimes report the two convs and two linears by module name.
    prof = data["measures"][0]["profiles"]
    for rt in ("onnxruntime", "deepcomp"):
        rows = {profiling.group_of(n, profiling.layer_groups_from(data, 0)) for n in prof[rt]["batches"]["1"]["layers"]}
        assert {"conv1", "conv2", "fc1", "fc2"} <= rows
    assert "| conv1 |" in text and "| other |" in text


def test_peers_int8_small_model(tmp_path, monkeypatch):
    """ONNX Runtime's QDQ quantization on deepcomp's calibration inputs, cached; the deepcomp int8
    runtime's whole path (compress command, torch reference, worker, ratios), here with the fp32
    recipe standing in for sparse-int8 so that it runs wherever the test runs."""
    from benchmarks.peers import int8

    cmd = list(int8.DEEPCOMP_INT8_COMPRESS)
    cmd[cmd.index("sparse-int8")] = "deep-compression"
    monkeypatch.setattr(int8, "DEEPCOMP_INT8_COMPRESS", cmd)
    out, raw, work = tmp_path / "peers.md", tmp_path / "peers.json", tmp_path / "w"
    argv = ["--arch", "zoo:lenet-5", "--runtimes", "onnxruntime-int8,deepcomp-int8", "--rounds", "1", "--batch", "2",
            "--threads", "1", "--seconds", "0.05", "--min-calls", "2", "--retries", "0", "--no-layers",
            "--workdir", str(work), "--out", str(out), "--json", str(raw)]
    assert driver.main(argv) == 0
    qdq = work / "lenet-5" / "model-b2-qdq.onnx"
    assert qdq.exists()
    import onnx

    ops = {n.op_type for n in onnx.load(str(qdq)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    s = json.loads(raw.read_text())["summaries"][0]
    e = s["onnxruntime-int8"]["batches"]["2"]
    assert 0 < e["rel_err"] < 1 and e["median"] > 0  # int8: close to torch, not equal
    assert s["deepcomp-int8"]["batches"]["2"]["rel_err"] < 1e-3  # the stand-in file is fp32
    text = out.read_text()
    assert "ONNX Runtime int8 lenet-5 b2" in text and "deepcomp int8 lenet-5 b2" in text
    row = next(l for l in text.splitlines() if l.startswith("| 2 | lenet-5 |"))
    assert row.split("|")[-5].strip().startswith("ONNX Runtime int8")  # fastest int8 peer
    assert row.split("|")[-4].strip().startswith("**") and row.split("|")[-4].strip().endswith("x**")
    mtime = qdq.stat().st_mtime_ns
    spec = json.loads(raw.read_text())["specs"][0]
    int8.prepare_qdq(spec, (1, 28, 28), lambda msg: pytest.fail("quantized again: " + msg))
    assert qdq.stat().st_mtime_ns == mtime and spec["qdq"]["2"] == str(qdq)  # reused


def test_group_of_onnx_names():
    groups = {"features.0": "features.0", "features.1": "features.0", "features.2": "other"}
    assert profiling.group_of("/features/features.1/Relu", groups) == "features.0"
    assert profiling.group_of("features.0", groups) == "features.0"
    assert profiling.group_of("/Flatten", groups) == "other"


def test_deepcomp_int8_skipped_without_recipe(tmp_path, monkeypatch):
    from benchmarks.peers import int8

    cmd = list(int8.DEEPCOMP_INT8_COMPRESS)
    cmd[cmd.index("sparse-int8")] = "no-such-recipe"
    monkeypatch.setattr(int8, "DEEPCOMP_INT8_COMPRESS", cmd)
    spec = {"name": "lenet-5", "workdir": str(tmp_path), "batches": [1]}
    why = int8.prepare_deepcomp_int8(spec, "zoo:lenet-5", lambda msg: None, ROOT)
    assert why == "the deepcomp-int8 recipe is not in this deepcomp (compress: unknown recipe 'no-such-recipe')"
    assert "int8_dcz" not in spec


def test_disturbed_profiles_are_redone(monkeypatch):
    """A profile of deepcomp or torch whose layers add up to well over the timed rounds' median is
    redone (the lowest sum kept, its excess recorded); a profiler's (ONNX Runtime's) is not."""
    sums = iter([30.0, 12.0, 40.0])
    calls = []

    def fake_worker(rt, spec, args, profile=False):
        calls.append(rt)
        return {"runtime": rt, "batches": {"1": {"layers": {"conv": next(sums) - 1.0, "fc": 1.0}}}}

    monkeypatch.setattr(driver, "run_worker", fake_worker)
    args = driver.parse_args(["--retries", "2"])
    args.started = driver.time.monotonic()
    runs = [{"batches": {"1": {"ms": ms}}} for ms in (12.0, 10.0, 11.0)]
    best = driver.profile("deepcomp", {}, args, runs)
    assert calls == ["deepcomp", "deepcomp"] and best["attempts"] == 2 and best["excess"] == pytest.approx(12 / 11)
    calls.clear()
    best = driver.profile("onnxruntime", {}, args, runs)
    assert calls == ["onnxruntime"] and best["excess"] == pytest.approx(40 / 11)


def test_ab_builds_compares_two_package_dirs(tmp_path, capsys):
    """benchmarks/ab_builds.py on one file with the repository's own package as both builds (the second
    through a directory of its own, which the child must import from, not the repository's): every
    step and the whole call get a row, the second build's with a ratio; a directory without a
    deepcomp package is refused."""
    pipeline = pytest.importorskip("deepcomp.pipeline")
    import torch

    from benchmarks import ab_builds
    from deepcomp.zoo import resolve_arch

    torch.manual_seed(0)
    model, shape = resolve_arch("zoo:lenet-5")
    path = tmp_path / "lenet.dcz"
    pipeline.compress(model, input_shape=shape, progress=False).save(str(path))
    other = tmp_path / "other"
    other.mkdir()
    (other / "deepcomp").symlink_to(ROOT / "deepcomp", target_is_directory=True)
    assert ab_builds.main([str(path), "--build", f"a={ROOT}", "--build", f"b={other}", "--rounds", "1",
                           "--seconds", "0.01", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "| step | a | b |" in out and "| end to end |" in out and out.count("x) |") >= 3
    with pytest.raises(SystemExit):
        ab_builds.main([str(path), "--build", f"a={ROOT}", "--build", f"b={tmp_path}"])
