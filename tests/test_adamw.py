import numpy as np
import pytest

import kernelgpt
from kernelgpt import ops, reference
from conftest import assert_close, randn

SHAPES = [(1,), (7,), (16,), (17,), (1000,), (4099,), (3, 5, 7), (64, 129), (200_003,)]
HYPER = [  # lr, beta1, beta2, eps, weight_decay
    (1e-3, 0.9, 0.999, 1e-8, 0.0),
    (3e-2, 0.9, 0.95, 1e-8, 0.1),
    (0.5, 0.8, 0.99, 1e-6, 0.01),
    (1e-4, 0.0, 0.0, 1e-3, 1.0),
]
BACKENDS = ["auto", "naive"]


def run_steps(shape, hyper, backend, steps, rng, zero_some=True):
    lr, b1, b2, eps, wd = hyper
    param = randn(rng, *shape)
    m = np.zeros(shape, np.float32)
    v = np.zeros(shape, np.float32)
    p64, m64, v64 = param.astype(np.float64), m.astype(np.float64), v.astype(np.float64)
    for step in range(1, steps + 1):
        grad = randn(rng, *shape, scale=10.0 ** rng.integers(-3, 2))
        if zero_some and grad.size > 3:
            grad.reshape(-1)[::3] = 0.0  # exercised: v = 0 there on the first step
        ops.adamw_step(param, grad, m, v, step=step, lr=lr, beta1=b1, beta2=b2, eps=eps,
                       weight_decay=wd, backend=backend)
        reference.adamw_step(p64, grad.astype(np.float64), m64, v64, step, lr, b1, b2, eps, wd)
    return (param, m, v), (p64, m64, v64)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("hyper", HYPER)
@pytest.mark.parametrize("backend", BACKENDS)
def test_adamw_ten_steps(rng, isa, shape, hyper, backend):
    (p, m, v), (p64, m64, v64) = run_steps(shape, hyper, backend, 10, rng)
    assert_close(p, p64, rtol=1e-5, what="param")
    assert_close(m, m64, rtol=1e-5, what="m")
    assert_close(v, v64, rtol=1e-5, what="v")


def test_adamw_fast_matches_naive(rng):
    shape = (12_345,)
    a = [randn(rng, *shape), randn(rng, *shape), randn(rng, *shape), np.abs(randn(rng, *shape))]
    b = [x.copy() for x in a]
    for step in (1, 2, 1000):
        ops.adamw_step(a[0], a[1], a[2], a[3], step=step, lr=1e-2, weight_decay=0.1)
        ops.adamw_step(b[0], b[1], b[2], b[3], step=step, lr=1e-2, weight_decay=0.1,
                       backend="naive")
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=2e-7, atol=0)


@pytest.mark.parametrize("hyper", HYPER)
def test_adamw_against_torch(rng, hyper):
    torch = pytest.importorskip("torch")
    lr, b1, b2, eps, wd = hyper
    shape = (37, 29)
    param = randn(rng, *shape)
    tp = torch.nn.Parameter(torch.from_numpy(param.copy()))
    opt = torch.optim.AdamW([tp], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd,
                            foreach=False)
    m = np.zeros(shape, np.float32)
    v = np.zeros(shape, np.float32)
    for step in range(1, 11):
        grad = randn(rng, *shape)
        tp.grad = torch.from_numpy(grad.copy())
        opt.step()
        ops.adamw_step(param, grad, m, v, step=step, lr=lr, beta1=b1, beta2=b2, eps=eps,
                       weight_decay=wd)
    state = opt.state[tp]
    assert_close(param, tp.detach().numpy(), rtol=1e-5, what="param vs torch")
    assert_close(m, state["exp_avg"].numpy(), rtol=1e-5, what="m vs torch")
    assert_close(v, state["exp_avg_sq"].numpy(), rtol=1e-5, what="v vs torch")


