"""Activations (relu, sigmoid, tanh, silu, gelu tanh / erf, swiglu): every version against the
float64 numpy reference, backward also against central finite differences, plus a dense sweep
of the vectorised exp / tanh / sigmoid of common/simd.h that all of them are built on."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import kernelgpt
from kernelgpt import _C, ops, reference
from conftest import assert_close, finite_difference, randn

ACTS = [("relu", None), ("sigmoid", None), ("tanh", None), ("silu", None), ("gelu", "tanh"),
        ("gelu", "none")]
ACT_IDS = ["relu", "sigmoid", "tanh", "silu", "gelu_tanh", "gelu_erf"]
SHAPES = [(1,), (7,), (16,), (17,), (13, 17), (3, 5, 31), (1000,), (4099,), (257, 129),
          (2, 64, 1031), (100_003,)]
BACKENDS = ["auto", "naive"]
FLOAT_MIN = float(np.finfo(np.float32).tiny)


def _kw(approx):
    return {} if approx is None else {"approximate": approx}


def forward(name, approx, x, **kw):
    return getattr(ops, name)(x, **_kw(approx), **kw)


def backward(name, approx, dy, x, **kw):
    return getattr(ops, name + "_backward")(dy, x, **_kw(approx), **kw)


def ref_forward(name, approx, x):
    return getattr(reference, name)(np.asarray(x, np.float64), **_kw(approx))


def ref_backward(name, approx, dy, x):
    return getattr(reference, name + "_backward")(np.asarray(dy, np.float64),
                                                   np.asarray(x, np.float64), **_kw(approx))


def mixed_inputs(rng, shape):
    """Normal values (scale 3), a wide range up to |x| = 20, and values near 0, shuffled."""
    n = int(np.prod(shape))
    parts = [rng.standard_normal(n) * 3, rng.uniform(-20, 20, n),
             rng.choice([-1, 1], n) * 10.0 ** rng.uniform(-30, 0, n)]
    which = rng.integers(0, 3, n)
    x = np.choose(which, parts)
    return x.astype(np.float32).reshape(shape)


# ---- forward and backward against float64 -------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("act", ACTS, ids=ACT_IDS)
def test_forward(rng, isa, act, backend, shape):
    name, approx = act
    x = mixed_inputs(rng, shape)
    y = forward(name, approx, x, backend=backend)
    assert y.dtype == np.float32 and y.shape == x.shape
    assert_close(y, ref_forward(name, approx, x), rtol=1e-5, what=f"{name} {backend}")


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("act", ACTS, ids=ACT_IDS)
def test_backward(rng, isa, act, backend, shape):
    name, approx = act
    x = mixed_inputs(rng, shape)
    dy = randn(rng, *shape)
    dx = backward(name, approx, dy, x, backend=backend)
    assert dx.dtype == np.float32 and dx.shape == x.shape
    assert_close(dx, ref_backward(name, approx, dy, x), rtol=1e-5,
                 what=f"{name}_backward {backend}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("act", ACTS, ids=ACT_IDS)
def test_dense_sweep_relative_accuracy(isa, act, backend):
    """Every float32 result within 1e-5 relative of float64 over [-20, 20] and near 0; the
    derivatives cross zero (silu' at -1.28, gelu' at -0.75) and get an absolute 1e-6 there."""
    name, approx = act
    tiny = (10.0 ** np.linspace(-30, 0, 2001)).astype(np.float32)
    x = np.concatenate([np.linspace(-20, 20, 200_001, dtype=np.float32), tiny, -tiny])
    y = forward(name, approx, x, backend=backend)
    assert_close(y, ref_forward(name, approx, x), rtol=1e-5, atol=FLOAT_MIN,
                 what=f"{name} {backend}")
    dx = backward(name, approx, np.ones_like(x), x, backend=backend)
    assert_close(dx, ref_backward(name, approx, np.ones_like(x), x), rtol=1e-5, atol=1e-6,
                 what=f"{name}_backward {backend}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("act", ACTS, ids=ACT_IDS)
def test_near_zero_keeps_relative_accuracy(isa, act, backend):
    """tanh(1e-20) = 1e-20 etc.: no absolute tolerance at all (beyond float32's smallest
    normal number), for inputs from 1e-37 to 1e-2 of both signs."""
    name, approx = act
    mags = (10.0 ** np.linspace(-37, -2, 3501)).astype(np.float32)
    x = np.concatenate([mags, -mags])
    assert_close(forward(name, approx, x, backend=backend), ref_forward(name, approx, x),
                 rtol=1e-5, atol=FLOAT_MIN, what=name)
    dy = np.full_like(x, 0.75)
    assert_close(backward(name, approx, dy, x, backend=backend),
                 ref_backward(name, approx, dy, x), rtol=1e-5, atol=FLOAT_MIN, what=name)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("act", ACTS, ids=ACT_IDS)
def test_backward_finite_differences(rng, act, backend):
    name, approx = act
    x = randn(rng, 3, 7, scale=2.0)
    x[np.abs(x) < 0.05] += 0.1  # keep relu's kink away from x +- h
    dy = randn(rng, 3, 7)
    dy64 = dy.astype(np.float64)
    fd = finite_difference(lambda v: float((ref_forward(name, approx, v) * dy64).sum()), x,
                           h=1e-4)
    dx = backward(name, approx, dy, x, backend=backend)
    assert_close(dx, fd, rtol=1e-4, atol=1e-6, what=f"{name} vs finite differences")


# ---- swiglu ---------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(1,), (5,), (33,), (7, 129), (3, 4, 257), (64, 1031)], ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_swiglu(rng, isa, backend, shape):
    gate, up, dy = mixed_inputs(rng, shape), randn(rng, *shape, scale=2.0), randn(rng, *shape)
    g64, u64, d64 = (a.astype(np.float64) for a in (gate, up, dy))
    assert_close(ops.swiglu(gate, up, backend=backend), reference.swiglu(g64, u64), what="swiglu")
    dgate, dup = ops.swiglu_backward(dy, gate, up, backend=backend)
    rg, ru = reference.swiglu_backward(d64, g64, u64)
    assert_close(dgate, rg, what="dgate")
    assert_close(dup, ru, what="dup")


@pytest.mark.parametrize("backend", BACKENDS)
def test_swiglu_finite_differences(rng, backend):
    gate, up, dy = randn(rng, 4, 5, scale=2.0), randn(rng, 4, 5), randn(rng, 4, 5)
    d64 = dy.astype(np.float64)
    dgate, dup = ops.swiglu_backward(dy, gate, up, backend=backend)
    fd_gate = finite_difference(lambda g: float((reference.swiglu(g, up.astype(np.float64))
                                                 * d64).sum()), gate)
    fd_up = finite_difference(lambda u: float((reference.swiglu(gate.astype(np.float64), u)
                                               * d64).sum()), up)
    assert_close(dgate, fd_gate, rtol=1e-4, atol=1e-6, what="dgate vs finite differences")
    assert_close(dup, fd_up, rtol=1e-4, atol=1e-6, what="dup vs finite differences")


# ---- the vectorised math in common/simd.h -------------------------------------------------

def test_simd_math_dense_sweep(isa):
    """exp, tanh and sigmoid of simd.h on 1e6 points in [-90, 90] plus +-[1e-38, 1]: within
    1e-6 relative of float64 wherever the result is a normal float32, inf where exp
    overflows, within float32's smallest normal (absolute) where the result is subnormal."""
    tiny = (10.0 ** np.linspace(-38, 0, 20001)).astype(np.float32)
    x = np.concatenate([np.linspace(-90, 90, 1_000_001, dtype=np.float32), tiny, -tiny])
    x64 = x.astype(np.float64)
    with np.errstate(over="ignore"):
        refs = {"exp": np.exp(x64), "tanh": np.tanh(x64), "sigmoid": 1 / (1 + np.exp(-x64))}
    fmax = float(np.finfo(np.float32).max)
    for name, ref in refs.items():
        y = _C.simd_math(name, x).astype(np.float64)
        assert not np.isnan(y).any(), name
        normal = (np.abs(ref) >= FLOAT_MIN) & (np.abs(ref) <= fmax)
        rel = np.abs(y - ref)[normal] / np.abs(ref[normal])
        assert rel.max() <= 1e-6, f"{name}: max rel error {rel.max():.3g}"
        assert np.isinf(y[ref > fmax]).all(), name
        sub = np.abs(ref) < FLOAT_MIN
        assert (np.abs(y[sub] - ref[sub]) <= FLOAT_MIN).all(), name


