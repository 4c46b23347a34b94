"""Datasets for training and evaluation: IDX files (MNIST / Fashion-MNIST), image folders, numpy arrays.

Dataset specs (the CLI's ``--data``)::

    fashion-mnist[:DIR]     IDX files; DIR defaults to /usr/share/datasets/fashion-mnist
                            (fashion-mnist?pad=2: zero-padded to 32x32, for zoo:vgg16-small)
                            (Debian: apt-get install dataset-fashion-mnist)
    mnist:DIR               IDX files in DIR (train-images-idx3-ubyte[.gz], ...)
    imagefolder:DIR         torchvision ImageFolder; DIR/train and DIR/test (or DIR/val) when present,
                            else DIR itself for every split
    npz:FILE.npz            numpy arrays x_train, y_train, x_test, y_test

Any spec may end in options after ``?``: ``fashion-mnist?classes=0-4&limit=2000``.
``classes`` keeps only those labels (``0-4``, ``5,7,9``) and remaps them to 0..K-1 in the order
given; ``limit`` keeps the first N samples of each split (after the class filter).

IDX files are parsed with numpy: the magic number, the dimension count and the dimensions are checked
against the file's size before the data is trusted. Images become float32 [N, 1, H, W], normalised with
the dataset's mean and standard deviation (computed on the training split of that dataset, fixed
constants for MNIST and Fashion-MNIST).
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from deepcomp.errors import DataError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_HINT = "install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu, as root)"
MNIST_HINT = "download the four IDX files from http://yann.lecun.com/exdb/mnist/ into that directory"

# mean, std of the training images scaled to [0, 1]
NORMALIZATION = {
    "fashion-mnist": (0.2860, 0.3530),
    "mnist": (0.1307, 0.3081),
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# IDX element types: code -> (numpy big-endian dtype)
_IDX_TYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_IDX_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


# ----------------------------------------------------------------------------------------- IDX files
def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parse the bytes of an IDX file (already gunzipped) into an array in native byte order."""
    if len(data) < 4:
        raise DataError(f"{name}: not an IDX file (only {len(data)} bytes)")
    if data[0] != 0 or data[1] != 0:
        raise DataError(f"{name}: not an IDX file (bad magic {data[:4].hex()})")
    code, ndim = data[2], data[3]
    if code not in _IDX_TYPES:
        raise DataError(f"{name}: unknown IDX element type 0x{code:02x}")
    if ndim == 0:
        raise DataError(f"{name}: IDX file with zero dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{name}: truncated IDX header ({len(data)} bytes, need {header})")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_TYPES[code]
    count = int(np.prod(dims, dtype=np.int64))
    expected = header + count * dtype.itemsize
    if len(data) != expected:
        raise DataError(f"{name}: IDX dimensions {dims} need {expected} bytes, the file has {len(data)} "
                        "(truncated or corrupted; re-download it)")
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str) -> np.ndarray:
    """Read an IDX file, gzip-compressed or not (detected from the content, not the name)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataError(f"{path}: corrupted gzip data ({e})") from None
    return parse_idx(raw, path)


def _find_idx(directory: str, stem: str) -> str | None:
    for cand in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        p = os.path.join(directory, cand)
        if os.path.isfile(p):
            return p
    return None


def load_idx_split(directory: str, split: str, *, hint: str = "") -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, H, W], labels int64 [N]) of one split of an MNIST-layout directory."""
    if split not in _IDX_NAMES:
        raise DataError(f"unknown split {split!r}; use 'train' or 'test'")
    img_stem, lab_stem = _IDX_NAMES[split]
    if not os.path.isdir(directory):
        raise DataError(f"dataset directory {directory} does not exist; {hint}".rstrip("; "))
    img_path, lab_path = _find_idx(directory, img_stem), _find_idx(directory, lab_stem)
    if img_path is None or lab_path is None:
        missing = img_stem if img_path is None else lab_stem
        raise DataError(f"{missing}[.gz] not found in {directory}; {hint}".rstrip("; "))
    images, labels = read_idx(img_path), read_idx(lab_path)
    if images.ndim != 3 or labels.ndim != 1:
        raise DataError(f"{directory}: expected images [N, H, W] and labels [N], got {images.shape} and {labels.shape}")
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{directory}: {images.shape[0]} images but {labels.shape[0]} labels in the {split} split")
    return images, labels.astype(np.int64)


