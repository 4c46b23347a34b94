"""Speed and peak RSS of one .dcz file under several Winograd memory budgets (DEEPCOMP_WINOGRAD_MB).

    python benchmarks/winograd_budget.py FILE [--mb 32,-1] [--batch 1,8] [--rounds 3] [--threads 2]

The budget is read once per process and each layer keeps the form it got at its first call, so
every measurement is a fresh process; rounds alternate the budgets, so drift of a shared machine
hits them alike. A process runs batch sizes in order and times each as the median of a few calls
after one warm-up; it reports the peak RSS of the whole run. Prints median ms per budget and batch.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import sys, time, json, statistics
import numpy as np
import deepcomp.runtime as rt
rt.set_num_threads(int(sys.argv[3]))
m = rt.load(sys.argv[1])
out = {}
for n in map(int, sys.argv[2].split(",")):
    x = np.random.default_rng(0).standard_normal((n, *m.input_shape)).astype(np.float32)
    m(x)
    ts = []
    for _ in range(max(3, 24 // n)):
        t = time.perf_counter(); m(x); ts.append(time.perf_counter() - t)
    out[n] = statistics.median(ts) * 1e3
with open("/proc/self/status") as f:
    rss = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")) / 1024
print(json.dumps({"ms": out, "rss_mb": rss}))
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file")
    ap.add_argument("--mb", default="32,-1", help="budgets in MB (-1: no limit)")
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    budgets = a.mb.split(",")
    runs = {b: [] for b in budgets}
    for _ in range(a.rounds):
        for b in budgets:
            env = dict(os.environ, DEEPCOMP_WINOGRAD_MB=b)
            p = subprocess.run([sys.executable, "-c", CHILD, a.file, a.batch, str(a.threads)], env=env,
                               capture_output=True, text=True, check=True)
            runs[b].append(json.loads(p.stdout.strip().splitlines()[-1]))
    print(f"{a.file}, {a.threads} threads, medians of {a.rounds} alternating processes:")
    for b in budgets:
        ms = ", ".join(f"batch {n} {statistics.median(r['ms'][n] for r in runs[b]):.1f} ms"
                       for n in runs[b][0]["ms"])
        rss = statistics.median(r["rss_mb"] for r in runs[b])
        print(f"  DEEPCOMP_WINOGRAD_MB={b}: {ms}; peak RSS {rss:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
