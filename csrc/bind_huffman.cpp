// Python bindings of the Huffman codec (used by the .dcz writer and the Python reader).
#include <pybind11/numpy.h>
#include <cstring>
#include <pybind11/pybind11.h>

#include "common.h"
#include "huffman.h"

namespace py = pybind11;

namespace deepcomp {

using u8arr = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>;
using u16arr = py::array_t<uint16_t, py::array::c_style | py::array::forcecast>;

void bind_huffman(py::module_& m) {
  m.def(
      "huffman_encode",
      [](u16arr syms, u8arr lens) {
        uint64_t nbits = 0;
        std::vector<uint8_t> bytes;
        {
          py::gil_scoped_release nogil;
          bytes = huffman_encode(syms.data(), size_t(syms.size()), lens.data(), size_t(lens.size()),
                                 &nbits);
        }
        py::array_t<uint8_t> out(bytes.size());
        if (!bytes.empty()) std::memcpy(out.mutable_data(), bytes.data(), bytes.size());
        return py::make_tuple(out, nbits);
      },
      py::arg("symbols"), py::arg("lengths"),
      "Encode uint16 symbols with the canonical code of `lengths`; returns (uint8 array, nbits).");
  m.def(
      "huffman_decode",
      [](u8arr data, uint64_t nbits, u8arr lens, uint64_t count) {
        if (nbits > uint64_t(data.size()) * 8)
          throw DczError("stream length in bits exceeds its bytes");
        HuffmanDecoder dec(lens.data(), size_t(lens.size()));
        py::array_t<uint16_t> out(count);
        uint16_t* dst = out.mutable_data();
        {
          py::gil_scoped_release nogil;
          dec.decode(data.data(), nbits, dst, count);
        }
        return out;
      },
      py::arg("data"), py::arg("nbits"), py::arg("lengths"), py::arg("count"),
      "Decode exactly `count` symbols; raises deepcomp.DczError on a bad or short stream.");
  m.def(
      "canonical_codes",
      [](u8arr lens) {
        std::vector<uint32_t> c = canonical_codes(lens.data(), size_t(lens.size()));
        py::array_t<uint32_t> out(c.size());
        if (!c.empty()) std::memcpy(out.mutable_data(), c.data(), c.size() * 4);
        return out;
      },
      py::arg("lengths"), "Canonical code values for the given code lengths.");
}

}  // namespace deepcomp
