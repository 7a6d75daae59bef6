"""The KV cache (kernelgpt.kv_cache.KVCache) and what generate() does with it.

- KVCache on its own: buffer shapes and nbytes, write/advance filling left to right and their
  "KV cache full" bounds, truncate (bounds, buffers kept), reset, common_prefix.
- forward_cached with a cache, the prompt prefilled in several uneven chunks (batch 1 and 3),
  equals model.logits at every position and the training forward's loss, for a GPT-2 flavour
  and a Llama flavour (RMSNorm, SwiGLU, RoPE, no biases, grouped-query attention) model;
  a truncated cache is rewritten by the next forward_cached.
- Prompt caching in generate(): a prompt that extends the cached tokens only prefills the new
  ones (the first forward_cached call is spied on), with the logits of a fresh run; a fully
  cached prompt recomputes only its last token; a prompt that diverges reuses the common
  prefix; the cache grows across calls.
- The sliding window: when generation fills a 16-token context, the oldest half is dropped and
  generation goes on (the tokens are the greedy ones of a reference loop over the window).
(test_model.py checks one prefill + single-token steps; test_runner.py the native decode.)
"""
import numpy as np
import pytest

from conftest import assert_close
from kernelgpt.data import CharTokenizer
from kernelgpt.generate import GenerationStats, generate
from kernelgpt.kv_cache import KVCache
from kernelgpt.model import GPT, GPTConfig


GPT2 = GPTConfig(vocab_size=23, block_size=19, n_layer=2, n_head=3, n_embd=15)
LLAMA = GPTConfig(vocab_size=29, block_size=19, n_layer=3, n_head=6, n_kv_head=2, n_embd=36,
                  mlp_hidden=29, norm="rmsnorm", activation="swiglu", positions="rope",
                  bias=False, tied_head=False, norm_eps=1e-5)
CHARS = "abcdefghijklm"  # 13 tokens
SMALL = GPTConfig(vocab_size=len(CHARS), block_size=16, n_layer=2, n_head=2, n_embd=12)


def random_model(cfg: GPTConfig, seed: int) -> GPT:
    """A model whose every parameter (norm weights and biases too) is drawn from N(0, 0.3)."""
    model = GPT(cfg, seed=None)
    model.params.data[:] = np.random.default_rng(seed).normal(0.0, 0.3, model.params.size)
    return model


def spy_on_forward_cached(model, monkeypatch):
    """Records (token ids of batch entry 0, returned logits) of every forward_cached call and
    of every native prefill (GPT.prefill, what generate() runs a prompt with)."""
    calls = []
    original, original_prefill = model.forward_cached, model.prefill

    def spy(ids, cache, all_logits=False):
        out = original(ids, cache, all_logits)
        calls.append((np.asarray(ids)[0].tolist(), np.array(out)))
        return out

    def spy_prefill(ids, cache):
        ids = np.asarray(ids)
        out = original_prefill(ids, cache)
        calls.append(((ids[0] if ids.ndim == 2 else ids).tolist(), np.array(out)[None]))
        return out

    monkeypatch.setattr(model, "forward_cached", spy)
    monkeypatch.setattr(model, "prefill", spy_prefill)
    return calls


def greedy(model, tok, prompt, n, **kw):
    stats = GenerationStats()
    pieces = generate(model, tok, prompt, max_new_tokens=n, temperature=0, stats=stats, **kw)
    text = "".join(pieces)
    return text, stats


# ---- KVCache on its own -------------------------------------------------------------------------

def test_new_cache_shapes_and_nbytes():
    model = random_model(LLAMA, seed=0)
    cache = model.new_cache()
    assert cache.max_len == LLAMA.block_size and cache.length == 0 and cache.tokens == []
    assert len(cache.k) == len(cache.v) == LLAMA.n_layer
    for buf in cache.k + cache.v:
        assert buf.shape == (1, LLAMA.n_kv_head, LLAMA.block_size, LLAMA.head_dim)
        assert buf.dtype == np.float32
    small = model.new_cache(max_len=7, batch=3)
    assert small.k[0].shape == (3, 2, 7, 6)
    assert small.nbytes == 2 * LLAMA.n_layer * 3 * 2 * 7 * 6 * 4  # K and V, float32


@pytest.mark.parametrize("dims", [(0, 2, 3, 5, 1), (1, 0, 3, 5, 1), (1, 2, 0, 5, 1),
                                  (1, 2, 3, 0, 1), (1, 2, 3, 5, 0), (1, 2, 3, -4, 1)])
def test_every_dimension_must_be_positive(dims):
    with pytest.raises(ValueError, match=">= 1"):
        KVCache(*dims)


