"""Prints one table: every kernel against numpy (and PyTorch CPU when installed).

    flock .bench.lock python benchmarks/run.py [--threads 2] [--only matmul,softmax] [--quick]
        [--json results.json]

Same as `kernelgpt bench` (kernelgpt/cli/bench.py); the method and the cases:
kernelgpt/bench.py.
"""
import sys

from kernelgpt.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench"] + sys.argv[1:]))
