"""Load to ready of one .dcz file in a fresh process: import, load, first inference; peak RSS.

    python benchmarks/load_ready.py FILE [--batch 1] [--runs 3] [--threads 2]

Each run is a new interpreter (so the import and the heap start cold): it prints the seconds from
its start to the end of the first inference (as benchmarks/peers measures a runtime's load), the
seconds of ``deepcomp.load`` alone, the peak RSS (VmHWM) of the load, the RSS held after it, and
the peak RSS of the first inference of a batch of ``--batch`` random inputs (VmHWM reset after
the load, so it is the run's own peak), and the peak RSS of a second inference of the same batch:
the steady state of repeated inference, higher than the first run's because plans (and Winograd's
transformed weights) are built during the first run after its largest activations are gone, and
from the second run on are resident while those activations live. RSS is exact; seconds on a
loaded machine are only rough.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CHILD = r"""
import sys, time, json
t0 = time.perf_counter()
import numpy as np
import deepcomp.runtime as rt

def hwm():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")) / 1024

rt.set_num_threads(int(sys.argv[3]))
t1 = time.perf_counter()
m = rt.load(sys.argv[1])
t2 = time.perf_counter()
rss_load = hwm()
with open("/proc/self/clear_refs", "w") as f:  # reset VmHWM: the run's own peak from here
    f.write("5")
rss_before = hwm()
x = np.random.default_rng(0).standard_normal((int(sys.argv[2]), *m.input_shape)).astype(np.float32)
m(x)
t3 = time.perf_counter()
rss_run = hwm()
m(x)
print(json.dumps({"ready_s": t3 - t0, "load_s": t2 - t1, "rss_load_mb": rss_load, "rss_run_mb": rss_run,
                  "rss_ready_mb": rss_before, "rss_steady_mb": hwm(),
                  "torch": "torch" in sys.modules}))
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    runs = []
    for _ in range(a.runs):
        p = subprocess.run([sys.executable, "-c", CHILD, a.file, str(a.batch), str(a.threads)], capture_output=True,
                           text=True, check=True)
        runs.append(json.loads(p.stdout.strip().splitlines()[-1]))
    med = {k: statistics.median(r[k] for r in runs)
           for k in ("ready_s", "load_s", "rss_load_mb", "rss_ready_mb", "rss_run_mb", "rss_steady_mb")}
    print(f"{a.file}: ready {med['ready_s']:.2f} s (load {med['load_s']:.2f} s), peak RSS {med['rss_load_mb']:.0f} MB "
          f"during load ({med['rss_ready_mb']:.0f} MB held after it), {med['rss_run_mb']:.0f} MB during the first "
          f"batch-{a.batch} run, {med['rss_steady_mb']:.0f} MB through the second (medians of {a.runs} fresh processes"
          f"{', torch imported' if any(r['torch'] for r in runs) else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
