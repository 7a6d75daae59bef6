"""generate() and GenerationStats (kernelgpt.generate).

- Streaming: the pieces join into the decoded text of the new tokens (a random model with a
  byte-level BPE tokenizer trained here, and the tiny GGUF Llama of gguf_writer.py, streamed
  and not); a UTF-8 character whose bytes come in several tokens is yielded whole.
- Stopping: stop tokens (not yielded, stop_reason "stop_token"), stop strings (the text
  before it is yielded, the stop string not, also inside a token or a multi-byte character;
  the earliest of several wins), text held back as a possible stop-string prefix is released
  when it turns out not to be one (at the next token, at a stop token, at the length limit),
  max_new_tokens 0 and n.
- Sampling: the same seed gives the same text, greedy (temperature=0) is the argmax of
  model.logits over the whole sequence, fast_decode=True and False give the same text
  (the shipped Shakespeare model, with sampling settings and a stop string).
- Errors: empty prompt, prompt longer than the context, negative max_new_tokens.
- GenerationStats: every field after a run, and decode_tokens_per_second.
Tests that need to know exactly which tokens come use ScriptedModel, a stand-in whose
logits single out the next token of a script. Prompt caching and the sliding window are in
test_kv_cache.py; the native runner against forward_cached in test_runner.py.
"""
import numpy as np
import pytest

import gguf_writer
from kernelgpt import tokenizer as tk
from kernelgpt.data import CharTokenizer
from kernelgpt.generate import GenerationStats, default_model_dir, generate
from kernelgpt.kv_cache import KVCache
from kernelgpt.model import GPT, GPTConfig


CHARS = "abcdefghijklmnopqrstuvwxyz .!"  # 29 tokens
TEXT = "naïve café, 中文 😀 über Straße — Ωmega жизнь! " * 3


def random_model(cfg: GPTConfig, seed: int) -> GPT:
    """A model whose every parameter (norm weights and biases too) is drawn from N(0, 0.3)."""
    model = GPT(cfg, seed=None)
    model.params.data[:] = np.random.default_rng(seed).normal(0.0, 0.3, model.params.size)
    return model


@pytest.fixture(scope="module")
def bpe():
    """A byte-level BPE (256 byte tokens + 12 merges): most non-ASCII characters take several
    tokens."""
    return tk.train(TEXT, 256 + 12, pattern="gpt2")


@pytest.fixture(scope="module")
def char_model():
    cfg = GPTConfig(vocab_size=len(CHARS), block_size=37, n_layer=2, n_head=3, n_kv_head=1,
                    n_embd=18, mlp_hidden=23, norm="rmsnorm", activation="swiglu",
                    positions="rope", bias=False)
    return random_model(cfg, seed=3), CharTokenizer(CHARS)  # greedy text is not one letter


def run(model, tok, prompt, n, **kw):
    """(list of pieces, stats) of one generate() call."""
    stats = GenerationStats()
    pieces = list(generate(model, tok, prompt, max_new_tokens=n, stats=stats, **kw))
    return pieces, stats


class ScriptedModel:
    """Stands in for a model: the logits put the next token of `script` on top (random values
    elsewhere), so greedy decoding produces exactly the script, whatever the prompt."""

    def __init__(self, script, vocab_size):
        self.config = GPTConfig(vocab_size=vocab_size, block_size=64, n_layer=1, n_head=1,
                                n_embd=2)
        self.script = [int(t) for t in script]
        self.rng = np.random.default_rng(0)
        self.step = 0

    def new_cache(self):
        return KVCache(1, 1, 1, self.config.block_size)

    def forward_cached(self, ids, cache):
        if cache.length == 0:  # a prefill: the script starts again
            self.step = 0
        cache.advance(np.asarray(ids)[0])
        logits = self.rng.normal(0.0, 1.0, self.config.vocab_size).astype(np.float32)
        logits[self.script[self.step]] = 20.0
        self.step += 1
        return logits[None]


