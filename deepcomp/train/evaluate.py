"""Evaluation: top-1 / top-5 / loss of a torch model or of a .dcz file on deepcomp's runtime."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deepcomp.train.distributed import bar


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
        for x, y in bar(loader, desc=desc, total=len(loader), enabled=progress):
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



def load_dcz_for_eval(path: str, int8: str = "file"):
    """``(callable, engine name)``: the .dcz file loaded on deepcomp's native runtime, the engine that
    ships it (``deepcomp eval`` and ``compress`` report accuracy measured this way). ``int8="file"``
    by default: every layer the file marks int8 runs int8, so an int8 file's accuracy is the same
    on every CPU ("auto" may move layers to fp32 on this one, deepcomp.runtime.precision)."""
    import deepcomp.runtime as rt

    return rt.load(path, int8=int8), "deepcomp runtime"
