"""The GPT model: the hand-written backward against float64 finite differences, the native
float32 model against the float64 reference model, PyTorch (optional) as a second oracle, and
the KV-cache inference path against the full forward pass."""
import sys
from pathlib import Path

import numpy as np
import pytest

from kernelgpt.model import GPT, GPTConfig

CONFIGS = {
    "gpt2": GPTConfig(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=8),
    "llama": GPTConfig(vocab_size=17, block_size=9, n_layer=2, n_head=4, n_kv_head=2, n_embd=16,
                       norm="rmsnorm", activation="swiglu", positions="rope", bias=False,
                       mlp_hidden=24, norm_eps=1e-5),
    "sinusoidal_untied": GPTConfig(vocab_size=11, block_size=7, n_layer=1, n_head=2, n_embd=6,
                                   positions="sinusoidal", tied_head=False, activation="relu"),
    "rope_interleaved": GPTConfig(vocab_size=9, block_size=6, n_layer=1, n_head=2, n_embd=8,
                                  positions="rope", rope_layout="interleaved"),
}


def batch(c, B=2, T=None, seed=0):
    rng = np.random.default_rng(seed)
    T = T or c.block_size
    idx = rng.integers(0, c.vocab_size, size=(B, T))
    tgt = rng.integers(0, c.vocab_size, size=(B, T))
    tgt[0, 1] = -100  # an ignored position
    return idx, tgt


def random_params(model, seed=1):
    rng = np.random.default_rng(seed)
    model.params.data[...] = rng.normal(0, 0.3, model.params.size)  # not the 0/1 init


@pytest.mark.parametrize("name", list(CONFIGS))
def test_reference_backward_matches_finite_differences(name):
    c = CONFIGS[name]
    model = GPT(c, backend="reference")
    random_params(model)
    idx, tgt = batch(c)
    model.zero_grad()
    model.forward_backward(idx, tgt)
    grads = model.grads.data.copy()
    rng = np.random.default_rng(2)
    which = rng.choice(model.params.size, size=min(120, model.params.size), replace=False)
    h = 1e-5
    for i in which:
        old = model.params.data[i]
        model.params.data[i] = old + h
        fp = model.loss(idx, tgt)
        model.params.data[i] = old - h
        fm = model.loss(idx, tgt)
        model.params.data[i] = old
        fd = (fp - fm) / (2 * h)
        assert abs(fd - grads[i]) <= 1e-6 + 1e-5 * abs(fd), (name, i, fd, grads[i])


@pytest.mark.parametrize("name", list(CONFIGS))
def test_native_float32_matches_reference_float64(name):
    c = CONFIGS[name]
    ref = GPT(c, backend="reference")
    random_params(ref)
    nat = GPT(c, seed=None)
    nat.params.data[...] = ref.params.data.astype(np.float32)
    ref.params.data[...] = nat.params.data  # the same (float32-representable) weights
    idx, tgt = batch(c)
    for m in (ref, nat):
        m.zero_grad()
    loss_ref = ref.forward_backward(idx, tgt)
    loss_nat = nat.forward_backward(idx, tgt)
    assert abs(loss_nat - loss_ref) <= 1e-5 * abs(loss_ref)
    for pname in ref.params.names():
        g_ref, g_nat = ref.grads[pname], nat.grads[pname]
        err = np.abs(g_nat - g_ref).max()
        assert err <= 1e-4 * max(np.abs(g_ref).max(), 1e-3), (pname, err, np.abs(g_ref).max())
    logits_ref = ref.logits(idx)
    logits_nat = nat.logits(idx)
    np.testing.assert_allclose(logits_nat, logits_ref, rtol=1e-4, atol=1e-4 * np.abs(logits_ref).max())


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_trailing_ignored_positions_change_nothing(name):
    """Batches padded at the end (targets ignored there): the model skips those positions, and
    the loss, the gradients and the log-probs equal those of the batch cut before the padding
    and do not depend on the padding's token ids."""
    c = CONFIGS[name]
    model = GPT(c, seed=None)
    random_params(model)
    idx, tgt = batch(c, B=3)
    cut = c.block_size - 3
    tgt[:, cut:] = -100
    tgt[1, cut - 1] = -100  # one row ends earlier still
    results = []
    for pad_seed in (0, 1):
        padded = idx.copy()
        padded[:, cut:] = np.random.default_rng(pad_seed).integers(0, c.vocab_size, (3, 3))
        for x, y in ((padded, tgt), (idx[:, :cut], tgt[:, :cut])):
            model.zero_grad()
            loss = model.forward_backward(x, y)
            model.forward_backward(x, y, token_weights=0.5 * (y != -100))  # (a policy gradient)
            lp = model.token_logprobs(x, y)
            results.append((loss, model.grads.data.copy(), lp[:, :cut], model.loss(x, y)))
            assert np.all(lp[:, cut:] == 0) and np.all(lp[y == -100] == 0)
    first = results[0]
    for loss, grads, lp, eval_loss in results[1:]:
        assert loss == first[0] and eval_loss == first[3]
        np.testing.assert_array_equal(grads, first[1])
        np.testing.assert_array_equal(lp, first[2])


