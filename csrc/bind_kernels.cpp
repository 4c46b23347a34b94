// Python bindings of the sparse kernels, pooling helpers, thread pool and ISA choice.
// Everything takes and returns numpy float32 arrays; compute runs without the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>
#include <utility>

#include "common.h"
#include "dense_ops.h"
#include "dispatch.h"
#include "sparse_conv.h"
#include "sparse_linear.h"
#include "threadpool.h"

namespace py = pybind11;

namespace deepcomp {

namespace {

constexpr int kIn = py::array::c_style | py::array::forcecast;
using FArr = py::array_t<float, kIn>;

std::string S(int64_t v) { return std::to_string(v); }

template <class T>
py::array_t<T, kIn> vec_arg(const py::handle& h, const char* name) {
  if (h.is_none()) throw ShapeError(std::string(name) + " must not be None");
  py::array_t<T, kIn> a;
  try {
    a = py::array_t<T, kIn>::ensure(h);
  } catch (py::error_already_set&) {
    a = py::array_t<T, kIn>();
  }
  if (!a) throw ShapeError(std::string(name) + ": expected an array of numbers");
  if (a.ndim() != 1) throw ShapeError(std::string(name) + " must be 1-D, got " + S(a.ndim()) + " dimensions");
  return a;
}

FArr float_arg(const py::handle& h, const char* name) {
  FArr a;
  try {
    a = FArr::ensure(h);
  } catch (py::error_already_set&) {
    a = FArr();
  }
  if (!a) throw ShapeError(std::string(name) + ": expected a float32 array");
  return a;
}

std::pair<int64_t, int64_t> pair_arg(const py::handle& h, const char* name) {
  if (py::isinstance<py::int_>(h)) {
    const int64_t v = h.cast<int64_t>();
    return {v, v};
  }
  if (py::isinstance<py::sequence>(h) && !py::isinstance<py::str>(h)) {
    auto s = h.cast<py::sequence>();
    if (s.size() == 1) return {s[0].cast<int64_t>(), s[0].cast<int64_t>()};
    if (s.size() == 2) return {s[0].cast<int64_t>(), s[1].cast<int64_t>()};
  }
  throw ShapeError(std::string(name) + " must be an int or a pair of ints");
}

// Holds the converted arrays alive while a CsrInput points into them.
struct CsrArgs {
  py::array_t<int64_t, kIn> row_ptr;
  py::array_t<int32_t, kIn> col;
  FArr values, codebook, bias;
  py::array_t<uint8_t, kIn> cluster;
  CsrInput in;

  CsrArgs(const py::handle& rp, const py::handle& c, const py::handle& v, const py::handle& cl,
          const py::handle& cb, const py::handle& b) {
    take(rp, "row_ptr", row_ptr, in.row_ptr, in.row_ptr_len);
    take(c, "col", col, in.col, in.col_len);
    if (in.row_ptr_len < 1) throw ShapeError("row_ptr must have at least one entry");
    if (!v.is_none()) take(v, "values", values, in.values, in.values_len);
    if (!cl.is_none()) take(cl, "cluster", cluster, in.cluster, in.cluster_len);
    if (!cb.is_none()) take(cb, "codebook", codebook, in.codebook, in.codebook_len);
    if (!b.is_none()) take(b, "bias", bias, in.bias, in.bias_len);
  }

