import numpy as np
import pytest

import kernelgpt
from kernelgpt import ops, reference
from conftest import assert_close, finite_difference, randn

BACKENDS = ["auto", "naive", "online"]
BACKWARD_BACKENDS = ["auto", "naive", "fused"]

SHAPES = [  # [..., S]: ones, odd, primes, vector-width edges (16, 64), long rows, batches
    (1,), (1, 1), (7,), (3, 5), (4, 17), (2, 16), (3, 64), (13, 31), (5, 65), (2, 3, 97),
    (5, 257), (2, 1000), (3, 4097), (1, 50257), (67, 129), (2, 2, 7, 11),
]
CAUSAL_SHAPES = [  # [..., T, S] with T <= S
    (1, 1), (5, 5), (3, 7), (2, 4, 9), (1, 17), (33, 65), (2, 3, 16, 16), (2, 17, 40),
    (7, 100), (3, 2, 64, 67), (1, 1, 3),
]
SCALES = [1.0, 0.125, -0.7, 3.0]


def ref64(x, scale=1.0, causal=False, log=False):
    f = reference.log_softmax if log else reference.softmax
    return f(x.astype(np.float64), scale=scale, causal=causal)


def check_forward(y, x, scale, causal, log):
    expected = ref64(x, scale, causal, log)
    assert y.dtype == np.float32 and y.shape == x.shape
    if causal:  # masked entries are exact
        mask = np.broadcast_to(reference.causal_mask(*x.shape[-2:]), x.shape)
        assert (y[~mask] == (-np.inf if log else 0.0)).all()
        y, expected = np.where(mask, y, 0), np.where(mask, expected, 0)
    # log-softmax: y = scale*x - logsumexp, so its error scale is that of scale*x (the float32
    # rounding of scale*x alone is ~6e-8 |scale*x|), not |y|, which cancels to ~0 at the max
    finite = np.isfinite(x)
    atol = 1e-6 * max(float(np.abs(scale * x[finite]).max(initial=0.0)), 1.0) if log else None
    assert_close(y, expected, rtol=1e-5, atol=atol, what="log_softmax" if log else "softmax")


# ---- forward --------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("log", [False, True])
def test_softmax_matches_reference(rng, isa, shape, backend, log):
    x = randn(rng, *shape, scale=3.0)
    fn = ops.log_softmax if log else ops.softmax
    check_forward(fn(x, backend=backend), x, 1.0, False, log)


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("log", [False, True])
def test_softmax_scale(rng, isa, scale, backend, log):
    x = randn(rng, 6, 83, scale=2.0)
    fn = ops.log_softmax if log else ops.softmax
    check_forward(fn(x, scale=scale, backend=backend), x, scale, False, log)


