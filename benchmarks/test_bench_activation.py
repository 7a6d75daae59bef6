"""pytest-benchmark groups for the activations: numpy reference vs kernelgpt vs PyTorch.

    flock /work/main/.bench.lock env PYTHONPATH=python python3 -m pytest benchmarks/test_bench_activation.py --benchmark-only

Shape: GPT-2 small's MLP hidden layer, [8192, 3072] (96 MiB). 2 threads for every library.
"""
import numpy as np
import pytest

from kernelgpt import ops, reference
from _timing import setup_threads

R, C = 8192, 3072


@pytest.fixture(scope="module", autouse=True)
def _threads():
    limiter = setup_threads()
    yield
    del limiter


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return (rng.standard_normal((R, C), dtype=np.float32),
            rng.standard_normal((R, C), dtype=np.float32),
            rng.standard_normal((R, C), dtype=np.float32))


def _torch():
    return pytest.importorskip("torch")


@pytest.mark.parametrize("impl", ["numpy", "kernelgpt", "torch"])
def test_gelu_forward(benchmark, data, impl):
    benchmark.group = f"gelu (tanh) forward {R}x{C}"
    x, _, _ = data
    if impl == "numpy":
        benchmark(reference.gelu, x)
    elif impl == "kernelgpt":
        y = np.empty_like(x)
        benchmark(lambda: ops.gelu(x, out=y))
    else:
        tx = _torch().from_numpy(x)
        benchmark(lambda: _torch().nn.functional.gelu(tx, approximate="tanh"))


@pytest.mark.parametrize("impl", ["numpy", "kernelgpt", "torch"])
def test_gelu_backward(benchmark, data, impl):
    benchmark.group = f"gelu (tanh) backward {R}x{C}"
    x, dy, _ = data
    if impl == "numpy":
        benchmark(reference.gelu_backward, dy, x)
    elif impl == "kernelgpt":
        dx = np.empty_like(x)
        benchmark(lambda: ops.gelu_backward(dy, x, out=dx))
    else:
        torch = _torch()
        tx, tdy = torch.from_numpy(x), torch.from_numpy(dy)
        benchmark(lambda: torch.ops.aten.gelu_backward(tdy, tx, approximate="tanh"))


@pytest.mark.parametrize("impl", ["numpy", "kernelgpt", "torch"])
def test_silu_forward(benchmark, data, impl):
    benchmark.group = f"silu forward {R}x{C}"
    x, _, _ = data
    if impl == "numpy":
        benchmark(reference.silu, x)
    elif impl == "kernelgpt":
        y = np.empty_like(x)
        benchmark(lambda: ops.silu(x, out=y))
    else:
        tx = _torch().from_numpy(x)
        benchmark(lambda: _torch().nn.functional.silu(tx))


@pytest.mark.parametrize("impl", ["numpy", "kernelgpt", "torch"])
def test_swiglu_forward(benchmark, data, impl):
    benchmark.group = f"swiglu forward {R}x{C}"
    gate, _, up = data
    if impl == "numpy":
        benchmark(reference.swiglu, gate, up)
    elif impl == "kernelgpt":
        y = np.empty_like(gate)
        benchmark(lambda: ops.swiglu(gate, up, out=y))
    else:
        torch = _torch()
        tg, tu = torch.from_numpy(gate), torch.from_numpy(up)
        benchmark(lambda: torch.nn.functional.silu(tg) * tu)
