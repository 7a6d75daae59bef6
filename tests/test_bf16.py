"""bfloat16 weights: to_bf16 / from_bf16 bit for bit against the numpy reference (rounding
ties, NaN, inf, overflow, denormals by hand; random bit patterns; every bf16 value), every
bf16_matmul version against the float64 reference on awkward shapes under every ISA, bad input.

Tolerances:
  - to_bf16 / from_bf16: exact (same bits).
  - bf16_matmul "naive" / "widen" / "tiled" / "auto" (fp32 arithmetic on the exact widened
    weights): |y - y64| <= 1e-4 * (|x| @ |W|^T), the matmul tolerance of conftest.py.
  - "dpbf16" rounds x to bf16 first: against the reference on the rounded x within the same
    1e-4 bound; against the unrounded x within 2^-8 * (|x| @ |W|^T) (x's rounding error is at
    most 2^-9 relative per element).
"""
import numpy as np
import pytest

from kernelgpt import _C, ops, reference
from conftest import check_within, randn

FP32_BACKENDS = ["naive", "widen", "tiled", "auto"]
# (M, N, K): K not a multiple of the vector width, of 32, primes, SmolLM2's 576 and 1536.
SHAPES = [(1, 1, 1), (1, 3, 7), (2, 7, 17), (3, 17, 31), (4, 31, 33), (5, 13, 1536),
          (1, 576, 576), (1, 192, 576), (7, 97, 161), (13, 50, 576), (1, 1031, 1536),
          (17, 131, 576), (37, 29, 47), (128, 67, 576), (129, 1, 32)]


def bits_of(values):
    return np.array(values, dtype=np.uint32).view(np.float32)


def matmul_bound(x, w):
    return np.abs(x.astype(np.float64)) @ np.abs(reference.from_bf16(w).astype(np.float64)).T


def bf16_weights(rng, N, K):
    """Rows whose scales vary over 3 orders of magnitude, rounded to bf16."""
    scale = np.exp(rng.uniform(-3, 3, size=(N, 1))).astype(np.float32)
    return reference.to_bf16(randn(rng, N, K) * scale)


# ---- conversion ------------------------------------------------------------------------------

# (float32 bits, expected bf16 bits): the rounding rules one case at a time.
EDGE_CASES = [
    (0x3F800000, 0x3F80),  # 1.0 exactly
    (0x3F808000, 0x3F80),  # tie between 0x3F80 and 0x3F81: to the even one (down)
    (0x3F818000, 0x3F82),  # tie between 0x3F81 and 0x3F82: to the even one (up)
    (0x3F808001, 0x3F81),  # just above the tie: up
    (0x3F807FFF, 0x3F80),  # just below the tie: down
    (0xBF808000, 0xBF80),  # negative tie: even, sign kept
    (0xBF818000, 0xBF82),
    (0x3F7FFFFF, 0x3F80),  # rounding carries into the exponent
    (0x7F7FFFFF, 0x7F80),  # the largest float rounds to inf (as IEEE round-to-nearest does)
    (0x7F7F7FFF, 0x7F7F),  # the largest bf16 stays finite
    (0x7F800000, 0x7F80),  # +inf
    (0xFF800000, 0xFF80),  # -inf
    (0x7FC00000, 0x7FC0),  # quiet NaN
    (0xFFC00000, 0xFFC0),  # negative NaN keeps its sign
    (0x7F800001, 0x7FC0),  # NaN whose payload is only in the dropped bits: stays NaN (quiet)
    (0x7FBFFFFF, 0x7FFF),  # signalling NaN: made quiet, top payload kept, never rounds to inf
    (0x00000000, 0x0000),  # +0
    (0x80000000, 0x8000),  # -0
    (0x00000001, 0x0000),  # the smallest denormal rounds to 0
    (0x00008000, 0x0000),  # denormal tie: to even (0)
    (0x00018000, 0x0002),  # denormal tie: to even (2)
    (0x0000C000, 0x0001),  # denormal above the tie: up
    (0x00010000, 0x0001),  # the smallest bf16 denormal, exact
    (0x807FFFFF, 0x8080),  # the largest negative denormal rounds up to the smallest normal
]


@pytest.mark.parametrize("backend", ["auto", "numpy"])
def test_to_bf16_edge_cases(isa, backend):
    x = bits_of([c[0] for c in EDGE_CASES])
    got = ops.to_bf16(x, backend=backend)
    assert got.dtype == np.uint16 and got.shape == x.shape
    for (f, want), g in zip(EDGE_CASES, got):
        assert int(g) == want, f"to_bf16(0x{f:08X}) = 0x{int(g):04X}, expected 0x{want:04X}"


