"""Mixture of experts (kernelgpt.moe, GPTConfig(n_expert=..)): the grouped layer against the
naive one and the float64 numpy oracle on awkward shapes, the model's gradients against float64
finite differences, one expert with top-1 equal to the dense model, generation with the cache,
and training from the command line."""
import subprocess
import sys

import numpy as np
import pytest

from kernelgpt import moe, ops, reference
from kernelgpt.model import GPT, GPTConfig
from kernelgpt.train import TrainConfig, train
from model_checks import (batch, check_finite_differences, check_float32_matches_float64,
                          float32_and_float64_models)


def _layer(rng, N, C, E, F, activation, bias, dtype=np.float32):
    F1 = 2 * F if activation == "swiglu" else F
    x = rng.standard_normal((N, C)).astype(dtype)
    wr = rng.standard_normal((E, C)).astype(dtype)
    w1 = (rng.standard_normal((E, F1, C)) * 0.4).astype(dtype)
    w2 = (rng.standard_normal((E, C, F)) * 0.4).astype(dtype)
    b1 = (rng.standard_normal((E, F1)) * 0.1).astype(dtype) if bias else None
    b2 = (rng.standard_normal((E, C)) * 0.1).astype(dtype) if bias else None
    return x, wr, w1, b1, w2, b2


def _act(o, activation, F):
    if activation == "swiglu":
        return lambda h: o.swiglu(np.ascontiguousarray(h[:, :F]), np.ascontiguousarray(h[:, F:]))
    return getattr(o, activation)


def _act_backward(o, activation, F):
    if activation == "swiglu":
        def back(d, h):
            dg, du = o.swiglu_backward(d, np.ascontiguousarray(h[:, :F]), np.ascontiguousarray(h[:, F:]))
            return np.concatenate([dg, du], axis=1)
        return back
    return getattr(o, activation + "_backward")


SHAPES = [(1, 8, 1, 1, 5), (7, 6, 3, 2, 4), (13, 10, 5, 3, 7), (64, 16, 4, 1, 12), (31, 12, 6, 6, 9)]


@pytest.mark.parametrize("N,C,E,k,F", SHAPES)
@pytest.mark.parametrize("activation", ["gelu", "relu", "swiglu"])
def test_grouped_equals_naive_and_the_numpy_oracle(N, C, E, k, F, activation):
    rng = np.random.default_rng(N * 100 + E * 10 + k)
    x, wr, w1, b1, w2, b2 = _layer(rng, N, C, E, F, activation, bias=(N % 2 == 1))
    want = reference.moe_mlp(x, wr, w1, b1, w2, b2, k, activation)
    dy = rng.standard_normal((N, C)).astype(np.float32)
    outs = {}
    for version in moe.VERSIONS:
        y, aux, saved = moe.moe_forward(ops, x, wr, w1, b1, w2, b2, k, _act(ops, activation, F),
                                        version, aux_weight=0.01)
        assert y.dtype == np.float32 and np.isfinite(y).all()
        np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
        grads = {"router": np.zeros_like(wr), "w1": np.zeros_like(w1), "w2": np.zeros_like(w2),
                 "b1": None if b1 is None else np.zeros_like(b1),
                 "b2": None if b2 is None else np.zeros_like(b2)}
        dx = moe.moe_backward(ops, dy, saved, wr, w1, w2, _act_backward(ops, activation, F), grads)
        outs[version] = (aux, dx, grads)
    (a1, dx1, g1), (a2, dx2, g2) = outs["grouped"], outs["naive"]
    assert a1 == pytest.approx(a2, rel=1e-12)
    np.testing.assert_allclose(dx1, dx2, rtol=1e-4, atol=1e-5)
    for name in g1:
        if g1[name] is not None:
            np.testing.assert_allclose(g1[name], g2[name], rtol=1e-4, atol=1e-5, err_msg=name)


