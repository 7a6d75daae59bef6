import numpy as np
import pytest

import kernelgpt
from kernelgpt import ops, reference
from conftest import assert_close, finite_difference, randn

# x shapes [..., T, D] and rotary_dim: ones, odd T, primes, D not a multiple of 16, large
CASES = [
    ((1, 1, 1, 2), None), ((2, 3, 7, 10), None), ((2, 3, 7, 10), 4), ((1, 5, 13, 64), None),
    ((2, 4, 33, 128), None), ((2, 4, 33, 128), 64), ((3, 17, 6), None), ((5, 2), None),
    ((1, 2, 31, 18), 14), ((2, 1, 129, 96), 32), ((1, 1, 16, 34), 34), ((4, 3, 1, 80), 78),
    ((1, 3, 257, 40), None),
]
LAYOUTS = ["half", "interleaved"]
BACKENDS = ["auto", "naive"]


def rope_complex(x, p, base, layout, rd, inverse=False):
    """An independent float64 oracle: rotation as multiplication by exp(i angle), the way
    Meta's Llama code writes it (torch.polar / view_as_complex)."""
    x = x.astype(np.float64)
    h = rd // 2
    angle = np.asarray(p, np.float64)[:, None] * base ** (-np.arange(0, rd, 2) / rd)
    rot = np.exp(-1j * angle if inverse else 1j * angle)
    y = x.copy()
    if layout == "half":
        z = (x[..., :h] + 1j * x[..., h:rd]) * rot
        y[..., :h], y[..., h:rd] = z.real, z.imag
    else:
        z = (x[..., 0:rd:2] + 1j * x[..., 1:rd:2]) * rot
        y[..., 0:rd:2], y[..., 1:rd:2] = z.real, z.imag
    return y


def pair_norms(x, layout, rd):
    """For every element of the first rd columns, the norm of the pair it rotates with."""
    x = x.astype(np.float64)
    h = rd // 2
    n = np.zeros_like(x)
    if layout == "half":
        r = np.hypot(x[..., :h], x[..., h:rd])
        n[..., :h] = n[..., h:rd] = r
    else:
        r = np.hypot(x[..., 0:rd:2], x[..., 1:rd:2])
        n[..., 0:rd:2] = n[..., 1:rd:2] = r
    return n


def check_rope(y, x, p, base, layout, rd, inverse=False, rtol=1e-5):
    """|y - exact| <= rtol * |pair| for rotated columns; pass-through columns exact."""
    D = x.shape[-1]
    rd = D if rd is None else rd
    exact = rope_complex(x, p, base, layout, rd, inverse)
    assert y.dtype == np.float32 and y.shape == x.shape
    assert not np.isnan(y).any()
    err = np.abs(y[..., :rd] - exact[..., :rd])
    bound = rtol * pair_norms(x, layout, rd)[..., :rd] + 1e-30
    assert (err <= bound).all(), f"max err / |pair| = {(err / bound).max() * rtol:.3g}"
    np.testing.assert_array_equal(y[..., rd:], x[..., rd:])


@pytest.mark.parametrize("shape,rd", CASES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
def test_rope(rng, isa, shape, rd, layout, inverse, backend):
    x = randn(rng, *shape)
    T = shape[-2]
    offset = int(rng.integers(0, 5000))
    y = ops.rope(x, offset=offset, layout=layout, rotary_dim=rd, inverse=inverse, backend=backend)
    check_rope(y, x, np.arange(offset, offset + T), 10000.0, layout, rd, inverse)
    # and against the float64 numpy reference
    ref = reference.rope(x.astype(np.float64), None, offset, 10000.0, layout, rd, inverse)
    assert_close(y, ref, rtol=1e-5, atol=1e-5 * np.abs(x).max(), what="reference")


@pytest.mark.parametrize("base", [10000.0, 1e6, 500000.0, 10.0])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_rope_large_positions(rng, isa, base, layout, backend):
    # positions near 32k (and a few far beyond): float64 angles keep them accurate
    T, D = 40, 128
    x = randn(rng, 2, 3, T, D)
    y = ops.rope(x, offset=32768 - T, base=base, layout=layout, backend=backend)
    check_rope(y, x, np.arange(32768 - T, 32768), base, layout, None)
    p = np.concatenate([rng.integers(0, 2**31, size=T - 4), [0, 10**6, 2**31 - 1, 123456789]])
    y = ops.rope(x, positions=p, base=base, layout=layout, backend=backend)
    check_rope(y, x, p, base, layout, None)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint16])
def test_rope_positions_array(rng, dtype):
    x = randn(rng, 2, 2, 9, 20)
    p = rng.integers(0, 3000, size=9).astype(dtype)  # unsorted, maybe repeated
    for layout in LAYOUTS:
        check_rope(ops.rope(x, positions=p, layout=layout), x, p, 10000.0, layout, None)
    # positions = offset + arange(T) is the same as offset
    a = ops.rope(x, positions=np.arange(7, 16))
    b = ops.rope(x, offset=7)
    np.testing.assert_array_equal(a, b)


