"""Accuracy of the sparse int8 path on a model trained on real data, beside the fp32 recipes.

    python benchmarks/int8_accuracy.py                       # LeNet-5 on Fashion-MNIST
    python benchmarks/int8_accuracy.py --quick               # a small, CI-sized run (minutes)
    python benchmarks/int8_accuracy.py --model vgg16-small   # the conv-heavy model (long on 2 cores)

Trains a dense fp32 baseline, then compresses the same baseline with each recipe, every one with
``--data`` (retraining after each pruning step, centroid training, and for int8 the activation
calibration on the training split): ``deep-compression`` (fp32 sparse), ``sparse-int8`` with 1x4
blocks and with 4x4 blocks. Each file is evaluated on deepcomp's runtime (the int8 nodes on the
int8 kernels). The int8 peers quantize the same weights their own way: ONNX Runtime's static QDQ
quantization (per-channel int8 weights, uint8 activations, MinMax, as in ``python -m benchmarks.peers``)
of the dense baseline and of the fp32 recipe's file, calibrated on the same training samples as
deepcomp's int8 files, run on ONNX Runtime (and on OpenVINO when it is installed). Prints top-1
against the dense baseline and the file sizes as a markdown table, and writes it to ``--out``
(default benchmarks/results/int8_accuracy[_MODEL].md).

``--baseline PATH`` reuses a baseline ``{"state", "top1"}`` .pt such as the methods study's
(benchmarks/results/baselines/ARCH-8ep.pt, the previous study's) instead of training one. ``--only fp32,int8-1x4``
runs a subset of the recipes (the peers' rows on the fp32 recipe's weights need ``fp32``), and
``--density conv2=0.2,fc1=0.12`` overrides those layers' densities in every recipe run.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks.peers


RECIPES = {"fp32": "fp32 deep-compression", "int8-1x4": "int8, 1x4 blocks", "int8-4x4": "int8, 4x4 blocks"}
DEFAULTS = {"iterative": 3, "finetune_epochs": 2, "codebook_epochs": 1}  # the schedule flags' defaults


def recipes(model: str, only: list[str], density: dict[str, float], calibration: str | None = None,
            weight_bits: int | None = None):
    """(label, Recipe) of each compression compared (the keys of RECIPES in ``only``), with the layer
    densities in ``density`` and the int8 activation ``calibration`` and ``weight_bits`` (the
    int8 weight grid) in place of the recipe's."""
    from deepcomp.recipes import load_recipe

    out = []
    for key in only:
        rec = load_recipe("deep-compression" if key == "fp32" else "sparse-int8", model)
        if key == "int8-4x4":
            rec.defaults = {**rec.defaults, "block": [4, 4]}
            rec.name = f"{rec.name} (block 4x4)"
        unknown = set(density) - set(rec.layers)
        if unknown:
            raise SystemExit(f"--density: no layer {', '.join(sorted(unknown))} in recipe {rec.name} "
                             f"(layers: {', '.join(rec.layers)})")
        for layer, d in density.items():
            rec.layers[layer] = {**rec.layers[layer], "density": d}
        label = RECIPES[key] + "".join(f", {k} {v:g}" for k, v in density.items())
        if calibration and key != "fp32":
            rec.defaults = {**rec.defaults, "calibration": calibration}
            label += f", {calibration} calibration"
        if weight_bits and key != "fp32":
            rec.defaults = {**rec.defaults, "int8_weight_bits": weight_bits}
            label += f", {weight_bits}-bit weights"
        out.append((label, rec))
    return out