def test_write_and_advance_fill_left_to_right():
    rng = np.random.default_rng(3)
    cache = KVCache(n_layer=2, n_kv_head=3, head_dim=5, max_len=11, batch=2)
    chunks = []
    for T, ids in [(4, [7, 1, 8, 2]), (1, [np.int64(9)]), (3, np.array([4, 5, 6]))]:
        k = rng.standard_normal((2, 3, T, 5)).astype(np.float32)
        v = rng.standard_normal((2, 3, T, 5)).astype(np.float32)
        for layer in range(2):
            cache.write(layer, k + layer, v - layer)
        cache.advance(ids)
        chunks.append((k, v))
    assert cache.length == 8
    assert cache.tokens == [7, 1, 8, 2, 9, 4, 5, 6]
    assert all(type(t) is int for t in cache.tokens)
    k_all = np.concatenate([k for k, _ in chunks], axis=2)
    v_all = np.concatenate([v for _, v in chunks], axis=2)
    for layer in range(2):
        np.testing.assert_array_equal(cache.k[layer][:, :, :8], k_all + layer)
        np.testing.assert_array_equal(cache.v[layer][:, :, :8], v_all - layer)


def test_write_and_advance_past_max_len_raise_and_change_nothing():
    rng = np.random.default_rng(4)
    cache = KVCache(n_layer=1, n_kv_head=1, head_dim=3, max_len=5)
    first = rng.standard_normal((1, 1, 3, 3)).astype(np.float32)
    cache.write(0, first, -first)
    cache.advance([1, 2, 3])
    before = cache.k[0].copy()
    too_many = rng.standard_normal((1, 1, 3, 3)).astype(np.float32)
    with pytest.raises(ValueError, match=r"KV cache full: 3 \+ 3 tokens > max_len 5"):
        cache.write(0, too_many, too_many)
    with pytest.raises(ValueError, match=r"KV cache full: 3 \+ 3 tokens > max_len 5"):
        cache.advance([4, 5, 6])
    assert cache.length == 3 and cache.tokens == [1, 2, 3]
    np.testing.assert_array_equal(cache.k[0], before)
    cache.write(0, too_many[:, :, :2], too_many[:, :, :2])  # exactly full is fine
    cache.advance([4, 5])
    assert cache.length == cache.max_len == 5
    with pytest.raises(ValueError, match="KV cache full"):
        cache.advance([6])


def test_truncate_keeps_the_buffers_and_checks_its_bounds():
    rng = np.random.default_rng(5)
    cache = KVCache(n_layer=1, n_kv_head=2, head_dim=3, max_len=7)
    k = rng.standard_normal((1, 2, 5, 3)).astype(np.float32)
    cache.write(0, k, k)
    cache.advance([3, 1, 4, 1, 5])
    cache.truncate(2)
    assert cache.length == 2 and cache.tokens == [3, 1]
    np.testing.assert_array_equal(cache.k[0][:, :, :5], k)  # reused, not cleared
    cache.truncate(2)  # to the current length: nothing changes
    assert cache.length == 2
    for bad in (-1, 3, 7):
        with pytest.raises(ValueError, match=r"truncate: length must be in \[0, 2\]"):
            cache.truncate(bad)
    assert cache.tokens == [3, 1]


def test_reset_empties_the_cache_and_writing_starts_again_at_zero():
    rng = np.random.default_rng(6)
    cache = KVCache(n_layer=2, n_kv_head=1, head_dim=3, max_len=4)
    for _ in range(2):  # fill, reset, fill again: the second fill starts at position 0
        k = rng.standard_normal((1, 1, 4, 3)).astype(np.float32)
        for layer in range(2):
            cache.write(layer, k, k)
        cache.advance([2, 7, 1, 8])
        assert cache.length == 4
        np.testing.assert_array_equal(cache.k[1][:, :, :4], k)
        cache.reset()
        assert cache.length == 0 and cache.tokens == []


def test_common_prefix():
    cache = KVCache(n_layer=1, n_kv_head=1, head_dim=1, max_len=13)
    assert cache.common_prefix([1, 2]) == 0  # empty cache
    cache.advance([5, 1, 4, 1, 5, 9, 2])
    assert cache.common_prefix([5, 1, 4]) == 3                  # shorter than the cache
    assert cache.common_prefix([5, 1, 4, 1, 5, 9, 2]) == 7      # equal
    assert cache.common_prefix([5, 1, 4, 1, 5, 9, 2, 6, 5]) == 7  # extends it
    assert cache.common_prefix([5, 1, 3, 1, 5]) == 2            # diverges
    assert cache.common_prefix([7, 1, 4]) == 0
    assert cache.common_prefix([]) == 0
    assert cache.common_prefix(np.array([5, 1, 4, 1, 6])) == 4  # numpy ids


# ---- forward_cached with a cache against the full forward ---------------------------------------

