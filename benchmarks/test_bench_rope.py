"""pytest-benchmark: RoPE (both layouts) and the sinusoidal table, numpy vs kernelgpt (vs
transformers-style PyTorch for the half layout), the cases of benchmarks/bench_rope.py.

    flock .bench.lock python -m pytest -q benchmarks/test_bench_rope.py --benchmark-group-by=group
"""
import numpy as np
import pytest

from bench_rope import CASES, TABLES, rope_impls, sinusoidal_impls
from conftest import torch_if

NAME, SHAPE, OFFSET, BASE, _, _ = CASES[0]
LABELS = {"numpy": "numpy", "kernelgpt": "kernelgpt fast out=", "torch": "torch HF"}


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).standard_normal(SHAPE, dtype=np.float32)


@pytest.mark.parametrize("layout", ["half", "interleaved"])
@pytest.mark.parametrize("impl", list(LABELS))
def test_rope(benchmark, x, layout, impl):
    benchmark.group = f"rope {layout} {list(SHAPE)}"
    if impl == "torch" and layout != "half":
        pytest.skip("the transformers-style rotation is the half layout")
    fns = dict(rope_impls(x, OFFSET, BASE, layout, torch_if(impl), naive=False))
    benchmark(fns[LABELS[impl]])


@pytest.mark.benchmark(group="sinusoidal_positions %d x %d" % TABLES[0][:2])
@pytest.mark.parametrize("impl", ["numpy", "kernelgpt"])
def test_sinusoidal(benchmark, impl):
    fns = dict(sinusoidal_impls(*TABLES[0], naive=False))
    benchmark(fns["kernelgpt fast" if impl == "kernelgpt" else "numpy"])