def test_routing_and_the_balance_loss():
    z = np.array([[2.0, 1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]], np.float32)
    p, top, g = moe.route(z, 2)
    assert top.tolist() == [[0, 1], [0, 1]]  # ties: the lower expert first
    np.testing.assert_allclose(g.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(g[1], [0.5, 0.5])
    _, _, g1 = moe.route(z, 1)
    np.testing.assert_allclose(g1[:, 0], p[np.arange(2), top[:, 0]])  # top-1: the probability
    # uniform router: the balance loss is its minimum, the weight itself
    rng = np.random.default_rng(0)
    x, wr, w1, b1, w2, b2 = _layer(rng, 12, 8, 4, 5, "gelu", bias=False)
    _, aux, _ = moe.moe_forward(ops, x, np.zeros_like(wr), w1, b1, w2, b2, 2, ops.gelu,
                                aux_weight=0.1)
    assert aux == pytest.approx(0.1)
    with pytest.raises(ValueError, match="k .* must be in"):
        moe.moe_forward(ops, x, wr, w1, b1, w2, b2, 5, ops.gelu)
    with pytest.raises(ValueError, match="version"):
        moe.moe_forward(ops, x, wr, w1, b1, w2, b2, 1, ops.gelu, version="fast")


CONFIGS = {
    "gelu_top2": GPTConfig(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=8,
                           n_expert=3, n_expert_active=2, mlp_hidden=12),
    "swiglu_top1": GPTConfig(vocab_size=11, block_size=7, n_layer=1, n_head=2, n_embd=8,
                             norm="rmsnorm", activation="swiglu", positions="rope", bias=False,
                             mlp_hidden=10, n_expert=4, n_expert_active=1, moe_aux_weight=0.05),
}


def _random(model, seed=1):
    model.params.data[...] = np.random.default_rng(seed).normal(0, 0.3, model.params.size)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_model_gradients_match_finite_differences(name):
    c = CONFIGS[name]
    model = GPT(c, backend="reference")
    _random(model)
    rng = np.random.default_rng(2)
    idx = rng.integers(0, c.vocab_size, (2, c.block_size))
    tgt = rng.integers(0, c.vocab_size, (2, c.block_size))
    check_finite_differences(model, idx, tgt, rng.choice(model.params.size, 150, replace=False),
                             name)
    assert np.abs(model.grads[[n for n in model.params.names() if "router" in n][0]]).max() > 0


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_native_float32_matches_the_float64_model(name):
    c = CONFIGS[name]
    nat, ref = float32_and_float64_models(c, _random)
    idx, tgt = batch(c, 3, seed=4)
    check_float32_matches_float64(nat, ref, idx, tgt)
    # the cached forward (generation) gives the full pass's logits
    full = nat.logits(idx[:1])
    cache = nat.new_cache()
    steps = [nat.forward_cached(idx[:1, :3], cache)] + \
        [nat.forward_cached(idx[:1, t:t + 1], cache) for t in range(3, c.block_size)]
    np.testing.assert_allclose(np.stack([s[0] for s in steps]), full[0, 2:], rtol=1e-4, atol=1e-5)
    assert not nat.supports_fast_decode(cache)


def test_one_expert_top1_is_the_dense_model():
    base = dict(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=8, mlp_hidden=16)
    dense = GPT(GPTConfig(**base), seed=5)
    routed = GPT(GPTConfig(**base, n_expert=1, n_expert_active=1, moe_aux_weight=0.0), seed=None)
    for name in routed.params.names():
        if "router" in name:
            routed.params[name][...] = np.random.default_rng(1).normal(size=routed.params[name].shape)
        else:
            routed.params[name][...] = dense.params[name].reshape(routed.params[name].shape)
    rng = np.random.default_rng(6)
    idx = rng.integers(0, 13, (2, 8))
    tgt = rng.integers(0, 13, (2, 8))
    dense.zero_grad()
    routed.zero_grad()
    assert routed.forward_backward(idx, tgt) == pytest.approx(dense.forward_backward(idx, tgt), rel=1e-6)
    for name in dense.params.names():
        np.testing.assert_allclose(routed.grads[name].reshape(dense.grads[name].shape),
                                   dense.grads[name], rtol=1e-5, atol=1e-7, err_msg=name)
    np.testing.assert_allclose(routed.logits(idx), dense.logits(idx), rtol=1e-5, atol=1e-6)


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="n_expert_active must be in"):
        GPTConfig(n_expert=2, n_expert_active=3)
    with pytest.raises(ValueError, match="n_expert must be >= 0"):
        GPTConfig(n_expert=-1)
    model = GPT(CONFIGS["gelu_top2"], seed=0)
    with pytest.raises(ValueError, match="CPU only"):
        model.to("emu")


def test_train_a_mixture_from_the_command_line(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 200)
    args = [sys.executable, "-m", "kernelgpt", "train", "--data", str(text), "--moe", "4x2",
            "--n-layer", "2", "--n-embd", "32", "--block-size", "32", "--batch-size", "4",
            "--max-iters", "30", "--eval-interval", "30", "--eval-iters", "2", "--no-progress",
            "--no-plot", "--out", str(tmp_path / "run"), "--learning-rate", "3e-3"]
    r = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    from kernelgpt.checkpoint import load_checkpoint
    model, tok, *_ = load_checkpoint(tmp_path / "run")
    assert model.config.n_expert == 4 and model.config.n_expert_active == 2
    assert model.params["h.0.mlp.c_fc.weight"].shape == (4, 128, 32)
    import csv
    losses = [float(r["loss"]) for r in csv.DictReader(open(tmp_path / "run" / "log.csv")) if r["loss"]]
    assert losses[-1] < losses[0] - 0.5
    r = subprocess.run(args[:5] + ["--moe", "2x3"] + args[7:], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode != 0 and "--moe" in r.stderr


def test_train_api_resumes_a_mixture_exactly(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("abcdefgh ijklmnop qrstu vwxyz\n" * 100)
    cfg = GPTConfig(vocab_size=1, block_size=16, n_layer=1, n_head=2, n_embd=16, n_expert=3,
                    n_expert_active=2)
    kw = dict(data=[str(text)], batch_size=3, max_iters=12, eval_interval=6, eval_iters=1,
              progress=False, plot=False, log_interval=1)
    whole = train(TrainConfig(out=str(tmp_path / "a"), **kw), cfg)
    train(TrainConfig(out=str(tmp_path / "b"), **kw), cfg, stop_after=5)
    rest = train(TrainConfig(out=str(tmp_path / "b"), **kw), resume=True)
    assert [r["loss"] for r in whole["log"] if "loss" in r] == \
        [r["loss"] for r in rest["log"] if "loss" in r]