def test_matches_pytorch():
    torch = pytest.importorskip("torch")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from torch_gpt import TorchGPT
    for name in ("gpt2", "llama", "sinusoidal_untied"):
        c = CONFIGS[name]
        model = GPT(c, seed=3)
        random_params(model, seed=4)
        tm = TorchGPT(c)
        tm.load_from(model)
        idx, tgt = batch(c, B=3)
        model.zero_grad()
        loss = model.forward_backward(idx, tgt)
        logits_t, loss_t = tm(torch.from_numpy(idx), torch.from_numpy(tgt))
        loss_t.backward()
        assert abs(loss - loss_t.item()) <= 1e-4 * abs(loss_t.item())
        np.testing.assert_allclose(model.logits(idx), logits_t.detach().numpy(), rtol=1e-4,
                                   atol=1e-4 * float(logits_t.detach().abs().max()))
        for pname, g in tm.grads_like(model).items():
            err = np.abs(model.grads[pname] - g).max()
            assert err <= 1e-4 * max(np.abs(g).max(), 1e-3), (name, pname, err)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_kv_cache_decoding_matches_full_forward(name):
    c = CONFIGS[name]
    model = GPT(c, seed=5)
    random_params(model, seed=6)
    idx, _ = batch(c, B=1)
    full = model.logits(idx)[0]
    cache = model.new_cache()
    split = c.block_size // 2
    first = model.forward_cached(idx[:, :split], cache, all_logits=True)[0]
    np.testing.assert_allclose(first, full[:split], rtol=1e-4, atol=1e-5)
    for t in range(split, c.block_size):
        step = model.forward_cached(idx[:, t:t + 1], cache)[0]
        np.testing.assert_allclose(step, full[t], rtol=1e-4, atol=1e-5)
    assert cache.length == c.block_size
    with pytest.raises(ValueError, match="exceeds"):
        model.forward_cached(idx[:, :1], cache)


def test_gradient_accumulation_adds_up():
    c = CONFIGS["gpt2"]
    model = GPT(c, seed=0)
    idx, tgt = batch(c, B=4)
    model.zero_grad()
    model.forward_backward(idx, tgt)
    whole = model.grads.data.copy()
    model.zero_grad()
    # two halves with no ignored token in either count the same tokens as the whole batch
    tgt2 = tgt.copy()
    tgt2[0, 1] = 3
    model.zero_grad()
    model.forward_backward(idx, tgt2)
    whole = model.grads.data.copy()
    model.zero_grad()
    model.forward_backward(idx[:2], tgt2[:2], grad_scale=0.5)
    model.forward_backward(idx[2:], tgt2[2:], grad_scale=0.5)
    np.testing.assert_allclose(model.grads.data, whole, rtol=1e-4, atol=1e-6)


def test_bad_inputs():
    c = CONFIGS["gpt2"]
    model = GPT(c)
    idx, tgt = batch(c)
    with pytest.raises(ValueError, match="block_size"):
        model.loss(np.zeros((1, c.block_size + 1), np.int64), np.zeros((1, c.block_size + 1), np.int64))
    with pytest.raises(ValueError, match="token ids"):
        model.loss(idx + c.vocab_size, tgt)
    with pytest.raises(ValueError, match="targets shape"):
        model.loss(idx, tgt[:, :-1])
    with pytest.raises(ValueError):
        model.loss(idx, np.full_like(tgt, c.vocab_size))
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=10, n_head=3)
    with pytest.raises(ValueError, match="unknown"):
        GPTConfig(norm="batchnorm")
    with pytest.raises(ValueError, match="integer"):
        model.loss(idx.astype(np.float32), tgt)


@pytest.mark.parametrize("fields", [dict(n_head=0, positions="rope"), dict(n_head=0),
                                    dict(n_head=-2, positions="rope"), dict(n_kv_head=0)])
def test_config_without_heads_is_a_value_error(fields):
    """A head count below 1 is named, never a ZeroDivisionError (found by fuzzing the
    checkpoint config: tests/data/fuzz/checkpoint_config)."""
    with pytest.raises(ValueError, match="GPTConfig"):
        GPTConfig(vocab_size=11, n_layer=1, **fields)
