"""Masked retraining, trained quantization (Eq. 3), hooks, DDP with 2 gloo ranks."""

import os
import socket

import numpy as np
import pytest
import torch
from torch import nn

from deepcomp.data import from_arrays
from deepcomp.prune.unstructured import prune
from deepcomp.quantize import share_weights
from deepcomp.train import (
    CodebookTraining,
    MaskGuard,
    evaluate,
    make_hooks,
)
from deepcomp.data import make_loader


def tiny_mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))


def toy_data(n=512, seed=0):
    """A learnable 4-class problem on 16 features."""
    centers = np.random.default_rng(1234).standard_normal((4, 16)).astype(np.float32) * 2
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    x = centers[y] + rng.standard_normal((n, 16)).astype(np.float32)
    return from_arrays(x.reshape(n, 1, 4, 4), y)


def batch(ds, n=64):
    return torch.from_numpy(ds.x[:n]), torch.from_numpy(ds.y[:n])


@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3),
    lambda p: torch.optim.Adam(p, lr=1e-2),
    lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
], ids=["sgd-momentum", "adam", "adamw"])
def test_masked_retraining_keeps_zeros_despite_optimizer_state(make_opt):
    model = tiny_mlp()
    ds = toy_data()
    x, y = batch(ds)
    opt = make_opt(model.parameters())
    # dense steps first: momentum / Adam moments are nonzero everywhere
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    masks = prune(model, 0.7)
    guard = MaskGuard(model, masks)
    guard.attach(opt)
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    mods = dict(model.named_modules())
    for name, m in masks.items():
        w = mods[name].weight
        assert torch.all(w[~m] == 0), f"{name}: a pruned weight was revived"
        assert torch.any(w[m] != 0)
        for v in opt.state[w].values():
            if torch.is_tensor(v) and v.shape == w.shape:
                assert torch.all(v[~m] == 0), f"{name}: optimizer state not masked"
    guard.remove()


def test_gradient_hooks_mask_without_attaching_optimizer():
    model = tiny_mlp()
    masks = prune(model, 0.5)
    MaskGuard(model, masks)
    x, y = batch(toy_data())
    nn.functional.cross_entropy(model(x), y).backward()
    for name, m in masks.items():
        g = dict(model.named_modules())[name].weight.grad
        assert torch.all(g[~m] == 0)


def test_eq3_gradient_is_sum_of_assigned_weight_gradients():
    torch.manual_seed(0)
    lin = nn.Linear(6, 5)
    model = nn.Sequential(lin)
    masks = prune(model, 0.4)
    shared = share_weights(model, masks, {"0": 2})
    sw = shared["0"]
    x = torch.randn(7, 6)
    # reference: gradient w.r.t. the dense weight, summed per cluster by a Python loop
    dense = nn.Linear(6, 5)
    dense.load_state_dict(lin.state_dict())
    (dense(x) ** 2).sum().backward()
    gw = dense.weight.grad.reshape(-1).numpy()
    ref = np.zeros(sw.codebook.size)
    for p, c in zip(sw.positions, sw.clusters):
        ref[c] += gw[p]
    ct = CodebookTraining(model, shared)
    (model(x) ** 2).sum().backward()
    got = ct.params()[0].grad.numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    ct.finish()


def test_trained_quantization_keeps_assignments_and_lowers_loss():
    model = tiny_mlp()
    ds = toy_data()
    x, y = batch(ds, 256)
    masks = prune(model, 0.6)
    shared = share_weights(model, masks, {"1": 3, "3": 3})
    before = {n: (sw.codebook.copy(), sw.clusters.copy(), sw.positions.copy()) for n, sw in shared.items()}
    loss0 = float(nn.functional.cross_entropy(model(x), y).detach())
    ct = CodebookTraining(model, shared)
    cbs = ct.params()
    opt = torch.optim.SGD(cbs, lr=1e-3)
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    grads = [p.grad.clone() for p in cbs]
    opt.step()
    for _ in range(20):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    ct.finish()
    loss1 = float(nn.functional.cross_entropy(model(x), y).detach())
    assert loss1 < loss0
    mods = dict(model.named_modules())
    for (name, sw), g in zip(shared.items(), grads):
        cb0, cl0, pos0 = before[name]
        assert sw.codebook.dtype == np.float32
        np.testing.assert_array_equal(sw.clusters, cl0)
        np.testing.assert_array_equal(sw.positions, pos0)
        assert np.abs(g.numpy()).max() > 0 and not np.array_equal(sw.codebook, cb0)
        w = mods[name].weight.detach().numpy()
        assert isinstance(mods[name].weight, nn.Parameter)
        np.testing.assert_array_equal(w, sw.dense())
        nz = np.unique(w[w != 0])
        assert nz.size <= 2 ** sw.bits
        assert np.all(w.reshape(-1)[np.setdiff1d(np.arange(w.size), sw.positions)] == 0)


