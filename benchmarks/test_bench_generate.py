"""pytest-benchmark: one decode step of the default preset model (4 x 192, block 128, vocab 65)
at position 64, the C++ runner (GPT.decode_next) vs the Python path (GPT.forward_cached).
The full table (tokens/s, steps by position, Python overhead) is benchmarks/bench_generate.py.

    flock /work/main/.bench.lock env PYTHONPATH=python python3 -m pytest -q \\
        benchmarks/test_bench_generate.py --benchmark-group-by=group
"""
import numpy as np
import pytest

from kernelgpt.model import GPT, GPTConfig


@pytest.fixture(scope="module")
def model():
    return GPT(GPTConfig(vocab_size=65, n_layer=4, n_head=6, n_embd=192, block_size=128), seed=0)


@pytest.mark.benchmark(group="decode step, default preset, position 64")
@pytest.mark.parametrize("impl", ["python", "runner"])
def test_decode_step(benchmark, model, impl):
    cache = model.new_cache()
    model.forward_cached(np.arange(64)[None] % 65, cache)
    out = np.empty(65, np.float32)

    def step():
        cache.truncate(64)
        if impl == "runner":
            model.decode_next(7, cache, out=out)
        else:
            model.forward_cached(np.array([[7]]), cache)

    benchmark(step)
