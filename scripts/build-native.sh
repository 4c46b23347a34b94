#!/usr/bin/env bash
# Rebuild deepcomp/_native*.so in place with CMake + Ninja (fast loop for C++ work).
# Usage: scripts/build-native.sh [build-dir] [extra cmake args...]
# DEEPCOMP_SANITIZE=address scripts/build-native.sh build/asan  builds under AddressSanitizer.
# The module is linked inside the build dir, then renamed into deepcomp/ in one step, so a process
# importing deepcomp meanwhile never sees a half-written file.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-build/dev}
shift || true
cmake -S . -B "$dir" -G Ninja \
  -DCMAKE_BUILD_TYPE=${DEEPCOMP_BUILD_TYPE:-Release} \
  -DCMAKE_LIBRARY_OUTPUT_DIRECTORY="$PWD/$dir/lib" \
  -DPython_EXECUTABLE="$(command -v python3)" \
  -Dpybind11_DIR="$(python3 -c 'import pybind11; print(pybind11.get_cmake_dir())')" \
  -DDEEPCOMP_SANITIZE="${DEEPCOMP_SANITIZE:-}" "$@" >/dev/null
cmake --build "$dir"
dest=${DEEPCOMP_NATIVE_DEST:-deepcomp}
for so in "$dir"/lib/_native*.so; do
  cp "$so" "$dest/.$(basename "$so").tmp"
  mv -f "$dest/.$(basename "$so").tmp" "$dest/$(basename "$so")"
done
