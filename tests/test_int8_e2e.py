"""The sparse int8 path as a user runs it: `compress --recipe sparse-int8` writes a minor-1 file whose
int8 nodes deepcomp.load runs without torch, within a stated tolerance of the fp32 model on the same
decoded weights and bit-equal to the numpy integer reference; `info` shows which nodes run int8."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from deepcomp.cli import main
from deepcomp.dcz import read_dcz
from deepcomp.pipeline import compress
from deepcomp.runtime import int8 as rt8

if not rt8.native_int8():
    pytest.skip("this build has no int8 kernels", allow_module_level=True)

# The int8 file's output stays within this fraction of the fp32 model's largest output magnitude
# (same decoded weights, activations calibrated on inputs of the test's distribution; measured:
# 0.4% on seed 0).
TOLERANCE = 0.03
SHAPE = (3, 16, 16)


class SmallNet(nn.Module):
    """conv-relu-pool-conv-relu-pool-flatten-linear-relu-linear."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 32, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = self.pool(torch.relu(self.c1(x)))
        x = self.pool(torch.relu(self.c2(x)))
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))


def _compress(recipe="sparse-int8"):
    torch.manual_seed(0)
    return compress(SmallNet().eval(), recipe=recipe, input_shape=SHAPE, progress=False)


@pytest.fixture(scope="module")
def int8_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("int8")
    r = _compress()
    path = d / "small8.dcz"
    r.save(path)
    x = np.random.default_rng(1).standard_normal((4, *SHAPE)).astype(np.float32)
    with torch.no_grad():
        y32 = r.model(torch.from_numpy(x)).numpy()  # the model holds the decoded (shared) weights
    return path, r, x, y32


NO_TORCH = textwrap.dedent("""
    import sys
    sys.modules["torch"] = None  # any import of torch fails
    import numpy as np, deepcomp
    path, xin, out = sys.argv[1:4]
    x = np.load(xin)
    m = deepcomp.load(path, int8="file")  # every int8 node int8, whatever this CPU's int8 kernels
    ref = deepcomp.runtime.load(path, int8_reference=True)
    np.savez(out, y=m(x), ref=ref(x), steps=np.array([s.name for s in m.steps]),
             int8=np.array([l.name for l in m.layers if l.precision == "int8"]))
    assert "torch" not in sys.modules or sys.modules["torch"] is None
""")


