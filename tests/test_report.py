"""`deepcomp info` and `deepcomp bench` tables: a legend for the paper's stage names, columns aligned
whatever the length of the layer names."""

from deepcomp.report import REPORT_LEGEND, format_bench, format_report


def _layer(name, **over):
    layer = {"name": name, "label": "", "kind": "fc", "weights": 1000, "nonzeros": 100, "density": 0.1,
             "weight_bits": 5, "weight_bits_huffman": 2.5, "index_bits": 4, "index_bits_huffman": 3.9,
             "bytes": 160, "share_of_original": 0.04}
    return {**layer, **over}


def _columns_end_together(lines):
    """The right-aligned cells of every line end at the same offsets."""
    def ends(line):
        return [i + 1 for i in range(len(line)) if line[i] != " " and (i + 1 == len(line) or line[i + 1] == " ")]

    last = [ends(l)[-1] for l in lines]
    return len(set(last)) == 1


def test_info_table_has_a_legend_and_aligned_columns():
    long = "encoder.layers.11.attention.output.dense_projection_with_a_long_name"
    report = {"layers": [_layer("fc1"), _layer(long, weights=12_345_678)],
              "total": {"weights": 12_346_678, "density": 0.1, "weight_bits": 5.0, "weight_bits_huffman": 2.5,
                        "index_bits": 4.0, "index_bits_huffman": 3.9, "file_bytes": 2000, "ratio": 20.0}}
    text = format_report(report)
    assert REPORT_LEGEND in text and "Huffman" in REPORT_LEGEND and "pruning and quantization" in REPORT_LEGEND
    table = [l for l in text.split("\n\n")[0].splitlines() if not l.startswith("-")]
    assert table[0].startswith("layer") and "weight bits P+Q / H" in table[0]
    assert _columns_end_together(table)


def test_bench_columns_stay_aligned_with_long_layer_names():
    layers = [{"name": n, "kind": k, "kernel": "sparse", "density": 0.3, "dense_ms": 1.5, "sparse_ms": 0.5,
               "speedup": 3.0, "torch_sparse_ms": ts}
              for n, k, ts in (("conv1", "conv", None), ("backbone.stage4.block3.conv_expand_1x1", "conv", None),
                               ("fc", "fc", 1.0))]
    r = {"batch": 1, "threads": 2, "isa": "avx2", "layers": layers,
         "end_to_end": {"dense_ms": 4.5, "sparse_ms": 1.5, "speedup": 3.0}}
    lines = [l for l in format_bench(r).splitlines()[2:] if not l.startswith("-")]
    # the deepcomp column (6th) ends at the same offset on every row with a value there
    header = lines[0]
    end = header.index("deepcomp") + len("deepcomp")
    for l in lines[1:]:
        assert l[end - 5:end] in ("0.500", "1.000", "1.500") and l[end] == " ", l
    assert lines[2].startswith("backbone.stage4.block3.conv_expand_1x1  conv")
