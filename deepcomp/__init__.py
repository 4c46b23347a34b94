"""deepcomp: Deep Compression for PyTorch models, and a native sparse CPU runtime to run the result.

The deploy side (``deepcomp.load``, ``deepcomp.runtime``) needs numpy and the native extension only.
Everything that needs torch is reached lazily through ``__getattr__`` so that importing this package
never imports torch.
"""

from deepcomp.errors import (  # noqa: F401
    DataError,
    DczError,
    DeepcompError,
    InputShapeError,
    ModelLoadError,
    RecipeError,
    UnsupportedOpError,
)

__version__ = "0.1.0"

# name -> (module, attribute); resolved on first use.
_LAZY = {
    "compress": ("deepcomp.pipeline", "compress"),
    "CompressResult": ("deepcomp.pipeline", "CompressResult"),
    "decompress": ("deepcomp.dcz", "decompress"),
    "read_dcz": ("deepcomp.dcz", "read_dcz"),
    "load": ("deepcomp.runtime", "load"),
    "RuntimeModel": ("deepcomp.runtime", "RuntimeModel"),
    "to_torch": ("deepcomp.torch_adapter", "to_torch"),
    "load_model": ("deepcomp.zoo", "load_model"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'deepcomp' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
