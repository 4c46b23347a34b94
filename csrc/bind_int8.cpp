// Python bindings of the int8 path: ISA choice, the uint8 activation layout and packing, and the
// int8 conv / linear layers. Compute runs without the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common.h"
#include "int8_conv.h"
#include "int8_kernels.h"
#include "int8_linear.h"

namespace py = pybind11;

namespace deepcomp {

namespace {

constexpr int kIn = py::array::c_style | py::array::forcecast;
using I8 = py::array_t<int8_t, kIn>;
using U8 = py::array_t<uint8_t, kIn>;
using F32 = py::array_t<float, kIn>;

std::string S(int64_t v) { return std::to_string(v); }

std::pair<int64_t, int64_t> pair2(const py::handle& h, const char* name) {
  if (py::isinstance<py::int_>(h)) return {h.cast<int64_t>(), h.cast<int64_t>()};
  auto s = h.cast<py::sequence>();
  if (s.size() != 2) throw ShapeError(std::string(name) + " must be an int or a pair of ints");
  return {s[0].cast<int64_t>(), s[1].cast<int64_t>()};
}

py::dict layout_dict(const Act8Layout& L) {
  py::dict d;
  d["C"] = L.C, d["H"] = L.H, d["W"] = L.W, d["ph"] = L.ph, d["pw"] = L.pw, d["sh"] = L.sh, d["sw"] = L.sw;
  d["G"] = L.G, d["Hq"] = L.Hq, d["Wq"] = L.Wq, d["plane"] = L.plane, d["group"] = L.group;
  d["slack"] = L.slack, d["bytes"] = L.bytes();
  return d;
}

void check_per_channel(const F32& a, int64_t n, const char* what) {
  if (a.ndim() != 1 || a.shape(0) != n) throw ShapeError(std::string(what) + " must have " + S(n) + " entries");
}

int kernel_code(const std::string& k) {
  if (k == "auto") return 0;
  if (k == "sparse") return 1;
  if (k == "dense") return 2;
  if (k == "tiled") return 3;
  throw ShapeError("kernel must be 'auto', 'sparse', 'dense' or 'tiled', got '" + k + "'");
}

// Int8Linear has no tiled loop (a row's blocks share no input loads with other rows at batch 1).
int linear_kernel_code(const std::string& k) {
  if (k == "tiled") throw ShapeError("Int8Linear: kernel must be 'auto', 'sparse' or 'dense', got 'tiled'");
  return kernel_code(k);
}

bool out_is_u8(const std::string& out) {
  if (out != "u8" && out != "f32") throw ShapeError("out must be 'u8' or 'f32', got '" + out + "'");
  return out == "u8";
}

// N images in layout L: [N, bytes] or [bytes].
int64_t images_of(const U8& x, const Act8Layout& L, const char* what) {
  const int64_t need = L.bytes();
  if (x.ndim() == 1 && x.shape(0) == need) return 1;
  if (x.ndim() == 2 && x.shape(1) == need) return x.shape(0);
  throw ShapeError(std::string(what) + ": x must be [N, " + S(need) + "] uint8 (the layout of a " + S(L.C) + "x" +
                   S(L.H) + "x" + S(L.W) + " input)");
}

using I64 = py::array_t<int64_t, kIn>;
using I32 = py::array_t<int32_t, kIn>;

// The weight argument of both layers: an int8 array of `ndim` dimensions, or a dict of CSR arrays
// (row_ptr, col, cluster, table [rows, K] int8, shape), deepcomp.runtime.int8.CodedInt8's form,
// turned into its blocks without a dense copy. `shape` gets the weight's shape.
Blocks8 weight_blocks(const py::object& w, size_t ndim, std::vector<int64_t>& shape, const std::string& what) {
  if (py::isinstance<py::dict>(w)) {
    auto d = w.cast<py::dict>();
    for (const char* k : {"row_ptr", "col", "cluster", "table", "shape"})
      if (!d.contains(k)) throw ShapeError(what + ": a coded weight needs '" + std::string(k) + "'");
    shape = d["shape"].cast<std::vector<int64_t>>();
    if (shape.size() != ndim) throw ShapeError(what + ": the coded weight must be " + S(int64_t(ndim)) + "-D");
    for (int64_t v : shape)
      if (v < 1) throw ShapeError(what + ": weight dimensions must be >= 1");
    auto rp = d["row_ptr"].cast<I64>();
    auto col = d["col"].cast<I32>();
    auto cl = py::array_t<uint8_t, kIn>(d["cluster"].cast<py::object>());
    auto table = d["table"].cast<I8>();
    const int64_t rows = shape[0], taps = ndim == 4 ? shape[2] * shape[3] : 1;
    if (rp.ndim() != 1 || rp.shape(0) != rows + 1) throw ShapeError(what + ": row_ptr must have " + S(rows + 1) + " entries");
    if (col.ndim() != 1 || cl.ndim() != 1 || col.shape(0) != cl.shape(0))
      throw ShapeError(what + ": col and cluster must be 1-D of one length");
    if (table.ndim() != 2 || table.shape(0) != rows) throw ShapeError(what + ": table must be [" + S(rows) + ", K] int8");
    py::gil_scoped_release nogil;
    return blocks8_coded(rp.data(), col.data(), cl.data(), col.shape(0), table.data(), table.shape(1), rows, shape[1],
                         taps);
  }
  auto a = w.cast<I8>();
  if (size_t(a.ndim()) != ndim)
    throw ShapeError(what + ": weight must be " + (ndim == 4 ? "[out, in, kh, kw]" : "[out, in]") + " int8");
  shape.assign(a.shape(), a.shape() + ndim);
  const int64_t taps = ndim == 4 ? shape[2] * shape[3] : 1;
  return blocks8_dense(a.data(), shape[0], shape[1], taps);
}

// The output array of a forward: a new one of `shape`, or `out` when given, checked to be a
// writable C-contiguous array of that shape and of dtype T (the caller's buffer, reused).
template <typename T>
py::array output_array(const py::object& out, const std::vector<py::ssize_t>& shape, const std::string& what) {
  if (out.is_none()) return py::array_t<T>(shape);
  if (!py::isinstance<py::array>(out)) throw ShapeError(what + ": out must be a numpy array");
  auto a = out.cast<py::array>();
  const bool ok = py::isinstance<py::array_t<T>>(a) && a.writeable() &&
                  (a.flags() & py::array::c_style) && size_t(a.ndim()) == shape.size() &&
                  std::equal(shape.begin(), shape.end(), a.shape());
  if (!ok) {
    std::string want;
    for (auto d : shape) want += (want.empty() ? "" : ", ") + S(int64_t(d));
    throw ShapeError(what + ": out must be a writable C-contiguous " + (sizeof(T) == 1 ? "uint8" : "float32") + " [" +
                     want + "] array");
  }
  return a;
}

// (lo, hi) of a clamp given as a pair of numbers or None (no bound on that side).
std::pair<float, float> clamp_bounds(const py::object& clamp) {
  const auto t = clamp.cast<std::pair<py::object, py::object>>();
  const auto bound = [](const py::object& v, float none) { return v.is_none() ? none : v.cast<float>(); };
  return {bound(t.first, -INFINITY), bound(t.second, INFINITY)};
}

struct PyConv8 {
  std::unique_ptr<Int8Conv2d> k;

