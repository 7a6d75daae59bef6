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

__all__ = ["generate", "GenerationStats", "default_model_dir"]


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens whose keys and values were already in the cache
    new_tokens: List[int] = field(default_factory=list)
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    stop_reason: str = ""  # "length" | "stop_token" | "stop_string" | "context" | "interrupted"

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
             slide: bool = True, **settings) -> Iterator[str]:
    """Yields text pieces. `settings` are SamplingConfig fields (temperature, top_k, ...) over
    sampling.DEFAULT_SAMPLING (or over `sampling` if given).
    Pass a cache (model.new_cache()) to reuse it across calls: a prompt that extends what the
    cache holds only processes the new tokens. With fast_decode (and a native model, batch 1)
    each new token is one native call (model.decode_next) and the sampler runs in C++
    (Sampler.fast); the text is the same as with fast_decode=False for the same seed."""
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
                     cache, capacity, stats, fast_decode, slide)


def _generate(model, tokenizer, ids, max_new_tokens, sampler, stop_tokens, stop_strings, cache,
              capacity, stats, fast_decode, slide) -> Iterator[str]:
    stats.prompt_tokens = len(ids)
    stats.stop_reason = ""
    stop_tokens = set(int(t) for t in stop_tokens)
    t0 = time.perf_counter()
    t_decode = t0
    try:
        reuse = cache.common_prefix(ids)
        if reuse == len(ids):  # the whole prompt is cached: recompute its last token for logits
            reuse -= 1
        cache.truncate(reuse)
        stats.cached_tokens = reuse
        logits = to_numpy(model.forward_cached(np.asarray([ids[reuse:]]), cache)[0])
        stats.prefill_seconds = time.perf_counter() - t0
        context = list(ids)
        fast = fast_decode and hasattr(model, "decode_next") and model.supports_fast_decode(cache)
        sample = sampler.fast if fast else sampler
        logits_buffer = np.empty(model.config.vocab_size, np.float32) if fast else None
        decoder = tokenizer.stream_decoder()
        pending = ""  # decoded text not yet yielded (may be the start of a stop string)
        t_decode = time.perf_counter()
        for _ in range(max_new_tokens):
            if not slide and len(context) >= capacity:  # prompt + reply fill the context
                stats.stop_reason = "context"
                break
            token = sample(logits, previous_tokens=context)
            if token in stop_tokens:
                stats.stop_reason = "stop_token"
                break
            stats.new_tokens.append(token)
            context.append(token)
            pending += decoder.push(token)
            if stop_strings:
                hit = min((pending.find(s) for s in stop_strings if s and s in pending), default=-1)
                if hit >= 0:
                    if hit:
                        yield pending[:hit]
                    pending = ""
                    stats.stop_reason = "stop_string"
                    break
                keep = _longest_stop_prefix(pending, stop_strings)
                if len(pending) > keep:
                    yield pending[: len(pending) - keep]
                    pending = pending[len(pending) - keep:]
            elif pending:
                yield pending
                pending = ""
            if len(stats.new_tokens) == max_new_tokens:
                break
            if cache.length >= capacity:  # full: the new token has no room
                if not slide:
                    continue  # the check above ends it
                # a sliding window: keep the newest half (at least the new token), re-prefill
                keep_tokens = context[-max(1, capacity // 2):]
                cache.reset()
                logits = to_numpy(model.forward_cached(np.asarray([keep_tokens]), cache)[0])
            elif fast:
                logits = model.decode_next(token, cache, out=logits_buffer)
            else:
                logits = to_numpy(model.forward_cached(np.asarray([[token]]), cache)[0])
        if not stats.stop_reason:
            stats.stop_reason = "length"
        if stats.stop_reason != "stop_string":
            pending += decoder.finish()
            if pending:
                yield pending
    finally:
        if not stats.stop_reason:
            stats.stop_reason = "interrupted"
        stats.decode_seconds = time.perf_counter() - t_decode


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
