"""The peer benchmark's table and ratio selection on made-up summaries (no workers, no models)."""

import sys
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # benchmarks/ is a directory of the repository, not an installed package
from benchmarks.peers import int8, runtimes, table  # noqa: E402


def entry(ms, err=1e-6, ok=True):
    return {"median": ms, "min": ms * 0.9, "max": ms * 1.1, "rel_err": err, "ok": ok, "disturbed": 0,
            "foreign_max": 0.0, "rounds": 1}


def summary(times: dict, errs: dict | None = None) -> dict:
    errs = errs or {}
    return {rt: {"load_s": 0.5, "peak_rss_mb": 100.0,
                 "batches": {1: entry(ms, *errs.get(rt, (1e-6, True)))}} for rt, ms in times.items()}


ARGS = SimpleNamespace(threads=2, rounds=1, batches=[1], max_foreign=0.25)
SPEC = {"name": "alexnet", "groups": {}}
EMPTY = {"errors": {}, "profiles": {}}


def test_fastest_and_speedup():
    times = {"onnxruntime": 12.0, "openvino": 10.0, "deepcomp": 5.0, "openvino-int8": 4.0, "deepcomp-int8": 2.0}
    assert table.fastest(times, runtimes.FP32_PEERS) == ("openvino", 10.0)
    assert table.fastest(times, runtimes.INT8_PEERS) == ("openvino-int8", 4.0)
    assert table.fastest(times, ["deepsparse"]) is None
    assert table.speedup(times, "deepcomp", runtimes.FP32_PEERS) == 2.0
    assert table.speedup(times, "deepcomp-int8", runtimes.INT8_PEERS) == 2.0
    assert table.speedup(times, "deepcomp-int8", ["openvino-default"]) is None  # not measured
    assert table.speedup({"onnxruntime": 1.0}, "deepcomp", runtimes.FP32_PEERS) is None


def test_markdown_int8_columns():
    s = summary({"onnxruntime": 12.0, "openvino": 10.0, "openvino-default": 6.0, "deepcomp": 5.0,
                 "onnxruntime-int8": 8.0, "openvino-int8": 4.0, "deepcomp-int8": 2.0},
                {"onnxruntime-int8": (0.03, True), "openvino-int8": (0.4, False), "deepcomp-int8": (None, True)})
    text = table.markdown([SPEC], [s], [EMPTY], ARGS, [])
    header, row = [l for l in text.splitlines() if l.startswith("| batch") or l.startswith("| 1 |")]
    cols = [c.strip() for c in header.strip("|").split("|")]
    cells = dict(zip(cols, [c.strip() for c in row.strip("|").split("|")]))
    assert cells["deepcomp vs fastest fp32 peer"] == "**2.00x**"
    assert cells["fastest int8 peer"] == "OpenVINO int8 4.0"
    assert cells["deepcomp int8 vs fastest int8 peer"] == "**2.00x**"
    assert cells["deepcomp int8 vs OpenVINO default"] == "**3.00x**"
    assert cells["deepcomp int8 vs fastest fp32 peer"] == "**5.00x**"
    # int8 peers' ratios are to deepcomp int8, fp32 ones' to deepcomp; a large int8 error is marked, not fatal
    assert cells["ONNX Runtime int8"].endswith(", 4.00x") and cells["ONNX Runtime"].endswith(", 2.40x")
    assert "(int8 error 4.0e-01)" in cells["OpenVINO int8"]
    assert "wrong output" not in text
    assert "ONNX Runtime int8 alexnet b1 3.0e-02" in text and "deepcomp int8 alexnet b1 no reference" in text


def test_markdown_fp32_only_and_skips():
    s = summary({"onnxruntime": 12.0, "deepcomp": 6.0}, {"onnxruntime": (0.01, False)})
    text = table.markdown([SPEC], [s], [EMPTY], ARGS, ["DeepSparse 1.8 skipped: no environment"])
    assert "int8" not in text  # no int8 runtime asked for: today's table
    assert "| 1 | alexnet | 12.0 [10.8-13.2], 2.00x (wrong output) | 6.0 [5.4-6.6] | **2.00x** |" in text
    assert "- DeepSparse 1.8 skipped: no environment" in text
    skipped = {"errors": {"deepcomp-int8": "the deepcomp-int8 recipe is not in this deepcomp"}, "profiles": {}}
    s = summary({"onnxruntime": 12.0, "deepcomp": 6.0, "openvino-int8": 4.0})
    text = table.markdown([SPEC], [s], [skipped], ARGS, [])
    assert "- deepcomp int8 alexnet skipped: the deepcomp-int8 recipe is not in this deepcomp" in text
    row = next(l for l in text.splitlines() if l.startswith("| 1 |"))
    assert row.endswith("| **2.00x** | OpenVINO int8 4.0 | - | - | - |")


def test_int8_helpers():
    cmd = int8.compress_command("torchvision:vgg16", Path("/w/x.dcz"))
    assert cmd[1:4] == ["-m", "deepcomp", "compress"] and "torchvision:vgg16" in cmd and "/w/x.dcz" in cmd
    assert "sparse-int8" in cmd
    import numpy as np

    x = np.arange(10, dtype=np.float32).reshape(10, 1)
    parts = int8._chunks(x, 4)  # every sample, static batch 4
    assert [p.shape for p in parts] == [(4, 1)] * 3 and set(np.concatenate(parts).ravel()) == set(range(10))
    assert runtimes.tolerance("openvino-int8") > runtimes.tolerance("openvino-default") > runtimes.tolerance("onnxruntime")
    assert runtimes.base("deepsparse-int8") == "deepsparse"


def test_calibration_is_deepcomps():
    import numpy as np
    import torch

    from deepcomp.quantize_int8 import random_batches

    x = int8.calibration_inputs((3, 4, 4))
    assert x.dtype == np.float32 and x.shape[1:] == (3, 4, 4)
    assert np.array_equal(x, torch.cat(random_batches((3, 4, 4))).numpy())


def test_layer_table_rows_and_ratios():
    spec = {"name": "alexnet", "groups": {"features.0": "features.0", "features.1": "features.0",
                                          "classifier.1": "classifier.1", "features.2": "other"}}
    prof = lambda layers: {"batches": {"1": {"layers": layers}}}  # noqa: E731
    profiles = {"onnxruntime": prof({"/features/features.0/Conv": 3.0, "/features/features.1/Relu": 1.0,
                                     "/classifier/classifier.1/Gemm": 2.0, "/features/features.2/MaxPool": 0.5}),
                "deepcomp": prof({"features.0": 2.0, "classifier.1": 0.5, "features.2": 0.25}),
                "openvino-int8": prof({"/features/features.0/Conv": 1.0}),
                "deepcomp-int8": prof({"features.0": 0.5})}
    lines = table.layer_table(spec, profiles, ARGS)
    header = next(l for l in lines if l.startswith("| layer"))
    assert header.endswith("| deepcomp vs fastest fp32 peer | deepcomp int8 vs fastest int8 peer |")
    assert "| features.0 | 4.000 | 2.000 | 1.000 | 0.500 | 2.00x | 2.00x |" in lines  # conv + its ReLU
    assert "| classifier.1 | 2.000 | 0.500 | - | - | 4.00x | - |" in lines
    assert "| other | 0.500 | 0.250 | - | - | 2.00x | - |" in lines