 private:
  // Converts one argument and points the CsrInput at it. A zero-length numpy array may have a null
  // data pointer: a given array always gets a non-null one, so "given" stays distinguishable from
  // "absent" (null).
  template <class T>
  static void take(const py::handle& h, const char* name, py::array_t<T, kIn>& store, const T*& ptr,
                   int64_t& len) {
    static const T dummy{};
    store = vec_arg<T>(h, name);
    ptr = store.data() ? store.data() : &dummy;
    len = store.shape(0);
  }
};

// Checks a caller-provided output array; returns it as a float array we may write.
py::array_t<float> out_arg(const py::handle& out, const std::vector<int64_t>& shape, const char* what) {
  if (!py::isinstance<py::array_t<float>>(out))
    throw ShapeError(std::string(what) + ": out must be a float32 numpy array");
  auto o = py::reinterpret_borrow<py::array_t<float>>(out);
  if (!(o.flags() & py::array::c_style) || !o.writeable())
    throw ShapeError(std::string(what) + ": out must be C-contiguous and writable");
  bool ok = o.ndim() == py::ssize_t(shape.size());
  for (size_t i = 0; ok && i < shape.size(); ++i) ok = o.shape(i) == shape[i];
  if (!ok) throw ShapeError(std::string(what) + ": out has the wrong shape");
  return o;
}

py::array_t<float> new_array(const std::vector<int64_t>& shape) {
  std::vector<py::ssize_t> s(shape.begin(), shape.end());
  return py::array_t<float>(s);
}

struct PySparseLinear {
  std::unique_ptr<SparseLinear> k;
  int64_t in_features;

  PySparseLinear(const py::object& row_ptr, const py::object& col, int64_t in_feat, const py::object& values,
                 const py::object& cluster, const py::object& codebook, const py::object& bias)
      : in_features(in_feat) {
    if (in_feat < 0) throw ShapeError("SparseLinear: in_features must be >= 0");
    CsrArgs a(row_ptr, col, values, cluster, codebook, bias);
    k.reset(new SparseLinear(a.in, in_feat));
  }

  py::array forward(const py::object& xo, bool relu, const py::object& out) const {
    FArr x = float_arg(xo, "SparseLinear.forward: x");
    const int64_t rows = k->store().rows(), cols = k->store().cols();
    if (x.ndim() != 1 && x.ndim() != 2)
      throw ShapeError("SparseLinear.forward: x must be [batch, in_features] or [in_features]");
    const int64_t batch = x.ndim() == 2 ? x.shape(0) : 1;
    const int64_t xc = x.shape(x.ndim() - 1);
    if (xc != cols)
      throw ShapeError("SparseLinear.forward: x has " + S(xc) + " features, the layer expects " + S(cols));
    std::vector<int64_t> shape = x.ndim() == 2 ? std::vector<int64_t>{batch, rows} : std::vector<int64_t>{rows};
    py::array_t<float> y = out.is_none() ? new_array(shape) : out_arg(out, shape, "SparseLinear.forward");
    const float* xp = x.data();
    float* yp = y.mutable_data();
    {
      py::gil_scoped_release nogil;
      k->forward(xp, batch, yp, relu);
    }
    return std::move(y);
  }
};

struct PySparseConv2d {
  std::unique_ptr<SparseConv2d> k;

  PySparseConv2d(const py::object& row_ptr, const py::object& col, int64_t in_channels, int64_t out_channels,
                 const py::object& kernel_size, const py::object& stride, const py::object& padding,
                 const py::object& dilation, int64_t groups, const py::object& values, const py::object& cluster,
                 const py::object& codebook, const py::object& bias) {
    ConvGeometry g;
    g.in_channels = in_channels;
    g.out_channels = out_channels;
    std::tie(g.kh, g.kw) = pair_arg(kernel_size, "kernel_size");
    std::tie(g.sh, g.sw) = pair_arg(stride, "stride");
    std::tie(g.ph, g.pw) = pair_arg(padding, "padding");
    std::tie(g.dh, g.dw) = pair_arg(dilation, "dilation");
    g.groups = groups;
    if (in_channels < 1 || out_channels < 1 || groups < 1 || in_channels % groups || out_channels % groups)
      throw ShapeError("SparseConv2d: channels must be >= 1 and divisible by groups");
    if (g.kh < 1 || g.kw < 1 || g.kh > 4096 || g.kw > 4096)
      throw ShapeError("SparseConv2d: kernel_size must be in [1, 4096]");
    CsrArgs a(row_ptr, col, values, cluster, codebook, bias);
    k.reset(new SparseConv2d(a.in, g));
  }