@pytest.mark.parametrize("shape", [(1,), (7,), (1, 17), (3, 5, 129), (70001,)])
def test_to_bf16_random_bits_match_reference(isa, rng, shape):
    """Random bit patterns: every exponent, NaNs, infs and denormals included."""
    x = rng.integers(0, 2**32, size=shape, dtype=np.uint64).astype(np.uint32).view(np.float32)
    got = ops.to_bf16(x)
    np.testing.assert_array_equal(got, reference.to_bf16(x))
    nan = np.isnan(x)
    assert np.isnan(ops.from_bf16(got)[nan]).all()
    finite = np.isfinite(x)
    # |x - bf16(x)| <= half a unit in bf16's last place (where the result is finite)
    back = ops.from_bf16(got).astype(np.float64)
    ok = finite & np.isfinite(back)
    assert (np.abs(back[ok] - x[ok]) <= np.abs(x[ok]).astype(np.float64) * 2.0**-8 + 2.0**-133).all()


def test_every_bf16_value_round_trips(isa):
    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    wide = ops.from_bf16(bits)
    np.testing.assert_array_equal(wide.view(np.uint32), bits.astype(np.uint32) << 16)
    np.testing.assert_array_equal(wide.view(np.uint32), reference.from_bf16(bits).view(np.uint32))
    back = ops.to_bf16(wide)
    nan = np.isnan(wide)
    np.testing.assert_array_equal(back[~nan], bits[~nan])
    np.testing.assert_array_equal(back[nan], bits[nan] | 0x40)  # NaNs come back quiet


def test_conversion_out_and_shapes(rng):
    x = randn(rng, 3, 33)
    out = np.empty((3, 33), np.uint16)
    assert ops.to_bf16(x, out=out) is out
    np.testing.assert_array_equal(out, reference.to_bf16(x))
    wide = np.empty((3, 33), np.float32)
    assert ops.from_bf16(out, out=wide) is wide
    np.testing.assert_array_equal(wide, reference.from_bf16(out))
    np.testing.assert_array_equal(ops.from_bf16(out, backend="numpy"), wide)


# ---- matmul ----------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", FP32_BACKENDS)
@pytest.mark.parametrize("M,N,K", SHAPES)
def test_matmul_matches_reference(isa, rng, backend, M, N, K):
    x = randn(rng, M, K)
    w = bf16_weights(rng, N, K)
    y = ops.bf16_matmul(x, w, backend=backend)
    expected = x.astype(np.float64) @ reference.from_bf16(w).astype(np.float64).T
    check_within(y, expected, matmul_bound(x, w), 1e-4, f"{backend} {M}x{N}x{K}")


@pytest.mark.parametrize("backend", FP32_BACKENDS + ["dpbf16"])
def test_matmul_vector_x_and_out(isa, rng, backend):
    x = randn(rng, 577)
    w = bf16_weights(rng, 41, 577)
    out = np.full(41, np.nan, np.float32)
    y = ops.bf16_matmul(x, w, out=out, backend=backend)
    assert y is out
    x_used = reference.from_bf16(reference.to_bf16(x)) if backend == "dpbf16" else x
    expected = x_used.astype(np.float64) @ reference.from_bf16(w).astype(np.float64).T
    check_within(y, expected, matmul_bound(x, w), 1e-4, backend)


def test_matmul_tiled_spans_several_panels(isa, rng):
    """N x K above one 4 MiB panel of widened weights (1820 rows at K = 576): the panel loop
    and its copy of columns into y."""
    M, N, K = 37, 3001, 576
    x, w = randn(rng, M, K), bf16_weights(rng, N, K)
    expected = x.astype(np.float64) @ reference.from_bf16(w).astype(np.float64).T
    for backend in ("tiled", "auto"):
        check_within(ops.bf16_matmul(x, w, backend=backend), expected, matmul_bound(x, w), 1e-4,
                     backend)


@pytest.mark.parametrize("M,N,K", SHAPES)
def test_dpbf16_matches_reference_on_rounded_x(isa, rng, M, N, K):
    x = randn(rng, M, K)
    w = bf16_weights(rng, N, K)
    y = ops.bf16_matmul(x, w, backend="dpbf16").astype(np.float64)
    xr = reference.from_bf16(reference.to_bf16(x)).astype(np.float64)
    wf = reference.from_bf16(w).astype(np.float64)
    scale = matmul_bound(x, w)
    check_within(y, xr @ wf.T, scale, 1e-4, f"dpbf16 vs rounded x {M}x{N}x{K}")
    check_within(y, x.astype(np.float64) @ wf.T, scale, 2.0**-8, f"dpbf16 vs x {M}x{N}x{K}")


