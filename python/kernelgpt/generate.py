"""The autoregressive loop: prompt -> prefill -> (sample -> decode one token) repeated, text
streamed out as it is decoded.

    for piece in generate(model, tokenizer, "ROMEO:", max_new_tokens=200, temperature=0.8):
        print(piece, end="", flush=True)

- The prompt is processed in one batched pass (prefill); every new token then costs one
  single-token pass that reads the KV cache (decode).
- Text is yielded through the tokenizer's stream decoder, which never splits a UTF-8
  character across pieces.
- Generation stops after max_new_tokens, at a stop token (not yielded) or when a stop string
  appears (the text before it is yielded, the stop string is not). Text that could still be the
  start of a stop string is held back until it is clear that it is not.
- A prompt longer than the model's context (or the cache) raises ValueError. When generation
  fills the context, the oldest half of the tokens is dropped and the rest re-processed (a
  sliding window), so long generations keep going; with slide=False generation stops there
  instead (stop reason "context": a chat cannot drop the start of its own template).
- Sampling starts from sampling.DEFAULT_SAMPLING (temperature 0.2, top-p 0.9); any field can
  be overridden by keyword (temperature=0 is greedy); an unknown keyword raises TypeError
  listing the accepted ones.
- ``stats.stop_reason`` says why it ended: "length" (max_new_tokens), "stop_token",
  "stop_string", "context" (slide=False and the context is full) or "interrupted" (the
  iterator was closed, or an exception such as KeyboardInterrupt went through it).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Iterator, List, Optional, Sequence, Union

import numpy as np

from .device import to_numpy
from .sampling import Sampler, SamplingConfig, sampling_config

__all__ = ["generate", "generate_batch", "GenerationStats", "default_model_dir"]


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens whose keys and values were already in the cache
    new_tokens: List[int] = field(default_factory=list)
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    stop_reason: str = ""  # "length" | "stop_token" | "stop_string" | "context" | "interrupted"
    stop_token: Optional[int] = None  # the stop token sampled (not in new_tokens), if any

    @property
    def finish_reason(self) -> str:
        """OpenAI's name for it: "stop" (a stop token or string), "length" (the token limit or
        the context) or "interrupted"."""
        return {"stop_token": "stop", "stop_string": "stop", "context": "length"}.get(
            self.stop_reason, self.stop_reason)

    @property
    def decode_tokens_per_second(self) -> float:
        n = max(0, len(self.new_tokens) - 1)
        return n / self.decode_seconds if self.decode_seconds > 0 else 0.0


def _encode(tokenizer, prompt) -> List[int]:
    if isinstance(prompt, str):
        if hasattr(tokenizer, "encode_ordinary") and not hasattr(tokenizer, "chars"):
            return tokenizer.encode(prompt, allowed_special="all")
        return tokenizer.encode(prompt)
    if isinstance(prompt, (bytes, bytearray)):
        raise TypeError("the prompt must be a str or a sequence of token ids, got bytes "
                        "(decode it first)")
    ids = []
    for i, t in enumerate(prompt):
        if isinstance(t, str):
            raise TypeError(f"the prompt must be a str or a sequence of token ids; item {i} is a "
                            "str (for several prompts, call once per prompt)")
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)):
            raise TypeError(f"token id {i} must be an int, got {type(t).__name__}")
        ids.append(int(t))
    n_vocab = getattr(tokenizer, "n_vocab", None)
    bad = [t for t in ids if t < 0 or (n_vocab is not None and t >= n_vocab)]
    if bad:
        raise ValueError(f"token id {bad[0]} is out of range [0, {n_vocab})")
    return ids


def generate(model, tokenizer, prompt: Union[str, Sequence[int]], max_new_tokens: int = 256,
             sampling: Optional[SamplingConfig] = None, seed: Optional[int] = None,
             stop_tokens: Sequence[int] = (), stop_strings: Sequence[str] = (),
             cache=None, stats: Optional[GenerationStats] = None, fast_decode: bool = True,
             slide: bool = True, constraint=None, **settings) -> Iterator[str]:
    """Yields text pieces. `settings` are SamplingConfig fields (temperature, top_k, ...) over
    sampling.DEFAULT_SAMPLING (or over `sampling` if given).
    Pass a cache (model.new_cache()) to reuse it across calls: a prompt that extends what the
    cache holds only processes the new tokens. With fast_decode (and a native model, batch 1)
    each new token is one native call (model.decode_next) and the sampler runs in C++
    (Sampler.fast); the text is the same as with fast_decode=False for the same seed.
    constraint: a structured.Constraint (a JSON schema, regex or grammar the text follows)."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)):
        raise TypeError(f"max_new_tokens must be an int, got {type(max_new_tokens).__name__}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if isinstance(stop_strings, str):
        stop_strings = [stop_strings]
    sampling = sampling_config(settings, sampling, where="generate")
    sampler = Sampler(sampling, seed=seed)
    stats = stats if stats is not None else GenerationStats()
    ids = _encode(tokenizer, prompt)
    if not ids:
        raise ValueError("the prompt is empty: give at least one token")
    block = model.config.block_size
    if len(ids) > block:
        raise ValueError(f"the prompt is {len(ids)} tokens, longer than the model's context of "
                         f"{block} tokens")
    if cache is None:
        cache = model.new_cache()
    capacity = min(block, cache.max_len)
    if len(ids) > capacity:
        raise ValueError(f"the prompt is {len(ids)} tokens, more than the cache holds "
                         f"({cache.max_len}; make a larger one with model.new_cache(max_len))")
    return _generate(model, tokenizer, ids, max_new_tokens, sampler, stop_tokens, stop_strings,
                     cache, capacity, stats, fast_decode, slide, constraint)


class _Sequence:
    """One sequence's generation after its prefill: sampling from the logits, the stop token and
    stop string rules, the streamed text. step(logits) -> (the token to feed the model next, or
    None when it has ended; the text to yield now)."""

    def __init__(self, tokenizer, ids, max_new_tokens, sample, stop_tokens, stop_strings, stats,
                 capacity, slide, constraint=None):
        self.max_new_tokens, self.sample, self.stats = max_new_tokens, sample, stats
        self.constraint = constraint  # structured.Constraint: the grammar's mask, or None
        self.stop_tokens, self.stop_strings = stop_tokens, stop_strings
        self.capacity, self.slide = capacity, slide
        self.context = list(ids)
        self.decoder = tokenizer.stream_decoder()
        self.pending = ""  # decoded text not yet yielded (may be the start of a stop string)

    def step(self, logits):
        stats = self.stats
        if len(stats.new_tokens) >= self.max_new_tokens:
            return None, ""
        if not self.slide and len(self.context) >= self.capacity:  # prompt + reply fill it
            stats.stop_reason = "context"
            return None, ""
        if self.constraint is not None:
            logits = self.constraint.apply(logits)  # the grammar's forbidden tokens: -inf
        token = self.sample(logits, previous_tokens=self.context)
        if token in self.stop_tokens:
            stats.stop_reason, stats.stop_token = "stop_token", int(token)
            return None, ""
        if self.constraint is not None:
            self.constraint.accept(token)  # and the next mask starts computing
        stats.new_tokens.append(token)
        self.context.append(token)
        self.pending += self.decoder.push(token)
        out = ""
        if self.stop_strings:
            hit = min((self.pending.find(s) for s in self.stop_strings if s and s in self.pending),
                      default=-1)
            if hit >= 0:
                out, self.pending = self.pending[:hit], ""
                stats.stop_reason = "stop_string"
                return None, out
            keep = _longest_stop_prefix(self.pending, self.stop_strings)
            if len(self.pending) > keep:
                cut = len(self.pending) - keep
                out, self.pending = self.pending[:cut], self.pending[cut:]
        else:
            out, self.pending = self.pending, ""
        if len(stats.new_tokens) == self.max_new_tokens:
            return None, out
        return token, out

    def finish(self) -> str:
        """The text still held back, once the sequence has ended (and the grammar's helper
        thread stopped)."""
        if self.constraint is not None:
            self.constraint.close()
        if not self.stats.stop_reason:
            self.stats.stop_reason = "length"
        tail = ""
        if self.stats.stop_reason != "stop_string":
            tail = self.pending + self.decoder.finish()
        self.pending = ""
        return tail

    def slide_window(self, model, cache):
        """The cache is full: keep the newest half of the tokens (at least the last one), re-prefill
        them; returns the next logits."""
        keep_tokens = self.context[-max(1, self.capacity // 2):]
        cache.reset()
        return to_numpy(model.forward_cached(np.asarray([keep_tokens]), cache)[0])


def _prefill(model, ids, cache, stats, native=True):
    """Runs the part of ids the cache does not already hold; the logits after ids (native:
    GPT.prefill where it can, else forward_cached)."""
    stats.prompt_tokens = len(ids)
    stats.stop_reason = ""
    t0 = time.perf_counter()
    reuse = cache.common_prefix(ids)
    if reuse == len(ids):  # the whole prompt is cached: recompute its last token for logits
        reuse -= 1
    cache.truncate(reuse)
    stats.cached_tokens = reuse
    new = np.asarray([ids[reuse:]])
    logits = model.prefill(new, cache) if native and hasattr(model, "prefill") else \
        to_numpy(model.forward_cached(new, cache)[0])
    stats.prefill_seconds = time.perf_counter() - t0
    return logits


def _generate(model, tokenizer, ids, max_new_tokens, sampler, stop_tokens, stop_strings, cache,
              capacity, stats, fast_decode, slide, constraint=None) -> Iterator[str]:
    stats.stop_reason = ""
    t_decode = time.perf_counter()
    try:
        logits = _prefill(model, ids, cache, stats, native=fast_decode)
        fast = fast_decode and hasattr(model, "decode_next") and model.supports_fast_decode(cache)
        seq = _Sequence(tokenizer, ids, max_new_tokens, sampler.fast if fast else sampler,
                        set(int(t) for t in stop_tokens), stop_strings, stats, capacity, slide,
                        constraint)
        logits_buffer = np.empty(model.config.vocab_size, np.float32) if fast else None
        t_decode = time.perf_counter()
        while True:
            token, text = seq.step(logits)
            if text:
                yield text
            if token is None:
                break
            if cache.length >= capacity:  # full: the new token has no room
                if not slide:
                    continue  # step() ends it
                logits = seq.slide_window(model, cache)
            elif fast:
                logits = model.decode_next(token, cache, out=logits_buffer)
            else:
                logits = to_numpy(model.forward_cached(np.asarray([[token]]), cache)[0])
        tail = seq.finish()
        if tail:
            yield tail
    finally:
        if not stats.stop_reason:
            stats.stop_reason = "interrupted"
        stats.decode_seconds = time.perf_counter() - t_decode


def generate_batch(model, tokenizer, prompts: Sequence, max_new_tokens=256,
                   sampling=None, seeds=None, stop_tokens: Sequence[int] = (),
                   stop_strings=(), stats: Optional[Sequence[GenerationStats]] = None,
                   constraints: Optional[Sequence] = None, **settings) -> List[str]:
    """Continues several prompts together: each is prefilled on its own, then every step
    decodes one token of every unfinished sequence in one native call (GPT.batch_decoder: each
    quantized weight read once for the whole batch). Per sequence (a list, or one value for
    all): max_new_tokens, sampling (SamplingConfig; settings override DEFAULT_SAMPLING as in
    generate), seeds, stop_strings (a list of lists); stop_tokens are shared. Sequences end
    independently (stop token, stop string, their token limit; a full context slides as in
    generate). constraints: one structured.Constraint (or None) per sequence. Returns the texts;
    each equals generate()'s for its prompt alone, sampled with the same seed (bitwise the same
    logits)."""
    n = len(prompts)
    if n == 0:
        return []

    def per_seq(value, name, is_single):
        if is_single(value):
            return [value] * n
        value = list(value)
        if len(value) != n:
            raise ValueError(f"generate_batch: {name} has {len(value)} entries for {n} prompts")
        return value

    limits = per_seq(max_new_tokens, "max_new_tokens", lambda v: isinstance(v, (int, np.integer)))
    for m in limits:
        if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 0:
            raise ValueError(f"generate_batch: max_new_tokens must be ints >= 0, got {m!r}")
    configs = per_seq(sampling, "sampling", lambda v: v is None or isinstance(v, SamplingConfig))
    configs = [sampling_config(dict(settings), c, where="generate") for c in configs]
    seed_list = per_seq(seeds, "seeds", lambda v: v is None or isinstance(v, (int, np.integer)))
    stop_list = per_seq(stop_strings, "stop_strings",
                        lambda v: isinstance(v, str) or not v or all(isinstance(s, str) for s in v))
    stop_list = [[s] if isinstance(s, str) else list(s) for s in stop_list]
    constraints = list(constraints) if constraints is not None else [None] * n
    if len(constraints) != n:
        raise ValueError(f"generate_batch: constraints has {len(constraints)} entries for {n} "
                         "prompts")
    stats = list(stats) if stats is not None else [GenerationStats() for _ in range(n)]
    if len(stats) != n:
        raise ValueError(f"generate_batch: stats has {len(stats)} entries for {n} prompts")
    ids = [_encode(tokenizer, p) for p in prompts]
    block = model.config.block_size
    for i, p in enumerate(ids):
        if not p:
            raise ValueError(f"prompt {i} is empty: give at least one token")
        if len(p) > block:
            raise ValueError(f"prompt {i} is {len(p)} tokens, longer than the model's context "
                             f"of {block} tokens")
    # each cache sized to what its sequence can use (the context slides at block_size)
    caches = [model.new_cache(min(block, len(p) + m + 1)) for p, m in zip(ids, limits)]
    capacity = [min(block, c.max_len) for c in caches]
    stop_set = set(int(t) for t in stop_tokens)
    fast = hasattr(model, "batch_decoder") and all(model.supports_fast_decode(c) for c in caches)
    seqs, logits, texts = [], [], [[] for _ in range(n)]
    for i in range(n):
        logits.append(_prefill(model, ids[i], caches[i], stats[i]))
        sampler = Sampler(configs[i], seed=seed_list[i])
        seqs.append(_Sequence(tokenizer, ids[i], limits[i], sampler.fast if fast else sampler,
                              stop_set, stop_list[i], stats[i], capacity[i], True,
                              constraints[i]))
    decoder = model.batch_decoder(caches) if fast else None
    active = list(range(n))
    t0 = time.perf_counter()
    while active:
        feed = []  # (sequence, token) decoded together this step
        for i in active:
            token, text = seqs[i].step(logits[i])
            if text:
                texts[i].append(text)
            if token is None:
                texts[i].append(seqs[i].finish())
                stats[i].decode_seconds = time.perf_counter() - t0
            elif caches[i].length >= capacity[i]:
                logits[i] = seqs[i].slide_window(model, caches[i])
            else:
                feed.append((i, token))
        active = [i for i in active if seqs[i].stats.stop_reason == ""]
        if not feed:
            continue
        if decoder is not None:
            out = decoder.step([t for _, t in feed], [i for i, _ in feed])
            for row, (i, _) in enumerate(feed):
                logits[i] = out[row].copy()
        else:
            for i, token in feed:
                logits[i] = to_numpy(model.forward_cached(np.asarray([[token]]), caches[i])[0])
    return ["".join(t) for t in texts]


def _longest_stop_prefix(text: str, stop_strings: Sequence[str]) -> int:
    """Length of the longest suffix of text that is a proper prefix of a stop string."""
    best = 0
    for s in stop_strings:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                best = max(best, n)
                break
    return best


def default_model_dir():
    """The character-level Shakespeare GPT shipped inside the package (a checkpoint directory)."""
    return files("kernelgpt") / "models" / "shakespeare_char"
