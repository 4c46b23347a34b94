"""The runtimes the benchmark compares, how the table names them, and whether they can run here."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

RUNTIMES = ["torch", "onnxruntime", "openvino", "openvino-default", "deepsparse", "deepcomp"]
LABELS = {"torch": "dense PyTorch", "onnxruntime": "ONNX Runtime", "openvino": "OpenVINO f32",
          "openvino-default": "OpenVINO default precision (information)", "deepsparse": "DeepSparse 1.8",
          "deepcomp": "deepcomp"}
FP32_PEERS = ["onnxruntime", "openvino", "deepsparse"]  # "the fastest fp32 peer" is the fastest of these
TOLERANCE = {"openvino-default": 5e-2}  # bf16 where the CPU has it; everything else is fp32
FP32_TOLERANCE = 1e-3


def tolerance(rt: str) -> float:
    """Largest relative max error against torch that still counts as the same output."""
    return TOLERANCE.get(rt, FP32_TOLERANCE)


def available(rt: str, args) -> str | None:
    """None if the runtime can run here, else why not."""
    if rt == "deepsparse":
        py = args.deepsparse_python
        if not py or not Path(py).exists():
            return "no DeepSparse environment (give --deepsparse-python or $DEEPSPARSE_PYTHON)"
        r = subprocess.run([py, "-c", "import deepsparse"], capture_output=True, text=True)
        return None if r.returncode == 0 else "deepsparse does not import in " + py
    mod = {"onnxruntime": "onnxruntime", "openvino": "openvino", "openvino-default": "openvino"}.get(rt)
    if mod:
        return None if importlib.util.find_spec(mod) else f"{mod} is not installed (pip install '.[peers]')"
    return None
