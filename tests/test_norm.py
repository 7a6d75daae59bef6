"""layernorm and rmsnorm, forward and backward: every version against the float64 numpy
reference (awkward shapes, every ISA), backward also against central finite differences,
dweight / dbias over 100k rows, statistics with large offsets and outliers, bad input."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import kernelgpt
from kernelgpt import _C, ops, reference
from conftest import assert_close, finite_difference, randn

SHAPES = [(1,), (5,), (1, 1), (3, 1), (2, 2), (7, 3), (4, 15), (5, 16), (6, 17), (3, 5, 31),
          (2, 63), (9, 64), (4, 65), (3, 127), (2, 3, 768), (5, 1031), (3, 4099), (2, 16387),
          (4100, 7), (513, 96)]
BACKENDS = ["auto", "naive"]


def f64(*arrays):
    return [None if a is None else np.asarray(a, np.float64) for a in arrays]


def within(actual, expected, scale, tol, what):
    """|actual - expected| <= tol * scale elementwise (scale: the size of the terms summed)."""
    actual = np.asarray(actual, np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert not np.isnan(actual).any(), f"{what}: NaN"
    err = np.abs(actual - expected)
    bound = tol * scale + 1e-30
    worst = np.unravel_index(np.argmax(err / bound), err.shape)
    assert (err <= bound).all(), (f"{what}: error {err[worst]:.3g} > {bound[worst]:.3g} at "
                                  f"{worst} (got {actual[worst]!r}, expected {expected[worst]!r})")


def ln_inputs(rng, shape, bias=True):
    C = shape[-1]
    x = randn(rng, *shape, scale=2.0) + np.float32(0.5)
    w = randn(rng, C) + np.float32(1.0)
    b = randn(rng, C) if bias else None
    return x, w, b


def check_layernorm(x, w, b, eps, y, mean, rstd, tol=1e-5):
    x64, w64, b64 = f64(x, w, b)
    ry, rmean, rrstd = reference.layernorm(x64, w64, b64, eps)
    xhat = (x64 - rmean[..., None]) * rrstd[..., None]
    row_scale = np.abs(xhat * w64).max(axis=-1, keepdims=True)  # the size of y's terms
    scale = row_scale + (0 if b is None else np.abs(b64))
    within(y, ry, np.broadcast_to(scale, ry.shape), tol, "layernorm y")
    within(mean, rmean, np.abs(x64).max(axis=-1), tol, "layernorm mean")
    within(rstd, rrstd, rrstd, tol, "layernorm rstd")


def check_rmsnorm(x, w, eps, y, rstd, tol=1e-5):
    x64, w64 = f64(x, w)
    ry, rrstd = reference.rmsnorm(x64, w64, eps)
    scale = np.abs(x64 * rrstd[..., None] * w64).max(axis=-1, keepdims=True)
    within(y, ry, np.broadcast_to(scale, ry.shape), tol, "rmsnorm y")
    within(rstd, rrstd, rrstd, tol, "rmsnorm rstd")


# ---- forward ------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_layernorm_forward(rng, isa, shape, backend, bias):
    x, w, b = ln_inputs(rng, shape, bias)
    y, mean, rstd = ops.layernorm(x, w, b, 1e-5, return_stats=True, backend=backend)
    assert y.dtype == mean.dtype == rstd.dtype == np.float32
    assert y.shape == x.shape and mean.shape == rstd.shape == x.shape[:-1]
    check_layernorm(x, w, b, 1e-5, y, mean, rstd)
    assert np.array_equal(ops.layernorm(x, w, b, backend=backend), y)  # stats or not: same y


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_rmsnorm_forward(rng, isa, shape, backend):
    x, w, _ = ln_inputs(rng, shape)
    y, rstd = ops.rmsnorm(x, w, 1e-6, return_stats=True, backend=backend)
    assert y.dtype == rstd.dtype == np.float32
    assert y.shape == x.shape and rstd.shape == x.shape[:-1]
    check_rmsnorm(x, w, 1e-6, y, rstd)
    assert np.array_equal(ops.rmsnorm(x, w, backend=backend), y)


@pytest.mark.parametrize("C", [17, 64, 1000, 4096, 16387])
@pytest.mark.parametrize("kind", ["offset1e3", "offset1e5", "outlier1e4", "outlier1e8", "tiny",
                                  "huge"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_layernorm_hard_statistics(rng, isa, C, kind, backend):
    """A large common offset must not cost precision (no sum(x^2) - sum(x)^2), nor an outlier
    in the first element (the fast kernel shifts by it); tiny and huge scales too."""
    x = randn(rng, 6, C)
    if kind == "offset1e3":
        x += np.float32(1e3)
    elif kind == "offset1e5":
        x += np.float32(1e5)
    elif kind == "outlier1e4":
        x[:, 0] = 1e4
    elif kind == "outlier1e8":
        x[:, 0] = 1e8
    elif kind == "tiny":
        x *= np.float32(1e-15)
    else:
        x *= np.float32(1e15)
    w, b = randn(rng, C), randn(rng, C)
    eps = 1e-5 if kind != "tiny" else 0.0
    y, mean, rstd = ops.layernorm(x, w, b, eps, return_stats=True, backend=backend)
    check_layernorm(x, w, b, eps, y, mean, rstd)
    # elementwise too: each y_j to 1e-5 of its own size (plus a hair of the row's)
    x64, w64, b64 = f64(x, w, b)
    ry, _, _ = reference.layernorm(x64, w64, b64, eps)
    assert_close(y - b, ry - b64, rtol=1e-5, atol=1e-6 * np.abs(ry - b64).max())


@pytest.mark.parametrize("backend", BACKENDS)
def test_rmsnorm_scales(rng, isa, backend):
    for scale in (1e-18, 1e-3, 1.0, 1e3, 1e17):
        x = randn(rng, 5, 333) * np.float32(scale)
        w = randn(rng, 333)
        y, rstd = ops.rmsnorm(x, w, 0.0, return_stats=True, backend=backend)
        check_rmsnorm(x, w, 0.0, y, rstd)


def test_out_and_numpy_backend(rng):
    x, w, b = ln_inputs(rng, (6, 37))
    for backend in BACKENDS + ["numpy"]:
        out = np.full_like(x, np.nan)
        r = ops.layernorm(x, w, b, out=out, backend=backend)
        assert r is out
        y, mean, rstd = ops.layernorm(x, w, b, out=out, return_stats=True, backend=backend)
        assert y is out
        check_layernorm(x, w, b, 1e-5, out, mean, rstd, tol=1e-4)
        out2 = np.full_like(x, np.nan)
        r, rstd = ops.rmsnorm(x, w, out=out2, return_stats=True, backend=backend)
        assert r is out2
        check_rmsnorm(x, w, 1e-6, out2, rstd, tol=1e-4)


# ---- backward -----------------------------------------------------------------------------

def check_layernorm_backward(dy, x, w, mean, rstd, dx, dw, db, tol=1e-5):
    dy64, x64, w64, m64, r64 = f64(dy, x, w, mean, rstd)
    rdx, rdw, rdb = reference.layernorm_backward(dy64, x64, w64, m64, r64)
    C = x.shape[-1]
    xhat = (x64 - m64[..., None]) * r64[..., None]
    g = dy64 * w64
    dx_scale = r64[..., None] * (np.abs(g) + np.abs(g).mean(-1, keepdims=True)
                                 + np.abs(xhat) * np.abs(g * xhat).mean(-1, keepdims=True))
    within(dx, rdx, dx_scale, tol, "layernorm dx")
    within(dw, rdw, np.abs(dy64 * xhat).reshape(-1, C).sum(0), tol, "layernorm dweight")
    within(db, rdb, np.abs(dy64).reshape(-1, C).sum(0), tol, "layernorm dbias")


def check_rmsnorm_backward(dy, x, w, rstd, dx, dw, tol=1e-5):
    dy64, x64, w64, r64 = f64(dy, x, w, rstd)
    rdx, rdw = reference.rmsnorm_backward(dy64, x64, w64, r64)
    C = x.shape[-1]
    xhat = x64 * r64[..., None]
    g = dy64 * w64
    dx_scale = r64[..., None] * (np.abs(g) + np.abs(xhat) * np.abs(g * xhat).mean(-1, keepdims=True))
    within(dx, rdx, dx_scale, tol, "rmsnorm dx")
    within(dw, rdw, np.abs(dy64 * xhat).reshape(-1, C).sum(0), tol, "rmsnorm dweight")


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_layernorm_backward(rng, isa, shape, backend):
    x, w, b = ln_inputs(rng, shape)
    _, mean, rstd = ops.layernorm(x, w, b, return_stats=True)
    dy = randn(rng, *shape)
    dx, dw, db = ops.layernorm_backward(dy, x, w, mean, rstd, backend=backend)
    assert dx.shape == x.shape and dw.shape == db.shape == w.shape
    assert dx.dtype == dw.dtype == db.dtype == np.float32
    check_layernorm_backward(dy, x, w, mean, rstd, dx, dw, db)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_rmsnorm_backward(rng, isa, shape, backend):
    x, w, _ = ln_inputs(rng, shape)
    _, rstd = ops.rmsnorm(x, w, return_stats=True)
    dy = randn(rng, *shape)
    dx, dw = ops.rmsnorm_backward(dy, x, w, rstd, backend=backend)
    assert dx.shape == x.shape and dw.shape == w.shape
    check_rmsnorm_backward(dy, x, w, rstd, dx, dw)


@pytest.mark.parametrize("shape", [(1, 1), (3, 1), (2, 2), (4, 5), (2, 3, 7), (3, 17)], ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_layernorm_backward_finite_differences(rng, shape, backend):
    x, w, b = ln_inputs(rng, shape)
    eps = 1e-5
    dy64 = randn(rng, *shape).astype(np.float64)
    x64, w64, b64 = f64(x, w, b)
    loss = lambda x_, w_, b_: float((reference.layernorm(x_, w_, b_, eps)[0] * dy64).sum())
    _, mean, rstd = ops.layernorm(x, w, b, eps, return_stats=True, backend=backend)
    dx, dw, db = ops.layernorm_backward(dy64.astype(np.float32), x, w, mean, rstd,
                                        backend=backend)
    fdx = finite_difference(lambda v: loss(v, w64, b64), x64)
    fdw = finite_difference(lambda v: loss(x64, v, b64), w64)
    fdb = finite_difference(lambda v: loss(x64, w64, v), b64)
    for got, fd, what in ((dx, fdx, "dx"), (dw, fdw, "dweight"), (db, fdb, "dbias")):
        assert_close(got, fd, rtol=1e-3, atol=1e-4 * max(np.abs(fd).max(), 1.0), what=what)


@pytest.mark.parametrize("shape", [(1, 1), (3, 1), (2, 2), (4, 5), (2, 3, 7), (3, 17)], ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_rmsnorm_backward_finite_differences(rng, shape, backend):
    x, w, _ = ln_inputs(rng, shape)
    eps = 1e-6
    dy64 = randn(rng, *shape).astype(np.float64)
    x64, w64 = f64(x, w)
    loss = lambda x_, w_: float((reference.rmsnorm(x_, w_, eps)[0] * dy64).sum())
    _, rstd = ops.rmsnorm(x, w, eps, return_stats=True, backend=backend)
    dx, dw = ops.rmsnorm_backward(dy64.astype(np.float32), x, w, rstd, backend=backend)
    fdx = finite_difference(lambda v: loss(v, w64), x64)
    fdw = finite_difference(lambda v: loss(x64, v), w64)
    for got, fd, what in ((dx, fdx, "dx"), (dw, fdw, "dweight")):
        assert_close(got, fd, rtol=1e-3, atol=1e-4 * max(np.abs(fd).max(), 1.0), what=what)


@pytest.mark.parametrize("backend", BACKENDS)
def test_weight_grads_over_100k_rows(rng, backend):
    """dweight / dbias sum 100k rows; dy has a nonzero mean so that the sums grow like n."""
    rows, C = 100_003, 24
    x = randn(rng, rows, C)
    w = randn(rng, C)
    dy = randn(rng, rows, C, scale=0.3) + np.float32(1.0)
    _, mean, rstd = ops.layernorm(x, w, return_stats=True)
    dx, dw, db = ops.layernorm_backward(dy, x, w, mean, rstd, backend=backend)
    check_layernorm_backward(dy, x, w, mean, rstd, dx, dw, db, tol=1e-5)
    dy64, x64, m64, r64 = f64(dy, x, mean, rstd)
    assert_close(db, dy64.sum(0), rtol=1e-5, what="dbias relative")
    _, rstd = ops.rmsnorm(x, w, return_stats=True)
    dx, dw = ops.rmsnorm_backward(dy, x, w, rstd, backend=backend)
    check_rmsnorm_backward(dy, x, w, rstd, dx, dw, tol=1e-5)
    assert_close(dw, (dy64 * x64 * rstd.astype(np.float64)[:, None]).sum(0), rtol=1e-4,
                 atol=1e-5 * np.abs(dy64 * x64).sum(0).max(), what="rmsnorm dweight")


def test_threads_deterministic(rng):
    x, w, b = ln_inputs(rng, (3001, 200))
    dy = randn(rng, 3001, 200)
    n = kernelgpt.get_num_threads()
    try:
        results = {}
        for threads in (1, 2, 3):
            kernelgpt.set_num_threads(threads)
            y, mean, rstd = ops.layernorm(x, w, b, return_stats=True)
            again = ops.layernorm(x, w, b, return_stats=True)
            assert all(np.array_equal(p, q) for p, q in zip((y, mean, rstd), again))
            g = ops.layernorm_backward(dy, x, w, mean, rstd)
            assert all(np.array_equal(p, q)
                       for p, q in zip(g, ops.layernorm_backward(dy, x, w, mean, rstd)))
            yr, rr = ops.rmsnorm(x, w, return_stats=True)
            gr = ops.rmsnorm_backward(dy, x, w, rr)
            assert all(np.array_equal(p, q) for p, q in zip(gr, ops.rmsnorm_backward(dy, x, w, rr)))
            results[threads] = (y, g, yr, gr)
        # the forward splits rows only: identical for any thread count
        assert np.array_equal(results[1][0], results[2][0])
        assert np.array_equal(results[1][2], results[3][2])
        for t in (2, 3):  # the column sums differ only in rounding
            assert_close(results[t][1][1], results[1][1][1], rtol=1e-5)
            assert_close(results[t][3][1], results[1][3][1], rtol=1e-5)
    finally:
        kernelgpt.set_num_threads(n)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_inf_rows_and_zero_eps(rng, isa, backend):
    x, w, b = ln_inputs(rng, (5, 70))
    x[1, 33] = np.nan
    x[3, 0] = np.inf
    y, mean, rstd = ops.layernorm(x, w, b, return_stats=True, backend=backend)
    assert np.isnan(y[[1, 3]]).all() and np.isnan(rstd[[1, 3]]).all()
    assert np.isfinite(y[[0, 2, 4]]).all()
    yr, rr = ops.rmsnorm(x, w, return_stats=True, backend=backend)
    assert np.isnan(yr[1]).all() and np.isfinite(yr[[0, 2, 4]]).all()
    # eps = 0: a constant row has no scale; documented to give inf rstd and NaN y
    c = np.full((2, 9), 3.25, np.float32)
    y, mean, rstd = ops.layernorm(c, w[:9], b[:9], 0.0, return_stats=True, backend=backend)
    assert np.isnan(y).all() and np.isinf(rstd).all() and (mean == 3.25).all()
    y = ops.layernorm(c, w[:9], b[:9], 1e-5, backend=backend)  # with eps > 0: y = bias
    assert_close(y, np.broadcast_to(b[:9], y.shape).astype(np.float64), rtol=1e-6)


@settings(max_examples=40, deadline=None)
@given(x=hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=70),
                    elements=st.floats(-1e4, 1e4, width=32)))
def test_property_layernorm(x):
    C = x.shape[-1]
    w = np.linspace(-2, 2, C, dtype=np.float32)
    b = np.linspace(1, -1, C, dtype=np.float32)
    y, mean, rstd = ops.layernorm(x, w, b, 1e-5, return_stats=True)
    check_layernorm(x, w, b, 1e-5, y, mean, rstd, tol=1e-4)
    y, rstd = ops.rmsnorm(x, w, 1e-5, return_stats=True)
    check_rmsnorm(x, w, 1e-5, y, rstd, tol=1e-4)


# ---- bad input ----------------------------------------------------------------------------

def test_bad_dtypes(rng):
    x, w, b = ln_inputs(rng, (4, 8))
    with pytest.raises(TypeError, match="x must be float32"):
        ops.layernorm(x.astype(np.float64), w, b)
    with pytest.raises(TypeError, match="weight must be float32"):
        ops.rmsnorm(x, w.astype(np.float16))
    with pytest.raises(TypeError, match="bias must be float32"):
        ops.layernorm(x, w, b.astype(np.int32))
    with pytest.raises(TypeError, match="numpy array"):
        ops.layernorm([[1.0, 2.0]], w[:2])
    _, mean, rstd = ops.layernorm(x, w, b, return_stats=True)
    with pytest.raises(TypeError, match="mean must be float32"):
        ops.layernorm_backward(x, x, w, mean.astype(np.float64), rstd)
    with pytest.raises(TypeError, match="dy must be float32"):
        ops.rmsnorm_backward(x.astype(np.float64), x, w, rstd)
    with pytest.raises(TypeError, match="eps must be a float"):
        ops.layernorm(x, w, b, eps="1e-5")
    with pytest.raises(TypeError, match="eps must be a float"):
        ops.rmsnorm(x, w, eps=None)


@pytest.mark.parametrize("eps", [-1e-5, float("nan"), float("inf"), -float("inf"), 1e39])
def test_bad_eps(rng, eps):
    x, w, b = ln_inputs(rng, (4, 8))
    for backend in BACKENDS + ["numpy"]:
        with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
            ops.layernorm(x, w, b, eps, backend=backend)
        with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
            ops.rmsnorm(x, w, eps, backend=backend)
    with pytest.raises(ValueError, match="layernorm: eps"):  # the binding checks too
        _C.layernorm(x, w, b, eps)
    with pytest.raises(ValueError, match="rmsnorm: eps"):
        _C.rmsnorm(x, w, eps)


def test_bad_shapes(rng):
    x, w, b = ln_inputs(rng, (4, 8))
    with pytest.raises(ValueError, match=r"weight has shape \(9,\), expected \(8,\)"):
        ops.layernorm(x, randn(rng, 9), b)
    with pytest.raises(ValueError, match="weight must be 1-D"):
        ops.rmsnorm(x, randn(rng, 1, 8))
    with pytest.raises(ValueError, match=r"bias has shape \(4,\), expected \(8,\)"):
        ops.layernorm(x, w, randn(rng, 4))
    with pytest.raises(ValueError, match="at least 1-D"):
        ops.layernorm(np.array(1.0, np.float32), w[:1])
    with pytest.raises(ValueError, match="zero-size"):
        ops.layernorm(np.zeros((0, 8), np.float32), w, b)
    with pytest.raises(ValueError, match="zero-size"):
        ops.rmsnorm(np.zeros((3, 0), np.float32), np.zeros(0, np.float32))
    with pytest.raises(ValueError, match="out has shape"):
        ops.layernorm(x, w, b, out=np.empty((4, 9), np.float32))
    _, mean, rstd = ops.layernorm(x, w, b, return_stats=True)
    with pytest.raises(ValueError, match=r"mean has shape \(5,\), expected \(4,\)"):
        ops.layernorm_backward(x, x, w, randn(rng, 5), rstd)
    with pytest.raises(ValueError, match=r"rstd has shape \(4, 1\), expected \(4,\)"):
        ops.layernorm_backward(x, x, w, mean, rstd[:, None].copy())
    with pytest.raises(ValueError, match=r"dy has shape \(4, 7\), expected \(4, 8\)"):
        ops.layernorm_backward(randn(rng, 4, 7), x, w, mean, rstd)
    with pytest.raises(ValueError, match=r"rstd has shape \(3,\), expected \(4,\)"):
        ops.rmsnorm_backward(x, x, w, rstd[:3].copy())
    with pytest.raises(ValueError, match="weight has shape"):
        ops.rmsnorm_backward(x, x, w[:7].copy(), rstd)


def test_bad_layout_and_aliasing(rng):
    x, w, b = ln_inputs(rng, (8, 8))
    with pytest.raises(ValueError, match="x must be C-contiguous"):
        ops.layernorm(x.T, w, b)
    with pytest.raises(ValueError, match="weight must be C-contiguous"):
        ops.rmsnorm(x[:, :4].copy(), w[::2])
    with pytest.raises(ValueError, match="overlap"):
        ops.layernorm(x, w, b, out=x)
    with pytest.raises(ValueError, match="overlap"):
        ops.rmsnorm(x, w, out=x)
    ro = np.empty_like(x)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        ops.rmsnorm(x, w, out=ro)
    with pytest.raises(ValueError, match="unknown version"):
        ops.layernorm(x, w, b, backend="blocked")
    with pytest.raises(ValueError, match="unknown version"):
        ops.rmsnorm_backward(x, x, w, np.ones(8, np.float32), backend="bogus")


def test_streaming_stores_large_outputs(rng, isa):
    """Outputs over 32 MiB use streaming stores; odd C puts every row at a new alignment."""
    rows, C = 2203, 4099  # 36 MB
    x, w, b = ln_inputs(rng, (rows, C))
    buf = np.empty(rows * C + 8, np.float32)
    out = buf[5:5 + rows * C].reshape(rows, C)
    y, mean, rstd = ops.layernorm(x, w, b, return_stats=True, out=out)
    assert y is out
    check_layernorm(x, w, b, 1e-5, y, mean, rstd)
    y, rstd = ops.rmsnorm(x, w, return_stats=True, out=out)
    check_rmsnorm(x, w, 1e-6, y, rstd)
    dy = randn(rng, rows, C)
    _, mean, rstd = ops.layernorm(x, w, b, return_stats=True)
    check_layernorm_backward(dy, x, w, mean, rstd, *ops.layernorm_backward(dy, x, w, mean, rstd))
    _, rstd = ops.rmsnorm(x, w, return_stats=True)
    check_rmsnorm_backward(dy, x, w, rstd, *ops.rmsnorm_backward(dy, x, w, rstd))
