// Shared error types and small helpers for deepcomp._native.
#pragma once
#include <cstdint>
#include <vector>
#include <stdexcept>
#include <string>

namespace deepcomp {

// A malformed, truncated or hostile .dcz file (or stream inside one). Becomes deepcomp.DczError.
struct DczError : std::runtime_error {
  explicit DczError(const std::string& what) : std::runtime_error(what) {}
};

// Wrong shapes or layouts handed to a kernel. Becomes ValueError.
struct ShapeError : std::invalid_argument {
  explicit ShapeError(const std::string& what) : std::invalid_argument(what) {}
};

// p rounded up to a multiple of `bytes` (a power of two); the buffer needs bytes - 1 of slack.
template <class T>
T* align_up(T* p, uintptr_t bytes) {
  return reinterpret_cast<T*>((reinterpret_cast<uintptr_t>(p) + bytes - 1) & ~(bytes - 1));
}

// A float buffer kept by the caller (thread_local, reused across calls: fresh multi-megabyte
// buffers would page-fault on every call), grown to at least `floats` floats past a 64-byte boundary.
inline float* reuse_buffer(std::vector<float>& buf, size_t floats) {
  if (buf.size() < floats + 16) {
    buf.clear();
    buf.shrink_to_fit();  // free the old one before the larger one is allocated
    buf.resize(floats + 16);
  }
  return align_up(buf.data(), 64);
}

}  // namespace deepcomp
