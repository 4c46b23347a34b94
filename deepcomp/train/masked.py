"""Masked training: keep pruned weights exactly zero while any training loop runs."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from deepcomp.errors import DeepcompError
from deepcomp.train.distributed import unwrap


class MaskGuard:
    """Keep the pruned weights of ``model`` exactly zero during training.

    Registers gradient hooks on the masked weights at construction; ``attach(optimizer)`` adds a step
    pre-hook (zero pruned gradients) and post-hook (zero pruned weights and every state tensor of the
    weight's shape: SGD momentum, Adam's exp_avg / exp_avg_sq / max_exp_avg_sq, ...). Call ``remove()``
    when done (or use it as a context manager).
    """

    def __init__(self, model: nn.Module, masks: Mapping[str, torch.Tensor]):
        modules = dict(unwrap(model).named_modules())
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

