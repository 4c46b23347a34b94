"""`deepcomp bench` and `deepcomp run` as a user calls them (shapes and plumbing, not speed: speed
targets are checked by the benchmarks, on a quiet machine)."""

import json

import numpy as np
import pytest
import torch

from deepcomp.bench import DenseTorchGraph
from deepcomp.cli import main
from deepcomp.dcz import decompress, read_dcz


@pytest.fixture(scope="module")
def lenet5(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "lenet5.dcz"
    torch.manual_seed(0)
    assert main(["compress", "zoo:lenet-5", "-o", str(out), "-q"]) == 0
    return out


def test_bench_json_shape(lenet5, capsys):
    assert main(["bench", str(lenet5), "--batch", "1,4", "--repeat", "2", "--threads", "1", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert isinstance(results, list) and [r["batch"] for r in results] == [1, 4]
    for r in results:
        assert r["threads"] == 1
        assert [l["name"] for l in r["layers"]] == ["conv1", "conv2", "fc1", "fc2"]
        for l in r["layers"]:
            assert {"name", "kind", "density", "dense_ms", "sparse_ms", "torch_sparse_ms", "speedup"} <= set(l)
            assert l["dense_ms"] > 0 and l["sparse_ms"] > 0
            assert (l["torch_sparse_ms"] is None) == (l["kind"] == "conv")
            assert l["kernel"] in ("sparse", "dense")
            assert l["speedup"] == pytest.approx(l["dense_ms"] / l["sparse_ms"])
        e = r["end_to_end"]
        assert e["speedup"] == pytest.approx(e["dense_ms"] / e["sparse_ms"])


def test_single_batch_json_is_an_object(lenet5, capsys):
    assert main(["bench", str(lenet5), "--repeat", "1", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert isinstance(r, dict) and r["batch"] == 1


def test_dense_baseline_is_the_original_model(lenet5):
    """The dense baseline the bench times computes what the original architecture computes."""
    from deepcomp.zoo import LeNet5

    sd = decompress(lenet5)
    ref = LeNet5().eval()
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    g = DenseTorchGraph(read_dcz(lenet5).graph, sd).eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(g(x), ref(x))


def test_run_command(lenet5, tmp_path, capsys):
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert main(["run", str(lenet5), "--input", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy")]) == 0
    y = np.load(tmp_path / "y.npy")
    assert y.shape == (2, 10)
    g = DenseTorchGraph(read_dcz(lenet5).graph, decompress(lenet5)).eval()
    with torch.no_grad():
        np.testing.assert_allclose(y, g(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-4)
    assert main(["run", str(lenet5), "--input-random", "--batch", "3"]) == 0
    assert "(3, 10)" in capsys.readouterr().out


def test_run_rejects_wrong_shape(lenet5, tmp_path, capsys):
    np.save(tmp_path / "bad.npy", np.zeros((2, 3, 28, 28), np.float32))
    assert main(["run", str(lenet5), "--input", str(tmp_path / "bad.npy")]) == 2
    assert "does not fit" in capsys.readouterr().err


def test_steady_heap_keeps_freed_memory():
    """After steady_heap, a large block freed and allocated again comes back without page faults
    (the dense baseline's scratch memory no longer page-faults on every call)."""
    import resource
    import sys

    from deepcomp.bench import steady_heap

    if not sys.platform.startswith("linux"):
        pytest.skip("glibc only")
    assert steady_heap()

    def touch():
        a = np.empty(4 << 20, np.uint8)  # 4 MiB: mmapped, and unmapped when freed, by default
        a[::4096] = 1
        del a

    touch()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        touch()
    assert resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before < 100  # without it: about 500


def _result(layer_ms, e2e_ms, foreign):
    return {"threads": 2, "batch": 1, "isa": "x", "foreign_cores": {"layers": foreign, "end_to_end": 0.0},
            "layers": [{"name": f"l{i}", "dense_ms": d, "sparse_ms": s} for i, (d, s) in enumerate(layer_ms)],
            "end_to_end": {"dense_ms": e2e_ms[0], "sparse_ms": e2e_ms[1], "speedup": e2e_ms[0] / e2e_ms[1]}}


def test_trust_warnings_say_what_is_wrong():
    from deepcomp.bench import trust_warnings

    assert trust_warnings(_result([(1.0, 0.5), (2.0, 1.0)], (3.5, 2.0), 0.0)) == []
    # "all conv" ten times the end-to-end time it is part of, as seen on a busy machine
    w = trust_warnings(_result([(20.0, 0.5), (15.0, 1.0)], (3.5, 2.0), 0.0))
    assert len(w) == 1 and "dense PyTorch" in w[0] and "35.00 ms" in w[0]
    w = trust_warnings(_result([(1.0, 0.5)], (3.5, 2.0), 1.3))
    assert len(w) == 1 and "1.30 cores" in w[0] and "layers" in w[0]


def test_bench_flags_a_busy_machine(lenet5, capsys):
    import subprocess
    import sys

    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        assert main(["bench", str(lenet5), "--batch", "1", "--repeat", "2", "--threads", "1"]) == 0
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    out = capsys.readouterr().out
    assert "UNRELIABLE: other processes used" in out
