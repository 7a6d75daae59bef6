"""pytest-benchmark group for GGUF open time: kernelgpt.io.gguf vs the `gguf` package
(benchmarks/bench_gguf.py prints the full table).

    kernelgpt fetch smollm2; pip install gguf
    flock .bench.lock python -m pytest benchmarks/test_bench_gguf.py --benchmark-only
"""
import pytest

from bench_gguf import open_close
from kernelgpt.io import fetch


@pytest.fixture(scope="module")
def path():
    p = fetch.cached("smollm2")
    if p is None:
        pytest.skip("run `kernelgpt fetch smollm2`")
    return str(p)


@pytest.mark.benchmark(group="GGUF open SmolLM2-135M")
def test_open_kernelgpt(benchmark, path):
    benchmark(open_close, path)


@pytest.mark.benchmark(group="GGUF open SmolLM2-135M")
def test_open_gguf_package(benchmark, path):
    gguf = pytest.importorskip("gguf")
    benchmark.pedantic(gguf.GGUFReader, args=(path,), rounds=3, iterations=1)
