// Shared error types and small helpers for deepcomp._native.
#pragma once
#include <cstdint>
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

}  // namespace deepcomp
