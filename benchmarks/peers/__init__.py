"""deepcomp against the CPU runtimes a deploying user would pick instead, on the same pruned weights.

    python -m benchmarks.peers [--arch alexnet,vgg16] [--batch 1,8] [--rounds 4] [--threads 2]
                               [--runtimes torch,onnxruntime,...]
                               [--deepsparse-python /work/venv-deepsparse/bin/python]
                               [--out benchmarks/results/peers.md] [--json FILE] [--workdir DIR]

(run from the repository root). The models are AlexNet and VGG-16 compressed by `deepcomp compress`
with the paper's recipe (deep-compression) on random weights (speed depends on the sparsity
pattern's density, not on the values), then decompressed, loaded into torchvision and exported to
ONNX with a static batch. The runtimes: dense PyTorch eager, ONNX Runtime (CPU provider, all graph
optimisations), OpenVINO with an f32 precision hint and (as information) at its default precision,
DeepSparse 1.8 (sparse-aware; it needs its own environment: Python 3.11, deepsparse==1.8.0, given by
--deepsparse-python or $DEEPSPARSE_PYTHON, skipped with a note when missing) and deepcomp.

The int8 runtimes (int8.py): onnxruntime-int8, openvino-int8 and deepsparse-int8 run the same ONNX
exports quantized by ONNX Runtime's static QDQ quantization on deepcomp's calibration inputs;
deepcomp-int8 runs the file of `deepcomp compress <model> --recipe sparse-int8` (skipped with a note
where that recipe is missing). --runtimes picks a subset of all ten.

How it measures:
- every runtime runs in its own process (this package with --worker), one process per runtime and
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

The pieces: runtimes.py (the runtimes, their labels and tolerances, whether they can run here),
prepare.py (the model files every runtime reads), worker.py (one runtime in one process),
profiling.py (per-layer times and the rows they are reported in), driver.py (rounds, retries,
summaries, the command line), table.py (the markdown).

Nothing here imports torch at import time: the worker also runs in DeepSparse's own environment.
"""