def test_first_codebook_step_opposes_gradient():
    model = tiny_mlp()
    x, y = batch(toy_data(), 256)
    masks = prune(model, 0.5)
    shared = share_weights(model, masks, {"1": 2, "3": 2})
    cb0 = {n: sw.codebook.copy() for n, sw in shared.items()}
    ct = CodebookTraining(model, shared)
    opt = torch.optim.SGD(ct.params(), lr=1e-4)
    nn.functional.cross_entropy(model(x), y).backward()
    grads = {n: p.grad.numpy().copy() for n, p in ct.codebooks().items()}
    opt.step()
    ct.finish()
    for n, sw in shared.items():
        np.testing.assert_allclose(sw.codebook - cb0[n], -1e-4 * grads[n], rtol=1e-3, atol=1e-9)


def test_hooks_finetune_and_codebooks_learn():
    model = tiny_mlp()
    ds = toy_data(1024)
    test = toy_data(256, seed=1)
    hooks = make_hooks(None, train_data=ds, test_data=test, finetune_epochs=3, lr=1e-2, progress=False)
    masks = prune(model, 0.8)
    hooks["finetune"](model, masks, "prune")
    for name, m in masks.items():
        assert torch.all(dict(model.named_modules())[name].weight[~m] == 0)
    shared = share_weights(model, masks, {"1": 2, "3": 2})
    hooks["train_codebooks"](model, shared)
    acc = evaluate(model, make_loader(test, batch_size=64))
    assert acc["top1"] > 0.8 and acc["samples"] == 256 and "top5" not in acc
    for name, sw in shared.items():
        np.testing.assert_array_equal(dict(model.named_modules())[name].weight.detach().numpy(), sw.dense())


def test_user_train_fn_protocol(tmp_path):
    seen = []

    def my_train(model, ctx):
        seen.append(ctx.stage)
        opt = ctx.attach(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9))
        x, y = torch.from_numpy(ctx.train_data.x), torch.from_numpy(ctx.train_data.y)
        for _ in range(ctx.epochs * 5):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()

    model = tiny_mlp()
    log = tmp_path / "log.jsonl"
    hooks = make_hooks(None, train_data=toy_data(), test_data=toy_data(128, 1), train_fn=my_train,
                       finetune_epochs=1, progress=False, log_path=str(log))
    masks = prune(model, 0.5)
    hooks["finetune"](model, masks, "prune-1")
    shared = share_weights(model, masks, {"1": 2, "3": 2})
    hooks["train_codebooks"](model, shared)
    assert seen == ["prune-1", "codebooks"]
    for name, sw in shared.items():
        np.testing.assert_array_equal(dict(model.named_modules())[name].weight.detach().numpy(), sw.dense())
    import json

    recs = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["stage"] for r in recs] == ["prune-1", "codebooks"]
    assert all({"accuracy", "loss", "sparsity", "size"} <= set(r) for r in recs)


def test_pipeline_prunes_in_growing_steps_to_the_target():
    from deepcomp.pipeline import compress

    seen = []

    def finetune(model, masks, stage):
        kept = sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
        seen.append((stage, 1 - kept))

    compress(tiny_mlp(), input_shape=(1, 4, 4), sparsity=0.92, iterative=3, progress=False, finetune=finetune)
    assert [st for st, _ in seen] == ["prune-1/3", "prune-2/3", "prune-3/3"]
    s = [sp for _, sp in seen]
    assert s[0] < s[1] < s[2] and s[-1] == pytest.approx(0.92, abs=0.01)


