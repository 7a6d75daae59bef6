"""pytest-benchmark: embedding forward / backward, numpy vs kernelgpt (2 threads).

    flock /work/main/.bench.lock env PYTHONPATH=python python3 -m pytest -q \\
        benchmarks/test_bench_embedding.py --benchmark-group-by=group
"""
import numpy as np
import pytest

import kernelgpt
from kernelgpt import ops, reference

V, C, N = 50257, 768, 8192  # GPT-2 small token table, 8 x 1024 tokens


@pytest.fixture(scope="module")
def data():
    kernelgpt.set_num_threads(2)
    rng = np.random.default_rng(0)
    return dict(table=rng.standard_normal((V, C), dtype=np.float32),
                ids=rng.integers(0, V, size=N),
                dout=rng.standard_normal((N, C), dtype=np.float32),
                out=np.empty((N, C), np.float32), dtable=np.empty((V, C), np.float32))


@pytest.mark.benchmark(group="embedding forward [50257, 768] x 8192 ids")
@pytest.mark.parametrize("impl", ["numpy", "kernelgpt"])
def test_embedding_forward(benchmark, data, impl):
    d = data
    if impl == "numpy":
        benchmark(lambda: np.take(d["table"], d["ids"], axis=0, out=d["out"]))
    else:
        benchmark(lambda: ops.embedding(d["ids"], d["table"], out=d["out"]))


@pytest.mark.benchmark(group="embedding backward [50257, 768] x 8192 ids")
@pytest.mark.parametrize("impl", ["numpy", "kernelgpt"])
def test_embedding_backward(benchmark, data, impl):
    d = data
    if impl == "numpy":
        benchmark(lambda: reference.embedding_backward(d["dout"], d["ids"], V))
    else:
        benchmark(lambda: ops.embedding_backward(d["dout"], d["ids"], V, out=d["dtable"]))
