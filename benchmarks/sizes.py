"""AlexNet and VGG-16 compressed with the paper's recipe, beside the paper's Tables 1, 4 and 5.

    python benchmarks/sizes.py [--out benchmarks/results/sizes.md]

Weights are random (torchvision init, fixed seed): no pretrained ImageNet weights can be fetched here.
Pruning hits the paper's per-layer densities and bits exactly; Huffman gains less than on trained
weights, whose clusters and gaps are far more skewed, so the P+Q+H column is the one that differs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from deepcomp.pipeline import compress
from deepcomp.report import report_from_file
from deepcomp.zoo import load_model

# The paper's per-layer figures (Tables 4 and 5): weight bits after Huffman, index bits after Huffman,
# and the compressed share of the original (P+Q+H).
PAPER = {
    "alexnet": {
        "total": {"ratio": 35, "mb": 6.9, "pq_ratio": 27, "p_ratio": 9},
        "layers": {"conv1": (6.3, 1.2, 20.53), "conv2": (5.5, 2.3, 9.43), "conv3": (5.1, 2.6, 8.44),
                   "conv4": (5.2, 2.5, 9.11), "conv5": (5.6, 2.5, 9.43), "fc6": (3.9, 3.2, 2.39),
                   "fc7": (3.6, 3.7, 2.46), "fc8": (4.0, 3.2, 5.85)},
    },
    "vgg16": {
        "total": {"ratio": 49, "mb": 11.3, "pq_ratio": 31, "p_ratio": 13},
        "layers": {"conv1_1": (6.8, 1.7, 29.97), "conv1_2": (6.5, 2.6, 6.99), "conv2_1": (5.6, 2.4, 8.91),
                   "conv2_2": (5.9, 2.3, 9.31), "conv3_1": (4.8, 1.8, 11.15), "conv3_2": (4.6, 2.9, 5.67),
                   "conv3_3": (4.6, 2.2, 8.96), "conv4_1": (4.6, 2.6, 7.29), "conv4_2": (4.2, 2.9, 5.93),
                   "conv4_3": (4.4, 2.5, 7.47), "conv5_1": (4.7, 2.5, 8.00), "conv5_2": (4.6, 2.7, 6.52),
                   "conv5_3": (4.6, 2.3, 7.79), "fc6": (3.6, 3.5, 1.10), "fc7": (4.0, 4.3, 1.25),
                   "fc8": (4.0, 3.4, 5.24)},
    },
}


def table(arch: str, seed: int = 0) -> str:
    torch.manual_seed(seed)
    loaded = load_model(f"torchvision:{arch}")
    result = compress(loaded, progress=False, seed=seed)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"{arch}.dcz"
        result.save(path)
        report = report_from_file(path)
    paper = PAPER[arch]
    lines = [f"### {arch} (recipe deep-compression; compressed in {result.elapsed:.1f} s)", "",
             "| layer | weights | kept % | weight bits P+Q / H (paper H) | index bits P+Q / H (paper H) "
             "| size of original, ours (paper) |",
             "|---|---|---|---|---|---|"]
    for l in report["layers"]:
        pw, pi, ps = paper["layers"].get(l["label"], (float("nan"),) * 3)
        lines.append(f"| {l['label'] or l['name']} | {l['weights']:,} | {100 * l['density']:.1f} | "
                     f"{l['weight_bits']} / {l['weight_bits_huffman']:.1f} ({pw}) | "
                     f"{l['index_bits']} / {l['index_bits_huffman']:.1f} ({pi}) | "
                     f"{100 * l['share_of_original']:.2f}% ({ps}%) |")
    t = report["total"]
    st = t["stages"]
    o = t["original_bytes"]
    lines += ["", f"| {arch} | original | pruned (P) | + shared (P+Q) | + Huffman (P+Q+H), the .dcz file |",
              "|---|---|---|---|---|",
              f"| deepcomp (random weights) | {o / 2**20:.1f} MB | {st['pruned_bytes'] / 2**20:.1f} MB "
              f"({o / st['pruned_bytes']:.1f}x) | {st['quantized_bytes'] / 2**20:.1f} MB "
              f"({o / st['quantized_bytes']:.1f}x) | {t['file_bytes'] / 2**20:.2f} MB ({t['ratio']:.1f}x) |",
              f"| paper (trained weights) | {'240' if arch == 'alexnet' else '552'} MB | ({paper['total']['p_ratio']}x) "
              f"| ({paper['total']['pq_ratio']}x) | {paper['total']['mb']} MB ({paper['total']['ratio']}x) |", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="also write the markdown here")
    ap.add_argument("--arch", action="append", choices=list(PAPER), help="default: both")
    args = ap.parse_args(argv)
    text = "\n".join(table(a) for a in (args.arch or list(PAPER)))
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
