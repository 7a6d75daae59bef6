"""ops.matmul_bf16 on the CPU (bf16 operands, float32 accumulation: mixed-precision training)
against reference.matmul_bf16 (exact products, float64 sums), and bf16 training against fp32."""
import numpy as np
import pytest

from kernelgpt import ops, reference
from kernelgpt.config import GPTConfig
from kernelgpt.model import GPT

SHAPES = [(1, 1, 1), (1, 7, 3), (5, 1, 2), (7, 13, 5), (17, 97, 31), (64, 130, 769),
          (131, 49, 1537)]


@pytest.mark.parametrize("backend", ["naive", "packed", "auto"])
@pytest.mark.parametrize("m,n,k", SHAPES)
@pytest.mark.parametrize("ta,tb", [(False, False), (False, True), (True, False), (True, True)])
def test_matches_reference(backend, m, n, k, ta, tb):
    if backend == "naive" and m * n * k > 200_000:
        pytest.skip("naive is slow")
    rng = np.random.default_rng(m * 1000 + n + k)
    a = ops.to_bf16(rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32))
    b = ops.to_bf16(rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32))
    bias = rng.standard_normal(n).astype(np.float32)
    ref = reference.matmul_bf16(a, b, bias, ta, tb)
    got = ops.matmul_bf16(a, b, bias, trans_a=ta, trans_b=tb, backend=backend)
    scale = np.abs(ref).max()
    assert np.isfinite(got).all() and np.abs(got - ref).max() <= 1e-5 * scale * max(1, k / 64)
    c0 = rng.standard_normal((m, n)).astype(np.float32)
    c = c0.copy()
    ops.matmul_bf16(a, b, trans_a=ta, trans_b=tb, out=c, accumulate=True, backend=backend)
    want = c0 + reference.matmul_bf16(a, b, None, ta, tb)
    assert np.abs(c - want).max() <= 1e-5 * max(1.0, np.abs(want).max()) * max(1, k / 64)


@pytest.mark.parametrize("backend", ["naive", "packed"])
@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (7, 13, 5), (37, 101, 97), (131, 49, 1537),
                                   (300, 200, 771)])
