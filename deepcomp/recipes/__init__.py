"""Recipes: TOML files giving per-layer density and bits; the paper's presets ship here.

A recipe file::

    name = "my-recipe"
    arch = "alexnet"            # informational ("*" = any)
    [defaults]
    conv_bits = 8               # weight bits of conv layers (paper: 8)
    fc_bits = 5                 # weight bits of fc layers (paper: 5)
    index_bits = 4              # relative-index bits (paper: 4 for AlexNet, 5 for VGG-16 / LeNet)
    scope = "layer"             # or "global": one magnitude threshold across layers
    init = "linear"             # centroid init: linear, density, random, kmeans++
    sparsity = 0.8              # for layers the table below does not list
    block = [1, 4]              # int8 recipes (sparse-int8): prune in blocks of 4 input channels at
                                # one tap ([4, 4]: 4 output channels too); the layers run int8
    calibration = "percentile"  # int8 activation ranges: minmax, percentile (99.99) or mse
    int8_weight_bits = 7        # int8 weight grid (default 7): 7 (-63..63: AVX2 without VNNI then multiplies
                                # every layer with vpmaddubsw, as ONNX Runtime's reduce_range) or 8 (-127..127)
    [layers."features.0"]       # module name, as in model.named_modules()
    density = 0.84              # fraction kept (of the blocks, in an int8 recipe)
    bits = 8                    # optional per-layer weight bits
    int8 = false                # int8 recipes: keep this layer fp32 (pruned unstructured)
    [schedule]                  # how to get there when there is data to retrain on (--data)
    criterion = "magnitude"     # or wanda, relevance, taylor (calibrated on the training split)
    iterative = 5               # pruning steps, masked retraining after each
    finetune_epochs = 3         # retraining epochs per step
    lr = 1e-3                   # learning rate of retraining (Adam, cosine decay per stage)
    codebook_epochs = 2         # centroid-training epochs after k-means (Eq. 3)
    batch_size = 256
    weight_decay = 5e-4

Without data nothing retrains: the weights are pruned in one step (unless ``iterative`` is given as
an argument) with the recipe's criterion, which must then be ``magnitude``. Every field of a recipe
can be overridden by the matching argument of :func:`deepcomp.pipeline.compress` (or CLI flag).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from deepcomp.errors import RecipeError

# architecture name -> preset file for recipe "deep-compression"
PRESETS = {
    "alexnet": "deep-compression-alexnet.toml",
    "vgg16": "deep-compression-vgg16.toml",
    "lenet-300-100": "deep-compression-lenet-300-100.toml",
    "lenet-5": "deep-compression-lenet-5.toml",
    "vgg16-small": "deep-compression-vgg16-small.toml",
}
# architecture name -> preset file for recipe "fashion-mnist": the paper's densities with fewer bits on
# the largest fc layer, which reaches the paper's LeNet ratios on Fashion-MNIST (see the files)
FASHION_PRESETS = {
    "lenet-300-100": "fashion-mnist-lenet-300-100.toml",
    "lenet-5": "fashion-mnist-lenet-5.toml",
}
# architecture name -> preset file for recipe "sparse-int8": the deep-compression densities in 1x4 blocks
INT8_PRESETS = {
    "alexnet": "sparse-int8-alexnet.toml",
    "vgg16": "sparse-int8-vgg16.toml",
    "lenet-5": "sparse-int8-lenet-5.toml",
    "vgg16-small": "sparse-int8-vgg16-small.toml",
}
FAMILIES = {"deep-compression": PRESETS, "fashion-mnist": FASHION_PRESETS, "sparse-int8": INT8_PRESETS}
# the family's file for an architecture it has no preset for
GENERIC = {"deep-compression": "deep-compression.toml", "sparse-int8": "sparse-int8.toml"}
BLOCKS = ([1, 4], [4, 4])
CALIBRATION_METHODS = ("minmax", "percentile", "mse")
DEFAULT_SPARSITY = 0.8
DEFAULTS = {"conv_bits": 8, "fc_bits": 5, "index_bits": 5, "scope": "layer", "init": "linear"}
_DEFAULT_KEYS = {"conv_bits", "fc_bits", "index_bits", "scope", "init", "sparsity", "block", "calibration",
                 "int8_weight_bits"}
INT8_WEIGHT_BITS = (7, 8)
INT8_WEIGHT_BITS_DEFAULT = 7  # docs/int8.md, "Quantization scheme": no accuracy cost measured, AVX2 1.4x faster
CRITERIA = ("magnitude", "wanda", "relevance", "taylor")
# what benchmarks/lenet_fashion.py established for the paper's LeNet tables on Fashion-MNIST: 5 pruning
# steps of 3 retraining epochs, 2 of centroid training (0.1-0.3 points below the dense baseline)
SCHEDULE = {"criterion": "magnitude", "iterative": 5, "finetune_epochs": 3, "lr": 1e-3, "codebook_epochs": 2,
            "batch_size": 256, "weight_decay": 5e-4}
_SCHEDULE_TYPES = {"criterion": str, "iterative": int, "finetune_epochs": int, "lr": float, "codebook_epochs": int,
                   "batch_size": int, "weight_decay": float}
_LAYER_KEYS = {"density", "bits", "index_bits", "label", "int8"}


@dataclass
class Recipe:
    name: str
    source: str
    defaults: dict = field(default_factory=dict)
    layers: dict[str, dict] = field(default_factory=dict)
    arch: str = "*"
    schedule: dict = field(default_factory=lambda: dict(SCHEDULE))

    def to_json(self) -> dict:
        return {"name": self.name, "source": self.source, "arch": self.arch, "defaults": dict(self.defaults),
                "schedule": dict(self.schedule), "layers": {k: dict(v) for k, v in self.layers.items()}}

    def schedule_with(self, **overrides) -> dict:
        """The recipe's schedule with every override that is not None in its place (checked)."""
        unknown = set(overrides) - set(SCHEDULE)
        if unknown:
            raise RecipeError(f"unknown schedule field(s) {', '.join(sorted(unknown))}")
        out = {**self.schedule, **{k: v for k, v in overrides.items() if v is not None}}
        _check_schedule(out, f"recipe {self.name} with the given flags")
        return out


