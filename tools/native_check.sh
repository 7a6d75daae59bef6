#!/usr/bin/env bash
# Builds tests/native/kernel_check.cpp (every kernel family's fast version against its naive
# one, at every instruction-set level; no Python) and runs it: natively, or for aarch64 with
# the Debian cross compiler under QEMU (`-cpu max` has NEON, dotprod, fp16, i8mm and bf16, so
# all three aarch64 levels run).
#
#   tools/native_check.sh [native|aarch64]     # aarch64 needs g++-aarch64-linux-gnu and
#                                               # qemu-user-static (Debian packages)
# Kernel files are compiled once per level with that level's flags and -DKG_ISA=<level>, as
# CMake does; the rest for the baseline. Exit status: the runner's (failed checks), or 2.
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/levels.sh
ARCH=${1:-native}
case "$ARCH" in
    native)
        CXX=${CXX:-g++}; RUN=(); kg_levels "$(uname -m)" ;;
    aarch64)
        CXX=${CXX:-aarch64-linux-gnu-g++}
        QEMU=${QEMU:-$(command -v qemu-aarch64-static || command -v qemu-aarch64 || true)}
        [ -n "$QEMU" ] || { echo "no qemu-aarch64 (apt-get install qemu-user-static)" >&2; exit 2; }
        RUN=("$QEMU" -cpu max -L /usr/aarch64-linux-gnu)
        kg_levels aarch64 ;;
    *) echo "unknown architecture $ARCH (native or aarch64)" >&2; exit 2 ;;
esac
command -v "$CXX" >/dev/null || { echo "no $CXX" >&2; exit 2; }
OUT=build/native-check-$ARCH
mkdir -p "$OUT"
FLAGS=(-std=c++17 -O2 -fopenmp -fno-math-errno -fno-trapping-math -Icsrc)
JOBS=$OUT/jobs
: > "$JOBS"
objs=()
defs=()
for level in "${LEVELS[@]}"; do
    name=${level%%:*} flags=${level#*:}
    defs+=("-DKG_HAVE_${name^^}=1")
    for f in csrc/kernels/*.cpp; do
        o=$OUT/$name-$(basename "$f" .cpp).o
        objs+=("$o")
        printf '%q ' "$CXX" "${FLAGS[@]}" $flags "-DKG_ISA=$name" -c "$f" -o "$o" >> "$JOBS"
        echo >> "$JOBS"
    done
done
for f in csrc/common/*.cpp tests/native/kernel_check.cpp; do
    o=$OUT/base-$(basename "$f" .cpp).o
    objs+=("$o")
    printf '%q ' "$CXX" "${FLAGS[@]}" "${defs[@]}" -DKG_HAVE_OPENMP=1 -c "$f" -o "$o" >> "$JOBS"
    echo >> "$JOBS"
done
tr '\n' '\0' < "$JOBS" | xargs -0 -P "$(nproc)" -n 1 bash -c
"$CXX" -fopenmp "${objs[@]}" -o "$OUT/kernel_check"
echo "built $OUT/kernel_check (${#LEVELS[@]} levels); running${RUN:+ under ${RUN[*]}}"
OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} "${RUN[@]}" "$OUT/kernel_check"
