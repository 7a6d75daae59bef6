#!/usr/bin/env bash
# Incremental rebuild of the dev venv's editable install (pip install -e . with
# -Cbuild-dir=build/editable): ninja in the build dir, then the module copied where the
# editable install imports it from. Run from the project root under flock .bench.lock.
set -euo pipefail
cmake --build build/editable -j2
site=$(python -c "import kernelgpt, os; print(os.path.dirname(kernelgpt._C.__file__))")
for so in build/editable/_C*.so build/editable/_cuda_emu*.so; do
    [ -e "$so" ] && cp --remove-destination "$so" "$site/"
done
