"""Every user mistake ends in one line: each case runs the real CLI entry point (deepcomp.cli.main) in a
subprocess and must exit non-zero with one line on stderr that says what to do, no traceback, and no
new file at or beside its output (each case runs in an empty directory of its own; the prepared
directories it may write to are compared too).

Faults that a user cannot easily cause on purpose (a full disk, Ctrl-C during the final write, a
SIGKILL) are injected into the final write of deepcomp.fileio.atomic_write; where the test may mount a
tmpfs (root), a really full file system is used as well. To keep it fast, the cases run in a few
subprocesses, two at a time, each subprocess running its cases one after the other with their own
working directory, stderr and exit status (importing torch once per subprocess, not per case); each
case is then asserted in a test of its own.
"""

import json
import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

import deepcomp

# Runs each case of a JSON list on stdin through deepcomp.cli.main, with its fault injected into the
# final write of deepcomp.fileio.atomic_write (after the data, before the rename): enospc (the disk
# is full), interrupt (Ctrl-C), kill (SIGKILL). Prints [[exit status, stderr], ...] as JSON.
HARNESS = """
import contextlib, errno, io, json, os, signal, sys, traceback
import deepcomp.fileio
from deepcomp.cli import main
real_fsync, fault = os.fsync, None
def fsync(fd):
    if fault == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if fault == "interrupt":
        raise KeyboardInterrupt
    if fault == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    real_fsync(fd)
deepcomp.fileio.os.fsync = fsync
results = []
for case in json.load(sys.stdin):
    fault = case["fault"]
    os.chdir(case["cwd"])
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(case["argv"])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = 1
    results.append([code, err.getvalue()])
print(json.dumps(results))
"""
GROUPS = 4  # subprocesses, run two at a time

TINY = """
import torch
from torch import nn

class Tiny(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))
"""

