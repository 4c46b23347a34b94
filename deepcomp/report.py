"""Per-layer reports of a .dcz file in the shape of the paper's Tables 4/5 (torch-free)."""

from __future__ import annotations

import os

from deepcomp.dcz import read_dcz
from deepcomp.errors import DczError


def _kb(n: float) -> str:
    if n >= 1 << 20:
        return f"{n / (1 << 20):.2f} MB"
    if n >= 1 << 10:
        return f"{n / (1 << 10):.1f} KB"
    return f"{int(n)} B"


def _count(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:.1f}M"
    if n >= 1000:
        return f"{n / 1e3:.0f}K"
    return str(n)


def _validate_graph(c) -> None:
    """Plan the graph as deepcomp.load would (shapes, attributes, memory bound): info on a file
    that load refuses says so instead of printing a table."""
    from deepcomp.runtime.plan import make_plan

    shapes = {k: tuple(v.shape) for k, v in c.dense.items()} | {k: tuple(e.shape) for k, e in c.coded.items()}

    def tensor_shape(name, where):
        if name not in shapes:
            raise DczError(f"node {where!r} uses the tensor {name!r}, which the file does not hold")
        return shapes[name]
    make_plan(c.graph, tensor_shape)


def report_from_file(path) -> dict:
    """The `deepcomp info --json` object: per coded layer and totals (ratio = original / file bytes)."""
    c = read_dcz(path)
    _validate_graph(c)
    recipe_layers = c.meta.get("recipe", {}).get("layers", {})
    int8_weights = {n.get("attrs", {}).get("weight") for n in c.graph.get("nodes", [])
                    if isinstance(n, dict) and isinstance(n.get("attrs"), dict) and n["attrs"].get("int8")}
    layers = []
    for name, e in c.coded.items():
        # the layer: "<conv>.weight", or an attention's "<attention>.in_proj_weight" (layer "<attention>.in_proj")
        module = name[:-len(".weight")] if name.endswith(".weight") else name.removesuffix("_weight")
        info = recipe_layers.get(module, {})
        kind = info.get("kind") or ("conv" if len(e.shape) == 4 else "fc")
        kept = e.kept  # weights (a CODED_BLOCK tensor's nnz counts blocks)
        nnz = max(kept, 1)
        layers.append({
            "name": module,
            "label": info.get("label", ""),
            "kind": kind,
            "precision": "int8" if name in int8_weights else "fp32",
            "weights": e.numel,
            "nonzeros": kept,
            "density": kept / e.numel,
            "weight_bits": e.bits,
            "weight_bits_huffman": e.weight_stream_bits / nnz,
            "index_bits": e.index_bits,
            "index_bits_huffman": e.gap_stream_bits / nnz,
            "entries": e.entries,
            "codebook": int(e.codebook.size),
            "bytes": c.section_bytes[name],
            "share_of_original": c.section_bytes[name] / (4 * e.numel),
        })
    file_bytes = os.path.getsize(path)
    original = int(c.meta.get("original_bytes") or 4 * sum(
        v.size for k, v in c.dense.items() if v.dtype.kind == "f") + 4 * sum(e.numel for e in c.coded.values()))
    weights = sum(l["weights"] for l in layers)
    nnz = sum(l["nonzeros"] for l in layers)
    total = {
        "original_bytes": original,
        "file_bytes": file_bytes,
        "ratio": original / file_bytes,
        "weights": weights,
        "nonzeros": nnz,
        "density": nnz / weights if weights else 0.0,
        "weight_bits": sum(l["weight_bits"] * l["nonzeros"] for l in layers) / max(nnz, 1),
        "weight_bits_huffman": sum(l["weight_bits_huffman"] * l["nonzeros"] for l in layers) / max(nnz, 1),
        "index_bits": sum(l["index_bits"] * l["nonzeros"] for l in layers) / max(nnz, 1),
        "index_bits_huffman": sum(l["index_bits_huffman"] * l["nonzeros"] for l in layers) / max(nnz, 1),
    }
    stages = c.meta.get("stages", {})
    if stages:
        total["stages"] = {k: int(v) for k, v in stages.items()}
        total["stages"]["file_bytes"] = file_bytes
    out = {"model": c.meta.get("model", ""), "arch": c.meta.get("arch", ""), "layers": layers, "total": total}
    if int8_weights:
        out["int8"] = {**c.meta.get("recipe", {}).get("int8", {}), "file_minor": c.version[1],
                       "nodes": [n["name"] for n in c.graph["nodes"] if isinstance(n.get("attrs"), dict)
                                 and n["attrs"].get("int8")]}
    return out


def format_table(head: list[str], rows: list[list], *, left: int = 1, rule_before_last: bool = False) -> str:
    """Columns as wide as their widest cell (so long layer names keep the others aligned): the first
    ``left`` (text) left-aligned, the rest right-aligned; a rule under the header (and above the last row)."""
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    line = lambda r: "  ".join(str(v).ljust(w) if i < left else str(v).rjust(w)  # noqa: E731
                               for i, (v, w) in enumerate(zip(r, widths))).rstrip()
    rule = "  ".join("-" * w for w in widths)
    body = [line(r) for r in rows]
    if rule_before_last and body:
        body.insert(len(body) - 1, rule)
    return "\n".join([line(head), rule, *body])


