"""pytest-benchmark groups for attention: numpy vs kernelgpt vs PyTorch, 2 threads each
(KERNELGPT_THREADS overrides).

    pytest benchmarks/test_bench_attention.py --benchmark-only
"""
import os

import numpy as np
import pytest

import kernelgpt
from kernelgpt import ops, reference

THREADS = int(os.environ.get("KERNELGPT_THREADS", "2"))


@pytest.fixture(scope="module", autouse=True)
def _threads():
    kernelgpt.set_num_threads(THREADS)
    limiter = None
    try:
        import threadpoolctl
        limiter = threadpoolctl.threadpool_limits(THREADS)
    except ImportError:
        pass
    try:
        import torch
        torch.set_num_threads(THREADS)
    except ImportError:
        pass
    yield
    del limiter


def _inputs(b, h, hkv, t, s, d):
    rng = np.random.default_rng(0)
    return (rng.standard_normal((b, h, t, d), dtype=np.float32),
            rng.standard_normal((b, hkv, s, d), dtype=np.float32),
            rng.standard_normal((b, hkv, s, d), dtype=np.float32),
            rng.standard_normal((b, h, t, d), dtype=np.float32))


TRAIN = (1, 12, 12, 1024, 1024, 64)  # causal, T == S


@pytest.mark.parametrize("impl", ["numpy", "kernelgpt", "torch"])
def test_attention_forward(benchmark, impl):
    benchmark.group = "attention forward causal B1 H12 T1024 D64"
    q, k, v, _ = _inputs(*TRAIN)
    if impl == "numpy":
        benchmark(reference.attention, q, k, v, True)
    elif impl == "kernelgpt":
        out = np.empty_like(q)
        benchmark(lambda: ops.attention(q, k, v, out=out))
    else:
        torch = pytest.importorskip("torch")
        tq, tk, tv = (torch.from_numpy(x) for x in (q, k, v))

        def run():
            with torch.no_grad():
                torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=True)
        benchmark(run)


@pytest.mark.parametrize("impl", ["numpy", "kernelgpt", "torch"])
def test_attention_forward_backward(benchmark, impl):
    benchmark.group = "attention forward+backward causal B1 H12 T1024 D64"
    q, k, v, dout = _inputs(*TRAIN)
    if impl == "numpy":
        def run():
            out, lse = reference.attention(q, k, v, True)
            reference.attention_backward(dout, q, k, v, out, lse, True)
    elif impl == "kernelgpt":
        def run():
            out, lse = ops.attention(q, k, v, return_lse=True)
            ops.attention_backward(dout, q, k, v, out, lse)
    else:
        torch = pytest.importorskip("torch")
        tq, tk, tv = (torch.from_numpy(x).requires_grad_() for x in (q, k, v))
        tdout = torch.from_numpy(dout)

        def run():
            for x in (tq, tk, tv):
                x.grad = None
            torch.nn.functional.scaled_dot_product_attention(
                tq, tk, tv, is_causal=True).backward(tdout)
    benchmark(run)


@pytest.mark.parametrize("s", [1024, 4096])
@pytest.mark.parametrize("impl", ["numpy", "kernelgpt", "torch"])
def test_attention_decode(benchmark, impl, s):
    benchmark.group = f"attention decode T1 S{s} H9/3 D64"
    q, k, v, _ = _inputs(1, 9, 3, 1, s, 64)
    if impl == "numpy":
        benchmark(reference.attention, q, k, v, True)
    elif impl == "kernelgpt":
        out = np.empty_like(q)
        benchmark(lambda: ops.attention(q, k, v, out=out))
    else:
        torch = pytest.importorskip("torch")
        tq, tk, tv = (torch.from_numpy(x) for x in (q, k, v))

        def run():
            with torch.no_grad():
                torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, enable_gqa=True)
        benchmark(run)
