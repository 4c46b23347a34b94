"""End-to-end A/B of one kernel knob on a whole .dcz model: the native runtime with the knob at
value A and at value B, same process, alternating blocks (deepcomp.bench.median_ms), with the
foreign CPU load measured around each batch size. The knobs are bench_layers.py's (--ab there).

    python benchmarks/ab_model.py model.dcz stream-bytes               # the knob's default A and B
    python benchmarks/ab_model.py model.dcz stream-bytes=1e18,8388608 --batches 1,8 --repeat 9
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_layers import AB_KNOBS, parse_ab  # noqa: E402

import deepcomp.runtime as rt  # noqa: E402
from deepcomp.bench import median_ms, steady_heap  # noqa: E402
from deepcomp.cpuload import ForeignLoad  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a .dcz file")
    ap.add_argument("ab", type=parse_ab, metavar="KNOB[=A,B]", help=f"one of {', '.join(sorted(AB_KNOBS))}")
    ap.add_argument("--batches", default="1", help="comma-separated batch sizes (default 1)")
    ap.add_argument("--threads", type=int, default=0, help="native threads (default: all cores)")
    ap.add_argument("--repeat", type=int, default=5, help="rounds of alternating blocks (default 5)")
    args = ap.parse_args(argv)
    if not os.path.isfile(args.model):
        ap.error(f"{args.model}: no such file")
    try:
        batches = [int(b) for b in args.batches.split(",")]
    except ValueError:
        ap.error(f"--batches {args.batches!r}: expected comma-separated integers")
    name, a, b = args.ab
    set_knob = AB_KNOBS[name][0]
    steady_heap()
    rt.set_num_threads(args.threads or os.cpu_count() or 1)
    model = rt.load(args.model)
    print(f"{os.path.basename(args.model)}: {name} = {a:g} (A) vs {b:g} (B)")
    for batch in batches:
        x = np.random.default_rng(batch).standard_normal((batch, *model.input_shape), dtype=np.float32)

        def side(v):
            def run():
                set_knob(v)
                return model(x)
            return run
        ya, yb = np.asarray(side(a)()), np.asarray(side(b)())
        diff = float(np.abs(ya - yb).max() / max(1.0, float(np.abs(ya).max())))
        load = ForeignLoad().start()
        ta, tb = median_ms(side(a), side(b), repeat=args.repeat)
        foreign = load.stop()
        cores = "unknown" if foreign is None else f"{foreign:.2f}"
        print(f"batch {batch}: A {ta:.1f} ms, B {tb:.1f} ms, B speedup {ta / tb:.3f}x, "
              f"outputs differ by {diff:.1e} (relative), foreign cores {cores}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