def test_simd_math_special_values():
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 88.0, 89.0, -104.0, -110.0], np.float32)
    e = _C.simd_math("exp", x)
    assert np.isnan(e[0]) and e[1] == np.inf and e[2] == 0 and e[3] == 1 and e[4] == 1
    assert np.isfinite(e[5]) and e[6] == np.inf and e[8] == 0
    t = _C.simd_math("tanh", x)
    assert np.isnan(t[0]) and t[1] == 1 and t[2] == -1 and t[3] == 0
    s = _C.simd_math("sigmoid", x)
    assert np.isnan(s[0]) and s[1] == 1 and s[2] == 0 and s[3] == 0.5
    with pytest.raises(ValueError, match="name must be"):
        _C.simd_math("log", x)


# ---- special values, threads, out= --------------------------------------------------------

LIMITS = {  # f(-inf), f(+inf), f'(-inf), f'(+inf)
    "relu": (0, np.inf, 0, 1), "sigmoid": (0, 1, 0, 0), "tanh": (-1, 1, 0, 0),
    "silu": (0, np.inf, 0, 1), "gelu_tanh": (0, np.inf, 0, 1), "gelu_erf": (0, np.inf, 0, 1),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("act", ACTS, ids=ACT_IDS)
def test_inf_gives_limits_and_nan_propagates(isa, act, backend):
    name, approx = act
    key = name if approx is None else f"gelu_{'erf' if approx == 'none' else 'tanh'}"
    x = np.array([-np.inf, np.inf, np.nan, -1e30, 1e30, -150.0, 150.0, 1.5] * 3, np.float32)
    y = forward(name, approx, x, backend=backend)
    dx = backward(name, approx, np.ones_like(x), x, backend=backend)
    lo, hi, dlo, dhi = LIMITS[key]
    for arr, a, b in ((y, lo, hi), (dx, dlo, dhi)):
        assert arr[0] == a and arr[1] == b, (arr[:2], a, b)
        assert np.isnan(arr[2])
        assert not np.isnan(np.delete(arr, [2, 10, 18])).any()
    assert y[3] == lo and y[4] == (hi if np.isfinite(hi) else np.float32(1e30))


def test_threads_deterministic(rng):
    x = mixed_inputs(rng, (300_001,))
    dy = randn(rng, 300_001)
    n = kernelgpt.get_num_threads()
    try:
        for name, approx in ACTS:
            kernelgpt.set_num_threads(2)
            y2, d2 = forward(name, approx, x), backward(name, approx, dy, x)
            kernelgpt.set_num_threads(1)
            y1, d1 = forward(name, approx, x), backward(name, approx, dy, x)
            assert np.array_equal(y1, y2) and np.array_equal(d1, d2), name
    finally:
        kernelgpt.set_num_threads(n)


@pytest.mark.parametrize("backend", BACKENDS + ["numpy"])
def test_out_argument(rng, backend):
    x, dy = randn(rng, 9, 33), randn(rng, 9, 33)
    for name, approx in ACTS:
        out = np.full_like(x, np.nan)
        r = forward(name, approx, x, out=out, backend=backend)
        assert r is out
        assert_close(out, ref_forward(name, approx, x), what=name)
        r = backward(name, approx, dy, x, out=out, backend=backend)
        assert r is out
        assert_close(out, ref_backward(name, approx, dy, x), rtol=1e-4, what=name)
    gate, up = randn(rng, 9, 33), randn(rng, 9, 33)
    out = np.empty_like(x)
    assert ops.swiglu(gate, up, out=out, backend=backend) is out
    assert_close(out, reference.swiglu(gate.astype(np.float64), up.astype(np.float64)))


@pytest.mark.parametrize("act", ACTS, ids=ACT_IDS)
def test_numpy_backend_matches(rng, act):
    name, approx = act
    x, dy = mixed_inputs(rng, (50, 37)), randn(rng, 50, 37)
    assert_close(forward(name, approx, x, backend="numpy"), ref_forward(name, approx, x),
                 rtol=1e-4)
    assert_close(backward(name, approx, dy, x, backend="numpy"),
                 ref_backward(name, approx, dy, x), rtol=1e-4)


@settings(max_examples=60, deadline=None)
@given(x=hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=40),
                    elements=st.floats(-1e6, 1e6, width=32)),
       act=st.sampled_from(ACTS))
