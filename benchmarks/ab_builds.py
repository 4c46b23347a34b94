"""Step-by-step A/B of two (or more) builds of deepcomp on one .dcz file: each build is a directory
holding a `deepcomp` package with its own compiled `_native` (a copy of the tree or a git worktree
after `scripts/build-native.sh`), run in fresh processes that alternate builds round after round, so
drift of a shared machine hits them alike. A process loads the file, runs a warm-up call, then times
every step (`model.steps`) and the whole call as medians of a few calls each. Prints, per step and end
to end, the median over rounds for each build and the median of the per-round ratios to the first.

    python benchmarks/ab_builds.py FILE --build old=/tmp/old --build new=/tmp/new [--batch 8]
                                   [--rounds 8] [--seconds 0.3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import json, statistics, sys
import numpy as np
import deepcomp
import deepcomp.runtime as rt
from benchmarks.peers.profiling import deepcomp_layers
from benchmarks.peers.timing import time_calls
rt.set_num_threads(int(sys.argv[3]))
m = rt.load(sys.argv[1])
x = np.random.default_rng(0).standard_normal((int(sys.argv[2]), *m.input_shape)).astype(np.float32)
m(x)
seconds = float(sys.argv[4])
out = deepcomp_layers(m, x, seconds)
out["end to end"] = statistics.median(time_calls(lambda: m(x), seconds, 5))
print("PACKAGE " + deepcomp.__file__)
print("RESULT " + json.dumps(out))
"""

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(path: str, args) -> dict[str, float]:
    # `python -c` puts its working directory first on sys.path, so the child runs in the build's
    # directory: from the repository it would import the repository's package whatever PYTHONPATH says.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([path, ROOT]))
    p = subprocess.run([sys.executable, "-c", CHILD, os.path.abspath(args.file), str(args.batch), str(args.threads),
                        str(args.seconds)], capture_output=True, text=True, env=env, cwd=path)
    lines = dict(l.split(" ", 1) for l in p.stdout.splitlines() if l.startswith(("PACKAGE ", "RESULT ")))
    if p.returncode or "RESULT" not in lines:
        raise SystemExit(f"error: the build at {path} failed: " + (p.stderr.strip().splitlines() or ["?"])[-1])
    if os.path.commonpath([os.path.abspath(lines["PACKAGE"]), os.path.abspath(path)]) != os.path.abspath(path):
        raise SystemExit(f"error: the build at {path} imported deepcomp from {lines['PACKAGE']}")
    return json.loads(lines["RESULT"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file")
    ap.add_argument("--build", action="append", required=True, metavar="NAME=DIR",
                    help="a directory holding a built deepcomp package (twice or more)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=0.3, help="timed calls per step and process (default 0.3 s)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args(argv)
    builds = [b.split("=", 1) for b in args.build]
    if len(builds) < 2 or any(len(b) != 2 or not os.path.isdir(os.path.join(b[1], "deepcomp")) for b in builds):
        ap.error("give two or more --build NAME=DIR, each DIR holding a deepcomp package")
    res: dict[str, list[dict[str, float]]] = {name: [] for name, _ in builds}
    for r in range(args.rounds):
        for name, path in builds:
            res[name].append(run(path, args))
        print(f"round {r + 1}/{args.rounds}", file=sys.stderr)
    first = builds[0][0]
    steps = list(res[first][0])
    print(f"{args.file}, batch {args.batch}, {args.threads} threads, median ms over {args.rounds} rounds "
          f"(ratio: {first} / build, median of per-round ratios)\n")
    print("| step | " + " | ".join(name for name, _ in builds) + " |")
    print("|---|" + "---|" * len(builds))
    for s in steps:
        cells = []
        for name, _ in builds:
            ms = statistics.median(run_[s] for run_ in res[name])
            ratio = statistics.median(a[s] / b[s] for a, b in zip(res[first], res[name]))
            cells.append(f"{ms:.2f}" + ("" if name == first else f" ({ratio:.2f}x)"))
        print(f"| {s} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
