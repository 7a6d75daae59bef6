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


def test_bad_input():
    a = ops.to_bf16(np.ones((4, 8), np.float32) * 0.5)
    with pytest.raises(TypeError):
        ops.matmul_bf16(np.ones((4, 8), np.float32), a)
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