def test_property_finite_in_finite_out(x, act):
    name, approx = act
    dy = np.ones_like(x)
    y = forward(name, approx, x)
    dx = backward(name, approx, dy, x)
    assert np.isfinite(y).all() and np.isfinite(dx).all()
    with np.errstate(over="ignore", invalid="ignore"):
        ry, rdx = ref_forward(name, approx, x), ref_backward(name, approx, dy, x)
    scale = 1e-6 * max(float(np.abs(ry).max()), 1.0)
    assert (np.abs(y - ry) <= 1e-5 * np.abs(ry) + scale).all()
    assert (np.abs(dx - rdx) <= 1e-5 * np.abs(rdx) + 1e-6).all()


@pytest.mark.parametrize("shape", [(2,), (1, 6), (3, 34), (7, 258), (2, 5, 1026), (61, 3072)],
                         ids=str)
@pytest.mark.parametrize("backend", BACKENDS + ["numpy"])
def test_swiglu_packed(rng, isa, backend, shape):
    """h = [gate | up] in one array (Llama's fused projection): the same values as swiglu on
    the two halves, bit for bit (the same formulas), and the float64 reference."""
    h = mixed_inputs(rng, shape)
    F = shape[-1] // 2
    dy = randn(rng, *shape[:-1], F)
    y = ops.swiglu_packed(h, backend=backend)
    d_h = ops.swiglu_packed_backward(dy, h, backend=backend)
    h64, d64 = h.astype(np.float64), dy.astype(np.float64)
    assert_close(y, reference.swiglu_packed(h64), what="swiglu_packed")
    assert_close(d_h, reference.swiglu_packed_backward(d64, h64), what="swiglu_packed_backward")
    if backend != "numpy":
        gate, up = np.ascontiguousarray(h[..., :F]), np.ascontiguousarray(h[..., F:])
        assert np.array_equal(y, ops.swiglu(gate, up, backend=backend))
        dgate, dup = ops.swiglu_backward(dy, gate, up, backend=backend)
        assert np.array_equal(d_h, np.concatenate([dgate, dup], axis=-1))
    out = np.full(shape, np.nan, np.float32)  # out= filled completely
    assert ops.swiglu_packed_backward(dy, h, out=out, backend=backend) is out
    assert np.array_equal(out, d_h)


