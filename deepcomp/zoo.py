"""Models deepcomp knows by name, and loading a model from whatever the user points at.

Names: ``zoo:lenet-300-100`` and ``zoo:lenet-5`` (the two MNIST networks of the Deep Compression
paper) and ``torchvision:NAME`` (any torchvision classification model, randomly initialised: there
are no pretrained downloads here; pass ``weights=`` a state_dict file).

Files: a deepcomp model file (:func:`save_model`), a TorchScript file, an ONNX file (``.onnx``, read by
deepcomp.capture.onnx), a plain state_dict together with ``arch=``, or (only with ``trust_pickle=True``) a whole pickled ``nn.Module``. Every file is read
with ``torch.load(weights_only=True)`` unless the user trusts it.
"""

from __future__ import annotations

import difflib
import os
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from deepcomp.errors import ModelLoadError

MODEL_FORMAT = "deepcomp-model"

# --------------------------------------------------------------------------------------------------
# The paper's MNIST networks


class LeNet300100(nn.Module):
    """LeNet-300-100: 784-300-100-10 fully connected with ReLU (266,610 parameters)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.flatten = nn.Flatten(1)
        self.fc1 = nn.Linear(28 * 28, 300)
        self.relu1 = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(300, 100)
        self.relu2 = nn.ReLU(inplace=True)
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x):
        x = self.flatten(x)
        x = self.relu1(self.fc1(x))
        x = self.relu2(self.fc2(x))
        return self.fc3(x)


class LeNet5(nn.Module):
    """Caffe's LeNet-5 as in Deep Compression: conv 20@5x5, pool, conv 50@5x5, pool, fc 500, fc 10.

    431,080 parameters; input [1, 28, 28].
    """

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, kernel_size=5)
        self.pool1 = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(20, 50, kernel_size=5)
        self.pool2 = nn.MaxPool2d(2, 2)
        self.flatten = nn.Flatten(1)
        self.fc1 = nn.Linear(50 * 4 * 4, 500)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x):
        x = self.pool1(self.conv1(x))
        x = self.pool2(self.conv2(x))
        x = self.flatten(x)
        x = self.relu(self.fc1(x))
        return self.fc2(x)


class VGG16Small(nn.Module):
    """VGG-16's layout for 32x32 inputs at 1/8 of its width, with BatchNorm: 13 3x3 convs in five
    blocks (2, 2, 3, 3, 3 convs of 8, 16, 32, 64, 64 channels, each conv followed by BatchNorm and
    ReLU, each block by a 2x2 max-pool) and VGG's three fc layers (64-128-128-classes).

    ~0.26M parameters, ~5M multiply-adds per 32x32 sample: its Fashion-MNIST baseline (``?pad=2``)
    trains in minutes on 2 cores. Module names follow torchvision's vgg16_bn (``features.N``,
    ``classifier.N``)."""

    BLOCKS = ((2, 8), (2, 16), (3, 32), (3, 64), (3, 64))

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for convs, width in self.BLOCKS:
            for _ in range(convs):
                layers += [nn.Conv2d(c, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
                c = width
            layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Sequential(nn.Linear(c, 128), nn.ReLU(inplace=True), nn.Linear(128, 128),
                                        nn.ReLU(inplace=True), nn.Linear(128, num_classes))

    def forward(self, x):
        return self.classifier(self.flatten(self.features(x)))


_ZOO = {
    "lenet-300-100": (LeNet300100, (1, 28, 28)),
    "lenet-5": (LeNet5, (1, 28, 28)),
    "vgg16-small": (VGG16Small, (1, 32, 32)),
}
_ZOO_ALIASES = {"lenet300100": "lenet-300-100", "lenet-300": "lenet-300-100", "lenet5": "lenet-5"}

# torchvision models whose natural input is not 224x224.
_TV_INPUT = {"inception_v3": (3, 299, 299)}


@dataclass
class LoadedModel:
    """A model ready for compression: the module (eval mode), its architecture name, the shape of one
    input sample (no batch dimension) and where it came from."""

    model: nn.Module
    arch: str
    input_shape: tuple[int, ...]
    source: str


# --------------------------------------------------------------------------------------------------
# Names


def _torchvision_names() -> list[str]:
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))


def _split_name(name: str) -> tuple[str, str]:
    """('zoo' | 'torchvision', bare name) for 'zoo:lenet-5', 'torchvision:resnet18', 'lenet-5', 'resnet18'."""
    name = name.strip()
    if ":" in name:
        kind, _, bare = name.partition(":")
        kind = kind.lower()
        if kind in ("tv", "torchvision"):
            return "torchvision", bare
        if kind == "zoo":
            key = bare.lower()
            return "zoo", _ZOO_ALIASES.get(key, key)
        if _looks_like_code(name):
            return "user", name
        raise ModelLoadError(
            f"unknown model namespace {kind!r} in {name!r}: use zoo:NAME (lenet-300-100, lenet-5) or "
            "torchvision:NAME (e.g. torchvision:resnet18)"
        )
    key = name.lower()
    key = _ZOO_ALIASES.get(key, key)
    if key in _ZOO:
        return "zoo", key
    return "torchvision", name


# --------------------------------------------------------------------------------------------------
# The user's own architecture: module:Class or path/to/file.py:Class


def _looks_like_code(spec: str) -> bool:
    where, _, cls = spec.rpartition(":")
    return cls.isidentifier() and (where.endswith(".py") or all(p.isidentifier() for p in where.split(".")))


_IMPORTABLE = ("run deepcomp from the directory that holds the module (the working directory is importable) "
               "or add that directory to PYTHONPATH")


def _import_user_module(where: str):
    """The module of a user spec, with the working directory importable."""
    import importlib
    import importlib.util
    import sys

    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        if not where.endswith(".py"):
            return importlib.import_module(where)
        if not os.path.isfile(where):
            raise ModelLoadError(f"--arch: the file {where!r} does not exist")
        name = os.path.splitext(os.path.basename(where))[0]
        sys.path.insert(0, os.path.dirname(os.path.abspath(where)))  # so it can import its siblings
        spec = importlib.util.spec_from_file_location(name, where)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # pickles and dataclasses look their module up here
        spec.loader.exec_module(module)
        return module
    except ImportError as e:
        what = (f"unknown model namespace {where!r}, and no module of that name to import"
                if isinstance(e, ModuleNotFoundError) and e.name == where.split(".")[0] else f"cannot import {where!r}: {e}")
        raise ModelLoadError(f"{what}. A model name is zoo:NAME or torchvision:NAME; your own class is module:Class "
                             f"or path/file.py:Class, and to import it {_IMPORTABLE}") from None
    except ModelLoadError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's code failed while importing
        raise ModelLoadError(f"importing {where!r} failed: {type(e).__name__}: {e}") from None


def _build_user_arch(spec: str, num_classes: int | None) -> tuple[nn.Module, tuple[int, ...]]:
    """An instance of the user's class ``module:Class`` / ``file.py:Class`` and its guessed input shape."""
    import inspect

    where, _, cls_name = spec.rpartition(":")
    cls = getattr(_import_user_module(where), cls_name, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ModelLoadError(f"{where!r} has no nn.Module subclass named {cls_name!r}")
    try:
        takes_classes = "num_classes" in inspect.signature(cls).parameters
        model = cls(num_classes=num_classes) if num_classes is not None and takes_classes else cls()
    except Exception as e:  # noqa: BLE001 - the user's constructor
        raise ModelLoadError(f"cannot build {cls_name}(): {type(e).__name__}: {e}; --arch needs a class that "
                             "builds with no arguments (or with num_classes=)") from None
    shape = _guess_input_shape(model)
    if shape is None:
        raise ModelLoadError(f"cannot tell the input shape of {cls_name}; pass --input-shape")
    return model, shape


def _unknown(name: str, choices: list[str], what: str) -> ModelLoadError:
    close = difflib.get_close_matches(name, choices, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return ModelLoadError(f"unknown {what} {name!r}.{hint} Known: {', '.join(choices[:40])}"
                          + (", ..." if len(choices) > 40 else ""))


def resolve_arch(name: str, num_classes: int | None = None, *, seed: int = 0) -> tuple[nn.Module, tuple[int, ...]]:
    """A freshly initialised model for an architecture name and the shape of one input sample.

    ``name`` is ``zoo:lenet-300-100``, ``zoo:lenet-5``, ``torchvision:NAME`` or a bare name of either, or
    the user's own class as ``module:Class`` or ``path/to/file.py:Class`` (working directory importable).
    The initialisation draws from torch's generator seeded with ``seed`` (the caller's random state is
    left as it was), so the same name and seed give the same weights.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _build_arch(name, num_classes)


def _build_arch(name: str, num_classes: int | None) -> tuple[nn.Module, tuple[int, ...]]:
    kind, bare = _split_name(name)
    if kind == "user":
        return _build_user_arch(bare, num_classes)
    if kind == "zoo":
        if bare not in _ZOO:
            raise _unknown(bare, sorted(_ZOO), "zoo model")
        cls, shape = _ZOO[bare]
        model = cls(num_classes=num_classes) if num_classes is not None else cls()
        return model, shape
    import torchvision.models as tvm

    names = _torchvision_names()
    if bare not in names:
        raise _unknown(bare, names + [f"zoo:{k}" for k in _ZOO], "model")
    kwargs = {} if num_classes is None else {"num_classes": int(num_classes)}
    if bare in ("inception_v3", "googlenet"):
        kwargs["aux_logits"] = False
        kwargs["init_weights"] = True
    try:
        model = tvm.get_model(bare, weights=None, **kwargs)
    except TypeError as e:
        raise ModelLoadError(f"cannot build torchvision:{bare} with {kwargs}: {e}") from None
    return model, _TV_INPUT.get(bare, (3, 224, 224))


def _arch_label(name: str) -> str:
    kind, bare = _split_name(name)
    return bare


def _num_classes_of(model: nn.Module) -> int | None:
    """Output width of the model's last Linear (or, lacking one, last Conv2d)."""
    last_linear = last_conv = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            last_linear = m
        elif isinstance(m, nn.Conv2d):
            last_conv = m
    if last_linear is not None:
        return int(last_linear.out_features)
    if last_conv is not None:
        return int(last_conv.out_channels)
    return None


def _infer_num_classes(arch: str, state_dict: Mapping[str, torch.Tensor]) -> int | None:
    """The class count a state_dict was trained for, read off the last classifier weight."""
    model, _ = resolve_arch(arch)
    last = None
    for name, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            last = name
    if last is None:
        return None
    w = state_dict.get(f"{last}.weight")
    if isinstance(w, torch.Tensor) and w.dim() >= 1:
        return int(w.shape[0])
    return None


# --------------------------------------------------------------------------------------------------
# Files


def _load_state_dict_into(model: nn.Module, state_dict: Mapping, where: str) -> None:
    if not isinstance(state_dict, Mapping) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ModelLoadError(f"{where} is not a state_dict (a mapping of names to tensors)")
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        msg = " ".join(str(e).split())
        raise ModelLoadError(
            f"the weights in {where} do not fit the architecture: {msg[:600]}. Check --arch (and "
            "--num-classes) against the model the weights came from"
        ) from None


def _torch_load_safe(path: str):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure here is the user's file
        text = str(e)
        if "Weights only load failed" in text and ("Unsupported global" in text or "GLOBAL" in text):
            raise _PickleNeeded(text) from None
        if "Weights only load failed" in text:
            detail = "not a torch.save file of tensors"
        else:
            detail = text.strip().splitlines()[0] if text.strip() else type(e).__name__
        raise ModelLoadError(
            f"cannot read {path!r} as a PyTorch file ({detail}); give a deepcomp model file, "
            "a TorchScript file or a state_dict saved with torch.save"
        ) from None


class _PickleNeeded(Exception):
    pass


def _is_torchscript(path: str) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def _unwrap_checkpoint(obj):
    """A state_dict inside a common checkpoint wrapper ({"state_dict": ...}, {"model": ...})."""
    if isinstance(obj, Mapping) and obj and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return inner
    return obj


def _guess_input_shape(model: nn.Module) -> tuple[int, ...] | None:
    """One sample's shape from the first weight: a 4-D conv weight -> (C, 224, 224) (or 28x28 for one
    channel), a 2-D linear weight -> (in_features,)."""
    for name, p in model.named_parameters():
        if not name.endswith("weight"):
            continue
        if p.dim() == 4:
            c = int(p.shape[1])
            return (1, 28, 28) if c == 1 else (c, 224, 224)
        if p.dim() == 2:
            return (int(p.shape[1]),)
        break
    return None


def _shape_for(model: nn.Module, arch: str | None, input_shape, path: str) -> tuple[int, ...]:
    if input_shape is not None:
        return tuple(int(d) for d in input_shape)
    if arch is not None:
        try:
            return resolve_arch(arch)[1]
        except ModelLoadError:
            pass
    shape = _guess_input_shape(model)
    if shape is None:
        raise ModelLoadError(f"cannot tell the input shape of the model in {path!r}; give it with --input-shape C,H,W (input_shape= in Python)")
    return shape


def load_model(
    spec: str,
    *,
    weights: str | None = None,
    arch: str | None = None,
    trust_pickle: bool = False,
    num_classes: int | None = None,
    input_shape: tuple[int, ...] | None = None,
    seed: int = 0,
) -> LoadedModel:
    """Load a model from a name (``zoo:...``, ``torchvision:...``) or a file. See the module docstring.

    ``weights`` is a state_dict file for a named architecture; ``arch`` names the architecture of a
    plain state_dict file; ``input_shape`` overrides the shape of one sample (no batch dimension).
    ``seed`` seeds the initialisation of a named architecture without weights. The model is returned
    in eval mode.
    """
    spec = os.fspath(spec)
    looks_like_path = os.sep in spec or spec.endswith((".pt", ".pth", ".bin", ".ckpt", ".onnx"))
    if not os.path.exists(spec) and looks_like_path:
        raise ModelLoadError(f"model file {spec!r} does not exist")
    if not os.path.exists(spec) and (":" in spec or arch is None):
        return _load_named(spec, weights=weights, num_classes=num_classes, input_shape=input_shape, seed=seed)
    if weights is not None:
        raise ModelLoadError(f"weights= goes with a model name (zoo:... or torchvision:...), not with the file {spec!r}")
    if not os.path.exists(spec):
        raise ModelLoadError(f"model file {spec!r} does not exist")
    if os.path.isdir(spec):
        raise ModelLoadError(f"{spec!r} is a directory; give a model file or a name such as zoo:lenet-5")

    if spec.lower().endswith(".onnx"):
        if arch is not None:
            raise ModelLoadError(f"{spec!r} is an ONNX file, which holds its architecture; drop --arch")
        from deepcomp.capture.onnx import load_onnx

        return load_onnx(spec, input_shape)

    if _is_torchscript(spec):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                model = torch.jit.load(spec, map_location="cpu")
        except Exception as e:  # noqa: BLE001
            raise ModelLoadError(f"cannot load the TorchScript file {spec!r}: {str(e).splitlines()[0]}") from None
        model.eval()
        label = arch or getattr(model, "original_name", "torchscript")
        return LoadedModel(model, label, _shape_for(model, arch, input_shape, spec), f"torchscript:{spec}")

    try:
        obj = _torch_load_safe(spec)
    except _PickleNeeded:
        if not trust_pickle:
            raise ModelLoadError(
                f"{spec!r} holds a pickled Python object (a whole nn.Module?), and loading a pickled module "
                "runs arbitrary code. Pass --trust-pickle (trust_pickle=True) if you trust the file, or save "
                "the model as TorchScript (torch.jit.save) or as a state_dict and pass --arch"
            ) from None
        import sys

        if os.getcwd() not in sys.path and "" not in sys.path:  # the pickle's classes may live in the cwd
            sys.path.insert(0, os.getcwd())
        try:
            obj = torch.load(spec, map_location="cpu", weights_only=False)
        except (ImportError, AttributeError) as e:  # the pickled class is not importable here
            raise ModelLoadError(
                f"cannot unpickle {spec!r}: {str(e).splitlines()[0]}. The file names a class by its module: "
                f"{_IMPORTABLE}; a class defined in a script's __main__ cannot be found, so move it into a "
                "module, or save a state_dict and pass --arch module:Class") from None
        except Exception as e:  # noqa: BLE001
            raise ModelLoadError(f"cannot unpickle {spec!r}: {str(e).splitlines()[0] if str(e) else e!r}") from None
        if isinstance(obj, nn.Module):
            obj.eval()
            label = arch or type(obj).__name__
            return LoadedModel(obj, label, _shape_for(obj, arch, input_shape, spec), f"pickle:{spec}")
        # A trusted pickle that is not a module: treat it like any other loaded object below.

    if isinstance(obj, nn.Module):  # only reachable with trust_pickle
        obj.eval()
        return LoadedModel(obj, arch or type(obj).__name__, _shape_for(obj, arch, input_shape, spec), f"pickle:{spec}")

    if isinstance(obj, Mapping) and obj.get("format") == MODEL_FORMAT:
        return _load_deepcomp_file(obj, spec, arch=arch, num_classes=num_classes, input_shape=input_shape)

    state_dict = _unwrap_checkpoint(obj)
    if isinstance(state_dict, Mapping) and state_dict and all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        if arch is None:
            raise ModelLoadError(
                f"{spec!r} is a plain state_dict: it holds weights but not the architecture. Pass --arch "
                "(arch=) with a name such as lenet-5, resnet18 or torchvision:vgg16"
            )
        if num_classes is None:
            num_classes = _infer_num_classes(arch, state_dict)
        model, shape = resolve_arch(arch, num_classes)
        _load_state_dict_into(model, state_dict, repr(spec))
        model.eval()
        return LoadedModel(model, _arch_label(arch), tuple(input_shape or shape), f"state_dict:{spec}")

    raise ModelLoadError(
        f"{spec!r} is not a model file deepcomp understands (got a {type(obj).__name__}). Give a deepcomp "
        "model file, a TorchScript file, or a state_dict with --arch"
    )


def _load_named(spec, *, weights, num_classes, input_shape, seed=0) -> LoadedModel:
    if weights is not None and not os.path.exists(weights):
        raise ModelLoadError(f"weights file {weights!r} does not exist")
    if ":" not in spec and _split_name(spec)[0] == "torchvision":
        # A bare word that is neither a file nor a zoo name: say both possibilities.
        import torchvision.models as tvm

        if spec not in tvm.list_models(module=tvm):
            raise ModelLoadError(
                f"{spec!r} is neither an existing file nor a known model name. Use zoo:lenet-300-100, "
                "zoo:lenet-5, torchvision:NAME, or a path to a model file"
            )
    sd = None
    if weights is not None:
        try:
            sd = _torch_load_safe(weights)
        except _PickleNeeded:
            raise ModelLoadError(
                f"{weights!r} is not a plain state_dict (it needs pickle to load); save it with "
                "torch.save(model.state_dict(), path)"
            ) from None
        sd = _unwrap_checkpoint(sd)
        if isinstance(sd, Mapping) and sd.get("format") == MODEL_FORMAT:
            sd = sd["state_dict"]
        if num_classes is None and isinstance(sd, Mapping):
            num_classes = _infer_num_classes(spec, sd)
    model, shape = resolve_arch(spec, num_classes, seed=seed)
    if sd is not None:
        _load_state_dict_into(model, sd, repr(weights))
    model.eval()
    kind, bare = _split_name(spec)
    return LoadedModel(model, bare, tuple(input_shape or shape), f"{kind}:{bare}" + (f"+{weights}" if weights else ""))


def _load_deepcomp_file(obj, path, *, arch, num_classes, input_shape) -> LoadedModel:
    file_arch = obj.get("arch")
    if not isinstance(file_arch, str):
        raise ModelLoadError(f"{path!r} is a deepcomp model file without an architecture name; re-save it")
    if arch is not None and _arch_label(arch) != _arch_label(file_arch):
        raise ModelLoadError(f"{path!r} holds a {file_arch} model, not {arch}; drop --arch")
    nc = num_classes if num_classes is not None else obj.get("num_classes")
    model, shape = resolve_arch(file_arch, nc)
    _load_state_dict_into(model, obj.get("state_dict"), repr(path))
    model.eval()
    stored = obj.get("input_shape")
    shape = tuple(input_shape or stored or shape)
    return LoadedModel(model, _arch_label(file_arch), tuple(int(d) for d in shape), f"deepcomp-model:{path}")


def save_model(path: str, model: nn.Module, arch: str, input_shape, extra: dict | None = None) -> None:
    """Write a model as a deepcomp model file: architecture name, input shape, class count and the
    state_dict, loadable with ``torch.load(weights_only=True)``. Written to a temporary name and
    renamed into place. ``arch`` must be a name :func:`resolve_arch` knows."""
    resolve_arch(arch, _num_classes_of(model))  # fail now, not when loading
    payload = {
        "format": MODEL_FORMAT,
        "arch": arch,
        "input_shape": [int(d) for d in input_shape],
        "num_classes": _num_classes_of(model),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
    }
    if extra:
        payload["extra"] = dict(extra)
    import io

    from deepcomp.dcz import atomic_write

    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write(path, buf.getvalue())


# -------------------------------------------------------------------------------- .dcz -> torch


def classifier_head(model: nn.Module) -> str | None:
    """Name of the last Linear layer (the classifier head transfer learning replaces), or None."""
    name = None
    for n, m in model.named_modules():
        if isinstance(m, nn.Linear):
            name = n
    return name


def dcz_to_torch(path: str, num_classes: int | None = None) -> tuple[nn.Module, dict]:
    """The model in a .dcz file as a torch module (architecture from the file's meta "arch", weights
    from ``deepcomp.dcz.decompress``). With ``num_classes`` different from the file's, the classifier
    head (the last Linear) is left freshly initialised. Returns ``(model, meta)``."""
    from deepcomp.dcz import decompress, read_dcz

    meta = read_dcz(path).meta
    arch = meta.get("arch")
    if not arch:
        raise ModelLoadError(f"{path}: the file does not record its architecture (meta 'arch')")
    sd = decompress(path)
    probe, _ = resolve_arch(arch)
    head = classifier_head(probe)
    file_classes = int(sd[f"{head}.weight"].shape[0]) if head and f"{head}.weight" in sd else None
    model, _ = resolve_arch(arch, num_classes or file_classes)
    own = model.state_dict()
    load = {}
    for k, v in sd.items():
        if k not in own:
            raise ModelLoadError(f"{path}: tensor {k!r} does not belong to a {arch} model")
        if tuple(own[k].shape) == tuple(v.shape):
            load[k] = torch.from_numpy(np.array(v))
        elif not (head and k.startswith(head + ".")):
            raise ModelLoadError(f"{path}: tensor {k!r} has shape {tuple(v.shape)}, a {arch} model wants "
                                f"{tuple(own[k].shape)}")
    if num_classes is not None and num_classes != file_classes:
        load = {k: v for k, v in load.items() if not k.startswith(head + ".")}
    missing = [k for k in own if k not in load and not (head and k.startswith(head + "."))]
    if missing:
        raise ModelLoadError(f"{path}: no weights for {', '.join(missing[:5])}")
    model.load_state_dict(load, strict=False)
    model.eval()
    return model, meta