def scripted(tok, script, stop_strings=(), stop_tokens=(), n=None):
    """The pieces and stats of greedy generation that produces `script` (text or ids)."""
    ids = tok.encode(script) if isinstance(script, str) else list(script)
    model = ScriptedModel(ids, tok.n_vocab)
    return run(model, tok, tok.encode("a"), len(ids) if n is None else n, temperature=0,
               stop_strings=stop_strings, stop_tokens=stop_tokens)


def byte_ids(enc, text):
    """One token per UTF-8 byte of text."""
    return [enc.encode_single_token(bytes([b])) for b in text.encode("utf-8")]


# ---- streaming ----------------------------------------------------------------------------------

def test_streamed_pieces_join_into_the_decoded_text(bpe):
    cfg = GPTConfig(vocab_size=bpe.n_vocab, block_size=67, n_layer=2, n_head=2, n_embd=14)
    model = random_model(cfg, seed=2)
    pieces, stats = run(model, bpe, "café ", 59, seed=3, temperature=1.0)
    assert len(stats.new_tokens) == 59
    assert "".join(pieces) == bpe.decode(stats.new_tokens)
    assert all(pieces)  # nothing empty is yielded
    # some token completed no character: its bytes were held back, not yielded broken
    assert len(pieces) < len(stats.new_tokens)


def test_a_character_in_several_tokens_is_yielded_whole(bpe):
    ids = byte_ids(bpe, "é中😀!")  # 2 + 3 + 4 + 1 byte tokens
    pieces, stats = scripted(bpe, ids)
    assert stats.new_tokens == ids
    assert pieces == ["é", "中", "😀", "!"]


def test_gguf_llama_streamed_equals_returned_text(tmp_path):
    from kernelgpt.llama import load_model
    path = tmp_path / "tiny.gguf"
    path.write_bytes(gguf_writer.llama_file(untied=True, numeric=True))
    model = load_model(path)
    streamed = list(model.generate("abcd ab", 23, stream=True, seed=5, temperature=1.3))
    assert "".join(streamed) == model.generate("abcd ab", 23, seed=5, temperature=1.3)
    assert len(streamed) >= 2


# ---- stop tokens, stop strings, max_new_tokens --------------------------------------------------

def test_stop_token_is_not_yielded(char_model):
    model, tok = char_model
    _, free = run(model, tok, "the ", 30, temperature=0)
    stop = free.new_tokens[11]
    cut = free.new_tokens.index(stop)
    assert cut > 0
    pieces, stats = run(model, tok, "the ", 30, temperature=0, stop_tokens=[stop])
    assert "".join(pieces) == tok.decode(free.new_tokens[:cut])
    assert stats.new_tokens == free.new_tokens[:cut]
    assert stats.stop_reason == "stop_token"


def test_the_first_of_several_stop_tokens_stops(char_model):
    model, tok = char_model
    _, free = run(model, tok, "quick brown", 30, temperature=0)
    stops = [free.new_tokens[11], free.new_tokens[6]]
    cut = min(free.new_tokens.index(t) for t in stops)
    assert cut > 0 and stops[0] != stops[1]
    _, stats = run(model, tok, "quick brown", 30, temperature=0, stop_tokens=stops)
    assert stats.new_tokens == free.new_tokens[:cut] and stats.stop_reason == "stop_token"


def test_stop_string_text_before_it_is_yielded(char_model):
    model, tok = char_model
    free_text = "".join(run(model, tok, "the ", 30, temperature=0)[0])
    stop = free_text[13:16]
    at = free_text.index(stop)
    assert at > 0
    pieces, stats = run(model, tok, "the ", 30, temperature=0, stop_strings=[stop])
    assert "".join(pieces) == free_text[:at]
    assert stats.stop_reason == "stop_string"
    # the tokens that made the stop string were generated (they are counted), not yielded
    assert tok.decode(stats.new_tokens) == free_text[:at + len(stop)]