# ------------------------------------------------------------------------------------------ datasets
@dataclass
class ArrayDataset:
    """An in-memory dataset: float32 inputs [N, ...] and int64 labels [N]. Indexable like a torch Dataset;
    ``loader()`` batches it without a per-sample Python loop."""

    x: np.ndarray
    y: np.ndarray
    classes: list = field(default_factory=list)   # names of the (remapped) classes
    name: str = ""

    def __post_init__(self):
        if len(self.x) != len(self.y):
            raise DataError(f"{self.name or 'arrays'}: {len(self.x)} inputs but {len(self.y)} labels")
        if not self.classes:
            n = int(self.y.max()) + 1 if len(self.y) else 0
            self.classes = [str(i) for i in range(n)]

    def __len__(self) -> int:
        return int(len(self.y))

    def __getitem__(self, i):
        import torch

        return torch.from_numpy(self.x[i]), int(self.y[i])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])


def from_arrays(x, y, *, classes: Sequence[int] | None = None, limit: int | None = None,
                mean: float | Sequence[float] | None = None, std: float | Sequence[float] | None = None,
                name: str = "arrays") -> ArrayDataset:
    """A dataset from numpy arrays. uint8 images are scaled to [0, 1]; [N, H, W] gets a channel axis;
    ``mean``/``std`` normalise (per channel when sequences)."""
    x = np.asarray(x)
    y = np.asarray(y).astype(np.int64).reshape(-1)
    if x.ndim == 3:
        x = x[:, None]
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
    x = x.astype(np.float32, copy=False)
    ds = ArrayDataset(x, y, name=name)
    ds = select_classes(ds, classes) if classes is not None else ds
    if limit is not None:
        ds = ArrayDataset(ds.x[:limit], ds.y[:limit], classes=ds.classes, name=ds.name)
    if mean is not None and std is not None:
        shape = (1, -1) + (1,) * (ds.x.ndim - 2)
        m = np.asarray(mean, np.float32).reshape(shape) if np.ndim(mean) else np.float32(mean)
        s = np.asarray(std, np.float32).reshape(shape) if np.ndim(std) else np.float32(std)
        ds.x = (ds.x - m) / s
    return ds


def select_classes(ds: ArrayDataset, classes: Sequence[int]) -> ArrayDataset:
    """Keep only samples whose label is in ``classes`` and remap label classes[i] -> i."""
    classes = [int(c) for c in classes]
    if len(set(classes)) != len(classes) or not classes:
        raise DataError(f"classes must be distinct labels, got {classes}")
    lut = np.full(max(max(classes), int(ds.y.max()) if len(ds.y) else 0) + 1, -1, np.int64)
    lut[classes] = np.arange(len(classes))
    keep = lut[ds.y] >= 0
    names = [ds.classes[c] if c < len(ds.classes) else str(c) for c in classes]
    return ArrayDataset(ds.x[keep], lut[ds.y[keep]], classes=names, name=ds.name)


def parse_classes(text: str) -> list[int]:
    """'0-4' -> [0..4]; '5,7,9' -> [5, 7, 9]; '0-2,7' -> [0, 1, 2, 7]."""
    out: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            if "-" in part:
                a, b = part.split("-", 1)
                out.extend(range(int(a), int(b) + 1))
            else:
                out.append(int(part))
    except ValueError:
        raise DataError(f"bad class list {text!r}; use e.g. 0-4 or 5,7,9") from None
    if not out:
        raise DataError(f"empty class list {text!r}")
    return out


@dataclass
class DataSpec:
    kind: str
    path: str | None
    classes: list[int] | None = None
    limit: int | None = None
    pad: int = 0          # zero pixels added on every side (fashion-mnist?pad=2: 28x28 -> 32x32)


KINDS = ("fashion-mnist", "mnist", "imagefolder", "npz")


