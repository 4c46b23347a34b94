"""numpy's BLAS on one thread inside the runtime's dense matrix products (attention's matmuls).

OpenBLAS starts its own worker threads beside deepcomp's pool, and they busy-wait long after each
call: on a machine with as many cores as pool threads they take the cores from the sparse kernels
that come next, and a stack of small products (12 heads of 197 x 64 x 197) waits on descheduled
workers (measured on a 2-core AVX2 machine under load: 544 ms multi-threaded, 8.5 ms with one BLAS
thread for ViT-B/16's q k^T). The limit holds only during the runtime's own calls, through
threadpoolctl when it is installed (an optional dependency); without it numpy runs as configured.
"""

from __future__ import annotations

import contextlib

try:
    from threadpoolctl import ThreadpoolController
except ImportError:  # pragma: no cover - optional
    ThreadpoolController = None

_controller = None


def one_thread():
    """A context in which numpy's BLAS uses one thread (a no-op without threadpoolctl)."""
    global _controller
    if ThreadpoolController is None:
        return contextlib.nullcontext()
    if _controller is None:
        _controller = ThreadpoolController()
    return _controller.limit(limits=1, user_api="blas")
