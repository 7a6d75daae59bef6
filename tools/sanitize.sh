#!/usr/bin/env bash
# kernelgpt under AddressSanitizer + UndefinedBehaviorSanitizer, built into build/sanitize-<cc>
# (the release build in python/kernelgpt is left alone).
#
#   tools/sanitize.sh build                  build the sanitized module (once; incremental)
#   tools/sanitize.sh pytest [args...]       the tests against it, e.g. tests/test_matmul.py
#   tools/sanitize.sh python [args...]       any script against it, e.g. fuzz/run.py all --seconds 20
#   tools/sanitize.sh [args...]              build, then pytest (tools/sanitize.sh tests/test_bpe.py)
#
# With clang (preferred when installed: apt-get install clang libomp-dev) the native code is
# also instrumented for libFuzzer coverage (-fsanitize=fuzzer-no-link) and atheris's runtime,
# which carries ASan, UBSan and libFuzzer, is preloaded, so fuzz/run.py is guided by the
# coverage of the C++ parsers too. With gcc, libasan is preloaded and only Python is guided.
# Environment: KG_SANITIZE_CXX=clang++|g++ picks the compiler; KG_SANITIZE_ISAS="generic;avx2"
# builds only those kernel copies (faster; default: all).
set -euo pipefail
cd "$(dirname "$0")/.."

CXX_NAME="${KG_SANITIZE_CXX:-$(command -v clang++ >/dev/null 2>&1 && echo clang++ || echo g++)}"
case "$CXX_NAME" in *clang*) FLAVOR=clang ;; *) FLAVOR=gcc ;; esac
BUILD="build/sanitize-$FLAVOR"
PKG="$BUILD/pkg"

build() {
    local cc=gcc fuzz=OFF
    if [ "$FLAVOR" = clang ]; then cc="${CXX_NAME/clang++/clang}"; fuzz=ON; fi
    # RelWithDebInfo and no LTO: pybind11 would strip the symbols of a Release build, and
    # clang's LTO drops the coverage counters' constructors.
    cmake -S . -B "$BUILD" -G Ninja -DKG_SANITIZE=ON -DKG_FUZZ="$fuzz" -DKG_CUDA=OFF \
          -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_INTERPROCEDURAL_OPTIMIZATION=OFF \
          -DCMAKE_CXX_COMPILER="$CXX_NAME" -DCMAKE_C_COMPILER="$cc" \
          -DKG_ISA_LEVELS="${KG_SANITIZE_ISAS:-}" \
          -DKG_OUTPUT_DIR="$PWD/$PKG/kernelgpt" \
          -Dpybind11_DIR="$(python3 -c 'import pybind11; print(pybind11.get_cmake_dir())')" >/dev/null
    cmake --build "$BUILD" -j2
    # the Python sources beside the sanitized modules
    (cd python/kernelgpt && find . -name '*.py' -o -name '*.json' -o -name '*.safetensors' -o -name '*.tiktoken') |
      while read -r f; do mkdir -p "$PKG/kernelgpt/$(dirname "$f")"; cp "python/kernelgpt/$f" "$PKG/kernelgpt/$f"; done
}

run() {
    [ -d "$PKG/kernelgpt" ] || { echo "tools/sanitize.sh: no sanitized build; run: tools/sanitize.sh build" >&2; exit 2; }
    if [ "$FLAVOR" = clang ]; then
        # ASan + UBSan + libFuzzer in one runtime, shipped with atheris (pip install atheris);
        # clang's own ASan runtime where atheris is missing (pytest only, no fuzzing).
        RUNTIME="$(python3 -c 'import atheris, os; print(os.path.join(atheris.path(), "asan_with_fuzzer.so"))' 2>/dev/null ||
                   "$CXX_NAME" -print-file-name=libclang_rt.asan-x86_64.so)"
    else
        RUNTIME="$(gcc -print-file-name=libasan.so)"
    fi
    # libstdc++ is preloaded too: python does not link it, and ASan's __cxa_throw interceptor
    # needs the real one at start-up.
    export LD_PRELOAD="$RUNTIME $(g++ -print-file-name=libstdc++.so)"
    # Leak checking is off: CPython's own allocations at exit would drown the report.
    export ASAN_OPTIONS="detect_leaks=0:${ASAN_OPTIONS:-}"
    export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:${UBSAN_OPTIONS:-}"
    export PYTHONPATH="$PWD/$PKG"
    export KERNELGPT_SANITIZED=1
    exec python3 "$@"
}

case "${1:-}" in
    build) build ;;
    pytest) shift; run -m pytest -p no:cacheprovider -q "$@" ;;
    python) shift; run "$@" ;;
    *) build; run -m pytest -p no:cacheprovider -q "${@:-tests}" ;;
esac