def test_rope_fast_matches_naive(rng):
    x = randn(rng, 3, 4, 50, 66)
    for layout in LAYOUTS:
        for rd in (None, 24):
            a = ops.rope(x, layout=layout, rotary_dim=rd, offset=999)
            b = ops.rope(x, layout=layout, rotary_dim=rd, offset=999, backend="naive")
            assert np.abs(a - b).max() <= 5e-7 * np.abs(x).max()


def test_rope_inverse_roundtrip(rng):
    x = randn(rng, 2, 5, 31, 64)
    for layout in LAYOUTS:
        y = ops.rope(x, layout=layout, offset=100)
        back = ops.rope_backward(y, layout=layout, offset=100)
        assert_close(back, x, rtol=1e-5, atol=1e-5 * np.abs(x).max(), what="R^T R x")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("rd", [None, 4])
@pytest.mark.parametrize("backend", BACKENDS)
def test_rope_backward_finite_differences(rng, layout, rd, backend):
    x = rng.standard_normal((2, 3, 6))
    w = rng.standard_normal((2, 3, 6))  # loss = sum(w * rope(x))
    kw = dict(offset=3, layout=layout, rotary_dim=rd)

    def loss(x64):
        return float((w * reference.rope(x64, None, 3, 10000.0, layout, rd)).sum())

    fd = finite_difference(loss, x)
    grad = ops.rope_backward(w.astype(np.float32), backend=backend, **kw)
    assert (np.abs(grad - fd) <= 1e-3 * np.abs(fd).max() + 1e-4).all()
    # and against the float64 analytic backward
    ref = reference.rope_backward(w, None, 3, 10000.0, layout, rd)
    assert_close(grad, ref, rtol=1e-5, atol=1e-5 * np.abs(w).max(), what="backward")


