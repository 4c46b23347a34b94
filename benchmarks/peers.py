"""deepcomp against the CPU runtimes a deploying user would pick instead, on the same pruned weights.

    python benchmarks/peers.py [--arch alexnet,vgg16] [--batch 1,8] [--rounds 4] [--threads 2]
                               [--deepsparse-python /work/venv-deepsparse/bin/python]
                               [--out benchmarks/results/peers.md] [--json FILE] [--workdir DIR]

The models are AlexNet and VGG-16 compressed by `deepcomp compress` with the paper's recipe
(deep-compression) on random weights (speed depends on the sparsity pattern's density, not on the
values), then decompressed, loaded into torchvision and exported to ONNX with a static batch. The
runtimes: dense PyTorch eager, ONNX Runtime (CPU provider, all graph optimisations), OpenVINO with
an f32 precision hint and (as information) at its default precision, DeepSparse 1.8 (sparse-aware;
it needs its own environment: Python 3.11, deepsparse==1.8.0, given by --deepsparse-python or
$DEEPSPARSE_PYTHON, skipped with a note when missing) and deepcomp.

How it measures:
- every runtime runs in its own process (this file with --worker), one process per runtime and
  round; rounds alternate the runtimes, so a burst of load elsewhere hits them alike;
- in each run: load to ready (import, load, first batch-1 inference) and the peak RSS at that point,
  then for each batch a warmup and timed calls for about --seconds; the run's figure is the median;
- every run's output on a fixed input is checked against torch's (relative max error);
- the CPU time other processes used during the timed calls is measured (/proc/stat minus the
  worker's own CPU time); a run with more than --max-foreign cores of foreign load is redone up to
  --retries times, and the table marks figures that stayed disturbed;
- afterwards, one profiling run per runtime gives per-layer times where the runtime reports them
  (ONNX Runtime's profiler, OpenVINO f32's performance counters, PyTorch and deepcomp timed module
  by module / step by step). A conv row includes its ReLU; pools, flatten and dropout are "other".
- dense PyTorch loads the decompressed weights as a saved state dict (dense.pt), the others their
  own format (ONNX, .dcz); load to ready includes importing the runtime.

The peers are optional extras: pip install ".[peers]" (onnx, onnxruntime, openvino).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

from deepcomp.cpuload import ForeignLoad

RUNTIMES = ["torch", "onnxruntime", "openvino", "openvino-default", "deepsparse", "deepcomp"]
LABELS = {"torch": "dense PyTorch", "onnxruntime": "ONNX Runtime", "openvino": "OpenVINO f32",
          "openvino-default": "OpenVINO default precision (information)", "deepsparse": "DeepSparse 1.8",
          "deepcomp": "deepcomp"}
FP32_PEERS = ["onnxruntime", "openvino", "deepsparse"]  # "the fastest fp32 peer" is the fastest of these
TOLERANCE = {"openvino-default": 5e-2}  # bf16 where the CPU has it; everything else is fp32
FP32_TOLERANCE = 1e-3
HERE = Path(__file__).resolve().parent
REPO = HERE.parent


# ---- measurement helpers (no torch at import: the worker also runs in DeepSparse's own environment) --

def _peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def _time_calls(fn, seconds: float, min_calls: int) -> list[float]:
    fn()  # warmup
    times = []
    t_end = time.perf_counter() + seconds
    while len(times) < min_calls or time.perf_counter() < t_end:
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return times


def _group_of(name: str, groups: dict[str, str]) -> str:
    """The row a runtime's node, module or step name is reported in. ONNX node names carry the module
    path ("/features/features.0/Conv"); torch modules and deepcomp steps are named by it."""
    for cand in [name, *reversed(name.split("/"))]:
        if cand in groups:
            return groups[cand]
    return "other"


# ---- the worker: one runtime, one process ---------------------------------------------------------

def _load_runtime(rt: str, spec: dict, batch: int, threads: int, profile: bool):
    """Returns a callable x -> y (numpy) for the model at this batch size."""
    if rt in ("torch", "deepcomp"):
        raise AssertionError("batch-independent runtimes are loaded once")
    onnx_path = spec["onnx"][str(batch)]
    if rt == "onnxruntime":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if profile:
            so.enable_profiling = True
            so.profile_file_prefix = os.path.join(spec["workdir"], f"ort-{spec['name']}-{batch}")
        sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        fn = lambda x: sess.run(None, {name: x})[0]
        fn.session = sess
        return fn
    if rt in ("openvino", "openvino-default"):
        import openvino as ov

        core = ov.Core()
        cfg = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
        if rt == "openvino":
            cfg["INFERENCE_PRECISION_HINT"] = "f32"
        if profile:
            cfg["PERF_COUNT"] = True
        compiled = core.compile_model(core.read_model(onnx_path), "CPU", cfg)
        req = compiled.create_infer_request()
        fn = lambda x: req.infer({0: x})[0].copy()
        fn.request = req
        return fn
    if rt == "deepsparse":
        from deepsparse import Engine

        eng = Engine(onnx_path, batch_size=batch, num_cores=threads)
        return lambda x: eng.run([x])[0]
    raise ValueError(rt)


def _torch_model(spec: dict, threads: int):
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


def _torch_layers(model, x, seconds: float) -> dict[str, float]:
    """Module-by-module times of a torchvision-style model (children of features/classifier)."""
    import torch

    times: dict[str, float] = {}
    with torch.inference_mode():
        h = torch.from_numpy(x)
        for top, mod in model.named_children():
            parts = list(mod.named_children()) or [("", mod)]
            for sub, m in parts:
                name = f"{top}.{sub}" if sub else top
                hin = h
                times[name] = statistics.median(_time_calls(lambda: m(hin), seconds, 3))
                h = m(hin)
                if top == "avgpool":
                    hin = h
                    times["flatten"] = statistics.median(_time_calls(lambda: torch.flatten(hin, 1), seconds, 3))
                    h = torch.flatten(h, 1)
    return times


def _deepcomp_layers(model, x, seconds: float) -> dict[str, float]:
    env = {model.input_name: x}
    times = {}
    for step in model.steps:
        args = [env[s] for s in step.inputs]
        times[step.name] = statistics.median(_time_calls(lambda: step.run(*args), seconds, 3))
        env[step.name] = step.run(*args)
    return times


def _profiled_layers(rt: str, fn, x, calls: int) -> dict[str, float]:
    """Per-node ms from ONNX Runtime's profiler or OpenVINO's performance counters."""
    for _ in range(2):
        fn(x)
    if rt == "onnxruntime":
        for _ in range(calls):
            fn(x)
        with open(fn.session.end_profiling()) as f:
            events = json.load(f)
        acc: dict[str, list[float]] = {}
        for e in events:
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                acc.setdefault(e["name"][: -len("_kernel_time")], []).append(e["dur"] / 1e3)
        return {k: sum(v) / (calls + 2) for k, v in acc.items()}
    acc = {}
    for _ in range(calls):
        fn(x)
        for p in fn.request.get_profiling_info():
            if p.status.name == "EXECUTED":
                acc.setdefault(p.node_name, []).append(p.real_time.total_seconds() * 1e3)
    return {k: statistics.median(v) * len(v) / calls for k, v in acc.items()}


def worker(args) -> int:
    t0 = time.perf_counter()
    spec = json.loads(Path(args.spec).read_text())
    rt, threads, batches = args.worker, args.threads, spec["batches"]
    import numpy as np

    inputs = {b: np.load(spec["inputs"][str(b)]) for b in batches}
    fns = {}
    if rt == "torch":
        one = _torch_model(spec, threads)
    elif rt == "deepcomp":
        import deepcomp.runtime as drt

        drt.set_num_threads(threads)
        one = drt.load(spec["dcz"])
    first = batches[0]
    if rt in ("torch", "deepcomp"):
        fns = {b: one for b in batches}
    else:
        fns[first] = _load_runtime(rt, spec, first, threads, args.profile)
    fns[first](inputs[first])
    out = {"runtime": rt, "load_s": time.perf_counter() - t0, "peak_rss_mb": _peak_rss_mb(),
           "torch_imported": "torch" in sys.modules, "batches": {}}
    for b in batches:
        if b not in fns:
            fns[b] = _load_runtime(rt, spec, b, threads, args.profile)
        y = fns[b](inputs[b])
        ref = np.load(spec["refs"][str(b)])
        err = float(np.abs(y - ref).max() / max(float(np.abs(ref).max()), 1e-30))
        entry = {"rel_err": err}
        if args.profile:
            if rt == "torch":
                entry["layers"] = _torch_layers(one.model, inputs[b], args.seconds / 10)
            elif rt == "deepcomp":
                entry["layers"] = _deepcomp_layers(one, inputs[b], args.seconds / 10)
            elif rt in ("onnxruntime", "openvino", "openvino-default"):
                entry["layers"] = _profiled_layers(rt, fns[b], inputs[b], 5)
        else:
            with ForeignLoad() as load:
                times = _time_calls(lambda: fns[b](inputs[b]), args.seconds, args.min_calls)
            entry.update(ms=statistics.median(times), calls=len(times), foreign_cores=load.cores or 0.0)
        out["batches"][str(b)] = entry
        if rt not in ("torch", "deepcomp"):
            del fns[b]  # one compiled model alive at a time
    print("RESULT " + json.dumps(out), flush=True)
    return 0


# ---- the driver -----------------------------------------------------------------------------------

def prepare(model_spec: str, name: str, batches: list[int], workdir: Path, seed: int = 0) -> dict:
    """Compress, decompress into the torch model, export ONNX per batch, fix inputs and references."""
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
            "batches": batches,
            "onnx": {}, "inputs": {}, "refs": {}, "groups": layer_groups(model)}
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
    (d / "spec.json").write_text(json.dumps(spec))
    return spec


def layer_groups(model) -> dict[str, str]:
    """Module name -> the row it is reported in: a conv or linear layer, with the ReLU after it;
    pools, flatten and dropout are "other"."""
    import torch.nn as nn

    groups, last = {}, None
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            groups[name] = last = name
        elif isinstance(m, nn.ReLU) and last:
            groups[name] = last
        elif not list(m.children()):
            groups[name] = "other"
    return groups


def layer_groups_from(results: dict, i: int) -> dict[str, str]:
    """The layer groups of model i of a --json result."""
    return results["specs"][i]["groups"]


def run_worker(rt: str, spec: dict, args, profile: bool = False) -> dict:
    python = args.deepsparse_python if rt == "deepsparse" else sys.executable
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               DEEPCOMP_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads))
    cmd = [python, str(Path(__file__).resolve()), "--worker", rt, "--spec", str(Path(spec["workdir"]) / "spec.json"),
           "--threads", str(args.threads), "--seconds", str(args.seconds), "--min-calls", str(args.min_calls)]
    if profile:
        cmd.append("--profile")
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    line = next((l for l in p.stdout.splitlines() if l.startswith("RESULT ")), None)
    if p.returncode or line is None:
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        return {"runtime": rt, "error": f"exit {p.returncode}: " + " | ".join(tail)}
    return json.loads(line[len("RESULT "):])


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
        import importlib.util

        return None if importlib.util.find_spec(mod) else f"{mod} is not installed (pip install '.[peers]')"
    return None


def disturbed(res: dict, limit: float) -> bool:
    return any(b.get("foreign_cores", 0) > limit for b in res.get("batches", {}).values())


def measure(spec: dict, runtimes: list[str], args, progress) -> dict:
    runs = {rt: [] for rt in runtimes}
    errors = {}
    for r in range(args.rounds):
        order = runtimes if r % 2 == 0 else runtimes[::-1]
        for rt in order:
            if rt in errors:
                continue
            best = None
            for attempt in range(args.retries + 1):
                if attempt and time.monotonic() - args.started > 0.8 * 60 * args.max_minutes:
                    break  # out of time for redoing: keep the least disturbed run
                res = run_worker(rt, spec, args)
                if "error" in res:
                    errors[rt] = res["error"]
                    break
                res["attempts"] = attempt + 1
                load = max(b["foreign_cores"] for b in res["batches"].values())
                if best is None or load < max(b["foreign_cores"] for b in best["batches"].values()):
                    best = res
                if not disturbed(res, args.max_foreign):
                    break
            progress(f"{spec['name']} round {r + 1}/{args.rounds} {rt}: " +
                     (errors.get(rt) or ", ".join(f"b{b} {e['ms']:.1f} ms (foreign {e['foreign_cores']:.2f})"
                                                  for b, e in best["batches"].items())))
            if best is not None:
                runs[rt].append(best)
    profiles = {}
    if args.layers:
        for rt in runtimes:
            # DeepSparse reports no per-layer times; OpenVINO's bf16 counters name other nodes
            if rt not in errors and rt not in ("deepsparse", "openvino-default"):
                res = run_worker(rt, spec, args, profile=True)
                if "error" not in res:
                    profiles[rt] = res
    return {"runs": runs, "errors": errors, "profiles": profiles}


def summarize(spec: dict, m: dict, args) -> dict:
    out = {}
    for rt, runs in m["runs"].items():
        if not runs:
            continue
        s = {"load_s": statistics.median(r["load_s"] for r in runs),
             "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs), "batches": {}}
        for b in spec["batches"]:
            es = [r["batches"][str(b)] for r in runs]
            ms = [e["ms"] for e in es]
            err = max(e["rel_err"] for e in es)
            s["batches"][b] = {"median": statistics.median(ms), "min": min(ms), "max": max(ms), "rel_err": err,
                               "ok": err <= TOLERANCE.get(rt, FP32_TOLERANCE),
                               "disturbed": sum(e["foreign_cores"] > args.max_foreign for e in es),
                               "foreign_max": max(e["foreign_cores"] for e in es), "rounds": len(es)}
        out[rt] = s
    return out


def markdown(specs: list[dict], summaries: list[dict], measures: list[dict], args, notes: list[str]) -> str:
    runtimes = [rt for rt in RUNTIMES if any(rt in s for s in summaries)]
    L = [f"{args.threads} threads, median ms over {args.rounds} rounds (range in brackets); every runtime in its "
         "own process, rounds alternating runtimes; ratio = runtime ms / deepcomp ms (above 1: deepcomp faster).", ""]
    L += ["| batch | model | " + " | ".join(LABELS[rt] for rt in runtimes) + " | deepcomp vs fastest fp32 peer |",
          "|---|---|" + "---|" * (len(runtimes) + 1)]
    flags = []
    for b in args.batches:
        for spec, s in zip(specs, summaries):
            cells = []
            for rt in runtimes:
                e = s.get(rt, {}).get("batches", {}).get(b)
                if not e:
                    cells.append("-")
                    continue
                mark = ("" if e["ok"] else " (wrong output)") + (" *" if e["disturbed"] else "")
                ratio = "" if rt == "deepcomp" or "deepcomp" not in s else \
                    f", {e['median'] / s['deepcomp']['batches'][b]['median']:.2f}x"
                cells.append(f"{e['median']:.1f} [{e['min']:.1f}-{e['max']:.1f}]{ratio}{mark}")
                if e["disturbed"]:
                    flags.append(f"{LABELS[rt]} {spec['name']} batch {b}: {e['disturbed']} of {e['rounds']} rounds "
                                 f"stayed above {args.max_foreign} cores of foreign load (max {e['foreign_max']:.2f})")
                if not e["ok"]:
                    flags.append(f"{LABELS[rt]} {spec['name']} batch {b}: output differs from torch by "
                                 f"{e['rel_err']:.2e} (relative max)")
            peers = [s[rt]["batches"][b]["median"] for rt in FP32_PEERS if rt in s and b in s[rt]["batches"]]
            fastest = f"**{min(peers) / s['deepcomp']['batches'][b]['median']:.2f}x**" if peers and "deepcomp" in s else "-"
            L.append(f"| {b} | {spec['name']} | " + " | ".join(cells) + f" | {fastest} |")
    L.append("")
    L += ["Load to ready (fresh process: import, load, first batch-1 inference) and peak RSS at that point:", "",
          "| model | " + " | ".join(LABELS[rt] for rt in runtimes) + " |", "|---|" + "---|" * len(runtimes)]
    for spec, s in zip(specs, summaries):
        L.append(f"| {spec['name']} | " + " | ".join(
            f"{s[rt]['load_s']:.2f} s, {s[rt]['peak_rss_mb']:.0f} MB" if rt in s else "-" for rt in runtimes) + " |")
    L.append("")
    for spec, m in zip(specs, measures):
        if m["profiles"]:
            L += layer_table(spec, m["profiles"], args)
    errs = [f"{LABELS[rt]} {spec['name']}: {e}" for spec, m in zip(specs, measures) for rt, e in m["errors"].items()]
    for text in notes + errs + flags:
        L.append(f"- {text}")
    if flags:
        L.append("- `*`: a figure with disturbed rounds; rerun on a quiet machine before quoting it.")
    return "\n".join(L) + "\n"


def layer_table(spec: dict, profiles: dict, args) -> list[str]:
    groups = spec["groups"]
    rts = [rt for rt in RUNTIMES if rt in profiles]
    L = []
    for b in args.batches:
        per = {}
        for rt in rts:
            acc: dict[str, float] = {}
            for node, ms in profiles[rt]["batches"][str(b)].get("layers", {}).items():
                g = _group_of(node, groups)
                acc[g] = acc.get(g, 0.0) + ms
            per[rt] = acc
        rows = [g for g in dict.fromkeys(groups.values()) if g != "other"] + ["other"]
        L += [f"Per layer, {spec['name']} batch {b} (ms, one profiling run each; conv rows include their ReLU):", "",
              "| layer | " + " | ".join(LABELS[rt] for rt in rts) + " | deepcomp vs fastest fp32 peer |",
              "|---|" + "---|" * (len(rts) + 1)]
        for g in rows:
            cells = [f"{per[rt][g]:.3f}" if g in per[rt] else "-" for rt in rts]
            peers = [per[rt][g] for rt in FP32_PEERS if rt in per and g in per[rt]]
            ours = per.get("deepcomp", {}).get(g)
            ratio = f"{min(peers) / ours:.2f}x" if peers and ours else "-"
            L.append(f"| {g} | " + " | ".join(cells) + f" | {ratio} |")
        L.append("")
    return L


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="alexnet,vgg16",
                    help="comma-separated torchvision names, or model specs such as zoo:lenet-5 (default alexnet,vgg16)")
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--runtimes", default=",".join(RUNTIMES))
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seconds", type=float, default=1.5, help="timed calls per batch and run (default 1.5 s)")
    ap.add_argument("--min-calls", type=int, default=4)
    ap.add_argument("--max-foreign", type=float, default=0.25,
                    help="foreign load (cores) above which a run is redone (default 0.25)")
    ap.add_argument("--retries", type=int, default=2)
    ap.add_argument("--max-minutes", type=float, default=15,
                    help="no more redoing of disturbed runs once the run has taken 80%% of this (default 15)")
    ap.add_argument("--no-layers", dest="layers", action="store_false", help="skip the per-layer profiling runs")
    ap.add_argument("--deepsparse-python", default=os.environ.get("DEEPSPARSE_PYTHON", "/work/venv-deepsparse/bin/python"))
    ap.add_argument("--workdir", help="keep the models here (reused when present); default: a temporary directory")
    ap.add_argument("--timeout", type=float, default=600, help="seconds one worker may take")
    ap.add_argument("--out", help="also write the markdown here")
    ap.add_argument("--json", help="also write the raw results here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)
    args.batches = [int(b) for b in args.batch.split(",")]
    args.started = time.monotonic()
    notes, runtimes = [], []
    for rt in args.runtimes.split(","):
        why = available(rt, args)
        if why:
            notes.append(f"{LABELS[rt]} skipped: {why}")
        else:
            runtimes.append(rt)
    progress = lambda msg: print(msg, file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp)
        specs, measures, summaries = [], [], []
        for arch in args.arch.split(","):
            model_spec = arch if ":" in arch else f"torchvision:{arch}"
            name = arch.split(":")[-1]
            progress(f"preparing {name} (compress, decompress, ONNX export)")
            spec = prepare(model_spec, name, args.batches, workdir)
            m = measure(spec, runtimes, args, progress)
            specs.append(spec)
            measures.append(m)
            summaries.append(summarize(spec, m, args))
        text = markdown(specs, summaries, measures, args, notes)
    print(text)
    if args.out:
        tmp_out = Path(args.out).with_suffix(".tmp")
        tmp_out.write_text(text)
        tmp_out.replace(args.out)
    if args.json:
        Path(args.json).write_text(json.dumps({"specs": specs, "summaries": [{str(k): v for k, v in s.items()} for s in summaries],
                                               "measures": measures}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
