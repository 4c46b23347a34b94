"""One runtime in one process: load it, check its output against torch's, time it (or profile it),
print one RESULT line of JSON for the driver. No torch at import: this also runs in DeepSparse's
own environment."""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

from benchmarks.peers import profiling
from benchmarks.peers.runtimes import base
from benchmarks.peers.timing import peak_rss_mb, time_calls
from deepcomp.cpuload import ForeignLoad


BATCH_FREE = ("torch", "deepcomp", "deepcomp-int8")  # one loaded model runs every batch size


def load_runtime(rt: str, spec: dict, batch: int, threads: int, profile: bool):
    """Returns a callable x -> y (numpy) for the model at this batch size: the fp32 ONNX export, or
    its QDQ quantization for the -int8 runtimes."""
    if rt in BATCH_FREE:
        raise AssertionError("batch-independent runtimes are loaded once")
    onnx_path = spec["qdq" if rt.endswith("-int8") else "onnx"][str(batch)]
    if base(rt) == "onnxruntime":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if profile:
            so.enable_profiling = True
            so.profile_file_prefix = os.path.join(spec["workdir"], f"{rt}-{spec['name']}-{batch}")
        sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        fn = lambda x: sess.run(None, {name: x})[0]
        fn.session = sess
        return fn
    if base(rt) in ("openvino", "openvino-default"):
        import openvino as ov

        core = ov.Core()
        cfg = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
        if rt == "openvino":  # openvino-int8 runs the QDQ model at the default precision, its fastest
            cfg["INFERENCE_PRECISION_HINT"] = "f32"
        if profile:
            cfg["PERF_COUNT"] = True
        compiled = core.compile_model(core.read_model(onnx_path), "CPU", cfg)
        req = compiled.create_infer_request()
        fn = lambda x: req.infer({0: x})[0].copy()
        fn.request = req
        return fn
    if base(rt) == "deepsparse":
        from deepsparse import Engine

        eng = Engine(onnx_path, batch_size=batch, num_cores=threads)
        return lambda x: eng.run([x])[0]
    raise ValueError(rt)


def torch_model(spec: dict, threads: int):
    """The dense model as a PyTorch user deploys it: the architecture, then its saved state dict."""
    import torch

    from deepcomp.bench import steady_heap
    from deepcomp.zoo import load_model

    steady_heap()
    torch.set_num_threads(threads)
    model = load_model(spec["model"]).model.eval()
    model.load_state_dict(torch.load(spec["dense"], weights_only=True))

    def fn(x):
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()
    fn.model = model
    return fn


def relative_error(y, ref) -> float:
    """max |y - ref| relative to max |ref|."""
    import numpy as np

    return float(np.abs(y - ref).max() / max(float(np.abs(ref).max()), 1e-30))


def worker(args) -> int:
    t0 = time.perf_counter()
    spec = json.loads(Path(args.spec).read_text())
    rt, threads, batches = args.worker, args.threads, spec["batches"]
    import numpy as np

    inputs = {b: np.load(spec["inputs"][str(b)]) for b in batches}
    fns = {}
    if rt == "torch":
        one = torch_model(spec, threads)
    elif rt in ("deepcomp", "deepcomp-int8"):
        import deepcomp.runtime as drt

        drt.set_num_threads(threads)
        one = drt.load(spec["int8_dcz" if rt == "deepcomp-int8" else "dcz"])
    first = batches[0]
    if rt in BATCH_FREE:
        fns = {b: one for b in batches}
    else:
        fns[first] = load_runtime(rt, spec, first, threads, args.profile)
    fns[first](inputs[first])
    out = {"runtime": rt, "load_s": time.perf_counter() - t0, "peak_rss_mb": peak_rss_mb(),
           "torch_imported": "torch" in sys.modules, "batches": {}}
    for b in batches:
        if b not in fns:
            fns[b] = load_runtime(rt, spec, b, threads, args.profile)
        y = fns[b](inputs[b])
        # deepcomp-int8 has weights of its own (block-pruned): its reference is torch on those
        refs = spec.get("int8_refs", {}) if rt == "deepcomp-int8" else spec["refs"]
        entry = {"rel_err": relative_error(y, np.load(refs[str(b)])) if str(b) in refs else None}
        if args.profile:
            if rt == "torch":
                entry["layers"] = profiling.torch_layers(one.model, inputs[b], args.seconds / 10)
            elif rt in ("deepcomp", "deepcomp-int8"):
                entry["layers"] = profiling.deepcomp_layers(one, inputs[b], args.seconds / 10)
            elif base(rt) in ("onnxruntime", "openvino", "openvino-default"):
                entry["layers"] = profiling.profiled_layers(fns[b], inputs[b], 5)
        else:
            with ForeignLoad() as load:
                times = time_calls(lambda: fns[b](inputs[b]), args.seconds, args.min_calls)
            entry.update(ms=statistics.median(times), calls=len(times), foreign_cores=load.cores or 0.0)
        out["batches"][str(b)] = entry
        if rt not in BATCH_FREE:
            del fns[b]  # one compiled model alive at a time
    print("RESULT " + json.dumps(out), flush=True)
    return 0
