"""State-space layers in the model (kernelgpt.ssm, GPTConfig(layers=...)): gradients against
float64 finite differences, the native float32 model against the float64 one, generation with
the recurrent cache equal to the full pass, its memory flat in the context length while the
KV cache grows, the cache's rules, bad configs, training from the command line."""
import subprocess
import sys

import numpy as np
import pytest

from kernelgpt.generate import generate
from kernelgpt.model import GPT, GPTConfig
from kernelgpt.ssm import RecurrentCache
from model_checks import (batch, check_finite_differences, check_float32_matches_float64,
                          float32_and_float64_models)

CONFIGS = {
    "ssm_only": GPTConfig(vocab_size=11, block_size=6, n_layer=2, n_head=2, n_embd=8,
                          layers="ssm,ssm", ssm_state=3, ssm_inner=10, ssm_dt_rank=2),
    "hybrid_llama": GPTConfig(vocab_size=13, block_size=7, n_layer=3, n_head=2, n_kv_head=1,
                              n_embd=8, norm="rmsnorm", activation="swiglu", positions="rope",
                              bias=False, mlp_hidden=10, layers=("attn", "ssm", "attn"),
                              ssm_state=5, ssm_inner=9),
    "hybrid_moe": GPTConfig(vocab_size=9, block_size=5, n_layer=2, n_head=1, n_embd=6,
                            mlp_hidden=8, n_expert=3, n_expert_active=2, layers="ssm,attn",
                            ssm_state=2, ssm_inner=7),
}


def _random(model, seed=1):
    """Parameters large enough that every path (the step, the decay rates) carries gradient."""
    rng = np.random.default_rng(seed)
    model.params.data[...] = rng.normal(0, 0.3, model.params.size)
    for name in model.params.names():
        if name.endswith("A_log"):  # decay rates exp(A_log) around 1
            model.params[name][...] = rng.normal(0, 0.5, model.params[name].shape)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_model_gradients_match_finite_differences(name):
    c = CONFIGS[name]
    model = GPT(c, backend="reference")
    _random(model)
    rng = np.random.default_rng(2)
    idx = rng.integers(0, c.vocab_size, (2, c.block_size))
    tgt = rng.integers(0, c.vocab_size, (2, c.block_size))
    offsets = model.params.offsets  # name -> (start, shape) in the flat buffer
    ssm_idx = [i for n, (o, shape) in offsets.items() if ".ssm." in n
               for i in range(o, o + int(np.prod(shape)))]
    picks = set(rng.choice(model.params.size, 120, replace=False).tolist())
    picks |= set(rng.choice(ssm_idx, 80, replace=False).tolist())
    check_finite_differences(model, idx, tgt, sorted(picks), name)
    for p in model.params.names():
        if ".ssm." in p:
            assert np.abs(model.grads[p]).max() > 1e-6, p  # every SSM parameter learns


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_native_float32_matches_the_float64_model(name):
    c = CONFIGS[name]
    nat, ref = float32_and_float64_models(c, _random)
    check_float32_matches_float64(nat, ref, *batch(c, 3, seed=4))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_recurrent_cache_gives_the_full_pass(name):
    """Prompt in one pass, then token by token: each step's logits equal the full pass's."""
    c = CONFIGS[name]
    model = GPT(c, seed=None)
    _random(model, 5)
    rng = np.random.default_rng(6)
    idx = rng.integers(0, c.vocab_size, (2, c.block_size))
    full = model.logits(idx)
    cache = model.new_cache(batch=2)
    assert isinstance(cache, RecurrentCache) and not model.supports_fast_decode(cache)
    steps = [model.forward_cached(idx[:, :3], cache)] + \
        [model.forward_cached(idx[:, t:t + 1], cache) for t in range(3, c.block_size)]
    np.testing.assert_allclose(np.stack(steps, 1), full[:, 2:], rtol=1e-4, atol=1e-5)
    assert cache.length == c.block_size


