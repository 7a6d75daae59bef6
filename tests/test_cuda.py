"""CUDA kernels on CuPy arrays against the numpy reference (skipped without a GPU)."""
import numpy as np
import pytest

from kernelgpt import _cuda, ops
from conftest import randn

pytestmark = pytest.mark.gpu

if not _cuda.available():
    pytest.skip("needs a CUDA build of kernelgpt, CuPy and an NVIDIA GPU", allow_module_level=True)

import cupy as cp  # noqa: E402


@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (7, 13, 5), (64, 64, 64), (129, 257, 65)])
@pytest.mark.parametrize("ta,tb", [(False, False), (True, True), (False, True)])
@pytest.mark.parametrize("backend", ["naive", "auto"])
def test_cuda_matmul(rng, m, k, n, ta, tb, backend):
    a = randn(rng, *((k, m) if ta else (m, k)))
    b = randn(rng, *((n, k) if tb else (k, n)))
    bias = randn(rng, n)
    c = ops.matmul(cp.asarray(a), cp.asarray(b), cp.asarray(bias), trans_a=ta, trans_b=tb,
                   backend=backend)
    assert isinstance(c, cp.ndarray)
    ref = ops.matmul(a, b, bias, trans_a=ta, trans_b=tb, backend="numpy")
    np.testing.assert_allclose(cp.asnumpy(c), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_cuda_mixed_devices_rejected(rng):
    with pytest.raises(TypeError, match="CuPy"):
        ops.matmul(cp.asarray(randn(rng, 3, 4)), randn(rng, 4, 5))


@pytest.mark.parametrize("rows,cols", [(1, 1), (5, 33), (64, 1000), (3, 50257)])
@pytest.mark.parametrize("backend", ["naive", "auto"])
def test_cuda_softmax(rng, rows, cols, backend):
    x = randn(rng, rows, cols, scale=3.0)
    y = _cuda.softmax(cp.asarray(x), backend=backend)
    e = np.exp(x - x.max(-1, keepdims=True))
    np.testing.assert_allclose(cp.asnumpy(y), e / e.sum(-1, keepdims=True), rtol=1e-5, atol=1e-7)