def test_swiglu_packed_finite_differences(rng):
    h, dy = randn(rng, 3, 10, scale=2.0), randn(rng, 3, 5)
    d64 = dy.astype(np.float64)
    fd = finite_difference(lambda x: float((reference.swiglu_packed(x) * d64).sum()), h)
    assert_close(ops.swiglu_packed_backward(dy, h), fd, rtol=1e-4, atol=1e-6,
                 what="swiglu_packed_backward vs finite differences")


def test_swiglu_packed_bad_input(rng):
    with pytest.raises(ValueError, match="even last dimension"):
        ops.swiglu_packed(randn(rng, 4, 7))
    with pytest.raises(ValueError, match="dy has shape"):
        ops.swiglu_packed_backward(randn(rng, 4, 4), randn(rng, 4, 6))
    with pytest.raises(TypeError, match="h must be float32"):
        ops.swiglu_packed(rng.standard_normal((4, 6)))
    with pytest.raises(ValueError, match="C-contiguous"):
        ops.swiglu_packed(randn(rng, 6, 8)[:, :4])
    h = randn(rng, 4, 6)
    with pytest.raises(ValueError, match="overlap"):
        ops.swiglu_packed_backward(randn(rng, 4, 3), h, out=h)
    with pytest.raises(ValueError, match="out has shape"):
        ops.swiglu_packed(h, out=np.empty((4, 6), np.float32))


# ---- bad input ----------------------------------------------------------------------------

def test_bad_dtype_and_type(rng):
    x = rng.standard_normal((3, 4))  # float64
    with pytest.raises(TypeError, match="x must be float32"):
        ops.gelu(x)
    with pytest.raises(TypeError, match="numpy array"):
        ops.relu([1.0, 2.0])
    with pytest.raises(TypeError, match="dy must be float32"):
        ops.silu_backward(x, randn(rng, 3, 4))
    with pytest.raises(TypeError, match="up must be float32"):
        ops.swiglu(randn(rng, 3, 4), x)
    with pytest.raises(TypeError, match="None"):
        ops.tanh(None)


