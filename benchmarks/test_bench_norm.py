"""pytest-benchmark groups for layernorm / rmsnorm: numpy reference vs kernelgpt vs PyTorch.

    flock /work/main/.bench.lock env PYTHONPATH=python python3 -m pytest benchmarks/test_bench_norm.py --benchmark-only

Shapes: GPT-2 small activations [8192, 768] (24 MiB, about the size of L3) and a large
[4096, 4096] (64 MiB). 2 threads for every library (KERNELGPT_THREADS overrides).
"""
import numpy as np
import pytest

from kernelgpt import ops, reference
from _timing import setup_threads

SHAPES = [(8192, 768), (4096, 4096)]


@pytest.fixture(scope="module", autouse=True)
def _threads():
    limiter = setup_threads()
    yield
    del limiter


def _data(R, C):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((R, C), dtype=np.float32)
    return (x, rng.standard_normal((R, C), dtype=np.float32),
            rng.standard_normal(C, dtype=np.float32), rng.standard_normal(C, dtype=np.float32))


@pytest.mark.parametrize("R,C", SHAPES)
@pytest.mark.parametrize("impl", ["numpy", "kernelgpt", "torch"])
def test_layernorm_forward(benchmark, R, C, impl):
    benchmark.group = f"layernorm forward {R}x{C}"
    x, _, w, b = _data(R, C)
    if impl == "numpy":
        benchmark(reference.layernorm, x, w, b)
    elif impl == "kernelgpt":
        y = np.empty_like(x)
        benchmark(lambda: ops.layernorm(x, w, b, out=y))
    else:
        torch = pytest.importorskip("torch")
        tx, tw, tb = map(torch.from_numpy, (x, w, b))
        benchmark(lambda: torch.nn.functional.layer_norm(tx, (C,), tw, tb, 1e-5))


@pytest.mark.parametrize("R,C", SHAPES)
@pytest.mark.parametrize("impl", ["numpy", "kernelgpt", "torch"])
def test_layernorm_backward(benchmark, R, C, impl):
    benchmark.group = f"layernorm backward {R}x{C}"
    x, dy, w, b = _data(R, C)
    _, mean, rstd = ops.layernorm(x, w, b, return_stats=True)
    if impl == "numpy":
        benchmark(reference.layernorm_backward, dy, x, w, mean, rstd)
    elif impl == "kernelgpt":
        benchmark(ops.layernorm_backward, dy, x, w, mean, rstd)
    else:
        torch = pytest.importorskip("torch")
        tx, tdy, tw, tb = map(torch.from_numpy, (x, dy, w, b))
        _, tm, tr = torch.ops.aten.native_layer_norm(tx, [C], tw, tb, 1e-5)
        benchmark(lambda: torch.ops.aten.native_layer_norm_backward(
            tdy, tx, [C], tm, tr, tw, tb, [True, True, True]))


@pytest.mark.parametrize("R,C", SHAPES)
@pytest.mark.parametrize("impl", ["numpy", "kernelgpt", "torch"])
def test_rmsnorm_forward(benchmark, R, C, impl):
    benchmark.group = f"rmsnorm forward {R}x{C}"
    x, _, w, _ = _data(R, C)
    if impl == "numpy":
        benchmark(reference.rmsnorm, x, w)
    elif impl == "kernelgpt":
        y = np.empty_like(x)
        benchmark(lambda: ops.rmsnorm(x, w, out=y))
    else:
        torch = pytest.importorskip("torch")
        tx, tw = map(torch.from_numpy, (x, w))
        benchmark(lambda: torch.nn.functional.rms_norm(tx, (C,), tw, 1e-6))


@pytest.mark.parametrize("R,C", SHAPES[:1])
@pytest.mark.parametrize("impl", ["numpy", "kernelgpt"])
def test_rmsnorm_backward(benchmark, R, C, impl):
    benchmark.group = f"rmsnorm backward {R}x{C}"
    x, dy, w, _ = _data(R, C)
    _, rstd = ops.rmsnorm(x, w, return_stats=True)
    fn = reference.rmsnorm_backward if impl == "numpy" else ops.rmsnorm_backward
    benchmark(fn, dy, x, w, rstd)
