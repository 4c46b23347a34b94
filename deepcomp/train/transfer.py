"""Transfer learning from a .dcz file: a new classifier head over the pruned, shared backbone."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from deepcomp.data import load_dataset, make_loader, num_classes_of
from deepcomp.errors import DeepcompError
from deepcomp.prune import compute_masks, prunable_layers
from deepcomp.quantize import CodebookTraining, SharedWeight, share_layer
from deepcomp.recipes import DEFAULTS, Recipe
from deepcomp.train.distributed import JsonlLog, broadcast_, default_device, init_distributed, is_main, sync_masks
from deepcomp.train.evaluate import evaluate, load_dcz_for_eval
from deepcomp.train.loop import TrainConfig, make_optimizer, model_stats, run_epochs
from deepcomp.train.masked import MaskGuard
from deepcomp.zoo import LoadedModel, classifier_head, dcz_to_torch


def shared_from_dense(name: str, weight: np.ndarray, bits: int):
    """A SharedWeight read back from a decompressed tensor: kept positions are the nonzeros, the codebook
    the distinct nonzero values (at most 2^bits for a deepcomp-written layer)."""
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
    from deepcomp.pipeline import compress

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
    head = classifier_head(model)
    if head is None:
        raise DeepcompError(f"{path}: the model has no Linear layer to use as classifier head")
    modules = dict(model.named_modules())
    with torch.no_grad():  # a fresh head, seeded
        torch.manual_seed(seed)
        modules[head].reset_parameters()
    sd = {k_: v.detach().numpy() for k_, v in model.state_dict().items()}
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
