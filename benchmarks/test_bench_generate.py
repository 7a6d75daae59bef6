"""pytest-benchmark: one decode step of the default preset model (benchmarks/bench_generate.py's
PRESETS: 4 x 192, block 128, vocab 65) at position 64, the C++ runner (GPT.decode_next) vs
the Python path (GPT.forward_cached). The full table (tokens/s, steps by position, Python
overhead) is benchmarks/bench_generate.py.

    flock .bench.lock python -m pytest -q benchmarks/test_bench_generate.py \
        --benchmark-group-by=group
"""
import numpy as np
import pytest

from bench_generate import PRESETS, VOCAB
from kernelgpt.model import GPT, GPTConfig


@pytest.fixture(scope="module")
def model():
    return GPT(GPTConfig(vocab_size=VOCAB, **PRESETS["default"]), seed=0)


@pytest.mark.benchmark(group="decode step, default preset, position 64")
@pytest.mark.parametrize("impl", ["python", "runner"])
def test_decode_step(benchmark, model, impl):
    cache = model.new_cache()
    model.forward_cached(np.arange(64)[None] % VOCAB, cache)
    out = np.empty(VOCAB, np.float32)

    def step():
        cache.truncate(64)
        if impl == "runner":
            model.decode_next(7, cache, out=out)
        else:
            model.forward_cached(np.array([[7]]), cache)

    benchmark(step)
