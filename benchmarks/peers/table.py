"""The markdown the benchmark prints: end-to-end table, load to ready, per-layer tables, notes."""

from __future__ import annotations

from benchmarks.peers.profiling import PROFILE_EXCESS, SUMS_TO_WHOLE, group_of
from benchmarks.peers.runtimes import FP32_PEERS, INT8, INT8_PEERS, LABELS, RUNTIMES

# The ratio columns after the runtimes: (header, ours, theirs); a ratio is the fastest of theirs over ours.
FP32_RATIOS = [("deepcomp vs fastest fp32 peer", "deepcomp", FP32_PEERS)]
INT8_RATIOS = [("deepcomp int8 vs fastest int8 peer", "deepcomp-int8", INT8_PEERS),
               ("deepcomp int8 vs OpenVINO default", "deepcomp-int8", ["openvino-default"]),
               ("deepcomp int8 vs fastest fp32 peer", "deepcomp-int8", FP32_PEERS)]


def fastest(times: dict[str, float], rts) -> tuple[str, float] | None:
    """(runtime, ms) of the fastest of rts among times {runtime: ms}, None if none of them ran."""
    have = [(times[rt], rt) for rt in rts if times.get(rt) is not None]
    return (min(have)[1], min(have)[0]) if have else None


def speedup(times: dict[str, float], ours: str, theirs) -> float | None:
    """The fastest of theirs' ms over ours' (above 1: ours is faster); None if either is missing."""
    best = fastest(times, theirs)
    return best[1] / times[ours] if best and times.get(ours) else None


def _ratio_cell(r: float | None, bold: bool) -> str:
    if r is None:
        return "-"
    return f"**{r:.2f}x**" if bold else f"{r:.2f}x"


def medians(s: dict, b: int) -> dict[str, float]:
    """{runtime: median ms} of a model's summary at batch b."""
    return {rt: e["batches"][b]["median"] for rt, e in s.items() if b in e.get("batches", {})}


def markdown(specs: list[dict], summaries: list[dict], measures: list[dict], args, notes: list[str]) -> str:
    runtimes = [rt for rt in RUNTIMES if any(rt in s for s in summaries)]
    with_int8 = any(rt in INT8 for rt in runtimes) or any(
        rt in INT8 for m in measures for rt in m["errors"])
    ratios = FP32_RATIOS + (INT8_RATIOS if with_int8 else [])
    L = [f"{args.threads} threads, median ms over {args.rounds} rounds (range in brackets); every runtime in its "
         "own process, rounds alternating runtimes; ratio = runtime ms / deepcomp ms"
         + (" (int8 runtimes: / deepcomp int8 ms)" if with_int8 else "") + " (above 1: deepcomp faster).", ""]
    extra = [h for h, _, _ in ratios[:1]] + (["fastest int8 peer"] if with_int8 else []) + [h for h, _, _ in ratios[1:]]
    L += ["| batch | model | " + " | ".join([LABELS[rt] for rt in runtimes] + extra) + " |",
          "|---|---|" + "---|" * (len(runtimes) + len(extra))]
    flags, int8_errors = [], []
    for b in args.batches:
        for spec, s in zip(specs, summaries):
            ms = medians(s, b)
            cells = []
            for rt in runtimes:
                e = s.get(rt, {}).get("batches", {}).get(b)
                if not e:
                    cells.append("-")
                    continue
                ours = "deepcomp-int8" if rt in INT8 else "deepcomp"
                ratio = "" if rt == ours or not ms.get(ours) else f", {e['median'] / ms[ours]:.2f}x"
                wrong = "" if e["ok"] else (f" (int8 error {e['rel_err']:.1e})" if rt in INT8 else " (wrong output)")
                cells.append(f"{e['median']:.1f} [{e['min']:.1f}-{e['max']:.1f}]{ratio}{wrong}"
                             + (" *" if e["disturbed"] else ""))
                if e["disturbed"]:
                    flags.append(f"{LABELS[rt]} {spec['name']} batch {b}: {e['disturbed']} of {e['rounds']} rounds "
                                 f"stayed above {args.max_foreign} cores of foreign load (max {e['foreign_max']:.2f})")
                if rt in INT8:
                    err = "no reference" if e["rel_err"] is None else f"{e['rel_err']:.1e}"
                    int8_errors.append(f"{LABELS[rt]} {spec['name']} b{b} {err}")
                elif not e["ok"]:
                    flags.append(f"{LABELS[rt]} {spec['name']} batch {b}: output differs from torch by "
                                 f"{e['rel_err']:.2e} (relative max)")
            tail = [_ratio_cell(speedup(ms, *ratios[0][1:]), True)]
            if with_int8:
                best = fastest(ms, INT8_PEERS)
                tail.append(f"{LABELS[best[0]]} {best[1]:.1f}" if best else "-")
                tail += [_ratio_cell(speedup(ms, ours, theirs), True) for _, ours, theirs in ratios[1:]]
            L.append(f"| {b} | {spec['name']} | " + " | ".join(cells + tail) + " |")
    L.append("")
    L += ["Load to ready (fresh process: import, load, first batch-1 inference) and peak RSS at that point:", "",
          "| model | " + " | ".join(LABELS[rt] for rt in runtimes) + " |", "|---|" + "---|" * len(runtimes)]
    for spec, s in zip(specs, summaries):
        L.append(f"| {spec['name']} | " + " | ".join(
            f"{s[rt]['load_s']:.2f} s, {s[rt]['peak_rss_mb']:.0f} MB" if rt in s else "-" for rt in runtimes) + " |")
    L.append("")
    for spec, m in zip(specs, measures):
        if m["profiles"]:
            L += layer_table(spec, m["profiles"], args)
    errs = [f"{LABELS[rt]} {spec['name']} skipped: {e}" for spec, m in zip(specs, measures) for rt, e in m["errors"].items()]
    if int8_errors:
        notes = notes + ["int8 output against torch fp32 on the same weights, relative max error (random weights "
                         "and inputs: a sanity check, not accuracy): " + ", ".join(int8_errors)]
    for text in notes + errs + flags:
        L.append(f"- {text}")
    if flags:
        L.append("- `*`: a figure with disturbed rounds; rerun on a quiet machine before quoting it.")
    return "\n".join(L) + "\n"


