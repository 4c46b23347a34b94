// Placeholder: the sparse kernels' bindings land here.
#include <pybind11/pybind11.h>
namespace py = pybind11;
namespace deepcomp {
void bind_kernels(py::module_& m) {}
}  // namespace deepcomp
