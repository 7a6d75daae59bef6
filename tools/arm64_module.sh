#!/usr/bin/env bash
# Cross-builds kernelgpt's native module for aarch64 CPython 3.11 (the kernels at all three
# aarch64 levels, the bindings, the tokenizer, the GGUF reader, the decode runner) against the
# Python headers of an arm64 root from tools/arm64_root.sh, and lays out an importable package:
#
#   tools/arm64_module.sh ROOT OUT     # OUT/kernelgpt: the Python sources plus _C.cpython-311-aarch64-linux-gnu.so
#
# Then: qemu-aarch64-static -L ROOT ROOT/usr/bin/python3.11 with PYTHONPATH=OUT (and the pure
# Python dependencies) runs kernelgpt on an emulated ARM64 CPU.
set -euo pipefail
ROOT=${1:?usage: tools/arm64_module.sh ROOT OUT}
OUT=${2:?usage: tools/arm64_module.sh ROOT OUT}
cd "$(dirname "$0")/.."
CXX=${CXX:-aarch64-linux-gnu-g++}
PY=${PYTHON:-python3}
OBJ=$OUT/obj
mkdir -p "$OBJ"
. tools/levels.sh
kg_levels aarch64
FLAGS=(-std=c++17 -O3 -fPIC -fopenmp -fno-math-errno -fno-trapping-math -Icsrc)
INC=("-I$ROOT/usr/include/python3.11" -idirafter "$ROOT/usr/include"
     "-I$("$PY" -c 'import pybind11; print(pybind11.get_include())')")
JOBS=$OBJ/jobs
: > "$JOBS"
objs=()
defs=()
for level in "${LEVELS[@]}"; do
    name=${level%%:*} flags=${level#*:}
    defs+=("-DKG_HAVE_${name^^}=1")
    for f in csrc/kernels/*.cpp; do
        o=$OBJ/$name-$(basename "$f" .cpp).o
        objs+=("$o")
        printf '%q ' "$CXX" "${FLAGS[@]}" $flags "-DKG_ISA=$name" -c "$f" -o "$o" >> "$JOBS"
        echo >> "$JOBS"
    done
done
for f in csrc/common/*.cpp csrc/bindings/*.cpp csrc/bpe/*.cpp csrc/gguf/*.cpp csrc/model/*.cpp; do
    o=$OBJ/$(basename "$(dirname "$f")")-$(basename "$f" .cpp).o
    objs+=("$o")
    printf '%q ' "$CXX" "${FLAGS[@]}" -fvisibility=hidden "${defs[@]}" -DKG_HAVE_OPENMP=1 \
        "${INC[@]}" -c "$f" -o "$o" >> "$JOBS"
    echo >> "$JOBS"
done
tr '\n' '\0' < "$JOBS" | xargs -0 -P "$(nproc)" -n 1 bash -c
rm -rf "$OUT/kernelgpt"
cp -r python/kernelgpt "$OUT/kernelgpt"
find "$OUT/kernelgpt" -name '*.so' -delete
"$CXX" -shared -fopenmp "${objs[@]}" -o "$OUT/kernelgpt/_C.cpython-311-aarch64-linux-gnu.so"
echo "$OUT/kernelgpt: aarch64 module built"