  PyConv8(const py::object& weight, const F32& m, const F32& b, const py::handle& stride, const py::handle& padding,
          const py::handle& dilation, int zp_in, bool relu, const std::string& out, int zp_out,
          const py::handle& out_padding, const py::object& pool, const py::object& clamp, const std::string& kernel,
          double dense_threshold) {
    std::vector<int64_t> shape;
    const Blocks8 w = weight_blocks(weight, 4, shape, "Int8Conv2d");
    Conv8Geometry g{shape[1], shape[0], shape[2], shape[3], 1, 1, 0, 0, 1, 1};
    std::tie(g.sh, g.sw) = pair2(stride, "stride");
    std::tie(g.ph, g.pw) = pair2(padding, "padding");
    std::tie(g.dh, g.dw) = pair2(dilation, "dilation");
    check_per_channel(m, g.out_channels, "Int8Conv2d: m");
    check_per_channel(b, g.out_channels, "Int8Conv2d: b");
    Conv8Output o;
    o.u8 = out_is_u8(out);
    o.zp = zp_out;
    o.relu = relu;
    std::tie(o.oph, o.opw) = pair2(out_padding, "out_padding");
    if (!pool.is_none()) std::tie(o.pool_k, o.pool_s) = pair2(pool, "pool");
    if (!clamp.is_none()) std::tie(o.lo, o.hi) = clamp_bounds(clamp);
    k = std::make_unique<Int8Conv2d>(w, g, m.data(), b.data(), zp_in, o, kernel_code(kernel), dense_threshold);
  }

