"""Run a study's stages in worker processes, a few threads each, longest first.

A study made of independent stages (each one command that stores its result, so a rerun skips it)
uses 2 cores better as 2 single-thread processes than as one process on 2 threads: small models
scale poorly across threads. ``run_stages`` starts each stage as its own command once the stages it
needs have finished, always the ready stage of highest rank first (its cost plus that of the stages
waiting for it: list scheduling, so that neither a prerequisite nor a long stage ends up last), logs each to ``LOGDIR/NAME.log`` (':' and '/' of NAME as '-') and prints one line per start and finish.

A stage that fails stops no other; the others run to the end, so nothing finished is lost, and the
call returns the names of the failed stages (their log's last lines are printed).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field


@dataclass
class Stage:
    name: str
    argv: list[str]
    cost: float  # any unit, the same for every stage: only the order depends on it
    needs: list[str] = field(default_factory=list)


def log_path(logdir: str, name: str) -> str:
    return os.path.join(logdir, name.replace(":", "-").replace("/", "-") + ".log")


def _tail(path: str, n: int = 15) -> str:
    with open(path, errors="replace") as f:
        return "".join(f.readlines()[-n:])


def run_stages(stages: list[Stage], jobs: int, logdir: str, threads: int = 1) -> list[str]:
    os.makedirs(logdir, exist_ok=True)
    # a stage that others wait for goes first: its rank is its cost plus the cost of all that needs it
    rank = {s.name: s.cost + sum(o.cost for o in stages if s.name in o.needs) for s in stages}
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    pending = {s.name: s for s in stages}
    running: dict[str, tuple[subprocess.Popen, float, object]] = {}
    done: set[str] = set()
    failed: list[str] = []
    t0 = time.time()
    try:
        while pending or running:
            ready = sorted((s for s in pending.values() if all(n in done for n in s.needs)),
                           key=lambda s: -rank[s.name])
            blocked = [s.name for s in pending.values() if any(n in failed for n in s.needs)]
            for name in blocked:  # a stage whose prerequisite failed cannot run
                del pending[name]
                failed.append(name)
                print(f"[{_clock(t0)}] {name}: skipped, a stage it needs failed", flush=True)
            for s in ready[:max(0, jobs - len(running))]:
                log = open(log_path(logdir, s.name), "w")
                proc = subprocess.Popen(s.argv, stdout=log, stderr=subprocess.STDOUT, env=env)
                running[s.name] = (proc, time.time(), log)
                del pending[s.name]
                print(f"[{_clock(t0)}] {s.name}: started ({len(done) + len(failed)}/{len(stages)} finished)", flush=True)
            if not running:
                break
            time.sleep(0.5)
            for name, (proc, start, log) in list(running.items()):
                if proc.poll() is None:
                    continue
                log.close()
                del running[name]
                if proc.returncode == 0:
                    done.add(name)
                    print(f"[{_clock(t0)}] {name}: done in {time.time() - start:.0f} s", flush=True)
                else:
                    failed.append(name)
                    path = log_path(logdir, name)
                    print(f"[{_clock(t0)}] {name}: FAILED (exit {proc.returncode}), {path}:\n{_tail(path)}",
                          file=sys.stderr, flush=True)
    finally:
        for proc, _, log in running.values():  # interrupted: stop the workers; their stages resume later
            proc.terminate()
            proc.wait()
            log.close()
    return failed


def _clock(t0: float) -> str:
    s = int(time.time() - t0)
    return f"{s // 60:3d}:{s % 60:02d}"
