"""pytest-benchmark: AdamW step and gradient norm, numpy vs kernelgpt vs PyTorch (2 threads),
the cases of benchmarks/bench_adamw.py.

    flock .bench.lock python -m pytest -q benchmarks/test_bench_adamw.py --benchmark-group-by=group
"""
import numpy as np
import pytest

from bench_adamw import adamw_impls, adamw_state, grad_norm_impls
from conftest import torch_if

N = 16 << 20  # 16M parameters (64 MiB per array); bench_adamw.py runs the 64M case
LABELS = {"numpy": "numpy", "kernelgpt": "kernelgpt fast", "torch": "torch AdamW foreach"}


@pytest.fixture(scope="module")
def state():
    return adamw_state(np.random.default_rng(0), N)


@pytest.mark.benchmark(group="adamw_step 16M parameters")
@pytest.mark.parametrize("impl", list(LABELS))
def test_adamw(benchmark, state, impl):
    benchmark(dict(adamw_impls(*state, torch_if(impl), naive=False))[LABELS[impl]])


@pytest.mark.benchmark(group="grad_norm 16M values")
@pytest.mark.parametrize("impl", ["numpy", "kernelgpt"])
def test_grad_norm(benchmark, state, impl):
    benchmark(dict(grad_norm_impls(state[1], None, naive=False))[LABELS[impl]])