def test_generation_memory_is_flat_for_ssm_and_linear_for_attention():
    """The issue's check, measured: bytes a cache holds after 1k, 2k, 4k, 8k tokens."""
    kw = dict(vocab_size=50, block_size=8192, n_layer=2, n_head=2, n_embd=16, positions="rope",
              ssm_state=4)
    sizes = {}
    for kind in ("ssm,ssm", "attn,attn", "ssm,attn"):
        model = GPT(GPTConfig(**kw, layers=kind), seed=0)
        row = []
        for n in (1024, 2048, 4096, 8192):
            cache = model.new_cache(n)
            ids = np.random.default_rng(n).integers(0, 50, (1, n))
            for t in range(0, n, 2048):  # the whole context through the cache, in chunks
                model.forward_cached(ids[:, t:t + 2048], cache)
            assert cache.length == n
            row.append(cache.nbytes)
        sizes[kind] = row
    assert len(set(sizes["ssm,ssm"])) == 1 and sizes["ssm,ssm"][0] == 2 * 32 * 4 * 4
    kv = sizes["attn,attn"]
    assert kv == [kv[0] * m for m in (1, 2, 4, 8)]  # linear in the context
    hy = sizes["ssm,attn"]
    assert hy == [kv[0] // 2 * m + 32 * 4 * 4 for m in (1, 2, 4, 8)]  # one attention layer's worth


def test_recurrent_cache_rules():
    c = CONFIGS["hybrid_llama"]
    model = GPT(c, seed=0)
    cache = model.new_cache()
    model.forward_cached(np.array([[1, 2, 3]]), cache)
    assert cache.common_prefix([1, 2, 3, 4]) == 3  # extends it: go on from the state
    assert cache.common_prefix([1, 2, 3]) == 0     # the same prompt: its last logits need a rerun
    assert cache.common_prefix([1, 2, 4, 5]) == 0
    with pytest.raises(ValueError, match="rewound"):
        cache.truncate(2)
    cache.truncate(3)
    state = [s.copy() if s is not None else None for s in cache.state]
    assert any(s is not None and np.abs(s).max() > 0 for s in state)
    cache.reset()
    assert cache.length == 0 and all(s is None or not s.any() for s in cache.state)
    with pytest.raises(ValueError, match="exceeds"):
        model.forward_cached(np.zeros((1, c.block_size + 1), np.int64), model.new_cache())


def test_generate_with_a_hybrid_model():
    from kernelgpt.data import CharTokenizer
    tok = CharTokenizer("abcdefghijklmnopqrstuvwxyz ")
    c = GPTConfig(vocab_size=27, block_size=64, n_layer=2, n_head=2, n_embd=16,
                  layers="ssm,attn", ssm_state=4)
    model = GPT(c, seed=0)
    text = "".join(generate(model, tok, "hello", max_new_tokens=20, temperature=0.0))
    cache = model.new_cache()
    again = "".join(generate(model, tok, "hello", max_new_tokens=20, temperature=0.0, cache=cache))
    assert text == again and len(tok.encode(text)) == 20


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="unknown layer kind 'mlp'"):
        GPTConfig(n_layer=2, layers="ssm,mlp")
    with pytest.raises(ValueError, match="names 3 blocks, n_layer is 2"):
        GPTConfig(n_layer=2, layers=["ssm", "attn", "ssm"])
    with pytest.raises(ValueError, match="ssm_state"):
        GPTConfig(n_layer=1, layers="ssm", ssm_state=129)
    model = GPT(CONFIGS["ssm_only"], seed=0)
    with pytest.raises(ValueError, match="CPU only"):
        model.to("emu")
    assert GPTConfig.from_dict(CONFIGS["hybrid_moe"].to_dict()) == CONFIGS["hybrid_moe"]
    assert GPTConfig.from_dict({**CONFIGS["ssm_only"].to_dict(), "layers": ["ssm", "ssm"]}) == \
        CONFIGS["ssm_only"]


def test_train_a_hybrid_from_the_command_line(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 200)
    args = [sys.executable, "-m", "kernelgpt", "train", "--data", str(text), "--layers",
            "ssm,attn,ssm", "--n-embd", "32", "--block-size", "32", "--batch-size", "4",
            "--max-iters", "40", "--eval-interval", "40", "--eval-iters", "2", "--no-progress",
            "--no-plot", "--out", str(tmp_path / "run"), "--learning-rate", "3e-3"]
    r = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    from kernelgpt.checkpoint import load_checkpoint
    model, tok, *_ = load_checkpoint(tmp_path / "run")
    assert model.config.layers == ("ssm", "attn", "ssm") and model.config.n_layer == 3
    assert model.params["h.0.ssm.A_log"].shape == (64, 16)
    import csv
    losses = [float(r["loss"]) for r in csv.DictReader(open(tmp_path / "run" / "log.csv")) if r["loss"]]
    assert losses[-1] < losses[0] - 0.5
    r = subprocess.run(args[:7] + ["ssm,rnn"] + args[8:], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode != 0 and "layer kinds are attn and ssm" in r.stderr
