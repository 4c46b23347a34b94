"""The tensors of a loaded .dcz as the runtime's ops ask for them: shapes (for planning), dense
vectors and arrays, CSR weights, BatchNorm folded into scale/shift. Deploy side: numpy only.

The dicts are in the native loader's format: ``dense`` maps a name to an array, ``coded`` to a dict
of CSR arrays (``row_ptr``, ``col``, ``cluster``, ``codebook``, ``shape``).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from deepcomp.errors import DczError


def f32(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


class Weight(NamedTuple):
    """A conv/linear weight as CSR arrays plus its bookkeeping (``bytes``: its size at run time)."""

    name: str
    shape: tuple[int, ...]
    csr: dict
    nnz: int
    bytes: int

    @property
    def rows(self) -> int:
        return self.shape[0]

    @property
    def cols(self) -> int:
        return int(math.prod(self.shape[1:]))


class Tensors:
    """Looks tensors up by name for the node ``where`` that uses them; every miss is a DczError."""

    def __init__(self, dense: dict, coded: dict):
        self.dense, self.coded = dense, coded

    def shape(self, name: Any, where: str) -> tuple[int, ...]:
        if not isinstance(name, str):
            raise DczError(f"invalid graph: node {where!r} has no tensor name")
        if name in self.coded:
            return tuple(int(d) for d in self.coded[name]["shape"])
        if name in self.dense:
            return tuple(int(d) for d in np.shape(self.dense[name]))
        raise DczError(f"node {where!r} uses the tensor {name!r}, which the file does not hold")

    def array(self, name: str, where: str) -> np.ndarray:
        """A tensor as float32 (a coded one is densified: constants are small)."""
        if name in self.dense:
            return f32(self.dense[name])
        if name in self.coded:
            c = self.coded[name]
            from deepcomp.runtime.reference import csr_to_dense

            shape = tuple(int(d) for d in c["shape"])
            return csr_to_dense(c["row_ptr"], c["col"], int(math.prod(shape[1:])), cluster=c["cluster"],
                                codebook=c["codebook"]).reshape(shape)
        raise DczError(f"node {where!r} uses the tensor {name!r}, which the file does not hold")

    def weight(self, name: str, where: str) -> Weight:
        if name in self.coded:
            c = self.coded[name]
            csr = {
                "row_ptr": np.ascontiguousarray(c["row_ptr"], dtype=np.int64),
                "col": np.ascontiguousarray(c["col"], dtype=np.int32),
                "cluster": np.ascontiguousarray(c["cluster"], dtype=np.uint8),
                "codebook": f32(c["codebook"]),
            }
            return Weight(name, tuple(int(d) for d in c["shape"]), csr, int(len(csr["col"])),
                          sum(a.nbytes for a in csr.values()))
        w = self.array(name, where)
        rows, cols = w.shape[0], int(math.prod(w.shape[1:]))
        csr = {
            "row_ptr": np.arange(rows + 1, dtype=np.int64) * cols,
            "col": np.tile(np.arange(cols, dtype=np.int32), rows),
            "values": w.reshape(-1),
        }
        return Weight(name, tuple(w.shape), csr, rows * cols, sum(a.nbytes for a in csr.values()))

    def vector(self, name: Any, length: int, where: str, what: str) -> np.ndarray | None:
        """A dense vector of ``length`` entries, or None for a null name."""
        if name is None:
            return None
        if not isinstance(name, str) or name not in self.dense:
            raise DczError(f"node {where!r} uses the tensor {name!r} as its {what}, which the file does not hold "
                           "as a dense tensor")
        v = f32(self.dense[name]).reshape(-1)
        if v.shape[0] != length:
            raise DczError(f"invalid graph: {what} {name!r} of node {where!r} has {v.shape[0]} entries, "
                           f"expected {length}")
        return v

    def bn(self, bn: dict, channels: int, where: str) -> tuple[np.ndarray, np.ndarray]:
        """A BatchNorm's per-channel (scale, shift): ``y = x * scale + shift``."""
        mean = self.vector(bn["running_mean"], channels, where, "running_mean")
        var = self.vector(bn["running_var"], channels, where, "running_var")
        weight = self.vector(bn.get("weight"), channels, where, "batch norm weight")
        bias = self.vector(bn.get("bias"), channels, where, "batch norm bias")
        scale = 1.0 / np.sqrt(var.astype(np.float64) + float(bn["eps"]))
        if weight is not None:
            scale = scale * weight
        shift = -mean.astype(np.float64) * scale
        if bias is not None:
            shift = shift + bias
        return f32(scale), f32(shift)