@pytest.mark.parametrize("cfg", [GPT2, LLAMA], ids=["gpt2", "llama"])
@pytest.mark.parametrize("B", [1, 3])
def test_chunked_prefill_equals_the_full_forward_at_every_position(cfg, B):
    model = random_model(cfg, seed=B)
    rng = np.random.default_rng(10 + B)
    ids = rng.integers(0, cfg.vocab_size, (B, cfg.block_size))
    full = model.logits(ids)
    cache = model.new_cache(batch=B)
    pieces, start = [], 0
    for n in (1, 5, 2, 7, 3, 1):  # 19 = block_size, in uneven chunks
        pieces.append(model.forward_cached(ids[:, start:start + n], cache, all_logits=True))
        start += n
        assert cache.length == start and cache.tokens == ids[0, :start].tolist()
    cached = np.concatenate(pieces, axis=1)
    assert_close(cached, full, rtol=1e-4, atol=1e-5 * np.abs(full).max(), what="chunked prefill")
    # the same numbers as the training forward (no cache): its loss on next-token targets
    targets = rng.integers(0, cfg.vocab_size, (B, cfg.block_size))
    z = cached.astype(np.float64)
    logp = z - z.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    loss = -np.take_along_axis(logp, targets[..., None], -1).mean()
    assert abs(model.loss(ids, targets) - loss) <= 1e-5 * abs(loss)


@pytest.mark.parametrize("cfg", [GPT2, LLAMA], ids=["gpt2", "llama"])
def test_last_position_logits_without_all_logits(cfg):
    model = random_model(cfg, seed=7)
    ids = np.random.default_rng(8).integers(0, cfg.vocab_size, (1, 11))
    cache = model.new_cache()
    model.forward_cached(ids[:, :6], cache)
    last = model.forward_cached(ids[:, 6:], cache)
    assert last.shape == (1, cfg.vocab_size)
    full = model.logits(ids)[:, -1]
    assert_close(last, full, rtol=1e-4, atol=1e-5 * np.abs(full).max(), what="last position")


def test_truncated_positions_are_rewritten_by_the_next_forward():
    model = random_model(LLAMA, seed=9)
    rng = np.random.default_rng(9)
    a = rng.integers(0, LLAMA.vocab_size, 13)
    b = a.copy()
    b[7:] = (b[7:] + 1 + rng.integers(0, LLAMA.vocab_size - 1, 6)) % LLAMA.vocab_size
    cache = model.new_cache()
    model.forward_cached(a[None], cache)
    cache.truncate(7)
    rewritten = model.forward_cached(b[None, 7:], cache, all_logits=True)
    assert cache.tokens == b.tolist()
    full = model.logits(b[None])[:, 7:]
    assert_close(rewritten, full, rtol=1e-4, atol=1e-5 * np.abs(full).max(), what="after truncate")


def test_forward_cached_past_a_short_cache_names_its_max_len():
    model = random_model(GPT2, seed=1)
    cache = model.new_cache(max_len=5)
    model.forward_cached(np.array([[3, 1, 4]]), cache)
    with pytest.raises(ValueError, match="the cache's max_len 5"):
        model.forward_cached(np.array([[1, 5, 9]]), cache)
    assert cache.length == 3


# ---- prompt caching in generate() ---------------------------------------------------------------

@pytest.fixture
def small():
    return random_model(SMALL, seed=16), CharTokenizer(CHARS)  # varied greedy text


def test_cache_holds_the_prompt_and_the_fed_tokens(small):
    model, tok = small
    cache = model.new_cache()
    text, stats = greedy(model, tok, "bad", 5, cache=cache)
    # the last sampled token was never fed back (generation stopped at it)
    assert cache.tokens == tok.encode("bad") + stats.new_tokens[:-1]
    assert cache.length == len(cache.tokens) == 3 + 4
    assert tok.decode(stats.new_tokens) == text


def test_a_prompt_extending_the_cache_only_prefills_the_new_tokens(small, monkeypatch):
    model, tok = small
    cache = model.new_cache()
    first, _ = greedy(model, tok, "face", 4, cache=cache)
    prompt = "face" + first + "kh"  # cached: "face" + first[:-1]; new: first[-1] + "kh"
    ids = tok.encode(prompt)
    calls = spy_on_forward_cached(model, monkeypatch)
    second, _ = greedy(model, tok, prompt, 3, cache=cache, fast_decode=False)
    prefill_ids, prefill_logits = calls[0]
    assert prefill_ids == ids[-3:]
    full = model.logits(np.array([ids]))[:, -1]
    assert_close(prefill_logits, full, rtol=1e-4, atol=1e-5 * np.abs(full).max(), what="prefill")
    assert cache.tokens[:len(ids)] == ids
    fresh, _ = greedy(model, tok, prompt, 3)
    assert second == fresh