def parse_spec(spec: str) -> DataSpec:
    """Parse ``KIND[:PATH][?classes=..&limit=..&pad=..]``."""
    if not isinstance(spec, str) or not spec:
        raise DataError("empty dataset spec; use fashion-mnist[:DIR], mnist:DIR, imagefolder:DIR or npz:FILE")
    text, _, query = spec.partition("?")
    kind, _, path = text.partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise DataError(f"unknown dataset {kind!r} in {spec!r}; use fashion-mnist[:DIR], mnist:DIR, "
                        "imagefolder:DIR or npz:FILE")
    out = DataSpec(kind, path or None)
    for item in filter(None, query.split("&")):
        key, _, value = item.partition("=")
        if key == "classes":
            out.classes = parse_classes(value)
        elif key in ("limit", "pad"):
            try:
                setattr(out, key, int(value))
            except ValueError:
                raise DataError(f"{key} must be an integer, got {value!r}") from None
            if out.pad < 0:
                raise DataError(f"pad must be >= 0, got {value!r}")
        else:
            raise DataError(f"unknown dataset option {key!r} in {spec!r} (known: classes, limit, pad)")
    if out.path is None and kind != "fashion-mnist":
        raise DataError(f"{kind} needs a path: {kind}:DIR" + (" (a .npz file)" if kind == "npz" else ""))
    return out


_CACHE: dict = {}


def _idx_dataset(kind: str, directory: str, split: str, normalize: bool) -> ArrayDataset:
    key = (kind, os.path.abspath(directory), split, normalize)
    if key in _CACHE:
        return _CACHE[key]
    hint = FASHION_MNIST_HINT if kind == "fashion-mnist" and directory == FASHION_MNIST_DIR else (
        f"put the MNIST-layout IDX files there ({FASHION_MNIST_HINT} for Fashion-MNIST)"
        if kind == "fashion-mnist" else MNIST_HINT)
    images, labels = load_idx_split(directory, split, hint=hint)
    mean, std = NORMALIZATION[kind] if normalize else (None, None)
    names = (["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
              "Bag", "Ankle boot"] if kind == "fashion-mnist" else [str(i) for i in range(10)])
    ds = from_arrays(images, labels, mean=mean, std=std, name=f"{kind}:{directory}")
    ds.classes = names[: max(ds.num_classes, 10)]
    if len(_CACHE) > 8:
        _CACHE.clear()
    _CACHE[key] = ds
    return ds


def _npz_dataset(path: str, split: str) -> ArrayDataset:
    try:
        with np.load(path, allow_pickle=False) as z:
            x, y = z[f"x_{split}"], z[f"y_{split}"]
    except FileNotFoundError:
        raise DataError(f"{path} not found") from None
    except KeyError:
        raise DataError(f"{path} must hold arrays x_train, y_train, x_test, y_test (missing the {split} split)") from None
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    return from_arrays(x, y, name=f"npz:{path}")


