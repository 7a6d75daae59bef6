#!/usr/bin/env bash
# Compiles every C++ source for another architecture with -Wall -Werror (no link, nothing run),
# the way CMake compiles it: kernel files once per level with -DKG_ISA=<level> and that level's
# flags, the rest for the baseline with hidden visibility (pybind11's).
#
#   tools/cross_check.sh [aarch64]        # needs g++-aarch64-linux-gnu (Debian)
#
# The Python, pybind11 and numpy headers are the host's (compile-only: their layout is the same
# on every 64-bit Linux). Exit status: the number of files that failed.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
ARCH=${1:-aarch64}
case "$ARCH" in
    aarch64) CXX=${CXX:-aarch64-linux-gnu-g++}; . tools/levels.sh; kg_levels aarch64 ;;
    *) echo "unknown architecture $ARCH" >&2; exit 2 ;;
esac
command -v "$CXX" >/dev/null || { echo "no $CXX (apt-get install g++-$ARCH-linux-gnu)" >&2; exit 2; }
PY=${PYTHON:-python3}
py_inc=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])') &&
    pb_inc=$("$PY" -c 'import pybind11; print(pybind11.get_include())') ||
    { echo "needs $PY with pybind11 (pip install pybind11) for the bindings' headers" >&2; exit 2; }
INC=(-Icsrc "-I$py_inc" "-I$pb_inc")
FLAGS=(-std=c++17 -O2 -Wall -Werror -fopenmp -fno-math-errno -fno-trapping-math)
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
JOBS=$OUT/jobs
: > "$JOBS"
n=0
add() {  # add FILE ARGS...: one compilation
    local f=$1; shift
    n=$((n + 1))
    printf '%q ' "$CXX" "${FLAGS[@]}" "$@" -c "$f" -o "$OUT/$n.o" >> "$JOBS"
    printf '2> %q || { echo FAIL %q; head -n 20 %q; }\n' "$OUT/$n.err" "$f" "$OUT/$n.err" >> "$JOBS"
}
for level in "${LEVELS[@]}"; do
    name=${level%%:*} flags=${level#*:}
    for f in csrc/kernels/*.cpp; do
        # shellcheck disable=SC2086
        add "$f" $flags "-DKG_ISA=$name" -Icsrc
    done
done
defs=()
for level in "${LEVELS[@]}"; do defs+=("-DKG_HAVE_$(echo "${level%%:*}" | tr a-z A-Z)=1"); done
for f in csrc/common/*.cpp csrc/bindings/*.cpp csrc/bpe/*.cpp csrc/gguf/*.cpp csrc/model/*.cpp; do
    add "$f" -fvisibility=hidden "${defs[@]}" -DKG_HAVE_OPENMP=1 "${INC[@]}"
done
# every compilation on its own line, as many at once as there are cores
tr '\n' '\0' < "$JOBS" | xargs -0 -P "$(nproc)" -n 1 bash -c > "$OUT/log" 2>&1
cat "$OUT/log"
failed=$(grep -c '^FAIL' "$OUT/log")
echo "$ARCH: $((n - failed)) of $n compilations clean with -Wall -Werror"
exit "$failed"
