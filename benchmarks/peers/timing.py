"""Timed calls and peak memory of the running process (standard library only)."""

from __future__ import annotations

import time


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def time_calls(fn, seconds: float, min_calls: int) -> list[float]:
    """ms of each call of fn after one warmup call, for at least min_calls calls and about seconds."""
    fn()  # warmup
    times = []
    t_end = time.perf_counter() + seconds
    while len(times) < min_calls or time.perf_counter() < t_end:
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return times
