"""The deepcomp command as a user runs it: outputs, --json shapes, and one-line errors."""

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
import threading
import time

import numpy as np
import pytest
import torch

from deepcomp.cli import main


def run(*args, cwd=None):
    """Run the real console entry point in a subprocess: (returncode, stdout, stderr)."""
    p = subprocess.run([sys.executable, "-m", "deepcomp.cli", *args], capture_output=True, text=True, cwd=cwd,
                       timeout=600)
    return p.returncode, p.stdout, p.stderr


@pytest.fixture(scope="module")
def lenet5_dcz(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "lenet5.dcz"
    assert main(["compress", "zoo:lenet-5", "-o", str(out), "-q"]) == 0
    return out


def test_compress_prints_table(tmp_path):
    code, out, err = run("compress", "zoo:lenet-300-100", "-o", str(tmp_path / "m.dcz"), "-q")
    assert code == 0, err
    assert "fc1 (ip1)" in out and "smaller" in out and "total" in out
    assert (tmp_path / "m.dcz").is_file()
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_info_json_shape(lenet5_dcz, capsys):
    assert main(["info", str(lenet5_dcz), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    keys = {"name", "kind", "weights", "nonzeros", "density", "weight_bits", "weight_bits_huffman", "index_bits",
            "index_bits_huffman", "bytes"}
    assert [l["name"] for l in report["layers"]] == ["conv1", "conv2", "fc1", "fc2"]
    assert all(keys <= set(l) for l in report["layers"])
    t = report["total"]
    assert t["file_bytes"] == os.path.getsize(lenet5_dcz)
    assert t["original_bytes"] == 431080 * 4
    assert t["ratio"] == pytest.approx(t["original_bytes"] / t["file_bytes"])


def test_decompress_loads_strict(lenet5_dcz, tmp_path, capsys):
    out = tmp_path / "dense.pt"
    assert main(["decompress", str(lenet5_dcz), "-o", str(out)]) == 0
    sd = torch.load(out, weights_only=True)
    from deepcomp.zoo import LeNet5

    LeNet5().load_state_dict(sd, strict=True)
    assert float((sd["fc1.weight"] == 0).float().mean()) > 0.9


def test_flags_override_recipe(tmp_path, capsys):
    out = tmp_path / "o.dcz"
    assert main(["compress", "zoo:lenet-300-100", "-o", str(out), "-q", "--sparsity", "0.5", "--fc-bits", "2",
                 "--index-bits", "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    for l in report["layers"]:
        assert l["weight_bits"] == 2 and l["index_bits"] == 3 and abs(l["density"] - 0.5) < 0.01


@pytest.mark.parametrize("args, message", [
    (["compress", "no-such-model.pt"], "no-such-model.pt"),
    (["compress", "nope:thing"], "nope"),
    (["compress", "zoo:lenet-5", "--recipe", "missing.toml"], "missing.toml"),
    (["info", "missing.dcz"], "no such file"),
    (["decompress", "missing.dcz", "-o", "x.pt"], "no such file"),
    (["compress", "zoo:lenet-5", "--fc-bits", "9"], "1..8"),
    (["compress", "zoo:lenet-5", "--finetune-epochs", "1"], "--data"),
])
def test_user_errors_are_one_line(args, message, tmp_path):
    code, out, err = run(*args, cwd=tmp_path)
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert message in lines[0]


def test_bad_recipe_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[layers."nolayer"]\ndensity = 0.1\n')
    code, _, err = run("compress", "zoo:lenet-5", "--recipe", str(bad), cwd=tmp_path)
    assert code == 2 and "nolayer" in err and "conv1" in err
    bad.write_text("this is = = not toml")
    code, _, err = run("compress", "zoo:lenet-5", "--recipe", str(bad), cwd=tmp_path)
    assert code == 2 and "invalid TOML" in err


def test_corrupted_file_is_one_line(lenet5_dcz, tmp_path):
    data = bytearray(lenet5_dcz.read_bytes())
    data[len(data) // 2] ^= 0x10
    bad = tmp_path / "bad.dcz"
    bad.write_bytes(bytes(data))
    code, _, err = run("info", str(bad))
    assert code == 2 and "corrupted" in err and len(err.strip().splitlines()) == 1


def test_pickled_module_needs_trust(tmp_path):
    from deepcomp.zoo import LeNet300100

    path = tmp_path / "whole.pt"
    torch.save(LeNet300100(), path)
    code, _, err = run("compress", str(path), "-q", "-o", str(tmp_path / "a.dcz"))
    assert code == 2 and "--trust-pickle" in err
    code, _, err = run("compress", str(path), "-q", "--trust-pickle", "-o", str(tmp_path / "a.dcz"))
    assert code == 0, err


def test_help_explains_every_command():
    code, out, _ = run("--help")
    assert code == 0
    for cmd in ["compress", "info", "decompress", "run", "bench", "train", "eval", "finetune"]:
        assert cmd in out
    code, out, _ = run("compress", "--help")
    assert "--sparsity" in out and "--global" in out and "--index-bits" in out


def test_data_criteria(tmp_path, capsys):
    """--criterion wanda / relevance calibrate on --data (a tiny npz set here) and prune to the recipe."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x_train=rng.random((64, 1, 28, 28), dtype=np.float32),
             y_train=rng.integers(0, 10, 64), x_test=rng.random((16, 1, 28, 28), dtype=np.float32),
             y_test=rng.integers(0, 10, 16))
    for crit in ("wanda", "relevance"):
        out = tmp_path / f"{crit}.dcz"
        assert main(["compress", "zoo:lenet-300-100", "-o", str(out), "-q", "--json", "--data",
                     f"npz:{tmp_path / 'd.npz'}", "--criterion", crit, "--finetune-epochs", "1",
                     "--calibration-batches", "1"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert [round(l["density"], 2) for l in report["layers"]] == [0.08, 0.09, 0.26]
    assert main(["compress", "zoo:lenet-5", "--criterion", "wanda"]) == 2
    assert "--data" in capsys.readouterr().err


USER_NET = """
import torch
from torch import nn

class UserNet(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.fc1 = nn.Linear(20, 64)
        self.fc2 = nn.Linear(64, num_classes)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))
"""


def test_arch_from_the_users_code(tmp_path):
    """--arch module:Class (working directory importable) and --arch path/file.py:Class build a state_dict's
    architecture from the user's code; the .dcz runs like the user's model with the same weights."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "usernet.py").write_text(USER_NET)
    (tmp_path / "usernet2.py").write_text(USER_NET)
    import importlib.util

    spec = importlib.util.spec_from_file_location("usernet_for_test", tmp_path / "usernet2.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    net = mod.UserNet(num_classes=5).eval()
    torch.save(net.state_dict(), tmp_path / "sd.pt")
    for arch, out in (("usernet2:UserNet", "a.dcz"), ("sub/usernet.py:UserNet", "b.dcz")):
        code, _, err = run("compress", "sd.pt", "--arch", arch, "--sparsity", "0", "--fc-bits", "8", "-q",
                           "-o", out, cwd=tmp_path)
        assert code == 0, err
        import deepcomp.runtime as rt

        x = np.random.default_rng(0).standard_normal((4, 20), dtype=np.float32)
        with torch.no_grad():
            want = net(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(rt.load(tmp_path / out)(x), want, atol=0.05)  # 8-bit shared weights
    code, _, err = run("compress", "sd.pt", "--arch", "usernet3:UserNet", "-q", cwd=tmp_path)
    assert code == 2 and "PYTHONPATH" in err and len(err.strip().splitlines()) == 1


def test_compress_says_what_it_does_before_the_bars_and_reports_wall_time(tmp_path):
    """Without -q, on a terminal: a line before each long stage without a bar (loading, capturing), a
    bar for each pruning step like those of k-means and Huffman; the summary's time is the command's."""
    master, slave = pty.openpty()  # stderr is a terminal, as for a user: 24 x 120 (tqdm draws nothing at width 0)
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "deepcomp.cli", "compress", "zoo:lenet-300-100", "-o",
                          str(tmp_path / "m.dcz"), "--iterative", "2"], stdout=subprocess.PIPE, stderr=slave, text=True)
    os.close(slave)
    chunks = []

    def drain():  # read the terminal while the child runs, so that it never blocks on a full one
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # the child closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain)
    reader.start()
    out, _ = p.communicate(timeout=600)
    code = p.returncode
    reader.join(timeout=60)
    os.close(master)
    wall = time.perf_counter() - t0
    err = b"".join(chunks).decode(errors="replace")
    assert code == 0, err
    order = [err.find(s) for s in ("loading zoo:lenet-300-100", "capturing the graph", "prune 1/2", "prune 2/2",
                                   "k-means", "huffman")]
    assert -1 not in order and order == sorted(order), err
    reported = float(out.split("time:")[1].split()[0])
    assert 0.7 * wall <= reported <= wall  # the command's time (torch's import included), not the compression's


def test_status_lines_stay_off_a_captured_stderr(tmp_path):
    code, _, err = run("compress", "zoo:lenet-5", "--recipe", "missing.toml", cwd=tmp_path)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "loading" not in err
