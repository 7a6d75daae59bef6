"""pytest-benchmark groups for attention: numpy vs kernelgpt vs PyTorch, 2 threads each
(KERNELGPT_THREADS overrides), the cases of benchmarks/bench_attention.py.

    flock .bench.lock python -m pytest benchmarks/test_bench_attention.py --benchmark-only
"""
import numpy as np
import pytest

from bench_attention import DECODE, TRAIN, decode_impls, forward_impls, inputs, train_impls
from conftest import torch_if

LABELS = {"numpy": "numpy", "kernelgpt": "kernelgpt flash", "torch": "torch"}


def _pick(impls, impl, label=None):
    return {name: fn for name, fn, _ in impls}[label or LABELS[impl]]


@pytest.mark.parametrize("impl", list(LABELS))
def test_attention_forward(benchmark, impl):
    benchmark.group = "attention forward causal B1 H12 T1024 D64"
    q, k, v, _ = inputs(np.random.default_rng(0), *TRAIN)
    benchmark(_pick(forward_impls(q, k, v, torch_if(impl), naive=False), impl))


@pytest.mark.parametrize("impl", list(LABELS))
def test_attention_forward_backward(benchmark, impl):
    benchmark.group = "attention forward+backward causal B1 H12 T1024 D64"
    q, k, v, dout = inputs(np.random.default_rng(0), *TRAIN)
    benchmark(_pick(train_impls(q, k, v, dout, torch_if(impl), naive=False), impl))


@pytest.mark.parametrize("s", [1024, 4096])
@pytest.mark.parametrize("impl", list(LABELS))
def test_attention_decode(benchmark, impl, s):
    benchmark.group = f"attention decode T1 S{s} H9/3 D64"
    b, h, hkv, t, _, d = DECODE
    q, k, v, _ = inputs(np.random.default_rng(0), b, h, hkv, t, s, d)
    benchmark(_pick(decode_impls(q, k, v, torch_if(impl)), impl,
                    "kernelgpt decode" if impl == "kernelgpt" else None))