@pytest.mark.parametrize("ta,tb", [(False, False), (False, True), (True, False), (True, True)])
def test_float32_operands_round_like_to_bf16(backend, m, n, k, ta, tb):
    """float32 operands are rounded as they are packed: bit for bit to_bf16 first (NaN, inf,
    ties and denormals included)."""
    if backend == "naive" and m * n * k > 200_000:
        pytest.skip("naive is slow")
    rng = np.random.default_rng(m + 7 * n + 13 * k)
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)
    a.flat[:: max(1, a.size // 5)] = np.float32(1.00390625)  # a tie: rounds to even (1.0)
    b.flat[1:: max(2, b.size // 3)] = np.float32(3e-39)      # a denormal
    want = ops.matmul_bf16(ops.to_bf16(a), ops.to_bf16(b), trans_a=ta, trans_b=tb,
                           backend=backend)
    for aa, bb in [(a, b), (ops.to_bf16(a), b), (a, ops.to_bf16(b))]:
        got = ops.matmul_bf16(aa, bb, trans_a=ta, trans_b=tb, backend=backend)
        np.testing.assert_array_equal(got, want)
    a[0, 0] = np.nan
    got = ops.matmul_bf16(a, b, trans_a=ta, trans_b=tb, backend=backend)
    assert np.isnan(got[0]).all()


@pytest.mark.parametrize("backend", ["naive", "packed", "numpy"])
@pytest.mark.parametrize("activation,approximate", [("gelu", "tanh"), ("gelu", "none"),
                                                    ("relu", "tanh"), ("silu", "tanh")])
@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (5, 47, 3), (67, 211, 129), (257, 97, 384)])
def test_activation_epilogue_matches_unfused(backend, activation, approximate, m, n, k):
    if backend == "naive" and m * n * k > 200_000:
        pytest.skip("naive is slow")
    rng = np.random.default_rng(m * n + k)
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = (rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    kw = {"approximate": approximate} if activation == "gelu" else {}
    fwd, bwd = getattr(ops, activation), getattr(ops, activation + "_backward")
    # forward: the pre-activation and activation(pre) in one call
    pre = ops.matmul_bf16(x, w, bias, trans_b=True, backend=backend)
    h, y = np.empty((m, n), np.float32), np.empty((m, n), np.float32)
    ops.matmul_bf16(x, w, bias, trans_b=True, out=h, activation=activation,
                    approximate=approximate, act_out=y, backend=backend)
    np.testing.assert_array_equal(h, pre)
    want = fwd(pre, **kw)
    assert np.abs(y - want).max() <= 1e-5 * max(1.0, np.abs(want).max())
    # backward: (dy @ W) * f'(pre)
    dy = rng.standard_normal((m, k)).astype(np.float32)
    w2 = rng.standard_normal((k, n)).astype(np.float32)
    got = ops.matmul_bf16(dy, w2, activation=activation, approximate=approximate, act_x=pre,
                          backend=backend)
    want = bwd(ops.matmul_bf16(dy, w2, backend=backend), pre, **kw)
    assert np.isfinite(got).all()
    assert np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max())


def test_bad_input():
    a = ops.to_bf16(np.ones((4, 8), np.float32) * 0.5)
    with pytest.raises(TypeError):
        ops.matmul_bf16(np.ones((4, 8), np.float64), a)
    with pytest.raises(TypeError):
        ops.matmul_bf16(a, np.ones((8, 4), np.int32))
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    with pytest.raises(ValueError, match="act_out"):
        ops.matmul_bf16(x, x, trans_b=True, activation="gelu")
    with pytest.raises(ValueError, match="activation"):
        ops.matmul_bf16(x, x, trans_b=True, act_out=np.empty((4, 4), np.float32))
    with pytest.raises(ValueError, match="unknown activation"):
        ops.matmul_bf16(x, x, trans_b=True, activation="swish", act_out=np.empty((4, 4), np.float32))
    with pytest.raises(ValueError, match="act_x"):
        ops.matmul_bf16(x, x, trans_b=True, activation="gelu", act_x=np.empty((4, 5), np.float32))
    with pytest.raises(ValueError, match="act_out"):
        out = np.empty((4, 4), np.float32)
        ops.matmul_bf16(x, x, trans_b=True, out=out, activation="gelu", act_out=out)
    with pytest.raises(ValueError, match="C-contiguous"):
        ops.matmul_bf16(np.asfortranarray(x), x, trans_b=True)
    with pytest.raises(ValueError, match="inner"):
        ops.matmul_bf16(a, a)
    with pytest.raises(ValueError, match="accumulate"):
        ops.matmul_bf16(a, a, trans_b=True, accumulate=True)
    with pytest.raises(ValueError):
        ops.matmul_bf16(a, a, trans_b=True, backend="wmma")


def test_bf16_training_step_matches_fp32():
    c = GPTConfig(vocab_size=65, block_size=32, n_layer=2, n_head=4, n_embd=64)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 65, (4, 32)), rng.integers(0, 65, (4, 32))
    a = GPT(c, seed=1)
    b = GPT(c, seed=1).to("cpu", precision="bf16")
    assert b.precision == "bf16"
    la, lb = a.forward_backward(x, y), b.forward_backward(x, y)
    assert abs(la - lb) <= 1e-2 * abs(la)
    for name in a.grads.names():
        g1 = a.grads[name].ravel().astype(np.float64)
        g2 = b.grads[name].ravel().astype(np.float64)
        cos = g1 @ g2 / (np.linalg.norm(g1) * np.linalg.norm(g2) + 1e-30)
        assert cos >= 0.999, (name, cos)
    auto = GPT(c, seed=1).to("cpu", precision="auto")
    assert auto.precision in ("bf16", "fp32")
    with pytest.raises(ValueError, match="precision"):
        GPT(c, seed=1).to("cpu", precision="fp8")


@pytest.mark.parametrize("activation", ["gelu", "relu"])
def test_fused_mlp_matches_unfused_bf16_step(activation):
    """GPT's bf16 step with the MLP's activation in the GEMM epilogues against the same step
    through the unfused ops (matmul_bf16, then the activation kernels): the oracle."""
    from kernelgpt.precision import MixedPrecisionOps

    class Unfused(MixedPrecisionOps):
        fuses_activation = False

    c = GPTConfig(vocab_size=67, block_size=24, n_layer=2, n_head=2, n_embd=48,
                  activation=activation)
    rng = np.random.default_rng(3)
    x, y = rng.integers(0, 67, (3, 23)), rng.integers(0, 67, (3, 23))
    fused = GPT(c, seed=2).to("cpu", precision="bf16")
    plain = GPT(c, seed=2).to("cpu", precision="bf16")
    plain.ops = Unfused()
    lf, lp = fused.forward_backward(x, y), plain.forward_backward(x, y)
    assert abs(lf - lp) <= 1e-5 * abs(lp)
    for name in fused.grads.names():
        g1, g2 = fused.grads[name], plain.grads[name]
        assert np.abs(g1 - g2).max() <= 1e-4 * max(np.abs(g2).max(), 1e-12), name


def test_bf16_peak_is_measured_and_used_by_the_bench_table():
    from kernelgpt import _C, bench
    gf = _C.measure_bf16_gflops(1, 0.01)
    assert np.isfinite(gf) and gf > 0
    with pytest.raises(ValueError, match="threads"):
        _C.measure_bf16_gflops(0)
    peaks = {"fma_gflops": 100.0, "bf16_gflops": 200.0, "dram_gbs": 10.0}
    r = bench.Result("matmul bf16", "[2x2]@[2x2]", {"kernelgpt": 1e-9 * 100}, 100.0 * 100, 0.0,
                     peak="bf16_gflops")
    assert "| 50% " in bench.format_table([r], peaks)  # 100 GFLOP/s of the 200 bf16 peak
