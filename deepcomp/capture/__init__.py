"""Capture a torch model as the GRAPH section of a .dcz file (docs/dcz-format.md, "GRAPH").

:func:`capture` runs the model once on zeros (eval mode) to check that it takes the input shape,
then captures it with one of the fronts, each a table of handlers over one builder
(deepcomp.capture.builder) and one set of lowerings (deepcomp.capture.lower):

- ``fx``: torch.fx symbolic tracing, handlers keyed by module type, function and tensor method;
- ``torchscript``: the inlined graph of a TorchScript module, handlers keyed by node kind;
- ``onnx``: an ONNX file's graph (a :class:`deepcomp.capture.onnx.OnnxModel`), handlers keyed by op type.

The captured graph's output shape is checked against the model's. Anything the fronts cannot
express raises :class:`deepcomp.errors.UnsupportedOpError` naming the op, where it is, and what the
front supports.
"""

from __future__ import annotations

import torch
from torch import nn

from deepcomp.capture.builder import GRAPH_FORMAT, GRAPH_VERSION  # noqa: F401
from deepcomp.errors import ModelLoadError, UnsupportedOpError


# what a TorchScript model's refusal adds: the fx front has more handlers (and one per torchvision
# module it traces as a whole), so the same model may well capture from its nn.Module
FX_HINT = ("the torch.fx front captures more models (torchvision's ViT, Swin and MaxViT among them): pass the "
           "nn.Module itself (in Python), or on the command line torchvision:NAME --weights FILE, a state_dict "
           "with --arch NAME, or a pickled module with --trust-pickle")


def _unsupported_for(supported, hint: str = ""):
    def make(op: str, where: str, why: str = "") -> UnsupportedOpError:
        extra = f" ({why})" if why else ""
        extra += f"; {hint}" if hint else ""
        return UnsupportedOpError(f"unsupported op '{op}' at '{where}'{extra}. deepcomp supports {supported()}")
    return make


def _output_shape(model, input_shape: tuple) -> tuple:
    try:
        with torch.no_grad():
            y = model(torch.zeros((1, *input_shape)))
    except Exception as e:  # noqa: BLE001 - whatever the model raises for this shape
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(
            f"the model does not run on an input of shape [N, {', '.join(map(str, input_shape))}]: {first}. "
            "Give the right input shape (--input-shape C,H,W on the command line)"
        ) from None
    return tuple(y.shape[1:]) if isinstance(y, torch.Tensor) else None


def capture(model: nn.Module, input_shape: tuple) -> dict:
    """The GRAPH JSON object (a dict) for ``model`` run on inputs of shape ``[N, *input_shape]``."""
    from deepcomp.capture import fx, onnx, torchscript

    input_shape = tuple(int(d) for d in input_shape)
    if isinstance(model, onnx.OnnxModel):  # nothing to run in torch: the ONNX graph declares its output
        return onnx.capture_onnx(model, input_shape, _unsupported_for(onnx.supported))[0]
    if not isinstance(model, torch.jit.ScriptModule):
        fx.refuse(model, _unsupported_for(fx.supported))  # before running it: an Embedding fails on zeros
    was_training = model.training
    model.eval()
    try:
        want = _output_shape(model, input_shape)
        if want is None:
            raise UnsupportedOpError("the model returns several values (or a container); deepcomp captures "
                                     "models that return one tensor")
        if isinstance(model, torch.jit.ScriptModule):
            graph, got = torchscript.capture_script(model, input_shape,
                                                    _unsupported_for(torchscript.supported, FX_HINT))
        else:
            graph, got = fx.capture_fx(model, input_shape, _unsupported_for(fx.supported))
    finally:
        model.train(was_training)
    if tuple(got) != want:  # pragma: no cover - a front's bug, not the user's
        raise UnsupportedOpError(f"the captured graph computes a [N, {', '.join(map(str, got))}] output where the "
                                 f"model computes [N, {', '.join(map(str, want))}]; please report this model")
    return graph