def test_stop_string_spanning_tokens():
    tok = CharTokenizer("abxyzq")
    pieces, stats = scripted(tok, "xyabzq", stop_strings=["abz"])
    assert pieces == ["x", "y"]  # "a", "ab" were held back, then matched
    assert stats.stop_reason == "stop_string" and tok.decode(stats.new_tokens) == "xyabz"


def test_held_back_prefix_is_released_when_it_is_not_a_stop_string():
    tok = CharTokenizer("abxyz")
    pieces, stats = scripted(tok, "xabyab", stop_strings=["abz"])
    # "a" and "ab" wait; "aby" is no stop string; the last "ab" is released at the end
    assert pieces == ["x", "aby", "ab"]
    assert stats.stop_reason == "length"


def test_held_back_prefix_is_released_at_a_stop_token():
    tok = CharTokenizer("abxz")
    ids = tok.encode("xab") + tok.encode("z")
    pieces, stats = scripted(tok, ids, stop_strings=["abb"], stop_tokens=tok.encode("z"))
    assert pieces == ["x", "ab"] and stats.stop_reason == "stop_token"


def test_the_earliest_of_several_stop_strings_wins():
    tok = CharTokenizer("abcdx")
    pieces, stats = scripted(tok, "xcdab", stop_strings=["ab", "xcda", "cd"])
    assert "".join(pieces) == "x" and stats.stop_reason == "stop_string"


def test_stop_string_inside_a_token_and_inside_a_character(bpe):
    ids = bpe.encode("naïve café")
    assert len(ids) < len("naïve café".encode())  # some tokens hold several bytes
    pieces, _ = scripted(bpe, ids, stop_strings=["é"])
    assert "".join(pieces) == "naïve caf"
    pieces, _ = scripted(bpe, byte_ids(bpe, "é中😀"), stop_strings=["中"])
    assert pieces == ["é"]


def test_empty_stop_string_is_ignored():
    tok = CharTokenizer("abc")
    pieces, stats = scripted(tok, "abcab", stop_strings=[""])
    assert pieces == list("abcab") and stats.stop_reason == "length"


@pytest.mark.parametrize("n", [0, 1, 2, 7])
def test_max_new_tokens(char_model, n):
    model, tok = char_model
    cache = model.new_cache()
    pieces, stats = run(model, tok, "so ", n, seed=4, cache=cache)
    assert len(stats.new_tokens) == n and len("".join(pieces)) == n
    assert stats.stop_reason == "length" and stats.prompt_tokens == 3
    if n == 0:
        assert pieces == [] and cache.length == 3  # the prompt was still prefilled


# ---- sampling -----------------------------------------------------------------------------------

def test_same_seed_same_text(char_model):
    model, tok = char_model
    settings = dict(temperature=1.1, top_k=13, top_p=0.95, repetition_penalty=1.2)
    a = "".join(generate(model, tok, "we ", 31, seed=7, **settings))
    b = "".join(generate(model, tok, "we ", 31, seed=7, **settings))
    c = "".join(generate(model, tok, "we ", 31, seed=8, **settings))
    assert a == b and len(a) == 31
    assert c != a


def test_greedy_is_the_argmax_of_the_models_logits(char_model):
    model, tok = char_model
    prompt = tok.encode("quick brown")
    _, stats = run(model, tok, prompt, 19, temperature=0)
    seq = list(prompt)
    for _ in range(19):
        seq.append(int(np.argmax(model.logits(np.array([seq]))[0, -1])))
    assert stats.new_tokens == seq[len(prompt):]
    assert len(set(stats.new_tokens)) > 2  # not a degenerate repetition


def shipped_model():
    """The character-level Shakespeare model that ships with kernelgpt."""
    try:
        from kernelgpt.checkpoint import load_checkpoint  # where it is moving to
    except ImportError:
        from kernelgpt.train import load_checkpoint
    model, tok, *_ = load_checkpoint(default_model_dir())
    return model, tok


