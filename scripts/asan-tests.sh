#!/usr/bin/env bash
# Build deepcomp._native under AddressSanitizer in a scratch copy of the tree and run the tests that
# feed the native code hostile input (every truncation, bit flips, CRC-fixed mutations) and the
# kernel, conv-schedule, depthwise, int8 kernel and runtime tests against it, and the C++ micro-kernel test.
# Leaves the installed module alone.
# Usage: scripts/asan-tests.sh [extra pytest args]
set -euo pipefail
src="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
git -C "$src" ls-files -z | (cd "$src" && xargs -0 cp --parents -t "$work")
cd "$work"
DEEPCOMP_SANITIZE=address DEEPCOMP_BUILD_TYPE=Debug scripts/build-native.sh build/asan >/dev/null
# Every micro-kernel of every ISA against its reference, under ASan (reads past a buffer fail here).
ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 build/asan/microkernel_tests
# Python itself is not instrumented: preload the ASan runtime, and libstdc++ so that ASan can
# intercept C++ exceptions thrown inside the module.
export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so)"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1
python3 -c 'import deepcomp._native as n, sys; sys.exit(0 if n.__file__.startswith(sys.argv[1]) else "wrong module: " + n.__file__)' "$work"
python3 -m pytest -q -p no:cacheprovider tests/test_dcz.py tests/test_dcz_block.py tests/test_encode.py tests/test_kernels.py tests/test_conv_schedules.py tests/test_runtime.py tests/test_depthwise.py tests/test_int8_kernels.py tests/test_runtime_int8.py tests/test_winograd.py "$@"
