#!/usr/bin/env bash
# Builds kernelgpt with AddressSanitizer + UndefinedBehaviorSanitizer into build/asan (the
# release build in python/kernelgpt is left alone) and runs the tests against it.
#   tools/asan_test.sh [pytest args...]     e.g. tools/asan_test.sh tests/test_matmul.py
set -euo pipefail
cd "$(dirname "$0")/.."
PKG=build/asan/pkg
cmake -S . -B build/asan -G Ninja -DKG_SANITIZE=ON -DKG_CUDA=OFF \
      -DKG_OUTPUT_DIR="$PWD/$PKG/kernelgpt" \
      -Dpybind11_DIR="$(python3 -c 'import pybind11; print(pybind11.get_cmake_dir())')" >/dev/null
cmake --build build/asan -j2
# the Python sources beside the sanitized module
mkdir -p "$PKG/kernelgpt"
(cd python/kernelgpt && find . -name '*.py' -o -name '*.json' -o -name '*.safetensors' -o -name '*.tiktoken') |
  while read -r f; do mkdir -p "$PKG/kernelgpt/$(dirname "$f")"; cp "python/kernelgpt/$f" "$PKG/kernelgpt/$f"; done
# libstdc++ must be preloaded with libasan: python itself does not link it, and ASan's
# __cxa_throw interceptor needs the real one at start-up.
export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so)"
export ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
PYTHONPATH="$PKG" python3 -m pytest -p no:cacheprovider -q "${@:-tests}"