@pytest.mark.parametrize("shape", CAUSAL_SHAPES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("log", [False, True])
def test_softmax_causal(rng, isa, shape, backend, log):
    x = randn(rng, *shape, scale=2.0)
    fn = ops.log_softmax if log else ops.softmax
    check_forward(fn(x, scale=0.3, causal=True, backend=backend), x, 0.3, True, log)


@pytest.mark.parametrize("backend", BACKENDS)
def test_softmax_max_anywhere(rng, isa, backend):
    # The online pass rescales its running sums whenever the max grows: put the max first,
    # last (in the tail after the last full block), and make it grow on every element.
    lengths = list(range(1, 140)) + [255, 256, 257, 1023, 1024, 1025, 1040, 2047, 2049, 4111]
    for n in lengths:
        base = randn(rng, n)
        rows = [np.sort(base), np.sort(base)[::-1], base.copy(), base.copy()]
        rows[2][-1] = 9.0
        rows[3][n // 2] = -9.0
        x = np.stack(rows) * np.float32(4.0)
        for log in (False, True):
            fn = ops.log_softmax if log else ops.softmax
            check_forward(fn(x, backend=backend), x, 1.0, False, log)


def test_softmax_causal_is_bottom_right_aligned(rng):
    x = randn(rng, 2, 5)  # T = 2, S = 5: row 0 keeps columns 0..3, row 1 keeps 0..4
    y = ops.softmax(x, causal=True)
    assert y[0, 4] == 0.0 and (y[0, :4] > 0).all() and (y[1] > 0).all()
    assert_close(y[0, :4], ref64(x[0, :4]), what="row 0")


def test_softmax_long_row_accuracy(rng):
    # a 128k vocabulary row: the sums must stay within 1e-4 of float64
    x = randn(rng, 2, 131072, scale=4.0)
    dy = randn(rng, 2, 131072)
    for backend in ("naive", "online"):
        y = ops.softmax(x, backend=backend)
        assert_close(y, ref64(x), rtol=1e-4, what=backend)
        ly = ops.log_softmax(x, backend=backend)
        check_forward(ly, x, 1.0, False, True)
    for backend in ("naive", "fused"):
        check_backward(ops.softmax_backward(dy, y, backend=backend), dy, y, 1.0, False)
        check_backward(ops.log_softmax_backward(dy, ly, backend=backend), dy, ly, 1.0, True)


@pytest.mark.parametrize("shape", [(2, 262145), (9, 131072)])
def test_softmax_second_pass_recomputes(rng, isa, shape):
    # rows over 256K values, or inputs over 8 MiB: the second pass recomputes the exps
    # instead of keeping them (and nothing streams yet)
    x = randn(rng, *shape, scale=3.0)
    x[0, -1] = 15.0  # the max in the last chunk
    for backend in ("naive", "online"):
        assert_close(ops.softmax(x, scale=1.1, backend=backend), ref64(x, 1.1), rtol=1e-5,
                     what=backend)


def test_softmax_large_values_are_stable(rng):
    x = randn(rng, 4, 300, scale=1e4)  # exp(x) alone would overflow
    x[1, 7] = 3e38
    x[2] = -3e38
    for backend in BACKENDS:
        y = ops.softmax(x, backend=backend)
        assert not np.isnan(y).any()
        assert_close(y, ref64(x), what=backend)
        assert_close(ops.log_softmax(x, backend=backend), ref64(x, log=True), what=backend)


def test_softmax_rows_sum_to_one(rng):
    x = randn(rng, 37, 1001, scale=5.0)
    for backend in BACKENDS:
        s = ops.softmax(x, backend=backend).astype(np.float64).sum(-1)
        assert np.abs(s - 1).max() < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_softmax_special_values(isa, backend):
    x = np.array([[1.0, 2.0, np.nan, 0.5] + [0.25] * 30,    # NaN -> NaN row
                  [1.0, np.inf, 0.0, 2.0] + [0.25] * 30,    # +inf -> NaN row (inf - inf)
                  [-np.inf, 1.0, -np.inf, 2.0] + [0.5] * 30,  # -inf -> probability 0
                  [-np.inf] * 34,                          # all -inf -> NaN (0/0), as PyTorch
                  [0.3, -0.1, 0.2, 0.0] + [0.1] * 30], np.float32)
    y = ops.softmax(x, backend=backend)
    ly = ops.log_softmax(x, backend=backend)
    assert np.isnan(y[0]).all() and np.isnan(ly[0]).all()
    assert np.isnan(y[1]).all() and np.isnan(ly[1]).all()
    assert y[2, 0] == 0 and y[2, 2] == 0 and ly[2, 0] == -np.inf and ly[2, 2] == -np.inf
    assert_close(y[2], ref64(x[2]), what="row with -inf")
    assert_close(ly[2, [1, 3]], ref64(x[2], log=True)[[1, 3]], what="log row with -inf")
    assert np.isnan(y[3]).all() and np.isnan(ly[3]).all()
    assert_close(y[4], ref64(x[4]), what="finite row")


def test_softmax_out_and_determinism(rng):
    x = randn(rng, 64, 777, scale=2.0)
    out = np.empty_like(x)
    r = ops.softmax(x, out=out)
    assert r is out or np.shares_memory(r, out)
    assert np.array_equal(ops.softmax(x), out)
    n = kernelgpt.get_num_threads()
    try:
        kernelgpt.set_num_threads(1)
        one = ops.softmax(x), ops.log_softmax(x, causal=True)
    finally:
        kernelgpt.set_num_threads(n)
    assert np.array_equal(one[0], out)  # each row is one thread's: any thread count agrees
    assert np.array_equal(one[1], ops.log_softmax(x, causal=True))


def test_softmax_numpy_backend(rng):
    x = randn(rng, 3, 4, 10)
    for log in (False, True):
        fn = ops.log_softmax if log else ops.softmax
        out = np.empty_like(x)
        fn(x, scale=0.5, causal=True, out=out, backend="numpy")
        np.testing.assert_allclose(out, fn(x, scale=0.5, causal=True), rtol=1e-5, atol=1e-6)


def test_softmax_hypothesis_shapes():
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies

    @hypothesis.settings(max_examples=60, deadline=None)
    @hypothesis.given(rows=st.integers(1, 9), t=st.integers(1, 40), extra=st.integers(0, 40),
                      scale=st.floats(-4, 4).filter(lambda s: abs(s) > 1e-3),
                      causal=st.booleans(), log=st.booleans(), seed=st.integers(0, 2**31))
    def run(rows, t, extra, scale, causal, log, seed):
        x = randn(np.random.default_rng(seed), rows, t, t + extra, scale=3.0)
        fn = ops.log_softmax if log else ops.softmax
        for backend in ("naive", "online"):
            check_forward(fn(x, scale=scale, causal=causal, backend=backend), x, scale, causal,
                          log)

    run()


# ---- backward -------------------------------------------------------------------------------

def check_backward(dx, dy, y, scale, log):
    dy64, y64 = dy.astype(np.float64), y.astype(np.float64)
    if log:
        expected = reference.log_softmax_backward(dy64, y64, scale=scale)
        keep = y64 != -np.inf
        total = np.where(keep, np.abs(dy64), 0).sum(-1, keepdims=True)
        bound = abs(scale) * (np.abs(dy64) + np.exp(y64) * total)
        bound = np.where(keep, bound, 0)
    else:
        expected = reference.softmax_backward(dy64, y64, scale=scale)
        total = np.abs(dy64 * y64).sum(-1, keepdims=True)
        bound = abs(scale) * np.abs(y64) * (np.abs(dy64) + total)
    assert dx.dtype == np.float32 and dx.shape == y.shape
    assert not np.isnan(dx).any()
    err = np.abs(dx - expected)
    assert (err <= 1e-5 * bound + 1e-30).all(), f"max err / bound {(err / (bound + 1e-30)).max()}"


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("backend", BACKWARD_BACKENDS)
@pytest.mark.parametrize("log", [False, True])
def test_softmax_backward_matches_reference(rng, isa, shape, backend, log):
    x, dy = randn(rng, *shape, scale=2.0), randn(rng, *shape)
    fwd, bwd = (ops.log_softmax, ops.log_softmax_backward) if log else (ops.softmax,
                                                                        ops.softmax_backward)
    y = fwd(x, scale=0.7)
    check_backward(bwd(dy, y, scale=0.7, backend=backend), dy, y, 0.7, log)


@pytest.mark.parametrize("shape", CAUSAL_SHAPES)
@pytest.mark.parametrize("backend", BACKWARD_BACKENDS)
@pytest.mark.parametrize("log", [False, True])
def test_softmax_backward_causal(rng, isa, shape, backend, log):
    x, dy = randn(rng, *shape), randn(rng, *shape)  # dy is nonzero at masked entries too
    fwd, bwd = (ops.log_softmax, ops.log_softmax_backward) if log else (ops.softmax,
                                                                        ops.softmax_backward)
    y = fwd(x, scale=-1.3, causal=True)
    dx = bwd(dy, y, scale=-1.3, backend=backend)
    mask = np.broadcast_to(reference.causal_mask(*shape[-2:]), shape)
    assert (dx[~mask] == 0).all()
    check_backward(dx, dy, y, -1.3, log)


@pytest.mark.parametrize("shape,causal", [((1, 1), False), ((3, 5), False), ((2, 17), False),
                                          ((4, 6), True), ((2, 3, 7), True)])
@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("backend", BACKWARD_BACKENDS)
def test_softmax_backward_finite_differences(rng, isa, shape, causal, log, backend):
    x, dy = randn(rng, *shape), randn(rng, *shape)
    scale = 0.8
    mask = np.broadcast_to(reference.causal_mask(*shape[-2:]), shape) if causal else True
    fwd, bwd = (ops.log_softmax, ops.log_softmax_backward) if log else (ops.softmax,
                                                                        ops.softmax_backward)

    def loss(x64):  # sum(dy * y) over the entries that are not masked, in float64
        y64 = (reference.log_softmax if log else reference.softmax)(x64, scale, causal)
        return np.where(mask, dy * y64, 0).sum()

    fd = finite_difference(loss, x.astype(np.float64), h=1e-4)
    dx = bwd(dy, fwd(x, scale=scale, causal=causal), scale=scale, backend=backend)
    assert np.abs(dx - fd).max() <= 1e-3 * np.abs(fd).max() + 1e-4


def test_softmax_backward_special_values(rng):
    dy = randn(rng, 3, 20)
    y = ops.softmax(randn(rng, 3, 20))
    y[1, 3] = np.nan
    for backend in BACKWARD_BACKENDS:
        dx = ops.softmax_backward(dy, y, backend=backend)
        assert np.isnan(dx[1]).all() and not np.isnan(dx[[0, 2]]).any()
    ly = ops.log_softmax(randn(rng, 3, 20))
    ly[0, :5] = -np.inf  # masked
    ly[2, 4] = np.nan
    for backend in BACKWARD_BACKENDS:
        dx = ops.log_softmax_backward(dy, ly, backend=backend)
        assert (dx[0, :5] == 0).all() and not np.isnan(dx[:2]).any()
        # the sum is over dy only: a NaN log-probability spoils just its own gradient entry,
        # as in the formula (and the reference)
        assert np.isnan(dx[2, 4]) and np.isnan(dx[2]).sum() == 1
        check_backward(dx[:2], dy[:2], ly[:2], 1.0, True)


def test_softmax_backward_out_and_numpy(rng):
    dy, y = randn(rng, 5, 40), ops.softmax(randn(rng, 5, 40))
    out = np.empty_like(y)
    r = ops.softmax_backward(dy, y, scale=2.0, out=out)
    assert r is out or np.shares_memory(r, out)
    np.testing.assert_allclose(out, ops.softmax_backward(dy, y, scale=2.0, backend="numpy"),
                               rtol=1e-5, atol=1e-6)
    ly = np.log(y)
    np.testing.assert_allclose(ops.log_softmax_backward(dy, ly),
                               ops.log_softmax_backward(dy, ly, backend="numpy"),
                               rtol=1e-5, atol=1e-6)


# ---- bad input ------------------------------------------------------------------------------

@pytest.mark.parametrize("fn", [ops.softmax, ops.log_softmax])
def test_softmax_bad_input(rng, fn):
    x = randn(rng, 4, 6)
    with pytest.raises(TypeError, match="x must be float32"):
        fn(x.astype(np.float64))
    with pytest.raises(TypeError, match="numpy array"):
        fn([[1.0, 2.0]])
    with pytest.raises(ValueError, match="at least 1 dimension"):
        fn(np.array(1.0, np.float32))
    with pytest.raises(ValueError, match="zero-size"):
        fn(np.zeros((3, 0), np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        fn(x.T)
    with pytest.raises(ValueError, match="C-contiguous"):
        fn(x[:, ::2])
    with pytest.raises(ValueError, match="S >= T"):
        fn(randn(rng, 6, 4), causal=True)
    with pytest.raises(ValueError, match="rank >= 2"):
        fn(randn(rng, 6), causal=True)
    with pytest.raises(ValueError, match="scale must be"):
        fn(x, scale=float("nan"))
    with pytest.raises(ValueError, match="scale must be"):
        fn(x, scale=float("inf"))
    with pytest.raises(ValueError, match="scale must be"):
        fn(x, scale=1e39)
    with pytest.raises(ValueError, match="out has shape"):
        fn(x, out=np.empty((4, 5), np.float32))
    with pytest.raises(TypeError, match="out must be float32"):
        fn(x, out=np.empty((4, 6), np.float64))
    with pytest.raises(ValueError, match="overlap"):
        fn(x, out=x)
    with pytest.raises(ValueError, match="overlap"):
        big = randn(rng, 8, 6)
        fn(big[:4], out=big[2:6])
    ro = np.empty_like(x)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        fn(x, out=ro)
    with pytest.raises(ValueError, match="unknown version"):
        fn(x, backend="bogus")
    with pytest.raises(ValueError, match="unknown version"):
        fn(x, backend="fused")  # a backward version name


@pytest.mark.parametrize("fn", [ops.softmax_backward, ops.log_softmax_backward])
def test_softmax_backward_bad_input(rng, fn):
    dy, y = randn(rng, 4, 6), randn(rng, 4, 6)
    with pytest.raises(TypeError, match="dy must be float32"):
        fn(dy.astype(np.float64), y)
    with pytest.raises(TypeError, match="y must be float32"):
        fn(dy, y.astype(np.float16))
    with pytest.raises(ValueError, match="dy has shape"):
        fn(randn(rng, 4, 5), y)
    with pytest.raises(ValueError, match="dy has shape"):
        fn(randn(rng, 24), y)
    with pytest.raises(ValueError, match="zero-size"):
        fn(np.zeros((0, 6), np.float32), np.zeros((0, 6), np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        fn(dy, np.asfortranarray(y))
    with pytest.raises(ValueError, match="overlap"):
        fn(dy, y, out=dy)
    with pytest.raises(ValueError, match="overlap"):
        fn(dy, y, out=y)
    with pytest.raises(ValueError, match="scale must be"):
        fn(dy, y, scale=float("nan"))
    with pytest.raises(ValueError, match="unknown version"):
        fn(dy, y, backend="online")  # a forward version name


@pytest.mark.parametrize("shape", [(1031, 8191), (8300, 1024), (33000, 257)])
def test_softmax_outputs_larger_than_the_caches(rng, isa, shape):
    # >= 32 MiB: streaming stores with recomputed exps (long rows), with kept exps (1024),
    # plain stores with kept exps (short rows); odd rows start at every alignment
    x = randn(rng, *shape, scale=2.0)
    y = ops.softmax(x, scale=0.9)
    assert_close(y, ref64(x, 0.9), what="softmax, streaming")
    xc = x if shape[0] <= shape[1] else x.reshape(-1, 4, shape[1])  # [..., T, S], T <= S
    check_forward(ops.log_softmax(xc, causal=True), xc, 1.0, True, True)
    dy = randn(rng, *shape)
    dx = ops.softmax_backward(dy, y, scale=0.9)
    check_backward(dx[::97], dy[::97], y[::97], 0.9, False)
