"""Checks of a whole model's training pass, shared by the architecture tests (test_moe.py,
test_ssm_model.py): the float64 model's gradients against central finite differences, and the
native float32 model against the float64 one."""
import numpy as np
import pytest

from kernelgpt.model import GPT


def batch(c, rows, seed):
    """(idx, targets) [rows, block_size] of random token ids."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, c.vocab_size, (rows, c.block_size)),
            rng.integers(0, c.vocab_size, (rows, c.block_size)))


def check_finite_differences(model, idx, tgt, indices, what=""):
    """d loss / d params[i] of the float64 `model` (backend="reference") against central
    differences (h = 1e-5) at each flat index i: |fd - grad| <= 1e-6 + 1e-5 |fd|."""
    model.zero_grad()
    model.forward_backward(idx, tgt)
    grads = model.grads.data.copy()
    for i in indices:
        old = model.params.data[i]
        model.params.data[i] = old + 1e-5
        fp = model.loss(idx, tgt)
        model.params.data[i] = old - 1e-5
        fm = model.loss(idx, tgt)
        model.params.data[i] = old
        fd = (fp - fm) / 2e-5
        assert abs(fd - grads[i]) <= 1e-6 + 1e-5 * abs(fd), (what, i, fd, grads[i])


def float32_and_float64_models(c, randomize, seed=3):
    """(native float32 model, float64 reference model) with the same parameters, set by
    randomize(model, seed) and rounded to float32."""
    ref = GPT(c, backend="reference")
    randomize(ref, seed)
    nat = GPT(c, seed=None)
    nat.params.data[...] = ref.params.data.astype(np.float32)
    ref.params.data[...] = nat.params.data
    return nat, ref


def check_float32_matches_float64(nat, ref, idx, tgt):
    """The same loss to 1e-5 and every gradient to 1e-4 of its scale."""
    for m in (ref, nat):
        m.zero_grad()
    assert nat.forward_backward(idx, tgt) == pytest.approx(ref.forward_backward(idx, tgt), rel=1e-5)
    for p in ref.params.names():
        err = np.abs(nat.grads[p] - ref.grads[p]).max()
        assert err <= 1e-4 * max(np.abs(ref.grads[p]).max(), 1e-3), p
