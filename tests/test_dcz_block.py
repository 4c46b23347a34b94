"""CODED_BLOCK sections (docs/dcz-format.md, int8 additions): block-pruned weights round-trip through
the Python reader and the native loader bit-identically to CODED sections of the same weights;
corrupt payloads are DczErrors in both; the section is smaller than CODED; the minor version rules."""

import struct
import zlib

import numpy as np
import pytest
import torch

from deepcomp import _native
from deepcomp.dcz import (CODED, CODED_BLOCK, DENSE, coded_payload, decompress, dense_payload, pack_dcz, parse_dcz,
                          read_dcz, write_dcz)
from deepcomp.encode import code_lengths, encode_shared, huffman_encode
from deepcomp.encode_block import EncodedBlockWeight, encode_block_shared
from deepcomp.errors import DczError
from deepcomp.prune.block import block_mask
from deepcomp.quantize import share_layer
from test_dcz import _both_readers, recrc


def graph_for(shape):
    """A one-node graph using the weight 'w' (conv2d for 4-d weights, linear otherwise)."""
    if len(shape) == 4:
        node = {"name": "c", "op": "conv2d", "inputs": ["x"],
                "attrs": {"weight": "w", "bias": None, "stride": [1, 1], "padding": [1, 1], "dilation": [1, 1],
                          "groups": 1, "bn": None}}
        inp = [shape[1], 6, 6]
    else:
        node = {"name": "c", "op": "linear", "inputs": ["x"], "attrs": {"weight": "w", "bias": None}}
        inp = [int(np.prod(shape[1:]))]
    return {"format": "deepcomp-graph", "version": 2, "input": {"name": "x", "shape": inp}, "output": "c",
            "nodes": [node]}


def block_shared(shape, sparsity, out_block=1, bits=4, seed=0):
    """A SharedWeight pruned in 1x4 (or 4x4) blocks and shared by k-means, as the pipeline makes one."""
    w = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    mask = block_mask(w.abs(), sparsity, out_block=out_block).numpy()
    return share_layer("w", w.numpy(), mask, bits, seed=seed)


def write(tmp_path, enc, name):
    path = tmp_path / name
    write_dcz(path, meta={"state_dict_keys": ["w"]}, graph=graph_for(enc.shape), dense={}, coded={"w": enc})
    return path


def native_dense(co):
    shape = tuple(co["shape"])
    rows, cols = shape[0], int(np.prod(shape[1:]))
    out = np.zeros((rows, cols), np.float32)
    r = np.repeat(np.arange(rows), np.diff(co["row_ptr"]))
    out[r, co["col"]] = co["codebook"][co["cluster"]]
    return out.reshape(shape)


CASES = [  # shape, fraction of blocks removed, output channels per block
    ((8, 12, 3, 3), 0.5, 1),
    ((8, 12, 3, 3), 0.5, 4),
    ((6, 10, 3, 3), 0.6, 1),     # 10 input channels: a 2-wide block at the end of each tap's row
    ((6, 10, 3, 3), 0.6, 4),     # 6 output channels: a 2-high 4x4 block
    ((5, 3, 3, 3), 0.3, 1),      # a first layer: 3 input channels, one partial block per tap
    ((7, 13), 0.7, 1),           # linear
    ((16, 64), 0.8, 4),
    ((4, 9, 1, 1), 0.5, 1),
    ((6, 10, 3, 3), 1.0, 1),     # empty layer
    ((6, 10, 3, 3), 0.0, 1),     # fully dense
    ((7, 13), 0.0, 4),
]


