import numpy as np
import pytest

from kernelgpt import _C, ops
from kernelgpt.kernels import matmul as matmul_family
from conftest import randn

SHAPES = [  # (M, K, N): ones, odd, primes, tile edges, large
    (1, 1, 1), (1, 7, 5), (3, 17, 33), (8, 48, 48), (9, 49, 47), (13, 384, 97),
    (31, 385, 61), (64, 64, 64), (101, 211, 127), (128, 576, 1536), (2, 1000, 999),
    (4, 777, 1031), (5, 64, 3),
]


def ref64(a, b, bias, ta, tb):
    A = np.swapaxes(a, -1, -2) if ta else a
    B = np.swapaxes(b, -1, -2) if tb else b
    c = A.astype(np.float64) @ B.astype(np.float64)
    scale = np.abs(A.astype(np.float64)) @ np.abs(B.astype(np.float64))
    if bias is not None:
        c = c + bias
        scale = scale + np.abs(bias)
    return c, scale


def check(c, a, b, bias=None, ta=False, tb=False, base=None):
    expected, scale = ref64(a, b, bias, ta, tb)
    if base is not None:
        expected = expected + base
        scale = scale + np.abs(base)
    assert c.dtype == np.float32 and c.shape == expected.shape
    assert not np.isnan(c).any()
    err = np.abs(c - expected)
    assert (err <= 1e-4 * scale + 1e-30).all(), f"max rel err {(err / scale).max():.3g}"


@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("ta,tb", [(False, False), (False, True), (True, False), (True, True)])
@pytest.mark.parametrize("backend", ["auto", "naive"])
def test_matmul_2d(rng, isa, m, k, n, ta, tb, backend):
    if backend == "naive" and m * n * k > 2e7:
        pytest.skip("naive is slow")
    a = randn(rng, *((k, m) if ta else (m, k)))
    b = randn(rng, *((n, k) if tb else (k, n)))
    check(ops.matmul(a, b, trans_a=ta, trans_b=tb, backend=backend), a, b, None, ta, tb)


@pytest.mark.parametrize("m,k,n", [(1, 5, 7), (17, 33, 65), (64, 300, 100), (3, 1024, 4)])
def test_matmul_bias_out_accumulate(rng, isa, m, k, n):
    a, b, bias = randn(rng, m, k), randn(rng, n, k), randn(rng, n)
    out = np.empty((m, n), np.float32)
    r = ops.matmul(a, b, bias, trans_b=True, out=out)
    assert r is out or np.shares_memory(r, out)
    check(out, a, b, bias, tb=True)
    base = randn(rng, m, n)
    acc = base.copy()
    ops.matmul(a, b, trans_b=True, out=acc, accumulate=True)
    check(acc, a, b, None, tb=True, base=base)


@pytest.mark.parametrize("bsz,m,k,n", [(1, 3, 4, 5), (12, 64, 64, 64), (3, 17, 31, 29), (2, 130, 70, 50)])
def test_matmul_batched(rng, isa, bsz, m, k, n):
    a, b = randn(rng, bsz, m, k), randn(rng, bsz, k, n)
    check(ops.matmul(a, b), a, b)
    w = randn(rng, k, n)  # one weight for every batch entry
    check(ops.matmul(a, w), a, w)
    bt = randn(rng, bsz, n, k)
    check(ops.matmul(a, bt, trans_b=True), a, bt, tb=True)
    at = randn(rng, bsz, k, m)
    check(ops.matmul(at, b, trans_a=True), at, b, ta=True)


def test_matmul_large(rng):
    a, b = randn(rng, 300, 2049), randn(rng, 2049, 259)
    check(ops.matmul(a, b), a, b)


def test_matmul_matches_numpy_backend(rng):
    a, b, bias = randn(rng, 7, 11), randn(rng, 11, 13), randn(rng, 13)
    np.testing.assert_allclose(ops.matmul(a, b, bias), ops.matmul(a, b, bias, backend="numpy"),
                               rtol=1e-5, atol=1e-5)


def test_matmul_threads_deterministic(rng):
    import kernelgpt
    a, b = randn(rng, 200, 300), randn(rng, 300, 400)
    c1 = ops.matmul(a, b)
    c2 = ops.matmul(a, b)
    assert np.array_equal(c1, c2)
    n = kernelgpt.get_num_threads()
    try:
        kernelgpt.set_num_threads(1)
        c3 = ops.matmul(a, b)
    finally:
        kernelgpt.set_num_threads(n)
    check(c3, a, b)


def test_matmul_nan_inf_propagate(rng):
    a, b = randn(rng, 20, 30), randn(rng, 30, 40)
    a[3, 5] = np.nan
    b[7, 9] = np.inf
    c = ops.matmul(a, b)
    assert np.isnan(c[3]).all()
    assert not np.isnan(np.delete(c, 3, axis=0)[:, np.arange(40) != 9]).any()


# ---- bad input ----------------------------------------------------------------------------

def test_matmul_bad_dtype(rng):
    a = rng.standard_normal((3, 4))  # float64
    with pytest.raises(TypeError, match="a must be float32"):
        ops.matmul(a, randn(rng, 4, 5))
    with pytest.raises(TypeError, match="numpy array"):
        ops.matmul([[1.0]], randn(rng, 1, 1))
    with pytest.raises(TypeError, match="None"):
        ops.matmul(None, randn(rng, 1, 1))