def test_rope_against_torch_hf_formula(rng):
    torch = pytest.importorskip("torch")
    B, H, T, D, base = 2, 3, 37, 64, 10000.0
    x = randn(rng, B, H, T, D)
    # transformers' apply_rotary_pos_emb with rotate_half, inv_freq in float64
    inv_freq = 1.0 / (base ** (torch.arange(0, D, 2, dtype=torch.float64) / D))
    freqs = torch.outer(torch.arange(T, dtype=torch.float64), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos(), emb.sin()
    xt = torch.from_numpy(x.astype(np.float64))
    rot = torch.cat((-xt[..., D // 2:], xt[..., :D // 2]), dim=-1)
    expected = (xt * cos + rot * sin).numpy()
    assert_close(ops.rope(x), expected, rtol=1e-5, atol=1e-5 * np.abs(x).max(), what="HF")


def test_rope_out_and_numpy_backend(rng):
    x = randn(rng, 2, 7, 12)
    out = np.full_like(x, np.nan)
    r = ops.rope(x, out=out, layout="interleaved")
    assert r is out or np.shares_memory(r, out)
    np.testing.assert_array_equal(out, ops.rope(x, layout="interleaved"))
    np.testing.assert_allclose(ops.rope(x, backend="numpy"), ops.rope(x), rtol=1e-5, atol=1e-6)


def test_rope_nan_stays_in_its_pair(rng):
    x = randn(rng, 1, 4, 8)
    x[0, 1, 2] = np.nan
    y = ops.rope(x)  # half layout: column 2 pairs with column 6
    bad = np.isnan(y)
    assert bad[0, 1, 2] and bad[0, 1, 6] and bad.sum() == 2


def test_rope_threads_deterministic(rng):
    x = randn(rng, 2, 8, 100, 64)
    a = ops.rope(x)
    n = kernelgpt.get_num_threads()
    try:
        kernelgpt.set_num_threads(1)
        b = ops.rope(x)
    finally:
        kernelgpt.set_num_threads(n)
    np.testing.assert_array_equal(a, b)


# ---- sinusoidal ----------------------------------------------------------------------------

@pytest.mark.parametrize("T,C", [(1, 1), (1, 2), (7, 5), (16, 16), (33, 17), (100, 768),
                                 (257, 129), (3, 1001)])
@pytest.mark.parametrize("offset", [0, 13, 999_937, 10**6])
@pytest.mark.parametrize("backend", BACKENDS)
def test_sinusoidal(isa, T, C, offset, backend):
    pe = ops.sinusoidal_positions(T, C, offset=offset, backend=backend)
    assert pe.dtype == np.float32 and pe.shape == (T, C)
    ref = reference.sinusoidal_positions(T, C, 10000.0, offset)
    assert_close(pe, ref, rtol=1e-5, atol=1e-6, what="sinusoidal")


def test_sinusoidal_values():
    pe = ops.sinusoidal_positions(3, 5, base=100.0)
    np.testing.assert_array_equal(pe[0], [0, 1, 0, 1, 0])  # sin 0, cos 0, ...; odd C ends in sin
    p = 2.0
    expected = [np.sin(p), np.cos(p), np.sin(p / 100 ** 0.4), np.cos(p / 100 ** 0.4),
                np.sin(p / 100 ** 0.8)]
    np.testing.assert_allclose(pe[2], expected, rtol=1e-6, atol=1e-7)
    for base in (2.0, 1e6):
        np.testing.assert_allclose(ops.sinusoidal_positions(50, 30, base=base, offset=5),
                                   reference.sinusoidal_positions(50, 30, base, 5),
                                   rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ops.sinusoidal_positions(9, 8, backend="numpy"),
                                  reference.sinusoidal_positions(9, 8).astype(np.float32))


# ---- bad input ---------------------------------------------------------------------------

def test_rope_bad_input(rng):
    x = randn(rng, 2, 3, 5, 8)
    with pytest.raises(TypeError, match="x must be float32"):
        ops.rope(x.astype(np.float64))
    with pytest.raises(ValueError, match=r"last dimension of x \(D = 7\) must be even"):
        ops.rope(randn(rng, 3, 7))
    with pytest.raises(ValueError, match="at least 2-D"):
        ops.rope(randn(rng, 8))
    with pytest.raises(ValueError, match="rotary_dim must be even"):
        ops.rope(x, rotary_dim=3)
    with pytest.raises(ValueError, match="rotary_dim must be even"):
        ops.rope(x, rotary_dim=10)
    with pytest.raises(ValueError, match="rotary_dim must be even"):
        ops.rope(x, rotary_dim=0)
    with pytest.raises(TypeError, match="rotary_dim must be an int"):
        ops.rope(x, rotary_dim=4.0)
    with pytest.raises(ValueError, match="layout must be"):
        ops.rope(x, layout="neox")
    with pytest.raises(ValueError, match=r"positions has shape \(4,\), expected \(5,\)"):
        ops.rope(x, positions=np.arange(4))
    with pytest.raises(ValueError, match=r"positions\[1\] = -3 is out of range"):
        ops.rope(x, positions=np.array([0, -3, 1, 2, 3]))
    with pytest.raises(TypeError, match="positions must be an integer array"):
        ops.rope(x, positions=np.arange(5.0))
    with pytest.raises(ValueError, match="positions or offset, not both"):
        ops.rope(x, positions=np.arange(5), offset=2)
    with pytest.raises(ValueError, match="offset must be >= 0"):
        ops.rope(x, offset=-1)
    with pytest.raises(ValueError, match="offset must be >= 0"):
        ops.rope(x, offset=2**31 - 2)
    with pytest.raises(TypeError, match="offset must be an int"):
        ops.rope(x, offset=1.5)
    for base in (0.0, -1.0, np.nan, np.inf):
        with pytest.raises(ValueError, match="base must be a finite number > 0"):
            ops.rope(x, base=base)
    with pytest.raises(ValueError, match="C-contiguous"):
        ops.rope(np.swapaxes(x, -1, -2))
    with pytest.raises(ValueError, match="zero-size"):
        ops.rope(np.zeros((2, 0, 8), np.float32))
    with pytest.raises(ValueError, match="overlap"):
        ops.rope(x, out=x)
    with pytest.raises(ValueError, match="out has shape"):
        ops.rope(x, out=np.empty((2, 3, 5, 6), np.float32))
    with pytest.raises(ValueError, match="unknown version"):
        ops.rope(x, backend="bogus")


def test_sinusoidal_bad_input():
    with pytest.raises(ValueError, match="T must be >= 1"):
        ops.sinusoidal_positions(0, 4)
    with pytest.raises(ValueError, match="C must be >= 1"):
        ops.sinusoidal_positions(4, 0)
    with pytest.raises(TypeError, match="T must be an int"):
        ops.sinusoidal_positions(4.0, 4)
    with pytest.raises(ValueError, match="offset must be >= 0"):
        ops.sinusoidal_positions(4, 4, offset=-5)
    with pytest.raises(ValueError, match="base must be a finite number > 0"):
        ops.sinusoidal_positions(4, 4, base=np.nan)
    with pytest.raises(ValueError, match="unknown version"):
        ops.sinusoidal_positions(4, 4, backend="bogus")


# ---- property-based: random shapes and options -------------------------------------------

from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 3), t=st.integers(1, 40), half_d=st.integers(1, 40),
       rd_frac=st.floats(0.0, 1.0), layout=st.sampled_from(LAYOUTS), inverse=st.booleans(),
       offset=st.integers(0, 2**20), base=st.sampled_from([10000.0, 1e6, 2.0]),
       backend=st.sampled_from(BACKENDS), seed=st.integers(0, 2**31))
def test_rope_property(n, t, half_d, rd_frac, layout, inverse, offset, base, backend, seed):
    D = 2 * half_d
    rd = 2 * max(1, round(rd_frac * half_d))
    x = np.random.default_rng(seed).standard_normal((n, t, D)).astype(np.float32)
    y = ops.rope(x, offset=offset, base=base, layout=layout, rotary_dim=rd, inverse=inverse,
                 backend=backend)
    check_rope(y, x, np.arange(offset, offset + t), base, layout, rd, inverse)
