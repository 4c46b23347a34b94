// Exp-based activations: ISA choice, threads, Python binding (see activation.h).
#include "activation.h"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <string>

#include "common.h"
#include "dispatch.h"
#include "threadpool.h"

namespace py = pybind11;

namespace deepcomp {

namespace {

const ActivationKernels& activation_kernels() {
#if DEEPCOMP_X86
  const std::string isa = isa_name();
  if (isa == "avx512") return *activation_kernels_avx512();
  if (isa == "avx2") return *activation_kernels_avx2();
#endif
  return *activation_kernels_scalar();
}

constexpr int64_t kChunk = 16384;  // floats per task: 64 KB, a few per thread on a small tensor

}  // namespace

void activation_inplace(float* x, int64_t n, Activation kind) {
  const ActivationKernels& k = activation_kernels();
  const int64_t tasks = (n + kChunk - 1) / kChunk;
  if (tasks <= 1) return k.run(x, n, kind);
  ThreadPool::instance().parallel_for(tasks, ThreadPool::instance().num_threads(), [&](int64_t t, int) {
    const int64_t b = t * kChunk;
    k.run(x + b, std::min(kChunk, n - b), kind);
  });
}

void bind_activation(py::module_& m) {
  m.def(
      "activation_",
      [](const py::object& xo, int kind) {
        if (kind < 0 || kind > 3) throw ShapeError("activation_: kind must be 0 (sigmoid), 1 (silu), 2 (gelu), 3 (gelu tanh)");
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
      "In place on a float32 C-contiguous array: kind 0 sigmoid, 1 silu, 2 gelu (erf), 3 gelu (tanh); returns x.");
}

}  // namespace deepcomp