def _check_schedule(sched: dict, source: str) -> None:
    for key, kind in _SCHEDULE_TYPES.items():
        v = sched[key]
        ok = isinstance(v, str) if kind is str else (isinstance(v, (int, float)) and not isinstance(v, bool)
                                                      and (kind is float or float(v).is_integer()))
        if not ok:
            raise RecipeError(f"{source}: schedule {key} must be a{'n integer' if kind is int else ' ' + kind.__name__}, got {v!r}")
    if sched["criterion"] not in CRITERIA:
        raise RecipeError(f"{source}: criterion must be one of {', '.join(CRITERIA)}, got {sched['criterion']!r}")
    for key in ("iterative", "batch_size"):
        if sched[key] < 1:
            raise RecipeError(f"{source}: {key} must be >= 1, got {sched[key]}")
    for key in ("finetune_epochs", "codebook_epochs", "weight_decay"):
        if sched[key] < 0:
            raise RecipeError(f"{source}: {key} must be >= 0, got {sched[key]}")
    if not sched["lr"] > 0:
        raise RecipeError(f"{source}: lr must be > 0, got {sched['lr']}")


def normalize_arch(arch: str | None) -> str:
    """'torchvision:vgg16' -> 'vgg16', 'zoo:lenet-5' -> 'lenet-5'."""
    if not arch:
        return ""
    return arch.split(":", 1)[-1].strip().lower().replace("_", "-") if ":" in arch else arch.strip().lower()


