"""pytest-benchmark groups for softmax / cross-entropy: numpy reference vs kernelgpt (vs PyTorch
CPU when installed), 2 threads each (KERNELGPT_THREADS overrides).

    flock /work/main/.bench.lock env PYTHONPATH=python python3 -m pytest \
        benchmarks/test_bench_softmax.py --benchmark-only
"""
import os

import numpy as np
import pytest

import kernelgpt
from kernelgpt import ops, reference

THREADS = int(os.environ.get("KERNELGPT_THREADS", "2"))
IMPLS = ["numpy", "kernelgpt", "torch"]


@pytest.fixture(scope="module", autouse=True)
def _softmax_threads():
    kernelgpt.set_num_threads(THREADS)
    try:
        import threadpoolctl
        limiter = threadpoolctl.threadpool_limits(THREADS)
    except ImportError:
        limiter = None
    try:
        import torch
        torch.set_num_threads(THREADS)
    except ImportError:
        pass
    yield
    del limiter


def _torch():
    return pytest.importorskip("torch")


def _logits(n, v):
    return np.random.default_rng(0).standard_normal((n, v), dtype=np.float32) * 3


@pytest.mark.parametrize("shape", [(1024, 50304), (64, 12, 256, 256)])
@pytest.mark.parametrize("impl", IMPLS)
def test_softmax(benchmark, shape, impl):
    benchmark.group = f"softmax {list(shape)}"
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    y = np.empty_like(x)
    if impl == "numpy":
        benchmark(reference.softmax, x)
    elif impl == "kernelgpt":
        benchmark(lambda: ops.softmax(x, out=y))
    else:
        torch = _torch()
        tx, ty = torch.from_numpy(x), torch.from_numpy(y)
        benchmark(lambda: torch.softmax(tx, -1, out=ty))


@pytest.mark.parametrize("impl", IMPLS)
def test_softmax_backward(benchmark, impl):
    n, v = 1024, 50304
    benchmark.group = f"softmax_backward [{n}, {v}]"
    y = ops.softmax(_logits(n, v))
    dy = np.random.default_rng(1).standard_normal((n, v), dtype=np.float32)
    dx = np.empty_like(y)
    if impl == "numpy":
        benchmark(reference.softmax_backward, dy, y)
    elif impl == "kernelgpt":
        benchmark(lambda: ops.softmax_backward(dy, y, out=dx))
    else:
        torch = _torch()
        ty, tdy = torch.from_numpy(y), torch.from_numpy(dy)
        benchmark(lambda: torch._softmax_backward_data(tdy, ty, -1, torch.float32))


@pytest.mark.parametrize("impl", IMPLS)
def test_cross_entropy_with_grad(benchmark, impl):
    n, v = 1024, 50304
    benchmark.group = f"cross_entropy + grad [{n}, {v}]"
    x = _logits(n, v)
    targets = np.random.default_rng(2).integers(0, v, n)
    g = np.empty_like(x)
    if impl == "numpy":
        benchmark(lambda: reference.cross_entropy(x, targets, return_grad=True))
    elif impl == "kernelgpt":
        benchmark(lambda: ops.cross_entropy(x, targets, return_grad=True, out=g))
    else:
        torch = _torch()
        tx, tt = torch.from_numpy(x), torch.from_numpy(targets)

        def step():
            leaf = tx.detach().requires_grad_(True)
            torch.nn.functional.cross_entropy(leaf, tt).backward()
            return leaf.grad
        benchmark(step)


@pytest.mark.parametrize("impl", IMPLS)
def test_cross_entropy_loss(benchmark, impl):
    n, v = 1024, 50304
    benchmark.group = f"cross_entropy loss [{n}, {v}]"
    x = _logits(n, v)
    targets = np.random.default_rng(2).integers(0, v, n)
    if impl == "numpy":
        benchmark(reference.cross_entropy, x, targets)
    elif impl == "kernelgpt":
        benchmark(ops.cross_entropy, x, targets)
    else:
        torch = _torch()
        tx, tt = torch.from_numpy(x), torch.from_numpy(targets)
        benchmark(torch.nn.functional.cross_entropy, tx, tt)
