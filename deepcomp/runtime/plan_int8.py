"""Planning the int8 nodes of a graph (docs/int8.md): what each int8 conv2d / linear step absorbs,
and whether its output stays uint8. Plain data, like deepcomp.runtime.plan, which calls
:func:`fuse_int8` before its fp32 fusion.

For each node with an ``int8`` attribute, in order:

- a ReLU that is its only consumer goes into the step's epilogue; then, for a conv, a clamp (ReLU6,
  hardtanh: applied to the fp32 output, which such a step always gives) or else a max-pool (square
  kernel and stride, no padding, dilation 1, floor mode) that is the only consumer of what came
  before (the pool takes the max of the integer sums: the epilogue is monotone);
- its output stays uint8 (a :class:`deepcomp.runtime.int8.QTensor`) when the file says ``"out":
  "u8"`` and it reaches exactly one int8 conv / linear whose input quantization is the output's,
  through nothing but identity ``adaptive_avgpool2d`` nodes (AlexNet and VGG at 224) and a
  ``flatten`` from dimension 1 (which the int8 linear step absorbs: it flattens NCHW as torch
  does); those nodes are dropped. A conv feeding a stride-1 int8 conv writes straight into that
  conv's padded layout (``out_padding``). Otherwise the step hands on float32 and the next ops run
  fp32.

The same rule decides, on the compress side, which nodes the writer marks ``"u8"``
(:func:`u8_consumers`), so the file and the plan agree.
"""

from __future__ import annotations

SAME = 1e-6  # relative difference under which two scales are the same quantization


def _pool(attrs) -> tuple[int, int] | None:
    (kh, kw), (sh, sw) = attrs["kernel_size"], attrs["stride"]
    if kh != kw or sh != sw or attrs["padding"] != (0, 0) or attrs["dilation"] != (1, 1) or attrs["ceil_mode"]:
        return None
    return kh, sh


def _users(checked, output: str) -> dict[str, list[str]]:
    users: dict[str, list[str]] = {output: [""]}  # "": the graph's output
    for name, _, ins, _ in checked:
        for s in ins:
            users.setdefault(s, []).append(name)
    return users


def _only_user(users, n: str) -> str | None:
    u = users.get(n, [])
    return u[0] if len(u) == 1 and u[0] else None


def _through(users, by_name, shapes, start: str, flat: bool):
    """From ``start``, skip identity adaptive pools and a flatten; (the node reached or None, the
    skipped nodes, whether the data is flat by then)."""
    skipped, n = [], start
    while True:
        u = _only_user(users, n)
        if u is None:
            return None, skipped, flat
        op, _, attrs = by_name[u]
        if op == "flatten" and attrs["start_dim"] == 1:
            flat = True
        elif not (op == "adaptive_avgpool2d" and not flat and tuple(attrs["output_size"]) == tuple(shapes[n][1:])):
            return u, skipped, flat
        skipped.append(u)
        n = u


def u8_consumers(checked, shapes, output: str, int8_nodes) -> dict[str, tuple[str, list[str]]]:
    """{int8 node: (the int8 node that takes its output as uint8, the nodes skipped between)} for the
    nodes of ``int8_nodes`` (names) whose output can stay uint8, ignoring scales."""
    by_name = {name: (op, ins, attrs) for name, op, ins, attrs in checked}
    users = _users(checked, output)
    out = {}
    for name in int8_nodes:
        op = by_name[name][0]
        end = name
        u = _only_user(users, end)
        if u is not None and by_name[u][0] == "relu":
            end, u = u, _only_user(users, u)
        if op == "conv2d" and u is not None and by_name[u][0] == "maxpool2d" and _pool(by_name[u][2]):
            end = u
        nxt, skipped, flat = _through(users, by_name, shapes, end, op == "linear")
        if nxt is None or nxt not in int8_nodes:
            continue
        nop, _, nattrs = by_name[nxt]
        if (nop == "linear" and not flat) or (nop == "conv2d" and flat):
            continue
        out[name] = (nxt, skipped)
    return out


def fuse_int8(checked, shapes: dict, output: str) -> tuple[dict[str, str], dict[str, dict]]:
    """(alias: absorbed node -> the int8 node whose step computes it, {int8 node: its fusion}).

    A fusion is ``{"relu", "clamp": (min, max) or None, "pool": (k, s) or None, "out_q": (scale, zp) or None (fp32 out),
    "out_padding": (ph, pw)}``. ``shapes`` is updated: an int8 node's shape becomes that of the
    last node it absorbed.
    """
    by_name = {name: (op, ins, attrs) for name, op, ins, attrs in checked}
    users = _users(checked, output)
    alias: dict[str, str] = {}
    info: dict[str, dict] = {}
    for name, op, _, attrs in checked:
        if op not in ("conv2d", "linear") or attrs.get("int8") is None:
            continue
        f = {"relu": False, "clamp": None, "pool": None, "out_q": None, "out_padding": (0, 0)}
        end, u = name, _only_user(users, name)
        if u is not None and by_name[u][0] == "relu":
            f["relu"], alias[u] = True, name
            end, u = u, _only_user(users, u)
        if op == "conv2d" and u is not None and by_name[u][0] == "clamp":
            f["clamp"], alias[u] = (by_name[u][2]["min"], by_name[u][2]["max"]), name
            end = u
        elif op == "conv2d" and u is not None and by_name[u][0] == "maxpool2d" and _pool(by_name[u][2]):
            f["pool"], alias[u] = _pool(by_name[u][2]), name
            end = u
        shapes[name] = shapes[end]
        info[name] = f
    for name, (nxt, skipped) in u8_consumers(checked, shapes, output, info).items():
        q, nq = by_name[name][2]["int8"], by_name[nxt][2]["int8"]
        if q["out"] != "u8" or nq["in_zp"] != q["out_zp"] or abs(nq["in_scale"] - q["out_scale"]) > SAME * q["out_scale"]:
            continue
        f = info[name]
        f["out_q"] = (q["out_scale"], q["out_zp"])
        nop, _, nattrs = by_name[nxt]
        if nop == "conv2d" and nattrs["stride"] == (1, 1):
            f["out_padding"] = nattrs["padding"]
        for s in skipped:
            alias[s] = name
    return alias, info
