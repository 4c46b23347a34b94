// Python bindings of the native .dcz loader.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>

#include "common.h"
#include "loader.h"

namespace py = pybind11;

namespace deepcomp {

namespace {

template <typename T>
py::array_t<T> to_array(std::vector<T>&& v) {
  // Hand the vector's buffer to numpy without a copy; the capsule frees it.
  auto* heap = new std::vector<T>(std::move(v));
  py::capsule owner(heap, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return py::array_t<T>({py::ssize_t(heap->size())}, {py::ssize_t(sizeof(T))}, heap->data(), owner);
}

py::tuple dims_tuple(const std::vector<uint64_t>& dims) {
  py::tuple t(dims.size());
  for (size_t i = 0; i < dims.size(); ++i) t[i] = py::int_(dims[i]);
  return t;
}

constexpr size_t kMaxJson = size_t(64) << 20;

// The JSON of a META/GRAPH payload; a zlib one is inflated with Python's zlib, at most 64 MiB.
py::bytes json_payload(const std::string& raw, bool zlib, const char* what) {
  if (!zlib) return py::bytes(raw);
  py::module_ zl = py::module_::import("zlib");
  try {
    py::object d = zl.attr("decompressobj")();
    py::object out = d.attr("decompress")(py::bytes(raw), kMaxJson);
    if (py::len(d.attr("unconsumed_tail")) > 0)
      throw DczError(std::string(what) + " section inflates to more than 64 MiB");
    if (!d.attr("eof").cast<bool>() || py::len(d.attr("unused_data")) > 0)
      throw DczError(std::string(what) + " section is not one complete zlib stream");
    return out;
  } catch (py::error_already_set& e) {
    if (e.matches(zl.attr("error"))) throw DczError(std::string(what) + " section: bad zlib stream: " + e.what());
    throw;
  }
}

py::dict to_python(DczFile&& f) {
  py::dict out;
  out["version"] = py::make_tuple(f.major, f.minor);
  out["meta"] = json_payload(f.meta, f.meta_zlib, "META");
  out["graph"] = json_payload(f.graph, f.graph_zlib, "GRAPH");
  py::dict dense, coded;
  for (auto& t : f.dense) {
    std::vector<py::ssize_t> shape(t.dims.begin(), t.dims.end());
    py::dtype dt = t.dtype == 1 ? py::dtype::of<float>()
                   : t.dtype == 2 ? py::dtype::of<int64_t>()
                   : t.dtype == 3 ? py::dtype::of<int32_t>()
                                  : py::dtype::of<uint8_t>();
    py::array arr(dt, shape);
    if (!t.data.empty()) std::memcpy(arr.mutable_data(), t.data.data(), t.data.size());
    dense[py::str(t.name)] = arr;
  }
  for (auto& t : f.coded) {
    py::dict d;
    d["shape"] = dims_tuple(t.dims);
    d["bits"] = t.bits;
    d["index_bits"] = t.index_bits;
    d["block"] = t.block;
    d["nnz"] = t.nnz;
    d["entries"] = t.entries;
    d["weight_stream_bits"] = t.weight_stream_bits;
    d["gap_stream_bits"] = t.gap_stream_bits;
    d["codebook"] = to_array(std::move(t.codebook));
    d["row_ptr"] = to_array(std::move(t.row_ptr));
    d["col"] = to_array(std::move(t.col));
    d["cluster"] = to_array(std::move(t.cluster));
    coded[py::str(t.name)] = d;
  }
  out["dense"] = dense;
  out["coded"] = coded;
  return out;
}

}  // namespace

void bind_loader(py::module_& m) {
  m.def(
      "load_dcz",
      [](const std::string& path) {
        DczFile f;
        {
          py::gil_scoped_release nogil;
          f = load_dcz_file(path);
        }
        return to_python(std::move(f));
      },
      py::arg("path"),
      "Validate and decode a .dcz file. Returns a dict: version, meta and graph (JSON bytes), dense "
      "(name -> ndarray) and coded (name -> CSR arrays: row_ptr, col, cluster, codebook, shape, ...; "
      "CODED_BLOCK tensors too, with block = 4 and nnz counting blocks).");
  m.def(
      "parse_dcz",
      [](py::bytes blob) {
        std::string_view v = blob;
        DczFile f;
        {
          py::gil_scoped_release nogil;
          f = parse_dcz(reinterpret_cast<const uint8_t*>(v.data()), v.size());
        }
        return to_python(std::move(f));
      },
      py::arg("data"), "Like load_dcz, from bytes in memory.");
  m.def(
      "crc32",
      [](py::bytes blob) {
        std::string_view v = blob;
        return crc32(reinterpret_cast<const uint8_t*>(v.data()), v.size());
      },
      py::arg("data"));
}

}  // namespace deepcomp
