"""IDX parsing (gzip or not, checked against the file size), specs, class subsets, errors."""

import gzip
import os
import struct

import numpy as np
import pytest

from deepcomp.data import (
    FASHION_MNIST_DIR,
    from_arrays,
    load_dataset,
    make_loader,
    parse_classes,
    parse_idx,
    parse_spec,
    read_idx,
)
from deepcomp.errors import DataError

HAVE_FMNIST = os.path.isfile(os.path.join(FASHION_MNIST_DIR, "t10k-labels-idx1-ubyte.gz"))
needs_fmnist = pytest.mark.skipif(not HAVE_FMNIST, reason="Fashion-MNIST not installed: apt-get install dataset-fashion-mnist")


def idx_bytes(arr: np.ndarray, code=0x08) -> bytes:
    return bytes([0, 0, code, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape) + arr.astype(">u1" if code == 8 else ">i4").tobytes()


def write_mnist_dir(d, n_train=40, n_test=20, gz=True):
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("t10k", n_test)):
        imgs = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labs = (np.arange(n) % 10).astype(np.uint8)
        for stem, arr in ((f"{split}-images-idx3-ubyte", imgs), (f"{split}-labels-idx1-ubyte", labs)):
            data = idx_bytes(arr)
            if gz:
                (d / (stem + ".gz")).write_bytes(gzip.compress(data))
            else:
                (d / stem).write_bytes(data)


def test_parse_idx_roundtrip_and_types():
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(parse_idx(idx_bytes(a)), a)
    b = np.array([1, -2, 70000], dtype=np.int32)
    got = parse_idx(idx_bytes(b, code=0x0C))
    assert got.dtype == np.int32 and got.dtype.isnative
    np.testing.assert_array_equal(got, b)


@pytest.mark.parametrize("data, msg", [
    (b"\x00", "not an IDX"),
    (b"\x01\x00\x08\x01\x00\x00\x00\x01\x00", "bad magic"),
    (b"\x00\x00\x07\x01\x00\x00\x00\x01\x00", "element type"),
    (b"\x00\x00\x08\x03\x00\x00", "truncated IDX header"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x05\x00\x00", "need 13 bytes"),
    (b"\x00\x00\x08\x01\xff\xff\xff\xff", "need"),
])
def test_parse_idx_rejects_bad_files(data, msg):
    with pytest.raises(DataError, match=msg):
        parse_idx(data)


def test_read_idx_gzip_and_plain(tmp_path):
    a = np.arange(10, dtype=np.uint8)
    (tmp_path / "plain").write_bytes(idx_bytes(a))
    (tmp_path / "packed").write_bytes(gzip.compress(idx_bytes(a)))
    np.testing.assert_array_equal(read_idx(str(tmp_path / "plain")), a)
    np.testing.assert_array_equal(read_idx(str(tmp_path / "packed")), a)
    (tmp_path / "broken").write_bytes(gzip.compress(idx_bytes(a))[:-6])
    with pytest.raises(DataError):
        read_idx(str(tmp_path / "broken"))


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_dir_and_class_subsets(tmp_path, gz):
    write_mnist_dir(tmp_path, gz=gz)
    tr = load_dataset(f"mnist:{tmp_path}", "train")
    te = load_dataset(f"mnist:{tmp_path}", "test")
    assert tr.x.shape == (40, 1, 28, 28) and tr.x.dtype == np.float32 and len(te) == 20
    sub = load_dataset(f"mnist:{tmp_path}?classes=5-9&limit=6", "train")
    assert len(sub) == 6 and set(sub.y.tolist()) <= set(range(5)) and sub.num_classes == 5
    raw = load_dataset(f"mnist:{tmp_path}", "train", normalize=False)
    np.testing.assert_array_equal(sub.y, raw.y[np.isin(raw.y, range(5, 10))][:6] - 5)
    x, y = next(iter(make_loader(sub, batch_size=4)))
    assert tuple(x.shape) == (4, 1, 28, 28) and y.dtype.is_floating_point is False


def test_spec_parsing_and_errors(tmp_path):
    s = parse_spec("fashion-mnist?classes=0-2,7&limit=10")
    assert s.kind == "fashion-mnist" and s.path is None and s.classes == [0, 1, 2, 7] and s.limit == 10
    assert parse_spec("imagefolder:/a/b").path == "/a/b"
    assert parse_classes("5,7,9") == [5, 7, 9]
    for bad in ("cifar:/x", "mnist", "fashion-mnist?foo=1", ""):
        with pytest.raises(DataError):
            parse_spec(bad)
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_dataset(f"fashion-mnist:{tmp_path / 'missing'}")
    (tmp_path / "half").mkdir()
    with pytest.raises(DataError, match="not found"):
        load_dataset(f"mnist:{tmp_path / 'half'}")


def test_arrays_and_npz(tmp_path):
    x = np.random.default_rng(0).random((30, 3, 8, 8)).astype(np.float32)
    y = np.arange(30) % 3
    ds = from_arrays(x, y, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    np.testing.assert_allclose(ds.x, (x - 0.5) / 0.25, rtol=1e-6)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=x[:5], y_test=y[:5])
    te = load_dataset(f"npz:{tmp_path / 'd.npz'}", "test")
    assert len(te) == 5 and te.input_shape == (3, 8, 8)


def test_imagefolder(tmp_path):
    from PIL import Image

    for split in ("train", "test"):
        for cls in ("cat", "dog", "emu"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (12, 10), color=(i * 100, 50, 0)).save(tmp_path / split / cls / f"{i}.png")
    ds = load_dataset(f"imagefolder:{tmp_path}?classes=1-2", "test", image_size=8)
    assert len(ds) == 4 and ds.num_classes == 2 and ds.classes == ["dog", "emu"]
    x, y = ds[0]
    assert tuple(x.shape) == (3, 8, 8) and y == 0


@needs_fmnist
def test_fashion_mnist_debian_files():
    te = load_dataset("fashion-mnist", "test")
    assert te.x.shape == (10000, 1, 28, 28) and te.num_classes == 10
    assert abs(float(te.x.mean())) < 0.05 and np.bincount(te.y).tolist() == [1000] * 10
