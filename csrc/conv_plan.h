// Planning of a direct sparse (or dense) 2-D convolution for one input shape.
//
// Layout. For stride (sh, sw) the zero-padded input xp[c][i][j] is split into sh*sw phase planes,
// plane (i % sh, j % sw) holding xp[c][i / sh * ...]: element [c][i/sh][j/sw] of a [C][Hq][Wq]
// block. Output pixel (oy, ox) and tap (y, x) then read plane ((y*dh) % sh, (x*dw) % sw) at row
// oy + (y*dh)/sh, column ox + (x*dw)/sw; with the output kept in "padded width" (p = oy*Wq + ox),
// every tap is the same input slice shifted by a constant offset. Stride 1 is the one-plane case,
// a 1x1 convolution is an SpMM over the CHW input. Columns ox >= OW of the padded-width output are
// computed and discarded.
//
// A plan is plain data, built once per ConvPlanKey and shared read-only by every thread.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <vector>

#include "dispatch.h"
#include "sparse_linear.h"

namespace deepcomp {

struct ConvGeometry {
  int64_t in_channels, out_channels, kh, kw, sh, sw, ph, pw, dh, dw, groups;
};

// Bytes of the per-band input buffer the plans aim for (tests lower it to exercise banding).
int64_t conv_band_budget();
int64_t set_conv_band_budget(int64_t bytes);  // returns the previous value
// Layers (groups == 1) whose effective density reaches this run on the dense kernel: 0 sends all of
// them there, anything above 1 none; negative restores the ISA's default.
double conv_dense_threshold();
double set_conv_dense_threshold(double threshold);  // returns the previous value
double conv_default_dense_threshold(int width);
// Whether sparse plans (of layers at least 24% dense) use the register-tiled kernel (groups of
// output channels sharing input loads). By default on for 16-lane ISAs, off for 8-lane ones (AVX2:
// the per-row kernel's FMAs take their input from memory at two loads per cycle, so shared loads
// save nothing there; docs/kernels.md).
bool conv_register_tiling();
bool set_conv_register_tiling(bool on);  // returns the previous value
// Largest pixel block of sparse plans, in vectors (1..12), and the L1 bytes a chunk's input window
// may take; 0 restores the ISA's default (conv_default_max_nv / conv_default_l1_budget).
// Sparse-kernel outputs (all images of one call) of at least this many bytes, whose rows are whole
// cache lines, are written with non-temporal stores: far larger than the last-level cache, their lines would only be read from
// memory for ownership and evicted again. Not part of the plan; a negative value restores the ISA's
// default (8 MB, the size of this AVX2 machine's L3, on 8-lane ISAs; never on 16-lane ones, not measured there); docs/kernels.md.
int64_t conv_stream_bytes();
int64_t set_conv_stream_bytes(int64_t bytes);  // returns the previous value
int conv_max_nv();
int set_conv_max_nv(int nv);               // returns the previous value
int64_t conv_l1_budget();
int64_t set_conv_l1_budget(int64_t bytes);  // returns the previous value
int conv_default_max_nv(int width);
int64_t conv_default_l1_budget(int width);

// Everything a plan depends on besides the layer itself: the input's spatial size and the run's
// thread count, SIMD width and planning knobs. A change in any of them makes a new plan.
struct ConvPlanKey {
  int64_t H, W;
  int threads, width;
  int64_t budget;
  double dense_threshold;
  bool rt;
  int max_nv;
  int64_t l1;
  auto tie() const { return std::tie(H, W, threads, width, budget, dense_threshold, rt, max_nv, l1); }
  bool operator<(const ConvPlanKey& o) const { return tie() < o.tie(); }
  bool operator==(const ConvPlanKey& o) const { return tie() == o.tie(); }
};
// The key for an H x W input under the current thread count, ISA and knobs.
ConvPlanKey current_conv_key(int64_t H, int64_t W, int threads);

struct ConvPlan {
  ConvPlanKey key;
  int64_t OH, OW, Wq;
  // The output rows are processed in bands of BH rows (the last one may be shorter); a band reads
  // Hb rows of each phase plane, held in a band buffer of ncopies regions of S floats.
  int64_t BH, Hb, nbands;
  int64_t cstride;    // floats from one channel to the next in a phase plane (>= Hb * Wq)
  int64_t plane;      // floats from one phase plane to the next (>= C * cstride)
  int64_t in_floats;  // band buffer: ncopies regions of S floats
  int64_t S;          // one region: the phase planes plus read slack, a multiple of the SIMD width
  // Region 0 holds the phase planes; region r > 0 the same shifted left by shift[r] floats, so that
  // with Wq a multiple of the SIMD width every load of the sparse kernel is aligned.
  std::vector<int64_t> shift;
  int64_t P;          // BH * Wq padded-width output positions of a full band
  int nv;             // vectors per pixel block
  int64_t block;      // nv * width floats (sparse), one output row (dense)
  int64_t nblocks;    // pixel blocks of a full band
  // 0: blocks tile the band's padded-width positions (block b starts at b * block). Otherwise
  // rows end in at least one vector of padding columns only (VGG-16's 224- and 112-wide layers:
  // Wq = 240 and 128), and a block is one of `pieces` pieces of a row that cover its output columns
  // and skip those vectors (see block_start).
  int64_t pieces;
  int64_t block_start(int64_t b) const { return pieces ? b / pieces * Wq + b % pieces * block : b * block; }
  int64_t blocks_for(int64_t rows) const { return pieces ? rows * pieces : (rows * Wq + block - 1) / block; }
  // Dense plans run on the dense kernel: K = in_channels * kh * kw taps, off[] holds all K of them
  // (no shifted copies, a plane row of any width), wpack the weights [oc / ocb][tap][ocb]
  // (ocb = 2 * width, zero past the last channel), and a "block" is one output row.
  bool dense;
  int64_t K;
  std::vector<float> wpack;
  std::vector<int32_t> off;
  // Sparse plans: input channels are walked in chunks whose input window fits in L1. The nonzeros
  // are reordered chunk-major: seg[c*(OC+1) + oc] is the first of row oc in chunk c, off/values
  // are in that order, with kConvPad readable zero entries past the end. The values are fp32 even
  // for a codebook layer (see docs/kernels.md).
  int64_t nchunks;
  std::vector<int64_t> seg;
  std::vector<float> values;
  // Register-tiled sparse plans (key.rt and a density of at least 0.24) hold the same nonzeros as ConvRtChunk data instead of
  // seg/off/values: per chunk, ngroups groups of kConvRtRows output channels (rt_idx[(c * ngroups
  // + g) * 3 ...]), each group's entries sorted by pattern, then by offset.
  bool rt = false;
  int64_t ngroups = 0;
  std::vector<int64_t> rt_idx;
  std::vector<int32_t> rt_hdr, rt_off;
  std::vector<float> rt_w;
  ConvRtChunk rt_chunk(int64_t c) const {
    return {rt_idx.data() + c * ngroups * 3, rt_hdr.data(), rt_off.data(), rt_w.data()};
  }
};

// Entries of off/values past the last nonzero that the sparse kernel may read.
constexpr int64_t kConvPad = 8;

// Whether the layer runs on the dense kernel for this key (groups == 1, effective density at or
// above the key's threshold).
bool conv_wants_dense(const ConvGeometry& g, const CsrStore& w, const ConvPlanKey& key);
// Whether the layer runs on the Winograd kernels (F(4x4, 3x3) or F(4x4, 5x5); csrc/winograd.h) for
// N inputs of H x W: it fits, has nonzeros, the call has enough tiles and input channels, and
// conv_winograd_saving reaches the threshold (0: every layer that fits and has nonzeros; negative
// restores the default).
bool conv_wants_winograd(const ConvGeometry& g, const CsrStore& w, int64_t N, int64_t H, int64_t W, int width);
// The estimated ratio of the direct kernels' work to Winograd's (0 if it does not fit).
double conv_winograd_saving(const ConvGeometry& g, const CsrStore& w, int64_t N, int64_t H, int64_t W, int width);
double conv_winograd_threshold();
double set_conv_winograd_threshold(double threshold);  // returns the previous value
double conv_default_winograd_threshold(int width);
std::shared_ptr<const ConvPlan> build_sparse_plan(const ConvGeometry& g, const CsrStore& w, const ConvPlanKey& key);
std::shared_ptr<const ConvPlan> build_dense_plan(const ConvGeometry& g, const CsrStore& w, const ConvPlanKey& key);
// Output spatial size for an input of H x W (ShapeError if empty).
std::pair<int64_t, int64_t> conv_out_size(const ConvGeometry& g, int64_t H, int64_t W);

// The last few plans of one layer, by key; thread-safe, plans are shared read-only.
class ConvPlanCache {
 public:
  std::shared_ptr<const ConvPlan> get(const ConvGeometry& g, const CsrStore& w, const ConvPlanKey& key) const;

 private:
  static constexpr size_t kMaxPlans = 8;
  mutable std::mutex mutex_;
  mutable std::map<ConvPlanKey, std::shared_ptr<const ConvPlan>> plans_;
};

}  // namespace deepcomp
