// The pybind11 module deepcomp._native: error translation and the registration of each concern.
#include <pybind11/pybind11.h>

#include "common.h"

namespace py = pybind11;

namespace deepcomp {
void bind_huffman(py::module_& m);
void bind_loader(py::module_& m);
void bind_kernels(py::module_& m);
void bind_depthwise(py::module_& m);
void bind_activation(py::module_& m);
void bind_int8(py::module_& m);
}  // namespace deepcomp

PYBIND11_MODULE(_native, m) {
  m.doc() = "deepcomp native core: Huffman codec, .dcz loader, sparse kernels";
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const deepcomp::DczError& e) {
      // deepcomp.errors imports nothing heavy (no torch), so this is safe on the deploy side.
      py::object cls = py::module_::import("deepcomp.errors").attr("DczError");
      PyErr_SetString(cls.ptr(), e.what());
    } catch (const deepcomp::ShapeError& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    }
  });
  deepcomp::bind_huffman(m);
  deepcomp::bind_loader(m);
  deepcomp::bind_kernels(m);
  deepcomp::bind_depthwise(m);
  deepcomp::bind_activation(m);
  deepcomp::bind_int8(m);
}