def test_int8_file_runs_without_torch(int8_file, tmp_path):
    path, r, x, y32 = int8_file
    np.save(tmp_path / "x.npy", x)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run([sys.executable, "-c", NO_TORCH, str(path), str(tmp_path / "x.npy"), str(tmp_path / "o.npz")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    o = np.load(tmp_path / "o.npz")
    assert list(o["int8"]) == ["c1", "c2", "fc1", "fc2"]
    # relu + pool fused into each conv, the flatten absorbed by fc1, relu into fc1: four steps
    assert list(o["steps"]) == ["c1", "c2", "fc1", "fc2"]
    np.testing.assert_array_equal(o["y"], o["ref"])  # native int8 kernels == the numpy integer reference
    err = np.abs(o["y"] - y32).max() / np.abs(y32).max()
    assert 0 < err <= TOLERANCE, err  # int8, so not bit-equal to fp32, but close


def test_file_is_minor_1_with_int8_attrs(int8_file):
    path, r, _, _ = int8_file
    c = read_dcz(path)
    assert c.version == (1, 1)
    nodes = {n["name"]: n for n in c.graph["nodes"]}
    q = {n: nodes[n]["attrs"]["int8"] for n in ("c1", "c2", "fc1", "fc2")}
    assert [q[n]["out"] for n in q] == ["u8", "u8", "u8", "f32"]
    assert q["c1"]["out_scale"] == q["c2"]["in_scale"] and q["c2"]["out_scale"] == q["fc1"]["in_scale"]
    assert q["c1"]["in_zp"] > 0 and q["c2"]["in_zp"] == 0  # signed network input; after a ReLU zp 0
    s = c.dense["c1.weight_scale"]
    assert s.shape == (16,) and (s >= 0).all() and (s > 0).sum() >= 8  # a channel may lose every block
    np.testing.assert_array_equal(s, rt8.weights_to_int8(c.coded["c1.weight"].dense(), qmax=63)[1])  # 7-bit grid
    assert c.meta["recipe"]["int8"]["calibration"] == "random" and c.meta["recipe"]["int8"]["weight_bits"] == 7
    # 1x4 blocks: every block of 4 input channels at one tap is kept or removed whole
    w = c.coded["c2.weight"].dense().reshape(32, 4, 4, 9)
    nz = (w != 0).sum(2)
    assert set(np.unique(nz)) <= {0, 4}


def test_minor_0_file_still_loads_fp32(tmp_path):
    import deepcomp

    r = _compress("deep-compression")
    r.save(tmp_path / "fp32.dcz")
    assert read_dcz(tmp_path / "fp32.dcz").version == (1, 0)
    m = deepcomp.load(tmp_path / "fp32.dcz")
    assert {l.precision for l in m.layers} == {"fp32"} and all(s.int8 is None for s in m.plan.steps)
    x = np.random.default_rng(2).standard_normal((2, *SHAPE)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(m(x), r.model(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-5)


def test_layer_kept_fp32_by_the_recipe(tmp_path):
    import deepcomp

    recipe = tmp_path / "r.toml"
    recipe.write_text('name = "mixed"\n[defaults]\nblock = [4, 4]\nsparsity = 0.5\n[layers."c2"]\nint8 = false\n')
    r = _compress(str(recipe))
    r.save(tmp_path / "m.dcz")
    c = read_dcz(tmp_path / "m.dcz")
    nodes = {n["name"]: n["attrs"] for n in c.graph["nodes"]}
    assert nodes["c2"].get("int8") is None and nodes["c1"]["int8"]["out"] == "f32"
    assert nodes["c1"]["int8"]["block"] == [4, 4]
    m = deepcomp.load(tmp_path / "m.dcz", int8="file")
    assert [l.name for l in m.layers if l.precision == "int8"] == ["c1", "fc1", "fc2"]
    x = np.random.default_rng(3).standard_normal((2, *SHAPE)).astype(np.float32)
    with torch.no_grad():
        y32 = r.model(torch.from_numpy(x)).numpy()
    assert np.abs(m(x) - y32).max() <= TOLERANCE * np.abs(y32).max()
    # 4x4 blocks in the int8 conv: 4 output channels x 4 input channels kept or removed together
    w = c.coded["c1.weight"].dense()  # [16, 3, 3, 3]: one partial block of 3 input channels per tap
    kept = (w != 0).any(1).reshape(4, 4, 9)
    assert (kept == kept[:, :1]).all()


class BNNet(nn.Module):
    """conv-bn-relu-pool twice, a conv-bn into the flatten (fp32 out), linear: VGG's layout, small."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.c2, self.b2 = nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32)
        self.c3, self.b3 = nn.Conv2d(32, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(16 * 4 * 4, 10)
        g = torch.Generator().manual_seed(1)
        for b in (self.b1, self.b2, self.b3):  # trained-looking statistics, some negative gammas
            n = b.num_features
            b.weight.data = torch.randn(n, generator=g) * 0.8
            b.bias.data = torch.randn(n, generator=g) * 0.2
            b.running_mean = torch.randn(n, generator=g) * 0.3
            b.running_var = torch.rand(n, generator=g) * 2 + 0.2

    def forward(self, x):
        x = self.pool(torch.relu(self.b1(self.c1(x))))
        x = self.pool(torch.relu(self.b2(self.c2(x))))
        return self.fc(torch.flatten(self.b3(self.c3(x)), 1))


def test_batchnorm_after_int8_conv(tmp_path):
    """A BatchNorm folded into a conv folds into the int8 epilogue (negative gammas included): the
    convs run int8, bit-equal to the integer reference, near the fp32 model."""
    import deepcomp

    torch.manual_seed(0)
    r = compress(BNNet().eval(), recipe="sparse-int8", input_shape=SHAPE, progress=False)
    r.save(tmp_path / "bn.dcz")
    nodes = {n["name"]: n["attrs"] for n in read_dcz(tmp_path / "bn.dcz").graph["nodes"]}
    assert all(nodes[c]["bn"] is not None and nodes[c]["int8"] is not None for c in ("c1", "c2", "c3"))
    assert [nodes[c]["int8"]["out"] for c in ("c1", "c2", "c3")] == ["u8", "u8", "u8"]
    m = deepcomp.load(tmp_path / "bn.dcz", int8="file")
    assert [l.name for l in m.layers if l.precision == "int8"] == ["c1", "c2", "c3", "fc"]
    assert [s.name for s in m.steps] == ["c1", "c2", "c3", "fc"]  # relu + pool fused, flatten absorbed
    ref = deepcomp.load(tmp_path / "bn.dcz", int8_reference=True)
    x = np.random.default_rng(4).standard_normal((3, *SHAPE)).astype(np.float32)
    y = m(x)
    np.testing.assert_array_equal(y, ref(x))
    with torch.no_grad():
        y32 = r.model(torch.from_numpy(x)).numpy()
    err = np.abs(y - y32).max() / np.abs(y32).max()
    assert 0 < err <= TOLERANCE, err


class ClampNet(nn.Module):
    """MobileNet's conv + BatchNorm + ReLU6, and a conv + hardtanh."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU6())
        self.c2 = nn.Sequential(nn.Conv2d(16, 8, 3, stride=2, padding=1), nn.Hardtanh(-0.5, 0.5))
        self.fc = nn.Linear(8 * 8 * 8, 5)

    def forward(self, x):
        return self.fc(torch.flatten(self.c2(self.c1(x)), 1))


def test_clamp_fused_into_int8_conv(tmp_path):
    """ReLU6 and hardtanh after an int8 conv run in its epilogue (no clamp step): bit-equal to the
    integer reference, near the fp32 model."""
    import deepcomp

    torch.manual_seed(0)
    net = ClampNet().eval()
    with torch.no_grad():
        net.c1[1].weight.mul_(8)  # BatchNorm scales that push outputs past 6
    r = compress(net, recipe="sparse-int8", input_shape=SHAPE, progress=False)
    r.save(tmp_path / "clamp.dcz")
    m = deepcomp.load(tmp_path / "clamp.dcz", int8="file")
    assert [l.name for l in m.layers if l.precision == "int8"] == ["c1.0", "c2.0", "fc"]
    assert [s.op for s in m.plan.steps] == ["conv2d", "conv2d", "flatten", "linear"]
    x = np.random.default_rng(5).standard_normal((3, *SHAPE)).astype(np.float32)
    h = m.steps[0].run(x)
    assert (h == 6).mean() > 0.01 and (h == 0).mean() > 0.01 and h.max() == 6
    y = m(x)
    np.testing.assert_array_equal(y, deepcomp.load(tmp_path / "clamp.dcz", int8_reference=True)(x))
    with torch.no_grad():
        y32 = r.model(torch.from_numpy(x)).numpy()
    err = np.abs(y - y32).max() / np.abs(y32).max()
    assert 0 < err <= TOLERANCE, err


def test_7bit_weights_run_the_pairs_kernels_whole(tmp_path, capsys):
    """int8_weight_bits = 7 (the default; recipe field, compress argument, --int8-weight-bits) puts every weight on
    -63..63 (the file's scales say so: no format change), so on AVX2 every conv runs the pairs kernels
    without splitting a block; the bits stay the reference's, near the fp32 model; `info` names the
    grid; a recipe asking for 6 bits is refused."""
    import deepcomp
    import deepcomp._native as nat
    from deepcomp.errors import RecipeError
    from deepcomp.recipes import load_recipe

    torch.manual_seed(0)
    r = compress(SmallNet().eval(), recipe="sparse-int8", int8_weight_bits=7, input_shape=SHAPE, progress=False)
    path = tmp_path / "w7.dcz"
    r.save(path)
    ref = deepcomp.load(path, int8_reference=True)
    qs = {n: k.q for n, k in ref._kernels.items() if hasattr(k, "q")}
    assert set(qs) == {"c1", "c2", "fc1", "fc2"} and max(int(np.abs(q).max()) for q in qs.values()) == 63
    x = np.random.default_rng(6).standard_normal((3, *SHAPE)).astype(np.float32)
    y = ref(x)
    for isa in nat.int8_isas():
        nat._set_int8_isa(isa)
        try:
            m = deepcomp.load(path, int8="file")
        finally:
            nat._set_int8_isa(nat.int8_isas()[0])
        convs = [m._kernels[n].native for n in ("c1", "c2")]
        if isa == "avx2":
            assert all(c.pairs and c.executed_blocks == c.blocks for c in convs)
        np.testing.assert_array_equal(m(x), y)
    with torch.no_grad():
        y32 = r.model(torch.from_numpy(x)).numpy()
    assert 0 < np.abs(y - y32).max() / np.abs(y32).max() <= TOLERANCE
    # the 8-bit grid on request: the same layers reach 127
    compress(SmallNet().eval(), recipe="sparse-int8", int8_weight_bits=8, input_shape=SHAPE,
             progress=False).save(tmp_path / "w8.dcz")
    q8 = deepcomp.load(tmp_path / "w8.dcz", int8_reference=True)._kernels
    assert max(int(np.abs(q8[n].q).max()) for n in qs) == 127
    lenet = tmp_path / "lenet7.dcz"
    assert main(["compress", "zoo:lenet-5", "--recipe", "sparse-int8", "--int8-weight-bits", "7", "-o", str(lenet),
                 "--quiet"]) == 0
    capsys.readouterr()
    assert main(["info", str(lenet)]) == 0
    assert "7-bit weights" in capsys.readouterr().out
    bad = tmp_path / "w6.toml"
    bad.write_text('name = "w6"\n[defaults]\nblock = [1, 4]\nint8_weight_bits = 6\n')
    with pytest.raises(RecipeError, match="int8_weight_bits must be 7 or 8, got 6"):
        load_recipe(str(bad))


class Stride4Net(nn.Module):
    """AlexNet's first layer in small: a 3-channel 11x11 conv of stride 4."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 11, stride=4, padding=2)
        self.c2 = nn.Conv2d(16, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        x = torch.relu(self.c2(torch.relu(self.c1(x))))
        return self.fc(torch.flatten(x, 1))


def test_stride4_conv_pruned_and_run_in_kernel_columns(tmp_path):
    """A conv the runtime rewrites with 4 kernel columns per lane is block-pruned in those columns
    (coded as unstructured CODED, which says any pattern), so every block the rewritten conv runs is
    kept whole: the native layer keeps the recipe's fraction of them. Bit-equal to the reference."""
    import deepcomp

    torch.manual_seed(0)
    r = compress(Stride4Net().eval(), recipe="sparse-int8", input_shape=(3, 19, 19), progress=False)
    r.save(tmp_path / "s4.dcz")
    m = deepcomp.load(tmp_path / "s4.dcz", int8="file")
    step = m._kernels["c1"]
    assert step.columns and m.layers[0].precision == "int8"
    assert step.native.blocks / step.native.total_blocks == pytest.approx(0.2, abs=0.01)  # the recipe's 80% sparsity
    x = np.random.default_rng(6).standard_normal((2, 3, 19, 19)).astype(np.float32)
    np.testing.assert_array_equal(m(x), deepcomp.load(tmp_path / "s4.dcz", int8_reference=True)(x))


def test_info_shows_int8_nodes(int8_file, capsys):
    path = str(int8_file[0])
    assert main(["info", path]) == 0
    out = capsys.readouterr().out
    assert "runs" in out.splitlines()[0]
    assert "4 of 4 layers run int8 (c1, c2, fc1, fc2)" in out and "random inputs" in out
    assert main(["info", path, "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert [l["precision"] for l in rep["layers"]] == ["int8"] * 4 and rep["int8"]["block"] == [1, 4]


def test_bench_runs_an_int8_file(int8_file):
    from deepcomp.bench import bench_file

    r = bench_file(int8_file[0], batches=(2,), repeat=1, int8="file")[0]
    assert [(l["name"], l["kernel"]) for l in r["layers"]] == [(n, "int8") for n in ("c1", "c2", "fc1", "fc2")]
    assert r["end_to_end"]["sparse_ms"] > 0 and r["end_to_end"]["dense_ms"] > 0 and "int8" in r["isa"]
    assert r["fp32_fallback"] == {}


class ResNetLike(nn.Module):
    """A stem conv, one residual block (two convs between fp32 adds), a linear head: short int8 chains."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.c1 = nn.Conv2d(16, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(x + self.c2(torch.relu(self.c1(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def test_auto_runs_short_conv_chains_fp32_on_avx2(tmp_path, monkeypatch):
    """int8="auto" (the default) moves to fp32 the int8 chains the rule of this CPU's int8 path names
    (on avx2: a single conv joined to no other int8 node, no linear layer); the rest stays int8 and
    the borders convert. "file" runs every int8 node int8, "off" none."""
    import deepcomp
    from deepcomp.runtime import executor
    from deepcomp.runtime.precision import chains

    torch.manual_seed(0)
    r = compress(ResNetLike().eval(), recipe="sparse-int8", input_shape=SHAPE, progress=False)
    path = tmp_path / "res.dcz"
    r.save(path)
    x = np.random.default_rng(5).standard_normal((2, *SHAPE)).astype(np.float32)
    with torch.no_grad():
        y32 = r.model(torch.from_numpy(x)).numpy()
    full = deepcomp.load(path, int8="file")
    assert [[n for n, _ in c] for c in chains(full.plan.steps)] == [["stem"], ["c1", "c2"], ["fc"]]
    monkeypatch.setattr(executor._native, "int8_isa", lambda: "avx2")
    m = deepcomp.load(path)
    assert list(m.fp32_fallback) == ["stem"] and "chain of 1 conv(s) (stem)" in m.fp32_fallback["stem"]
    assert [(l.name, l.precision) for l in m.layers] == [("stem", "fp32"), ("c1", "int8"), ("c2", "int8"),
                                                          ("fc", "int8")]
    assert np.abs(m(x) - y32).max() <= TOLERANCE * np.abs(y32).max()
    off = deepcomp.load(path, int8="off")
    assert {l.precision for l in off.layers} == {"fp32"} and len(off.fp32_fallback) == 4
    assert np.abs(off(x) - y32).max() <= 1e-4 * np.abs(y32).max()  # the decoded weights, fp32 throughout
    monkeypatch.setattr(executor._native, "int8_isa", lambda: "avx512vnni")
    assert deepcomp.load(path).fp32_fallback == {}
    with pytest.raises(ValueError, match="'auto', 'file', 'off'"):
        deepcomp.load(path, int8="fast")


def test_long_chains_and_linear_stay_int8_on_avx2(int8_file, monkeypatch):
    import deepcomp
    from deepcomp.runtime import executor

    monkeypatch.setattr(executor._native, "int8_isa", lambda: "avx2")
    m = deepcomp.load(int8_file[0])  # c1 -> c2 -> fc1 -> fc2: one chain holding linear layers
    assert m.fp32_fallback == {} and {l.precision for l in m.layers} == {"int8"}


def test_cli_says_which_int8_layers_run_fp32(int8_file, capsys):
    path = str(int8_file[0])
    assert main(["bench", path, "--repeat", "1", "--int8", "off"]) == 0
    out = capsys.readouterr().out
    assert "fp32 here: c1 (int8=\"off\")" in out and "fp32 here: fc2" in out
    assert main(["run", path, "--input-random", "--int8", "off"]) == 0
    assert "fp32 here: c2" in capsys.readouterr().err
    assert main(["run", path, "--input-random", "--int8", "file"]) == 0
    assert "fp32 here" not in capsys.readouterr().err
