import numpy as np
import pytest

import kernelgpt
from kernelgpt import ops, reference
from conftest import assert_close, finite_difference, randn

# (ids shape, V, C): ones, odd, primes, not multiples of 16, large
CASES = [
    ((1,), 1, 1), ((7,), 5, 3), ((3, 5), 50, 17), ((2, 3, 4), 11, 16), ((13,), 97, 33),
    ((4, 64), 1000, 768), ((8, 129), 5003, 100), ((2, 1, 3), 3, 257), ((), 9, 5),
    ((1023,), 31, 1), ((2, 65), 2000, 1024),  # (the last: few ids, large table, 2 threads)
]
BACKENDS = ["auto", "naive"]


def random_ids(rng, shape, V, dtype=np.int64):
    return rng.integers(0, V, size=shape).astype(dtype)


# ---- forward ------------------------------------------------------------------------------

@pytest.mark.parametrize("shape,V,C", CASES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_embedding_forward(rng, isa, shape, V, C, backend):
    ids, table = random_ids(rng, shape, V), randn(rng, V, C)
    out = ops.embedding(ids, table, backend=backend)
    assert out.dtype == np.float32 and out.shape == tuple(shape) + (C,)
    np.testing.assert_array_equal(out, reference.embedding(ids, table))  # a copy: exact


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.int32, np.uint32, np.int64, np.uint64])
def test_embedding_id_dtypes(rng, dtype):
    ids, table = random_ids(rng, (5, 7), 100, dtype), randn(rng, 100, 19)
    np.testing.assert_array_equal(ops.embedding(ids, table), table[ids.astype(np.int64)])
    # non-contiguous ids are fine too (they are copied to int64 anyway)
    ids2 = random_ids(rng, (6, 8), 100, dtype)[:, ::2]
    np.testing.assert_array_equal(ops.embedding(ids2, table), table[ids2.astype(np.int64)])


def test_embedding_out_and_numpy_backend(rng):
    ids, table = random_ids(rng, (4, 9), 30), randn(rng, 30, 21)
    out = np.full((4, 9, 21), np.nan, np.float32)
    r = ops.embedding(ids, table, out=out)
    assert r is out or np.shares_memory(r, out)
    np.testing.assert_array_equal(out, table[ids])
    np.testing.assert_array_equal(ops.embedding(ids, table, backend="numpy"), table[ids])


def test_embedding_nan_inf_copied(rng):
    table = randn(rng, 6, 5)
    table[2, 1], table[3, 4] = np.nan, -np.inf
    ids = np.array([2, 3, 0, 2])
    out = ops.embedding(ids, table)
    np.testing.assert_array_equal(out, table[ids])  # NaN == NaN for assert_array_equal


# ---- backward -----------------------------------------------------------------------------

def backward_ref64(dout, ids, V):
    return reference.embedding_backward(dout.astype(np.float64), ids, V)


@pytest.mark.parametrize("shape,V,C", CASES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_embedding_backward(rng, isa, shape, V, C, backend):
    ids, dout = random_ids(rng, shape, V), randn(rng, *shape, C)
    dtable = ops.embedding_backward(dout, ids, V, backend=backend)
    assert dtable.dtype == np.float32 and dtable.shape == (V, C)
    expected = backward_ref64(dout, ids, V)
    scale = reference.embedding_backward(np.abs(dout).astype(np.float64), ids, V)
    assert (np.abs(dtable - expected) <= 1e-5 * scale + 1e-30).all()


def test_embedding_backward_repeated_ids(rng, isa):
    # many repeats of few rows: the scatter must add all of them, in a fixed order
    V, C = 7, 45
    ids = random_ids(rng, (3000,), 3)
    dout = randn(rng, 3000, C)
    fast = ops.embedding_backward(dout, ids, V)
    naive = ops.embedding_backward(dout, ids, V, backend="naive")
    np.testing.assert_array_equal(fast, naive)  # same additions in the same order
    expected = backward_ref64(dout, ids, V)
    scale = reference.embedding_backward(np.abs(dout).astype(np.float64), ids, V)
    assert (np.abs(fast - expected) <= 1e-4 * scale).all()
    assert (fast[3:] == 0).all()
    # one id only: all rows go to one thread's range
    ids = np.full(5000, 4)
    dout = randn(rng, 5000, C)
    np.testing.assert_array_equal(ops.embedding_backward(dout, ids, V),
                                  ops.embedding_backward(dout, ids, V, backend="naive"))


def test_embedding_backward_deterministic_across_threads(rng):
    V, C = 500, 300
    ids, dout = random_ids(rng, (4, 700), V), randn(rng, 4, 700, C)
    a = ops.embedding_backward(dout, ids, V)
    b = ops.embedding_backward(dout, ids, V)
    n = kernelgpt.get_num_threads()
    try:
        kernelgpt.set_num_threads(1)
        c = ops.embedding_backward(dout, ids, V)
    finally:
        kernelgpt.set_num_threads(n)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)  # column split: bit-identical for any thread count


