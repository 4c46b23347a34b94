import os
import struct
import zlib

import numpy as np
import pytest

from deepcomp import _native
from deepcomp.dcz import (CODED, MAGIC, atomic_write, coded_payload, decompress, pack_dcz, parse_dcz, read_dcz,
                          write_dcz)
from deepcomp.encode import encode_shared
from deepcomp.errors import DczError
from deepcomp.quantize import share_layer

GRAPH = {"format": "deepcomp-graph", "version": 1, "input": {"name": "x", "shape": [6]}, "output": "fc",
         "nodes": [{"name": "fc", "op": "linear", "inputs": ["x"], "attrs": {"weight": "fc.weight", "bias": "fc.bias"}}]}


def small_file(tmp_path, density=0.4, name="small.dcz"):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 6)).astype(np.float32)
    mask = rng.random(w.shape) < density
    enc = encode_shared(share_layer("fc.weight", w, mask, 2), 2)
    dense = {"fc.bias": rng.standard_normal(4).astype(np.float32), "bn.num_batches_tracked": np.array(3, np.int64)}
    meta = {"deepcomp_version": "0", "state_dict_keys": ["fc.weight", "fc.bias", "bn.num_batches_tracked"]}
    path = tmp_path / name
    write_dcz(path, meta=meta, graph=GRAPH, dense=dense, coded={"fc.weight": enc},
              order=meta["state_dict_keys"])
    return path, enc, dense


def test_round_trip(tmp_path):
    path, enc, dense = small_file(tmp_path)
    data = path.read_bytes()
    assert data[:8] == MAGIC and len(data) % 1 == 0
    c = read_dcz(path, decode=True)
    assert c.graph == GRAPH and c.version == (1, 0)
    sd = decompress(path)
    assert list(sd) == ["fc.weight", "fc.bias", "bn.num_batches_tracked"]
    np.testing.assert_array_equal(sd["fc.weight"], enc.dense())
    np.testing.assert_array_equal(sd["fc.bias"], dense["fc.bias"])
    assert sd["bn.num_batches_tracked"].dtype == np.int64 and sd["bn.num_batches_tracked"] == 3
    n = _native.load_dcz(str(path))
    assert n["graph"] and n["version"] == (1, 0)
    co = n["coded"]["fc.weight"]
    dense_native = np.zeros((4, 6), np.float32)
    for r in range(4):
        cols = co["col"][co["row_ptr"][r]:co["row_ptr"][r + 1]]
        dense_native[r, cols] = co["codebook"][co["cluster"][co["row_ptr"][r]:co["row_ptr"][r + 1]]]
    np.testing.assert_array_equal(dense_native, enc.dense())


def _both_readers(data: bytes):
    """(python error or None, native error or None)."""
    errs = []
    for fn in (lambda: parse_dcz(data, decode=True), lambda: _native.parse_dcz(data)):
        try:
            fn()
            errs.append(None)
        except DczError as e:
            errs.append(str(e))
    return errs


def test_every_truncation_is_a_clean_error(tmp_path):
    path, _, _ = small_file(tmp_path)
    data = path.read_bytes()
    for n in range(len(data)):
        py, nat = _both_readers(data[:n])
        assert py is not None and nat is not None, n


def test_random_bit_flips_are_clean_errors(tmp_path):
    path, _, _ = small_file(tmp_path)
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(1)
    for _ in range(400):
        d = bytearray(data)
        for _ in range(rng.integers(1, 4)):
            i = rng.integers(len(d))
            d[i] ^= 1 << rng.integers(8)
        py, nat = _both_readers(bytes(d))
        assert (py is None) == (nat is None)
        assert py is not None  # every payload byte is under a CRC


def _with_payload(tensor_payload: bytes) -> bytes:
    return pack_dcz({"m": 1}, GRAPH, [(CODED, tensor_payload)])