# (id, argv, a piece of the expected message, fault). Placeholders name files the fixture prepares.
CASES = [
    # wrong values for every numeric flag
    ("sparsity-above-1", ["compress", "zoo:lenet-5", "--sparsity", "1.5"], "--sparsity", None),
    ("sparsity-negative", ["compress", "zoo:lenet-5", "--sparsity", "-0.1"], "in [0, 1]", None),
    ("sparsity-not-a-number", ["compress", "zoo:lenet-5", "--sparsity", "half"], "--sparsity", None),
    ("conv-bits-0", ["compress", "zoo:lenet-5", "--conv-bits", "0"], "1..8", None),
    ("fc-bits-9", ["compress", "zoo:lenet-5", "--fc-bits", "9"], "1..8", None),
    ("index-bits-13", ["compress", "zoo:lenet-5", "--index-bits", "13"], "1..12", None),
    ("int8-weight-bits-6", ["compress", "zoo:lenet-5", "--recipe", "sparse-int8", "--int8-weight-bits", "6"],
     "--int8-weight-bits", None),
    ("int8-weight-bits-fp32-recipe", ["compress", "zoo:lenet-5", "--int8-weight-bits", "7"], "needs an int8 recipe",
     None),
    ("iterative-0", ["compress", "zoo:lenet-5", "--iterative", "0"], "--iterative", None),
    ("finetune-epochs-negative", ["compress", "zoo:lenet-5", "--finetune-epochs", "-1"], ">= 0", None),
    ("calibration-batches-0", ["compress", "zoo:lenet-5", "--calibration-batches", "0"], ">= 1", None),
    ("lr-0", ["compress", "zoo:lenet-5", "--lr", "0"], "--lr", None),
    ("lr-nan", ["compress", "zoo:lenet-5", "--lr", "nan"], "--lr", None),
    ("compress-batch-size-0", ["compress", "zoo:lenet-5", "--batch-size", "0"], "--batch-size", None),
    ("seed-negative", ["compress", "zoo:lenet-5", "--seed", "-1"], "--seed", None),
    ("num-classes-0", ["compress", "zoo:lenet-5", "--num-classes", "0"], "--num-classes", None),
    ("input-shape-zero", ["compress", "zoo:lenet-5", "--input-shape", "3,0,32"], "positive", None),
    ("run-batch-0", ["run", "{dcz}", "--input-random", "--batch", "0"], "--batch", None),
    ("run-batch-negative", ["run", "{dcz}", "--input-random", "--batch", "-3"], "--batch", None),
    ("run-threads-100000", ["run", "{dcz}", "--input-random", "--threads", "100000"], "1..1024", None),
    ("run-threads-0", ["run", "{dcz}", "--input-random", "--threads", "0"], "--threads", None),
    ("bench-repeat-0", ["bench", "{dcz}", "--repeat", "0"], "--repeat", None),
    ("bench-batch-0", ["bench", "{dcz}", "--batch", "0"], "--batch", None),
    ("bench-threads-5000", ["bench", "{dcz}", "--threads", "5000"], "--threads", None),
    ("train-epochs-0", ["train", "zoo:lenet-5", "--data", "npz:{npz}", "--epochs", "0", "-o", "m.pt"], "--epochs", None),
    ("train-lr-negative", ["train", "zoo:lenet-5", "--data", "npz:{npz}", "--epochs", "1", "--lr", "-1", "-o", "m.pt"],
     "--lr", None),
    ("train-weight-decay-negative", ["train", "zoo:lenet-5", "--data", "npz:{npz}", "--epochs", "1", "--weight-decay",
                                     "-1", "-o", "m.pt"], "--weight-decay", None),
    ("train-batch-size-0", ["train", "zoo:lenet-5", "--data", "npz:{npz}", "--epochs", "1", "--batch-size", "0",
                            "-o", "m.pt"], "--batch-size", None),
    ("eval-batch-size-0", ["eval", "{dcz}", "--data", "npz:{npz}", "--batch-size", "0"], "--batch-size", None),
    ("finetune-epochs-0", ["finetune", "{dcz}", "--data", "npz:{npz}", "--epochs", "0", "-o", "n.dcz"], "--epochs", None),
    ("finetune-num-classes-0", ["finetune", "{dcz}", "--data", "npz:{npz}", "--num-classes", "0", "-o", "n.dcz"],
     "--num-classes", None),
    # wrong files and wrong formats
    ("run-input-is-a-dcz", ["run", "{dcz}", "--input", "{dcz}"], "numpy.save", None),
    ("run-input-missing", ["run", "{dcz}", "--input", "missing.npy"], "does not exist", None),
    ("run-input-text", ["run", "{dcz}", "--input", "{text}"], "numpy.save", None),
    ("run-input-object-array", ["run", "{dcz}", "--input", "{objects}"], "numeric array", None),
    ("run-input-wrong-shape", ["run", "{dcz}", "--input", "{wrong_shape}"], "does not fit", None),
    ("run-not-a-dcz", ["run", "{text}", "--input-random"], "dcz", None),
    ("run-truncated-dcz", ["run", "{truncated}", "--input-random"], "truncated", None),
    ("info-missing", ["info", "missing.dcz"], "no such file", None),
    ("info-directory", ["info", "{inputs}"], "directory", None),
    ("info-npy", ["info", "{wrong_shape}"], "not a .dcz file", None),
    ("export-not-a-dcz", ["export", "{text}", "-o", "m.onnx"], "not a .dcz file", None),
    ("compress-dcz-as-model", ["compress", "{dcz}", "-q", "-o", "m.dcz"], "model", None),
    ("compress-arch-missing-module", ["compress", "{sd}", "--arch", "nomodule:Tiny", "-q", "-o", "m.dcz"],
     "PYTHONPATH", None),
    ("compress-pickle-unimportable", ["compress", "{pickled}", "--trust-pickle", "-q", "-o", "m.dcz"],
     "PYTHONPATH", None),
    # unwritable outputs, checked before the work
    ("compress-o-directory", ["compress", "zoo:lenet-5", "-q", "-o", "{inputs}"], "is a directory", None),
    ("compress-o-missing-dir", ["compress", "zoo:lenet-5", "-q", "-o", "no/such/dir/m.dcz"], "does not exist", None),
    ("run-o-missing-dir", ["run", "{dcz}", "--input-random", "-o", "missing/y.npy"], "does not exist", None),
    ("run-o-directory", ["run", "{dcz}", "--input-random", "-o", "{inputs}"], "is a directory", None),
    ("decompress-o-directory", ["decompress", "{dcz}", "-o", "{inputs}"], "is a directory", None),
    ("decompress-o-missing-dir", ["decompress", "{dcz}", "-o", "missing/d.pt"], "does not exist", None),
    ("export-o-directory", ["export", "{dcz}", "-o", "{inputs}"], "is a directory", None),
    ("export-o-trailing-slash", ["export", "{dcz}", "-o", "new.onnx/"], "names a directory", None),
    ("compress-log-file-directory", ["compress", "zoo:lenet-5", "-q", "--log-file", "{inputs}", "-o", "m.dcz"],
     "is a directory", None),
    ("train-log-directory", ["train", "zoo:lenet-5", "--data", "npz:{npz}", "--epochs", "1", "--log", "{inputs}",
                             "-o", "m.pt"], "is a directory", None),
    ("train-o-missing-dir", ["train", "zoo:lenet-5", "--data", "npz:{npz}", "--epochs", "1", "-o", "missing/m.pt"],
     "does not exist", None),
    ("finetune-o-directory", ["finetune", "{dcz}", "--data", "npz:{npz}", "-o", "{inputs}"], "is a directory", None),
    ("compress-o-read-only", ["compress", "{tiny_sd}", "--arch", "{tiny_py}:Tiny", "--input-shape", "1,8,8", "-q",
                              "-o", "{readonly}/m.dcz"], "writable", None),
    # full disks and interrupted runs
    ("compress-disk-full", ["compress", "{tiny_sd}", "--arch", "{tiny_py}:Tiny", "--input-shape", "1,8,8", "-q",
                            "-o", "m.dcz"], "no space left", "enospc"),
    ("decompress-disk-full", ["decompress", "{dcz}", "-o", "d.pt"], "no space left", "enospc"),
    ("train-disk-full", ["train", "zoo:lenet-300-100", "--data", "npz:{npz}", "--epochs", "1", "-q", "-o", "m.pt"],
     "no space left", "enospc"),
    ("run-disk-full", ["run", "{dcz}", "--input-random", "-o", "y.npy"], "no space left", "enospc"),
    ("export-disk-full", ["export", "{dcz}", "-o", "m.onnx"], "no space left", "enospc"),
    ("compress-interrupted", ["compress", "{tiny_sd}", "--arch", "{tiny_py}:Tiny", "--input-shape", "1,8,8", "-q",
                              "-o", "m.dcz"], "interrupted", "interrupt"),
    ("run-interrupted", ["run", "{dcz}", "--input-random", "-o", "y.npy"], "interrupted", "interrupt"),
    ("compress-full-tmpfs", ["compress", "{tiny_sd}", "--arch", "{tiny_py}:Tiny", "--input-shape", "1,8,8", "-q",
                             "-o", "{full}/m.dcz"], "no space left", None),
    ("run-full-tmpfs", ["run", "{dcz}", "--input-random", "--batch", "64", "-o", "{full}/y.npy"], "no space left", None),
]