def _validate(data: dict, source: str) -> Recipe:
    if not isinstance(data, dict):
        raise RecipeError(f"recipe {source}: expected a TOML table")
    defaults = dict(DEFAULTS)
    raw_defaults = data.get("defaults", {})
    if not isinstance(raw_defaults, dict):
        raise RecipeError(f"recipe {source}: [defaults] must be a table")
    unknown = set(raw_defaults) - _DEFAULT_KEYS
    if unknown:
        raise RecipeError(f"recipe {source}: unknown key(s) in [defaults]: {', '.join(sorted(unknown))} "
                          f"(allowed: {', '.join(sorted(_DEFAULT_KEYS))})")
    defaults.update(raw_defaults)
    layers = data.get("layers", {})
    if not isinstance(layers, dict):
        raise RecipeError(f"recipe {source}: [layers] must be a table of layer tables")
    for lname, spec in layers.items():
        if not isinstance(spec, dict):
            raise RecipeError(f"recipe {source}: layer {lname!r} must be a table like {{ density = 0.1 }}")
        unknown = set(spec) - _LAYER_KEYS
        if unknown:
            raise RecipeError(f"recipe {source}: layer {lname!r} has unknown key(s) {', '.join(sorted(unknown))}")
        if "density" in spec and not (isinstance(spec["density"], (int, float)) and 0 <= spec["density"] <= 1):
            raise RecipeError(f"recipe {source}: layer {lname!r} density must be in [0, 1]")
        if "bits" in spec and not (isinstance(spec["bits"], int) and 1 <= spec["bits"] <= 8):
            raise RecipeError(f"recipe {source}: layer {lname!r} bits must be an integer in 1..8")
        if "int8" in spec and not isinstance(spec["int8"], bool):
            raise RecipeError(f"recipe {source}: layer {lname!r} int8 must be true or false")
        if spec.get("int8") and "block" not in defaults:
            raise RecipeError(f"recipe {source}: layer {lname!r} says int8 = true, but [defaults] has no block shape")
    for key in ("conv_bits", "fc_bits"):
        if not (isinstance(defaults[key], int) and 1 <= defaults[key] <= 8):
            raise RecipeError(f"recipe {source}: {key} must be an integer in 1..8")
    if not (isinstance(defaults["index_bits"], int) and 1 <= defaults["index_bits"] <= 12):
        raise RecipeError(f"recipe {source}: index_bits must be an integer in 1..12")
    if defaults["scope"] not in ("layer", "global"):
        raise RecipeError(f"recipe {source}: scope must be 'layer' or 'global'")
    if "block" in defaults and defaults["block"] not in BLOCKS:
        raise RecipeError(f"recipe {source}: block must be [1, 4] or [4, 4] (output x input channels), "
                          f"got {defaults['block']!r}")
    if "int8_weight_bits" in defaults and defaults["int8_weight_bits"] not in INT8_WEIGHT_BITS:
        raise RecipeError(f"recipe {source}: int8_weight_bits must be 7 or 8, got {defaults['int8_weight_bits']!r}")
    if "calibration" in defaults and defaults["calibration"] not in CALIBRATION_METHODS:
        raise RecipeError(f"recipe {source}: calibration must be one of {', '.join(CALIBRATION_METHODS)}, "
                          f"got {defaults['calibration']!r}")
    if "sparsity" in defaults and not (isinstance(defaults["sparsity"], (int, float)) and 0 <= defaults["sparsity"] <= 1):
        raise RecipeError(f"recipe {source}: sparsity must be in [0, 1]")
    raw_schedule = data.get("schedule", {})
    if not isinstance(raw_schedule, dict):
        raise RecipeError(f"recipe {source}: [schedule] must be a table")
    unknown = set(raw_schedule) - set(SCHEDULE)
    if unknown:
        raise RecipeError(f"recipe {source}: unknown key(s) in [schedule]: {', '.join(sorted(unknown))} "
                          f"(allowed: {', '.join(SCHEDULE)})")
    schedule = {**SCHEDULE, **raw_schedule}
    _check_schedule(schedule, f"recipe {source}")
    return Recipe(name=str(data.get("name", Path(source).stem)), source=source, defaults=defaults,
                  layers={k: dict(v) for k, v in layers.items()}, arch=str(data.get("arch", "*")), schedule=schedule)


def _read_builtin(filename: str) -> Recipe:
    text = resources.files(__name__).joinpath(filename).read_text(encoding="utf-8")
    return _validate(tomllib.loads(text), filename)


def load_recipe(spec: str | None, arch: str | None = None) -> Recipe:
    """A recipe by name (``deep-compression``, ``fashion-mnist`` or ``sparse-int8``, resolved by
    architecture, or a preset's file stem) or path."""
    spec = spec or "deep-compression"
    path = Path(spec)
    if spec.endswith(".toml") or path.exists():
        if not path.is_file():
            raise RecipeError(f"recipe file {spec!r} does not exist")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise RecipeError(f"recipe {spec}: invalid TOML: {e}") from None
        except UnicodeDecodeError:
            raise RecipeError(f"recipe {spec}: not a UTF-8 text file") from None
        return _validate(data, spec)
    if spec in FAMILIES:
        preset = FAMILIES[spec].get(normalize_arch(arch)) or GENERIC.get(spec)
        if preset is None:
            raise RecipeError(f"recipe {spec!r} has presets for {', '.join(FAMILIES[spec])} only, not "
                              f"{arch or 'this model'!r}; use 'deep-compression' or a TOML file")
        return _read_builtin(preset)
    builtin = {p[:-5]: p for fam in FAMILIES.values() for p in fam.values()}
    builtin["deep-compression-generic"] = "deep-compression.toml"
    builtin["sparse-int8-generic"] = "sparse-int8.toml"
    if spec in builtin:
        return _read_builtin(builtin[spec])
    raise RecipeError(f"unknown recipe {spec!r}: use 'deep-compression', 'fashion-mnist', 'sparse-int8', one of {', '.join(sorted(builtin))}, "
                      f"or a path to a .toml file")
