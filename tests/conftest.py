"""Shared test helpers.

Tolerances (float32 kernels against float64 references):
  - elementwise kernels (activations, RoPE, AdamW, embedding): |x - ref| <= 1e-5 * |ref| + atol
    with atol = 1e-6 * max|ref| for values that cross zero;
  - reductions (softmax, norms, cross-entropy, matmul, attention): error <= 1e-4 relative to
    the scale of the terms summed (for matmul: 1e-4 * (|A| @ |B|));
  - backward kernels: against float64 central finite differences of the reference forward,
    |grad - fd| <= 1e-3 * max|fd| + 1e-4 (finite differences in float64 with h = 1e-4... see
    each test), and against the float64 analytic reference gradient with the rules above.
No test uses only zeros or ones; shapes include 1, odd, prime and large sizes.
"""
import numpy as np
import pytest

import kernelgpt


@pytest.fixture(params=kernelgpt.available_isas())
def isa(request):
    """Runs a test once per instruction-set copy this CPU can execute."""
    best = kernelgpt.get_isa()
    kernelgpt.set_isa(request.param)
    yield request.param
    kernelgpt.set_isa(best)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def randn(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def assert_close(actual, expected, rtol=1e-5, atol=None, what=""):
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert not np.isnan(actual).any(), f"{what}: NaN in result"
    if atol is None:
        atol = 1e-6 * max(float(np.abs(expected).max()), 1e-30)
    err = np.abs(actual - expected)
    bound = rtol * np.abs(expected) + atol
    bad = err > bound
    if bad.any():
        i = np.unravel_index(np.argmax(err - bound), err.shape)
        raise AssertionError(
            f"{what}: {bad.sum()} of {bad.size} values off; worst at {i}: "
            f"got {actual[i]!r}, expected {expected[i]!r} (|err| {err[i]:.3g} > {bound[i]:.3g})")


def finite_difference(f, x, h=1e-4):
    """Central differences of the scalar float64 function f at x (float64 array)."""
    x = np.array(x, dtype=np.float64)
    grad = np.zeros_like(x)
    flat = x.reshape(-1)
    g = grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        fp = f(x)
        flat[i] = old - h
        fm = f(x)
        flat[i] = old
        g[i] = (fp - fm) / (2 * h)
    return grad


def check_within(y, expected, scale, tol, what):
    """|y - expected| <= tol * scale elementwise (scale: the size of the summed terms, e.g.
    |x| @ |W|^T), no NaN; the failure names the worst element."""
    y = np.asarray(y, np.float64)
    assert y.shape == expected.shape, f"{what}: shape {y.shape} != {expected.shape}"
    assert not np.isnan(y).any(), f"{what}: NaN"
    err = np.abs(y - expected)
    bound = tol * scale + 1e-30
    worst = np.unravel_index(np.argmax(err / bound), err.shape)
    assert (err <= bound).all(), (f"{what}: error {err[worst]:.3g} > {bound[worst]:.3g} at "
                                  f"{worst} (got {y[worst]!r}, expected {expected[worst]!r})")