def test_matmul_bad_shapes(rng):
    with pytest.raises(ValueError, match="inner dimensions"):
        ops.matmul(randn(rng, 3, 4), randn(rng, 5, 6))
    with pytest.raises(ValueError, match="2-D or 3-D"):
        ops.matmul(randn(rng, 3), randn(rng, 3, 2))
    with pytest.raises(ValueError, match="batch sizes differ"):
        ops.matmul(randn(rng, 2, 3, 4), randn(rng, 3, 4, 5))
    with pytest.raises(ValueError, match="bias"):
        ops.matmul(randn(rng, 3, 4), randn(rng, 4, 5), randn(rng, 4))
    with pytest.raises(ValueError, match="zero-size"):
        ops.matmul(np.zeros((0, 4), np.float32), randn(rng, 4, 5))
    with pytest.raises(ValueError, match="out has shape"):
        ops.matmul(randn(rng, 3, 4), randn(rng, 4, 5), out=np.empty((3, 4), np.float32))


def test_matmul_non_contiguous_and_aliasing(rng):
    a = randn(rng, 8, 8)
    with pytest.raises(ValueError, match="C-contiguous"):
        ops.matmul(a.T, a)
    with pytest.raises(ValueError, match="C-contiguous"):
        ops.matmul(a[:, ::2], randn(rng, 4, 3))
    with pytest.raises(ValueError, match="overlap"):
        ops.matmul(a, a.copy(), out=a)
    ro = np.empty((8, 8), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        ops.matmul(a, a.copy(), out=ro)
    with pytest.raises(ValueError, match="accumulate"):
        ops.matmul(a, a.copy(), accumulate=True)
    with pytest.raises(ValueError, match="unknown version"):
        ops.matmul(a, a.copy(), backend="bogus")


def test_binding_takes_the_family_version_numbers(rng):
    """kernelgpt._C.matmul takes the numbers of kernels/matmul.py's table: 1 naive, 5 blocked."""
    a, b = randn(rng, 9, 13), randn(rng, 13, 7)
    assert matmul_family.VERSIONS.numbers("cpu") == [1, 5]
    for version in (1, 5):
        check(_C.matmul(a, b, version=version), a, b)
    for bad in (0, 2, 3, 7):  # 0: no version; 2..4, 6, 7: CUDA only
        with pytest.raises(ValueError, match=rf"matmul: unknown version {bad} for the C\+\+ "
                                             r"kernel, expected one of 1 \(naive\), 5 \(blocked\)"):
            _C.matmul(a, b, version=bad)
    with pytest.raises(TypeError):
        _C.matmul(a, b, version="blocked")  # names are for backend=, the binding takes numbers


# ---- lowrank_add: base + B @ A for a small inner dimension (LoRA's merged weight) ----------

@pytest.mark.parametrize("m, n, r", [(1, 1, 1), (1, 17, 2), (7, 13, 3), (31, 577, 8),
                                     (3072, 576, 8), (576, 1536, 16), (5, 100_003, 2),
                                     (2, 31, 64)])
@pytest.mark.parametrize("backend", ["auto", "numpy"])
def test_lowrank_add(rng, isa, m, n, r, backend):
    base, b, a = randn(rng, m, n, scale=2.0), randn(rng, m, r, scale=0.1), randn(rng, r, n)
    out = ops.lowrank_add(base, b, a, backend=backend)
    check(out, b, a, base=base)
    buf = np.full((m, n), np.nan, np.float32)
    assert ops.lowrank_add(base, b, a, out=buf, backend=backend) is buf
    np.testing.assert_array_equal(buf, out)


def test_lowrank_add_threads_deterministic(rng):
    import kernelgpt
    base, b, a = randn(rng, 999, 577), randn(rng, 999, 8), randn(rng, 8, 577)
    before = kernelgpt.get_num_threads()
    try:
        kernelgpt.set_num_threads(1)
        one = ops.lowrank_add(base, b, a)
        kernelgpt.set_num_threads(2)
        np.testing.assert_array_equal(ops.lowrank_add(base, b, a), one)
    finally:
        kernelgpt.set_num_threads(before)


def test_lowrank_add_bad_input(rng):
    base, b, a = randn(rng, 6, 10), randn(rng, 6, 3), randn(rng, 3, 10)
    with pytest.raises(ValueError, match="b has shape"):
        ops.lowrank_add(base, randn(rng, 5, 3), a)
    with pytest.raises(ValueError, match="a has shape"):
        ops.lowrank_add(base, b, randn(rng, 4, 10))
    with pytest.raises(TypeError, match="base must be float32"):
        ops.lowrank_add(base.astype(np.float64), b, a)
    with pytest.raises(ValueError, match="C-contiguous"):
        ops.lowrank_add(randn(rng, 10, 6).T, b, a)
    with pytest.raises(ValueError, match="overlap"):
        ops.lowrank_add(base, b, a, out=base)
    with pytest.raises(ValueError, match="out has shape"):
        ops.lowrank_add(base, b, a, out=np.empty((6, 9), np.float32))
