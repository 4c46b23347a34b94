"""The markdown the benchmark prints: end-to-end table, load to ready, per-layer tables, notes."""

from __future__ import annotations

from benchmarks.peers.profiling import group_of
from benchmarks.peers.runtimes import FP32_PEERS, LABELS, RUNTIMES


def markdown(specs: list[dict], summaries: list[dict], measures: list[dict], args, notes: list[str]) -> str:
    runtimes = [rt for rt in RUNTIMES if any(rt in s for s in summaries)]
    L = [f"{args.threads} threads, median ms over {args.rounds} rounds (range in brackets); every runtime in its "
         "own process, rounds alternating runtimes; ratio = runtime ms / deepcomp ms (above 1: deepcomp faster).", ""]
    L += ["| batch | model | " + " | ".join(LABELS[rt] for rt in runtimes) + " | deepcomp vs fastest fp32 peer |",
          "|---|---|" + "---|" * (len(runtimes) + 1)]
    flags = []
    for b in args.batches:
        for spec, s in zip(specs, summaries):
            cells = []
            for rt in runtimes:
                e = s.get(rt, {}).get("batches", {}).get(b)
                if not e:
                    cells.append("-")
                    continue
                mark = ("" if e["ok"] else " (wrong output)") + (" *" if e["disturbed"] else "")
                ratio = "" if rt == "deepcomp" or "deepcomp" not in s else \
                    f", {e['median'] / s['deepcomp']['batches'][b]['median']:.2f}x"
                cells.append(f"{e['median']:.1f} [{e['min']:.1f}-{e['max']:.1f}]{ratio}{mark}")
                if e["disturbed"]:
                    flags.append(f"{LABELS[rt]} {spec['name']} batch {b}: {e['disturbed']} of {e['rounds']} rounds "
                                 f"stayed above {args.max_foreign} cores of foreign load (max {e['foreign_max']:.2f})")
                if not e["ok"]:
                    flags.append(f"{LABELS[rt]} {spec['name']} batch {b}: output differs from torch by "
                                 f"{e['rel_err']:.2e} (relative max)")
            peers = [s[rt]["batches"][b]["median"] for rt in FP32_PEERS if rt in s and b in s[rt]["batches"]]
            fastest = f"**{min(peers) / s['deepcomp']['batches'][b]['median']:.2f}x**" if peers and "deepcomp" in s else "-"
            L.append(f"| {b} | {spec['name']} | " + " | ".join(cells) + f" | {fastest} |")
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
    errs = [f"{LABELS[rt]} {spec['name']}: {e}" for spec, m in zip(specs, measures) for rt, e in m["errors"].items()]
    for text in notes + errs + flags:
        L.append(f"- {text}")
    if flags:
        L.append("- `*`: a figure with disturbed rounds; rerun on a quiet machine before quoting it.")
    return "\n".join(L) + "\n"


def layer_table(spec: dict, profiles: dict, args) -> list[str]:
    groups = spec["groups"]
    rts = [rt for rt in RUNTIMES if rt in profiles]
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
        L += [f"Per layer, {spec['name']} batch {b} (ms, one profiling run each; conv rows include their ReLU):", "",
              "| layer | " + " | ".join(LABELS[rt] for rt in rts) + " | deepcomp vs fastest fp32 peer |",
              "|---|" + "---|" * (len(rts) + 1)]
        for g in rows:
            cells = [f"{per[rt][g]:.3f}" if g in per[rt] else "-" for rt in rts]
            peers = [per[rt][g] for rt in FP32_PEERS if rt in per and g in per[rt]]
            ours = per.get("deepcomp", {}).get(g)
            ratio = f"{min(peers) / ours:.2f}x" if peers and ours else "-"
            L.append(f"| {g} | " + " | ".join(cells) + f" | {ratio} |")
        L.append("")
    return L