  py::array forward(const U8& x, int64_t H, int64_t W, const py::object& out) const {
    const Act8Layout L = k->in_layout(H, W);
    const int64_t N = images_of(x, L, "Int8Conv2d.forward");
    const auto [oh, ow] = k->out_size(H, W);
    py::array y;
    if (k->output().u8)
      y = output_array<uint8_t>(out, {N, k->out_layout(H, W).bytes()}, "Int8Conv2d.forward");
    else
      y = output_array<float>(out, {N, k->geometry().out_channels, oh, ow}, "Int8Conv2d.forward");
    void* yp = y.mutable_data();
    {
      py::gil_scoped_release nogil;
      k->forward(x.data(), N, H, W, yp);
    }
    return y;
  }
};

struct PyLinear8 {
  std::unique_ptr<Int8Linear> k;

  PyLinear8(const py::object& weight, const F32& m, const F32& b, int zp_in, bool relu, const std::string& out,
            int zp_out, const std::string& kernel, double dense_threshold) {
    std::vector<int64_t> shape;
    Blocks8 w = weight_blocks(weight, 2, shape, "Int8Linear");
    check_per_channel(m, shape[0], "Int8Linear: m");
    check_per_channel(b, shape[0], "Int8Linear: b");
    k = std::make_unique<Int8Linear>(std::move(w), m.data(), b.data(), zp_in, relu, out_is_u8(out), zp_out,
                                     linear_kernel_code(kernel), dense_threshold);
  }

