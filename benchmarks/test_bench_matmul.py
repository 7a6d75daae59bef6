import numpy as np
import pytest

from kernelgpt import ops
from conftest import torch_or_skip

SHAPES = [(128, 576, 1536), (512, 768, 3072), (1024, 1024, 1024)]


def _operands(m, k, n):
    rng = np.random.default_rng(0)
    return (rng.standard_normal((m, k), dtype=np.float32),
            rng.standard_normal((k, n), dtype=np.float32), np.empty((m, n), np.float32))


@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("impl", ["numpy", "kernelgpt", "torch"])
def test_matmul(benchmark, m, k, n, impl):
    benchmark.group = f"matmul {m}x{k}x{n}"
    a, b, c = _operands(m, k, n)
    if impl == "numpy":
        benchmark(np.matmul, a, b, out=c)
    elif impl == "kernelgpt":
        benchmark(ops.matmul, a, b, out=c)
    else:
        torch = torch_or_skip()
        ta, tb, tc = map(torch.from_numpy, (a, b, c))
        benchmark(torch.matmul, ta, tb, out=tc)
