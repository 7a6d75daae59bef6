"""pytest-benchmark: RoPE (both layouts) and the sinusoidal table, numpy vs kernelgpt.

    flock /work/main/.bench.lock env PYTHONPATH=python python3 -m pytest -q \\
        benchmarks/test_bench_rope.py --benchmark-group-by=group
"""
import numpy as np
import pytest

import kernelgpt
from kernelgpt import ops, reference


@pytest.fixture(scope="module")
def x():
    kernelgpt.set_num_threads(2)
    return np.random.default_rng(0).standard_normal((8, 12, 1024, 64), dtype=np.float32)


@pytest.mark.parametrize("layout", ["half", "interleaved"])
@pytest.mark.parametrize("impl", ["numpy", "kernelgpt"])
def test_rope(benchmark, x, layout, impl):
    benchmark.group = f"rope {layout} [8, 12, 1024, 64]"
    out = np.empty_like(x)
    if impl == "numpy":
        benchmark(lambda: reference.rope(x, None, 0, 10000.0, layout))
    else:
        benchmark(lambda: ops.rope(x, layout=layout, out=out))


@pytest.mark.benchmark(group="sinusoidal_positions 1024 x 768")
@pytest.mark.parametrize("impl", ["numpy", "kernelgpt"])
def test_sinusoidal(benchmark, impl):
    kernelgpt.set_num_threads(2)
    if impl == "numpy":
        benchmark(lambda: reference.sinusoidal_positions(1024, 768).astype(np.float32))
    else:
        benchmark(lambda: ops.sinusoidal_positions(1024, 768))
