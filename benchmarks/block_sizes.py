"""Size of a CODED_BLOCK section against a CODED section of the same block-pruned, shared weights.

Random-normal weights pruned in whole 1x4 (or 4x4) blocks by magnitude (deepcomp.prune.block), shared
by k-means with 2^bits centroids (deepcomp.quantize.share_layer), coded both ways; the figures are
the sections' payload bytes and their streams' bits. Deterministic (seeded).

    python benchmarks/block_sizes.py [--shapes 64x64x3x3,256x256x3x3,4096x9216] [--kept 0.3] [--bits 8]
"""

from __future__ import annotations

import argparse

import torch

from deepcomp.dcz import coded_payload
from deepcomp.encode import encode_shared
from deepcomp.encode_block import encode_block_shared
from deepcomp.prune.block import block_mask
from deepcomp.quantize import share_layer


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="64x64x3x3,256x256x3x3,512x512x3x3,1000x4096")
    ap.add_argument("--kept", type=float, default=0.3, help="fraction of blocks kept")
    ap.add_argument("--bits", type=int, default=8, help="weight bits (2^bits centroids)")
    ap.add_argument("--index-bits", default="4,5,8")
    args = ap.parse_args(argv)
    print("| shape | block | index bits | CODED bytes | CODED_BLOCK bytes | smaller by | gap kbit (CODED -> BLOCK) "
          "| weight kbit |")
    print("|---|---|---|---|---|---|---|---|")
    for spec in args.shapes.split(","):
        shape = tuple(int(d) for d in spec.split("x"))
        w = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        for out_block in (1, 4):
            mask = block_mask(w.abs(), 1.0 - args.kept, out_block=out_block).numpy()
            s = share_layer("w", w.numpy(), mask, args.bits, seed=0)
            for ib in (int(b) for b in args.index_bits.split(",")):
                c, b = encode_shared(s, ib), encode_block_shared(s, ib)
                nc, nb = len(coded_payload(c)), len(coded_payload(b))
                print(f"| {spec} | {out_block}x4 | {ib} | {nc} | {nb} | {100 * (1 - nb / nc):.1f}% "
                      f"| {c.gap_stream_bits / 1e3:.1f} -> {b.gap_stream_bits / 1e3:.1f} "
                      f"| {c.weight_stream_bits / 1e3:.1f} |", flush=True)


if __name__ == "__main__":
    main()