def test_adamw_threads_deterministic(rng):
    shape = (300_001,)
    arrays = [randn(rng, *shape) for _ in range(3)] + [np.abs(randn(rng, *shape))]
    a = [x.copy() for x in arrays]
    b = [x.copy() for x in arrays]
    ops.adamw_step(*a, step=3, lr=1e-3, weight_decay=0.1)
    n = kernelgpt.get_num_threads()
    try:
        kernelgpt.set_num_threads(1)
        ops.adamw_step(*b, step=3, lr=1e-3, weight_decay=0.1)
    finally:
        kernelgpt.set_num_threads(n)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)  # elementwise: independent of the partition


def test_adamw_nan_grad_stays_local(rng):
    p, g, m, v = randn(rng, 40), randn(rng, 40), np.zeros(40, np.float32), np.zeros(40, np.float32)
    g[5] = np.nan
    g[7] = np.inf
    ops.adamw_step(p, g, m, v, step=1, lr=1e-3)
    assert np.isnan(p[5]) and np.isnan(m[5]) and np.isnan(p[7])
    mask = np.ones(40, bool)
    mask[[5, 7]] = False
    assert np.isfinite(p[mask]).all() and np.isfinite(m[mask]).all() and np.isfinite(v[mask]).all()


def test_adamw_numpy_backend(rng):
    arrays = [randn(rng, 33) for _ in range(3)] + [np.abs(randn(rng, 33))]
    a = [x.copy() for x in arrays]
    b = [x.copy() for x in arrays]
    assert ops.adamw_step(*a, step=2, lr=1e-2, weight_decay=0.05) is None
    ops.adamw_step(*b, step=2, lr=1e-2, weight_decay=0.05, backend="numpy")
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


def test_adamw_bad_input(rng):
    p, g, m, v = (randn(rng, 10) for _ in range(4))
    kw = dict(step=1, lr=1e-3)
    with pytest.raises(TypeError, match="grad must be float32"):
        ops.adamw_step(p, g.astype(np.float64), m, v, **kw)
    with pytest.raises(ValueError, match=r"m has shape \(9,\), expected \(10,\)"):
        ops.adamw_step(p, g, m[:9].copy(), v, **kw)
    with pytest.raises(ValueError, match="C-contiguous"):
        ops.adamw_step(randn(rng, 20)[::2], g, m, v, **kw)
    with pytest.raises(ValueError, match="zero-size"):
        e = np.zeros(0, np.float32)
        ops.adamw_step(e, e.copy(), e.copy(), e.copy(), **kw)
    with pytest.raises(ValueError, match="param and m overlap"):
        ops.adamw_step(p, g, p, v, **kw)
    big = randn(rng, 15)
    with pytest.raises(ValueError, match="m and v overlap"):
        ops.adamw_step(p, g, big[:10], big[5:], **kw)
    with pytest.raises(ValueError, match="grad and v overlap"):
        ops.adamw_step(p, g, m, g, **kw)
    ro = m.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="m is read-only"):
        ops.adamw_step(p, g, ro, v, **kw)
    bad = [
        (dict(step=0, lr=1e-3), ValueError, "step must be >= 1"),
        (dict(step=1.0, lr=1e-3), TypeError, "step must be an int"),
        (dict(step=True, lr=1e-3), TypeError, "step must be an int"),
        (dict(step=1, lr=-1e-3), ValueError, "lr must be a finite number >= 0"),
        (dict(step=1, lr=np.nan), ValueError, "lr must be"),
        (dict(step=1, lr=np.inf), ValueError, "lr must be"),
        (dict(step=1, lr=1e-3, beta1=1.0), ValueError, r"beta1 must be in \[0, 1\)"),
        (dict(step=1, lr=1e-3, beta2=-0.1), ValueError, r"beta2 must be in \[0, 1\)"),
        (dict(step=1, lr=1e-3, eps=0.0), ValueError, "eps must be a finite number > 0"),
        (dict(step=1, lr=1e-3, eps=-1e-8), ValueError, "eps must be"),
        (dict(step=1, lr=1e-3, eps=np.nan), ValueError, "eps must be"),
        (dict(step=1, lr=1e-3, weight_decay=-0.1), ValueError, "weight_decay must be"),
        (dict(step=1, lr="0.1"), TypeError, "lr must be a number"),
    ]
    for kwargs, exc, msg in bad:
        with pytest.raises(exc, match=msg):
            ops.adamw_step(p, g, m, v, **kwargs)
    with pytest.raises(ValueError, match="unknown version"):
        ops.adamw_step(p, g, m, v, step=1, lr=1e-3, backend="bogus")


