"""The pipeline's retraining callbacks: ``make_hooks`` builds ``finetune`` and ``train_codebooks`` for
``deepcomp.pipeline.compress`` from a dataset, or from the user's own training function.

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

from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch
from torch import nn

from deepcomp.errors import DataError
from deepcomp.quantize import CodebookTraining
from deepcomp.train.distributed import JsonlLog, broadcast_, default_device, init_distributed, sync_masks
from deepcomp.train.evaluate import evaluate
from deepcomp.train.loop import TrainConfig, make_optimizer, model_stats, run_epochs
from deepcomp.train.masked import MaskGuard


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



def criterion_from_data(name: str, train_data, *, batches: int = 8, batch_size: int = 64, seed: int = 0):
    """A pruning criterion by recipe name: None for ``magnitude`` (the pipeline's default), else a
    function ``model -> Criterion`` calibrated on ``batches`` seeded batches of ``train_data`` each time
    it is called (so every pruning step sees the retrained model): ``wanda`` (|w| x input norm),
    ``relevance`` (LRP-0) or ``taylor`` (|w x grad|)."""
    from itertools import islice

    from deepcomp.data import make_loader
    from deepcomp.prune import RelevanceCriterion, WandaCriterion

    if name == "magnitude":
        return None
    if name not in ("wanda", "relevance", "taylor"):
        raise DataError(f"unknown criterion {name!r}; use magnitude, wanda, relevance or taylor")
    if train_data is None:
        raise DataError(f"criterion {name} calibrates on data: give a dataset (--data)")
    n = max(1, int(batches))

    def factory(model):
        sample = list(islice(iter(make_loader(train_data, batch_size=batch_size, shuffle=True, seed=seed)), n))
        if name == "wanda":
            return WandaCriterion.from_batches(model, [x for x, _ in sample])
        return RelevanceCriterion.from_batches(model, sample, rule="lrp0" if name == "relevance" else "taylor")
    return factory
