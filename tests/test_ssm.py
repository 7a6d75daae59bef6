"""The selective scan (kernelgpt/kernels/ssm.py): every version against the float64 reference
on awkward shapes, the chunked scan against the sequential one, the state carried across
calls, the backward against finite differences, and bad input."""
import numpy as np
import pytest

import kernelgpt
from kernelgpt import ops, reference
from conftest import assert_close, check_within, finite_difference, randn

BACKENDS = ["auto", "naive", "chunked"]

SHAPES = [  # (Bt, T, E, N): ones, odd and prime sizes, channel counts around the SIMD widths
    (1, 1, 1, 1), (1, 2, 3, 1), (2, 7, 3, 5), (1, 13, 17, 16), (3, 37, 19, 16), (2, 64, 40, 17),
    (1, 100, 33, 4), (4, 31, 64, 8), (1, 257, 5, 2), (2, 16, 129, 3), (1, 5, 8, 128),
]


def inputs(rng, Bt, T, E, N):
    """Inputs as the layer makes them: delta = softplus(.) > 0, A = -exp(.) < 0."""
    u = randn(rng, Bt, T, E)
    delta = np.logaddexp(0, randn(rng, Bt, T, E)).astype(np.float32)
    A = (-np.exp(randn(rng, E, N, scale=0.5))).astype(np.float32)
    return u, delta, A, randn(rng, Bt, T, N), randn(rng, Bt, T, N), randn(rng, E)


def f64(xs):
    return [x.astype(np.float64) for x in xs]


def magnitude(args, h0=None):
    """The scan of |u|, |B|, |C|, |D| (and |h0|): every term of the float64 sum at its size,
    the scale the float32 error is measured against."""
    u, delta, A, B, C, D = f64(args)
    return reference.selective_scan(np.abs(u), delta, A, np.abs(B), np.abs(C), np.abs(D),
                                    h0=None if h0 is None else np.abs(h0).astype(np.float64),
                                    return_state=True)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_scan_matches_reference(rng, isa, shape, backend):
    args = inputs(rng, *shape)
    h0 = randn(rng, shape[0], shape[2], shape[3])
    y_ref, h_ref = reference.selective_scan(*f64(args), h0=h0.astype(np.float64), return_state=True)
    y_mag, h_mag = magnitude(args, h0)
    y, h = ops.selective_scan(*args, h0=h0, return_state=True, backend=backend)
    assert y.dtype == np.float32 and y.shape == args[0].shape and h.shape == h0.shape
    check_within(y, y_ref, y_mag, 1e-5, "y")
    check_within(h, h_ref, h_mag, 1e-5, "state")
    y0 = ops.selective_scan(*args, backend=backend)  # from a zero state
    check_within(y0, reference.selective_scan(*f64(args)), magnitude(args)[0], 1e-5, "y, h0 = 0")


@pytest.mark.parametrize("shape", [(1, 100, 3, 4), (2, 37, 19, 16), (1, 257, 33, 8)])
@pytest.mark.parametrize("chunk", [1, 2, 5, 16, 64, 1000])
def test_chunked_equals_sequential(rng, isa, shape, chunk):
    """The issue's check: the chunked scan equals the one-step-at-a-time scan to 1e-5."""
    args = inputs(rng, *shape)
    h0 = randn(rng, shape[0], shape[2], shape[3])
    y1, h1 = ops.selective_scan(*args, h0=h0, return_state=True, backend="naive")
    y2, h2 = ops.selective_scan(*args, h0=h0, return_state=True, backend="chunked", chunk=chunk)
    mag = magnitude(args, h0)
    check_within(y2, y1.astype(np.float64), mag[0], 1e-5, "y")
    check_within(h2, h1.astype(np.float64), mag[1], 1e-5, "state")
    dy = randn(rng, *args[0].shape)
    g1 = ops.selective_scan_backward(dy, *args, backend="naive")
    g2 = ops.selective_scan_backward(dy, *args, backend="chunked", chunk=chunk)
    for name, a, b in zip(["du", "d_delta", "dA", "dB", "dC", "dD"], g1, g2):
        assert_close(b, a, rtol=1e-4, atol=1e-5 * float(np.abs(a).max()), what=name)


@pytest.mark.parametrize("backend", ["naive", "chunked"])
def test_state_carries_across_calls(rng, backend):
    """Scanning a sequence in pieces, each from the last one's state, is scanning it whole:
    what generation with a recurrent cache does, one token (or one prompt) at a time."""
    args = inputs(rng, 2, 23, 21, 6)
    y, h = ops.selective_scan(*args, return_state=True, backend=backend)
    pieces, state = [], None
    for t0, t1 in [(0, 9), (9, 10), (10, 11), (11, 23)]:
        part = [x[:, t0:t1].copy() if x.ndim == 3 else x for x in args]
        yp, state = ops.selective_scan(*part, h0=state, return_state=True, backend=backend)
        pieces.append(yp)
    mag = magnitude(args)
    check_within(np.concatenate(pieces, 1), y.astype(np.float64), mag[0], 1e-5, "pieces")
    check_within(state, h.astype(np.float64), mag[1], 1e-5, "state")