def test_bad_shapes_layout_and_options(rng):
    x = randn(rng, 6, 8)
    with pytest.raises(ValueError, match=r"dy has shape \(6, 7\), expected \(6, 8\)"):
        ops.gelu_backward(randn(rng, 6, 7), x)
    with pytest.raises(ValueError, match="up has shape"):
        ops.swiglu(x, randn(rng, 8, 6))
    with pytest.raises(ValueError, match="dy has shape"):
        ops.swiglu_backward(randn(rng, 6), x, x.copy())
    with pytest.raises(ValueError, match="C-contiguous"):
        ops.sigmoid(x.T)
    with pytest.raises(ValueError, match="C-contiguous"):
        ops.relu_backward(x[:, ::2], randn(rng, 6, 4))
    with pytest.raises(ValueError, match="zero-size"):
        ops.silu(np.zeros((0, 3), np.float32))
    with pytest.raises(ValueError, match="out has shape"):
        ops.relu(x, out=np.empty((6, 7), np.float32))
    with pytest.raises(ValueError, match="overlap"):
        ops.tanh(x, out=x)
    buf = randn(rng, 6 * 8 + 5)  # two same-shape views that share 43 floats
    a, b = buf[:48].reshape(6, 8), buf[5:].reshape(6, 8)
    with pytest.raises(ValueError, match="overlap"):
        ops.tanh_backward(x.copy(), a, out=b)
    with pytest.raises(ValueError, match="overlap"):
        ops.gelu_backward(a, x, out=b, approximate="none")
    with pytest.raises(ValueError, match="overlap"):
        ops.swiglu(x, x.copy(), out=x)
    ro = np.empty_like(x)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        ops.gelu(x, out=ro)
    for bad in ("erf", "exact", None, "", "TANH"):
        with pytest.raises(ValueError, match="approximate must be 'tanh' or 'none'"):
            ops.gelu(x, approximate=bad)
        with pytest.raises(ValueError, match="approximate"):
            ops.gelu_backward(x, x.copy(), approximate=bad)
    with pytest.raises(ValueError, match="approximate must be"):
        _C.activation(x, "gelu", "erf")
    with pytest.raises(ValueError, match="unknown activation"):
        _C.activation(x, "softplus")
    with pytest.raises(ValueError, match="unknown version"):
        ops.silu(x, backend="bogus")
    with pytest.raises(TypeError, match="backend must be a string"):
        ops.silu(x, backend=1)


# ---- outputs larger than the last-level cache: streaming stores ----------------------------

@pytest.fixture(scope="module")
def big_inputs():
    rng = np.random.default_rng(77)
    n = 9_000_011  # 36 MB of float32
    x, dy, up = mixed_inputs(rng, (n,)), randn(rng, n), randn(rng, n)
    x64, dy64, up64 = (a.astype(np.float64) for a in (x, dy, up))
    refs = {name: (ref_forward(name, None, x64), ref_backward(name, None, dy64, x64))
            for name in ("relu", "silu", "gelu")}
    refs["swiglu"] = (reference.swiglu(x64, up64), reference.swiglu_backward(dy64, x64, up64))
    return x, dy, up, refs


def test_streaming_stores_large_and_misaligned(isa, big_inputs):
    """Outputs over 32 MiB are written with streaming stores after an aligned head piece:
    check them under every ISA, with out= views that start off a vector boundary."""
    x, dy, up, refs = big_inputs
    n = x.size
    buf = np.empty(n + 16, np.float32)
    for offset, name in ((0, "relu"), (3, "silu"), (5, "gelu")):
        out = buf[offset:offset + n]
        assert forward(name, None, x, out=out) is out
        assert_close(out, refs[name][0], what=f"{name} streamed")
        assert backward(name, None, dy, x, out=out) is out
        assert_close(out, refs[name][1], what=f"{name}_backward streamed")
    assert_close(ops.swiglu(x, up, out=buf[1:n + 1]), refs["swiglu"][0], what="swiglu streamed")
    dgate, dup = ops.swiglu_backward(dy, x, up)
    assert_close(dgate, refs["swiglu"][1][0], what="dgate streamed")
    assert_close(dup, refs["swiglu"][1][1], what="dup streamed")
    erf = ops.gelu(x, approximate="none")  # the erf form, streamed; checked on a prefix
    assert_close(erf[:300_007], ref_forward("gelu", "none", x[:300_007]), what="gelu erf")
