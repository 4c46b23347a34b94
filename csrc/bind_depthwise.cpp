// Python binding of the depthwise convolution (numpy float32 in and out, computed without the GIL).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <memory>
#include <string>

#include "common.h"
#include "depthwise.h"

namespace py = pybind11;

namespace deepcomp {

namespace {

constexpr int kIn = py::array::c_style | py::array::forcecast;
using FArr = py::array_t<float, kIn>;

std::pair<int64_t, int64_t> pair_of(const py::handle& h, const char* name) {
  if (py::isinstance<py::int_>(h)) return {h.cast<int64_t>(), h.cast<int64_t>()};
  auto s = h.cast<py::sequence>();
  if (s.size() != 2) throw ShapeError(std::string("DepthwiseConv2d: ") + name + " must be an int or a pair");
  return {s[0].cast<int64_t>(), s[1].cast<int64_t>()};
}

struct PyDepthwise {
  std::unique_ptr<DepthwiseConv2d> k;

  PyDepthwise(const FArr& weight, const py::object& bias, int64_t in_channels, const py::object& stride,
              const py::object& padding, const py::object& dilation) {
    if (weight.ndim() != 4 || weight.shape(1) != 1)
      throw ShapeError("DepthwiseConv2d: weight must be [out_channels, 1, kh, kw]");
    DepthwiseGeometry g;
    g.channels = in_channels;
    if (in_channels < 1 || weight.shape(0) % in_channels)
      throw ShapeError("DepthwiseConv2d: out_channels must be a multiple of in_channels");
    g.multiplier = weight.shape(0) / in_channels;
    g.kh = weight.shape(2);
    g.kw = weight.shape(3);
    std::tie(g.sh, g.sw) = pair_of(stride, "stride");
    std::tie(g.ph, g.pw) = pair_of(padding, "padding");
    std::tie(g.dh, g.dw) = pair_of(dilation, "dilation");
    std::vector<float> w(weight.data(), weight.data() + weight.size()), b;
    if (!bias.is_none()) {
      FArr ba = FArr::ensure(bias);
      if (!ba || ba.ndim() != 1) throw ShapeError("DepthwiseConv2d: bias must be a 1-D float array");
      b.assign(ba.data(), ba.data() + ba.size());
    }
    k.reset(new DepthwiseConv2d(std::move(w), std::move(b), g));
  }

  py::array forward(const py::object& xo, const py::object& lo, const py::object& hi) const {
    FArr x = FArr::ensure(xo);
    if (!x || x.ndim() != 4 || x.shape(1) != k->geometry().channels)
      throw ShapeError("DepthwiseConv2d.forward: x must be [N, " + std::to_string(k->geometry().channels) +
                       ", H, W] float32");
    const int64_t N = x.shape(0), H = x.shape(2), W = x.shape(3);
    const auto [OH, OW] = k->out_size(H, W);
    const int64_t OC = k->geometry().channels * k->geometry().multiplier;
    py::array_t<float> y(std::vector<py::ssize_t>{N, OC, OH, OW});
    const float lov = lo.is_none() ? 0.f : lo.cast<float>(), hiv = hi.is_none() ? 0.f : hi.cast<float>();
    const bool has_lo = !lo.is_none() && std::isfinite(lov), has_hi = !hi.is_none() && std::isfinite(hiv);
    const float* xp = x.data();
    float* yp = y.mutable_data();
    {
      py::gil_scoped_release nogil;
      k->forward(xp, N, H, W, yp, has_lo, lov, has_hi, hiv);
    }
    return std::move(y);
  }
};

}  // namespace

void bind_depthwise(py::module_& m) {
  py::class_<PyDepthwise>(m, "DepthwiseConv2d",
                          "Depthwise 2-D convolution (groups == in_channels) on dense float32 weights "
                          "[out_channels, 1, kh, kw]; forward(x, lo, hi) clamps the output to [lo, hi] where given.")
      .def(py::init<const FArr&, const py::object&, int64_t, const py::object&, const py::object&, const py::object&>(),
           py::arg("weight"), py::arg("bias"), py::arg("in_channels"), py::arg("stride") = 1, py::arg("padding") = 0,
           py::arg("dilation") = 1)
      .def("forward", &PyDepthwise::forward, py::arg("x"), py::arg("lo") = py::none(), py::arg("hi") = py::none())
      .def("output_size", [](const PyDepthwise& s, int64_t H, int64_t W) { return s.k->out_size(H, W); })
      .def("kernel_for", [](const PyDepthwise& s, int64_t H, int64_t W) { return std::string(s.k->kernel_for(H, W)); },
           py::arg("height"), py::arg("width"),
           "Which kernel runs an input of this size: 'depthwise_interleaved' (narrow planes, 8 channels at a "
           "time) or 'depthwise'.");
  m.def("_set_depthwise_interleaved_width", &set_depthwise_interleaved_width, py::arg("width"),
        "Debug/testing: depthwise outputs at most this wide run the channel-interleaved kernel whatever the "
        "stride (where the ISA has one; 0: never; negative: the default rule, stride 1 at any width and strided "
        "layers up to 28-wide outputs); returns the previous value (-1: the default rule).");
}

}  // namespace deepcomp
