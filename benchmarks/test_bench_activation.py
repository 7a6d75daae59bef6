"""pytest-benchmark groups for the activations: numpy reference vs kernelgpt vs PyTorch, the
cases of benchmarks/bench_activation.py (its "fast" rows: out= preallocated).

    flock .bench.lock python -m pytest benchmarks/test_bench_activation.py --benchmark-only

Shape: GPT-2 small's MLP hidden layer, [8192, 3072] (96 MiB). 2 threads for every library
(benchmarks/conftest.py).
"""
import numpy as np
import pytest

from bench_activation import case_impls, inputs
from conftest import torch_if

R, C = 8192, 3072
CASES = [("gelu", "forward"), ("gelu", "backward"), ("silu", "forward"), ("swiglu", "forward")]
LABELS = {"numpy": "numpy", "kernelgpt": "fast", "torch": "torch"}


@pytest.fixture(scope="module")
def data():
    return inputs(np.random.default_rng(0), R, C)


@pytest.mark.parametrize("name,direction", CASES)
@pytest.mark.parametrize("impl", list(LABELS))
def test_activation(benchmark, data, name, direction, impl):
    benchmark.group = f"{name} {direction} {R}x{C}"
    fwd, bwd, _, _ = case_impls(name, *data, torch_if(impl))
    fns = {label: fn for label, fn, _ in (fwd if direction == "forward" else bwd)}
    benchmark(fns[LABELS[impl]])
