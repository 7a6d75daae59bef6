#!/usr/bin/env bash
# The GPU check in one command (issue 22): build for one GPU architecture, run every GPU test,
# check SmolLM2 on the GPU against the CPU, benchmark every CUDA kernel and two end-to-end jobs;
# everything into OUT.
#
#   tools/gpu_check.sh OUT                         # on a machine with an NVIDIA GPU
#   tools/gpu_check.sh OUT --device emu --small    # the dry run on the CPU emulator (no build;
#                                                  # the test suite runs it: tests/test_gpu_check.py)
#
# Written for a lent machine that has nvcc, CMake, ninja, scikit-build-core, pybind11, CuPy,
# PyTorch and pytest but no package index: the build uses that Python's own packages
# (--no-build-isolation --no-index) into build/gpu-check/site, parallel on every core, for
# KG_CUDA_ARCH only (default 90: H100 / H200; 80 for A100, 89 for L4 / RTX 40xx).
#
# SmolLM2's 98 MB GGUF does not travel to such a machine (64 MiB per call): put its first six
# blocks there instead, made here with
#     python tools/gguf_layers.py SmolLM2-135M-Instruct.Q4_1.gguf build/gpu-carry/smollm2-6.gguf --keep 6
# (45 MB; `run` with carry ["build/gpu-carry"]). The script checks those six real blocks on
# the GPU against the CPU and rebuilds a file of SmolLM2's shape (30 blocks, each one of the
# six repeated) to time decoding. Where the full file is at hand (KG_SMOLLM2_GGUF, or fetched
# with `kernelgpt fetch smollm2`) it is used whole.
#
# Each stage runs under its own time limit, cut to what is left of KG_GPU_CHECK_SECONDS (540 by
# default, so that a failed try leaves time for a second within the lender's 10-minute call):
# a stage that runs long is stopped and the next one starts. OUT receives one log per stage,
# stages.tsv (stage, status, seconds), tests.xml (JUnit), model_check.json, bench.json (every
# measured number) and table.md (the rows README's GPU table shows). Exit status: the number
# of stages that did not pass.
set -uo pipefail

usage() { echo "usage: tools/gpu_check.sh OUT [--device cuda|emu] [--small]" >&2; exit 2; }
[ $# -ge 1 ] || usage
OUT=$1; shift
DEVICE=cuda
SMALL=()
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE=${2:-}; shift 2 || usage ;;
        --small) SMALL=(--small); shift ;;
        *) usage ;;
    esac
done
[ "$DEVICE" = cuda ] || [ "$DEVICE" = emu ] || usage
cd "$(dirname "$0")/.." || exit 2
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python3}
ARCH=${KG_CUDA_ARCH:-90}
TOTAL=${KG_GPU_CHECK_SECONDS:-540}
T0=$(date +%s)
FAILED=0
printf 'stage\tstatus\tseconds\n' > "$OUT/stages.tsv"

# stage NAME BUDGET CMD...: runs CMD with its output in OUT/NAME.log, for at most BUDGET seconds
# (or what is left of TOTAL), and records how it went.
stage() {
    local name=$1 budget=$2; shift 2
    local left=$((TOTAL - ($(date +%s) - T0)))
    [ "$budget" -le "$left" ] || budget=$left
    if [ "$budget" -lt 5 ]; then
        printf '%s\tskipped (no time left)\t0\n' "$name" >> "$OUT/stages.tsv"
        echo "== $name: skipped, no time left"; FAILED=$((FAILED + 1)); return 1
    fi
    local start=$(date +%s.%N) rc status
    timeout -k 10 "$budget" "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    local secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    case $rc in
        0) status=ok ;;
        124|137) status="timed out after ${budget} s" ;;
        *) status="failed (exit $rc)" ;;
    esac
    printf '%s\t%s\t%s\n' "$name" "$status" "$secs" >> "$OUT/stages.tsv"
    echo "== $name: $status (${secs} s)"
    [ $rc -eq 0 ] || { tail -n 15 "$OUT/$name.log"; FAILED=$((FAILED + 1)); }
    return $rc
}