@pytest.mark.parametrize("backend", BACKENDS)
def test_embedding_backward_out_accumulate(rng, isa, backend):
    V, C = 40, 23
    ids, dout = random_ids(rng, (5, 6), V), randn(rng, 5, 6, C)
    out = np.full((V, C), np.nan, np.float32)  # garbage: must be overwritten without accumulate
    r = ops.embedding_backward(dout, ids, V, out=out, backend=backend)
    assert r is out or np.shares_memory(r, out)
    assert_close(out, backward_ref64(dout, ids, V), what="out=")
    base = randn(rng, V, C)
    acc = base.copy()
    ops.embedding_backward(dout, ids, V, out=acc, accumulate=True, backend=backend)
    assert_close(acc, base + backward_ref64(dout, ids, V), what="accumulate")
    ref_acc = base.copy()
    ops.embedding_backward(dout, ids, V, out=ref_acc, accumulate=True, backend="numpy")
    assert_close(acc, ref_acc, what="numpy accumulate")


@pytest.mark.parametrize("backend", BACKENDS)
def test_embedding_backward_finite_differences(rng, backend):
    V, C = 6, 5
    ids = np.array([[1, 4, 1], [0, 1, 5]])
    table = rng.standard_normal((V, C))
    w = rng.standard_normal((2, 3, C))  # loss = sum(w * embedding(ids, table))
    fd = finite_difference(lambda t: float((w * reference.embedding(ids, t)).sum()), table)
    grad = ops.embedding_backward(w.astype(np.float32), ids, V, backend=backend)
    assert (np.abs(grad - fd) <= 1e-3 * np.abs(fd).max() + 1e-4).all()


def test_embedding_backward_nan_inf(rng):
    V, C = 5, 4
    ids = np.array([0, 2, 2])
    dout = randn(rng, 3, C)
    dout[1, 3] = np.inf
    dout[2, 0] = np.nan
    g = ops.embedding_backward(dout, ids, V)
    assert np.isnan(g[2, 0]) and np.isinf(g[2, 3])
    assert np.isfinite(np.delete(g, 2, axis=0)).all()


# ---- bad input ------------------------------------------------------------------------------

