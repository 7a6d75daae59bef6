"""pytest-benchmark groups for matmul: numpy vs kernelgpt vs PyTorch, the cases of
`kernelgpt bench` (kernelgpt.bench.matmul_case).

    flock .bench.lock python -m pytest benchmarks/test_bench_matmul.py --benchmark-only
"""
import pytest

from conftest import torch_or_skip
from kernelgpt.bench import MATMUL_SHAPES, matmul_case


@pytest.mark.parametrize("m,k,n", MATMUL_SHAPES[:3])
@pytest.mark.parametrize("impl", ["numpy", "kernelgpt", "torch"])
def test_matmul(benchmark, m, k, n, impl):
    benchmark.group = f"matmul {m}x{k}x{n}"
    case = matmul_case(torch_or_skip() if impl == "torch" else None, m, k, n)
    benchmark(case.impls[impl])
