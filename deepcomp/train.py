"""Training for Deep Compression: baselines, masked retraining, trained quantization, transfer learning.

The pieces, each usable on its own:

- ``MaskGuard(model, masks)``: keeps pruned weights exactly zero while *any* training loop runs.
  Gradient hooks on the weights zero the gradients of pruned positions (before DistributedDataParallel
  all-reduces them), and ``guard.attach(optimizer)`` adds step hooks to an optimizer that zero the
  pruned positions of its state (momentum buffers, Adam moments) and of the weights after every step,
  so neither stale momentum nor weight decay can revive a pruned weight.
- ``CodebookTraining(model, shared)``: trained quantization (Deep Compression, Eq. 3). Each shared
  layer's weight becomes a function of a small trainable codebook: ``W[positions] = codebook[clusters]``,
  zero elsewhere. The backward pass gives each centroid the sum of the gradients of the weights assigned
  to it (one ``index_add_`` over the kept positions), so assignments and masks cannot change and every
  optimizer, trainer or DDP wrapper sees ordinary parameters. ``finish()`` writes the trained codebooks
  back into the ``SharedWeight`` objects (in place, float32) and leaves plain dense weights in the model.
- ``train`` / ``evaluate``: a small training loop (tqdm bars per epoch, JSON-lines log records) that works
  on one process and under ``torchrun --nproc_per_node=N`` (DistributedDataParallel with a
  DistributedSampler; gloo on CPU, NCCL on GPU; only rank 0 writes files, logs and progress bars).
- ``make_hooks``: the two callbacks ``deepcomp.pipeline.compress`` takes (``finetune``,
  ``train_codebooks``), built from a dataset spec, or from the user's own training function.
- ``finetune_dcz``: transfer learning from a ``.dcz`` file to a new task.

Your own trainer (Lightning, accelerate, a custom loop) plugs in through ``make_hooks(train_fn=...)``::

    def my_train(model, ctx):            # ctx: TrainContext
        opt = torch.optim.SGD(model.parameters(), lr=ctx.lr, momentum=0.9)
        ctx.attach(opt)                  # masks the optimizer state too (gradients are masked anyway)
        for epoch in range(ctx.epochs):
            ...                          # any loop; model.parameters() holds the codebooks when
                                         # ctx.stage == "codebooks"
    hooks = make_hooks("fashion-mnist", train_fn=my_train, finetune_epochs=2)

With ``ctx.stage`` a pruning stage, pruned weights are kept at zero by gradient hooks and re-zeroed when
``train_fn`` returns; with ``ctx.stage == "codebooks"`` the model's compressible weights are
parametrised by their codebooks, so no loop can break the sharing.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deepcomp.errors import DataError, DeepcompError

# ------------------------------------------------------------------------------------- distributed


def dist_active() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank() -> int:
    return torch.distributed.get_rank() if dist_active() else 0


def world_size() -> int:
    return torch.distributed.get_world_size() if dist_active() else 1


def is_main() -> bool:
    return rank() == 0


def init_distributed() -> bool:
    """Join the process group torchrun describes in the environment (WORLD_SIZE > 1). Returns whether
    training is distributed. Backend: NCCL when CUDA is available, gloo otherwise. ``train`` and
    ``make_hooks`` call it; a script that uses them under torchrun ends with
    :func:`shutdown_distributed` (the ``deepcomp`` command does)."""
    if dist_active():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    torch.distributed.init_process_group(backend=backend)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return True


def shutdown_distributed() -> None:
    """Leave the process group cleanly (no-op when not distributed): wait for every rank, then
    destroy the group. A gloo group destroyed while another rank still uses it, or left to
    interpreter teardown, can abort the process with "terminate called without an active
    exception": two-rank gloo runs in tests/test_train.py did so in 2 of 20 runs before it waited."""
    if dist_active():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


@torch.no_grad()
def broadcast_(tensors, src: int = 0) -> None:
    """Broadcast tensors in place from ``src`` (no-op on one process)."""
    if not dist_active():
        return
    for t in tensors:
        torch.distributed.broadcast(t, src)


def sync_masks(masks: Mapping[str, torch.Tensor]) -> None:
    """Make every rank's masks rank 0's (in place)."""
    if not dist_active():
        return
    for name in sorted(masks):
        m = masks[name]
        buf = m.to(torch.uint8)
        torch.distributed.broadcast(buf, 0)
        m.copy_(buf.to(m.dtype))


# --------------------------------------------------------------------------------- masked training


