"""The .dcz file: write (atomically), read and validate, decompress. Spec: docs/dcz-format.md.

Torch-free (numpy only) except :func:`save_state_dict`, which imports torch when called. The native
loader (deepcomp._native.load_dcz) implements the same checks in C++; both must accept and reject the
same files.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from deepcomp.encode import EncodedWeight
from deepcomp.errors import DczError, DeepcompError
from deepcomp.fileio import atomic_write  # noqa: F401 (the one atomic-write helper; imported from here too)

MAGIC = b"\x89DCZ\r\n\x1a\n"
MAJOR, MINOR = 1, 0
META, GRAPH, DENSE, CODED = 1, 2, 3, 4
MAX_SECTIONS = 1_000_000
ALIGN = 8
FLAG_ZLIB = 1             # META/GRAPH payload is a zlib stream of the JSON
MAX_JSON = 64 << 20       # inflated META/GRAPH limit
DTYPES = {1: np.dtype("<f4"), 2: np.dtype("<i8"), 3: np.dtype("<i4"), 4: np.dtype("u1")}
DTYPE_CODES = {np.dtype("float32"): 1, np.dtype("int64"): 2, np.dtype("int32"): 3, np.dtype("uint8"): 4}


# ------------------------------------------------------------------------------------------ write
def _name_bytes(name: str) -> bytes:
    b = name.encode("utf-8")
    if not 1 <= len(b) <= 1024:
        raise DeepcompError(f"tensor name {name!r} must be 1..1024 bytes of UTF-8")
    return struct.pack("<H", len(b)) + b


def dense_payload(name: str, array: np.ndarray) -> bytes:
    a = np.asarray(array)
    if a.dtype == np.float64 or a.dtype == np.float16:
        a = a.astype(np.float32)
    if a.dtype == np.bool_:
        a = a.astype(np.uint8)
    if a.dtype not in DTYPE_CODES:
        raise DeepcompError(f"tensor {name!r} has dtype {a.dtype}, which .dcz cannot store")
    if a.ndim > 8:
        raise DeepcompError(f"tensor {name!r} has {a.ndim} dimensions; .dcz stores at most 8")
    head = _name_bytes(name) + struct.pack("<BB", DTYPE_CODES[a.dtype], a.ndim)
    head += struct.pack(f"<{a.ndim}I", *a.shape)
    head += b"\0" * ((8 - len(head) % 8) % 8)
    return head + np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<"), copy=False).tobytes()


def coded_payload(e: EncodedWeight) -> bytes:
    k = int(e.codebook.size)
    parts = [
        _name_bytes(e.name),
        struct.pack("<B", len(e.shape)),
        struct.pack(f"<{len(e.shape)}I", *e.shape),
        struct.pack("<BBHQQ", e.bits, e.index_bits, k, e.nnz, e.entries),
        np.ascontiguousarray(e.codebook, dtype="<f4").tobytes(),
        np.ascontiguousarray(e.weight_lengths, dtype=np.uint8).tobytes(),
        np.ascontiguousarray(e.gap_lengths, dtype=np.uint8).tobytes(),
        struct.pack("<QQ", e.weight_stream_bits, e.gap_stream_bits),
        e.weight_stream,
        e.gap_stream,
    ]
    return b"".join(parts)


def coded_section(e: EncodedWeight) -> tuple[int, bytes]:
    """(section type, payload) of a coded tensor: CODED. A block-coded tensor (CODED_BLOCK, minor 1)
    gets its own type here."""
    return CODED, coded_payload(e)


def _json_bytes(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=False).encode("utf-8")


def pack_dcz(meta: Mapping, graph: Mapping, tensors: list[tuple[int, bytes]], *, compress_json: bool = True,
             minor: int = 0) -> bytes:
    """The whole file as bytes: META, GRAPH (zlib-compressed JSON), then the (type, payload) tensor
    sections in order. ``minor``: 1 for a file with the int8 additions, else 0."""
    flags = FLAG_ZLIB if compress_json else 0
    pack = (lambda b: zlib.compress(b, 9)) if compress_json else (lambda b: b)
    sections = [(META, flags, pack(_json_bytes(meta))), (GRAPH, flags, pack(_json_bytes(graph))),
                *((t, 0, p) for t, p in tensors)]
    n = len(sections)
    table_end = 32 + 32 * n
    offsets, pos = [], table_end
    for _, _, payload in sections:
        pos = (pos + ALIGN - 1) // ALIGN * ALIGN
        offsets.append(pos)
        pos += len(payload)
    size = pos
    table = b"".join(struct.pack("<IIQQII", t, f, off, len(p), zlib.crc32(p), 0)
                     for (t, f, p), off in zip(sections, offsets))
    head = MAGIC + struct.pack("<HHIQI", MAJOR, minor, n, size, zlib.crc32(table))
    head += struct.pack("<I", zlib.crc32(head))
    out = bytearray(size)
    out[:32] = head
    out[32:table_end] = table
    for (_, _, payload), off in zip(sections, offsets):
        out[off:off + len(payload)] = payload
    return bytes(out)


def write_dcz(path, *, meta: Mapping, graph: Mapping, dense: Mapping[str, np.ndarray],
              coded: Mapping[str, EncodedWeight], order: list[str] | None = None, minor: int = 0) -> int:
    """Write a .dcz file; tensors in ``order`` (default: coded then dense). Returns the file size."""
    names = order if order is not None else [*coded, *dense]
    tensors = []
    for name in names:
        if name in coded:
            tensors.append(coded_section(coded[name]))
        elif name in dense:
            tensors.append((DENSE, dense_payload(name, dense[name])))
        else:
            raise DeepcompError(f"tensor {name!r} is in the order but neither coded nor dense")
    data = pack_dcz(meta, graph, tensors, minor=minor)
    atomic_write(path, data)
    return len(data)


# ------------------------------------------------------------------------------------------- read
class _Cursor:
    def __init__(self, buf: memoryview, what: str):
        self.buf, self.off, self.what = buf, 0, what

    def take(self, n: int) -> memoryview:
        if n > len(self.buf) - self.off:
            raise DczError(f"{self.what}: truncated (needs {n} more bytes at offset {self.off}, "
                           f"payload has {len(self.buf)})")
        out = self.buf[self.off:self.off + n]
        self.off += n
        return out

    def unpack(self, fmt: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))

    @property
    def left(self) -> int:
        return len(self.buf) - self.off


def _read_name(c: _Cursor) -> str:
    (n,) = c.unpack("H")
    if not 1 <= n <= 1024:
        raise DczError(f"{c.what}: bad tensor name length {n}")
    try:
        return bytes(c.take(n)).decode("utf-8")
    except UnicodeDecodeError:
        raise DczError(f"{c.what}: tensor name is not UTF-8") from None


def _parse_dense(buf: memoryview, idx: int) -> tuple[str, np.ndarray]:
    c = _Cursor(buf, f"DENSE section {idx}")
    name = _read_name(c)
    c.what = f"DENSE tensor '{name}'"
    code, ndim = c.unpack("BB")
    if code not in DTYPES:
        raise DczError(f"{c.what}: unknown dtype {code}")
    if ndim > 8:
        raise DczError(f"{c.what}: ndim {ndim} exceeds 8")
    dims = c.unpack(f"{ndim}I")
    pad = (8 - c.off % 8) % 8
    if any(c.take(pad)):
        raise DczError(f"{c.what}: nonzero padding")
    dt = DTYPES[code]
    need = int(np.prod(dims, dtype=object)) * dt.itemsize
    if need != c.left:
        raise DczError(f"{c.what}: data holds {c.left} bytes but its shape needs {need}")
    arr = np.frombuffer(c.take(need), dtype=dt).reshape(dims).astype(dt.newbyteorder("="), copy=True)
    return name, arr


def _parse_coded(buf: memoryview, idx: int) -> EncodedWeight:
    c = _Cursor(buf, f"CODED section {idx}")
    name = _read_name(c)
    c.what = f"CODED tensor '{name}'"
    (ndim,) = c.unpack("B")
    if not 1 <= ndim <= 8:
        raise DczError(f"{c.what}: ndim {ndim} not in 1..8")
    dims = c.unpack(f"{ndim}I")
    numel = 1
    for d in dims:
        if d == 0:
            raise DczError(f"{c.what}: zero dimension")
        numel *= d
        if numel > 1 << 36:
            raise DczError(f"{c.what}: more than 2^36 elements")
    if dims[0] > 1 << 22:
        raise DczError(f"{c.what}: more than 2^22 rows")
    if numel // dims[0] > 2**31 - 1:
        raise DczError(f"{c.what}: rows longer than 2^31 - 1")
    bits, index_bits, k, nnz, entries = c.unpack("BBHQQ")
    if not 1 <= bits <= 8:
        raise DczError(f"{c.what}: weight bits {bits} not in 1..8")
    if not 1 <= index_bits <= 12:
        raise DczError(f"{c.what}: index bits {index_bits} not in 1..12")
    if k > 1 << bits:
        raise DczError(f"{c.what}: codebook of {k} exceeds 2^bits")
    if nnz > numel:
        raise DczError(f"{c.what}: more nonzeros than elements")
    if entries < nnz:
        raise DczError(f"{c.what}: fewer entries than nonzeros")
    if (k == 0) != (nnz == 0):
        raise DczError(f"{c.what}: codebook size and nonzero count disagree")
    codebook = np.frombuffer(c.take(4 * k), dtype="<f4").astype(np.float32)
    wlen = np.frombuffer(c.take(k), dtype=np.uint8).copy()
    glen = np.frombuffer(c.take(1 << index_bits), dtype=np.uint8).copy()
    wbits, gbits = c.unpack("QQ")
    if wbits > c.left * 8 or gbits > c.left * 8:
        raise DczError(f"{c.what}: stream lengths exceed the payload")
    if nnz > wbits:
        raise DczError(f"{c.what}: weight stream too short for its nonzeros")
    if entries > gbits:
        raise DczError(f"{c.what}: gap stream too short for its entries")
    wstream = bytes(c.take((wbits + 7) // 8))
    gstream = bytes(c.take((gbits + 7) // 8))
    if c.left:
        raise DczError(f"{c.what}: {c.left} trailing bytes")
    for what, lens in (("weight", wlen), ("gap", glen)):
        if lens.size and lens.max() > 16:
            raise DczError(f"{c.what} {what} code: Huffman code length {int(lens.max())} exceeds 16")
        kraft = int(np.sum((1 << (16 - lens[lens > 0].astype(np.int64)))))
        if kraft > 1 << 16:
            raise DczError(f"{c.what} {what} code: Huffman code lengths are not a prefix code (Kraft sum exceeds 1)")
    return EncodedWeight(name=name, shape=tuple(int(d) for d in dims), bits=bits, index_bits=index_bits,
                         codebook=codebook, nnz=int(nnz), entries=int(entries), weight_lengths=wlen,
                         gap_lengths=glen, weight_stream=wstream, weight_stream_bits=int(wbits),
                         gap_stream=gstream, gap_stream_bits=int(gbits))


@dataclass
class DczContents:
    version: tuple[int, int]
    meta: dict
    graph: dict
    dense: dict[str, np.ndarray] = field(default_factory=dict)
    coded: dict[str, EncodedWeight] = field(default_factory=dict)
    file_bytes: int = 0
    section_bytes: dict[str, int] = field(default_factory=dict)  # tensor name -> payload length


def _json(payload: memoryview, what: str, compressed: bool) -> dict:
    raw = bytes(payload)
    if compressed:
        d = zlib.decompressobj()
        try:
            raw = d.decompress(raw, MAX_JSON)
        except zlib.error as e:
            raise DczError(f"{what} section: bad zlib stream: {e}") from None
        if d.unconsumed_tail:
            raise DczError(f"{what} section inflates to more than 64 MiB")
        if not d.eof or d.unused_data:
            raise DczError(f"{what} section is not one complete zlib stream")
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DczError(f"{what} section is not valid UTF-8 JSON: {e}") from None
    except RecursionError:
        raise DczError(f"{what} section nests JSON too deeply") from None
    if not isinstance(obj, dict):
        raise DczError(f"{what} section must hold a JSON object")
    return obj


def parse_dcz(data: bytes, *, decode: bool = True) -> DczContents:
    """Validate and parse a whole file held in memory. With ``decode`` every coded stream is decoded
    too (so a stream that does not decode is caught here); without, streams are checked lazily."""
    buf = memoryview(data)
    size = len(buf)
    if size < 32:
        raise DczError(f"not a .dcz file: {size} bytes, shorter than the 32-byte header")
    if bytes(buf[:8]) != MAGIC:
        raise DczError("not a .dcz file: bad magic bytes")
    major, minor, nsec, fsize, table_crc, head_crc = struct.unpack("<HHIQII", buf[8:32])
    if major != MAJOR:
        raise DczError(f"unsupported .dcz major version {major} (this deepcomp reads {MAJOR})")
    if zlib.crc32(buf[:28]) != head_crc:
        raise DczError("header checksum mismatch: the file is corrupted")
    if fsize != size:
        raise DczError(f"file is {size} bytes but its header says {fsize} (truncated or padded)")
    if not 2 <= nsec <= MAX_SECTIONS:
        raise DczError(f"bad section count {nsec}")
    table_end = 32 + 32 * nsec
    if table_end > size:
        raise DczError("section table runs past the end of the file")
    if zlib.crc32(buf[32:table_end]) != table_crc:
        raise DczError("section table checksum mismatch: the file is corrupted")
    out = DczContents(version=(major, minor), meta={}, graph={}, file_bytes=size)
    prev_end, n_meta, n_graph = table_end, 0, 0
    for i in range(nsec):
        t, flags, off, length, crc, reserved = struct.unpack("<IIQQII", buf[32 + 32 * i:64 + 32 * i])
        where = f"section {i}"
        if flags & ~FLAG_ZLIB or reserved:
            raise DczError(f"{where}: unknown flags or nonzero reserved field")
        if flags & FLAG_ZLIB and t not in (META, GRAPH):
            raise DczError(f"{where}: only META and GRAPH may be zlib-compressed")
        if off % ALIGN or off < prev_end or off > size or length > size - off:
            raise DczError(f"{where}: payload offset/length outside the file or out of order")
        if any(buf[prev_end:off]):
            raise DczError(f"{where}: nonzero bytes in the padding before its payload")
        prev_end = off + length
        payload = buf[off:off + length]
        if zlib.crc32(payload) != crc:
            raise DczError(f"{where}: checksum mismatch: the file is corrupted")
        if t == META:
            out.meta, n_meta = _json(payload, "META", bool(flags & FLAG_ZLIB)), n_meta + 1
        elif t == GRAPH:
            out.graph, n_graph = _json(payload, "GRAPH", bool(flags & FLAG_ZLIB)), n_graph + 1
        elif t in (DENSE, CODED):
            if t == DENSE:
                name, arr = _parse_dense(payload, i)
                value = arr
            else:
                value = _parse_coded(payload, i)
                name = value.name
            if name in out.dense or name in out.coded:
                raise DczError(f"tensor '{name}' appears twice")
            (out.dense if t == DENSE else out.coded)[name] = value
            out.section_bytes[name] = length
        elif minor <= MINOR:
            raise DczError(f"{where}: unknown section type {t}")
    if any(buf[prev_end:]):
        raise DczError("nonzero bytes after the last section")
    if n_meta != 1 or n_graph != 1:
        raise DczError("a .dcz file needs exactly one META and one GRAPH section")
    if decode:
        for e in out.coded.values():
            e.decode()
    return out


def read_dcz(path, *, decode: bool = False) -> DczContents:
    """Read and validate a .dcz file (see :func:`parse_dcz`)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise DczError(f"no such file: {str(path)!r}") from None
    except IsADirectoryError:
        raise DczError(f"{str(path)!r} is a directory, not a .dcz file") from None
    except OSError as e:
        raise DczError(f"cannot read {str(path)!r}: {e.strerror}") from None
    return parse_dcz(data, decode=decode)


def decompress(path) -> dict[str, np.ndarray]:
    """Every tensor of the source state_dict, dense, in its original order and with its original name:
    coded weights decoded (codebook values at kept positions, 0.0 elsewhere)."""
    contents = read_dcz(path)
    keys = contents.meta.get("state_dict_keys") or [*contents.coded, *contents.dense]
    out = {}
    for key in keys:
        if key in contents.coded:
            out[key] = contents.coded[key].dense()
        elif key in contents.dense:
            out[key] = contents.dense[key]
        else:
            raise DczError(f"META lists tensor '{key}' but the file holds no section for it")
    return out


def save_state_dict(path, output) -> int:
    """decompress(path) written as a torch state_dict file (torch.save). Returns the tensor count."""
    import torch

    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in decompress(path).items()}
    import io

    buf = io.BytesIO()
    torch.save(tensors, buf)
    atomic_write(output, buf.getvalue())
    return len(tensors)