  py::array forward(const py::object& xo, bool relu, const py::object& scale_o, const py::object& shift_o,
                    const py::object& out) const {
    FArr x = float_arg(xo, "SparseConv2d.forward: x");
    const ConvGeometry& g = k->geometry();
    if (x.ndim() != 4 && x.ndim() != 3) throw ShapeError("SparseConv2d.forward: x must be NCHW (or CHW)");
    const bool batched = x.ndim() == 4;
    const int64_t N = batched ? x.shape(0) : 1;
    const int64_t C = x.shape(batched ? 1 : 0), H = x.shape(batched ? 2 : 1), W = x.shape(batched ? 3 : 2);
    if (C != g.in_channels)
      throw ShapeError("SparseConv2d.forward: x has " + S(C) + " channels, the layer expects " + S(g.in_channels));
    const auto os = k->out_size(H, W);
    FArr scale, shift;
    if (!scale_o.is_none()) {
      scale = vec_arg<float>(scale_o, "scale");
      if (scale.shape(0) != g.out_channels) throw ShapeError("SparseConv2d.forward: scale must have out_channels entries");
    }
    if (!shift_o.is_none()) {
      shift = vec_arg<float>(shift_o, "shift");
      if (shift.shape(0) != g.out_channels) throw ShapeError("SparseConv2d.forward: shift must have out_channels entries");
    }
    std::vector<int64_t> shape = batched ? std::vector<int64_t>{N, g.out_channels, os.first, os.second}
                                         : std::vector<int64_t>{g.out_channels, os.first, os.second};
    py::array_t<float> y = out.is_none() ? new_array(shape) : out_arg(out, shape, "SparseConv2d.forward");
    const float* xp = x.data();
    float* yp = y.mutable_data();
    const float* sc = scale_o.is_none() ? nullptr : scale.data();
    const float* sf = shift_o.is_none() ? nullptr : shift.data();
    {
      py::gil_scoped_release nogil;
      k->forward(xp, N, H, W, yp, relu, sc, sf);
    }
    return std::move(y);
  }
};

struct NCHW {
  int64_t NC, H, W;
  std::vector<int64_t> lead;
};

NCHW nchw(const FArr& x, const char* what) {
  if (x.ndim() != 4 && x.ndim() != 3) throw ShapeError(std::string(what) + ": x must be NCHW or CHW");
  NCHW r;
  r.NC = 1;
  for (int i = 0; i < x.ndim() - 2; ++i) {
    r.NC *= x.shape(i);
    r.lead.push_back(x.shape(i));
  }
  r.H = x.shape(x.ndim() - 2);
  r.W = x.shape(x.ndim() - 1);
  if (r.H < 1 || r.W < 1) throw ShapeError(std::string(what) + ": empty spatial size");
  return r;
}

py::array pool_common(const py::object& xo, const py::object& kernel_size, const py::object& stride,
                      const py::object& padding, const py::object& dilation, bool ceil_mode, bool count_include_pad,
                      bool is_max) {
  const char* what = is_max ? "max_pool2d" : "avg_pool2d";
  FArr x = float_arg(xo, what);
  NCHW d = nchw(x, what);
  Pool2d p;
  std::tie(p.kh, p.kw) = pair_arg(kernel_size, "kernel_size");
  if (stride.is_none() || (py::isinstance<py::sequence>(stride) && py::len(stride) == 0)) {
    p.sh = p.kh;
    p.sw = p.kw;
  } else {
    std::tie(p.sh, p.sw) = pair_arg(stride, "stride");
  }
  std::tie(p.ph, p.pw) = pair_arg(padding, "padding");
  std::tie(p.dh, p.dw) = pair_arg(dilation, "dilation");
  p.ceil_mode = ceil_mode;
  p.count_include_pad = count_include_pad;
  check_pool(p, d.H, d.W, what);
  const int64_t OH = pool_out_size(d.H, p.kh, p.sh, p.ph, p.dh, ceil_mode);
  const int64_t OW = pool_out_size(d.W, p.kw, p.sw, p.pw, p.dw, ceil_mode);
  auto shape = d.lead;
  shape.push_back(OH);
  shape.push_back(OW);
  py::array_t<float> y = new_array(shape);
  const float* xp = x.data();
  float* yp = y.mutable_data();
  {
    py::gil_scoped_release nogil;
    if (is_max) max_pool2d(xp, d.NC, d.H, d.W, p, yp, OH, OW);
    else avg_pool2d(xp, d.NC, d.H, d.W, p, yp, OH, OW);
  }
  return std::move(y);
}

}  // namespace

void bind_kernels(py::module_& m) {
  m.def("isa", &isa_name, "The SIMD instruction set the kernels use: 'avx512', 'avx2' or 'scalar'.");
  m.def("_set_conv_band_bytes", &set_conv_band_budget, py::arg("bytes"),
        "Debug/testing: band buffer budget of SparseConv2d plans made from now on; returns the previous one.");
  m.def("_set_conv_register_tiling", &set_conv_register_tiling, py::arg("on"),
        "Debug/testing: whether SparseConv2d sparse plans made from now on use the register-tiled kernel; returns "
        "the previous setting.");
  m.def("_set_conv_stream_bytes", &set_conv_stream_bytes, py::arg("bytes"),
        "Debug/testing: SparseConv2d sparse-kernel outputs of at least this many bytes are written with "
        "non-temporal stores from now on (negative: the ISA's default); returns the previous value.");
  m.def("_set_conv_max_nv", &set_conv_max_nv, py::arg("nv"),
        "Debug/testing: largest pixel block (vectors, 1..12; 0: the ISA's default) of SparseConv2d sparse plans "
        "made from now on; returns the previous value.");
  m.def("_set_conv_l1_budget", &set_conv_l1_budget, py::arg("bytes"),
        "Debug/testing: L1 bytes a SparseConv2d chunk's input window may take in plans made from now on (0: the "
        "ISA's default); returns the previous value.");
  m.def("_set_conv_dense_threshold", &set_conv_dense_threshold, py::arg("threshold"),
        "Debug/testing: SparseConv2d layers (groups == 1) whose effective density reaches this run on the dense "
        "kernel in plans made from now on (0: every one, above 1: none, negative: the ISA's default); returns the "
        "previous value.");
  m.def("_set_conv_winograd_threshold", &set_conv_winograd_threshold, py::arg("threshold"),
        "Debug/testing: 3x3 and 5x5 stride-1 SparseConv2d layers whose estimated saving over the direct "
        "kernels reaches this run in Winograd F(4x4, 3x3) / F(4x4, 5x5) form from now on (0: every one that "
        "fits and has a nonzero, above 4: none, negative: the default); returns the previous value.");
  m.def("_set_winograd_chunk_bytes", &set_winograd_chunk_budget, py::arg("bytes"),
        "Debug/testing: bytes of transformed tiles a Winograd convolution processes at a time; returns the "
        "previous value.");
  m.def("_set_winograd_thread_bytes", &set_winograd_thread_budget, py::arg("bytes"),
        "Debug/testing: bytes of transformed tiles up to which each thread runs whole chunks of a Winograd "
        "convolution of its own (0: never); returns the previous value.");
  m.def("_set_winograd_memory_bytes", &set_winograd_memory_budget, py::arg("bytes"),
        "Debug/testing: the budget for the transformed weights of all Winograd layers (DEEPCOMP_WINOGRAD_MB; "
        "negative: no limit), for layers transformed from now on; returns the previous value.");
  m.def("_set_winograd_streaming", &set_winograd_streaming, py::arg("on"),
        "Debug/benchmarks: whether 3x3 layers over the Winograd memory budget run in the streamed form "
        "(weights transformed per call) instead of on the direct kernels; returns the previous value.");
  m.def("_set_isa", &set_isa, py::arg("name"), "Debug/testing: switch the kernels' instruction set.");
  m.def("set_num_threads", [](int n) { ThreadPool::instance().set_num_threads(n); }, py::arg("n"),
        "Resize the native thread pool.");
  m.def("get_num_threads", [] { return ThreadPool::instance().num_threads(); });

  py::class_<PySparseLinear>(m, "SparseLinear",
                             "Sparse fully connected layer over CSR weights (fp32 values or uint8 cluster + "
                             "codebook). forward(x) = x @ W.T + bias.")
      .def(py::init<const py::object&, const py::object&, int64_t, const py::object&, const py::object&,
                    const py::object&, const py::object&>(),
           py::arg("row_ptr"), py::arg("col"), py::arg("in_features"), py::kw_only(), py::arg("values") = py::none(),
           py::arg("cluster") = py::none(), py::arg("codebook") = py::none(), py::arg("bias") = py::none())
      .def("forward", &PySparseLinear::forward, py::arg("x"), py::arg("relu") = false, py::kw_only(),
           py::arg("out") = py::none())
      .def("__call__", &PySparseLinear::forward, py::arg("x"), py::arg("relu") = false, py::kw_only(),
           py::arg("out") = py::none())
      .def_property_readonly("rows", [](const PySparseLinear& s) { return s.k->store().rows(); })
      .def_property_readonly("cols", [](const PySparseLinear& s) { return s.k->store().cols(); })
      .def_property_readonly("out_features", [](const PySparseLinear& s) { return s.k->store().rows(); })
      .def_property_readonly("in_features", [](const PySparseLinear& s) { return s.k->store().cols(); })
      .def_property_readonly("nnz", [](const PySparseLinear& s) { return s.k->store().nnz(); })
      .def_property_readonly("bytes", [](const PySparseLinear& s) { return s.k->store().bytes(); });

  py::class_<PySparseConv2d>(m, "SparseConv2d",
                             "Direct sparse 2-D convolution over CSR weights [out_channels, in_channels/groups*kh*kw].")
      .def(py::init<const py::object&, const py::object&, int64_t, int64_t, const py::object&, const py::object&,
                    const py::object&, const py::object&, int64_t, const py::object&, const py::object&,
                    const py::object&, const py::object&>(),
           py::arg("row_ptr"), py::arg("col"), py::arg("in_channels"), py::arg("out_channels"), py::arg("kernel_size"),
           py::arg("stride") = 1, py::arg("padding") = 0, py::arg("dilation") = 1, py::arg("groups") = 1,
           py::kw_only(), py::arg("values") = py::none(), py::arg("cluster") = py::none(),
           py::arg("codebook") = py::none(), py::arg("bias") = py::none())
      .def("forward", &PySparseConv2d::forward, py::arg("x"), py::arg("relu") = false, py::arg("scale") = py::none(),
           py::arg("shift") = py::none(), py::kw_only(), py::arg("out") = py::none())
      .def("__call__", &PySparseConv2d::forward, py::arg("x"), py::arg("relu") = false,
           py::arg("scale") = py::none(), py::arg("shift") = py::none(), py::kw_only(), py::arg("out") = py::none())
      .def("output_size", [](const PySparseConv2d& s, int64_t H, int64_t W) { return s.k->out_size(H, W); },
           py::arg("height"), py::arg("width"))
      .def(
          "kernel_for",
          [](const PySparseConv2d& s, int64_t H, int64_t W, int64_t N) {
            py::gil_scoped_release nogil;
            return std::string(s.k->kernel_for(N, H, W));
          },
          py::arg("height"), py::arg("width"), py::arg("batch") = 1,
          "Which kernel convolves a batch of inputs of height x width at the current thread count: 'sparse', "
          "'dense' for a layer too dense to gain from sparsity, or 'winograd' for a 3x3 or 5x5 layer that needs "
          "fewer multiplications in Winograd form ('winograd-streamed' when its transformed weights are over "
          "DEEPCOMP_WINOGRAD_MB and it transforms them per call). Plans the shape, as the first forward would.")
      .def_property_readonly("nnz", [](const PySparseConv2d& s) { return s.k->store().nnz(); })
      .def_property_readonly("bytes", [](const PySparseConv2d& s) { return s.k->store().bytes(); })
      .def_property_readonly("in_channels", [](const PySparseConv2d& s) { return s.k->geometry().in_channels; })
      .def_property_readonly("out_channels", [](const PySparseConv2d& s) { return s.k->geometry().out_channels; })
      .def_property_readonly("kernel_size", [](const PySparseConv2d& s) {
        return std::make_pair(s.k->geometry().kh, s.k->geometry().kw); })
      .def_property_readonly("stride", [](const PySparseConv2d& s) {
        return std::make_pair(s.k->geometry().sh, s.k->geometry().sw); })
      .def_property_readonly("padding", [](const PySparseConv2d& s) {
        return std::make_pair(s.k->geometry().ph, s.k->geometry().pw); })
      .def_property_readonly("dilation", [](const PySparseConv2d& s) {
        return std::make_pair(s.k->geometry().dh, s.k->geometry().dw); })
      .def_property_readonly("groups", [](const PySparseConv2d& s) { return s.k->geometry().groups; });

  m.def("max_pool2d",
        [](const py::object& x, const py::object& k, const py::object& s, const py::object& p, const py::object& d,
           bool ceil_mode) { return pool_common(x, k, s, p, d, ceil_mode, true, true); },
        py::arg("x"), py::arg("kernel_size"), py::arg("stride") = py::none(), py::arg("padding") = 0,
        py::arg("dilation") = 1, py::arg("ceil_mode") = false,
        "torch.nn.functional.max_pool2d on a float32 NCHW/CHW array.");
  m.def("avg_pool2d",
        [](const py::object& x, const py::object& k, const py::object& s, const py::object& p, bool ceil_mode,
           bool count_include_pad) {
          return pool_common(x, k, s, p, py::int_(1), ceil_mode, count_include_pad, false);
        },
        py::arg("x"), py::arg("kernel_size"), py::arg("stride") = py::none(), py::arg("padding") = 0,
        py::arg("ceil_mode") = false, py::arg("count_include_pad") = true,
        "torch.nn.functional.avg_pool2d on a float32 NCHW/CHW array.");
  m.def("adaptive_avg_pool2d",
        [](const py::object& xo, const py::object& size) {
          FArr x = float_arg(xo, "adaptive_avg_pool2d");
          NCHW d = nchw(x, "adaptive_avg_pool2d");
          int64_t OH, OW;
          if (py::isinstance<py::sequence>(size) && !py::isinstance<py::str>(size) && py::len(size) == 2) {
            auto s = size.cast<py::sequence>();
            OH = s[0].is_none() ? d.H : s[0].cast<int64_t>();
            OW = s[1].is_none() ? d.W : s[1].cast<int64_t>();
          } else {
            std::tie(OH, OW) = pair_arg(size, "output_size");
          }
          if (OH < 1 || OW < 1) throw ShapeError("adaptive_avg_pool2d: output_size must be >= 1");
          auto shape = d.lead;
          shape.push_back(OH);
          shape.push_back(OW);
          py::array_t<float> y = new_array(shape);
          const float* xp = x.data();
          float* yp = y.mutable_data();
          {
            py::gil_scoped_release nogil;
            adaptive_avg_pool2d(xp, d.NC, d.H, d.W, yp, OH, OW);
          }
          return py::array(std::move(y));
        },
        py::arg("x"), py::arg("output_size"), "torch.nn.functional.adaptive_avg_pool2d on float32 NCHW/CHW.");
  m.def("relu_",
        [](const py::object& xo) {
          if (!py::isinstance<py::array_t<float>>(xo)) throw ShapeError("relu_: x must be a float32 numpy array");
          auto x = py::reinterpret_borrow<py::array_t<float>>(xo);
          if (!(x.flags() & py::array::c_style) || !x.writeable())
            throw ShapeError("relu_: x must be C-contiguous and writable");
          float* p = x.mutable_data();
          const int64_t n = x.size();
          {
            py::gil_scoped_release nogil;
            relu_inplace(p, n);
          }
          return xo;
        },
        py::arg("x"), "In-place ReLU on a float32 C-contiguous array; returns x.");
}

}  // namespace deepcomp
