"""Q8_0 / Q4_1 quantized weights: the numpy quantizers and dequantizer against the `gguf`
package (llama.cpp's own Python reference, when installed), every native version against the
float64 reference on awkward shapes under every ISA, and bad input.

Tolerances:
  - dequantize: Q8_0 is exact (one product, rounded once, as numpy does); Q4_1 is one fused
    multiply-add d * q + m, numpy rounds twice: within 2^-23 * (|d q| + |m|).
  - quant_matmul "naive" / "fused" / "tiled" / "auto" (fp32 arithmetic on the dequantized
    weights): |y - y64| <= 1e-4 * (|x| @ |W|^T), the matmul tolerance of conftest.py.
  - "vnni" quantizes x to int8 per block of 32 (as llama.cpp does). Against the reference that
    quantizes x the same way (reference.quant_matmul_q8, bit-identical int8 activations and
    exact integer dots) it is within 1e-5 * (|x| @ |W|^T). Against the fp32 product its error
    is that of quantizing x: at most sum over blocks of dx / 2 * sum|w| (asserted), measured
    ~1e-3 * (|x| @ |W|^T), 0.5-1% of max|y| at K = 576.
"""
import numpy as np
import pytest

import kernelgpt
from kernelgpt import _C, ops, reference
from conftest import check_within, randn

QTYPES = ["q8_0", "q4_1"]
FP32_BACKENDS = ["naive", "fused", "tiled", "auto"]
# (M, N, K): M rows of x, N rows of W (output features), K in multiples of 32.
SHAPES = [(1, 1, 32), (1, 3, 64), (2, 7, 96), (3, 17, 576), (4, 31, 576), (5, 13, 1536),
          (1, 576, 576), (1, 192, 576), (7, 97, 160), (13, 50, 576), (1, 1031, 1536),
          (37, 131, 576), (128, 67, 576), (129, 1, 32),
          (1, 45, 96)]  # one row of x, a last group of 13 rows (both halves, the second partial)