def layer_table(spec: dict, profiles: dict, args) -> list[str]:
    groups = spec["groups"]
    rts = [rt for rt in RUNTIMES if rt in profiles]
    ratios = [r for r in FP32_RATIOS + INT8_RATIOS[:1] if r[1] in rts or r is FP32_RATIOS[0]]
    L = []
    for b in args.batches:
        per = {}
        for rt in rts:
            acc: dict[str, float] = {}
            for node, ms in profiles[rt]["batches"][str(b)].get("layers", {}).items():
                g = group_of(node, groups)
                acc[g] = acc.get(g, 0.0) + ms
            per[rt] = acc
        rows = [g for g in dict.fromkeys(groups.values()) if g != "other"] + ["other"]
        L += [f"Per layer, {spec['name']} batch {b} (ms, one profiling run each, redone while the layers of "
              f"PyTorch or deepcomp added up to over {PROFILE_EXCESS}x their timed median; conv rows include their "
              "ReLU):", "",
              "| layer | " + " | ".join([LABELS[rt] for rt in rts] + [h for h, _, _ in ratios]) + " |",
              "|---|" + "---|" * (len(rts) + len(ratios))]
        for g in rows:
            ms = {rt: per[rt][g] for rt in rts if g in per[rt]}
            cells = [f"{ms[rt]:.3f}" if rt in ms else "-" for rt in rts]
            cells += [_ratio_cell(speedup(ms, ours, theirs), False) for _, ours, theirs in ratios]
            L.append(f"| {g} | " + " | ".join(cells) + " |")
        L.append("")
    over = [f"{LABELS[rt]} {profiles[rt]['excess']:.2f}x" for rt in rts if profiles[rt].get("excess", 0) > PROFILE_EXCESS
            and rt in SUMS_TO_WHOLE]
    if over:
        L += [f"- {spec['name']}: per-layer sums still over their timed medians after the retries ({', '.join(over)}): "
              "those layer figures were disturbed.", ""]
    return L
