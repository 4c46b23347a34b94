"""The `deepcomp` command. Thin: it parses arguments and calls the API.

Every user mistake ends in one line on stderr and exit status 2, never a traceback: a bad argument
value fails while parsing (the type functions below check every numeric flag's range and that every
output can be written, before any work), and a DeepcompError raised later (bad file, unsupported op,
bad recipe, missing data, a full disk) is printed by :func:`main`. Outputs are written with
deepcomp.fileio.atomic_write, so nothing partial is left. Each subcommand lives in a function pair:
``_add_NAME(subparsers)`` builds its parser, ``cmd_NAME(args)`` runs it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Callable

from deepcomp.errors import DczError, DeepcompError

EPILOG = """\
models (MODEL): torchvision:NAME (random init unless --weights FILE), zoo:lenet-300-100, zoo:lenet-5,
a file written by `deepcomp train`, a TorchScript file, an ONNX file (model.onnx; pip install
"deepcomp[onnx]"), a state_dict with --arch NAME (or --arch module:Class / path/to/file.py:Class for your
own network), or a pickled module with --trust-pickle.  See `deepcomp CMD --help`.
"""


# ------------------------------------------------------------------ argument validation (one place)
# argparse type functions: a bad value fails while parsing, before any work, in one line (see _Parser).
MAX_THREADS = 1024  # the native thread pool's limit


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line naming the flag and what it takes (not the
    whole usage), with exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def int_in(lo: int, hi: int | None = None) -> Callable[[str], int]:
    """A type function for an integer in [lo, hi] (no upper bound when hi is None)."""
    want = f"an integer in {lo}..{hi}" if hi is not None else f"an integer >= {lo}"

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}") from None
        if v < lo or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"expected {want}, got {v}")
        return v
    parse.__name__ = want
    return parse


def float_in(lo: float, hi: float | None = None, *, open_lo: bool = False) -> Callable[[str], float]:
    """A type function for a finite number in [lo, hi] ((lo, hi] with open_lo)."""
    want = (f"a number {'>' if open_lo else '>='} {lo:g}" if hi is None
            else f"a number in {'(' if open_lo else '['}{lo:g}, {hi:g}]")

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}") from None
        if not math.isfinite(v) or v < lo or (open_lo and v == lo) or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"expected {want}, got {text}")
        return v
    parse.__name__ = want
    return parse


positive_int = int_in(1)
count_int = int_in(0)
fraction = float_in(0.0, 1.0)
positive_float = float_in(0.0, open_lo=True)
weight_bits = int_in(1, 8)
thread_count = int_in(1, MAX_THREADS)


def _parse_int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def log_file(text: str) -> str:
    """A log to append to: not a directory (a missing directory is created when the log is opened)."""
    if os.path.isdir(text) or text.endswith(("/", os.sep)):
        raise argparse.ArgumentTypeError(f"{text!r} is a directory; give a file name such as {text.rstrip('/')}/log.jsonl")
    return text


def output_file(text: str) -> str:
    """An output path that can be written: not a directory, in an existing writable directory."""
    from deepcomp.fileio import check_output

    try:
        check_output(text)
    except DeepcompError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="model to load (see `deepcomp --help`)")
    p.add_argument("--weights", metavar="FILE", help="state_dict file for a torchvision:/zoo: model")
    p.add_argument("--arch", metavar="NAME", help="architecture of a plain state_dict file: a zoo or torchvision name, or "
                                                  "your own class as module:Class or path/to/file.py:Class (the "
                                                  "working directory is importable; the class builds with no arguments)")
    p.add_argument("--num-classes", type=positive_int, metavar="K", help="classes of the architecture's head")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow loading a whole pickled module (runs code from the file: only for files you trust)")


def _load(args):
    from deepcomp.pipeline import status
    from deepcomp.zoo import load_model

    status(f"loading {args.model} ...", not getattr(args, "quiet", False))  # VGG-16 takes seconds to build
    shape = getattr(args, "input_shape", None)
    return load_model(args.model, weights=args.weights, arch=args.arch, trust_pickle=args.trust_pickle,
                      num_classes=args.num_classes, input_shape=tuple(shape) if shape else None,
                      seed=getattr(args, "seed", 0))


# --------------------------------------------------------------------------------------- compress
def _add_compress(sub) -> None:
    p = sub.add_parser(
        "compress", help="prune, share weights and Huffman-code a model into a .dcz file",
        description="Prune, share weights by k-means and Huffman-code MODEL into a .dcz file, then print "
                    "a per-layer table. Flags override the recipe.")
    _add_model_args(p)
    p.add_argument("-o", "--output", type=output_file, metavar="OUT.dcz", help="output file (default: <model name>.dcz)")
    p.add_argument("--recipe", default="deep-compression", metavar="NAME|FILE",
                   help="recipe name or a TOML file (default: deep-compression). 'deep-compression' picks the paper's "
                        "per-layer table for alexnet, vgg16, lenet-300-100 and lenet-5 (others: conv 8 / fc 5 bits, "
                        "sparsity 0.8); 'fashion-mnist' is the LeNet preset tuned for Fashion-MNIST (ip1 at 3 bits); "
                        "'sparse-int8' prunes the same densities in 1x4 blocks and runs the layers int8, activations "
                        "calibrated on --data (or on random inputs: speed only)")
    p.add_argument("--sparsity", type=fraction, metavar="S",
                   help="fraction of weights to remove, in [0, 1] (overrides the recipe's densities)")
    p.add_argument("--global", dest="scope", action="store_const", const="global",
                   help="one magnitude threshold across all layers instead of one sparsity per layer")
    p.add_argument("--conv-bits", type=weight_bits, metavar="B", help="weight bits of conv layers (1..8; paper: 8)")
    p.add_argument("--fc-bits", type=weight_bits, metavar="B", help="weight bits of fc layers (1..8; paper: 5)")
    p.add_argument("--index-bits", type=int_in(1, 12), metavar="B", help="bits of the relative index (1..12; paper: 4 or 5)")
    p.add_argument("--criterion", choices=["magnitude", "wanda", "relevance", "taylor"], default=None,
                   help="what pruning keeps: |w| (the paper's), WANDA |w|*||x|| or LRP-0 / Taylor "
                        "relevance; the last three calibrate on --data (default: the recipe's, magnitude)")
    p.add_argument("--int8-weight-bits", type=int, choices=[7, 8], default=None, metavar="{7,8}",
                   help="int8 recipes: the weight grid, 8 (-127..127) or 7 (-63..63: on AVX2 without VNNI every "
                        "int8 conv then runs the faster vpmaddubsw kernels; ONNX Runtime calls this reduce_range). "
                        "Default: the recipe's (7 unless it says otherwise)")
    p.add_argument("--calibration-batches", type=positive_int, default=8, metavar="N",
                   help="batches of --data used to calibrate wanda/relevance and the int8 activations (default 8)")
    p.add_argument("--init", choices=["linear", "density", "random", "kmeans++"], default=None,
                   help="k-means centroid initialisation (default: linear, the paper's)")
    p.add_argument("--input-shape", metavar="C,H,W", type=_parse_int_list,
                   help="per-sample input shape, if it cannot be inferred")
    p.add_argument("--data", metavar="D",
                   help="dataset for retraining (fashion-mnist[:DIR], mnist:DIR, imagefolder:DIR): runs the recipe's "
                        "schedule (deep-compression: 5 pruning steps of 3 epochs, 2 of centroid training) and "
                        "reports the baseline's and the written file's test accuracy")
    p.add_argument("--finetune-epochs", type=count_int, default=None, metavar="N",
                   help="epochs of masked retraining after each pruning step (needs --data; default: the recipe's)")
    p.add_argument("--iterative", type=positive_int, default=None, metavar="K",
                   help="prune in K steps with retraining between them (default: the recipe's with --data, "
                        "one shot without)")
    p.add_argument("--lr", type=positive_float, default=None, help="learning rate for retraining (default: the recipe's)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="batch size for retraining (default: the recipe's)")
    _add_schedule_flags(p)
    p.add_argument("--log-file", "--log", dest="log", type=log_file, metavar="FILE.jsonl",
                   help="append per-stage accuracy/loss/sparsity/size records here (--log-file under torchrun)")
    p.add_argument("--seed", type=count_int, default=0)
    p.add_argument("--json", action="store_true", help="print the per-layer report as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def cmd_compress(args) -> int:
    from deepcomp.fileio import check_output
    from deepcomp.pipeline import compress, default_output, evaluate_file

    loaded = _load(args)
    out = args.output or str(check_output(default_output(loaded)))  # a bad default fails before the work
    if args.data:
        from deepcomp.pipeline import require_trainable

        require_trainable(loaded.model)
    else:
        for flag in ("finetune_epochs", "codebook_epochs"):
            if getattr(args, flag):
                raise DeepcompError(f"--{flag.replace('_', '-')} needs --data: retraining needs a dataset")
    result = compress(
        loaded, recipe=args.recipe, sparsity=args.sparsity, scope=args.scope,
        conv_bits=args.conv_bits, fc_bits=args.fc_bits, index_bits=args.index_bits, init=args.init,
        criterion=args.criterion, iterative=args.iterative, int8_weight_bits=args.int8_weight_bits,
        input_shape=tuple(args.input_shape) if args.input_shape else None,
        seed=args.seed, progress=not args.quiet, data=args.data, calibration_batches=args.calibration_batches,
        log_path=args.log, **_schedule_overrides(args))
    if args.data:
        from deepcomp.train import is_main

        if not is_main():  # under torchrun every rank holds the same result; rank 0 writes and reports
            return 0
    size = result.save(out)
    if args.data:
        evaluate_file(result, out)
    _log_written(args.log, result, size, result.accuracy.get("compressed"))
    from deepcomp.report import print_report, report_from_file

    report = report_from_file(out)
    if args.json:
        print(json.dumps({**report, **({"accuracy": result.accuracy} if result.accuracy else {})}, indent=2))
    else:  # the time is the command's wall time: imports, loading, compressing and writing included
        print_report(report, elapsed=time.perf_counter() - args.started, path=out, notes=result.notes)
        if result.accuracy:
            base, comp = result.accuracy["baseline"], result.accuracy["compressed"]
            print(f"test top-1: baseline {100 * base['top1']:.2f}% (torch) -> compressed {100 * comp['top1']:.2f}% "
                  f"({out} on the deepcomp runtime), {100 * (comp['top1'] - base['top1']):+.2f} points")
    return 0


def _add_schedule_flags(p: argparse.ArgumentParser) -> None:
    """Flags for the recipe's [schedule] fields that --finetune-epochs/--iterative/--lr/--batch-size
    do not already cover; each overrides its field."""
    p.add_argument("--codebook-epochs", type=count_int, default=None, metavar="N",
                   help="epochs of centroid training after k-means (needs --data; default: the recipe's)")
    p.add_argument("--weight-decay", type=float_in(0.0), default=None, metavar="WD",
                   help="weight decay of retraining (default: the recipe's)")


def _schedule_overrides(args) -> dict:
    return {"finetune_epochs": args.finetune_epochs, "codebook_epochs": args.codebook_epochs, "lr": args.lr,
            "batch_size": args.batch_size, "weight_decay": args.weight_decay}


def _log_written(path, result, size: int, accuracy: dict | None = None) -> None:
    """Append the written file's record to --log-file (with or without --data: retraining adds its
    per-stage records before it)."""
    if not path:
        return
    from deepcomp.train import JsonlLog

    kept = sum(sw.nnz for sw in result.shared.values()) / max(sum(sw.numel for sw in result.shared.values()), 1)
    record = {"stage": "written", "sparsity": 1 - kept, "size": size,
              "ratio": result.meta["original_bytes"] / size, **result.meta["stages"]}
    if accuracy is not None:
        record.update(accuracy=accuracy["top1"], loss=accuracy["loss"])
    JsonlLog(path)(**record)


# ------------------------------------------------------------------------------------------- info
def _add_info(sub) -> None:
    p = sub.add_parser("info", help="per-layer sizes of a .dcz file, in the shape of the paper's Tables 4/5",
                       description="Print a .dcz file's per-layer table: weights, kept %, weight bits fixed / "
                                   "after Huffman, index bits fixed / after Huffman, bytes, share of the original.")
    p.add_argument("file", metavar="FILE.dcz")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def cmd_info(args) -> int:
    from deepcomp.report import print_report, report_from_file

    report = report_from_file(args.file)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report, path=args.file)
    return 0


# ------------------------------------------------------------------------------------- decompress
def _add_decompress(sub) -> None:
    p = sub.add_parser("decompress", help="write the dense (pruned and shared) weights as a state_dict",
                       description="Decode FILE.dcz into a torch state_dict with the original parameter names, "
                                   "loadable into the original architecture with strict=True.")
    p.add_argument("file", metavar="FILE.dcz")
    p.add_argument("-o", "--output", type=output_file, required=True, metavar="dense.pt")


def cmd_decompress(args) -> int:
    from deepcomp.dcz import save_state_dict

    n = save_state_dict(args.file, args.output)
    print(f"wrote {n} tensors to {args.output}")
    return 0


# ----------------------------------------------------------------------------------------- export
def _add_export(sub) -> None:
    p = sub.add_parser("export", help="write a .dcz as a dense ONNX model (pruned, shared weights) for other runtimes",
                       description="Write FILE.dcz as an ONNX model (opset 17) that ONNX Runtime and OpenVINO load: "
                                   "the decompressed weights (pruned weights are zeros, shared weights their "
                                   "centroid), the same outputs as `deepcomp run`. Needs the onnx package "
                                   '(pip install "deepcomp[onnx]"); torch is not imported.')
    p.add_argument("file", metavar="FILE.dcz")
    p.add_argument("-o", "--output", type=output_file, required=True, metavar="model.onnx")
    p.add_argument("--sparse-initializers", action="store_true",
                   help="store each weight that is smaller that way as an ONNX sparse initializer (positions + "
                        "values): a smaller file, which ONNX Runtime densifies at load (OpenVINO 2026.4 does not read sparse "
                        "initializers: export without this flag for it)")


def cmd_export(args) -> int:
    from deepcomp.export_onnx import export_onnx

    size = export_onnx(args.file, args.output, sparse_initializers=args.sparse_initializers)
    print(f"wrote {args.output} ({size} bytes, ONNX opset 17)")
    return 0


# ------------------------------------------------------------------------- run / bench (runtime)
def _add_run(sub) -> None:
    p = sub.add_parser("run", help="run a .dcz model on the native runtime (numpy in, numpy out)",
                       description="Run FILE.dcz on the native sparse runtime (torch is not imported).")
    p.add_argument("file", metavar="FILE.dcz")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", metavar="x.npy", help="input batch, float32 [N, *input_shape]")
    src.add_argument("--input-random", action="store_true", help="a random input batch (smoke test)")
    p.add_argument("--batch", type=positive_int, default=1, help="batch size with --input-random")
    p.add_argument("-o", "--output", type=output_file, metavar="y.npy", help="write the output here (default: print a summary)")
    p.add_argument("--threads", type=thread_count, help="threads for the kernels (default: DEEPCOMP_NUM_THREADS or all cores)")
    _add_int8_choice(p)


INT8_HELP = ("which layers a sparse-int8 file runs int8: 'auto' (default) those this CPU's int8 kernels run "
             "faster than fp32, 'file' every layer the file marks int8 (the same bits on every CPU), 'off' none "
             "(fp32 on the shared weights)")


def _add_int8_choice(p) -> None:
    p.add_argument("--int8", choices=("auto", "file", "off"), default="auto", help=INT8_HELP)


def _read_input(path: str):
    """The --input array: a .npy file (numpy.save), read without pickle."""
    import numpy as np

    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except FileNotFoundError:
        raise DeepcompError(f"input file {path!r} does not exist") from None
    except OSError as e:
        raise DeepcompError(f"cannot read input {path!r}: {e.strerror}") from None
    if not head.startswith(b"\x93NUMPY"):
        what = "a .dcz model" if head.startswith(b"\x89DCZ") else "not a .npy file"
        raise DeepcompError(f"--input {path!r} is {what}; give a float32 array saved with numpy.save (x.npy)")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DeepcompError(f"cannot read input {path!r}: {str(e).splitlines()[0]}; give a numeric array saved "
                            "with numpy.save") from None


def cmd_run(args) -> int:
    import io

    import numpy as np

    import deepcomp.runtime as rt
    from deepcomp.fileio import atomic_write

    if args.threads:
        rt.set_num_threads(args.threads)
    from deepcomp.report import fallback_notes

    model = rt.load(args.file, int8=args.int8)
    notes = fallback_notes(model.fp32_fallback).strip()
    if notes:
        print(notes, file=sys.stderr)
    if args.input:
        x = _read_input(args.input)
    else:
        x = np.random.default_rng(0).standard_normal((args.batch, *model.input_shape), dtype=np.float32)
    y = model(x)
    if args.output:
        buf = io.BytesIO()
        np.save(buf, y)
        atomic_write(args.output, buf.getvalue())
        print(f"wrote output {tuple(y.shape)} to {args.output}")
    else:
        top = y.reshape(y.shape[0], -1).argmax(axis=1)
        print(f"output {tuple(y.shape)}; top-1 per sample: {top.tolist()}")
    return 0


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="time a .dcz on the native runtime against dense PyTorch, per layer and end to end",
                       description="In one process, same inputs, same thread count: median time per layer and end "
                                   "to end of dense PyTorch (same weights), the deepcomp runtime, and torch.sparse "
                                   "CSR for linear layers; speedups beside the times.")
    p.add_argument("file", metavar="FILE.dcz")
    p.add_argument("--batch", type=_parse_int_list, default=[1], metavar="1,8,64", help="batch sizes (default 1)")
    p.add_argument("--threads", type=thread_count, help="threads for both torch and deepcomp (default: all cores)")
    p.add_argument("--repeat", type=positive_int, default=10, metavar="R", help="timed runs per measurement (median; default 10)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _add_int8_choice(p)


def cmd_bench(args) -> int:
    from deepcomp.bench import bench_file
    from deepcomp.report import print_bench

    results = bench_file(args.file, batches=args.batch, threads=args.threads, repeat=args.repeat, int8=args.int8)
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 else results, indent=2))
    else:
        for r in results:
            print_bench(r)
    return 0


# ---------------------------------------------------------------- train / eval / finetune (data)
def _add_train(sub) -> None:
    p = sub.add_parser(
        "train", help="train a baseline model on a dataset",
        description="Train MODEL (e.g. zoo:lenet-300-100, zoo:lenet-5, torchvision:NAME, or a model file to continue "
                    "training) on the training split of --data and write a deepcomp model file that `compress`, "
                    "`eval` and `finetune` accept with no further flags (state_dict + architecture name; "
                    "no pickle). Works under `torchrun --nproc_per_node=N` (DistributedDataParallel; rank 0 "
                    "writes the file).")
    _add_model_args(p)
    from deepcomp.data import add_data_args

    add_data_args(p)
    p.add_argument("--epochs", type=positive_int, required=True, metavar="N", help="training epochs")
    p.add_argument("-o", "--output", type=output_file, required=True, metavar="model.pt", help="file to write")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="learning rate (default 1e-3; cosine decay over the run)")
    p.add_argument("--optimizer", choices=["adam", "sgd"], default="adam", help="adam (default) or sgd with momentum 0.9")
    p.add_argument("--weight-decay", type=float_in(0.0), default=0.0, metavar="WD")
    p.add_argument("--bn-l1", type=float_in(0.0), default=0.0, metavar="LAMBDA",
                   help="network slimming's sparsity training: add LAMBDA * sum |gamma| over the BatchNorm scales "
                        "(Liu et al. 2017 use 1e-5 to 1e-4), so that slimming later removes the channels it drove to 0")
    p.add_argument("--log-file", "--log", dest="log", type=log_file, metavar="FILE.jsonl",
                   help="append one JSON record per epoch (accuracy, loss, ...); under torchrun spell it --log-file")
    p.add_argument("--seed", type=count_int, default=0, help="seed of the initialisation and the data order (default 0)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def cmd_train(args) -> int:
    import os

    import torch

    from deepcomp.data import load_dataset, num_classes_of
    from deepcomp.train import evaluate, init_distributed, is_main, train
    from deepcomp.data import make_loader
    from deepcomp.zoo import save_model

    init_distributed()
    train_ds = load_dataset(args.data, "train")
    test_ds = load_dataset(args.data, "test")
    if args.num_classes is None and not os.path.exists(args.model):  # a fresh model: one output per class
        args.num_classes = num_classes_of(train_ds)
    torch.manual_seed(args.seed)
    loaded = _load(args)  # a fresh architecture is initialised from --seed
    train(loaded.model, train_ds, test_data=test_ds, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
          optimizer=args.optimizer, weight_decay=args.weight_decay, seed=args.seed, progress=not args.quiet,
          log_path=args.log, bn_l1=args.bn_l1)
    loaded.model.cpu()
    if is_main():
        ev = evaluate(loaded.model, make_loader(test_ds, batch_size=512))
        save_model(args.output, loaded.model, loaded.arch, loaded.input_shape)
        print(f"wrote {args.output} ({loaded.arch}); test split: {_accuracy_text(ev)}")
    return 0


def _accuracy_text(res: dict) -> str:
    """One line for an evaluate() result, as train and eval print it."""
    top5 = f", top-5 {100 * res['top5']:.2f}%" if "top5" in res else ""
    return f"top-1 {100 * res['top1']:.2f}%{top5}, loss {res['loss']:.4f} on {res['samples']} samples"


def _add_eval(sub) -> None:
    p = sub.add_parser(
        "eval", help="top-1/top-5 accuracy and loss of a model or .dcz on a dataset",
        description="Evaluate FILE on a split of --data (test by default): top-1, top-5 (more than 5 classes) "
                    "and mean cross-entropy loss. A .dcz file runs on deepcomp's native runtime, so the "
                    "accuracy is that of the file that ships; any other FILE is loaded as a model "
                    "(see `deepcomp --help`).")
    p.add_argument("file", metavar="FILE", help="a .dcz file or a model (.pt from `deepcomp train`, TorchScript, ...)")
    p.add_argument("--arch", metavar="NAME", help="architecture of a plain state_dict file (a name, module:Class or "
                                                  "file.py:Class)")
    p.add_argument("--trust-pickle", action="store_true", help="allow loading a pickled module (runs its code)")
    from deepcomp.data import add_data_args

    add_data_args(p, split=True)
    p.add_argument("--json", action="store_true",
                   help='print {"top1", "top5", "loss", "samples"} as JSON (fractions, not percent)')
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("--int8", choices=("auto", "file", "off"), default="file",
                   help=INT8_HELP.replace("'auto' (default)", "'auto'").replace("CPU)", "CPU, the default here)"))


def cmd_eval(args) -> int:
    from deepcomp.data import load_dataset, make_loader
    from deepcomp.train import evaluate

    ds = load_dataset(args.data, args.split)
    loader = make_loader(ds, batch_size=args.batch_size)
    if str(args.file).endswith(".dcz"):
        from deepcomp.train import load_dcz_for_eval

        model, engine = load_dcz_for_eval(args.file, int8=args.int8)
    else:
        from deepcomp.zoo import load_model

        model = load_model(args.file, arch=args.arch, trust_pickle=args.trust_pickle).model
        engine = "torch"
    res = evaluate(model, loader, progress=not args.quiet and not args.json)
    if args.json:
        print(json.dumps(res))
    else:
        print(f"{args.file} on {args.data} ({args.split}, {engine}): {_accuracy_text(res)}")
    return 0


def _add_finetune(sub) -> None:
    p = sub.add_parser(
        "finetune", help="transfer a compressed model to a new task (new head, sparse backbone kept)",
        description="Transfer learning from FILE.dcz: replace the classifier head with one of --num-classes "
                    "outputs, fine-tune on --data keeping the backbone's pruning masks and weight-sharing "
                    "assignments (its centroids may train), prune and share the new head like the old one "
                    "(same density and bits), and write a new .dcz.")
    p.add_argument("file", metavar="FILE.dcz")
    from deepcomp.data import add_data_args

    add_data_args(p)
    p.add_argument("--num-classes", type=positive_int, metavar="K", help="classes of the new task (default: from the data)")
    p.add_argument("-o", "--output", type=output_file, required=True, metavar="new.dcz")
    p.add_argument("--epochs", type=positive_int, default=3, metavar="N",
                   help="epochs of each stage: new head, masked retraining of the pruned head, centroids (default 3)")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="learning rate (default 1e-3)")
    p.add_argument("--freeze-backbone", action="store_true", help="train the head only (backbone centroids fixed)")
    p.add_argument("--log-file", "--log", dest="log", type=log_file, metavar="FILE.jsonl",
                   help="append per-stage accuracy/loss/sparsity/size records (under torchrun spell it --log-file)")
    p.add_argument("--seed", type=count_int, default=0)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def cmd_finetune(args) -> int:
    from deepcomp.train import finetune_dcz, is_main

    res = finetune_dcz(args.file, args.data, num_classes=args.num_classes, out_path=args.output,
                       epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                       progress=not args.quiet, log_path=args.log, freeze_backbone=args.freeze_backbone)
    if is_main():
        ev = res["accuracy"]
        top5 = f", top-5 {ev['top5']:.4f}" if "top5" in ev else ""
        print(f"wrote {args.output} ({res['file_bytes']} bytes, {res['ratio']:.1f}x); test top-1 "
              f"{ev['top1']:.4f}{top5}, loss {ev['loss']:.4f} on {ev['samples']} samples (the written file)")
    return 0


# ------------------------------------------------------------------------ sweep / sensitivity (studies)
def _add_study_data(p: argparse.ArgumentParser) -> None:
    _add_model_args(p)
    p.add_argument("--data", required=True, metavar="D", help="dataset (e.g. fashion-mnist, fashion-mnist?pad=2 for 32x32)")
    p.add_argument("--train-limit", type=positive_int, default=None, metavar="N", help="training samples used (default all)")
    p.add_argument("--test-limit", type=positive_int, default=None, metavar="N", help="test samples evaluated (default all)")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="directory for the CSV, the PNG and the state")
    p.add_argument("--seed", type=count_int, default=0)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _study_data(args):
    from deepcomp.data import load_dataset

    return (load_dataset(args.data, "train", limit=args.train_limit),
            load_dataset(args.data, "test", limit=args.test_limit))


def _add_sweep(sub) -> None:
    p = sub.add_parser(
        "sweep", help="accuracy, size and speed of every pruning method over a range of sparsities",
        description="Prune a copy of MODEL with each method at each sparsity, optionally retrain it (masks fixed), "
                    "and write DIR/sweep.csv (method, sparsity, accuracy, params, file_bytes, runtime_ms, torch_ms) "
                    "and DIR/sweep.png. Rows are written as they finish: run the same command again to continue "
                    "an interrupted sweep. Structured methods (l1-filter, slimming) remove that fraction of channels.")
    _add_study_data(p)
    p.add_argument("--methods", default="all", metavar="M1,M2|all",
                   help="magnitude-global, magnitude-layer, l1-filter, slimming, wanda, relevance, taylor, "
                        "column-norm, sap (default all)")
    p.add_argument("--sparsities", default="0.5,0.7,0.8,0.9,0.95", metavar="S1,S2", help="default 0.5,0.7,0.8,0.9,0.95")
    p.add_argument("--finetune-epochs", type=count_int, default=0, metavar="N", help="retraining epochs per point (default 0)")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="learning rate of retraining (default 1e-3)")
    p.add_argument("--batch-size", type=positive_int, default=256)


def cmd_sweep(args) -> int:
    from deepcomp.study import parse_methods, parse_sparsities, rows_table, sweep

    methods, sps = parse_methods(args.methods), parse_sparsities(args.sparsities)
    loaded = _load(args)
    train_ds, test_ds = _study_data(args)
    rows = sweep(loaded, train_ds, test_ds, args.output, methods=methods, sparsities=sps,
                 finetune_epochs=args.finetune_epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                 progress=not args.quiet, label=args.model)
    print(rows_table(rows))
    print(f"\nwrote {args.output}/sweep.csv and {args.output}/sweep.png")
    return 0


def _add_sensitivity(sub) -> None:
    p = sub.add_parser(
        "sensitivity", help="accuracy drop when each layer alone is pruned at increasing sparsity",
        description="Prune each prunable layer of MODEL alone (magnitude) at each sparsity and report the test "
                    "accuracy drop per layer: a table, DIR/sensitivity.csv and DIR/sensitivity.png.")
    _add_study_data(p)
    p.add_argument("--sparsities", default="0.3,0.5,0.7,0.8,0.9,0.95", metavar="S1,S2")


def cmd_sensitivity(args) -> int:
    from deepcomp.study import parse_sparsities, sensitivity, sensitivity_table

    sps = parse_sparsities(args.sparsities)
    loaded = _load(args)
    _, test_ds = _study_data(args)
    base, rows = sensitivity(loaded, test_ds, args.output, sparsities=sps, progress=not args.quiet)
    print(sensitivity_table(base, rows))
    print(f"\nwrote {args.output}/sensitivity.csv and {args.output}/sensitivity.png")
    return 0


COMMANDS = ["compress", "info", "decompress", "export", "run", "bench", "train", "eval", "finetune", "sweep", "sensitivity"]


def build_parser() -> argparse.ArgumentParser:
    from deepcomp import __version__

    parser = _Parser(
        prog="deepcomp",
        description="Deep Compression for PyTorch models: prune, share weights, Huffman-code into a .dcz "
                    "file, and run it on a native sparse CPU runtime.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"deepcomp {__version__}")
    parser.add_argument("--traceback", action="store_true", help="show the full traceback of an error (debugging)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    g = globals()
    for name in COMMANDS:
        g[f"_add_{name}"](sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    parser = build_parser()
    args = parser.parse_args(argv)
    args.started = started  # the command's wall time counts from here (compress reports it)
    if not args.command:
        parser.print_help()
        return 2
    handler = globals()[f"cmd_{args.command}"]
    try:
        code = int(handler(args) or 0)
        # Commands that may run under torchrun (train, compress, finetune, eval of a model) import
        # deepcomp.train; the others never load torch, so look it up instead of importing it.
        train_mod = sys.modules.get("deepcomp.train")
        if train_mod is not None:
            train_mod.shutdown_distributed()  # every rank leaves the group together (no-op otherwise)
        return code
    except DeepcompError as e:
        if args.traceback:
            raise
        msg = " ".join(str(e).split())
        if isinstance(e, DczError) and "deepcomp" not in msg:  # a bad file: say where a good one comes from
            msg += "; give a .dcz file written by `deepcomp compress`"
        print(f"deepcomp {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"deepcomp {args.command}: interrupted; nothing was written, run the command again", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `deepcomp info x.dcz --json | head`
        sys.stderr.close()
        return 0
    except OSError as e:  # the environment (a full disk while logging, a vanished directory), not a bug
        if args.traceback or e.errno is None:
            raise
        where = f" ({e.filename})" if e.filename else ""
        print(f"deepcomp {args.command}: error: {e.strerror}{where}; fix that and run again (--traceback for "
              "details)", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
