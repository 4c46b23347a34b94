"""The training loop: a baseline, or masked retraining; one process or torchrun (DDP)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from deepcomp.errors import DeepcompError
from deepcomp.train.distributed import (JsonlLog, bar, default_device, dist_active, init_distributed,
                                        is_main, unwrap)
from deepcomp.train.evaluate import evaluate
from deepcomp.train.masked import MaskGuard


def model_stats(model: nn.Module, masks: Mapping[str, torch.Tensor] | None = None,
                shared: Mapping[str, object] | None = None) -> dict:
    """Sparsity of the compressible layers and an estimate of the parameter bytes at this stage:
    fp32 nonzeros (pruned), or codebook indices + codebooks (shared); other parameters at fp32.
    The .dcz file's own size (with indices and Huffman coding) is what the report prints."""
    model = unwrap(model)
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
    bn_l1: float = 0.0               # network slimming's sparsity training: lam * sum |gamma| over BatchNorms


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
    slimming = None
    if cfg.bn_l1 > 0:  # the subgradient lam * sign(gamma) joins the BatchNorm weights' gradients
        from deepcomp.prune.structured.slimming import SlimmingRegularizer

        slimming = SlimmingRegularizer(model, cfg.bn_l1)
    elif cfg.bn_l1 < 0:
        raise DeepcompError(f"the BatchNorm L1 penalty must be >= 0, got {cfg.bn_l1}")
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
        batches = bar(loader, desc=f"{stage} {epoch + 1}/{cfg.epochs}", total=len(loader), enabled=cfg.progress)
        for x, y in batches:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(net(x), y)
            loss.backward()
            if slimming is not None:
                slimming.step()
            optimizer.step()
            if sched is not None:
                sched.step()
            tot += float(loss.detach()) * len(y)
            cnt += len(y)
            if hasattr(batches, "set_postfix") and cnt // len(y) % 20 == 0:
                batches.set_postfix(loss=f"{tot / cnt:.4f}")
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
          masks: Mapping[str, torch.Tensor] | None = None, bn_l1: float = 0.0) -> list[dict]:
    """Train ``model`` in place (a baseline, or masked retraining when ``masks`` are given).

    ``bn_l1 > 0`` adds network slimming's sparsity penalty ``bn_l1 * sum |gamma|`` over the BatchNorm
    scales (Liu et al. 2017, their lambda, 1e-4 to 1e-5), so that ``slim`` afterwards removes
    channels whose gamma training drove towards zero.

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
                      weight_decay=weight_decay, schedule=schedule, seed=seed, progress=progress, bn_l1=bn_l1)
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