def test_embedding_bad_input(rng):
    table = randn(rng, 10, 4)
    with pytest.raises(TypeError, match="ids must be an integer array"):
        ops.embedding(np.array([1.0, 2.0]), table)
    with pytest.raises(TypeError, match="numpy array"):
        ops.embedding([1, 2], table)
    with pytest.raises(TypeError, match="table must be float32"):
        ops.embedding(np.array([1]), table.astype(np.float64))
    with pytest.raises(ValueError, match=r"ids\[2\] = 10 is out of range \[0, 10\)"):
        ops.embedding(np.array([0, 9, 10]), table)
    with pytest.raises(ValueError, match=r"ids\[1\] = -1 is out of range"):
        ops.embedding(np.array([3, -1]), table)
    with pytest.raises(ValueError, match="table must be 2-D"):
        ops.embedding(np.array([1]), randn(rng, 10))
    with pytest.raises(ValueError, match="C-contiguous"):
        ops.embedding(np.array([1]), randn(rng, 4, 10).T)
    with pytest.raises(ValueError, match="zero-size"):
        ops.embedding(np.zeros((0,), np.int64), table)
    with pytest.raises(ValueError, match="zero-size"):
        ops.embedding(np.array([0]), np.zeros((0, 4), np.float32))
    with pytest.raises(ValueError, match="out has shape"):
        ops.embedding(np.array([1, 2]), table, out=np.empty((2, 5), np.float32))
    with pytest.raises(ValueError, match="overlap"):
        ops.embedding(np.array([1, 2]), table, out=table[:2])
    with pytest.raises(ValueError, match="unknown version"):
        ops.embedding(np.array([1]), table, backend="bogus")


def test_embedding_backward_bad_input(rng):
    dout = randn(rng, 3, 4)
    ids = np.array([0, 1, 2])
    with pytest.raises(ValueError, match=r"dout has shape \(3, 4\), expected ids.shape \+ \(C,\) = \(2, 4\)"):
        ops.embedding_backward(dout, ids[:2], 5)
    with pytest.raises(ValueError, match="0-D"):
        ops.embedding_backward(np.ones((), np.float32), np.array(1), 5)
    with pytest.raises(ValueError, match=r"ids\[2\] = 2 is out of range \[0, 2\)"):
        ops.embedding_backward(dout, ids, 2)
    with pytest.raises(ValueError, match="num_embeddings must be >= 1"):
        ops.embedding_backward(dout, ids, 0)
    with pytest.raises(TypeError, match="num_embeddings must be an int"):
        ops.embedding_backward(dout, ids, 5.0)
    with pytest.raises(TypeError, match="dout must be float32"):
        ops.embedding_backward(dout.astype(np.float64), ids, 5)
    with pytest.raises(ValueError, match="accumulate=True needs out="):
        ops.embedding_backward(dout, ids, 5, accumulate=True)
    with pytest.raises(ValueError, match="out has shape"):
        ops.embedding_backward(dout, ids, 5, out=np.zeros((4, 4), np.float32))
    big = randn(rng, 5, 4)
    with pytest.raises(ValueError, match="overlap"):
        ops.embedding_backward(big[:3], ids, 5, out=big)
    ro = np.zeros((5, 4), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        ops.embedding_backward(dout, ids, 5, out=ro)


# ---- property-based: random shapes, skewed ids ---------------------------------------------

from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=60, deadline=None)
@given(V=st.integers(1, 60), C=st.integers(1, 70), n=st.integers(1, 3000),
       skew=st.floats(0.0, 3.0), accumulate=st.booleans(), seed=st.integers(0, 2**31))
def test_embedding_backward_property(V, C, n, skew, accumulate, seed):
    rng = np.random.default_rng(seed)
    weights = np.arange(1, V + 1, dtype=np.float64) ** -skew  # Zipf-like id frequencies
    ids = rng.choice(V, size=n, p=weights / weights.sum())
    dout = randn(rng, n, C)
    base = randn(rng, V, C)
    fast, naive = base.copy(), base.copy()
    ops.embedding_backward(dout, ids, V, out=fast, accumulate=accumulate)
    ops.embedding_backward(dout, ids, V, out=naive, accumulate=accumulate, backend="naive")
    np.testing.assert_array_equal(fast, naive)
    expected = backward_ref64(dout, ids, V) + (base if accumulate else 0)
    scale = reference.embedding_backward(np.abs(dout).astype(np.float64), ids, V) + \
        (np.abs(base) if accumulate else 0)
    assert (np.abs(fast - expected) <= 1e-4 * scale + 1e-30).all()
    np.testing.assert_array_equal(ops.embedding(ids, base), base[ids])
