// The list of convolution micro-kernels, written once. Each ISA's kernels_impl.h instantiates
// every entry from one template per op; the dispatch tables, the C++ test (csrc/tests) and the
// micro-benchmark all walk the resulting MicroKernel list, so a kernel added here is tested and
// timed on every ISA without further code.
//
// A micro-kernel's name is <dtype>_<op>_<tile>__<isa>, e.g. f32_conv_sparse_8v__avx512: the sparse
// direct conv over a pixel block of 8 vectors, or f32_conv_dense_12px__avx2: the dense direct conv
// over 12 output pixels by two vectors of output channels, f32_conv_rt2x8v__avx512: the register-tiled
// sparse conv over groups of 2 output channels and a pixel block of 8 vectors.
#pragma once

// Sparse direct conv, pixel block of NV vectors (Kernels::conv): X(NV).
#define DC_CONV_SPARSE_TILES(X) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) X(12)
// Register-tiled sparse direct conv (kConvRtRows output channels share each input load), pixel
// block of NV vectors (Kernels::conv_rt): X(NV). An ISA instantiates the tiles up to
// conv_rt_max_nv(width).
#define DC_CONV_RT_TILES(X) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8)
// Dense direct conv, PX output pixels (Kernels::conv_dense): X(PX). An ISA instantiates the tiles up
// to its dense_px (its register file holds 2 * PX accumulators).
#define DC_CONV_DENSE_TILES(X) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) X(12)
// Winograd GEMM (F(4x4, 3x3) and F(4x4, 5x5)) over the input channels, a register tile of kWinoMr
// output channels by NV vectors of tiles (Kernels::wino_gemm): X(NV). An ISA instantiates the tiles
// up to its wino_nv.
#define DC_WINO_GEMM_TILES(X) X(1) X(2) X(3) X(4)
// The same product for NT single tiles of a last, mostly empty tile vector (Kernels::wino_tail):
// X(NT). An ISA instantiates the tiles up to its wino_tail_max.
#define DC_WINO_TAIL_TILES(X) X(1) X(2) X(3) X(4)
