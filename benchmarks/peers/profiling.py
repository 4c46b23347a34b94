"""Per-layer times, and the row of the per-layer table each node, module or step is reported in."""

from __future__ import annotations

import json
import statistics

from benchmarks.peers.timing import time_calls


# Runtimes whose per-layer times this package takes itself (timed modules or steps, no profiler): their
# layers add up to the whole call, so a profile whose sum is well over the timed rounds' median was
# disturbed (the driver redoes it).
SUMS_TO_WHOLE = ("torch", "deepcomp", "deepcomp-int8")
PROFILE_EXCESS = 1.15


def group_of(name: str, groups: dict[str, str]) -> str:
    """The row a runtime's node, module or step name is reported in. ONNX node names carry the module
    path ("/features/features.0/Conv"); torch modules and deepcomp steps are named by it."""
    for cand in [name, *reversed(name.split("/"))]:
        if cand in groups:
            return groups[cand]
    return "other"


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


def torch_layers(model, x, seconds: float) -> dict[str, float]:
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
                times[name] = statistics.median(time_calls(lambda: m(hin), seconds, 3))
                h = m(hin)
                if top == "avgpool":
                    hin = h
                    times["flatten"] = statistics.median(time_calls(lambda: torch.flatten(hin, 1), seconds, 3))
                    h = torch.flatten(h, 1)
    return times


def deepcomp_layers(model, x, seconds: float) -> dict[str, float]:
    """Step-by-step times of a loaded .dcz."""
    env = {model.input_name: x}
    times = {}
    for step in model.steps:
        args = [env[s] for s in step.inputs]
        times[step.name] = statistics.median(time_calls(lambda: step.run(*args), seconds, 3))
        env[step.name] = step.run(*args)
    return times


def profiled_layers(fn, x, calls: int) -> dict[str, float]:
    """Per-node ms from ONNX Runtime's profiler or OpenVINO's performance counters."""
    for _ in range(2):
        fn(x)
    if hasattr(fn, "session"):  # ONNX Runtime
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
