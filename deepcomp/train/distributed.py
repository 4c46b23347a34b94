"""Distributed setup: the torchrun process group (gloo on CPU, NCCL on GPU), rank queries, broadcasts,
and output that only rank 0 writes (JSON-lines logs, progress bars)."""

from __future__ import annotations

import json
import os
import time
from typing import Mapping

import torch
from torch import nn


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


def unwrap(model: nn.Module) -> nn.Module:
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


def bar(iterable, *, desc: str, total: int | None, enabled: bool):
    if not enabled or not is_main():
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True, mininterval=0.5)