def test_versions_agree_with_numpy_backend(rng):
    x, w = randn(rng, 6, 100), bf16_weights(rng, 23, 100)
    ref = ops.bf16_matmul(x, w, backend="numpy")
    np.testing.assert_array_equal(ref, reference.bf16_matmul(x, w))
    check_within(ops.bf16_matmul(x, w), ref.astype(np.float64), matmul_bound(x, w), 1e-4, "auto")


def test_inf_and_nan_in_x_propagate(rng):
    x, w = randn(rng, 2, 40), bf16_weights(rng, 3, 40)
    x[0, 5] = np.nan
    x[1, 7] = np.inf
    for backend in FP32_BACKENDS + ["dpbf16"]:
        y = ops.bf16_matmul(x, w, backend=backend)
        assert np.isnan(y[0]).all(), backend
        assert not np.isfinite(y[1]).any(), backend


def test_bf16_path_reported():
    assert "bf16" in ops.kernel_paths() and isinstance(_C.bf16_path(), str)


# ---- bad input -------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["auto", "naive", "numpy"])
def test_matmul_bad_input(rng, backend):
    x, w = randn(rng, 3, 32), bf16_weights(rng, 5, 32)
    f = lambda *a, **k: ops.bf16_matmul(*a, backend=backend, **k)  # noqa: E731
    with pytest.raises(TypeError, match="x"):
        f(x.astype(np.float64), w)
    with pytest.raises(TypeError, match="w"):
        f(x, w.astype(np.int16))
    with pytest.raises(TypeError, match="w"):
        f(x, reference.from_bf16(w))
    with pytest.raises(TypeError, match="w"):
        f(x, w.tolist())
    with pytest.raises(ValueError, match="w"):
        f(x, w[:, :31].copy())  # K mismatch
    with pytest.raises(ValueError):
        f(x[None], w)  # rank 3 x
    with pytest.raises(ValueError):
        f(x, w.reshape(-1))  # rank 1 w
    with pytest.raises(ValueError):
        f(x, np.empty((0, 32), np.uint16))
    with pytest.raises(ValueError, match="out"):
        f(x, w, out=np.empty((3, 4), np.float32))
    if backend != "numpy":
        with pytest.raises(ValueError, match="contiguous"):
            f(x, np.repeat(w, 2, axis=1)[:, ::2])
        with pytest.raises(ValueError, match="contiguous"):
            f(randn(rng, 3, 64)[:, ::2], w)
        with pytest.raises(ValueError, match="overlap"):
            f(x, w, out=x.reshape(-1)[:15].reshape(3, 5))


def test_matmul_unknown_backend(rng):
    with pytest.raises(ValueError, match="version|backend"):
        ops.bf16_matmul(randn(rng, 4), reference.to_bf16(randn(rng, 2, 4)), backend="fastest")


@pytest.mark.parametrize("backend", ["auto", "numpy"])
def test_conversion_bad_input(rng, backend):
    with pytest.raises(TypeError, match="x"):
        ops.to_bf16(np.ones(3, np.float64), backend=backend)
    with pytest.raises(TypeError):
        ops.to_bf16([1.0, 2.0], backend=backend)
    with pytest.raises(TypeError, match="bits"):
        ops.from_bf16(np.ones(3, np.int16), backend=backend)
    with pytest.raises(TypeError, match="bits"):
        ops.from_bf16(np.ones(3, np.float32), backend=backend)
    with pytest.raises(ValueError):
        ops.from_bf16(np.empty(0, np.uint16), backend=backend)
    with pytest.raises((TypeError, ValueError), match="out"):
        ops.to_bf16(randn(rng, 4), out=np.empty(4, np.float32), backend=backend)
    with pytest.raises(ValueError, match="out"):
        ops.to_bf16(randn(rng, 4), out=np.empty(5, np.uint16), backend=backend)
    with pytest.raises(ValueError, match="out"):
        ops.from_bf16(np.ones(4, np.uint16), out=np.empty(5, np.float32), backend=backend)
    with pytest.raises(ValueError):
        ops.to_bf16(randn(rng, 4), backend="dpbf16")


def test_to_bf16_rejects_overlapping_out():
    x = np.arange(8, dtype=np.float32)
    with pytest.raises(ValueError, match="overlap"):
        ops.to_bf16(x, out=x.view(np.uint16)[:8])
    with pytest.raises(ValueError, match="contiguous"):
        ops.to_bf16(x[::2])