# The package into build/gpu-check/site: with pip and scikit-build-core (the usual way), or, where
# that Python has no pip, with CMake directly (the module beside a copy of python/kernelgpt).
build_package() {
    local defs=("-DCMAKE_CUDA_ARCHITECTURES=$ARCH" "-DKG_ISA_LEVELS=generic;avx512" -DKG_CUDA_EMU=OFF)
    if "$PY" -m pip --version >/dev/null 2>&1; then
        "$PY" -m pip install --no-build-isolation --no-deps --no-index --upgrade \
            --target build/gpu-check/site -Cbuild-dir=build/gpu-check/build \
            "${defs[@]/#-D/-Ccmake.define.}" .
    else
        echo "no pip in $PY: building with CMake directly"
        rm -rf build/gpu-check/site && mkdir -p build/gpu-check/site &&
            cp -r python/kernelgpt build/gpu-check/site/ &&
            cmake -S . -B build/gpu-check/cmake -G Ninja -DCMAKE_BUILD_TYPE=Release \
                -DPython_EXECUTABLE="$(command -v "$PY")" \
                -Dpybind11_DIR="$("$PY" -m pybind11 --cmakedir)" \
                -DKG_OUTPUT_DIR="$PWD/build/gpu-check/site/kernelgpt" "${defs[@]}" &&
            cmake --build build/gpu-check/cmake -j "$(nproc)"
    fi
}
export -f build_package
export ARCH PY

echo "== gpu_check: device $DEVICE${SMALL:+ (small)}, $(date -u +%FT%TZ), budget ${TOTAL} s"
if [ "$DEVICE" = cuda ]; then
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total \
        --format=csv,noheader > "$OUT/gpu.txt" 2>&1
    # 1. build: sm_$ARCH only, the C++ kernels in two copies (portable + AVX-512), no emulator
    export CMAKE_BUILD_PARALLEL_LEVEL=$(nproc)
    stage build 240 bash -c build_package
    export PYTHONPATH="$PWD/build/gpu-check/site${PYTHONPATH:+:$PYTHONPATH}"
    # the build is the kernelgpt imported, and it sees the GPU (else every gpu test would skip)
    stage import 60 "$PY" -c "
import os, sys, kernelgpt, kernelgpt.device as d
print('kernelgpt from', kernelgpt.__file__, '| ISAs', kernelgpt.available_isas())
if not os.path.realpath(kernelgpt.__file__).startswith(os.path.realpath('build/gpu-check/site')):
    sys.exit('another kernelgpt is imported before build/gpu-check/site (an editable install?)')
if not d.cuda_available():
    sys.exit('no GPU usable: a CUDA build of kernelgpt, CuPy and an NVIDIA GPU are needed')
import cupy; print('GPU:', cupy.cuda.runtime.getDeviceProperties(0)['name'])"
    TESTS=(-m gpu tests)
else
    # the dry run: the installed package; a few of the emulator's tests stand for `-m gpu`
    TESTS=(tests/test_cuda.py -k "softmax and not reverse and not shuffle")
fi

# 2. the GPU tests
stage tests 200 "$PY" -m pytest -q -p no:cacheprovider -o faulthandler_timeout=120 \
    --junitxml "$OUT/tests.xml" "${TESTS[@]}"

