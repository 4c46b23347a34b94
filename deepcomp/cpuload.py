"""How much CPU other processes used while a block of code ran: the check that tells a benchmark
whether its timings can be trusted on a shared machine. Standard library only (Linux /proc), so the
peer benchmark's workers can use it in any environment."""

from __future__ import annotations

import os
import time


def _busy_seconds() -> float | None:
    """CPU-seconds all cores have spent busy since boot, or None where /proc/stat is missing."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_seconds(children: bool = False) -> float:
    t = os.times()  # every thread of this process (and of its waited-for children when asked)
    return t.user + t.system + (t.children_user + t.children_system if children else 0.0)


class ForeignLoad:
    """``with ForeignLoad() as load: ...`` (or ``start()`` ... ``stop()``) then ``load.cores``: CPU-seconds per second that processes
    other than this one used meanwhile (0 on a quiet machine, up to the core count), None where it
    cannot be measured. It resolves to the kernel's clock tick (10 ms): blocks well above 100 ms.
    ``children=True`` counts this process's child processes as its own (a driver of worker
    processes); a child's time counts once it has been waited for."""

    cores: float | None = None

    def __init__(self, children: bool = False):
        self.children = children

    def start(self) -> "ForeignLoad":
        self._busy0, self._own0, self._t0 = _busy_seconds(), _own_seconds(self.children), time.perf_counter()
        return self

    def stop(self) -> float | None:
        wall = time.perf_counter() - self._t0
        busy = _busy_seconds()
        if busy is not None and self._busy0 is not None:
            foreign = max(0.0, (busy - self._busy0) - (_own_seconds(self.children) - self._own0)) / max(wall, 1e-9)
            self.cores = min(foreign, float(os.cpu_count() or 1))  # tick rounding on short blocks
        return self.cores

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False