class MaskGuard:
    """Keep the pruned weights of ``model`` exactly zero during training.

    Registers gradient hooks on the masked weights at construction; ``attach(optimizer)`` adds a step
    pre-hook (zero pruned gradients) and post-hook (zero pruned weights and every state tensor of the
    weight's shape: SGD momentum, Adam's exp_avg / exp_avg_sq / max_exp_avg_sq, ...). Call ``remove()``
    when done (or use it as a context manager).
    """

    def __init__(self, model: nn.Module, masks: Mapping[str, torch.Tensor]):
        modules = dict(_unwrap(model).named_modules())
        self.pairs: list[tuple[nn.Parameter, torch.Tensor]] = []
        self._handles = []
        for name, mask in masks.items():
            if name not in modules:
                raise DeepcompError(f"mask for {name!r}, a layer the model does not have")
            w = modules[name].weight
            m = mask.to(device=w.device, dtype=torch.bool)
            if m.shape != w.shape:
                raise DeepcompError(f"mask of {name} has shape {tuple(m.shape)}, its weight {tuple(w.shape)}")
            mf = m.to(w.dtype)
            self.pairs.append((w, mf))
            self._handles.append(w.register_hook(lambda g, mf=mf: g * mf))
        self.enforce()

    @torch.no_grad()
    def enforce(self) -> None:
        """Zero the pruned weights in place."""
        for w, m in self.pairs:
            w.mul_(m)

    @torch.no_grad()
    def mask_grads(self) -> None:
        for w, m in self.pairs:
            if w.grad is not None:
                w.grad.mul_(m)

    @torch.no_grad()
    def mask_state(self, optimizer: torch.optim.Optimizer) -> None:
        for w, m in self.pairs:
            st = optimizer.state.get(w)
            if not st:
                continue
            for v in st.values():
                if torch.is_tensor(v) and v.shape == w.shape:
                    v.mul_(m)

    def attach(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """Mask ``optimizer``'s gradients before and its state and weights after every step."""
        self.mask_state(optimizer)  # state left over from earlier training cannot revive anything
        self._handles.append(optimizer.register_step_pre_hook(lambda opt, a, k: self.mask_grads()))

        def post(opt, a, k):
            self.mask_state(opt)
            self.enforce()

        self._handles.append(optimizer.register_step_post_hook(post))
        return optimizer

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()
        self.enforce()


# ---------------------------------------------------------------------------- trained quantization


class _GatherShared(torch.autograd.Function):
    """dense.flat[positions] = codebook[clusters]; backward: Eq. 3, a scatter-add over the clusters."""

    @staticmethod
    def forward(ctx, codebook, positions, clusters, numel):
        ctx.save_for_backward(positions, clusters)
        ctx.k = codebook.numel()
        out = codebook.new_zeros(numel)
        out[positions] = codebook[clusters]
        return out

    @staticmethod
    def backward(ctx, grad):
        positions, clusters = ctx.saved_tensors
        g = grad.new_zeros(ctx.k).index_add_(0, clusters, grad[positions])
        return g, None, None, None


def codebook_gradient(weight_grad: torch.Tensor, positions: torch.Tensor, clusters: torch.Tensor, k: int) -> torch.Tensor:
    """Eq. 3 of Deep Compression: each centroid's gradient is the sum of the gradients of the weights
    assigned to it (pruned positions contribute nothing)."""
    return weight_grad.reshape(-1).new_zeros(k).index_add_(0, clusters, weight_grad.reshape(-1)[positions])


class SharedParametrization(nn.Module):
    """torch.nn.utils.parametrize: the layer's ``weight`` computed from its codebook (the original)."""

    def __init__(self, positions: np.ndarray, clusters: np.ndarray, shape, codebook: torch.Tensor):
        super().__init__()
        self.register_buffer("positions", torch.as_tensor(np.asarray(positions, np.int64)), persistent=False)
        self.register_buffer("clusters", torch.as_tensor(np.asarray(clusters).astype(np.int64)), persistent=False)
        self.shape = tuple(shape)
        self.numel = int(np.prod(self.shape, dtype=np.int64))
        self._init = codebook

    def forward(self, codebook):
        return _GatherShared.apply(codebook, self.positions, self.clusters, self.numel).view(self.shape)

    def right_inverse(self, weight):
        # registering: the stored original is the codebook, not the dense weight
        return self._init.to(device=weight.device, dtype=weight.dtype)


class CodebookTraining:
    """Parametrise every shared layer of ``model`` by its codebook (assignments and masks fixed).

    ``params()`` are the codebooks (trainable ``nn.Parameter``s, also reachable through
    ``model.parameters()``); ``finish()`` copies them into ``shared[layer].codebook`` (float32, in place),
    removes the parametrisations and leaves the dense shared weights in the model.
    """

    def __init__(self, model: nn.Module, shared: Mapping[str, object]):
        from torch.nn.utils import parametrize

        self.model = _unwrap(model)
        self.shared = shared
        modules = dict(self.model.named_modules())
        self.layers: dict[str, nn.Module] = {}
        for name, sw in shared.items():
            if sw.nnz == 0 or sw.codebook.size == 0:
                continue
            m = modules[name]
            w = m.weight
            cb = torch.from_numpy(np.asarray(sw.codebook, np.float32).copy()).to(w.device, w.dtype)
            p = SharedParametrization(sw.positions, sw.clusters, sw.shape, cb).to(w.device)
            parametrize.register_parametrization(m, "weight", p, unsafe=True)
            self.layers[name] = m

    def params(self) -> list[nn.Parameter]:
        return [m.parametrizations.weight.original for m in self.layers.values()]

    def codebooks(self) -> dict[str, torch.Tensor]:
        return {n: m.parametrizations.weight.original for n, m in self.layers.items()}

    @torch.no_grad()
    def finish(self) -> None:
        from torch.nn.utils import parametrize

        for name, m in self.layers.items():
            cb = m.parametrizations.weight.original.detach().cpu().numpy().astype(np.float32)
            self.shared[name].codebook[...] = cb
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
        self.layers = {}


# ------------------------------------------------------------------------------ logging / progress


class JsonlLog:
    """Appends one JSON object per line to ``path`` (rank 0 only; no-op without a path)."""

    def __init__(self, path: str | None):
        self.path = path

    def __call__(self, **record) -> None:
        if not self.path or not is_main():
            return
        record = {"time": round(time.time(), 3), **record}
        d = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(d, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(record, default=float) + "\n")


def _bar(iterable, *, desc: str, total: int | None, enabled: bool):
    if not enabled or not is_main():
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True, mininterval=0.5)


