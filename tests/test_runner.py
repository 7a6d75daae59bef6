"""The C++ decode runner (_C.Transformer, GPT.decode_next) and the native sampler
(_C.sample_token, Sampler.fast) against their Python versions: forward_cached's logits for
every model flavour, sampling.py's tokens for the same seed, generate()'s text with and
without them, and bad input."""
import numpy as np
import pytest

from kernelgpt import _C
from kernelgpt.data import CharTokenizer
from kernelgpt.generate import GenerationStats, generate
from kernelgpt.model import GPT, GPTConfig
from kernelgpt.sampling import Sampler, SamplingConfig, filtered_distribution, sample

# Every flavour model.py supports, at awkward sizes (odd / prime dims, head_dim 64 and 128,
# which the attention kernel specialises, vocab 1, GQA and MQA).
FLAVOURS = {
    "gpt2": dict(vocab_size=67, block_size=41, n_layer=2, n_head=5, n_embd=30),
    "gpt2-relu-sinusoidal": dict(vocab_size=13, block_size=29, n_layer=3, n_head=3, n_embd=21,
                                 activation="relu", positions="sinusoidal", tied_head=False),
    "llama-half-gqa": dict(vocab_size=53, block_size=37, n_layer=2, n_head=6, n_kv_head=2,
                           n_embd=48, mlp_hidden=37, norm="rmsnorm", activation="swiglu",
                           positions="rope", bias=False, tied_head=False, norm_eps=1e-6),
    "llama-interleaved-mqa": dict(vocab_size=31, block_size=23, n_layer=2, n_head=4, n_kv_head=1,
                                  n_embd=40, norm="rmsnorm", activation="swiglu",
                                  positions="rope", rope_layout="interleaved", bias=False,
                                  rope_base=500.0),
    "rope-layernorm-bias": dict(vocab_size=1, block_size=17, n_layer=1, n_head=3, n_embd=30,
                                positions="rope", activation="gelu"),
    "rmsnorm-gelu-bias": dict(vocab_size=19, block_size=19, n_layer=2, n_head=1, n_embd=7,
                              norm="rmsnorm", positions="learned", bias=True),
    "head64-gqa": dict(vocab_size=97, block_size=300, n_layer=1, n_head=4, n_kv_head=2,
                       n_embd=256, positions="rope", norm="rmsnorm", activation="swiglu",
                       bias=False, mlp_hidden=131),
    "head128": dict(vocab_size=65, block_size=20, n_layer=1, n_head=2, n_embd=256),
}


def random_model(cfg: GPTConfig, seed=0) -> GPT:
    """A model whose every parameter (norm weights and biases included) is random."""
    model = GPT(cfg, seed=None)
    rng = np.random.default_rng(seed)
    model.params.data[:] = rng.normal(0.0, 0.25, model.params.size).astype(np.float32)
    for name in model.params.names():
        if ".ln_" in name or name.startswith("ln_f"):
            model.params[name] += np.float32(1.0)
    return model