def _cli(cases):
    """Run [(argv, cwd, fault), ...] in one subprocess: [(exit status, stderr), ...]."""
    payload = json.dumps([{"argv": a, "cwd": str(c), "fault": f} for a, c, f in cases])
    env = {**os.environ, "DEEPCOMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-c", HARNESS], input=payload, capture_output=True, text=True, env=env,
                       timeout=600)
    if p.returncode != 0:
        return [(p.returncode, p.stderr)] * len(cases)
    return [tuple(r) for r in json.loads(p.stdout.strip().splitlines()[-1])]


def _listing(*dirs):
    return {os.path.join(root, f) for d in dirs if d for root, _, files in os.walk(d) for f in files}


def _mount_tmpfs(path, options):
    os.makedirs(path)
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True).returncode == 0


_TINY_NAMESPACE: dict = {}
exec(TINY, _TINY_NAMESPACE)  # the fixture's .dcz is compressed from the very class of the user's file
Tiny = _TINY_NAMESPACE["Tiny"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    files = {"inputs": str(d), "tiny_py": str(d / "tiny.py"), "tiny_sd": str(d / "tiny_sd.pt"), "sd": str(d / "tiny_sd.pt"),
             "dcz": str(d / "tiny.dcz"), "text": str(d / "notes.txt"), "npz": str(d / "data.npz"),
             "objects": str(d / "objects.npy"), "wrong_shape": str(d / "wrong.npy"), "truncated": str(d / "cut.dcz"),
             "pickled": str(d / "pickled.pt")}
    (d / "tiny.py").write_text(TINY)
    torch.manual_seed(0)
    torch.save(Tiny().state_dict(), files["tiny_sd"])
    deepcomp.compress(Tiny(), input_shape=(1, 8, 8), progress=False).save(files["dcz"])
    data = (d / "tiny.dcz").read_bytes()
    (d / "cut.dcz").write_bytes(data[: len(data) // 2])
    (d / "notes.txt").write_text("not a model\n")
    np.save(files["objects"], np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(files["wrong_shape"], np.zeros((2, 3, 5, 5), np.float32))
    rng = np.random.default_rng(0)
    np.savez(files["npz"], x_train=rng.random((16, 1, 28, 28), dtype=np.float32), y_train=rng.integers(0, 10, 16),
             x_test=rng.random((8, 1, 28, 28), dtype=np.float32), y_test=rng.integers(0, 10, 8))
    # a pickled module whose class lives in a module the CLI cannot import
    subprocess.run([sys.executable, "-c", "import sys, torch; sys.path.insert(0, sys.argv[1]); import tiny; "
                    "torch.save(tiny.Tiny(), sys.argv[2])", str(d), files["pickled"]], check=True)
    os.rename(d / "tiny.py", d / "tiny_code.py")  # now `tiny` cannot be imported from anywhere
    files["tiny_py"] = str(d / "tiny_code.py")
    mounts = []
    for key, options in (("full", "size=16k"), ("readonly", "ro,size=16k")):
        path = tmp_path_factory.mktemp(key) / "mnt"
        if _mount_tmpfs(path, options):
            mounts.append(path)
        elif key == "readonly":
            os.chmod(path, 0o555)  # not root: a directory without write permission does the same
        files[key] = str(path)
    if mounts:
        filler = mounts[0] / "filler"  # fill the 16 KB tmpfs so the next write fails with ENOSPC
        try:
            filler.write_bytes(b"\0" * (1 << 20))
        except OSError:
            pass
    yield files, bool(mounts)
    for m in mounts:
        subprocess.run(["umount", str(m)], capture_output=True)


@pytest.fixture(scope="module")
def outcomes(inputs, tmp_path_factory):
    files, have_tmpfs = inputs
    root = tmp_path_factory.mktemp("cases")

    runnable = [c for c in CASES if have_tmpfs or "{full}" not in " ".join(c[1])]
    watched = [files["inputs"], files["full"], files["readonly"]]
    jobs, dirs = [], {}
    for name, argv, _, fault in runnable:
        dirs[name] = root / name
        dirs[name].mkdir()
        jobs.append(([a.format(**files) for a in argv], dirs[name], fault))
    before = _listing(*watched)
    groups = [jobs[i::GROUPS] for i in range(GROUPS)]
    names = [[c[0] for c in runnable[i::GROUPS]] for i in range(GROUPS)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(_cli, groups))
    new_shared = _listing(*watched) - before  # a file there is blamed on every case (none is expected)
    out = {c[0]: None for c in CASES}
    for group_names, group_results in zip(names, results):
        for name, (code, err) in zip(group_names, group_results):
            out[name] = (code, err, _listing(dirs[name]) | new_shared)
    return out


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_mistake_is_one_line(case, outcomes):
    name, _, expected, fault = case
    if outcomes[name] is None:
        pytest.skip("needs root to mount a full tmpfs (the enospc fault covers the same path)")
    code, err, new_files = outcomes[name]
    lines = err.strip().splitlines()
    assert (code != 0 and len(lines) == 1 and "Traceback" not in err and expected in lines[0]
            and lines[0].startswith("deepcomp ") and not new_files), (code, err, new_files)


def test_enough_mistakes():
    assert len(CASES) >= 40


def test_sigkill_leaves_a_temporary_that_the_next_write_removes(inputs, tmp_path):
    files, _ = inputs
    run = ["run", files["dcz"], "--input-random", "-o", "y.npy"]
    (code, _), = _cli([(run, tmp_path, "kill")])
    assert code == -signal.SIGKILL
    stale = [f for f in os.listdir(tmp_path) if f.startswith(".y.npy.") and f.endswith(".tmp")]
    assert len(stale) == 1 and not (tmp_path / "y.npy").exists()
    (code, err), = _cli([(run, tmp_path, None)])
    assert code == 0, err
    assert sorted(os.listdir(tmp_path)) == ["y.npy"]
    assert np.load(tmp_path / "y.npy").shape == (1, 10)