  py::array forward(const U8& x, const py::object& out) const {
    const bool one = x.ndim() == 1;
    if ((x.ndim() != 1 && x.ndim() != 2) || x.shape(x.ndim() - 1) != k->in_features())
      throw ShapeError("Int8Linear.forward: x must be [N, " + S(k->in_features()) + "] uint8");
    const int64_t N = one ? 1 : x.shape(0);
    py::array y;
    std::vector<py::ssize_t> shape = one ? std::vector<py::ssize_t>{k->out_features()}
                                         : std::vector<py::ssize_t>{N, k->out_features()};
    if (k->u8_out())
      y = output_array<uint8_t>(out, shape, "Int8Linear.forward");
    else
      y = output_array<float>(out, shape, "Int8Linear.forward");
    void* yp = y.mutable_data();
    {
      py::gil_scoped_release nogil;
      k->forward(x.data(), N, yp);
    }
    return y;
  }
};

}  // namespace

void bind_int8(py::module_& m) {
  m.def("int8_isa", &int8_isa_name,
        "The instruction set the int8 kernels use: 'avx512vnni', 'avxvnni', 'avx2' or 'scalar' "
        "(DEEPCOMP_INT8_ISA forces one; DEEPCOMP_ISA=avx2|scalar caps it).");
  m.def("int8_isas", [] {
    py::list out;
    std::string s = int8_isas_supported();
    size_t a = 0;
    while (a < s.size()) {
      size_t e = s.find(',', a);
      if (e == std::string::npos) e = s.size();
      out.append(s.substr(a, e - a));
      a = e + 1;
    }
    return out;
  }, "The int8 paths this CPU can run, best first.");
  m.def("_set_int8_isa", &set_int8_isa, py::arg("name"), "Debug/testing: switch the int8 kernels' path.");
  m.def("_set_int8_split_fraction", &set_int8_split_fraction, py::arg("fraction"),
        "Debug/testing: int8 convs built from now on split their blocks for the AVX2 pairs kernels when at "
        "most this fraction is not pair-bounded (negative: the default). Returns the previous value.");
  m.def("int8_layout", [](int64_t C, int64_t H, int64_t W, const py::handle& padding, const py::handle& stride) {
    const auto [ph, pw] = pair2(padding, "padding");
    const auto [sh, sw] = pair2(stride, "stride");
    return layout_dict(act8_layout(C, H, W, ph, pw, sh, sw));
  }, py::arg("C"), py::arg("H"), py::arg("W"), py::arg("padding") = 0, py::arg("stride") = 1,
        "The channel-blocked uint8 activation layout of one C x H x W image (see docs/int8.md).");
  m.def("int8_pack", [](const F32& x, float inv_scale, int zp, const py::handle& padding, const py::handle& stride) {
    if (x.ndim() != 4) throw ShapeError("int8_pack: x must be [N, C, H, W] float32");
    if (zp < 0 || zp > 255) throw ShapeError("int8_pack: zp must be in [0, 255]");
    const auto [ph, pw] = pair2(padding, "padding");
    const auto [sh, sw] = pair2(stride, "stride");
    const Act8Layout L = act8_layout(x.shape(1), x.shape(2), x.shape(3), ph, pw, sh, sw);
    py::array_t<uint8_t> out({x.shape(0), L.bytes()});
    uint8_t* o = out.mutable_data();
    {
      py::gil_scoped_release nogil;
      act8_pack(x.data(), x.shape(0), L, inv_scale, zp, o);
    }
    return out;
  }, py::arg("x"), py::arg("inv_scale"), py::arg("zp"), py::arg("padding") = 0, py::arg("stride") = 1,
        "Quantize fp32 NCHW into the uint8 layout: clamp(rint(x * inv_scale) + zp, 0, 255).");

  m.def("int8_pack_columns", [](const F32& x, float inv_scale, int zp, const py::handle& padding, int64_t stride_h,
                                 int64_t width) {
    if (x.ndim() != 4) throw ShapeError("int8_pack_columns: x must be [N, C, H, W] float32");
    if (zp < 0 || zp > 255) throw ShapeError("int8_pack_columns: zp must be in [0, 255]");
    if (width < 1) throw ShapeError("int8_pack_columns: width must be >= 1");
    const auto [ph, pw] = pair2(padding, "padding");
    const Act8Layout L = act8_layout(4 * x.shape(1), x.shape(2), width, ph, 0, stride_h, 1);
    py::array_t<uint8_t> out({x.shape(0), L.bytes()});
    uint8_t* o = out.mutable_data();
    {
      py::gil_scoped_release nogil;
      act8_pack_columns(x.data(), x.shape(0), x.shape(1), x.shape(3), pw, L, inv_scale, zp, o);
    }
    return out;
  }, py::arg("x"), py::arg("inv_scale"), py::arg("zp"), py::arg("padding"), py::arg("stride_h"), py::arg("width"),
        "Quantize fp32 NCHW into the layout of its columns-in-lanes rewrite (4C channels, `width` columns: "
        "channel 4c + b, column j = column 4j + b - padding[1] of channel c), padding[0] rows, stride_h.");

  py::class_<PyConv8>(m, "Int8Conv2d",
                      "int8 direct convolution over 1x4 blocks along input channels, requantized with bias, "
                      "ReLU and an optional max-pool to uint8 (the next layer's layout) or fp32 NCHW; "
                      "clamp=(lo, hi) (None on a side: unbounded) clamps fp32 output after the ReLU.")
      .def(py::init<const py::object&, const F32&, const F32&, const py::handle&, const py::handle&, const py::handle&, int,
                    bool, const std::string&, int, const py::handle&, const py::object&, const py::object&,
                    const std::string&, double>(),
           py::arg("weight"), py::arg("m"), py::arg("b"), py::kw_only(), py::arg("stride") = 1, py::arg("padding") = 0,
           py::arg("dilation") = 1, py::arg("zp_in") = 0, py::arg("relu") = false, py::arg("out") = "u8",
           py::arg("zp_out") = 0, py::arg("out_padding") = 0, py::arg("pool") = py::none(),
           py::arg("clamp") = py::none(), py::arg("kernel") = "auto", py::arg("dense_threshold") = -1.0)
      .def("forward", &PyConv8::forward, py::arg("x"), py::arg("H"), py::arg("W"), py::kw_only(),
           py::arg("out") = py::none(), "y of N images; out: a buffer to write it into (reused, not allocated)")
      .def("in_layout", [](const PyConv8& s, int64_t H, int64_t W) { return layout_dict(s.k->in_layout(H, W)); })
      .def("out_layout", [](const PyConv8& s, int64_t H, int64_t W) { return layout_dict(s.k->out_layout(H, W)); })
      .def("out_size", [](const PyConv8& s, int64_t H, int64_t W) { return s.k->out_size(H, W); })
      .def_property_readonly("blocks", [](const PyConv8& s) { return s.k->blocks(); })
      .def_property_readonly("executed_blocks", [](const PyConv8& s) { return s.k->executed_blocks(); })
      .def_property_readonly("total_blocks", [](const PyConv8& s) { return s.k->total_blocks(); })
      .def_property_readonly("dense_groups", [](const PyConv8& s) { return s.k->dense_groups(); })
      .def_property_readonly("tiled_groups", [](const PyConv8& s) { return s.k->tiled_groups(); })
      .def_property_readonly("nonzeros", [](const PyConv8& s) { return s.k->nonzeros(); })
      .def_property_readonly("pairs", [](const PyConv8& s) { return s.k->pairs(); },
                             "every block is pair-bounded (the AVX2 path then runs its vpmaddubsw kernels)")
      .def_property_readonly("bytes", [](const PyConv8& s) { return s.k->bytes(); });

  py::class_<PyLinear8>(m, "Int8Linear",
                        "int8 fully connected layer over 1x4 blocks along input features, requantized to uint8 "
                        "or fp32.")
      .def(py::init<const py::object&, const F32&, const F32&, int, bool, const std::string&, int, const std::string&, double>(),
           py::arg("weight"), py::arg("m"), py::arg("b"), py::kw_only(), py::arg("zp_in") = 0, py::arg("relu") = false,
           py::arg("out") = "f32", py::arg("zp_out") = 0, py::arg("kernel") = "auto", py::arg("dense_threshold") = 0.6)
      .def("forward", &PyLinear8::forward, py::arg("x"), py::kw_only(), py::arg("out") = py::none(),
           "y; out: a buffer to write it into (reused, not allocated)")
      .def_property_readonly("blocks", [](const PyLinear8& s) { return s.k->blocks(); })
      .def_property_readonly("total_blocks", [](const PyLinear8& s) { return s.k->total_blocks(); })
      .def_property_readonly("dense", [](const PyLinear8& s) { return s.k->dense(); })
      .def_property_readonly("pairs", [](const PyLinear8& s) { return s.k->pairs(); },
                             "every block is pair-bounded (the AVX2 path then runs its vpmaddubsw kernels)")
      .def_property_readonly("nonzeros", [](const PyLinear8& s) { return s.k->nonzeros(); })
      .def_property_readonly("bytes", [](const PyLinear8& s) { return s.k->bytes(); });
}

}  // namespace deepcomp
