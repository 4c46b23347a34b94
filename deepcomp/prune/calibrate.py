"""Statistics gathered on a few calibration batches, for the criteria that need data.

* :func:`collect_activation_norms` -- the L2 norm of every input feature a layer sees (WANDA).
* :func:`collect_gradients` -- weight gradients of a loss (or of any per-batch quantity built from
  them, e.g. the weight x gradient relevance of :class:`~deepcomp.prune.criteria.RelevanceCriterion`).

``batches`` is any iterable of calibration batches: a tensor ``x``, or a tuple/list whose first
element is ``x`` (and whose second is the target ``y`` where a loss needs one), like a DataLoader
yields. The model is run in eval mode (no dropout, BatchNorm uses its running statistics) and put
back in the mode it was in; parameters' ``.grad`` fields are not touched. It runs inside
:func:`~deepcomp.prune.attention.calibration_forward`, so the projections of ``nn.MultiheadAttention``
(the packed ``<attention>.in_proj`` and ``out_proj``) see their inputs like any Linear.
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from deepcomp.errors import DataError, RecipeError
from deepcomp.prune.attention import calibration_forward, packed_projections
from deepcomp.prune.criteria import LINEAR

PRUNABLE = (nn.Conv2d, *LINEAR)


def _select_layers(model: nn.Module, layers: Iterable[str] | Mapping[str, nn.Module] | None) -> dict[str, nn.Module]:
    packed_projections(model)
    named = dict(model.named_modules())
    if layers is None:
        return {n: m for n, m in named.items() if isinstance(m, PRUNABLE)}
    out = {}
    for name in layers:
        if name not in named:
            raise RecipeError(f"layer {name!r} is not in the model; pick names from model.named_modules()")
        if not isinstance(named[name], PRUNABLE):
            raise RecipeError(f"layer {name!r} is a {type(named[name]).__name__}; only Conv2d and Linear layers "
                              "(and attentions' in_proj) can be calibrated")
        out[name] = named[name]
    return out


def _split_batch(batch, need_target: bool):
    if isinstance(batch, torch.Tensor):
        if need_target:
            raise DataError("calibration batches must be (inputs, targets) pairs to compute a loss; "
                            "got a bare tensor")
        return batch, None
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        target = batch[1] if len(batch) > 1 else None
        if need_target and target is None:
            raise DataError("calibration batches must be (inputs, targets) pairs to compute a loss")
        return batch[0], target
    raise DataError(f"a calibration batch must be a tensor or an (inputs, targets) tuple, got {type(batch).__name__}")


def _device_of(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _conv_input_sq_sums(module: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """Sum of x^2 over batch and output positions, per (input channel, kernel row, kernel column).

    Entry [c, i, j] is the squared L2 norm of the column of the im2col (unfold) matrix that multiplies
    weight[:, c, i, j] -- computed by strided slicing of the padded input, one slice per kernel offset,
    so no im2col buffer is ever built.
    """
    kh, kw = module.kernel_size
    sh, sw = module.stride
    dh, dw = module.dilation
    pad = module._reversed_padding_repeated_twice  # (left, right, top, bottom), also for padding="same"
    if any(pad):
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = F.pad(x, pad, mode=mode)
    x2 = x.double().pow(2)
    h, w = x2.shape[-2:]
    oh = (h - dh * (kh - 1) - 1) // sh + 1
    ow = (w - dw * (kw - 1) - 1) // sw + 1
    out = torch.empty(x2.shape[1], kh, kw, dtype=torch.float64, device=x.device)
    for i in range(kh):
        for j in range(kw):
            win = x2[:, :, i * dh: i * dh + sh * (oh - 1) + 1: sh, j * dw: j * dw + sw * (ow - 1) + 1: sw]
            out[:, i, j] = win.sum(dim=(0, 2, 3))
    return out


@torch.no_grad()
def collect_activation_norms(
    model: nn.Module,
    batches: Iterable,
    layers: Iterable[str] | Mapping[str, nn.Module] | None = None,
) -> dict[str, torch.Tensor]:
    """L2 norms of each layer's input features over all calibration samples (WANDA's ||X_j||_2).

    Returns ``{layer name: norms}`` (float32, on the CPU):

    * Linear (and an attention's packed ``in_proj``): shape ``(in_features,)``; every leading
      dimension (batch, tokens) counts as samples.
    * Conv2d: shape ``(in_channels, kh, kw)``: entry [c, i, j] is the norm of everything weight
      ``[:, c, i, j]`` is multiplied with (the im2col column of that channel and kernel offset, padding
      included), so |W| x norm is exactly WANDA's score on the unfolded convolution. For a grouped
      convolution the channels are the layer's full input channels; the criterion picks the slice of
      each output channel's group.
    """
    layers = _select_layers(model, layers)
    sums: dict[str, torch.Tensor] = {}
    hooks = []

    def make_hook(name: str, module: nn.Module):
        def hook(mod, inputs):
            x = inputs[0].detach()
            if isinstance(mod, LINEAR):
                s = x.reshape(-1, x.shape[-1]).double().pow(2).sum(0)
            else:
                if x.dim() == 3:
                    x = x.unsqueeze(0)
                s = _conv_input_sq_sums(mod, x)
            sums[name] = sums[name] + s if name in sums else s
        return hook

    was_training = model.training
    model.eval()
    try:
        for name, module in layers.items():
            hooks.append(module.register_forward_pre_hook(make_hook(name, module)))
        device = _device_of(model)
        n = 0
        with calibration_forward(model):
            for batch in batches:
                x, _ = _split_batch(batch, need_target=False)
                model(x.to(device))
                n += 1
        if n == 0:
            raise DataError("no calibration batches were given; pass a few batches of real inputs")
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    missing = [name for name in layers if name not in sums]
    if missing:
        raise DataError(f"layers {missing} never ran during calibration; check that the model's forward uses them")
    return {name: s.sqrt().float().cpu() for name, s in sums.items()}


def collect_gradients(
    model: nn.Module,
    batches: Iterable,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    layers: Iterable[str] | Mapping[str, nn.Module] | None = None,
    *,
    accumulate: Callable[[str, nn.Module, torch.Tensor], torch.Tensor] | None = None,
    objective: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor] | None = None,
    average: bool = True,
) -> dict[str, torch.Tensor]:
    """Weight gradients of ``loss_fn(model(x), y)`` over the calibration batches.

    By default returns the mean over batches of d loss / d weight per layer (weight's shape, CPU).
    ``accumulate(name, module, grad)`` replaces the per-batch quantity that is summed (for instance
    ``(module.weight * grad).abs()``), so per-batch nonlinear statistics need no extra memory.
    ``objective(output, target)`` replaces ``loss_fn`` entirely when the quantity to differentiate is
    not a loss (e.g. the logit of the target class, for LRP-0 relevance); then batches may be bare
    inputs. ``loss_fn`` defaults to cross-entropy. ``average=False`` returns the sum over batches.
    Uses ``torch.autograd.grad``: the parameters' ``.grad`` fields are left as they were.
    """
    layers = _select_layers(model, layers)
    if objective is None:
        loss_fn = loss_fn or nn.CrossEntropyLoss()
    need_target = objective is None
    weights = [m.weight for m in layers.values()]
    if any(not w.requires_grad for w in weights):
        raise RecipeError("collect_gradients needs weights with requires_grad=True (the model looks frozen)")
    acc: dict[str, torch.Tensor] = {}
    was_training = model.training
    model.eval()
    device = _device_of(model)
    n = 0
    try:
        with calibration_forward(model):
            for batch in batches:
                x, y = _split_batch(batch, need_target=need_target)
                x = x.to(device)
                y = y.to(device) if y is not None else None
                with torch.enable_grad():
                    out = model(x)
                    value = objective(out, y) if objective is not None else loss_fn(out, y)
                    if value.dim() != 0:
                        raise RecipeError("the loss / objective must return a scalar")
                    grads = torch.autograd.grad(value, weights, allow_unused=True)
                for (name, module), g in zip(layers.items(), grads):
                    if g is None:
                        g = torch.zeros_like(module.weight)
                    q = accumulate(name, module, g) if accumulate is not None else g
                    q = q.detach().double()
                    acc[name] = acc[name] + q if name in acc else q
                n += 1
    finally:
        model.train(was_training)
    if n == 0:
        raise DataError("no calibration batches were given; pass a few batches of real inputs and targets")
    scale = 1.0 / n if average else 1.0
    return {name: (a * scale).float().cpu() for name, a in acc.items()}