# ---- grad_norm / clip_grad_norm -------------------------------------------------------------

GRAD_SETS = [[(1,)], [(7,)], [(3, 5), (17,), (1,), (64, 33)], [(1000, 17)], [(2, 3, 4)] * 5,
             [(1_000_003,), (5,)]]


def norm64(arrays):
    return float(np.sqrt(sum((a.astype(np.float64) ** 2).sum() for a in arrays)))


@pytest.mark.parametrize("shapes", GRAD_SETS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_grad_norm(rng, isa, shapes, backend):
    grads = [randn(rng, *s, scale=float(rng.uniform(0.01, 100))) for s in shapes]
    expected = norm64(grads)
    assert abs(ops.grad_norm(grads, backend=backend) - expected) <= 1e-12 * expected
    assert abs(ops.grad_norm(tuple(grads), backend=backend) - expected) <= 1e-12 * expected
    single = ops.grad_norm(grads[0], backend=backend)
    assert isinstance(single, float)
    assert abs(single - norm64(grads[:1])) <= 1e-12 * single


def test_grad_norm_large_and_deterministic(rng):
    g = randn(rng, 5_000_011)
    a, b = ops.grad_norm(g), ops.grad_norm(g)
    assert a == b
    assert abs(a - norm64([g])) <= 1e-12 * a
    n = kernelgpt.get_num_threads()
    try:
        kernelgpt.set_num_threads(1)
        c = ops.grad_norm(g)
    finally:
        kernelgpt.set_num_threads(n)
    assert abs(a - c) <= 1e-13 * a
    # extreme magnitudes: squares summed in float64 neither overflow nor underflow
    big = np.full(1000, 3e38, np.float32)
    assert np.isclose(ops.grad_norm(big), np.sqrt(1000) * 3e38, rtol=1e-7)
    tiny = np.full(1000, 1e-30, np.float32)
    assert np.isclose(ops.grad_norm(tiny), np.sqrt(1000) * float(np.float32(1e-30)), rtol=1e-7)


def test_grad_norm_nan_inf(rng):
    g = randn(rng, 100)
    g[3] = np.inf
    assert ops.grad_norm([randn(rng, 5), g]) == np.inf
    g[50] = np.nan
    assert np.isnan(ops.grad_norm([randn(rng, 5), g]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_clip_grad_norm(rng, isa, backend):
    shapes = [(13, 7), (100,), (1,), (3, 3, 3)]
    grads = [randn(rng, *s) for s in shapes]
    orig = [g.copy() for g in grads]
    norm = norm64(orig)
    # below the threshold: returned, arrays untouched (bit for bit)
    r = ops.clip_grad_norm(grads, norm * 2, backend=backend)
    assert abs(r - norm) <= 1e-12 * norm
    for g, o in zip(grads, orig):
        np.testing.assert_array_equal(g, o)
    # above: every array scaled by max_norm / (norm + eps)
    r = ops.clip_grad_norm(grads, 1.5, backend=backend)
    assert abs(r - norm) <= 1e-12 * norm
    coef = 1.5 / (norm + 1e-6)
    for g, o in zip(grads, orig):
        assert_close(g, o.astype(np.float64) * coef, rtol=1e-6, what="clipped")
    assert abs(norm64(grads) - 1.5) <= 1e-5
    # a single array, eps=0
    g = randn(rng, 50) * 10
    n0 = norm64([g])
    assert abs(ops.clip_grad_norm(g, 1.0, eps=0.0, backend=backend) - n0) <= 1e-12 * n0
    assert abs(norm64([g]) - 1.0) <= 1e-6


def test_clip_grad_norm_against_torch(rng):
    torch = pytest.importorskip("torch")
    grads = [randn(rng, 31, 7, scale=3.0), randn(rng, 100), randn(rng, 5, 5)]
    params = [torch.nn.Parameter(torch.zeros(g.shape)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = torch.from_numpy(g.copy())
    tn = torch.nn.utils.clip_grad_norm_(params, max_norm=2.0)
    n = ops.clip_grad_norm(grads, 2.0)
    assert abs(n - float(tn)) <= 1e-5 * n
    for p, g in zip(params, grads):
        assert_close(g, p.grad.numpy(), rtol=1e-5, what="clipped vs torch")


def test_clip_grad_norm_nonfinite_leaves_grads(rng):
    grads = [randn(rng, 10), randn(rng, 20)]
    grads[1][4] = np.nan
    orig = [g.copy() for g in grads]
    assert np.isnan(ops.clip_grad_norm(grads, 1.0))
    for g, o in zip(grads, orig):
        np.testing.assert_array_equal(g, o)
    grads[1][4] = -np.inf
    orig = [g.copy() for g in grads]
    assert ops.clip_grad_norm(grads, 1.0) == np.inf
    for g, o in zip(grads, orig):
        np.testing.assert_array_equal(g, o)
    assert np.isnan(ops.clip_grad_norm([np.array([np.nan], np.float32)], 1.0, backend="numpy"))


def test_grad_norm_bad_input(rng):
    g = randn(rng, 10)
    with pytest.raises(TypeError, match=r"grads\[1\] must be float32"):
        ops.grad_norm([g, g.astype(np.float64)])
    with pytest.raises(TypeError, match="grads must be a float32 numpy array or a list"):
        ops.grad_norm(5.0)
    with pytest.raises(TypeError, match=r"grads\[0\] must be a numpy array"):
        ops.grad_norm([[1.0, 2.0]])
    with pytest.raises(ValueError, match="empty list"):
        ops.grad_norm([])
    with pytest.raises(ValueError, match=r"grads\[1\] has a zero-size"):
        ops.grad_norm([g, np.zeros(0, np.float32)])
    with pytest.raises(ValueError, match="C-contiguous"):
        ops.grad_norm(randn(rng, 4, 6).T)
    with pytest.raises(ValueError, match=r"grads\[0\] and grads\[2\] overlap"):
        ops.clip_grad_norm([g, randn(rng, 3), g[2:]], 1.0)
    ro = g.copy()
    ro.flags.writeable = False
    assert ops.grad_norm(ro) > 0  # reading is fine
    with pytest.raises(ValueError, match="read-only"):
        ops.clip_grad_norm(ro, 1.0)
    for mx in (-1.0, np.nan, np.inf):
        with pytest.raises(ValueError, match="max_norm must be a finite number >= 0"):
            ops.clip_grad_norm(g, mx)
    for eps in (-1e-6, np.nan):
        with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
            ops.clip_grad_norm(g, 1.0, eps=eps)
    with pytest.raises(TypeError, match="max_norm must be a number"):
        ops.clip_grad_norm(g, None)
    with pytest.raises(ValueError, match="unknown version"):
        ops.grad_norm(g, backend="bogus")


# ---- property-based: random sizes and hyperparameters -------------------------------------

from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 300), lr=st.floats(0.0, 1.0), beta1=st.floats(0.0, 0.999),
       beta2=st.floats(0.0, 0.9999), eps=st.floats(1e-10, 1e-2), wd=st.floats(0.0, 0.5),
       start=st.integers(1, 10**6), backend=st.sampled_from(BACKENDS), seed=st.integers(0, 2**31))
def test_adamw_property(n, lr, beta1, beta2, eps, wd, start, backend, seed):
    rng = np.random.default_rng(seed)
    p, m = randn(rng, n), randn(rng, n, scale=0.1)
    v = np.abs(randn(rng, n, scale=0.01))
    p64, m64, v64 = p.astype(np.float64), m.astype(np.float64), v.astype(np.float64)
    for step in range(start, start + 3):
        g = randn(rng, n)
        ops.adamw_step(p, g, m, v, step=step, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                       weight_decay=wd, backend=backend)
        reference.adamw_step(p64, g.astype(np.float64), m64, v64, step, lr, beta1, beta2, eps, wd)
    assert_close(m, m64, rtol=1e-5, what="m")
    assert_close(v, v64, rtol=1e-5, what="v")
    assert_close(p, p64, rtol=1e-5, atol=1e-5 * (np.abs(p64).max() + lr), what="param")
