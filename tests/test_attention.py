"""Attention: every version (naive, flash, decode, auto) against the float64 numpy reference,
forward and backward, under every ISA; the backward also against finite differences; bad
input; NaN/inf; determinism and thread counts."""
import numpy as np
import pytest

import kernelgpt
from kernelgpt import ops, reference
from conftest import finite_difference, randn

# (T, S) pairs: every value of {1, 2, 7, 17, 64, 65, 127, 200, 513} as T and as S, equal and
# T < S (a KV cache), and a few T > S (non-causal only).
TS = [(1, 1), (1, 2), (1, 513), (2, 2), (2, 7), (7, 7), (7, 17), (17, 17), (17, 64), (64, 64),
      (64, 65), (65, 65), (65, 127), (127, 127), (127, 200), (200, 200), (200, 513),
      (513, 513), (1, 200), (7, 127), (2, 1), (65, 2), (513, 17), (200, 64)]
DS = [1, 8, 13, 64, 80, 128]
HEADS = [(1, 1), (4, 4), (6, 2), (9, 3)]


def cases():
    """Each (T, S) pair with a D, head grouping and batch size that cycle independently, so
    that every value meets many others without the full cross product."""
    out = []
    for n, (t, s) in enumerate(TS):
        for c, causal in enumerate([True, False]):
            if causal and s < t:
                continue
            m = 2 * n + c
            d = DS[m % len(DS)]
            h, hkv = HEADS[(m // 2 + n) % len(HEADS)]
            b = 3 if m % 3 == 0 else 1
            if t * s * d * h * b > 2e8:  # keep the float64 reference quick
                b = 1
            out.append((b, h, hkv, t, s, d, causal))
    return out


CASES = cases()


def case_id(c):
    b, h, hkv, t, s, d, causal = c
    return f"B{b}-H{h}/{hkv}-T{t}-S{s}-D{d}-{'causal' if causal else 'full'}"


def make_inputs(rng, b, h, hkv, t, s, d, scale=1.0):
    return (randn(rng, b, h, t, d, scale=scale), randn(rng, b, hkv, s, d, scale=scale),
            randn(rng, b, hkv, s, d))


def as64(*xs):
    return [x.astype(np.float64) for x in xs]


def check_close(actual, expected, what, rel=1e-4):
    """|actual - expected| <= rel * max|expected| (outputs are averages of v's rows, so
    max|expected| is the scale of the terms summed), no NaN. Floored at 1e-2 (inputs here are
    O(1)) for arrays that are ~0 in theory. Gradients use check_grads."""
    actual = np.asarray(actual)
    assert actual.dtype == np.float32, what
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert np.isfinite(actual).all(), f"{what}: NaN or inf in result"
    scale = max(float(np.abs(expected).max()), 1e-2)
    err = np.abs(actual.astype(np.float64) - expected)
    worst = np.unravel_index(np.argmax(err), err.shape)
    assert err.max() <= rel * scale, (
        f"{what}: max error {err.max():.3g} > {rel} * {scale:.3g} at {worst}: "
        f"got {actual[worst]!r}, expected {expected[worst]!r}")


def backward_reference(dout, q, k, v, out, lse, causal=True, scale=None):
    """float64 gradients (dq, dk, dv) and, for each, the scale of the terms it sums: e.g.
    dq = scale * sum_j P_ij (dP_ij - delta_i) k_j has terms bounded by
    scale * sum_j P_ij (|dout_i| . |v_j| + |dout_i| . |out_i|) |k_j|. A float32 kernel can only
    be asked to be exact relative to those (dq is exactly 0 with one key, yet its terms are
    not, and both dP and delta carry float32 rounding)."""
    grads = reference.attention_backward(dout, q, k, v, out, lse, causal=causal, scale=scale)
    B, H, T, D = q.shape
    Hkv = k.shape[1]
    G = H // Hkv
    scale = 1.0 / np.sqrt(D) if scale is None else scale
    qg, s, hidden = reference._attention_probs(q, k, causal, scale)
    p = np.exp(s - lse.reshape(B, Hkv, G, T, 1))
    if hidden is not None:
        p = np.where(hidden, 0.0, p)
    adout = np.abs(dout).reshape(B, Hkv, G, T, D)
    dp_abs = adout @ np.swapaxes(np.abs(v), -1, -2)[:, :, None]
    delta_abs = (np.abs(dout) * np.abs(out)).sum(axis=-1).reshape(B, Hkv, G, T, 1)
    w = p * (dp_abs + delta_abs) * scale
    dq_terms = (w @ np.abs(k)[:, :, None]).reshape(B, H, T, D)
    dk_terms = (np.swapaxes(w, -1, -2) @ np.abs(qg)).sum(axis=2)
    dv_terms = (np.swapaxes(p, -1, -2) @ adout).sum(axis=2)
    return list(zip(grads, (dq_terms, dk_terms, dv_terms)))


def check_grads(grads, refs, what="", rel=1e-4):
    """|grad - ref| <= rel * (scale of its terms), elementwise, no NaN."""
    for name, g, (e, terms) in zip(("dq", "dk", "dv"), grads, refs):
        g = np.asarray(g)
        label = f"{what} {name}".strip()
        assert g.dtype == np.float32 and g.shape == e.shape, label
        assert np.isfinite(g).all(), f"{label}: NaN or inf in result"
        err = np.abs(g.astype(np.float64) - e)
        bound = rel * terms + 1e-7 * terms.max() + 1e-30
        i = np.unravel_index(np.argmax(err / bound), err.shape)
        assert (err <= bound).all(), (
            f"{label}: {np.sum(err > bound)} values off; worst at {i}: got {g[i]!r}, "
            f"expected {e[i]!r} (|err| {err[i]:.3g} > {bound[i]:.3g})")


def check_lse(actual, expected, what="lse"):
    assert actual.dtype == np.float32 and actual.shape == expected.shape, what
    err = np.abs(actual - expected) / np.maximum(1.0, np.abs(expected))
    assert err.max() <= 1e-5, f"{what}: max error {err.max():.3g}"


BACKENDS = ["auto", "flash", "decode", "naive"]


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_forward(rng, isa, case, backend):
    b, h, hkv, t, s, d, causal = case
    if backend == "naive" and b * h * t * s * d > 3e7:
        pytest.skip("naive is slow")
    q, k, v = make_inputs(rng, b, h, hkv, t, s, d)
    ref_out, ref_lse = reference.attention(*as64(q, k, v), causal=causal)
    out, lse = ops.attention(q, k, v, causal=causal, return_lse=True, backend=backend)
    check_close(out, ref_out, "out")
    check_lse(lse, ref_lse)
    # without lse, and with a scale of our own
    out2 = ops.attention(q, k, v, causal=causal, scale=0.3, backend=backend)
    check_close(out2, reference.attention(*as64(q, k, v), causal=causal, scale=0.3)[0], "out")


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("backend", ["auto", "naive"])
def test_attention_backward(rng, isa, case, backend):
    b, h, hkv, t, s, d, causal = case
    if backend == "naive" and b * h * t * s * d > 3e7:
        pytest.skip("naive is slow")
    q, k, v = make_inputs(rng, b, h, hkv, t, s, d)
    dout = randn(rng, b, h, t, d)
    q64, k64, v64, dout64 = as64(q, k, v, dout)
    out64, lse64 = reference.attention(q64, k64, v64, causal=causal)
    refs = backward_reference(dout64, q64, k64, v64, out64, lse64, causal=causal)
    out, lse = out64.astype(np.float32), lse64.astype(np.float32)
    grads = ops.attention_backward(dout, q, k, v, out, lse, causal=causal, backend=backend)
    check_grads(grads, refs)


@pytest.mark.parametrize("b,h,hkv,t,s,d,causal", [
    (1, 1, 1, 3, 3, 2, True), (1, 2, 1, 3, 5, 3, True), (2, 3, 3, 4, 2, 3, False),
    (1, 4, 2, 1, 6, 5, True), (1, 3, 1, 5, 5, 1, False), (1, 2, 2, 2, 7, 4, True)])
@pytest.mark.parametrize("backend", ["auto", "naive"])
def test_attention_backward_finite_differences(rng, isa, b, h, hkv, t, s, d, causal, backend):
    """The loss sum(out * w); its gradient by central differences of the float64 reference."""
    q, k, v = make_inputs(rng, b, h, hkv, t, s, d)
    w = rng.standard_normal((b, h, t, d))
    scale = 0.7

    def loss_at(i):
        def f(x):
            args = as64(q, k, v)
            args[i] = x
            return float((reference.attention(*args, causal=causal, scale=scale)[0] * w).sum())
        return f

    out, lse = ops.attention(q, k, v, causal=causal, scale=scale, return_lse=True,
                             backend="naive" if backend == "naive" else "flash")
    grads = ops.attention_backward(w.astype(np.float32), q, k, v, out, lse, causal=causal,
                                   scale=scale, backend=backend)
    ref = reference.attention_backward(w, *as64(q, k, v), *reference.attention(
        *as64(q, k, v), causal=causal, scale=scale), causal=causal, scale=scale)
    for i, name in enumerate(("dq", "dk", "dv")):
        fd = finite_difference(loss_at(i), [q, k, v][i].astype(np.float64), h=1e-5)
        tol = 1e-3 * np.abs(fd).max() + 1e-4
        assert np.abs(ref[i] - fd).max() <= 1e-6 * np.abs(fd).max() + 1e-8, f"reference {name}"
        assert np.abs(grads[i] - fd).max() <= tol, f"{name}: {np.abs(grads[i] - fd).max():.3g}"


def test_attention_roundtrip_flash_backward(rng):
    """forward and backward chained the way a training step uses them (our out and lse)."""
    b, h, hkv, t, s, d = 2, 6, 2, 130, 130, 64
    q, k, v = make_inputs(rng, b, h, hkv, t, s, d)
    dout = randn(rng, b, h, t, d)
    out, lse = ops.attention(q, k, v, return_lse=True)
    grads = ops.attention_backward(dout, q, k, v, out, lse)
    q64, k64, v64, dout64 = as64(q, k, v, dout)
    refs = backward_reference(dout64, q64, k64, v64, *reference.attention(q64, k64, v64))
    check_grads(grads, refs)


def test_attention_numpy_backend(rng):
    q, k, v = make_inputs(rng, 2, 4, 2, 9, 11, 8)
    out, lse = ops.attention(q, k, v, return_lse=True, backend="numpy")
    assert out.dtype == np.float32 and lse.dtype == np.float32
    np.testing.assert_allclose(out, ops.attention(q, k, v), rtol=1e-4, atol=1e-5)
    dout = randn(rng, *q.shape)
    g_np = ops.attention_backward(dout, q, k, v, out, lse, backend="numpy")
    g = ops.attention_backward(dout, q, k, v, out, lse)
    for a, e in zip(g, g_np):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, e, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("backend", ["auto", "flash", "decode", "naive", "numpy"])
def test_attention_out(rng, backend):
    q, k, v = make_inputs(rng, 1, 4, 2, 5, 9, 13)
    out = np.full(q.shape, np.nan, np.float32)
    r = ops.attention(q, k, v, out=out, backend=backend)
    assert r is out or np.shares_memory(r, out)
    check_close(out, reference.attention(*as64(q, k, v))[0], "out")
    r, lse = ops.attention(q, k, v, out=out, return_lse=True, backend=backend)
    assert np.shares_memory(r, out) and lse.shape == (1, 4, 5)


@pytest.mark.parametrize("threads", [1, 2, 3, 5])
@pytest.mark.parametrize("b,h,hkv,t,s", [(1, 9, 3, 1, 2049), (1, 1, 1, 1, 700), (2, 4, 2, 3, 1000),
                                         (1, 6, 2, 200, 333), (3, 2, 1, 64, 64)])
def test_attention_threads(rng, threads, b, h, hkv, t, s):
    """Every thread count gives correct results (uneven splits, split-K decode merges) and the
    same bits on every call."""
    d = 64
    q, k, v = make_inputs(rng, b, h, hkv, t, s, d)
    dout = randn(rng, b, h, t, d)
    q64, k64, v64, dout64 = as64(q, k, v, dout)
    out64, lse64 = reference.attention(q64, k64, v64)
    refs = backward_reference(dout64, q64, k64, v64, out64, lse64)
    n = kernelgpt.get_num_threads()
    try:
        kernelgpt.set_num_threads(threads)
        for backend in ["flash", "decode"]:
            out, lse = ops.attention(q, k, v, return_lse=True, backend=backend)
            check_close(out, out64, f"{backend} out")
            check_lse(lse, lse64)
            again = ops.attention(q, k, v, backend=backend)
            assert np.array_equal(out, again), "not deterministic"
        grads = ops.attention_backward(dout, q, k, v, out64.astype(np.float32),
                                       lse64.astype(np.float32))
        again = ops.attention_backward(dout, q, k, v, out64.astype(np.float32),
                                       lse64.astype(np.float32))
        check_grads(grads, refs)
        for name, g, g2 in zip(("dq", "dk", "dv"), grads, again):
            assert np.array_equal(g, g2), f"{name} not deterministic"
    finally:
        kernelgpt.set_num_threads(n)


@pytest.mark.parametrize("backend", ["flash", "decode", "naive"])
def test_attention_large_scores_stay_finite(rng, isa, backend):
    """Scores in the thousands: the max subtraction keeps exp finite; no NaN on finite input."""
    q, k, v = make_inputs(rng, 1, 2, 1, 33, 70, 16, scale=8.0)
    q64, k64, v64 = as64(q, k, v)
    for causal in (True, False):
        out, lse = ops.attention(q, k, v, causal=causal, scale=1.0, return_lse=True,
                                 backend=backend)
        ref_out, ref_lse = reference.attention(q64, k64, v64, causal=causal, scale=1.0)
        check_close(out, ref_out, "out")
        check_lse(lse, ref_lse)
        if backend != "decode":
            grads = ops.attention_backward(randn(rng, *q.shape), q, k, v, out, lse,
                                           causal=causal, scale=1.0, backend=backend)
            assert all(np.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("backend", ["flash", "decode", "naive"])
def test_attention_nan_inf_propagate(rng, backend):
    """A NaN in query row i makes out row i NaN; a NaN in key j makes NaN every row that sees
    key j (causal: rows i >= j - (S - T)); the other rows stay finite."""
    b, h, hkv, t, s, d = 1, 2, 1, 20, 30, 8
    q, k, v = make_inputs(rng, b, h, hkv, t, s, d)
    q[0, 1, 4, 3] = np.nan
    out = ops.attention(q, k, v, backend=backend)
    assert np.isnan(out[0, 1, 4]).all()
    rest = np.ones(out.shape, bool)
    rest[0, 1, 4] = False
    assert np.isfinite(out[rest]).all()
    q[0, 1, 4, 3] = 1.0
    k[0, 0, 25, 0] = np.nan  # key 25 is seen by rows i >= 25 - 10 = 15
    out = ops.attention(q, k, v, backend=backend)
    assert np.isnan(out[0, :, 15:]).all()
    assert np.isfinite(out[0, :, :15]).all()


def test_attention_kernel_path():
    assert "attention" in ops.kernel_paths()
    assert "attention" in kernelgpt.cpu_features()["kernels"]


# ---- bad input ----------------------------------------------------------------------------

def test_attention_bad_dtype_and_type(rng):
    q, k, v = make_inputs(rng, 1, 2, 1, 3, 4, 5)
    with pytest.raises(TypeError, match="q must be float32"):
        ops.attention(q.astype(np.float64), k, v)
    with pytest.raises(TypeError, match="v must be float32"):
        ops.attention(q, k, v.astype(np.float64))
    with pytest.raises(TypeError, match="k and v must have the same dtype"):
        ops.attention(q, k, v.astype(np.float16))
    with pytest.raises(TypeError, match="q must be float32"):
        ops.attention(q.astype(np.float16), k, v)
    with pytest.raises(TypeError, match="numpy array"):
        ops.attention(q.tolist(), k, v)
    with pytest.raises(TypeError, match="None"):
        ops.attention(q, None, v)
    out, lse = ops.attention(q, k, v, return_lse=True)
    with pytest.raises(TypeError, match="lse must be float32"):
        ops.attention_backward(q, q, k, v, out, lse.astype(np.float64))
    with pytest.raises(TypeError, match="dout must be float32"):
        ops.attention_backward(q.astype(np.float64), q, k, v, out, lse)
    with pytest.raises(TypeError, match="scale"):
        ops.attention(q, k, v, scale="0.5")
    with pytest.raises(TypeError, match="scale"):
        ops.attention(q, k, v, scale=True)
    with pytest.raises(TypeError, match="backend"):
        ops.attention(q, k, v, backend=3)


def test_attention_bad_shapes(rng):
    q, k, v = make_inputs(rng, 2, 6, 2, 5, 7, 8)
    with pytest.raises(ValueError, match="q must be 4-D"):
        ops.attention(q[0], k, v)
    with pytest.raises(ValueError, match="k must be 4-D"):
        ops.attention(q, k[None], v)
    with pytest.raises(ValueError, match="same shape"):
        ops.attention(q, k, v[:, :, :6].copy())
    with pytest.raises(ValueError, match="to match q"):  # batch differs
        ops.attention(q, k[:1].copy(), v[:1].copy())
    with pytest.raises(ValueError, match="to match q"):  # head dimension differs
        ops.attention(q, k[..., :4].copy(), v[..., :4].copy())
    with pytest.raises(ValueError, match="multiple of the number of kv heads"):
        ops.attention(q, randn(rng, 2, 4, 7, 8), randn(rng, 2, 4, 7, 8))
    with pytest.raises(ValueError, match="causal attention needs at least as many keys"):
        ops.attention(q, k[:, :, :3].copy(), v[:, :, :3].copy())
    ops.attention(q, k[:, :, :3].copy(), v[:, :, :3].copy(), causal=False)  # fine
    with pytest.raises(ValueError, match="zero-size"):
        ops.attention(q[:, :, :0].copy(), k, v, causal=False)
    with pytest.raises(ValueError, match="out has shape"):
        ops.attention(q, k, v, out=np.empty((2, 6, 5, 7), np.float32))
    with pytest.raises(ValueError, match="unknown version"):
        ops.attention(q, k, v, backend="fused")


def test_attention_numpy_backend_checks(rng):
    q, k, v = make_inputs(rng, 2, 6, 2, 5, 7, 8)
    with pytest.raises(ValueError, match="causal attention needs"):
        ops.attention(q, k[:, :, :3], v[:, :, :3], backend="numpy")
    with pytest.raises(ValueError, match="multiple of the number of kv heads"):
        ops.attention(q, randn(rng, 2, 4, 7, 8), randn(rng, 2, 4, 7, 8), backend="numpy")
    with pytest.raises(ValueError, match="scale must be finite"):
        ops.attention(q, k, v, scale=-1.0, backend="numpy")
    with pytest.raises(ValueError, match="4-D"):
        ops.attention(q[0], k, v, backend="numpy")


def test_attention_backward_bad_shapes(rng):
    q, k, v = make_inputs(rng, 2, 6, 2, 5, 7, 8)
    out, lse = ops.attention(q, k, v, return_lse=True)
    dout = randn(rng, *q.shape)
    with pytest.raises(ValueError, match="lse has shape"):
        ops.attention_backward(dout, q, k, v, out, lse[:, :3].copy())
    with pytest.raises(ValueError, match="lse must be 3-D"):
        ops.attention_backward(dout, q, k, v, out, lse[..., None].copy())
    with pytest.raises(ValueError, match="dout has shape"):
        ops.attention_backward(dout[:, :, :4].copy(), q, k, v, out, lse)
    with pytest.raises(ValueError, match="out has shape"):
        ops.attention_backward(dout, q, k, v, out[:1].copy(), lse)
    with pytest.raises(ValueError, match="multiple of the number of kv heads"):
        ops.attention_backward(dout, q, randn(rng, 2, 4, 7, 8), randn(rng, 2, 4, 7, 8), out, lse)
    with pytest.raises(ValueError, match="causal attention needs"):
        ops.attention_backward(dout, q, k[:, :, :2].copy(), v[:, :, :2].copy(), out, lse)
    with pytest.raises(ValueError, match="unknown version"):
        ops.attention_backward(dout, q, k, v, out, lse, backend="decode")


def test_attention_non_contiguous_and_overlap(rng):
    q, k, v = make_inputs(rng, 1, 2, 1, 6, 6, 8)
    with pytest.raises(ValueError, match="q must be C-contiguous"):
        ops.attention(np.swapaxes(q, 2, 3).copy().swapaxes(2, 3), k, v)
    with pytest.raises(ValueError, match="k must be C-contiguous"):
        big = randn(rng, 1, 1, 6, 16)
        ops.attention(q, big[..., ::2], v)
    with pytest.raises(ValueError, match="overlap"):
        ops.attention(q, k, v, out=q)
    qkv = randn(rng, 3, 1, 1, 6, 8)  # out would alias k
    with pytest.raises(ValueError, match="overlap"):
        ops.attention(qkv[0], qkv[1], qkv[2], out=qkv[1])
    ro = np.empty(q.shape, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        ops.attention(q, k, v, out=ro)


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan"), float("inf"), 1e-60, 1e60])
def test_attention_bad_scale(rng, scale):
    q, k, v = make_inputs(rng, 1, 2, 1, 3, 4, 5)
    with pytest.raises(ValueError, match="scale must be finite and > 0"):
        ops.attention(q, k, v, scale=scale)
    out, lse = ops.attention(q, k, v, return_lse=True)
    with pytest.raises(ValueError, match="scale must be finite and > 0"):
        ops.attention_backward(q, q, k, v, out, lse, scale=scale)


def test_attention_scale_accepts_numbers(rng):
    q, k, v = make_inputs(rng, 1, 2, 1, 3, 4, 5)
    a = ops.attention(q, k, v, scale=2)
    b = ops.attention(q, k, v, scale=np.float32(2.0))
    assert np.array_equal(a, b)


# ---- random shapes ----------------------------------------------------------------------------

try:
    from hypothesis import given, settings, strategies as st
except ImportError:  # pragma: no cover
    given = None

if given is not None:
    @settings(max_examples=40, deadline=None)
    @given(b=st.integers(1, 2), hkv=st.integers(1, 3), g=st.integers(1, 3),
           t=st.integers(1, 60), extra=st.integers(0, 70), d=st.integers(1, 70),
           causal=st.booleans(), scale=st.floats(0.05, 2.0), seed=st.integers(0, 2**31 - 1))
    def test_attention_random_shapes(b, hkv, g, t, extra, d, causal, scale, seed):
        rng = np.random.default_rng(seed)
        s = t + extra if causal else max(1, extra)
        q, k, v = make_inputs(rng, b, hkv * g, hkv, t, s, d)
        dout = randn(rng, b, hkv * g, t, d)
        q64, k64, v64, dout64 = as64(q, k, v, dout)
        out64, lse64 = reference.attention(q64, k64, v64, causal=causal, scale=scale)
        refs = backward_reference(dout64, q64, k64, v64, out64, lse64, causal=causal,
                                  scale=scale)
        for backend in ("flash", "decode", "naive"):
            out, lse = ops.attention(q, k, v, causal=causal, scale=scale, return_lse=True,
                                     backend=backend)
            check_close(out, out64, f"{backend} out")
            check_lse(lse, lse64)
        for backend in ("flash", "naive"):
            grads = ops.attention_backward(dout, q, k, v, out64.astype(np.float32),
                                           lse64.astype(np.float32), causal=causal,
                                           scale=scale, backend=backend)
            check_grads(grads, refs, backend)


@pytest.mark.parametrize("d", [2, 200, 257])
def test_attention_unusual_head_dims(rng, isa, d):
    b, h, hkv, t, s = 1, 4, 2, 33, 70
    q, k, v = make_inputs(rng, b, h, hkv, t, s, d)
    dout = randn(rng, b, h, t, d)
    q64, k64, v64, dout64 = as64(q, k, v, dout)
    out64, lse64 = reference.attention(q64, k64, v64)
    refs = backward_reference(dout64, q64, k64, v64, out64, lse64)
    for backend in ("flash", "decode", "naive"):
        out, lse = ops.attention(q, k, v, return_lse=True, backend=backend)
        check_close(out, out64, f"{backend} out")
        check_lse(lse, lse64)
    grads = ops.attention_backward(dout, q, k, v, out64.astype(np.float32),
                                   lse64.astype(np.float32))
    check_grads(grads, refs)


# ---- reading a KV cache in place (kv_length) ------------------------------------------------

@pytest.mark.parametrize("backend", ["naive", "flash", "decode", "auto"])
@pytest.mark.parametrize("T,S,cap", [(1, 1, 8), (1, 37, 64), (5, 40, 41), (17, 100, 128), (64, 64, 300)])
def test_attention_kv_length_reads_cache_prefix(isa, backend, T, S, cap):
    from kernelgpt import ops as kops
    rng = np.random.default_rng(T * 1000 + S)
    B, H, Hkv, D = 2, 6, 2, 16
    q = rng.standard_normal((B, H, T, D)).astype(np.float32)
    kc = rng.standard_normal((B, Hkv, cap, D)).astype(np.float32)
    vc = rng.standard_normal((B, Hkv, cap, D)).astype(np.float32)
    got, lse = kops.attention(q, kc, vc, causal=True, kv_length=S, return_lse=True, backend=backend)
    k = np.ascontiguousarray(kc[:, :, :S])
    v = np.ascontiguousarray(vc[:, :, :S])
    want, want_lse = kops.attention(q, k, v, causal=True, return_lse=True, backend="numpy")
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(lse, want_lse, rtol=1e-5, atol=1e-5)


def test_attention_kv_length_bad():
    from kernelgpt import ops as kops
    q = np.ones((1, 2, 3, 4), np.float32) * 0.5
    kc = np.ones((1, 2, 8, 4), np.float32) * 0.25
    with pytest.raises(ValueError, match="kv_length"):
        kops.attention(q, kc, kc.copy(), kv_length=9)
    with pytest.raises(ValueError, match="kv_length"):
        kops.attention(q, kc, kc.copy(), kv_length=0)
    with pytest.raises(ValueError, match="causal"):
        kops.attention(q, kc, kc.copy(), kv_length=2)
    with pytest.raises(TypeError, match="kv_length"):
        kops.attention(q, kc, kc.copy(), kv_length=2.5)


# ---- a half-precision KV cache (float16 k and v) ------------------------------------------

@pytest.mark.parametrize("backend", ["naive", "flash", "decode", "auto", "numpy"])
@pytest.mark.parametrize("B,H,Hkv,T,S,cap,D", [
    (1, 1, 1, 1, 1, 1, 1), (1, 9, 3, 1, 37, 64, 64), (2, 6, 2, 5, 40, 41, 13),
    (1, 4, 4, 17, 300, 513, 80), (1, 2, 1, 64, 64, 300, 16), (1, 15, 5, 1, 1031, 1031, 128)])
def test_attention_half_kv_equals_widened(isa, backend, B, H, Hkv, T, S, cap, D):
    """float16 k, v give exactly what float32 k.astype(float32), v.astype(float32) give with the
    same version: the kernels widen the cache (exactly) before any arithmetic."""
    rng = np.random.default_rng(B * 7 + T * 1000 + S + D)
    q = rng.standard_normal((B, H, T, D)).astype(np.float32)
    kc = (rng.standard_normal((B, Hkv, cap, D)) * 3).astype(np.float16)
    vc = rng.standard_normal((B, Hkv, cap, D)).astype(np.float16)
    got, lse = ops.attention(q, kc, vc, causal=True, kv_length=S, return_lse=True, backend=backend)
    want, want_lse = ops.attention(q, kc.astype(np.float32), vc.astype(np.float32), causal=True,
                                   kv_length=S, return_lse=True, backend=backend)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(lse, want_lse)
    assert np.isfinite(got).all()
    ref, _ = reference.attention(q.astype(np.float64), kc[:, :, :S].astype(np.float64),
                                 vc[:, :, :S].astype(np.float64), True, None)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=2e-5)


def test_to_half_rounds_as_numpy(isa):
    """The KV write's fp32 -> fp16 rounding (nearest even, subnormals, overflow to inf) equals
    numpy's astype(np.float16), on random values of every magnitude and on the edge cases."""
    rng = np.random.default_rng(5)
    x = (rng.standard_normal(4099) * np.exp2(rng.integers(-30, 20, 4099))).astype(np.float32)
    # ties at every scale: halfway between two halves (normal and subnormal), the largest half,
    # the overflow threshold 65520, the smallest subnormal and half of it
    bits = rng.integers(0, 0x7bff, 512).astype(np.uint16)
    halves = bits.view(np.float16).astype(np.float32)
    nexts = (bits + 1).view(np.float16).astype(np.float32)  # the next half up: (h + n) / 2 a tie
    edges = np.array([0.0, -0.0, 65504, 65519.99, 65520, 65536, 1e9, np.inf, -np.inf, 2.0 ** -24,
                      2.0 ** -25, 3 * 2.0 ** -26, 2.0 ** -14, 2.0 ** -14 * (1 - 2.0 ** -12),
                      6.1e-5, 1e-40], np.float32)
    x = np.concatenate([x, -x, (halves + nexts) / 2, halves, edges, -edges]).astype(np.float32)
    with np.errstate(over="ignore"):
        want = x.astype(np.float16).view(np.uint16)
    got = kernelgpt._C.to_half(x)
    np.testing.assert_array_equal(got, want)
    for n in (1, 7, 15, 16, 17, 33):  # every vector tail
        np.testing.assert_array_equal(kernelgpt._C.to_half(x[:n]), want[:n])
    nan = kernelgpt._C.to_half(np.array([np.nan, -np.nan], np.float32)).view(np.float16)
    assert np.isnan(nan).all()
