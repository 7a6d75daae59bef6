#!/usr/bin/env bash
# README's two commands on another CPython, from a fresh clone of HEAD: `pip install .`, then
# `pip install ".[test]" && python -m pytest` (what a user on that Python runs; the optional
# oracles and fetched models of .ci/run are not installed, so their tests skip).
#
#   tools/python_check.sh PYTHON [LOG]     # e.g. tools/python_check.sh "$(pyenv prefix 3.13)/bin/python"
#
# Run it under flock .bench.lock from the project root. Exit status: pytest's.
set -euo pipefail
PY=${1:?usage: tools/python_check.sh PYTHON [LOG]}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
git clone -q "$ROOT" "$WORK/src"
"$PY" -m venv "$WORK/venv"
# shellcheck disable=SC1091
. "$WORK/venv/bin/activate"
cd "$WORK/src"
echo "== $(python --version) from a fresh clone of $(git rev-parse --short HEAD)"
python -m pip install --quiet --upgrade pip
pip install --quiet .
pip install --quiet ".[test]" && python -m pytest -q -p no:cacheprovider
