"""Deploy side: load a .dcz file and run it with the native sparse kernels.

Needs numpy and deepcomp._native only; importing this package never imports torch.

    >>> import deepcomp.runtime as rt
    >>> model = rt.load("lenet5.dcz")
    >>> logits = model(x)            # x: float32 [N, 1, 28, 28]
"""

from deepcomp.runtime.executor import (  # noqa: F401
    InputShapeError,
    LayerInfo,
    RuntimeModel,
    get_num_threads,
    load,
    loads,
    native_kernels,
    set_num_threads,
)
from deepcomp.runtime.plan import set_memory_limit  # noqa: F401

__all__ = ["InputShapeError", "LayerInfo", "RuntimeModel", "get_num_threads", "load", "loads",
           "native_kernels", "set_memory_limit", "set_num_threads"]
