"""The int8 models: the peers' (the fp32 ONNX exports quantized by ONNX Runtime's static QDQ
quantization) and deepcomp's own (a .dcz of the sparse-int8 recipe), made once in the work directory.

Both sides calibrate on the same data: the random inputs deepcomp's int8 path uses without --data
(:func:`deepcomp.quantize_int8.random_batches` at its defaults), so neither gets better ranges than
the other. The peers' quantization: QDQ format, int8 weights per output channel, uint8 activations,
MinMax calibration (ONNX Runtime's default). Random weights and inputs: the speed is real, the
accuracy means nothing; the output is compared with torch's fp32 output only as a sanity check.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

# The one place that says how deepcomp makes its int8 file; {model} is a model spec such as
# torchvision:alexnet, {out} the .dcz to write. Run as `python -m deepcomp <these>`.
DEEPCOMP_INT8_COMPRESS = ["compress", "{model}", "--recipe", "sparse-int8", "-o", "{out}", "--quiet", "--seed", "0"]


def calibration_inputs(input_shape) -> "np.ndarray":
    """deepcomp's calibration inputs without --data, as one (N, *input_shape) float32 array."""
    import numpy as np

    from deepcomp.quantize_int8 import random_batches

    return np.concatenate([b.numpy() for b in random_batches(tuple(input_shape))]).astype(np.float32)


def _chunks(x, batch: int) -> list:
    """x cut into batches of the static batch size (every sample used; the last batch filled up by
    repeating from the start, which does not change a min-max range)."""
    import numpy as np

    n = -(-len(x) // batch) * batch
    x = np.resize(x, (n, *x.shape[1:])) if n != len(x) else x
    return [np.ascontiguousarray(x[i:i + batch]) for i in range(0, n, batch)]


def quantize_qdq(src: Path, dst: Path, calib, batch: int, input_name: str = "input") -> None:
    """ONNX Runtime static quantization of the ONNX file src (the input ``input_name``, fed batches of
    ``batch`` calibration samples) into dst."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(_chunks(calib, batch))

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {input_name: x}

    tmp = dst.with_name("." + dst.name + ".tmp")
    # ONNX Runtime logs a hint to pre-process first (shape inference, graph optimisations): these
    # exports have static shapes and nothing to fold (AlexNet's pre-processed graph has the same
    # nodes), so the hint is silenced rather than followed
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_static(str(src), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)  # min / max reduced inside the graph: little memory
    finally:
        root.setLevel(level)
    tmp.rename(dst)


def prepare_qdq(spec: dict, input_shape, progress) -> None:
    """spec["qdq"][batch]: the QDQ model of each batch's ONNX export (cached in the work directory)."""
    d = Path(spec["workdir"])
    calib = None
    spec["qdq"] = {}
    for b in spec["batches"]:
        dst = d / f"model-b{b}-qdq.onnx"
        if not dst.exists():
            if calib is None:
                calib = calibration_inputs(input_shape)
            progress(f"quantizing {spec['name']} batch {b} (ONNX Runtime static QDQ, {len(calib)} calibration inputs)")
            quantize_qdq(Path(spec["onnx"][str(b)]), dst, calib, b)
        spec["qdq"][str(b)] = str(dst)


def compress_command(model_spec: str, out: Path) -> list[str]:
    return [sys.executable, "-m", "deepcomp",
            *(a.format(model=model_spec, out=out) for a in DEEPCOMP_INT8_COMPRESS)]


def prepare_deepcomp_int8(spec: dict, model_spec: str, progress, repo: Path) -> str | None:
    """spec["int8_dcz"] and spec["int8_refs"][batch] (torch's fp32 output on the file's decoded
    weights; absent when they cannot be decoded). Returns why deepcomp-int8 cannot run, or None."""
    d = Path(spec["workdir"])
    dcz = d / "model-int8.dcz"
    if not dcz.exists():
        cmd = compress_command(model_spec, dcz)
        progress(f"compressing {spec['name']} for deepcomp-int8: " + " ".join(cmd[1:]))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]))
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=repo)
        if p.returncode or not dcz.exists():
            said = ((p.stderr or p.stdout).strip().splitlines() or ["no output"])[-1]
            unknown = re.search(r"unknown recipe '[^']*'", said)
            if unknown:
                return f"the deepcomp-int8 recipe is not in this deepcomp (compress: {unknown.group(0)})"
            return f"`{' '.join(cmd[1:])}` failed: {said.strip()}"
    spec["int8_dcz"] = str(dcz)
    spec["int8_refs"] = _references(spec, model_spec, dcz)
    return None


def _references(spec: dict, model_spec: str, dcz: Path) -> dict:
    """torch's output on the fixed inputs with the .dcz's weights decoded, per batch ({} if the file
    cannot be decoded into the torchvision model)."""
    import numpy as np
    import torch

    from deepcomp.dcz import decompress
    from deepcomp.zoo import load_model

    d = Path(spec["workdir"])
    try:
        model = load_model(model_spec).model.eval()
        model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in decompress(str(dcz)).items()})
    except Exception as e:  # a newer file than this decompress knows: time it, note the missing check
        spec.setdefault("notes", []).append(f"deepcomp-int8 {spec['name']}: no torch reference ({e})")
        return {}
    refs = {}
    for b in spec["batches"]:
        with torch.inference_mode():
            y = model(torch.from_numpy(np.load(spec["inputs"][str(b)]))).numpy()
        np.save(d / f"ref-int8-{b}.npy", y)
        refs[str(b)] = str(d / f"ref-int8-{b}.npy")
    return refs
