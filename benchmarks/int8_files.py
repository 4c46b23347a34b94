"""End to end: .dcz files on deepcomp's runtime, in one process, alternating blocks, the same input.

    python benchmarks/int8_files.py a8.dcz a32.dcz [--batch 1,8] [--repeat 5] [--threads 2]
    python benchmarks/int8_files.py a8.dcz@file a8.dcz@auto a32.dcz    # deepcomp.load(..., int8=MODE)
    python benchmarks/int8_files.py v8.dcz%0 v8.dcz%0.3     # int8 convs built at split fraction F

Made for an int8 file against the fp32 file of the same model (for example
``deepcomp compress torchvision:alexnet --recipe sparse-int8 -o a8.dcz`` and ``--recipe
deep-compression -o a32.dcz``): prints each file's median ms per batch and its ratio to the last
file, with the CPU time other processes used meanwhile (figures from a busy machine are only
ratios). ``FILE@MODE`` loads FILE with ``int8=MODE`` (auto, file, off; default auto). ``FILE%F``
builds its int8 convs with split fraction F (``_native._set_int8_split_fraction``: on AVX2, a layer
with at most that fraction of blocks over the vpmaddubsw pair bound splits them and runs the pairs
kernels; 0 keeps every layer with such blocks on the general kernels).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np


def load_spec(deepcomp, nat, spec: str):
    """FILE[%F][@MODE] -> the loaded model (see the module docstring)."""
    spec, mode = spec.rsplit("@", 1) if "@" in spec else (spec, "")
    path, frac = spec.rsplit("%", 1) if "%" in spec else (spec, "")
    old = nat._set_int8_split_fraction(float(frac)) if frac else None
    try:
        return deepcomp.load(path, int8=mode or "auto")
    finally:
        if old is not None:
            nat._set_int8_split_fraction(old)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+")
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    import deepcomp
    import deepcomp._native as nat
    import deepcomp.runtime as rt
    from deepcomp.bench import median_ms, steady_heap
    from deepcomp.cpuload import ForeignLoad

    steady_heap()
    rt.set_num_threads(a.threads)
    models = [load_spec(deepcomp, nat, f) for f in a.files]
    names = [os.path.basename(f) for f in a.files]
    shape = models[0].input_shape
    print(f"{a.threads} threads, fp32 {nat.isa()}, int8 {nat.int8_isa()}; medians of alternating blocks in one process")
    for m, name in zip(models, names):
        for node, why in m.fp32_fallback.items():
            print(f"{name}: {node} runs fp32 ({why})")
    for batch in (int(b) for b in a.batch.split(",")):
        x = np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)
        with ForeignLoad() as load:
            ms = median_ms(*[(lambda m=m: m(x)) for m in models], repeat=a.repeat)
        for name, m, t in zip(names, models, ms):
            n8 = sum(1 for l in m.layers if l.precision == "int8")
            print(f"batch {batch}: {name} ({n8}/{len(m.layers)} int8 layers): {t:.2f} ms ({ms[-1] / t:.2f}x vs {names[-1]})")
        print(f"batch {batch}: other processes used {load.cores if load.cores is not None else float('nan'):.2f} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
