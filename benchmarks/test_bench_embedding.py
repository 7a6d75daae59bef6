"""pytest-benchmark: embedding forward / backward, numpy vs kernelgpt vs PyTorch (2 threads),
the cases of benchmarks/bench_embedding.py (GPT-2 small's token table, 8 x 1024 ids).

    flock .bench.lock python -m pytest -q benchmarks/test_bench_embedding.py \
        --benchmark-group-by=group
"""
import numpy as np
import pytest

from bench_embedding import CASES, backward_impls, forward_impls, inputs
from conftest import torch_if

NAME, V, C, B, T = CASES[0]
FORWARD = {"numpy": "numpy take out=", "kernelgpt": "kernelgpt fast out=",
           "torch": "torch F.embedding"}
BACKWARD = {"numpy": "numpy", "kernelgpt": "kernelgpt fast out=",
            "torch": "torch zeros + index_add_"}


@pytest.fixture(scope="module")
def data():
    return inputs(np.random.default_rng(0), NAME, V, C, B, T)


@pytest.mark.benchmark(group=f"embedding forward [{V}, {C}] x {B * T} ids")
@pytest.mark.parametrize("impl", list(FORWARD))
def test_embedding_forward(benchmark, data, impl):
    table, ids, _ = data
    benchmark(dict(forward_impls(table, ids, torch_if(impl), naive=False)[0])[FORWARD[impl]])


@pytest.mark.benchmark(group=f"embedding backward [{V}, {C}] x {B * T} ids")
@pytest.mark.parametrize("impl", list(BACKWARD))
def test_embedding_backward(benchmark, data, impl):
    _, ids, dout = data
    benchmark(dict(backward_impls(dout, ids, V, torch_if(impl), naive=False)[0])[BACKWARD[impl]])
