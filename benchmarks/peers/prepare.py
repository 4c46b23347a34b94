"""The model files every runtime reads, made once per model in the work directory (reused when
present): the compressed .dcz, the decompressed dense state dict, one ONNX export per batch size,
fixed inputs and torch's outputs on them; for the int8 runtimes, the files of int8.py."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from benchmarks.peers import int8
from benchmarks.peers.profiling import layer_groups
from benchmarks.peers.runtimes import INT8_PEERS


def prepare(model_spec: str, name: str, batches: list[int], workdir: Path, seed: int = 0,
            runtimes=(), progress=lambda msg: None, repo: Path | None = None) -> dict:
    """Compress, decompress into the torch model, export ONNX per batch, fix inputs and references;
    the int8 models when runtimes name int8 runtimes. spec["skipped"]: {runtime: why it cannot run
    on this model}."""
    import numpy as np
    import torch

    from deepcomp.dcz import decompress
    from deepcomp.pipeline import compress
    from deepcomp.zoo import load_model

    d = workdir / name
    d.mkdir(parents=True, exist_ok=True)
    dcz = d / "model.dcz"
    torch.manual_seed(seed)
    loaded = load_model(model_spec)
    if not dcz.exists():
        compress(loaded, progress=False, seed=seed).save(str(dcz))
    model = load_model(model_spec).model.eval()
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in decompress(str(dcz)).items()})
    dense = d / "dense.pt"
    if not dense.exists():
        torch.save(model.state_dict(), d / ".dense.pt.tmp")
        (d / ".dense.pt.tmp").rename(dense)
    rng = np.random.default_rng(seed)
    spec = {"name": name, "model": model_spec, "dcz": str(dcz), "dense": str(dense), "workdir": str(d),
            "batches": batches, "onnx": {}, "inputs": {}, "refs": {}, "groups": layer_groups(model),
            "skipped": {}, "notes": []}
    for b in batches:
        x = rng.standard_normal((b, *loaded.input_shape), dtype=np.float32)
        np.save(d / f"x{b}.npy", x)
        with torch.inference_mode():
            np.save(d / f"ref{b}.npy", model(torch.from_numpy(x)).numpy())
        onnx_path = d / f"model-b{b}.onnx"
        if not onnx_path.exists():
            tmp = d / f".model-b{b}.onnx.tmp"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter: stable node names
                torch.onnx.export(model, (torch.from_numpy(x),), str(tmp), input_names=["input"], output_names=["output"],
                                  opset_version=17, dynamo=False)
            tmp.rename(onnx_path)
        spec["onnx"][str(b)], spec["inputs"][str(b)], spec["refs"][str(b)] = (
            str(onnx_path), str(d / f"x{b}.npy"), str(d / f"ref{b}.npy"))
    if any(rt in INT8_PEERS for rt in runtimes):
        try:
            int8.prepare_qdq(spec, loaded.input_shape, progress)
        except Exception as e:  # the quantizer refusing a model is a result to report, not a crash
            spec["skipped"].update({rt: f"ONNX Runtime's static quantization failed: {e}" for rt in INT8_PEERS})
    if "deepcomp-int8" in runtimes:
        why = int8.prepare_deepcomp_int8(spec, model_spec, progress, repo or Path.cwd())
        if why:
            spec["skipped"]["deepcomp-int8"] = why
    (d / "spec.json").write_text(json.dumps(spec))
    return spec
