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
    [layers."features.0"]       # module name, as in model.named_modules()
    density = 0.84              # fraction kept
    bits = 8                    # optional per-layer weight bits
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
}
# architecture name -> preset file for recipe "fashion-mnist": the paper's densities with fewer bits on
# the largest fc layer, which reaches the paper's LeNet ratios on Fashion-MNIST (see the files)
FASHION_PRESETS = {
    "lenet-300-100": "fashion-mnist-lenet-300-100.toml",
    "lenet-5": "fashion-mnist-lenet-5.toml",
}
FAMILIES = {"deep-compression": PRESETS, "fashion-mnist": FASHION_PRESETS}
DEFAULT_SPARSITY = 0.8
DEFAULTS = {"conv_bits": 8, "fc_bits": 5, "index_bits": 5, "scope": "layer", "init": "linear"}
_DEFAULT_KEYS = {"conv_bits", "fc_bits", "index_bits", "scope", "init", "sparsity"}
_LAYER_KEYS = {"density", "bits", "index_bits", "label"}


@dataclass
class Recipe:
    name: str
    source: str
    defaults: dict = field(default_factory=dict)
    layers: dict[str, dict] = field(default_factory=dict)
    arch: str = "*"

    def to_json(self) -> dict:
        return {"name": self.name, "source": self.source, "arch": self.arch,
                "defaults": dict(self.defaults), "layers": {k: dict(v) for k, v in self.layers.items()}}


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
    for key in ("conv_bits", "fc_bits"):
        if not (isinstance(defaults[key], int) and 1 <= defaults[key] <= 8):
            raise RecipeError(f"recipe {source}: {key} must be an integer in 1..8")
    if not (isinstance(defaults["index_bits"], int) and 1 <= defaults["index_bits"] <= 12):
        raise RecipeError(f"recipe {source}: index_bits must be an integer in 1..12")
    if defaults["scope"] not in ("layer", "global"):
        raise RecipeError(f"recipe {source}: scope must be 'layer' or 'global'")
    if "sparsity" in defaults and not (isinstance(defaults["sparsity"], (int, float)) and 0 <= defaults["sparsity"] <= 1):
        raise RecipeError(f"recipe {source}: sparsity must be in [0, 1]")
    return Recipe(name=str(data.get("name", Path(source).stem)), source=source, defaults=defaults,
                  layers={k: dict(v) for k, v in layers.items()}, arch=str(data.get("arch", "*")))


def _read_builtin(filename: str) -> Recipe:
    text = resources.files(__name__).joinpath(filename).read_text(encoding="utf-8")
    return _validate(tomllib.loads(text), filename)


def load_recipe(spec: str | None, arch: str | None = None) -> Recipe:
    """A recipe by name (``deep-compression`` or ``fashion-mnist``, resolved by architecture, or a preset's
    file stem) or path."""
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
        preset = FAMILIES[spec].get(normalize_arch(arch))
        if preset is None and spec != "deep-compression":
            raise RecipeError(f"recipe {spec!r} has presets for {', '.join(FAMILIES[spec])} only, not "
                              f"{arch or 'this model'!r}; use 'deep-compression' or a TOML file")
        return _read_builtin(preset or "deep-compression.toml")  # deep-compression: generic defaults
    builtin = {p[:-5]: p for fam in FAMILIES.values() for p in fam.values()}
    builtin["deep-compression-generic"] = "deep-compression.toml"
    if spec in builtin:
        return _read_builtin(builtin[spec])
    raise RecipeError(f"unknown recipe {spec!r}: use 'deep-compression', 'fashion-mnist', one of {', '.join(sorted(builtin))}, "
                      f"or a path to a .toml file")