def model_stats(model: nn.Module, masks: Mapping[str, torch.Tensor] | None = None,
                shared: Mapping[str, object] | None = None) -> dict:
    """Sparsity of the compressible layers and an estimate of the parameter bytes at this stage:
    fp32 nonzeros (pruned), or codebook indices + codebooks (shared); other parameters at fp32.
    The .dcz file's own size (with indices and Huffman coding) is what the report prints."""
    model = _unwrap(model)
    modules = dict(model.named_modules())
    layers = list(shared or masks or {})
    total = kept = 0
    size = 0.0
    covered = set()
    for name in layers:
        w = modules[name].weight
        covered.add(id(w))
        n = w.numel()
        nz = int(shared[name].nnz) if shared else int(masks[name].sum())
        total += n
        kept += nz
        if shared:
            sw = shared[name]
            size += nz * sw.bits / 8 + sw.codebook.size * 4
        else:
            size += nz * 4
    for p in model.parameters():
        if id(p) not in covered:
            size += p.numel() * 4
    return {"sparsity": (1 - kept / total) if total else 0.0, "size": int(round(size)),
            "size_kind": "shared" if shared else ("pruned" if masks else "dense")}


# ------------------------------------------------------------------------------------ evaluation


def _is_torch_model(m) -> bool:
    return isinstance(m, nn.Module)


@torch.no_grad()
def evaluate(model_or_runtime, loader, *, device: torch.device | None = None, progress: bool = False,
             desc: str = "eval") -> dict:
    """Top-1, top-5 (when there are more than 5 classes), mean cross-entropy loss and sample count.

    ``model_or_runtime`` is a torch module or any callable taking a float32 numpy batch and returning
    logits (``deepcomp.runtime.load(path)``). Accuracies are fractions.
    """
    is_torch = _is_torch_model(model_or_runtime)
    if is_torch:
        model = model_or_runtime
        was_training = model.training
        model.eval()
        device = device or next((p.device for p in model.parameters()), torch.device("cpu"))
    n = correct1 = correct5 = 0
    loss_sum = 0.0
    classes = None
    try:
        for x, y in _bar(loader, desc=desc, total=len(loader), enabled=progress):
            if is_torch:
                logits = model(x.to(device)).float().cpu()
            else:
                out = model_or_runtime(np.ascontiguousarray(x.numpy(), dtype=np.float32))
                logits = torch.from_numpy(np.asarray(out, dtype=np.float32)).reshape(len(y), -1)
            classes = logits.shape[1]
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            top = logits.topk(min(5, classes), dim=1).indices
            hit = top == y[:, None]
            correct1 += int(hit[:, 0].sum())
            correct5 += int(hit.any(dim=1).sum())
            n += len(y)
    finally:
        if is_torch and was_training:
            model.train()
    out = {"top1": correct1 / n if n else 0.0}
    if classes is not None and classes > 5:
        out["top5"] = correct5 / n
    out["loss"] = loss_sum / n if n else float("nan")
    out["samples"] = n
    return out