@pytest.mark.parametrize("shape,sparsity,out_block", CASES)
def test_round_trip_matches_coded(tmp_path, shape, sparsity, out_block):
    s = block_shared(shape, sparsity, out_block)
    blocked, plain = encode_block_shared(s, 3), encode_shared(s, 3)
    pb, pc = write(tmp_path, blocked, "b.dcz"), write(tmp_path, plain, "c.dcz")
    # Python reader: the same tensor, bit for bit, as the CODED file and as the shared weight
    cb, cc = read_dcz(pb, decode=True), read_dcz(pc, decode=True)
    assert cb.version == (1, 1) and cc.version == (1, 0)
    assert isinstance(cb.coded["w"], EncodedBlockWeight) and cb.coded["w"].kept == s.nnz == cc.coded["w"].nnz
    db, dc = decompress(pb)["w"], decompress(pc)["w"]
    assert db.dtype == np.float32 and db.shape == shape
    np.testing.assert_array_equal(db.view(np.uint32), dc.view(np.uint32))
    np.testing.assert_array_equal(db.view(np.uint32), s.dense().view(np.uint32))
    for a, b in zip(cb.coded["w"].decode(), cc.coded["w"].decode()):
        np.testing.assert_array_equal(a, b)
    # native loader: the same CSR arrays as for the CODED file
    nb, nc = _native.load_dcz(str(pb)), _native.load_dcz(str(pc))
    assert nb["version"] == (1, 1) and nb["coded"]["w"]["block"] == 4 and nc["coded"]["w"]["block"] == 1
    for key in ("row_ptr", "col", "cluster", "codebook"):
        np.testing.assert_array_equal(nb["coded"]["w"][key], nc["coded"]["w"][key], err_msg=key)
    np.testing.assert_array_equal(native_dense(nb["coded"]["w"]).view(np.uint32), dc.view(np.uint32))
    assert nb["coded"]["w"]["nnz"] == blocked.nnz  # the header's count of blocks


def test_runtime_and_info_read_a_block_file(tmp_path):
    import deepcomp
    from deepcomp.report import report_from_file

    s = block_shared((6, 10, 3, 3), 0.5)
    pb, pc = write(tmp_path, encode_block_shared(s, 4), "b.dcz"), write(tmp_path, encode_shared(s, 4), "c.dcz")
    x = np.random.default_rng(0).standard_normal((2, 10, 6, 6)).astype(np.float32)
    np.testing.assert_array_equal(deepcomp.load(str(pb))(x), deepcomp.load(str(pc))(x))
    (lb,), (lc,) = report_from_file(pb)["layers"], report_from_file(pc)["layers"]
    assert lb["nonzeros"] == lc["nonzeros"] == s.nnz and lb["density"] == lc["density"]
    assert lb["index_bits_huffman"] < lc["index_bits_huffman"]


def test_section_is_smaller_than_coded():
    """docs/int8.md: on a 64x64x3x3 layer at 30% of its 1x4 blocks, 8-bit k-means weights."""
    s = block_shared((64, 64, 3, 3), 0.7, bits=8)
    for index_bits in (4, 5, 8):
        b, c = coded_payload(encode_block_shared(s, index_bits)), coded_payload(encode_shared(s, index_bits))
        assert len(b) < 0.85 * len(c), (index_bits, len(b), len(c))


# ------------------------------------------------------------------------------------ corrupt files
def block_file(sparsity=0.5, shape=(6, 10, 3, 3)) -> bytes:
    enc = encode_block_shared(block_shared(shape, sparsity, bits=3), 3)
    return pack_dcz({"m": 1}, graph_for(shape), [(CODED_BLOCK, coded_payload(enc))])


def test_every_truncation_is_a_clean_error():
    data = block_file(shape=(4, 6, 1, 3))
    for n in range(len(data)):
        py, nat = _both_readers(data[:n])
        assert py is not None and nat is not None, n


def test_every_truncated_payload_with_valid_checksums_is_a_clean_error():
    enc = encode_block_shared(block_shared((4, 6, 1, 3), 0.5, bits=3), 3)
    good = coded_payload(enc)
    for n in range(len(good)):
        py, nat = _both_readers(pack_dcz({"m": 1}, graph_for(enc.shape), [(CODED_BLOCK, good[:n])]))
        assert py is not None and nat is not None, n