@pytest.mark.parametrize("shape", SHAPES[:9])
@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_matches_reference(rng, isa, shape, backend):
    args = inputs(rng, *shape)
    dy = randn(rng, *args[0].shape)
    expected = reference.selective_scan_backward(dy.astype(np.float64), *f64(args))
    got = ops.selective_scan_backward(dy, *args, backend=backend)
    for name, g, e, x in zip(["du", "d_delta", "dA", "dB", "dC", "dD"], got, expected, args):
        assert g.dtype == np.float32 and g.shape == x.shape, name
        assert_close(g, e, rtol=1e-4, atol=1e-5 * max(float(np.abs(e).max()), 1e-30), what=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_finite_differences(rng, backend):
    """The float32 kernels' gradients against float64 central differences of the reference
    forward (loss = sum(y * dy))."""
    args = inputs(rng, 2, 6, 3, 4)
    dy = randn(rng, *args[0].shape).astype(np.float64)
    got = ops.selective_scan_backward(dy.astype(np.float32), *args, backend=backend)
    base = f64(args)
    for i, name in enumerate(["u", "delta", "A", "B", "C", "D"]):
        def loss(x):
            xs = list(base)
            xs[i] = x
            return float((reference.selective_scan(*xs) * dy).sum())
        fd = finite_difference(loss, base[i], h=1e-5)
        err = np.abs(got[i] - fd).max()
        assert err <= 1e-3 * np.abs(fd).max() + 1e-4, f"d{name}: {err:.3g}"


def test_same_result_on_any_thread_count(rng):
    args = inputs(rng, 2, 70, 37, 16)
    dy = randn(rng, *args[0].shape)
    n = kernelgpt.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            kernelgpt.set_num_threads(threads)
            results.append((ops.selective_scan(*args, chunk=8),
                            *ops.selective_scan_backward(dy, *args, chunk=8)))
    finally:
        kernelgpt.set_num_threads(n)
    for r in results[1:]:
        for a, b in zip(results[0], r):
            assert np.array_equal(a, b)


def test_numpy_backend_and_float64_reference(rng):
    args = inputs(rng, 2, 9, 5, 3)
    y = ops.selective_scan(*args, backend="numpy")
    assert y.dtype == np.float32
    check_within(y, reference.selective_scan(*f64(args)), magnitude(args)[0], 1e-5, "numpy")


def test_nan_propagates_without_crash(rng):
    args = list(inputs(rng, 1, 9, 5, 3))
    args[0][0, 4, 2] = np.nan
    for backend in BACKENDS:
        y = ops.selective_scan(*args, backend=backend)
        assert np.isnan(y[0, 4:, 2]).all() and np.isfinite(y[0, :4]).all()
        assert np.isfinite(np.delete(y[0], 2, axis=1)).all()


@pytest.mark.parametrize("backend", ["auto", "naive", "chunked", "numpy"])
def test_bad_input(rng, backend):
    u, delta, A, B, C, D = inputs(rng, 2, 5, 4, 3)
    scan = ops.selective_scan
    with pytest.raises(TypeError, match="u"):
        scan(u.astype(np.float64), delta, A, B, C, D, backend=backend)
    with pytest.raises(ValueError, match="delta"):
        scan(u, delta[:, :4], A, B, C, D, backend=backend)
    with pytest.raises(ValueError, match="A"):
        scan(u, delta, A[:3], B, C, D, backend=backend)
    with pytest.raises(ValueError, match="B"):
        scan(u, delta, A, B[:, :, :2], C, D, backend=backend)
    with pytest.raises(ValueError, match="C"):
        scan(u, delta, A, B, C[:1], D, backend=backend)
    with pytest.raises(ValueError, match="D"):
        scan(u, delta, A, B, C, D[:3], backend=backend)
    with pytest.raises(ValueError, match="h0"):
        scan(u, delta, A, B, C, D, h0=np.zeros((2, 4, 2), np.float32), backend=backend)
    with pytest.raises(ValueError, match="u"):
        scan(u[:, :, :0], delta[:, :, :0], A[:0], B, C, D[:0], backend=backend)
    with pytest.raises(ValueError, match="chunk"):
        scan(u, delta, A, B, C, D, chunk=-1, backend=backend)
    with pytest.raises(TypeError, match="chunk"):
        scan(u, delta, A, B, C, D, chunk=1.5, backend=backend)
    big = inputs(rng, 1, 2, 2, 129)
    with pytest.raises(ValueError, match="128"):
        scan(*big, backend=backend)
    with pytest.raises(ValueError, match="dy"):
        ops.selective_scan_backward(u[:1], u, delta, A, B, C, D, backend=backend)
    if backend != "numpy":  # the numpy formulas read any layout
        with pytest.raises(ValueError, match="contiguous"):
            scan(np.asfortranarray(u), delta, A, B, C, D, backend=backend)


def test_unknown_version(rng):
    args = inputs(rng, 1, 3, 2, 2)
    with pytest.raises(ValueError, match="naive"):
        ops.selective_scan(*args, backend="blocked")
    with pytest.raises(ValueError, match="chunked"):
        ops.selective_scan_backward(args[0], *args, backend="online")