def test_fast_decode_gives_the_same_text_as_python_decode():
    model, tok = shipped_model()
    settings = dict(seed=11, temperature=0.9, top_k=17, top_p=0.93)
    full = "".join(run(model, tok, "ROMEO:\n", 83, **settings)[0])
    stop = full[50:56]  # a stop string the text reaches after ~50 tokens
    runs = []
    for fast in (True, False):
        pieces, stats = run(model, tok, "ROMEO:\n", 83, stop_strings=[stop], fast_decode=fast,
                            **settings)
        runs.append(("".join(pieces), stats.new_tokens, stats.stop_reason))
    assert runs[0] == runs[1]
    assert len(runs[0][1]) > 20 and runs[0][2] == "stop_string", (stop, runs[0])


# ---- errors -------------------------------------------------------------------------------------

@pytest.mark.parametrize("prompt", ["", []])
def test_empty_prompt(char_model, prompt):
    model, tok = char_model
    with pytest.raises(ValueError, match="the prompt is empty"):
        list(generate(model, tok, prompt, 5))


def test_prompt_longer_than_the_context(char_model):
    model, tok = char_model
    block = model.config.block_size
    with pytest.raises(ValueError, match=f"the prompt is {block + 1} tokens, longer than the "
                                         f"model's context of {block} tokens"):
        list(generate(model, tok, ("ab" * block)[:block + 1], 5))


def test_negative_max_new_tokens(char_model):
    model, tok = char_model
    with pytest.raises(ValueError, match="max_new_tokens must be >= 0, got -3"):
        list(generate(model, tok, "hi", -3))


# ---- GenerationStats ----------------------------------------------------------------------------

def test_generation_stats_defaults():
    stats = GenerationStats()
    assert (stats.prompt_tokens, stats.new_tokens, stats.stop_reason) == (0, [], "")
    assert stats.prefill_seconds == stats.decode_seconds == 0.0
    assert stats.decode_tokens_per_second == 0.0
    assert GenerationStats().new_tokens is not stats.new_tokens  # no shared list


def test_generation_stats_after_a_run(char_model):
    model, tok = char_model
    pieces, stats = run(model, tok, "hello there", 13, seed=2)
    assert stats.prompt_tokens == len("hello there")
    assert len(stats.new_tokens) == 13 and all(type(t) is int for t in stats.new_tokens)
    assert tok.decode(stats.new_tokens) == "".join(pieces)
    assert stats.prefill_seconds > 0 and stats.decode_seconds > 0
    assert stats.decode_tokens_per_second == pytest.approx(12 / stats.decode_seconds)
    assert stats.stop_reason == "length"


def test_decode_rate_of_one_token_is_zero():
    stats = GenerationStats(new_tokens=[5], decode_seconds=0.25)
    assert stats.decode_tokens_per_second == 0.0
    stats = GenerationStats(new_tokens=[5, 1, 9, 2], decode_seconds=0.5)
    assert stats.decode_tokens_per_second == 6.0


# ---- several prompts at once (generate_batch, GPT.batch_decoder) --------------------------------

def _tiny_llama(tmp_path, **kw):
    from kernelgpt.llama import load_model
    path = tmp_path / "tiny.gguf"
    path.write_bytes(gguf_writer.llama_file(untied=True, numeric=True))
    return load_model(path, **kw)