# The paper's stage names, spelled out under the table (Han et al., Tables 4 and 5).
REPORT_LEGEND = """\
P+Q / H: bits per kept weight after pruning and quantization (P+Q: fixed-width codes, 2^bits shared
values and a fixed-width relative index) and after Huffman coding (H: the mean code length in the file).
bytes: the layer's coded size in the file; of orig.: that size over the layer's fp32 weights."""


def format_report(report: dict) -> str:
    int8 = "int8" in report  # a column saying which layers run int8, for files that have any
    head = ["layer", *(["runs"] if int8 else []), "weights", "kept %", "weight bits P+Q / H", "index bits P+Q / H",
            "bytes", "of orig."]
    rows = []
    for l in report["layers"]:
        name = f"{l['name']} ({l['label']})" if l.get("label") else l["name"]
        rows.append([name, *([l.get("precision", "fp32")] if int8 else []), _count(l["weights"]),
                     f"{100 * l['density']:.1f}",
                     f"{l['weight_bits']} / {l['weight_bits_huffman']:.1f}",
                     f"{l['index_bits']} / {l['index_bits_huffman']:.1f}",
                     _kb(l["bytes"]), f"{100 * l['share_of_original']:.2f}%"])
    t = report["total"]
    rows.append(["total", *([""] if int8 else []), _count(t["weights"]), f"{100 * t['density']:.1f}",
                 f"{t['weight_bits']:.1f} / {t['weight_bits_huffman']:.1f}",
                 f"{t['index_bits']:.1f} / {t['index_bits_huffman']:.1f}",
                 _kb(t["file_bytes"]), f"{100 / t['ratio']:.2f}%"])
    return format_table(head, rows, left=2 if int8 else 1, rule_before_last=True) + "\n\n" + REPORT_LEGEND


def format_bench(r: dict) -> str:
    """`deepcomp bench`'s table for one batch size (a result of deepcomp.bench.bench_file)."""
    head = ["layer", "kind", "kernel", "kept %", "dense torch", "deepcomp", "speedup", "torch.sparse", "vs sparse"]
    rows = []
    for l in r["layers"]:
        ts = l["torch_sparse_ms"]
        rows.append([l["name"], l["kind"], l.get("kernel", ""), f"{100 * l['density']:.1f}", f"{l['dense_ms']:.3f}",
                     f"{l['sparse_ms']:.3f}", f"{l['speedup']:.2f}x", "-" if ts is None else f"{ts:.3f}",
                     "-" if ts is None else f"{ts / l['sparse_ms']:.2f}x"])
    conv = [l for l in r["layers"] if l["kind"] == "conv"]
    if conv:
        d, s = sum(l["dense_ms"] for l in conv), sum(l["sparse_ms"] for l in conv)
        rows.append(["all conv", "", "", "", f"{d:.3f}", f"{s:.3f}", f"{d / s:.2f}x", "", ""])
    e = r["end_to_end"]
    rows.append(["end to end", "", "", "", f"{e['dense_ms']:.3f}", f"{e['sparse_ms']:.3f}", f"{e['speedup']:.2f}x",
                 "", ""])
    title = f"batch {r['batch']}, {r['threads']} thread(s), kernels: {r['isa']}; median ms"
    warnings = "".join(f"\nUNRELIABLE: {w}" for w in r.get("unreliable", []))
    return title + "\n\n" + format_table(head, rows, left=3) + fallback_notes(r.get("fp32_fallback")) + warnings


def fallback_notes(fallback: dict | None) -> str:
    """Lines naming the int8 nodes of a file that the runtime runs fp32 (deepcomp.runtime.precision)."""
    return "".join(f"\nfp32 here: {name} ({why})" for name, why in (fallback or {}).items())


def print_bench(r: dict) -> None:
    print(format_bench(r))
    print()


def print_report(report: dict, *, elapsed: float | None = None, path: str | None = None, notes=()) -> None:
    for n in notes:
        print(f"note: {n}")
    print(format_report(report))
    t = report["total"]
    print()
    if path:
        print(f"file:      {path}")
    print(f"original:  {_kb(t['original_bytes'])} (fp32 parameters)")
    print(f"file:      {_kb(t['file_bytes'])} on disk -> {t['ratio']:.1f}x smaller")
    st = t.get("stages")
    if st:
        o = t["original_bytes"]
        print(f"stages:    pruned {_kb(st['pruned_bytes'])} ({o / st['pruned_bytes']:.1f}x), "
              f"+ shared {_kb(st['quantized_bytes'])} ({o / st['quantized_bytes']:.1f}x), "
              f"+ Huffman {_kb(st['file_bytes'])} ({o / st['file_bytes']:.1f}x)")
    q = report.get("int8")
    if q:
        print(f"int8:      {int8_summary(report)}")
    if elapsed is not None:
        print(f"time:      {elapsed:.1f} s")


def int8_summary(report: dict) -> str:
    """One line: how many layers run int8, the block shape and where the activation ranges came from."""
    q = report["int8"]
    n8 = sum(1 for l in report["layers"] if l.get("precision") == "int8")
    block = "x".join(map(str, q.get("block", []))) or "?"
    if q.get("calibration") == "random":
        cal = "activations calibrated on random inputs: the file's accuracy means nothing"
    elif q.get("calibration") == "data":
        cal = f"activations calibrated on {q.get('samples', '?')} samples of data ({q.get('method', '?')})"
    else:
        cal = "calibration not recorded"
    bits = f", {q['weight_bits']}-bit weights" if "weight_bits" in q else ""
    return f"{n8} of {len(report['layers'])} layers run int8 ({', '.join(q['nodes'])}), {block} blocks{bits}; {cal}"
