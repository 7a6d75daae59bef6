"""pytest-benchmark groups for softmax / cross-entropy: numpy reference vs kernelgpt (vs PyTorch
CPU when installed), 2 threads each (KERNELGPT_THREADS overrides), the cases of
benchmarks/bench_softmax.py (its out= rows).

    flock .bench.lock python -m pytest benchmarks/test_bench_softmax.py --benchmark-only
"""
import numpy as np
import pytest

from bench_softmax import ATTENTION, attention_impls, vocab_impls, vocab_inputs
from conftest import torch_if

N, V = 1024, 50304
CASES = ["softmax", "softmax_backward", "cross_entropy + grad", "cross_entropy loss only"]
IMPLS = ["numpy", "kernelgpt", "torch"]
KERNELGPT = {"online (out=)", "online", "fused (out=)"}  # the rows that reuse their output


def _pick(impls, impl):
    """The numpy row, kernelgpt's fastest row or the PyTorch row of a case."""
    for label, fn, _ in impls:
        if label == impl or label in KERNELGPT and impl == "kernelgpt" or \
                label.startswith("torch") and impl == "torch":
            return fn
    raise KeyError(impl)


@pytest.fixture(scope="module")
def vocab():
    return vocab_inputs(np.random.default_rng(0), N, V)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("impl", IMPLS)
def test_vocab(benchmark, vocab, case, impl):
    benchmark.group = f"{case} [{N}, {V}]"
    benchmark(_pick(vocab_impls(*vocab, torch_if(impl), naive=False)[case], impl))


@pytest.mark.parametrize("impl", IMPLS)
def test_attention_scores(benchmark, impl):
    shape, causal = ATTENTION[1]
    benchmark.group = f"softmax {list(shape)}, scale 0.125"
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    benchmark(_pick(attention_impls(x, causal, torch_if(impl), naive=False), impl))