def test_mutations_past_the_checksums_agree():
    """Mutate the CODED_BLOCK payload and fix the CRCs: both readers reject the file or both decode
    the same tensor."""
    base = bytearray(block_file())
    off, length = struct.unpack_from("<QQ", base, 32 + 32 * 2 + 8)
    rng = np.random.default_rng(3)
    accepted = 0
    for trial in range(1200):
        d = bytearray(base)
        for _ in range(rng.integers(1, 4)):
            j = off + rng.integers(length)
            d[j] = rng.integers(256) if rng.random() < 0.5 else d[j] ^ (1 << rng.integers(8))
        data = recrc(d)
        py, nat = _both_readers(data)
        assert (py is None) == (nat is None), (trial, py, nat)
        if py is None:
            accepted += 1
            (e,) = parse_dcz(data, decode=True).coded.values()
            co = _native.parse_dcz(data)["coded"][e.name]
            pos, clusters = e.decode()  # compared sparse: a mutated dimension may be huge
            rows = np.repeat(np.arange(e.shape[0]), np.diff(co["row_ptr"]))
            np.testing.assert_array_equal(rows * (e.numel // e.shape[0]) + co["col"], pos)
            np.testing.assert_array_equal(co["cluster"], clusters)
    assert accepted < 1200


def crafted(shape, gaps, clusters, k, index_bits=3, nnz=None, wbits=None, block=4) -> bytes:
    """A CODED_BLOCK payload built from raw gap and cluster symbols, header fields overridable."""
    glen = code_lengths(np.bincount(gaps, minlength=1 << index_bits))
    wlen = code_lengths(np.bincount(clusters, minlength=k)) if len(clusters) else np.zeros(k, np.uint8)
    ws, wb = huffman_encode(np.array(clusters, np.uint16), wlen)
    gs, gb = huffman_encode(np.array(gaps, np.uint16), glen)
    n_kept = sum(1 for g in gaps if g != (1 << index_bits) - 1)
    if wbits is not None:  # a shorter weight stream than its symbols need
        wb, ws = wbits, ws[:(wbits + 7) // 8]
    e = EncodedBlockWeight(name="w", shape=tuple(shape), bits=3, index_bits=index_bits,
                           codebook=np.arange(k, dtype=np.float32), nnz=n_kept if nnz is None else nnz,
                           entries=len(gaps), weight_lengths=wlen, gap_lengths=glen, weight_stream=ws,
                           weight_stream_bits=wb, gap_stream=gs, gap_stream_bits=gb, block=block)
    return coded_payload(e)


def test_crafted_payloads_are_checked():
    two_blocks = [0, 1, 2, 0, 1, 2, 0, 1]  # clusters of 2 blocks of (1, 8): 8 weights
    ok = crafted((1, 8), [0, 0], two_blocks, 3)
    assert _both_readers(pack_dcz({}, graph_for((1, 8)), [(CODED_BLOCK, ok)])) == [None, None]
    cases = {  # what -> (payload, a word of both readers' messages)
        "block byte 0": (crafted((1, 8), [0, 0], two_blocks, 3, block=0), "block length 0"),
        "block byte 1": (crafted((1, 8), [0, 0], two_blocks, 3, block=1), "block length 1"),
        "block byte 8": (crafted((1, 8), [0, 0], two_blocks, 3, block=8), "block length 8"),
        "block byte 255": (crafted((1, 8), [0, 0], two_blocks, 3, block=255), "block length 255"),
        "ndim 1": (crafted((8,), [0, 0], two_blocks, 3), "ndim 1"),
        "nnz beyond the block grid": (crafted((1, 8), [0, 0, 0], two_blocks + [0] * 4, 3, nnz=3), "than blocks"),
        "block id past the end": (crafted((1, 8), [0, 5], two_blocks, 3), "past the tensor's end"),
        "a filler past the end": (crafted((1, 8), [7, 0], two_blocks[:4], 3), "past the tensor's end"),
        "fewer blocks than nnz": (crafted((2, 8), [0, 0, 7], two_blocks + [0] * 4, 3, nnz=3), "header says"),
        "more blocks than nnz": (crafted((2, 8), [0, 0, 0], two_blocks + [0] * 4, 3, nnz=2), "header says"),
        "weight stream shorter than its blocks' weights": (crafted((1, 8), [0, 0], two_blocks, 3, wbits=4),
                                                           "too short for its kept blocks"),
        "weight stream ends early": (crafted((1, 8), [0, 0], [0, 1, 2, 3] * 2, 4, wbits=8), "stream"),
        "codebook empty with kept blocks": (crafted((1, 8), [0, 0], [], 0), "codebook size"),
        "trailing byte": (ok + b"\0", "trailing"),
    }
    for what, (payload, msg) in cases.items():
        py, nat = _both_readers(pack_dcz({}, graph_for((1, 8)), [(CODED_BLOCK, payload)]))
        assert py is not None and nat is not None and msg in py and msg in nat, (what, py, nat)


def test_minor_versions():
    enc = encode_block_shared(block_shared((4, 8), 0.5), 3)
    g = graph_for((4, 8))
    sections = [(CODED_BLOCK, coded_payload(enc))]
    assert struct.unpack_from("<H", pack_dcz({}, g, sections), 10) == (1,)
    assert struct.unpack_from("<H", pack_dcz({}, g, [(CODED, coded_payload(encode_shared(block_shared((4, 8), 0.5), 3)))]),
                              10) == (0,)
    g8 = {**g, "nodes": [{**g["nodes"][0], "attrs": {**g["nodes"][0]["attrs"], "int8": {"block": [1, 4]}}}]}
    assert struct.unpack_from("<H", pack_dcz({}, g8, []), 10) == (1,)
    g_null = {**g, "nodes": [{**g["nodes"][0], "attrs": {**g["nodes"][0]["attrs"], "int8": None}}]}
    assert struct.unpack_from("<H", pack_dcz({}, g_null, []), 10) == (0,)  # "int8": null runs fp32
    # a CODED_BLOCK section in a minor-0 file is invalid
    py, nat = _both_readers(pack_dcz({}, g, sections, minor=0))
    assert "minor version 0" in py and "minor version 0" in nat
    # an unknown section type: skipped in a file newer than the reader (minor 2), rejected in minor 1
    unknown = (9, b"\1\2\3")
    assert _both_readers(pack_dcz({}, g, sections + [unknown], minor=2)) == [None, None]
    py, nat = _both_readers(pack_dcz({}, g, sections + [unknown], minor=1))
    assert "unknown section type 9" in py and "unknown section type 9" in nat


def test_names_are_unique_across_coded_and_block_sections():
    s = block_shared((4, 8), 0.5)
    for other in [(CODED, coded_payload(encode_shared(s, 3))), (DENSE, dense_payload("w", np.ones(3, np.float32)))]:
        data = pack_dcz({}, graph_for((4, 8)), [(CODED_BLOCK, coded_payload(encode_block_shared(s, 3))), other])
        py, nat = _both_readers(data)
        assert "appears twice" in py and "appears twice" in nat


def test_write_dcz_never_writes_a_lower_minor_than_the_contents_need(tmp_path):
    s = block_shared((4, 8), 0.5)
    for minor, coded, want in [(0, encode_block_shared(s, 3), 1), (None, encode_shared(s, 3), 0),
                               (1, encode_shared(s, 3), 1)]:
        path = tmp_path / "m.dcz"
        write_dcz(path, meta={}, graph=graph_for((4, 8)), dense={}, coded={"w": coded}, minor=minor)
        assert read_dcz(path).version == (1, want) and _native.load_dcz(str(path))["version"] == (1, want)


def test_minor_zero_files_still_load(tmp_path):
    s = block_shared((4, 8), 0.5)
    data = pack_dcz({"state_dict_keys": ["w"]}, graph_for((4, 8)), [(CODED, coded_payload(encode_shared(s, 3)))])
    assert data[10:12] == b"\0\0" and zlib.crc32(data[:28]) == struct.unpack_from("<I", data, 28)[0]
    assert parse_dcz(data, decode=True).version == (1, 0) and _native.parse_dcz(data)["version"] == (1, 0)