# 3. SmolLM2 (or, in the dry run, the tests' tiny Llama): real blocks against the CPU, then a
#    file of the full depth for the decode benchmark
MODELS=build/gpu-check/models
mkdir -p "$MODELS"
make_models() {
    local full=${KG_SMOLLM2_GGUF:-} part
    if [ -z "$full" ] && [ "$DEVICE" = cuda ]; then
        full=$("$PY" -c "from kernelgpt.io.fetch import cached; print(cached('smollm2') or '')" \
               2>/dev/null) || full=""
    fi
    if [ -n "$full" ] && [ -f "$full" ]; then
        "$PY" tools/gguf_layers.py "$full" "$MODELS/check.gguf" --keep 6 || return 1
        ln -sf "$(cd "$(dirname "$full")" && pwd)/$(basename "$full")" "$MODELS/bench.gguf"
        return 0
    fi
    if [ "$DEVICE" = emu ]; then  # a tiny valid Llama (the tests' writer), 2 blocks -> 3
        "$PY" -c "import sys; sys.path.insert(0, 'tests'); import gguf_writer; \
open('$MODELS/tiny.gguf', 'wb').write(gguf_writer.llama_file(numeric=True))" || return 1
        "$PY" tools/gguf_layers.py "$MODELS/tiny.gguf" "$MODELS/check.gguf" --keep 2 || return 1
        "$PY" tools/gguf_layers.py "$MODELS/tiny.gguf" "$MODELS/bench.gguf" --keep 2 --blocks 3
        return $?
    fi
    part=$(ls build/gpu-carry/*.gguf 2>/dev/null | head -n 1)
    [ -n "$part" ] || { echo "no SmolLM2 GGUF: neither KG_SMOLLM2_GGUF, a fetched one, nor \
build/gpu-carry/*.gguf (see the top of this script)"; return 1; }
    cp "$part" "$MODELS/check.gguf" &&
        "$PY" tools/gguf_layers.py "$part" "$MODELS/bench.gguf" --keep 6 --blocks 30
}
export -f make_models
export MODELS DEVICE PY
stage models 60 bash -c make_models
if [ -f "$MODELS/check.gguf" ]; then
    stage model_check 90 "$PY" tools/gpu_model_check.py "$MODELS/check.gguf" --device "$DEVICE" \
        --tokens "$([ "$DEVICE" = emu ] && echo 4 || echo 16)" --json "$OUT/model_check.json"
fi

# 4. every kernel and the end-to-end jobs
BENCH_MODEL=()
[ -e "$MODELS/bench.gguf" ] && BENCH_MODEL=(--smollm2 "$MODELS/bench.gguf")
stage bench 240 "$PY" benchmarks/bench_cuda.py --device "$DEVICE" "${SMALL[@]}" \
    --repeats "$([ "$DEVICE" = emu ] && echo 2 || echo 20)" --json "$OUT/bench.json" \
    "${BENCH_MODEL[@]}"

# 5. the table README shows, from bench.json (whatever the bench stage measured)
"$PY" - "$OUT" <<'EOF' > "$OUT/table.md" 2>> "$OUT/bench.log"
import json, sys, os
out = sys.argv[1]
try:
    rows = json.load(open(os.path.join(out, "bench.json")))
except (OSError, ValueError):
    rows = []
gpu = open(os.path.join(out, "gpu.txt")).read().strip() if os.path.exists(os.path.join(out, "gpu.txt")) else "emulator"
print(f"On {gpu}:\n")
print("| kernel / job | version | time | rate | % of peak bandwidth | vs baseline |")
print("| --- | --- | ---: | ---: | ---: | ---: |")
for r in rows:
    if "kernel" in r:
        peak = f"{r['peak_pct']:.0f}%" if r.get("peak_pct") else ""
        base = f"{r['vs_baseline']:.2f}x" if r.get("vs_baseline") else ""
        print(f"| {r['kernel']} | {r['version']} | {r['ms']:.3f} ms | {r['rate']:.2f} {r['unit']} | {peak} | {base} |")
    elif "tokens_per_s" in r:
        print(f"| {r['job']} | | {r['ms']:.1f} ms | {r['tokens_per_s']:,.0f} tokens/s | | |")
    else:
        print(f"| {r['job']} | CUDA graph / eager | | {r['decode_tokens_per_s_graphs']:,.1f} / "
              f"{r['decode_tokens_per_s_eager']:,.1f} tokens/s (prefill {r['prefill_tokens_per_s']:,.0f}) | | |")
EOF

echo "== gpu_check: $FAILED stage(s) did not pass, $(( $(date +%s) - T0 )) s in all; results in $OUT"
cat "$OUT/stages.tsv"
exit $FAILED