@pytest.mark.parametrize("int8", [True, False])
def test_batch_decoder_rows_equal_decode_next(tmp_path, int8):
    """Every row of a batched step is bitwise decode_next's for that sequence alone: a model
    mixing Q4_1, Q8_0 (int8 panels or fp32 activations), fp32 and an untied head; caches of
    different lengths and capacities, subsets of the batch per step."""
    model = _tiny_llama(tmp_path, int8=int8)
    rng = np.random.default_rng(3)
    V = model.config.vocab_size
    prompts = [list(rng.integers(0, V, n)) for n in (1, 5, 11)]
    caches = [model.new_cache(m) for m in (40, 23, 64)]
    solo = [model.new_cache(m) for m in (40, 23, 64)]
    for p, c, s in zip(prompts, caches, solo):
        model.forward_cached(np.asarray([p]), c)
        model.forward_cached(np.asarray([p]), s)
    dec = model.batch_decoder(caches)
    for step in range(10):
        which = [0, 1, 2] if step % 3 else [2, 0]
        tokens = [int(t) for t in rng.integers(0, V, len(which))]
        out = dec.step(tokens, which)
        for row, (i, t) in enumerate(zip(which, tokens)):
            np.testing.assert_array_equal(out[row], model.decode_next(t, solo[i]))
    for c, s in zip(caches, solo):
        assert c.tokens == s.tokens
    with pytest.raises(ValueError, match="twice"):
        model.batch_decoder([caches[0], caches[0]])
    with pytest.raises(ValueError, match="at least one"):
        model.batch_decoder([])
    with pytest.raises(ValueError, match="tokens for"):
        dec.step([1, 2], [0])
    with pytest.raises(ValueError, match="twice"):
        dec.step([1, 2], [1, 1])
    with pytest.raises(ValueError, match="token must be in"):
        dec.step([V], [0])
    full = model.new_cache(2)
    model.forward_cached(np.asarray([[1, 2]]), full)
    with pytest.raises(ValueError, match="exceeds"):
        model.batch_decoder([full]).step([3])


@pytest.mark.parametrize("settings", [dict(temperature=0), dict(temperature=1.2, top_k=5),
                                      dict(temperature=0.9, repetition_penalty=1.3)])
def test_generate_list_equals_each_prompt_alone(tmp_path, settings):
    """model.generate([...]) decodes the prompts together; each text is the prompt's own run
    with the same seed, whatever the others do: per-prompt token limits, stop strings, seeds,
    a sequence that ends at once and one whose context slides (block_size 64)."""
    model = _tiny_llama(tmp_path)
    prompts = ["abcd ab", "a", "dcba dcba dcba", "bbbb"]
    limits = [23, 0, 80, 9]
    stops = [[], ["q"], ["ab"], []]
    seeds = [5, 6, 7, 8]
    stats = [GenerationStats() for _ in prompts]
    batch = model.generate(prompts, max_tokens=limits, stop=stops, seed=seeds, stats=stats,
                           **settings)
    for i, p in enumerate(prompts):
        alone = GenerationStats()
        assert batch[i] == model.generate(p, max_tokens=limits[i], stop=stops[i], seed=seeds[i],
                                          stats=alone, **settings), i
        assert stats[i].new_tokens == alone.new_tokens and stats[i].stop_reason == alone.stop_reason
    assert stats[1].new_tokens == [] and stats[1].stop_reason == "length"


def test_generate_batch_fp32_reference_and_bad_input(char_model):
    """A float32 model (rows multiplied one by one in the batch) and the float64 reference
    backend (no native runner: forward_cached per sequence) give each prompt's own text;
    lists of the wrong length are refused."""
    from kernelgpt.generate import generate_batch
    model, tok = char_model
    ref = GPT(model.config, params=model.params.data.astype(np.float64), backend="reference")
    prompts = ["abc", "hello there", "z"]
    for m in (model, ref):
        texts = generate_batch(m, tok, prompts, 12, seeds=1, temperature=0.7)
        for p, t in zip(prompts, texts):
            assert t == "".join(generate(m, tok, p, 12, seed=1, temperature=0.7))
    with pytest.raises(ValueError, match="entries for 3 prompts"):
        generate_batch(model, tok, prompts, [1, 2])
    with pytest.raises(ValueError, match="empty"):
        generate_batch(model, tok, ["abc", ""], 3)
    assert generate_batch(model, tok, [], 3) == []