# ------------------------------------------------------------------------------------ 2 gloo ranks
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import deepcomp.train as T

    assert T.init_distributed()
    model = tiny_mlp(seed=rank)  # different init per rank: DDP must make them agree
    T.broadcast_([p.data for p in model.parameters()])
    hooks = T.make_hooks(None, train_data=toy_data(512), test_data=toy_data(64, 1), finetune_epochs=2,
                         lr=1e-2, progress=False, seed=0)
    masks = prune(model, 0.7)
    hooks["finetune"](model, masks, "prune")
    masks = prune(model, 0.85, masks=masks)
    hooks["finetune"](model, masks, "prune-2")
    shared = share_weights(model, masks, {"1": 3, "3": 3})
    hooks["train_codebooks"](model, shared)
    np.savez(os.path.join(out_dir, f"rank{rank}.npz"),
             **{f"mask_{n}": m.numpy() for n, m in masks.items()},
             **{f"cb_{n}": sw.codebook for n, sw in shared.items()},
             **{f"p_{n}": p.detach().numpy() for n, p in model.state_dict().items()})
    T.shutdown_distributed()
    assert not T.dist_active()


def test_two_gloo_ranks_agree(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    a, b = np.load(tmp_path / "rank0.npz"), np.load(tmp_path / "rank1.npz")
    assert sorted(a.files) == sorted(b.files)
    assert any(k.startswith("cb_") for k in a.files) and any(k.startswith("mask_") for k in a.files)
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# ------------------------------------------------------------------- real data (Debian's Fashion-MNIST)
from deepcomp.data import FASHION_MNIST_DIR  # noqa: E402

needs_fmnist = pytest.mark.skipif(
    not os.path.isfile(os.path.join(FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz")),
    reason="Fashion-MNIST not installed: apt-get install dataset-fashion-mnist")


@needs_fmnist
def test_lenet_300_100_fashion_mnist_reduced(tmp_path):
    """CI-sized version of benchmarks/lenet_fashion.py: learning happened and compression held."""
    import json

    from deepcomp.data import load_dataset
    from deepcomp.pipeline import compress
    from deepcomp.train import load_dcz_for_eval, train
    from deepcomp.zoo import LoadedModel, resolve_arch

    tr = load_dataset("fashion-mnist", "train", limit=4000)
    te = load_dataset("fashion-mnist", "test", limit=1000)
    torch.manual_seed(0)
    model, shape = resolve_arch("lenet-300-100")
    train(model, tr, epochs=2, progress=False)
    log = tmp_path / "log.jsonl"
    hooks = make_hooks(None, train_data=tr, test_data=te, finetune_epochs=1, lr=5e-4, progress=False,
                       log_path=str(log))
    result = compress(LoadedModel(model, "lenet-300-100", shape, "test"), recipe="fashion-mnist", iterative=2,
                      progress=False, **hooks)
    size = result.save(tmp_path / "m.dcz")
    assert result.meta["recipe"]["retrained"] and result.meta["recipe"]["trained_centroids"]
    runtime, _ = load_dcz_for_eval(str(tmp_path / "m.dcz"))
    acc = evaluate(runtime, make_loader(te, batch_size=500))
    assert acc["top1"] > 0.70, acc           # chance is 0.10
    print("reduced LeNet-300-100:", acc, "ratio", result.meta["original_bytes"] / size)
    assert result.meta["original_bytes"] / size > 38  # the full run reaches 44x (benchmarks/lenet_fashion.py)
    stages = [json.loads(line)["stage"] for line in log.read_text().splitlines()]
    assert stages == ["prune-1/2", "prune-2/2", "codebooks"]
    for name, sw in result.shared.items():
        assert np.unique(sw.values()).size <= 2 ** sw.bits


@needs_fmnist
def test_cli_train_eval_compress_finetune(tmp_path, capsys):
    import json

    from deepcomp.cli import main
    from deepcomp.dcz import read_dcz

    data = "fashion-mnist?classes=0-4&limit=1000"
    pt, dcz, new = tmp_path / "m.pt", tmp_path / "m.dcz", tmp_path / "t.dcz"
    assert main(["train", "zoo:lenet-300-100", "--data", data, "--epochs", "3", "-o", str(pt), "-q"]) == 0
    assert main(["eval", str(pt), "--data", data, "--json", "-q"]) == 0
    capsys.readouterr()
    assert main(["eval", str(pt), "--data", data, "--json"]) == 0
    base = json.loads(capsys.readouterr().out)
    assert set(base) == {"top1", "loss", "samples"} and base["samples"] == 1000 and base["top1"] > 0.5
    assert main(["compress", str(pt), "--data", data, "--finetune-epochs", "1", "-o", str(dcz), "-q", "--json"]) == 0
    capsys.readouterr()
    assert main(["eval", str(dcz), "--data", data, "--json"]) == 0
    comp = json.loads(capsys.readouterr().out)
    assert comp["top1"] > 0.45                # chance is 0.2
    assert main(["finetune", str(dcz), "--data", "fashion-mnist?classes=5-9&limit=1000", "-o", str(new),
                 "--epochs", "5", "--lr", "3e-3", "--batch-size", "64", "-q"]) == 0
    capsys.readouterr()
    assert main(["eval", str(new), "--data", "fashion-mnist?classes=5-9&limit=1000", "--json"]) == 0
    tr = json.loads(capsys.readouterr().out)
    assert tr["top1"] > 0.4                   # chance is 0.2
    # the backbone kept its masks and shared values; the new head is pruned and shared
    from deepcomp.dcz import decompress

    a, b = decompress(str(dcz)), decompress(str(new))
    for k in ("fc1.weight", "fc2.weight"):
        np.testing.assert_array_equal(a[k] != 0, b[k] != 0)
        assert np.unique(b[k][b[k] != 0]).size <= 32
    assert b["fc3.weight"].shape == (5, 100)
    assert 0 < np.count_nonzero(b["fc3.weight"]) < 0.3 * b["fc3.weight"].size
    assert read_dcz(str(new)).meta["arch"] == "lenet-300-100"


def test_cli_errors_are_one_line(tmp_path, capsys):
    from deepcomp.cli import main

    assert main(["eval", str(tmp_path / "nope.pt"), "--data", f"mnist:{tmp_path}/none"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "error" in err


def tiny_bn_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Flatten(), nn.Linear(16 * 16, 4))


def test_bn_l1_is_network_slimmings_sparsity_training():
    from deepcomp.train import train

    ds = toy_data(512)
    gammas = {}
    for lam in (0.0, 0.05):  # a penalty of the size of the gammas' loss gradients
        model = tiny_bn_net()
        train(model, ds, epochs=4, lr=5e-2, batch_size=64, progress=False, bn_l1=lam)
        gammas[lam] = model[1].weight.detach().abs()
    # the penalty pulls the scales towards zero; without it they stay near their initial 1
    assert gammas[0.05].mean() < 0.5 * gammas[0.0].mean()
    assert (gammas[0.05] < 0.3).float().mean() > 0.5 and (gammas[0.0] < 0.3).sum() == 0
    # no penalty means the plain loop: same seed, same weights
    again = tiny_bn_net()
    train(again, ds, epochs=4, lr=5e-2, batch_size=64, progress=False)
    torch.testing.assert_close(again[1].weight.detach().abs(), gammas[0.0], rtol=0, atol=0)


def test_bn_l1_needs_batchnorm_and_a_positive_lambda():
    from deepcomp.errors import DeepcompError
    from deepcomp.train import train

    with pytest.raises(DeepcompError, match="BatchNorm"):
        train(tiny_mlp(), toy_data(64), epochs=1, progress=False, bn_l1=1e-4)
    with pytest.raises(DeepcompError, match=">= 0"):
        train(tiny_bn_net(), toy_data(64), epochs=1, progress=False, bn_l1=-1.0)


def test_cli_train_bn_l1(tmp_path, capsys):
    from deepcomp.cli import main

    with pytest.raises(SystemExit):
        main(["train", "zoo:lenet-5", "--data", "fashion-mnist", "--epochs", "1", "--bn-l1", "-1", "-o",
              str(tmp_path / "m.pt")])
    assert "--bn-l1" in capsys.readouterr().err
