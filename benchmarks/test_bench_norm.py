"""pytest-benchmark groups for layernorm / rmsnorm: numpy reference vs kernelgpt vs PyTorch,
the cases of benchmarks/bench_norm.py (its "fast" rows).

    flock .bench.lock python -m pytest benchmarks/test_bench_norm.py --benchmark-only

Shapes: GPT-2 small activations [8192, 768] (24 MiB, about the size of L3) and a large
[4096, 4096] (64 MiB). 2 threads for every library (KERNELGPT_THREADS overrides).
"""
import numpy as np
import pytest

from bench_norm import case_impls, inputs
from conftest import torch_if

SHAPES = [(8192, 768), (4096, 4096)]
CASES = ["layernorm forward", "layernorm backward", "rmsnorm forward", "rmsnorm backward"]
LABELS = {"numpy": "numpy", "kernelgpt": "fast", "torch": "torch"}


@pytest.mark.parametrize("R,C", SHAPES)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("impl", list(LABELS))
def test_norm(benchmark, R, C, case, impl):
    benchmark.group = f"{case} {R}x{C}"
    impls = case_impls(*inputs(np.random.default_rng(0), R, C), torch_if(impl), naive=False)
    fns = {label: fn for label, fn, _ in impls[case]}
    if LABELS[impl] not in fns:
        pytest.skip(f"no {impl} version of {case}")
    benchmark(fns[LABELS[impl]])