def assert_logits_close(actual, expected, what):
    """|actual - expected| <= 1e-5 |expected| + 1e-5 max|expected|, elementwise."""
    expected = np.asarray(expected, np.float64)
    err = np.abs(actual.astype(np.float64) - expected)
    bound = 1e-5 * np.abs(expected) + 1e-5 * np.abs(expected).max() + 1e-30
    assert (err <= bound).all(), f"{what}: error {err.max():.3g} (max|logit| {np.abs(expected).max():.3g})"


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_runner_matches_forward_cached(flavour, isa):
    """Every position up to block_size, on every instruction-set copy of the kernels."""
    cfg = GPTConfig(**FLAVOURS[flavour])
    model = random_model(cfg, seed=len(flavour))
    rng = np.random.default_rng(7)
    tokens = rng.integers(0, cfg.vocab_size, cfg.block_size)
    python_cache, native_cache = model.new_cache(), model.new_cache()
    out = np.empty(cfg.vocab_size, np.float32)
    for pos, token in enumerate(tokens):  # every position up to block_size
        expected = model.forward_cached(np.array([[token]]), python_cache)[0]
        got = model.decode_next(int(token), native_cache, out=out)
        assert got is out
        assert_logits_close(got, expected, f"{flavour} position {pos}")
    assert native_cache.length == python_cache.length == cfg.block_size
    assert native_cache.tokens == python_cache.tokens == [int(t) for t in tokens]
    for i in range(cfg.n_layer):
        np.testing.assert_allclose(native_cache.k[i], python_cache.k[i], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(native_cache.v[i], python_cache.v[i], rtol=1e-5, atol=1e-6)


def test_runner_after_batched_prefill_and_against_float64_reference():
    """Prefill through forward_cached, then decode natively; the last logits also match the
    float64 reference model (the numpy oracle) on the whole sequence."""
    cfg = GPTConfig(**FLAVOURS["llama-half-gqa"])
    model = random_model(cfg, seed=3)
    rng = np.random.default_rng(11)
    prompt = rng.integers(0, cfg.vocab_size, 13)
    cache = model.new_cache()
    model.forward_cached(prompt[None], cache)
    seq = list(prompt)
    for _ in range(9):
        token = int(rng.integers(0, cfg.vocab_size))
        logits = model.decode_next(token, cache)
        seq.append(token)
    expected = model.logits(np.array([seq]))[0, -1]
    assert_logits_close(logits, expected, "after prefill")
    ref = GPT(cfg, params=model.params.data.astype(np.float64), backend="reference")
    expected64 = ref.logits(np.array([seq]))[0, -1]
    err = np.abs(logits - expected64).max()
    assert err <= 1e-4 * np.abs(expected64).max(), err


def test_runner_follows_parameter_updates_and_cache_changes():
    cfg = GPTConfig(**FLAVOURS["gpt2"])
    model = random_model(cfg)
    cache = model.new_cache()
    model.decode_next(3, cache)
    model.params.data *= np.float32(0.5)  # in place (training, loading): the runner sees it
    cache.reset()
    model.decode_next(3, cache)
    a = model.decode_next(4, cache)
    b = model.logits(np.array([[3, 4]]))[0, -1]
    assert_logits_close(a, b, "after an in-place update")
    other = model.new_cache(max_len=5)  # a new cache gets its own runner
    for t in [1, 2]:
        c = model.decode_next(t, other)
    assert_logits_close(c, model.logits(np.array([[1, 2]]))[0, -1], "second cache")
    cache.truncate(1)  # rewinding the cache: decode overwrites position 1
    d = model.decode_next(9, cache)
    assert_logits_close(d, model.logits(np.array([[3, 9]]))[0, -1], "after truncate")


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_native_prefill_matches_forward_cached(flavour):
    """GPT.prefill (the runner's prefill: one native call per prompt) against forward_cached:
    the last logits and every K/V written, for a first chunk and a second one after it (decode
    attention for a few queries, flash for more), and its bad input."""
    cfg = GPTConfig(**FLAVOURS[flavour])
    model = random_model(cfg, seed=len(flavour) + 1)
    rng = np.random.default_rng(4)
    tokens = rng.integers(0, cfg.vocab_size, cfg.block_size)
    split = [1, min(20, cfg.block_size - 1), cfg.block_size]
    a, b = model.new_cache(), model.new_cache()
    for lo, hi in zip([0] + split[:-1], split):
        expected = model.forward_cached(tokens[None, lo:hi], a)[0]
        assert_logits_close(model.prefill(tokens[lo:hi], b), expected, f"{flavour} [{lo}:{hi}]")
    assert a.tokens == b.tokens
    for i in range(cfg.n_layer):
        np.testing.assert_allclose(b.k[i], a.k[i], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(b.v[i], a.v[i], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="exceeds"):
        model.prefill([0], b)
    with pytest.raises(ValueError, match="token ids"):
        model.prefill([cfg.vocab_size], model.new_cache())
    runner = model.decode_runner(model.new_cache())
    with pytest.raises(TypeError, match="int64"):
        runner.prefill(np.array([0.5]), 0, np.empty(cfg.vocab_size, np.float32))
    with pytest.raises(ValueError, match="at least one"):
        runner.prefill(np.array([], np.int64), 0, np.empty(cfg.vocab_size, np.float32))


def _decode_all(model, tokens):
    cache = model.new_cache()
    return np.stack([model.decode_next(int(t), cache).copy() for t in tokens])


@pytest.mark.parametrize("flavour", ["head64-gqa", "llama-interleaved-mqa", "gpt2"])
def test_runner_same_logits_for_any_thread_count_and_under_load(flavour):
    """The runner's work pool (common/pool.h) changes who computes a row, never how: logits
    are bitwise equal on 1, 2 and 3 threads, and with another process busy on a core (the
    pool's solo fallback and dynamic chunks included). The profile accounts every token."""
    import subprocess
    import sys
    cfg = GPTConfig(**FLAVOURS[flavour])
    model = random_model(cfg, seed=5)
    tokens = np.random.default_rng(2).integers(0, cfg.vocab_size, cfg.block_size)
    before = _C.get_num_threads()
    try:
        _C.set_num_threads(1)
        one = _decode_all(model, tokens)
        for n in (2, 3):
            _C.set_num_threads(n)
            np.testing.assert_array_equal(_decode_all(model, tokens), one, err_msg=f"{n} threads")
        _C.set_num_threads(2)
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            for _ in range(3):
                np.testing.assert_array_equal(_decode_all(model, tokens), one, err_msg="under load")
        finally:
            busy.kill()
            busy.wait()
        cache = model.new_cache()
        runner = model.decode_runner(cache)
        runner.set_profiling(True)
        for t in tokens[:5]:
            model.decode_next(int(t), cache)
        prof = runner.profile()
        assert prof["tokens"] == 5
        assert min(prof["matvec_s"], prof["attention_s"], prof["other_s"]) > 0
        assert prof["solo_loops"] <= prof["loops"]
        # one thread or two: settable, inherited by the model's next runner, same logits
        runner.solo = True
        assert runner.solo and model.decode_runner(model.new_cache()).solo
        np.testing.assert_array_equal(_decode_all(model, tokens), one)
    finally:
        _C.set_num_threads(before)


def test_runner_bad_input():
    cfg = GPTConfig(**FLAVOURS["llama-half-gqa"])
    model = random_model(cfg)
    cache = model.new_cache(max_len=8)
    d = cfg.to_dict()
    views = model.params.views
    runner = _C.Transformer(d, views, cache.k, cache.v)
    logits = np.empty(cfg.vocab_size, np.float32)
    for token in (-1, cfg.vocab_size):
        with pytest.raises(ValueError, match="token"):
            runner.decode(token, 0, logits)
    for pos in (-1, 8, cfg.block_size):  # the cache (8) is shorter than block_size
        with pytest.raises(ValueError, match="pos"):
            runner.decode(1, pos, logits)
    with pytest.raises(TypeError, match="token"):
        runner.decode(1.0, 0, logits)
    with pytest.raises(TypeError, match="pos"):
        runner.decode(1, True, logits)
    with pytest.raises(ValueError, match="logits"):
        runner.decode(1, 0, np.empty(cfg.vocab_size + 1, np.float32))
    with pytest.raises(TypeError, match="float32"):
        runner.decode(1, 0, np.empty(cfg.vocab_size, np.float64))
    read_only = np.empty(cfg.vocab_size, np.float32)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        runner.decode(1, 0, read_only)
    with pytest.raises(ValueError, match="overlap"):
        runner.decode(1, 0, cache.k[0].reshape(-1)[: cfg.vocab_size])
    with pytest.raises(ValueError, match="overlap"):
        runner.decode(1, 0, model.params.data[: cfg.vocab_size])
    # construction
    missing = dict(views)
    del missing["h.1.mlp.c_fc.weight"]
    with pytest.raises(ValueError, match="h.1.mlp.c_fc.weight"):
        _C.Transformer(d, missing, cache.k, cache.v)
    wrong = dict(views, wte=views["wte"][:, :-1].copy())
    with pytest.raises(ValueError, match="wte"):
        _C.Transformer(d, wrong, cache.k, cache.v)
    with pytest.raises(TypeError, match="float32"):
        _C.Transformer(d, dict(views, wte=views["wte"].astype(np.float64)), cache.k, cache.v)
    with pytest.raises(ValueError, match="no 'n_kv_head'"):
        _C.Transformer({k: v for k, v in d.items() if k != "n_kv_head"}, views, cache.k, cache.v)
    with pytest.raises(ValueError, match="norm"):
        _C.Transformer(dict(d, norm="batchnorm"), views, cache.k, cache.v)
    with pytest.raises(ValueError, match="out of range"):
        _C.Transformer(dict(d, vocab_size=2**70), views, cache.k, cache.v)
    with pytest.raises(TypeError, match="n_layer"):
        _C.Transformer(dict(d, n_layer=2.0), views, cache.k, cache.v)
    with pytest.raises(ValueError, match=">= 1"):
        _C.Transformer(dict(d, n_layer=0), views, cache.k, cache.v)
    with pytest.raises(ValueError, match="one array per layer"):
        _C.Transformer(d, views, cache.k[:1], cache.v[:1])
    batch2 = model.new_cache(batch=2)
    with pytest.raises(ValueError, match="k_cache"):
        _C.Transformer(d, views, batch2.k, batch2.v)
    small = GPT(GPTConfig(**dict(FLAVOURS["llama-half-gqa"], n_kv_head=3)), seed=None).new_cache()
    with pytest.raises(ValueError, match="k_cache"):
        _C.Transformer(d, views, small.k, small.v)
    with pytest.raises(ValueError, match="overlaps"):
        _C.Transformer(d, views, [cache.k[0], cache.k[0]], cache.v)
    frozen = model.new_cache()
    frozen.v[1].flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        _C.Transformer(d, views, frozen.k, frozen.v)
    # the Python method
    full = model.new_cache(max_len=2)
    model.decode_next(1, full)
    model.decode_next(2, full)
    with pytest.raises(ValueError, match="exceeds"):
        model.decode_next(3, full)
    assert full.length == 2
    with pytest.raises(ValueError, match="token"):
        model.decode_next(cfg.vocab_size, model.new_cache())
    ref = GPT(cfg, seed=0, backend="reference")
    with pytest.raises(ValueError, match="native"):
        ref.decode_next(1, ref.new_cache())


# ---- the native sampler ----------------------------------------------------------------------

class FixedU:
    """A stand-in generator whose random() returns a given u (for sampling.sample)."""

    def __init__(self, u):
        self.u = u

    def random(self):
        return self.u


def random_logits(rng, V, kind):
    if kind == "normal":
        x = rng.normal(0, 3, V)
    elif kind == "ties":  # few distinct values: top-k / top-p cut through ties
        x = rng.integers(-2, 3, V).astype(np.float64)
    elif kind == "peaked":
        x = rng.normal(0, 1, V)
        x[rng.integers(0, V)] += 30
    else:  # masked: some -inf
        x = rng.normal(0, 2, V)
        x[rng.random(V) < 0.4] = -np.inf
        x[rng.integers(0, V)] = 1.0
    return x.astype(np.float32 if rng.random() < 0.7 else np.float64)


SETTINGS = [dict(temperature=t, top_k=k, top_p=p, min_p=mp, repetition_penalty=rp)
            for t, k, p, mp, rp in [
                (1.0, 0, 1.0, 0.0, 1.0), (0.7, 0, 1.0, 0.0, 1.0), (1.3, 5, 1.0, 0.0, 1.0),
                (1.0, 1, 1.0, 0.0, 1.0), (0.9, 0, 0.9, 0.0, 1.0), (1.0, 0, 0.3, 0.0, 1.0),
                (1.0, 0, 1.0, 0.1, 1.0), (0.8, 7, 0.8, 0.05, 1.3), (1.1, 3, 0.95, 0.0, 0.7),
                (0.0, 0, 1.0, 0.0, 1.0), (0.0, 0, 1.0, 0.0, 1.5), (2.0, 1000, 0.5, 0.5, 1.2),
                (1, 0, 1.0, 1.0, 1.0), (0.5, 2, 1e-9, 0.0, 1.0)]]


@pytest.mark.parametrize("V", [1, 2, 7, 65, 129, 1000, 50257])
def test_sample_token_equals_python_sampler(V):
    rng = np.random.default_rng(V)
    for case in range(40 if V < 50000 else 6):
        settings = SETTINGS[case % len(SETTINGS)]
        cfg = SamplingConfig(**settings)
        logits = random_logits(rng, V, ["normal", "ties", "peaked", "masked"][case % 4])
        previous = [int(t) for t in rng.integers(0, V, int(rng.integers(0, 20)))]
        # the same uniform number: tokens at random u and at the draw boundaries
        probs = filtered_distribution(logits, cfg, previous)
        cum = np.cumsum(probs)
        us = list(rng.random(20)) + [0.0, float(np.nextafter(1.0, 0.0))]
        us += [min(float(c / cum[-1]), float(np.nextafter(1.0, 0.0))) for c in cum[:50]]
        for u in us:
            expected = int(np.argmax(probs)) if cfg.greedy else sample(probs, FixedU(u))
            got = _C.sample_token(logits, cfg.temperature, cfg.top_k, cfg.top_p, cfg.min_p,
                                  cfg.repetition_penalty, previous, u)
            assert got == expected, (settings, V, u)
        # the Sampler objects, seeded: same tokens and the same generator state afterwards
        seed = int(rng.integers(0, 2**31))
        python, native = Sampler(cfg, seed=seed), Sampler(cfg, seed=seed)
        for _ in range(5):
            assert native.fast(logits, previous) == python(logits, previous)
        assert native.rng.random() == python.rng.random()


def test_sample_token_previous_tokens_forms():
    rng = np.random.default_rng(5)
    logits = rng.normal(0, 2, 50).astype(np.float32)
    prev = [3, 3, 7, 49, 0]
    a = _C.sample_token(logits, 0.9, 0, 1.0, 0.0, 1.4, prev, 0.37)
    b = _C.sample_token(logits, 0.9, 0, 1.0, 0.0, 1.4, np.array(prev, np.int32), 0.37)
    c = _C.sample_token(logits, 0.9, 0, 1.0, 0.0, 1.4, tuple(prev), 0.37)
    expected = sample(filtered_distribution(logits, previous_tokens=prev, temperature=0.9,
                                            repetition_penalty=1.4), FixedU(0.37))
    assert a == b == c == expected
    # penalty 1: previous tokens are ignored, even out-of-range ones (as in sampling.py)
    assert _C.sample_token(logits, 1.0, 0, 1.0, 0.0, 1.0, [999], 0.5) == \
        sample(filtered_distribution(logits), FixedU(0.5))


def test_sample_token_bad_input():
    logits = np.array([0.5, -1.0, 2.0], np.float32)
    good = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0,
                previous_tokens=None, u=0.5)

    def call(x=logits, **kw):
        return _C.sample_token(x, **dict(good, **kw))

    assert call() in (0, 1, 2)
    for bad, msg in [(np.array([0.0, np.nan], np.float32), "NaN"),
                     (np.array([0.0, np.inf]), r"\+inf"),
                     (np.array([-np.inf, -np.inf], np.float32), "all -inf"),
                     (np.zeros((2, 2), np.float32), "1-D"),
                     (np.zeros(0, np.float32), "non-empty")]:
        with pytest.raises(ValueError, match=msg):
            call(bad)
        if msg != "1-D" and msg != "non-empty":
            with pytest.raises(ValueError, match=msg):  # the same error as sampling.py's
                Sampler(seed=0)(bad)
    with pytest.raises(TypeError, match="floating"):
        call(np.array([1, 2, 3]))
    with pytest.raises(TypeError, match="numpy array"):
        call([0.5, 1.0])
    for kw, msg in [(dict(temperature=-1.0), "temperature"), (dict(temperature=np.inf), "temperature"),
                    (dict(top_k=-1), "top_k"), (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"),
                    (dict(min_p=-0.1), "min_p"), (dict(repetition_penalty=0.0), "repetition_penalty"),
                    (dict(u=1.0), "u must"), (dict(u=-0.1), "u must"),
                    (dict(repetition_penalty=1.2, previous_tokens=[0, 3]), "previous token ids"),
                    (dict(repetition_penalty=1.2, previous_tokens=[-1]), "previous token ids")]:
        with pytest.raises(ValueError, match=msg):
            call(**kw)
    with pytest.raises(TypeError, match="top_k"):
        call(top_k=2.5)
    tiny = dict(temperature=1e-310)  # 2.0 / 1e-310 overflows: an error, not NaN probabilities
    with pytest.raises(ValueError, match="overflow"):
        call(**tiny)
    with pytest.raises(ValueError, match="overflow"):
        Sampler(seed=0, **tiny)(logits)
    negative = np.array([-0.5, -1.0, -np.inf], np.float32)  # every scaled logit is -inf
    with pytest.raises(ValueError, match="-inf everywhere"):
        call(negative, **tiny)
    with pytest.raises(ValueError, match="-inf everywhere"):
        Sampler(seed=0, **tiny)(negative)
    with pytest.raises(TypeError, match="previous_tokens"):
        call(repetition_penalty=1.2, previous_tokens=[1.5])
    with pytest.raises(TypeError, match="previous_tokens"):
        call(repetition_penalty=1.2, previous_tokens=np.array([1.0]))


# ---- generate() end to end -----------------------------------------------------------------

@pytest.mark.parametrize("flavour,settings", [
    ("gpt2", dict(temperature=0.8)),
    ("llama-half-gqa", dict(temperature=1.0, top_k=10, top_p=0.9, repetition_penalty=1.1)),
    ("gpt2-relu-sinusoidal", dict(temperature=0)),
    ("llama-interleaved-mqa", dict(temperature=0, repetition_penalty=1.3)),
])
def test_generate_same_text_with_and_without_runner(flavour, settings):
    cfg = GPTConfig(**FLAVOURS[flavour])
    model = random_model(cfg, seed=2)
    chars = [chr(ord("!") + i) for i in range(cfg.vocab_size)]
    tok = CharTokenizer(chars)
    prompt = "".join(chars[i % cfg.vocab_size] for i in range(5))
    n = 2 * cfg.block_size + 3  # past the context: the sliding window re-prefills
    runs = {}
    for fast in (True, False):
        stats = GenerationStats()
        text = "".join(generate(model, tok, prompt, max_new_tokens=n, seed=42, stats=stats,
                                fast_decode=fast, **settings))
        runs[fast] = (text, stats.new_tokens)
    assert runs[True] == runs[False]
    assert len(runs[True][1]) == n
    # with a cache kept across calls (prompt caching) the runner is reused and still agrees
    cache = model.new_cache()
    first = "".join(generate(model, tok, prompt, max_new_tokens=4, seed=1, cache=cache, **settings))
    again = "".join(generate(model, tok, prompt + first, max_new_tokens=6, seed=3, cache=cache,
                             **settings))
    plain = "".join(generate(model, tok, prompt + first, max_new_tokens=6, seed=3,
                             fast_decode=False, **settings))
    assert again == plain


# ---- a half-precision KV cache ------------------------------------------------------------

@pytest.mark.parametrize("flavour", ["llama-half-gqa", "head64-gqa", "gpt2", "head128",
                                     "llama-interleaved-mqa"])
def test_half_kv_cache_in_every_path(flavour, isa):
    """model.kv_dtype = 'float16': forward_cached (numpy's cast, the attention kernels widen),
    the native prefill and decode_next (the runner's KV write rounds the same way) and
    BatchDecoder agree; and the logits stay close to those of a float32 cache."""
    cfg = GPTConfig(**FLAVOURS[flavour])
    model = random_model(cfg, seed=len(flavour) + 5)
    rng = np.random.default_rng(9)
    tokens = rng.integers(0, cfg.vocab_size, cfg.block_size)
    full = model.new_cache()  # float32, the comparison
    model.kv_dtype = "float16"
    py, nat, batch = model.new_cache(), model.new_cache(), model.new_cache()
    assert py.k[0].dtype == np.float16 and py.nbytes * 2 == full.nbytes
    n = min(9, cfg.block_size - 1)
    expected = model.forward_cached(tokens[None, :n], py)[0]
    scale = np.abs(expected).max()
    got = model.prefill(tokens[:n], nat)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-3 * scale)
    model.forward_cached(tokens[None, :n], full)
    dec = model.batch_decoder([batch])
    for t in tokens[:n]:  # the batch decoder's cache gets the prompt token by token
        dec.step([int(t)])
    for pos in range(n, cfg.block_size):
        t = int(tokens[pos])
        want = model.forward_cached(np.array([[t]]), py)[0]
        got = model.decode_next(t, nat)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-3 * np.abs(want).max())
        rows = dec.step([t])
        np.testing.assert_allclose(rows[0], got, rtol=0, atol=1e-3 * np.abs(want).max())
        f32 = model.forward_cached(np.array([[t]]), full)[0]
        np.testing.assert_allclose(got, f32, rtol=0, atol=1e-2 * np.abs(f32).max())
    for i in range(cfg.n_layer):  # a half ulp or so apart (their fp32 K, V differ slightly)
        for a, b in ((nat.k[i], py.k[i]), (nat.v[i], py.v[i])):
            np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32),
                                       rtol=2 ** -9, atol=1e-4)


def test_kv_cache_dtype_checks():
    from kernelgpt.kv_cache import KVCache
    assert KVCache(1, 1, 2, 3, dtype=np.float16).k[0].dtype == np.float16
    for bad in ("int8", "bfloat16", np.float64, None, 3):
        with pytest.raises(ValueError, match="dtype must be 'float32' or 'float16'"):
            KVCache(1, 1, 2, 3, dtype=bad)
    with pytest.raises(ValueError, match="CPU only"):
        KVCache(1, 1, 2, 3, dtype="float16", device="emu")
    cfg = GPTConfig(**FLAVOURS["gpt2"])
    model = random_model(cfg)
    h = model.new_cache(dtype="float16")
    with pytest.raises(TypeError, match="share one dtype"):
        _C.Transformer(cfg.to_dict(), model.params.views, h.k[:1] + [np.zeros_like(h.k[1], np.float32)], h.v)