def _imagefolder(directory: str, split: str, image_size: int | None):
    if not os.path.isdir(directory):
        raise DataError(f"image folder {directory} does not exist")
    cands = ["train"] if split == "train" else ["test", "val"]
    root = next((os.path.join(directory, c) for c in cands if os.path.isdir(os.path.join(directory, c))), directory)
    from torchvision import datasets, transforms

    tf = []
    if image_size:
        tf += [transforms.Resize(image_size), transforms.CenterCrop(image_size)]
    tf += [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    try:
        return datasets.ImageFolder(root, transform=transforms.Compose(tf))
    except (FileNotFoundError, RuntimeError) as e:
        raise DataError(f"{root}: {e}") from None


class _Subset:
    """Class selection + remapping over a torch-style dataset (used for image folders)."""

    def __init__(self, base, classes: Sequence[int] | None, limit: int | None):
        self.base = base
        targets = np.asarray(getattr(base, "targets", [base[i][1] for i in range(len(base))]), np.int64)
        idx = np.arange(len(targets))
        base_names = list(getattr(base, "classes", [str(i) for i in range(int(targets.max()) + 1)]))
        if classes is not None:
            lut = np.full(max(max(classes), int(targets.max())) + 1, -1, np.int64)
            lut[list(classes)] = np.arange(len(classes))
            idx = idx[lut[targets] >= 0]
            self.lut = lut
            self.classes = [base_names[c] for c in classes]
        else:
            self.lut = None
            self.classes = base_names
        self.indices = idx[:limit] if limit is not None else idx
        self.num_classes = len(self.classes)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        x, y = self.base[int(self.indices[i])]
        return x, int(self.lut[y]) if self.lut is not None else int(y)

    @property
    def input_shape(self):
        return tuple(self[0][0].shape) if len(self) else None


def load_dataset(spec: str, split: str = "train", *, classes: Sequence[int] | None = None,
                 limit: int | None = None, normalize: bool = True, image_size: int | None = None):
    """The dataset named by ``spec`` (see the module docstring) for ``split`` ('train' or 'test').

    ``classes``/``limit`` here override those given in the spec. Returns an ``ArrayDataset`` for IDX
    and npz data, a torch Dataset with ``.classes``/``.num_classes`` for image folders.
    """
    if split not in ("train", "test"):
        raise DataError(f"unknown split {split!r}; use 'train' or 'test'")
    s = parse_spec(spec)
    classes = list(classes) if classes is not None else s.classes
    limit = limit if limit is not None else s.limit
    if s.kind in ("fashion-mnist", "mnist"):
        ds = _idx_dataset(s.kind, s.path or FASHION_MNIST_DIR, split, normalize)
    elif s.kind == "npz":
        ds = _npz_dataset(s.path, split)
    else:
        return _Subset(_imagefolder(s.path, split, image_size), classes, limit)
    if classes is not None:
        ds = select_classes(ds, classes)
    if limit is not None:
        ds = ArrayDataset(ds.x[:limit], ds.y[:limit], classes=ds.classes, name=ds.name)
    if s.pad:  # padded after normalisation, with the normalised value of a black pixel
        fill = float(ds.x.min()) if ds.x.size else 0.0
        p = s.pad
        x = np.pad(ds.x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=fill)
        ds = ArrayDataset(x, ds.y, classes=ds.classes, name=f"{ds.name}?pad={p}")
    return ds


def num_classes_of(ds) -> int:
    n = getattr(ds, "num_classes", None)
    if n is not None:
        return int(n)
    return len(getattr(ds, "classes"))


def make_loader(ds, *, batch_size: int = 128, shuffle: bool = False, seed: int = 0, distributed: bool = False,
                drop_last: bool = False):
    """A torch DataLoader over ``ds``; with ``distributed`` a DistributedSampler shards it across ranks
    (call ``loader.sampler.set_epoch(e)`` each epoch; ``deepcomp.train`` does)."""
    import torch
    from torch.utils.data import DataLoader

    if isinstance(ds, ArrayDataset):
        tensors = torch.utils.data.TensorDataset(torch.from_numpy(ds.x), torch.from_numpy(ds.y))
    else:
        tensors = ds
    sampler = None
    if distributed:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(tensors, shuffle=shuffle, seed=seed, drop_last=drop_last)
        shuffle = False
    g = torch.Generator()
    g.manual_seed(seed)
    return DataLoader(tensors, batch_size=batch_size, shuffle=shuffle, sampler=sampler, generator=g,
                      drop_last=drop_last, num_workers=0)


# ------------------------------------------------------------------------------------------- CLI
def add_data_args(p, *, split: bool = False) -> None:
    """The --data / --batch-size (/ --split) flags of the train, eval and finetune commands."""
    p.add_argument("--data", required=True, metavar="D",
                   help="dataset: fashion-mnist[:DIR] (default DIR /usr/share/datasets/fashion-mnist), mnist:DIR, "
                        "imagefolder:DIR, npz:FILE; append ?classes=0-4&limit=N for a subset "
                        "(classes are remapped to 0..K-1)")
    from deepcomp.cli import positive_int

    p.add_argument("--batch-size", type=positive_int, default=128, metavar="B", help="batch size (default 128)")
    if split:
        p.add_argument("--split", choices=["train", "test"], default="test", help="split to evaluate (default: test)")
