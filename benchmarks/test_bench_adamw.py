"""pytest-benchmark: AdamW step and gradient norm, numpy vs kernelgpt (2 threads).

    flock /work/main/.bench.lock env PYTHONPATH=python python3 -m pytest -q \\
        benchmarks/test_bench_adamw.py --benchmark-group-by=group
"""
import numpy as np
import pytest

import kernelgpt
from kernelgpt import ops, reference

N = 16 << 20  # 16M parameters (64 MiB per array); bench_adamw.py runs the 64M case


@pytest.fixture(scope="module")
def state():
    kernelgpt.set_num_threads(2)
    rng = np.random.default_rng(0)
    return [rng.standard_normal(N, dtype=np.float32) for _ in range(3)] + \
        [np.abs(rng.standard_normal(N, dtype=np.float32))]


@pytest.mark.benchmark(group="adamw_step 16M parameters")
@pytest.mark.parametrize("impl", ["numpy", "kernelgpt"])
def test_adamw(benchmark, state, impl):
    p, g, m, v = state
    hp = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1)
    if impl == "numpy":
        benchmark(lambda: reference.adamw_step(p, g, m, v, 10, **hp))
    else:
        benchmark(lambda: ops.adamw_step(p, g, m, v, step=10, **hp))


@pytest.mark.benchmark(group="grad_norm 16M values")
@pytest.mark.parametrize("impl", ["numpy", "kernelgpt"])
def test_grad_norm(benchmark, state, impl):
    g = state[1]
    if impl == "numpy":
        benchmark(lambda: reference.grad_norm(g))
    else:
        benchmark(lambda: ops.grad_norm(g))