def test_a_fully_cached_prompt_recomputes_only_its_last_token(small, monkeypatch):
    model, tok = small
    cache = model.new_cache()
    first, _ = greedy(model, tok, "milk", 6, cache=cache)
    calls = spy_on_forward_cached(model, monkeypatch)
    again, _ = greedy(model, tok, "milk", 6, cache=cache)
    assert calls[0][0] == tok.encode("k")  # the logits after "milk" need its last token
    assert again == first


def test_a_diverging_prompt_reuses_the_common_prefix(small, monkeypatch):
    model, tok = small
    cache = model.new_cache()
    greedy(model, tok, "blame", 3, cache=cache)
    calls = spy_on_forward_cached(model, monkeypatch)
    text, _ = greedy(model, tok, "blackjack", 4, cache=cache)
    assert calls[0][0] == tok.encode("ckjack")  # "bla" was reused
    assert cache.tokens[:9] == tok.encode("blackjack")
    assert text == greedy(model, tok, "blackjack", 4)[0]


def test_the_cache_grows_across_calls(small):
    model, tok = small
    cache = model.new_cache()
    prompt, lengths = "g", []
    for turn in range(3):
        text, stats = greedy(model, tok, prompt, 2, cache=cache)
        assert cache.tokens == tok.encode(prompt) + stats.new_tokens[:-1]
        lengths.append(cache.length)
        prompt += text + "ed"[turn % 2]
    assert lengths == [2, 5, 8]


def test_after_a_stop_token_the_cache_holds_every_yielded_token(small):
    model, tok = small
    _, free = greedy(model, tok, "hag", 6)
    stop = free.new_tokens[3]
    cut = free.new_tokens.index(stop)
    cache = model.new_cache()
    _, stats = greedy(model, tok, "hag", 6, cache=cache, stop_tokens=[stop])
    assert stats.stop_reason == "stop_token" and stats.new_tokens == free.new_tokens[:cut]
    assert cache.tokens == tok.encode("hag") + stats.new_tokens


# ---- the sliding window -------------------------------------------------------------------------

def reference_window_greedy(model, ids, n):
    """Greedy tokens with generate()'s window rule, from model.logits over the window: when
    the window holds block_size tokens, the next one keeps only the newest block_size // 2."""
    block = model.config.block_size
    window, out = list(ids), []
    for _ in range(n):
        token = int(np.argmax(model.logits(np.array([window]))[0, -1]))
        out.append(token)
        window = (window + [token])[-(block // 2):] if len(window) >= block else window + [token]
    return out


@pytest.mark.parametrize("fast_decode", [True, False])
def test_generation_past_the_context_slides_the_window(small, monkeypatch, fast_decode):
    model, tok = small
    prompt = tok.encode("hijack")
    calls = spy_on_forward_cached(model, monkeypatch)
    cache = model.new_cache()
    n = 4 * SMALL.block_size + 3
    text, stats = greedy(model, tok, prompt, n, cache=cache, fast_decode=fast_decode)
    assert len(stats.new_tokens) == n and len(text) == n and stats.stop_reason == "length"
    reprefills = [ids for ids, _ in calls[1:] if len(ids) > 1]
    assert reprefills and all(len(ids) == SMALL.block_size // 2 for ids in reprefills)
    assert 0 < cache.length <= SMALL.block_size
    context = prompt + stats.new_tokens[:-1]
    assert context[-cache.length:] == cache.tokens
    assert stats.new_tokens == reference_window_greedy(model, prompt, n)


def test_a_prompt_filling_the_whole_context_still_generates(small):
    model, tok = small
    prompt = (CHARS * 2)[:SMALL.block_size]
    text, stats = greedy(model, tok, prompt, 5)
    assert len(text) == 5
    assert stats.new_tokens == reference_window_greedy(model, tok.encode(prompt), 5)


def test_sliding_with_a_one_token_context():
    model = random_model(GPTConfig(vocab_size=7, block_size=1, n_layer=1, n_head=1, n_embd=4), 2)
    text = "".join(generate(model, CharTokenizer("abcdefg"), "a", max_new_tokens=5, seed=1))
    assert len(text) == 5


@pytest.mark.parametrize("max_len", [5, SMALL.block_size // 2])
def test_sliding_in_a_cache_shorter_than_the_context(small, monkeypatch, max_len):
    model, tok = small
    calls = spy_on_forward_cached(model, monkeypatch)
    n = 40
    text, stats = greedy(model, tok, "abc", n, cache=model.new_cache(max_len=max_len))
    assert len(stats.new_tokens) == n
    reprefills = sum(len(ids) > 1 for ids, _ in calls[1:])
    assert reprefills <= n // (max_len // 2) + 1  # the oldest half dropped, not one token