def test_hostile_fields_with_valid_checksums():
    """Files whose CRCs are right but whose fields lie: both readers reject them without a huge allocation."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 6)).astype(np.float32)
    enc = encode_shared(share_layer("fc.weight", w, np.abs(w) > 0.5, 2), 2)
    good = coded_payload(enc)
    name_len = 2 + len("fc.weight")
    hdr = name_len + 1 + 8  # after name, ndim, dims(2)
    cases = {
        "huge dims": good[:name_len + 1] + struct.pack("<II", 2**31, 2**31) + good[hdr:],
        "nnz beyond elements": good[:hdr + 4] + struct.pack("<Q", 10**12) + good[hdr + 12:],
        "huge stream bits": good[:len(good) - len(enc.weight_stream) - len(enc.gap_stream) - 16]
        + struct.pack("<QQ", 2**60, 2**60) + enc.weight_stream + enc.gap_stream,
        "bits 9": good[:hdr] + bytes([9]) + good[hdr + 1:],
        "index bits 0": good[:hdr + 1] + bytes([0]) + good[hdr + 2:],
        "trailing": good + b"\0",
        "name length 0": b"\0\0" + good[2:],
    }
    for what, payload in cases.items():
        py, nat = _both_readers(_with_payload(payload))
        assert py is not None and nat is not None, what
    # a lying section count / file size in a header with a correct CRC
    blob = bytearray(_with_payload(good))
    blob[12:16] = struct.pack("<I", 999_999)
    blob[28:32] = struct.pack("<I", zlib.crc32(bytes(blob[:28])))
    py, nat = _both_readers(bytes(blob))
    assert py and nat and "section table" in py


def test_not_a_dcz_file(tmp_path):
    p = tmp_path / "x.dcz"
    p.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(DczError, match="not a .dcz file"):
        read_dcz(p)
    with pytest.raises(DczError, match="not a .dcz file"):
        _native.load_dcz(str(p))
    with pytest.raises(DczError, match="no such file"):
        read_dcz(tmp_path / "missing.dcz")
    with pytest.raises(DczError, match="cannot open"):
        _native.load_dcz(str(tmp_path / "missing.dcz"))


def test_future_major_version_rejected(tmp_path):
    path, _, _ = small_file(tmp_path)
    d = bytearray(path.read_bytes())
    d[8:10] = struct.pack("<H", 2)
    d[28:32] = struct.pack("<I", zlib.crc32(bytes(d[:28])))
    py, nat = _both_readers(bytes(d))
    assert "major version 2" in py and "major version 2" in nat


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.dcz"
    target.write_bytes(b"old")

    class Boom(bytes):
        pass

    with pytest.raises(TypeError):
        atomic_write(target, object())  # fails while writing
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.dcz"]


def recrc(data: bytearray) -> bytes:
    """Recompute every checksum, so a mutated file reaches the parsers' deeper checks."""
    nsec = struct.unpack_from("<I", data, 12)[0]
    for i in range(nsec):
        e = 32 + 32 * i
        _, _, off, length = struct.unpack_from("<IIQQ", data, e)
        if off + length <= len(data):
            struct.pack_into("<I", data, e + 24, zlib.crc32(bytes(data[off:off + length])))
    struct.pack_into("<I", data, 24, zlib.crc32(bytes(data[32:32 + 32 * nsec])))
    struct.pack_into("<I", data, 28, zlib.crc32(bytes(data[:28])))
    return bytes(data)