def parse_density(text: str) -> dict[str, float]:
    """``conv2=0.2,fc1=0.12`` as {layer: density}."""
    out = {}
    for item in filter(None, text.split(",")):
        layer, _, value = item.partition("=")
        try:
            out[layer.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected LAYER=DENSITY, got {item!r}") from None
        if not 0 < out[layer.strip()] <= 1:
            raise argparse.ArgumentTypeError(f"density of {layer.strip()} must be in (0, 1], got {value}")
    return out


def parse_only(text: str) -> list[str]:
    """``fp32,int8-1x4`` as a list of RECIPES keys."""
    keys = [k.strip() for k in text.split(",") if k.strip()]
    bad = [k for k in keys if k not in RECIPES]
    if bad or not keys:
        raise argparse.ArgumentTypeError(f"expected some of {', '.join(RECIPES)}, got {text!r}")
    return keys


def peer_int8_rows(label: str, onnx_path: str, calib, test_ds, workdir: str) -> list[tuple[str, float]]:
    """(runtime label, top-1) of ONNX Runtime's static QDQ quantization of ``onnx_path``, calibrated on
    ``calib`` (a list of (x, y) batches), run by ONNX Runtime and by OpenVINO when it is installed."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    from benchmarks.peers.int8 import quantize_qdq
    from deepcomp.data import make_loader
    from deepcomp.train import evaluate

    name = onnx.load(onnx_path, load_external_data=False).graph.input[0].name
    x = np.concatenate([b[0].numpy() for b in calib]).astype(np.float32)
    qdq = os.path.join(workdir, os.path.basename(onnx_path).replace(".onnx", "-qdq.onnx"))
    quantize_qdq(Path(onnx_path), Path(qdq), x, len(calib[0][0]), input_name=name)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    sess = ort.InferenceSession(qdq, opts, providers=["CPUExecutionProvider"])
    runs = {"ONNX Runtime": lambda b: sess.run(None, {name: b})[0]}
    try:
        import openvino as ov

        compiled = ov.Core().compile_model(qdq, "CPU")
        runs["OpenVINO"] = lambda b: compiled(b)[0]
    except ImportError:
        pass
    loader = make_loader(test_ds, batch_size=500)
    return [(f"{label}, {runtime} int8 (static QDQ)", evaluate(run, loader)["top1"]) for runtime, run in runs.items()]


def dense_onnx(model, shape, path: str) -> str:
    """The torch model exported to ONNX with a dynamic batch (input "input")."""
    torch.onnx.export(model.eval(), (torch.zeros(1, *shape),), path, input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": {0: "N"}, "output": {0: "N"}}, opset_version=17, dynamo=False)
    return path


def command_flags(a) -> str:
    """The schedule, subset and density flags of this run, as typed on the command line."""
    flags = "" if a.quick else "".join(f" --{k.replace('_', '-')} {v}" for k, v in [
        ("iterative", a.iterative), ("finetune_epochs", a.finetune_epochs), ("codebook_epochs", a.codebook_epochs)]
        if v != DEFAULTS[k])
    if a.data != "fashion-mnist":
        flags += f' --data "{a.data}"'
    if a.only != list(RECIPES):
        flags += " --only " + ",".join(a.only)
    if a.density:
        flags += " --density " + ",".join(f"{k}={v:g}" for k, v in a.density.items())
    if a.calibration:
        flags += f" --calibration {a.calibration}"
    if a.int8_weight_bits:
        flags += f" --int8-weight-bits {a.int8_weight_bits}"
    return flags + (" --no-peers" if a.no_peers else "")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="lenet-5", choices=["lenet-5", "vgg16-small"])
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--epochs", type=int, default=8, help="baseline training epochs")
    ap.add_argument("--iterative", type=int, default=DEFAULTS["iterative"])
    ap.add_argument("--finetune-epochs", type=int, default=DEFAULTS["finetune_epochs"])
    ap.add_argument("--codebook-epochs", type=int, default=DEFAULTS["codebook_epochs"])
    ap.add_argument("--limit", type=int, default=None, help="training samples (default: all)")
    ap.add_argument("--quick", action="store_true", help="2 baseline epochs, 1 step of 1 epoch, 10k samples")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--baseline", help="a {'state', 'top1'} .pt of the model to reuse instead of training one")
    ap.add_argument("--no-peers", action="store_true", help="skip the ONNX Runtime / OpenVINO int8 rows")
    ap.add_argument("--only", type=parse_only, default=list(RECIPES),
                    help=f"comma-separated recipes to run, of {', '.join(RECIPES)} (default: all)")
    ap.add_argument("--calibration", choices=["minmax", "percentile", "mse"], default=None,
                    help="int8 activation calibration in place of the recipe's")
    ap.add_argument("--int8-weight-bits", type=int, choices=[7, 8], default=None,
                    help="int8 weight grid in place of the recipe's (7: -63..63, what AVX2's vpmaddubsw takes whole)")
    ap.add_argument("--density", type=parse_density, default={},
                    help="layer densities overriding the recipes', e.g. conv2=0.2,fc1=0.12")
    ap.add_argument("--out", help="default: benchmarks/results/int8_accuracy[_MODEL][_quick].md")
    a = ap.parse_args(argv)
    if a.out is None:
        tag = ("" if a.model == "lenet-5" else "_" + a.model) + ("_quick" if a.quick else "")
        a.out = os.path.join(os.path.dirname(__file__), "results", f"int8_accuracy{tag}.md")
    if a.quick:
        a.epochs, a.iterative, a.finetune_epochs, a.codebook_epochs, a.limit = 2, 1, 1, 0, a.limit or 10000

    from deepcomp.data import load_dataset, make_loader
    from deepcomp.export_onnx import export_onnx
    from deepcomp.pipeline import compress, evaluate_file
    from deepcomp.quantize_int8 import calibration_data
    from deepcomp.train import evaluate, train
    from deepcomp.dcz import decompress
    from deepcomp.zoo import LoadedModel, resolve_arch

    runs = recipes(a.model, a.only, a.density, a.calibration, a.int8_weight_bits)  # checked before any training
    t_start = time.time()
    train_ds = load_dataset(a.data, "train", limit=a.limit)
    test_ds = load_dataset(a.data, "test")
    torch.manual_seed(a.seed)
    model, shape = resolve_arch(a.model, train_ds.num_classes)
    if a.baseline:
        model.load_state_dict(torch.load(a.baseline, weights_only=True)["state"])
        how = f"from {a.baseline}"
    else:
        train(model, train_ds, test_data=test_ds, epochs=a.epochs, seed=a.seed, progress=False, stage="baseline")
        how = f"{a.epochs} epochs"
    base = evaluate(model, make_loader(test_ds, batch_size=1000))
    print(f"dense fp32 baseline: top-1 {100 * base['top1']:.2f}% ({how})", flush=True)
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for label, rec in runs:
            model.load_state_dict(trained)  # every recipe starts from the same baseline
            t0 = time.time()
            r = compress(LoadedModel(model, a.model, shape, f"benchmark:{a.model}"), recipe=rec,
                         data=(train_ds, test_ds), iterative=a.iterative, finetune_epochs=a.finetune_epochs,
                         codebook_epochs=a.codebook_epochs, seed=a.seed, progress=False)
            path = os.path.join(d, "m.dcz")
            size = r.save(path)
            acc = evaluate_file(r, path)["top1"]
            # the file's decoded weights in the torch model (fp32 activations): what the weights alone lose
            decoded = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in decompress(path).items()}
            fp32 = copy.deepcopy(model)
            fp32.load_state_dict(decoded)
            wacc = evaluate(fp32, make_loader(test_ds, batch_size=1000))["top1"]
            rows.append((label, acc, wacc, size, r.meta["original_bytes"], time.time() - t0))
            print(f"{label}: top-1 {100 * acc:.2f}% ({100 * (acc - base['top1']):+.2f} points), {size} bytes", flush=True)
            if label.startswith("fp32") and not a.no_peers:
                fp32_onnx = os.path.join(d, "fp32.onnx")
                export_onnx(path, fp32_onnx)
        peers = []
        if not a.no_peers:
            model.load_state_dict(trained)
            calib, _ = calibration_data(train_ds, shape, seed=a.seed)  # the samples deepcomp's int8 files calibrate on
            peers += peer_int8_rows("dense baseline", dense_onnx(model, shape, os.path.join(d, "dense.onnx")),
                                    calib, test_ds, d)
            if "fp32" in a.only:
                peers += peer_int8_rows("fp32 deep-compression weights", fp32_onnx, calib, test_ds, d)
            for label, acc in peers:
                print(f"{label}: top-1 {100 * acc:.2f}%", flush=True)
    lines = [f"{a.model} on {a.data}: dense fp32 baseline top-1 {100 * base['top1']:.2f}% ({how}); "
             f"each recipe with --data: {a.iterative} pruning step(s) of {a.finetune_epochs} epoch(s), "
             f"{a.codebook_epochs} of centroid training; seed {a.seed}"
             + (f"; {a.limit} training samples" if a.limit else ""), "",
             "| compression | top-1 (file, deepcomp runtime) | vs dense | same weights in fp32 (torch) | file | ratio |",
             "|---|---|---|---|---|---|"]
    for label, acc, wacc, size, orig, _ in rows:
        lines.append(f"| {label} | {100 * acc:.2f}% | {100 * (acc - base['top1']):+.2f} | {100 * wacc:.2f}% | "
                     f"{size / 1024:.1f} KB | {orig / size:.1f}x |")
    for label, acc in peers:
        lines.append(f"| {label} | {100 * acc:.2f}% (peer runtime) | {100 * (acc - base['top1']):+.2f} | | | |")
    lines += ["", f"`python benchmarks/int8_accuracy.py{' --quick' if a.quick else ''}"
                  f"{'' if a.model == 'lenet-5' else ' --model ' + a.model}"
                  f"{' --baseline ' + a.baseline if a.baseline else ''}{command_flags(a)}`, "
                  f"{time.time() - t_start:.0f} s"]
    text = "\n".join(lines)
    print("\n" + text)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
