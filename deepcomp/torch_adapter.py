"""Run a .dcz model as a torch module (inference only) on deepcomp's native sparse kernels.

The module's forward hands the input tensor's memory to the runtime without a copy (``.numpy()`` of a
contiguous float32 CPU tensor) and wraps the result the same way (``torch.from_numpy``), so it runs
exactly the kernels ``deepcomp.runtime`` runs. It holds no torch parameters: to fine-tune, decompress
the file into a dense state_dict instead (``deepcomp decompress``).
"""

from __future__ import annotations

import os

import torch
from torch import nn

from deepcomp.errors import DeepcompError
from deepcomp.runtime import RuntimeModel, load


class DczModule(nn.Module):
    """A compressed model as an eval-only ``nn.Module``; ``forward(x)`` takes a CPU tensor
    ``[N, *input_shape]`` (or one sample) and returns a float32 CPU tensor."""

    def __init__(self, runtime: RuntimeModel):
        super().__init__()
        self.runtime = runtime
        self.input_shape = runtime.input_shape
        self.meta = runtime.meta
        self.graph = runtime.graph
        self.layers = runtime.layers
        super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise DeepcompError(f"expected a torch.Tensor, got {type(x).__name__}")
        if x.device.type != "cpu":
            raise DeepcompError(f"deepcomp's runtime runs on the CPU; move the input there first (x.cpu()), got {x.device}")
        x = x.detach()
        if x.dtype != torch.float32:
            x = x.to(torch.float32)
        if not x.is_contiguous():
            x = x.contiguous()
        return torch.from_numpy(self.runtime(x.numpy()))

    def train(self, mode: bool = True):
        if mode:
            raise DeepcompError("a .dcz model runs inference only; to retrain, decompress it into a state_dict "
                                "(deepcomp decompress) and load that into the original architecture")
        return super().train(False)

    def extra_repr(self) -> str:
        return f"input_shape={list(self.input_shape)}, layers={len(self.layers)}"


def to_torch(path_or_runtime_model: str | os.PathLike | RuntimeModel) -> DczModule:
    """A torch module (eval mode, inference only) that runs a .dcz file with the native kernels."""
    if isinstance(path_or_runtime_model, RuntimeModel):
        runtime = path_or_runtime_model
    elif isinstance(path_or_runtime_model, (str, os.PathLike)):
        runtime = load(path_or_runtime_model)
    else:
        raise DeepcompError(f"to_torch takes a .dcz path or a deepcomp.runtime model, got "
                            f"{type(path_or_runtime_model).__name__}")
    return DczModule(runtime)
