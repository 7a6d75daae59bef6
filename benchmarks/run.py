"""Prints one table: every kernel against numpy (and PyTorch CPU when installed).

    python benchmarks/run.py [--threads 2] [--only matmul,softmax] [--json results.json]

Same as `kernelgpt bench`; see kernelgpt/bench.py for the method.
"""
import sys

from kernelgpt.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench"] + sys.argv[1:]))