def weights(rng, N, K, qtype):
    """Random quantized weights [N, K] with block scales that vary over 3 orders of magnitude
    and blocks of mixed sign (so Q4_1's minimum m is negative, zero-crossing, or positive)."""
    scale = np.exp(rng.uniform(-3, 3, size=(N, K // 32, 1))).astype(np.float32)
    shift = rng.uniform(-1, 1, size=(N, K // 32, 1)).astype(np.float32)
    w = (rng.standard_normal((N, K // 32, 32)).astype(np.float32) + shift) * scale
    return reference.quantize(w.reshape(N, K), qtype)


def matmul_bound(x, raw, qtype, N):
    K = x.shape[-1]
    w = reference.dequantize(raw, qtype, (N, K)).astype(np.float64)
    return np.abs(x.astype(np.float64)) @ np.abs(w).T


# ---- formats --------------------------------------------------------------------------------

def test_block_layout_by_hand():
    """One block of each type built byte by byte from the format description."""
    d = np.float16(0.5)
    q = np.arange(-16, 16, dtype=np.int8)
    raw = np.concatenate([np.frombuffer(d.tobytes(), np.uint8), q.view(np.uint8)])
    assert raw.size == 34
    expect = q.astype(np.float32) * np.float32(0.5)
    for backend in ("auto", "naive", "numpy"):
        np.testing.assert_array_equal(ops.dequantize(raw, "q8_0", (32,), backend=backend), expect)
    m = np.float16(-2.0)
    nib = np.arange(16, dtype=np.uint8) | (np.arange(15, -1, -1, dtype=np.uint8) << 4)
    raw = np.concatenate([np.frombuffer(d.tobytes(), np.uint8),
                          np.frombuffer(m.tobytes(), np.uint8), nib])
    assert raw.size == 20
    qs = np.concatenate([np.arange(16), np.arange(15, -1, -1)]).astype(np.float32)
    for backend in ("auto", "naive", "numpy"):
        np.testing.assert_array_equal(ops.dequantize(raw, 3, (32,), backend=backend),
                                      qs * 0.5 - 2.0)


@pytest.mark.parametrize("qtype", QTYPES)
def test_reference_matches_gguf(rng, qtype):
    gguf = pytest.importorskip("gguf")
    gtype = getattr(gguf.GGMLQuantizationType, qtype.upper())
    assert ops.QUANT_TYPES[qtype] == int(gtype)
    assert gguf.GGML_QUANT_SIZES[gtype] == (32, reference.QUANT_BLOCK_BYTES[qtype])
    w = randn(rng, 37, 576, scale=3.0)
    w[3, :32] = 0.0  # an all-zero block: d = 0
    w[5, 64:96] = 1.5  # a constant block: Q4_1's d = 0
    raw = reference.quantize(w, qtype)
    np.testing.assert_array_equal(raw, gguf.quants.quantize(w, gtype))
    deq = ops.dequantize(raw, qtype, w.shape)
    np.testing.assert_array_equal(reference.dequantize(raw, qtype, w.shape),
                                  gguf.quants.dequantize(raw, gtype))
    check_dequantize(deq, raw, qtype, w.shape)
    # Quantization error: half a step of the block's grid.
    step = (np.abs(w.reshape(-1, 32)).max(1) / 127 if qtype == "q8_0"
            else np.ptp(w.reshape(-1, 32), 1) / 15)
    err = np.abs(deq - w).reshape(-1, 32).max(1)
    assert (err <= 0.5 * step * 1.01 + 1e-3 * np.abs(w.reshape(-1, 32)).max(1)).all()


# ---- dequantize -----------------------------------------------------------------------------

def check_dequantize(out, raw, qtype, shape):
    expected = reference.dequantize(raw, qtype, shape)
    assert out.shape == tuple(shape) and out.dtype == np.float32
    nan = np.isnan(expected)
    np.testing.assert_array_equal(np.isnan(out), nan)
    if qtype == "q8_0":
        np.testing.assert_array_equal(out[~nan], expected[~nan])
        return
    blocks = raw.reshape(-1, 20)
    d = blocks[:, 0:2].copy().view(np.float16).astype(np.float64)
    m = blocks[:, 2:4].copy().view(np.float16).astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        bound = (2.0 ** -23 * (np.abs(d) * 15 + np.abs(m))).repeat(32, 1).reshape(shape)
        finite = ~nan & np.isfinite(expected)
        np.testing.assert_array_equal(out[~finite & ~nan], expected[~finite & ~nan])
        err = np.abs(out.astype(np.float64) - expected)
    assert (err[finite] <= bound[finite]).all()


@pytest.mark.parametrize("qtype", QTYPES)
@pytest.mark.parametrize("shape", [(32,), (1, 32), (3, 64), (7, 96), (1, 576), (13, 1536),
                                   (2, 3, 160), (4099, 32), (257, 576)])
@pytest.mark.parametrize("backend", ["auto", "naive"])
def test_dequantize(rng, isa, qtype, shape, backend):
    N, K = int(np.prod(shape[:-1])), shape[-1]
    raw = weights(rng, N, K, qtype).reshape(*shape[:-1], -1)
    check_dequantize(ops.dequantize(raw, qtype, shape, backend=backend), raw, qtype, shape)


@pytest.mark.parametrize("qtype", QTYPES)
@pytest.mark.parametrize("backend", ["auto", "naive"])
def test_dequantize_arbitrary_bytes(rng, isa, qtype, backend):
    """Any byte string is a valid block: scales that are subnormal, zero, -0, inf or NaN
    halves convert exactly like numpy's float16 (the generic build converts in software)."""
    bb = reference.QUANT_BLOCK_BYTES[qtype]
    raw = rng.integers(0, 256, size=(101, 5 * bb), dtype=np.uint8)
    specials = np.array([0x0001, 0x03ff, 0x0000, 0x8000, 0x7c00, 0xfc00, 0x7e00, 0x0400, 0x7bff,
                         0x8001], dtype=np.uint16)
    for i, h in enumerate(specials):
        raw[i, 0:2] = np.frombuffer(h.tobytes(), np.uint8)
        if qtype == "q4_1":
            raw[i + 10, 2:4] = np.frombuffer(h.tobytes(), np.uint8)
    with np.errstate(invalid="ignore", over="ignore"):
        check_dequantize(ops.dequantize(raw, qtype, (101, 160), backend=backend), raw, qtype,
                         (101, 160))


def test_dequantize_out_and_numpy_backend(rng):
    raw = weights(rng, 9, 64, "q4_1")
    out = np.full((9, 64), np.nan, np.float32)
    r = ops.dequantize(raw, "q4_1", (9, 64), out=out)
    assert r is out
    check_dequantize(out, raw, "q4_1", (9, 64))
    ref = ops.dequantize(raw, "Q4_1", [9, 64], backend="numpy")
    np.testing.assert_allclose(ref, out, rtol=1e-6, atol=1e-6 * np.abs(out).max())


# ---- quant_matmul ---------------------------------------------------------------------------

@pytest.mark.parametrize("qtype", QTYPES)
@pytest.mark.parametrize("M,N,K", SHAPES)
@pytest.mark.parametrize("backend", FP32_BACKENDS)
def test_quant_matmul(rng, isa, qtype, M, N, K, backend):
    raw = weights(rng, N, K, qtype)
    x = randn(rng, M, K)
    y = ops.quant_matmul(x, raw, qtype, N, backend=backend)
    expected = reference.quant_matmul(x.astype(np.float64), raw, qtype, N)
    check_within(y, expected, matmul_bound(x, raw, qtype, N), 1e-4, f"{backend} {qtype}")


@pytest.mark.parametrize("qtype", QTYPES)
@pytest.mark.parametrize("M,N,K", SHAPES)
def test_quant_matmul_vnni(rng, isa, qtype, M, N, K):
    raw = weights(rng, N, K, qtype)
    x = randn(rng, M, K)
    x[0, :32] = 0.0  # a block of zeros: dx = 0
    y = ops.quant_matmul(x, raw, qtype, N, backend="vnni")
    bound = matmul_bound(x, raw, qtype, N)
    check_within(y, reference.quant_matmul_q8(x, raw, qtype, N), bound, 1e-5, "vnni vs q8 ref")
    # Rounding x to the int8 grid moves each x by at most dx / 2: a strict bound on the
    # difference from the fp32 product, which is ~1e-3 * bound in practice.
    _, dx = reference.quantize_activations_q8(x)
    w = np.abs(reference.dequantize(raw, qtype, (N, K)).astype(np.float64)).reshape(N, -1, 32)
    rounding = 0.5 * dx.astype(np.float64) @ w.sum(axis=2).T
    fp = reference.quant_matmul(x.astype(np.float64), raw, qtype, N)
    check_within(y, fp, rounding * (1 + 1e-4) + 1e-5 * bound, 1.0, "vnni vs fp32 product")
    assert np.abs(y - fp).max() <= 0.02 * np.abs(fp).max() + 1e-3 * bound.max()


@pytest.mark.parametrize("x_bits", [8, 16])
@pytest.mark.parametrize("qtype", QTYPES)
@pytest.mark.parametrize("M,N,K", SHAPES)
def test_quant_matmul_packed(rng, isa, qtype, M, N, K, x_bits):
    """The int8 path (packed panels, csrc/kernels/quant_packed.cpp) against its oracle
    reference.quant_matmul_q8 (the same integers, float64 scales), on every ISA copy; and
    against the fp32 product within what rounding x to its grid can move (x_bits 8: half a
    step of max|x|/127 per element; 16: 1/512 of it)."""
    raw = weights(rng, N, K, qtype)
    x = randn(rng, M, K) * np.exp(rng.uniform(-2, 2, (M, K))).astype(np.float32)  # outliers
    x[0, :32] = 0.0  # a block of zeros: dx = 0
    panels = ops.quant_pack(raw, qtype, N, K)
    assert panels.nbytes == 64 + -(-N // 16) * 16 * raw.nbytes // N  # header + the same bytes
    y = ops.quant_matmul_packed(x, panels, qtype, N, x_bits=x_bits)
    bound = matmul_bound(x, raw, qtype, N)
    check_within(y, reference.quant_matmul_q8(x, raw, qtype, N, x_bits=x_bits), bound, 1e-5,
                 f"packed x_bits={x_bits} vs q8 ref")
    _, d1 = reference.quantize_activations_q8(x)
    w = np.abs(reference.dequantize(raw, qtype, (N, K)).astype(np.float64)).reshape(N, -1, 32)
    step = 0.5 if x_bits == 8 else 1.5 / 256 + 1e-6  # max |x - grid| per element, units of d1
    rounding = step * d1.astype(np.float64) @ w.sum(axis=2).T
    fp = reference.quant_matmul(x.astype(np.float64), raw, qtype, N)
    check_within(y, fp, rounding * (1 + 1e-4) + 1e-5 * bound, 1.0, "packed vs fp32 product")


def test_activation_two_passes_reference(rng):
    """quantize_activations_q8x2: q1 is the one-pass Q8_0 grid, |q2| <= 127, and dx * qx is
    within d1 / 512 of x (d1 the one-pass step); NaN / inf blocks get dx NaN and qx 0."""
    x = randn(rng, 7, 96, scale=3.0) * np.exp(rng.uniform(-3, 3, (7, 96))).astype(np.float32)
    x[2, 32:64] = 0.0
    x[4, 5] = np.nan
    q, dx = reference.quantize_activations_q8x2(x)
    q1, d1 = reference.quantize_activations_q8(x)
    q2 = q - 256 * q1.astype(np.int32)
    assert np.abs(q2).max() <= 127
    ok = np.isfinite(d1).repeat(32, axis=1)
    np.testing.assert_array_equal(np.isnan(dx), np.isnan(d1))
    assert (q[~ok] == 0).all()
    approx = (dx.repeat(32, axis=1).astype(np.float64) * q)[ok]
    diff, step = np.abs(approx - x[ok]), d1.repeat(32, axis=1)[ok].astype(np.float64)
    assert (diff[step == 0] == 0).all()  # the zero block
    # half a fine step (1/512 of d1), or up to 1.5 fine steps where q2 was clamped to +-127
    assert (diff <= step * 1.5 / 256 * (1 + 1e-6)).all()
    assert (diff > step / 512 * (1 + 1e-6)).mean() < 0.02


@pytest.mark.parametrize("x_bits", [8, 16])
def test_packed_rows_independent_of_batch_and_threads(rng, x_bits):
    """Each output row is the same whether x comes alone or with other rows, on any thread
    count (bitwise): what batched decoding and the decode runner's work pool rely on."""
    raw = weights(rng, 211, 576, "q4_1")
    panels = ops.quant_pack(raw, "q4_1", 211, 576)
    x = randn(rng, 19, 576)
    full = ops.quant_matmul_packed(x, panels, "q4_1", 211, x_bits=x_bits)
    for i in (0, 7, 18):
        np.testing.assert_array_equal(
            ops.quant_matmul_packed(x[i], panels, "q4_1", 211, x_bits=x_bits), full[i])
    threads = kernelgpt.get_num_threads()
    try:
        kernelgpt.set_num_threads(1)
        one = ops.quant_matmul_packed(x, panels, "q4_1", 211, x_bits=x_bits)
    finally:
        kernelgpt.set_num_threads(threads)
    np.testing.assert_array_equal(one, full)


@pytest.mark.parametrize("qtype", QTYPES)
def test_packed_nan_inf_and_bad_input(rng, isa, qtype):
    raw = weights(rng, 9, 96, qtype)
    panels = ops.quant_pack(raw, qtype, 9, 96)
    x = randn(rng, 5, 96)
    x[1, 40] = np.nan
    x[2, 0] = np.inf
    x[3, 95] = -np.inf
    for x_bits in (8, 16):
        y = ops.quant_matmul_packed(x, panels, qtype, 9, x_bits=x_bits)
        assert np.isnan(y[1:4]).all() and np.isfinite(y[[0, 4]]).all()
    with pytest.raises(ValueError, match="x_bits"):
        ops.quant_matmul_packed(x, panels, qtype, 9, x_bits=12)
    with pytest.raises(ValueError, match="packed panels"):
        ops.quant_matmul_packed(x, raw.reshape(-1), qtype, 9)  # GGUF blocks, not panels
    with pytest.raises(ValueError, match="another shape"):
        ops.quant_matmul_packed(x, panels, qtype, 8)  # the same bytes, but 8 rows
    other = "q4_1" if qtype == "q8_0" else "q8_0"
    with pytest.raises(ValueError, match="packed panels"):
        ops.quant_matmul_packed(x, panels, other, 9)
    bad = panels.copy()
    bad[0] = 0
    with pytest.raises(ValueError, match="KGQP"):
        ops.quant_matmul_packed(x, bad, qtype, 9)
    with pytest.raises(ValueError, match="multiple of 32"):
        ops.quant_matmul_packed(np.ascontiguousarray(x[:, :50]), panels, qtype, 9)
    with pytest.raises(TypeError):
        ops.quant_matmul_packed(x.astype(np.float64), panels, qtype, 9)
    with pytest.raises(ValueError, match="contiguous"):
        ops.quant_matmul_packed(x[:, ::2], panels, qtype, 9)
    with pytest.raises(ValueError, match="bytes"):
        ops.quant_pack(raw[:-1], qtype, 9, 96)
    with pytest.raises(ValueError, match="qtype"):
        ops.quant_pack(raw, "q5_0", 9, 96)


def test_activation_quantization_is_llama_cpp_q8_0(rng):
    """reference.quantize_activations_q8 is Q8_0 itself (the bytes gguf writes)."""
    x = randn(rng, 5, 96, scale=2.0)
    x[1, 32:64] = 0.0
    qx, dx = reference.quantize_activations_q8(x)
    blocks = reference.quantize_q8_0(x).reshape(5, 3, 34)
    np.testing.assert_array_equal(blocks[..., 2:].view(np.int8).reshape(5, 96), qx)
    np.testing.assert_array_equal(blocks[..., :2].copy().view(np.float16)[..., 0],
                                  dx.astype(np.float16))


@pytest.mark.parametrize("qtype", QTYPES)
def test_lm_head_shape(rng, qtype):
    """SmolLM2's tied embedding as LM head: 49152 x 576; decode (M=1) and a short prefill."""
    N, K = 49152, 576
    raw = weights(rng, N, K, qtype)
    for M in (1, 9):
        x = randn(rng, M, K)
        expected = reference.quant_matmul(x.astype(np.float64), raw, qtype, N)
        bound = matmul_bound(x, raw, qtype, N)
        check_within(ops.quant_matmul(x, raw, qtype, N), expected, bound, 1e-4, f"auto M={M}")


def test_one_dimensional_x_and_out(rng):
    raw = weights(rng, 33, 96, "q8_0")
    x = randn(rng, 96)
    y = ops.quant_matmul(x, raw, "q8_0", 33)
    assert y.shape == (33,)
    for backend in ("naive", "fused", "tiled", "vnni", "numpy"):
        out = np.full(33, np.nan, np.float32)
        assert ops.quant_matmul(x, raw, 8, 33, out=out, backend=backend) is out
        tol = 1e-2 if backend == "vnni" else 1e-5
        np.testing.assert_allclose(out, y, rtol=tol, atol=tol * np.abs(y).max())
    x2 = randn(rng, 6, 96)
    out = np.empty((6, 33), np.float32)
    ops.quant_matmul(x2, raw, "q8_0", 33, out=out)
    np.testing.assert_array_equal(out, ops.quant_matmul(x2, raw, "q8_0", 33))


def test_memmap_raw(rng, tmp_path):
    """gguf.GGUFReader hands out numpy.memmap views whose dtype went through
    newbyteorder(): equal to np.uint8 but another dtype object."""
    raw = weights(rng, 19, 160, "q4_1")
    path = tmp_path / "w.bin"
    raw.tofile(path)
    mm = np.memmap(path, dtype=np.uint8, mode="r").reshape(raw.shape)
    mm = mm.view(mm.dtype.newbyteorder("<"))
    assert mm.dtype == np.uint8
    x = randn(rng, 2, 160)
    np.testing.assert_array_equal(ops.quant_matmul(x, mm, "q4_1", 19),
                                  ops.quant_matmul(x, raw, "q4_1", 19))
    np.testing.assert_array_equal(ops.dequantize(mm, "q4_1", (19, 160)),
                                  ops.dequantize(raw, "q4_1", (19, 160)))


def test_gguf_shaped_raw_and_rows_independent_of_batch(rng):
    """raw may keep GGUF's [N, row_bytes] shape; each output row of the fused path is the
    same whether x comes alone or with other rows (bitwise), and for any thread count."""
    raw = weights(rng, 211, 576, "q4_1")
    assert raw.shape == (211, ops.quant_row_bytes("q4_1", 576))
    x = randn(rng, 4, 576)
    full = ops.quant_matmul(x, raw, "q4_1", 211, backend="fused")
    for i in range(4):
        np.testing.assert_array_equal(ops.quant_matmul(x[i], raw, "q4_1", 211, backend="fused"),
                                      full[i])
    threads = kernelgpt.get_num_threads()
    try:
        kernelgpt.set_num_threads(1)
        one = [ops.quant_matmul(x, raw, "q4_1", 211, backend=b) for b in ("fused", "vnni")]
    finally:
        kernelgpt.set_num_threads(threads)
    np.testing.assert_array_equal(one[0], full)
    np.testing.assert_array_equal(one[1], ops.quant_matmul(x, raw, "q4_1", 211, backend="vnni"))


def test_nan_and_inf_propagate(rng):
    raw = weights(rng, 5, 64, "q8_0")
    x = randn(rng, 2, 64)
    x[0, 3] = np.nan
    x[1, 40] = np.inf
    for backend in ("auto", "naive", "tiled"):
        y = ops.quant_matmul(x, raw, "q8_0", 5, backend=backend)
        assert np.isnan(y[0]).all()
        assert not np.isfinite(y[1]).any()


@pytest.mark.parametrize("qtype", QTYPES)
def test_vnni_nan_and_inf_give_nan(rng, isa, qtype):
    """Quantizing a block that holds NaN or inf has no meaningful int8 grid: its rows of y
    come out NaN (not a silently finite number), like the reference."""
    raw = weights(rng, 9, 96, qtype)
    x = randn(rng, 5, 96)
    x[1, 40] = np.nan
    x[2, 0] = np.inf
    x[3, 95] = -np.inf
    y = ops.quant_matmul(x, raw, qtype, 9, backend="vnni")
    assert np.isnan(y[1:4]).all()
    assert np.isfinite(y[[0, 4]]).all()
    with np.errstate(invalid="ignore"):
        ref = reference.quant_matmul_q8(x, raw, qtype, 9)
    assert np.isnan(ref[1:4]).all()


def test_kernel_path_reported():
    assert "fused" in ops.kernel_paths()["quant"]


# ---- bad input ------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["auto", "naive", "numpy"])
def test_bad_input(rng, backend):
    raw = weights(rng, 4, 64, "q4_1")
    x = randn(rng, 3, 64)
    mm = lambda *a, **k: ops.quant_matmul(*a, backend=backend, **k)  # noqa: E731
    with pytest.raises(ValueError, match="bytes"):
        mm(x, raw[:, :-1].copy(), "q4_1", 4)  # wrong raw size
    with pytest.raises(ValueError, match="bytes"):
        mm(x, raw, "q4_1", 5)  # n_rows does not match raw
    with pytest.raises(ValueError, match="bytes"):
        mm(x, raw, "q8_0", 4)  # the size of another type
    with pytest.raises(ValueError, match="multiple of 32"):
        mm(randn(rng, 3, 48), raw, "q4_1", 4)
    with pytest.raises(ValueError):
        mm(x, raw, "q4_1", 0)
    with pytest.raises(TypeError, match="uint8"):
        mm(x, raw.view(np.int8), "q4_1", 4)
    with pytest.raises(TypeError):
        mm(x, raw.tobytes(), "q4_1", 4)
    with pytest.raises(TypeError, match="float32"):
        mm(x.astype(np.float64), raw, "q4_1", 4)
    with pytest.raises(ValueError):
        mm(randn(rng, 2, 3, 64), raw, "q4_1", 4)
    with pytest.raises(ValueError, match="qtype"):
        mm(x, raw, "q4_0", 4)
    with pytest.raises(ValueError, match="qtype"):
        mm(x, raw, 2, 4)
    with pytest.raises(TypeError, match="qtype"):
        mm(x, raw, 3.0, 4)
    with pytest.raises(TypeError, match="n_rows"):
        mm(x, raw, "q4_1", 4.0)
    with pytest.raises(TypeError, match="shape"):
        ops.dequantize(raw, "q4_1", (4.0, 64), backend=backend)
    with pytest.raises(ValueError):
        ops.dequantize(raw, "q4_1", (0, 64), backend=backend)
    with pytest.raises(ValueError):
        ops.dequantize(raw, "q4_1", (), backend=backend)
    with pytest.raises(ValueError, match="shape"):
        mm(x, raw, "q4_1", 4, out=np.empty((3, 5), np.float32))
    with pytest.raises(ValueError, match="bytes"):
        ops.dequantize(raw, "q4_1", (4, 32), backend=backend)
    with pytest.raises(ValueError, match="multiple of 32"):
        ops.dequantize(raw, "q4_1", (8, 40), backend=backend)
    with pytest.raises(TypeError, match="uint8"):
        ops.dequantize(raw.astype(np.float32), "q4_1", (4, 64), backend=backend)


def test_bad_layout_and_aliasing(rng):
    raw = weights(rng, 8, 64, "q8_0")
    x = randn(rng, 3, 128)
    with pytest.raises(ValueError, match="contiguous"):
        ops.quant_matmul(x[:, ::2], raw, "q8_0", 8)
    wide = np.zeros((8, 2 * raw.shape[1]), np.uint8)
    wide[:, ::2] = raw
    with pytest.raises(ValueError, match="contiguous"):
        ops.quant_matmul(x[:, :64].copy(), wide[:, ::2], "q8_0", 8)
    with pytest.raises(ValueError, match="contiguous"):
        ops.dequantize(wide[:, ::2], "q8_0", (8, 64))
    buf = np.zeros(64, np.float32)
    with pytest.raises(ValueError, match="overlap"):
        ops.quant_matmul(buf, raw, "q8_0", 8, out=buf[:8])
    raw_f32 = np.zeros(600, np.float32)  # out= must not overlap raw's bytes
    view = raw_f32.view(np.uint8)[:raw.size]
    view[:] = raw.reshape(-1)
    with pytest.raises(ValueError, match="overlap"):
        ops.dequantize(view, "q8_0", (512,), out=raw_f32[:512])
    ro = np.empty(8, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        ops.quant_matmul(randn(rng, 64), raw, "q8_0", 8, out=ro)
    with pytest.raises(ValueError, match=r"unknown version 5 for the C\+\+ kernel, expected one "
                                         r"of 0 \(auto, by shape\), 1 \(naive\)"):
        _C.quant_matmul(randn(rng, 64), raw, "q8_0", 8, None, 5)  # 5 (warp) is CUDA only


def _smollm2_gguf():
    """The real SmolLM2 GGUF if this machine has it: $KERNELGPT_SMOLLM2_GGUF, or the fetch
    cache when a 'smollm2' source is registered there. Never downloads."""
    import os
    path = os.environ.get("KERNELGPT_SMOLLM2_GGUF")
    if path and os.path.isfile(path):
        return path
    try:
        from kernelgpt.io import fetch
        found = fetch.cached("smollm2")
    except Exception:  # no such source registered (yet)
        return None
    return str(found) if found is not None else None


def test_real_smollm2_tensors(rng):
    """Every Q4_1 / Q8_0 tensor of SmolLM2-135M-Instruct.Q4_1.gguf, read by gguf.GGUFReader:
    dequantize against gguf.quants, quant_matmul against the float64 product."""
    gguf = pytest.importorskip("gguf")
    path = _smollm2_gguf()
    if path is None:
        pytest.skip("SmolLM2 GGUF not available (set KERNELGPT_SMOLLM2_GGUF)")
    reader = gguf.GGUFReader(path)
    count = 0
    for t in reader.tensors:
        qtype = t.tensor_type.name.lower()
        if qtype not in ("q4_1", "q8_0"):
            continue
        K, N = int(t.shape[0]), int(t.shape[1])  # ggml lists the fastest dimension first
        expected = gguf.quants.dequantize(t.data, t.tensor_type)
        check_dequantize(ops.dequantize(t.data, qtype, (N, K)), np.asarray(t.data), qtype,
                         (N, K))
        np.testing.assert_array_equal(reference.dequantize(t.data, qtype, (N, K)), expected)
        if count % 10 == 0 or N > 10000:  # a sample of the matmuls (the LM head included)
            x = randn(rng, 3, K)
            y = ops.quant_matmul(x, t.data, qtype, N)
            ref = x.astype(np.float64) @ expected.astype(np.float64).T
            check_within(y, ref, matmul_bound(x, np.asarray(t.data), qtype, N), 1e-4, t.name)
        count += 1
    assert count == 211  # 30 layers x 7 Q4_1 matrices + the Q8_0 token embedding