# ------------------------------------------------------------------------------------ training loop


@dataclass
class TrainConfig:
    epochs: int = 1
    lr: float = 1e-3
    batch_size: int = 128
    optimizer: str = "adam"          # "adam", "sgd" (momentum 0.9)
    weight_decay: float = 0.0
    schedule: str = "cosine"         # "cosine" (to lr/20 over the stage) or "constant"
    codebook_lr: float | None = None  # trained quantization: lr of the centroids (default lr / 10)
    seed: int = 0
    progress: bool = True


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    if isinstance(params, list) and params and isinstance(params[0], dict):
        groups = params
    else:
        groups = [{"params": list(params)}]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    raise DeepcompError(f"unknown optimizer {cfg.optimizer!r}; use adam or sgd")


def run_epochs(model: nn.Module, train_data, cfg: TrainConfig, *, optimizer: torch.optim.Optimizer,
               stage: str, test_loader=None, log: JsonlLog | None = None,
               stats: Callable[[], dict] | None = None, device: torch.device | None = None) -> list[dict]:
    """Train ``model`` for ``cfg.epochs`` epochs on ``train_data`` (a dataset; sharded with a
    DistributedSampler and wrapped in DDP when a process group is active). Logs a record per epoch."""
    from deepcomp.data import make_loader

    device = device or default_device()
    distributed = dist_active()
    loader = make_loader(train_data, batch_size=cfg.batch_size, shuffle=True, seed=cfg.seed, distributed=distributed)
    net = model
    if distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    steps = max(1, cfg.epochs * len(loader))
    sched = None
    if cfg.schedule == "cosine":
        sched = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    history = []
    torch.manual_seed(cfg.seed)
    for epoch in range(cfg.epochs):
        if distributed:
            loader.sampler.set_epoch(epoch)
        else:
            loader.generator.manual_seed(cfg.seed * 1000 + epoch)
        net.train()
        tot, cnt = 0.0, 0
        t0 = time.time()
        bar = _bar(loader, desc=f"{stage} {epoch + 1}/{cfg.epochs}", total=len(loader), enabled=cfg.progress)
        for x, y in bar:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(net(x), y)
            loss.backward()
            optimizer.step()
            if sched is not None:
                sched.step()
            tot += float(loss.detach()) * len(y)
            cnt += len(y)
            if hasattr(bar, "set_postfix") and cnt // len(y) % 20 == 0:
                bar.set_postfix(loss=f"{tot / cnt:.4f}")
        rec = {"stage": stage, "epoch": epoch + 1, "train_loss": tot / max(cnt, 1),
               "seconds": round(time.time() - t0, 2)}
        if test_loader is not None and (epoch + 1 == cfg.epochs or stage == "train"):
            ev = evaluate(model, test_loader, device=device)
            rec.update(accuracy=ev["top1"], loss=ev["loss"])
            if "top5" in ev:
                rec["top5"] = ev["top5"]
        if stats is not None:
            rec.update(stats())
        history.append(rec)
        if log is not None:
            log(**rec)
        if cfg.progress and is_main() and "accuracy" in rec:
            from tqdm.auto import tqdm

            tqdm.write(f"{stage} epoch {epoch + 1}/{cfg.epochs}: train loss {rec['train_loss']:.4f}, "
                       f"test top-1 {rec['accuracy']:.4f}, loss {rec['loss']:.4f}")
    return history


def train(model: nn.Module, data, *, epochs: int, lr: float = 1e-3, batch_size: int = 128,
          optimizer: str = "adam", weight_decay: float = 0.0, schedule: str = "cosine", test_data=None,
          seed: int = 0, progress: bool = True, log_path: str | None = None, stage: str = "train",
          masks: Mapping[str, torch.Tensor] | None = None) -> list[dict]:
    """Train ``model`` in place (a baseline, or masked retraining when ``masks`` are given).

    ``data``/``test_data``: datasets (``deepcomp.data.load_dataset``) or dataset specs. Works under
    torchrun (DDP). Returns the per-epoch records that were also appended to ``log_path``.
    """
    from deepcomp.data import load_dataset, make_loader

    init_distributed()
    if isinstance(data, str):
        test_data = load_dataset(data, "test") if test_data is None else test_data
        data = load_dataset(data, "train")
    if isinstance(test_data, str):
        test_data = load_dataset(test_data, "test")
    cfg = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, optimizer=optimizer,
                      weight_decay=weight_decay, schedule=schedule, seed=seed, progress=progress)
    device = default_device()
    model.to(device)
    opt = make_optimizer(model.parameters(), cfg)
    test_loader = make_loader(test_data, batch_size=512) if test_data is not None else None
    guard = MaskGuard(model, masks) if masks else None
    if guard:
        guard.attach(opt)
    try:
        return run_epochs(model, data, cfg, optimizer=opt, stage=stage, test_loader=test_loader,
                          log=JsonlLog(log_path), stats=lambda: model_stats(model, masks), device=device)
    finally:
        if guard:
            guard.remove()
            guard.enforce()


