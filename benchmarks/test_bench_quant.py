"""pytest-benchmark: quantized matmuls at SmolLM2-135M's shapes (benchmarks/bench_quant.py's
SHAPES and weights), numpy (dequantize + matmul) vs kernelgpt's versions (2 threads).

    flock .bench.lock python -m pytest -q benchmarks/test_bench_quant.py --benchmark-group-by=group

The plain script benchmarks/bench_quant.py adds GB/s, the DRAM sweep over a whole model and
the prefill tokens/s.
"""
import numpy as np
import pytest

from bench_quant import SHAPES, quantized
from kernelgpt import ops, reference


@pytest.fixture(scope="module", params=SHAPES, ids=[s[0] for s in SHAPES])
def weights(request):
    name, n, k, qtype = request.param
    return name, n, k, qtype, quantized(np.random.default_rng(0), n, k, qtype)


@pytest.mark.parametrize("M", [1, 128])
@pytest.mark.parametrize("impl", ["numpy", "auto", "fused", "tiled", "vnni"])
def test_quant_matmul(benchmark, weights, M, impl):
    name, n, k, qtype, raw = weights
    benchmark.group = f"quant_matmul {name} {k}->{n} {qtype}, M = {M}"
    x = np.random.default_rng(1).standard_normal((M, k), dtype=np.float32)
    if impl == "numpy":
        benchmark(reference.quant_matmul, x, raw, qtype, n)
    else:
        y = np.empty((M, n), np.float32)
        benchmark(lambda: ops.quant_matmul(x, raw, qtype, n, out=y, backend=impl))


@pytest.mark.parametrize("impl", ["numpy", "kernelgpt"])
def test_dequantize(benchmark, weights, impl):
    name, n, k, qtype, raw = weights
    benchmark.group = f"dequantize {name} {k}->{n} {qtype}"
    if impl == "numpy":
        benchmark(reference.dequantize, raw, qtype, (n, k))
    else:
        out = np.empty((n, k), np.float32)
        benchmark(lambda: ops.dequantize(raw, qtype, (n, k), out=out))