def test_mutations_past_the_checksums_agree(tmp_path):
    """Mutate tensor payloads and fix the CRCs: the Python reader and the native loader either both
    reject the file with DczError (never a crash) or both accept it and decode the same tensors."""
    path, _, _ = small_file(tmp_path, density=0.5)
    base = bytearray(path.read_bytes())
    nsec = struct.unpack_from("<I", base, 12)[0]
    spans = []
    for i in range(nsec):
        t, _, off, length = struct.unpack_from("<IIQQ", base, 32 + 32 * i)
        if t in (3, 4):
            spans.append((off, length))
    rng = np.random.default_rng(7)
    accepted = 0
    for trial in range(1500):
        d = bytearray(base)
        off, length = spans[rng.integers(len(spans))]
        for _ in range(rng.integers(1, 4)):
            j = off + rng.integers(length)
            d[j] = rng.integers(256) if rng.random() < 0.5 else d[j] ^ (1 << rng.integers(8))
        data = recrc(d)
        py, nat = _both_readers(data)
        assert (py is None) == (nat is None), (trial, py, nat)
        if py is None:
            accepted += 1
            a, b = parse_dcz(data, decode=True), _native.parse_dcz(data)
            for name, e in a.coded.items():
                pos, clusters = e.decode()
                co = b["coded"][name]
                rows = np.repeat(np.arange(e.shape[0]), np.diff(co["row_ptr"]))
                cols = int(np.prod(e.shape[1:]))
                np.testing.assert_array_equal(rows * cols + co["col"], pos)
                np.testing.assert_array_equal(co["cluster"], clusters)
            for name, arr in a.dense.items():
                np.testing.assert_array_equal(b["dense"][name], arr)
    assert accepted < 1500  # most mutations are caught


@pytest.mark.parametrize("raw", [b"abc", "\u00e9t\u00e9".encode(), "\U0001f600".encode(), b"\xc0\xaf", b"\xed\xa0\x80",
                                 b"\xe2\x82", b"\xf4\x90\x80\x80", b"\x80", b"ok\xff"])
def test_tensor_names_must_be_utf8_in_both_readers(raw):
    payload = struct.pack("<H", len(raw)) + raw + struct.pack("<BB", 1, 1) + struct.pack("<I", 1)
    payload += b"\0" * ((8 - len(payload) % 8) % 8) + struct.pack("<f", 1.0)
    data = pack_dcz({"m": 1}, GRAPH, [(3, payload)])
    py, nat = _both_readers(data)
    try:
        raw.decode("utf-8")
        valid = True
    except UnicodeDecodeError:
        valid = False
    assert (py is None) == valid and (nat is None) == valid, (py, nat)


def test_json_sections_are_compressed_and_bounded(tmp_path):
    path, _, _ = small_file(tmp_path)
    data = bytearray(path.read_bytes())
    flags = [struct.unpack_from("<I", data, 32 + 32 * i + 4)[0] for i in range(struct.unpack_from("<I", data, 12)[0])]
    assert flags[:2] == [1, 1] and set(flags[2:]) == {0}
    assert oct(os.stat(path).st_mode & 0o777) != oct(0o600)  # not mkstemp's private mode

    def with_meta(payload: bytes, flag: int = 1) -> bytes:
        # a file built by hand around this META payload
        sections = [(1, flag, payload), (2, 1, zlib.compress(b'{"format":"x"}'))]
        table_end = 32 + 32 * len(sections)
        offs, pos = [], table_end
        for _, _, p in sections:
            pos = (pos + 7) // 8 * 8
            offs.append(pos)
            pos += len(p)
        out = bytearray(pos)
        for (t, f, p), off in zip(sections, offs):
            out[off:off + len(p)] = p
        table = b"".join(struct.pack("<IIQQII", t, f, off, len(p), zlib.crc32(p), 0) for (t, f, p), off in zip(sections, offs))
        out[32:table_end] = table
        out[:28] = MAGIC + struct.pack("<HHIQI", 1, 0, len(sections), pos, zlib.crc32(table))
        out[28:32] = struct.pack("<I", zlib.crc32(bytes(out[:28])))
        return bytes(out)

    bomb = zlib.compress(b"{" + b" " * (80 << 20) + b"}", 9)
    for payload, flag, msg in [(bomb, 1, "64 MiB"), (b"not zlib", 1, "zlib"), (zlib.compress(b"{}")[:-3], 1, "zlib"),
                               (zlib.compress(b"{}") + b"x", 1, "zlib"), (b"{}", 2, "flags")]:
        py, nat = _both_readers(with_meta(payload, flag))
        assert py and nat and msg in py and msg in nat, (py, nat)
    py, nat = _both_readers(with_meta(b'{"a":1}', 0))  # uncompressed JSON is fine too
    assert py is None and nat is None