# ---------------------------------------------------------------------------------- pipeline hooks


@dataclass
class TrainContext:
    """What a user's ``train_fn(model, ctx)`` gets. Train ``model`` in place for ``epochs`` epochs."""

    stage: str                    # pruning stage name from the pipeline, or "codebooks"
    epochs: int
    lr: float
    batch_size: int
    seed: int
    train_data: object = None     # datasets when make_hooks was given a spec, else None
    test_data: object = None
    masks: Mapping | None = None
    shared: Mapping | None = None
    codebooks: dict = field(default_factory=dict)   # codebooks stage: {layer: trainable codebook tensor}
    guard: MaskGuard | None = None
    log: Callable | None = None

    def attach(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """Call on each optimizer you create: masks its state (and gradients) at every step."""
        if self.guard is not None:
            self.guard.attach(optimizer)
        return optimizer


def make_hooks(data_spec: str | None = None, *, finetune_epochs: int | None = None, lr: float | None = None,
               batch_size: int | None = None, log_path: str | None = None, seed: int = 0,
               progress: bool = True, codebook_epochs: int | None = None, codebook_lr: float | None = None,
               optimizer: str = "adam", weight_decay: float = 0.0, train_fn: Callable | None = None, classes=None,
               limit: int | None = None, train_data=None, test_data=None) -> dict:
    """The callbacks for ``deepcomp.pipeline.compress``: ``{"finetune": f, "train_codebooks": g}``.

    ``finetune(model, masks, stage)`` retrains with the masks fixed (masked gradients and optimizer
    state) for ``finetune_epochs`` epochs (default 1); ``train_codebooks(model, shared)`` fine-tunes the
    centroids (Eq. 3; assignments and masks fixed) for ``codebook_epochs`` (default: finetune_epochs),
    updates ``shared[layer].codebook`` in place and writes the dense shared weights back into the model.
    Biases and other uncompressed parameters train too. Every epoch appends a JSON-lines record
    (stage, epoch, accuracy, loss, sparsity, size) to ``log_path``.

    Data: a spec (``fashion-mnist``, ``mnist:DIR``, ...; ``classes``/``limit`` select a subset) or
    ready datasets ``train_data``/``test_data``. ``train_fn(model, ctx)`` replaces the built-in loop
    (see the module docstring); then data is optional.
    """
    from deepcomp.data import load_dataset, make_loader

    init_distributed()
    if train_data is None and data_spec is not None:
        train_data = load_dataset(data_spec, "train", classes=classes, limit=limit)
    if test_data is None and data_spec is not None:
        test_data = load_dataset(data_spec, "test", classes=classes)
    if train_data is None and train_fn is None:
        raise DataError("retraining needs a dataset (--data) or a train_fn")
    epochs = 1 if finetune_epochs is None else int(finetune_epochs)
    cb_epochs = epochs if codebook_epochs is None else int(codebook_epochs)
    base = TrainConfig(epochs=epochs, lr=1e-3 if lr is None else float(lr),
                       batch_size=128 if batch_size is None else int(batch_size), optimizer=optimizer,
                       weight_decay=float(weight_decay), seed=seed, progress=progress)
    base.codebook_lr = codebook_lr if codebook_lr is not None else base.lr / 10
    log = JsonlLog(log_path)
    test_loader = make_loader(test_data, batch_size=512) if test_data is not None else None
    calls = {"n": 0}

    def _ctx(stage, n_epochs, **kw):
        return TrainContext(stage=stage, epochs=n_epochs, lr=base.lr, batch_size=base.batch_size, seed=seed,
                            train_data=train_data, test_data=test_data, log=log, **kw)

    def _final_record(model, stage, stats):
        if test_loader is None:
            return
        ev = evaluate(model, test_loader)
        log(stage=stage, epoch="end", accuracy=ev["top1"], loss=ev["loss"], **stats)

    def finetune(model: nn.Module, masks: Mapping[str, torch.Tensor], stage: str = "prune") -> None:
        if epochs <= 0:
            return
        calls["n"] += 1
        device = default_device()
        model.to(device)
        sync_masks(masks)
        guard = MaskGuard(model, masks)
        try:
            if train_fn is not None:
                train_fn(model, _ctx(stage, epochs, masks=masks, guard=guard))
                _final_record(model, stage, model_stats(model, masks))
            else:
                cfg = TrainConfig(**{**base.__dict__, "seed": seed + calls["n"]})
                opt = guard.attach(make_optimizer(model.parameters(), cfg))
                run_epochs(model, train_data, cfg, optimizer=opt, stage=stage, test_loader=test_loader,
                           log=log, stats=lambda: model_stats(model, masks), device=device)
        finally:
            guard.remove()
            guard.enforce()
        broadcast_([p.data for p in model.parameters()])
        model.to("cpu")

    def train_codebooks(model: nn.Module, shared: Mapping[str, object]) -> None:
        if cb_epochs <= 0:
            return
        calls["n"] += 1
        device = default_device()
        model.to(device)
        ct = CodebookTraining(model, shared)
        try:
            codebooks = ct.params()
            cb_ids = {id(p) for p in codebooks}
            if train_fn is not None:
                train_fn(model, _ctx("codebooks", cb_epochs, shared=shared, codebooks=ct.codebooks()))
            else:
                cfg = TrainConfig(**{**base.__dict__, "epochs": cb_epochs, "seed": seed + calls["n"]})
                others = [p for p in model.parameters() if id(p) not in cb_ids]
                groups = [{"params": codebooks, "lr": cfg.codebook_lr}]
                if others:
                    groups.append({"params": others, "lr": cfg.lr / 10})
                opt = make_optimizer(groups, cfg)
                run_epochs(model, train_data, cfg, optimizer=opt, stage="codebooks", test_loader=None,
                           log=None, device=device)
            broadcast_(codebooks)
            broadcast_([p.data for p in model.parameters() if id(p) not in cb_ids])
        finally:
            ct.finish()
        model.to("cpu")
        _final_record(model, "codebooks", model_stats(model, shared=shared))

    return {"finetune": finetune, "train_codebooks": train_codebooks}


# ------------------------------------------------------------------------------- .dcz <-> torch


def _last_linear(model: nn.Module) -> str | None:
    name = None
    for n, m in model.named_modules():
        if isinstance(m, nn.Linear):
            name = n
    return name


def dcz_to_torch(path: str, num_classes: int | None = None) -> tuple[nn.Module, dict]:
    """The model in a .dcz file as a torch module (architecture from the file's meta "arch", weights
    from ``deepcomp.dcz.decompress``). With ``num_classes`` different from the file's, the classifier
    head (the last Linear) is left freshly initialised. Returns ``(model, meta)``."""
    from deepcomp.dcz import decompress, read_dcz
    from deepcomp.zoo import resolve_arch

    meta = read_dcz(path).meta
    arch = meta.get("arch")
    if not arch:
        raise DeepcompError(f"{path}: the file does not record its architecture (meta 'arch')")
    sd = decompress(path)
    probe, _ = resolve_arch(arch)
    head = _last_linear(probe)
    file_classes = int(sd[f"{head}.weight"].shape[0]) if head and f"{head}.weight" in sd else None
    model, _ = resolve_arch(arch, num_classes or file_classes)
    own = model.state_dict()
    load = {}
    for k, v in sd.items():
        if k not in own:
            raise DeepcompError(f"{path}: tensor {k!r} does not belong to a {arch} model")
        if tuple(own[k].shape) == tuple(v.shape):
            load[k] = torch.from_numpy(np.array(v))
        elif not (head and k.startswith(head + ".")):
            raise DeepcompError(f"{path}: tensor {k!r} has shape {tuple(v.shape)}, a {arch} model wants "
                                f"{tuple(own[k].shape)}")
    if num_classes is not None and num_classes != file_classes:
        load = {k: v for k, v in load.items() if not k.startswith(head + ".")}
    missing = [k for k in own if k not in load and not (head and k.startswith(head + "."))]
    if missing:
        raise DeepcompError(f"{path}: no weights for {', '.join(missing[:5])}")
    model.load_state_dict(load, strict=False)
    model.eval()
    return model, meta


def load_dcz_for_eval(path: str):
    """``(callable, engine name)``: the native runtime's model when ``deepcomp.runtime`` can load the
    file, else (runtime missing) the decompressed torch model, with a warning on stderr."""
    try:
        import deepcomp.runtime as rt

        load = rt.load
    except (ImportError, AttributeError) as e:
        import sys

        print(f"warning: deepcomp.runtime is unavailable ({e}); evaluating the decompressed weights in torch",
              file=sys.stderr)
        return dcz_to_torch(path)[0], "torch (decompressed)"
    return load(path), "deepcomp runtime"


def shared_from_dense(name: str, weight: np.ndarray, bits: int):
    """A SharedWeight read back from a decompressed tensor: kept positions are the nonzeros, the codebook
    the distinct nonzero values (at most 2^bits for a deepcomp-written layer)."""
    from deepcomp.quantize import SharedWeight

    flat = np.asarray(weight, np.float32).reshape(-1)
    pos = np.flatnonzero(flat).astype(np.int64)
    cb, cl = np.unique(flat[pos], return_inverse=True)
    if cb.size > (1 << int(bits)):
        raise DeepcompError(f"{name}: {cb.size} distinct values, more than 2^{bits}; not a shared layer")
    return SharedWeight(name=f"{name}.weight", shape=tuple(weight.shape), codebook=cb.astype(np.float32),
                        positions=pos, clusters=cl.astype(np.uint16), bits=int(bits))


# --------------------------------------------------------------------------------- transfer learning


def finetune_dcz(path: str, data, num_classes: int | None = None, out_path: str | None = None, *,
                 epochs: int = 3, head_epochs: int | None = None, codebook_epochs: int | None = None,
                 lr: float = 1e-3, batch_size: int = 128, seed: int = 0, progress: bool = True,
                 log_path: str | None = None, freeze_backbone: bool = False, classes=None,
                 limit: int | None = None, train_data=None, test_data=None) -> dict:
    """Transfer learning from a compressed model (the seed write-ups' recipe).

    1. Load ``path`` back as torch (``dcz_to_torch``), with a new classifier head of ``num_classes``.
    2. ``head_epochs``: train the new head while the backbone stays pruned and shared: its layers are
       parametrised by their codebooks (masks and assignments fixed; centroids train at lr/10 unless
       ``freeze_backbone``).
    3. ``epochs``: prune the head to the old head's density and retrain it with the mask fixed.
    4. Share the head's weights (k-means, the old head's bits), train every codebook (Eq. 3) for
       ``codebook_epochs``, and write ``out_path`` through ``deepcomp.pipeline.compress`` with the
       layers' exact densities and bits (so the backbone's masks and shared values are kept bit for bit).

    ``data`` is a dataset spec (or pass ``train_data``/``test_data``). Returns a dict with the written
    file's accuracy (evaluated from the file, on the native runtime when available), size and ratio.
    """
    from deepcomp.data import load_dataset, make_loader, num_classes_of
    from deepcomp.pipeline import compress
    from deepcomp.prune import compute_masks
    from deepcomp.quantize import share_layer
    from deepcomp.recipes import DEFAULTS, Recipe

    init_distributed()
    if train_data is None:
        train_data = load_dataset(data, "train", classes=classes, limit=limit)
    if test_data is None:
        test_data = load_dataset(data, "test", classes=classes)
    k = int(num_classes or num_classes_of(train_data))
    head_epochs = epochs if head_epochs is None else head_epochs
    codebook_epochs = epochs if codebook_epochs is None else codebook_epochs
    log = JsonlLog(log_path)
    torch.manual_seed(seed)
    model, meta = dcz_to_torch(path, num_classes=k)
    plan = meta.get("recipe", {}).get("layers", {})
    head = _last_linear(model)
    if head is None:
        raise DeepcompError(f"{path}: the model has no Linear layer to use as classifier head")
    modules = dict(model.named_modules())
    with torch.no_grad():  # a fresh head, seeded
        torch.manual_seed(seed)
        modules[head].reset_parameters()
    sd = {k_: v.detach().numpy() for k_, v in model.state_dict().items()}
    from deepcomp.prune import prunable_layers

    layers = prunable_layers(model)
    backbone = {}
    for name, m in layers.items():
        if name == head:
            continue
        bits = int(plan.get(name, {}).get("bits", 8 if isinstance(m, nn.Conv2d) else 5))
        backbone[name] = shared_from_dense(name, sd[f"{name}.weight"], bits)
    head_plan = plan.get(head, {})
    head_density = float(head_plan.get("density", 0.1))
    head_bits = int(head_plan.get("bits", 5))
    device = default_device()
    model.to(device)
    test_loader = make_loader(test_data, batch_size=512)
    cfg = TrainConfig(epochs=head_epochs, lr=lr, batch_size=batch_size, seed=seed, progress=progress)
    history = []

    def stage(name, n_epochs, masks=None, shared_now=None, codebook_lr=lr / 10, other_lr=lr):
        if n_epochs <= 0:
            return
        ct = CodebookTraining(model, shared_now)
        guard = MaskGuard(model, masks) if masks else None
        try:
            cbs = ct.params()
            ids = {id(p) for p in cbs}
            groups = [{"params": [p for p in model.parameters() if id(p) not in ids], "lr": other_lr}]
            if not freeze_backbone or name == "transfer-codebooks":
                groups.append({"params": cbs, "lr": codebook_lr})
            else:
                for p in cbs:
                    p.requires_grad_(False)
            opt = make_optimizer(groups, TrainConfig(**{**cfg.__dict__, "epochs": n_epochs}))
            if guard:
                guard.attach(opt)
            c = TrainConfig(**{**cfg.__dict__, "epochs": n_epochs, "seed": seed + len(history)})
            history.extend(run_epochs(model, train_data, c, optimizer=opt, stage=name, test_loader=test_loader,
                                      log=log, stats=lambda: model_stats(model, shared=shared_now), device=device))
            broadcast_(cbs)
            broadcast_([p.data for p in model.parameters() if id(p) not in ids])
        finally:
            for p in ct.params():
                p.requires_grad_(True)
            ct.finish()
            if guard:
                guard.remove()
                guard.enforce()

    # 2. the new head, dense, over the shared backbone
    stage("transfer-head", head_epochs, shared_now=backbone)
    # 3. prune the head like the old one, retrain with the mask fixed
    masks = compute_masks(model, {head: 1.0 - head_density}, layers={head: modules[head]})
    sync_masks(masks)
    with torch.no_grad():
        modules[head].weight.mul_(masks[head].to(device=modules[head].weight.device, dtype=torch.float32))
    stage("transfer-prune", epochs, masks=masks, shared_now=backbone)
    # 4. share the head, train every codebook
    w = modules[head].weight.detach().cpu().numpy()
    all_shared = dict(backbone)
    all_shared[head] = share_layer(f"{head}.weight", w, masks[head].cpu().numpy(), head_bits, seed=seed)
    with torch.no_grad():
        modules[head].weight.copy_(torch.from_numpy(all_shared[head].dense()).to(modules[head].weight.device))
    stage("transfer-codebooks", codebook_epochs, shared_now=all_shared, codebook_lr=lr / 10, other_lr=lr / 10)
    model.cpu()

    # 5. write the new file: the exact densities and bits, so compress() keeps everything as it is
    d = meta.get("recipe", {})
    rec_layers = {}
    for name, sw in all_shared.items():
        spec = {"density": sw.nnz / sw.numel, "bits": int(sw.bits)}
        if "index_bits" in plan.get(name, {}):
            spec["index_bits"] = int(plan[name]["index_bits"])
        if plan.get(name, {}).get("label"):
            spec["label"] = plan[name]["label"]
        rec_layers[name] = spec
    recipe = Recipe(name=f"transfer:{d.get('name', 'dcz')}", source=str(path),
                    defaults={**DEFAULTS, "scope": "layer", "init": "linear"}, layers=rec_layers,
                    arch=str(meta.get("arch", "*")))
    before = {n: sw.dense().copy() for n, sw in all_shared.items()}
    from deepcomp.zoo import LoadedModel

    loaded = LoadedModel(model, str(meta["arch"]), tuple(meta.get("input_shape") or ()), f"finetune:{path}")
    result = compress(loaded, recipe=recipe, progress=False, seed=seed)
    for name in before:
        if not np.array_equal(result.shared[name].dense(), before[name]):
            raise DeepcompError(f"internal: re-encoding changed layer {name}")
    out = {"history": history, "num_classes": k, "head": head}
    if out_path is not None and is_main():
        size = result.save(out_path)
        engine_model, engine = load_dcz_for_eval(out_path)
        ev = evaluate(engine_model, test_loader)
        out.update(file_bytes=size, ratio=result.meta["original_bytes"] / size, accuracy=ev, engine=engine,
                   stages=result.meta.get("stages"))
        log(stage="transfer-written", accuracy=ev["top1"], loss=ev["loss"], size=size,
            sparsity=1 - sum(sw.nnz for sw in all_shared.values()) / sum(sw.numel for sw in all_shared.values()))
    else:
        out["accuracy"] = evaluate(model, test_loader)
    out["result"] = result
    return out
