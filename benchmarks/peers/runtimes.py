"""The runtimes the benchmark compares, how the table names them, and whether they can run here."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

RUNTIMES = ["torch", "onnxruntime", "openvino", "openvino-default", "deepsparse", "deepcomp",
            "onnxruntime-int8", "openvino-int8", "deepsparse-int8", "deepcomp-int8"]
LABELS = {"torch": "dense PyTorch", "onnxruntime": "ONNX Runtime", "openvino": "OpenVINO f32",
          "openvino-default": "OpenVINO default precision (information)", "deepsparse": "DeepSparse 1.8",
          "deepcomp": "deepcomp", "onnxruntime-int8": "ONNX Runtime int8", "openvino-int8": "OpenVINO int8",
          "deepsparse-int8": "DeepSparse int8", "deepcomp-int8": "deepcomp int8"}
FP32_PEERS = ["onnxruntime", "openvino", "deepsparse"]  # "the fastest fp32 peer" is the fastest of these
INT8_PEERS = ["onnxruntime-int8", "openvino-int8", "deepsparse-int8"]  # "the fastest int8 peer"
INT8 = set(INT8_PEERS) | {"deepcomp-int8"}
TOLERANCE = {"openvino-default": 5e-2}  # bf16 where the CPU has it
FP32_TOLERANCE = 1e-3
# int8 weights and activations on random weights and inputs: a few percent of the output's range is
# normal; beyond this the table flags the figure (the run goes on: it is a sanity check, not accuracy)
INT8_TOLERANCE = 0.15


def tolerance(rt: str) -> float:
    """Largest relative max error against torch that still counts as the same output."""
    return INT8_TOLERANCE if rt in INT8 else TOLERANCE.get(rt, FP32_TOLERANCE)


def base(rt: str) -> str:
    """The runtime that runs rt's model: "openvino-int8" -> "openvino"."""
    return rt.removesuffix("-int8")


def python_for(rt: str, args) -> str | None:
    """The interpreter rt's worker runs in (None: this one)."""
    return args.deepsparse_python if base(rt) == "deepsparse" else None


def available(rt: str, args) -> str | None:
    """None if the runtime can run here, else why not."""
    needs = ["onnxruntime"] if rt in INT8_PEERS else []  # the QDQ models come from ONNX Runtime's quantizer
    needs += {"onnxruntime": ["onnxruntime"], "openvino": ["openvino"], "openvino-default": ["openvino"]}.get(base(rt), [])
    for mod in needs:
        if not importlib.util.find_spec(mod):
            return f"{mod} is not installed (pip install '.[peers]')"
    if base(rt) == "deepsparse":
        py = args.deepsparse_python
        if not py or not Path(py).exists():
            return "no DeepSparse environment (give --deepsparse-python or $DEEPSPARSE_PYTHON)"
        r = subprocess.run([py, "-c", "import deepsparse"], capture_output=True, text=True)
        return None if r.returncode == 0 else "deepsparse does not import in " + py
    return None
