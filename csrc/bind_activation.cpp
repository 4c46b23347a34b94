// Python binding of the exp-based activations (activation.h).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "activation.h"
#include "common.h"

namespace py = pybind11;

namespace deepcomp {

void bind_activation(py::module_& m) {
  m.def(
      "activation_",
      [](const py::object& xo, int kind) {
        if (kind < 0 || kind > 4)
          throw ShapeError("activation_: kind must be 0 (sigmoid), 1 (silu), 2 (gelu), 3 (gelu tanh), 4 (exp)");
        if (!py::isinstance<py::array_t<float>>(xo)) throw ShapeError("activation_: x must be a float32 numpy array");
        auto x = py::reinterpret_borrow<py::array_t<float>>(xo);
        if (!(x.flags() & py::array::c_style) || !x.writeable())
          throw ShapeError("activation_: x must be C-contiguous and writable");
        float* p = x.mutable_data();
        const int64_t n = x.size();
        {
          py::gil_scoped_release nogil;
          activation_inplace(p, n, Activation(kind));
        }
        return xo;
      },
      py::arg("x"), py::arg("kind"),
      "In place on a float32 C-contiguous array: kind 0 sigmoid, 1 silu, 2 gelu (erf), 3 gelu (tanh), 4 exp; "
      "returns x.");
}

}  // namespace deepcomp
