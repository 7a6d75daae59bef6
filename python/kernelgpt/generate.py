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
- A prompt longer than the model's context raises ValueError. When generation fills the
  context, the oldest half of the tokens is dropped and the rest re-processed (a sliding
  window), so long generations keep going.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Iterator, List, Optional, Sequence, Union

import numpy as np

from .device import to_numpy
from .sampling import Sampler, SamplingConfig

__all__ = ["generate", "GenerationStats", "default_model_dir"]


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    new_tokens: List[int] = field(default_factory=list)
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    stop_reason: str = ""  # "length" | "stop_token" | "stop_string"

    @property
    def decode_tokens_per_second(self) -> float:
        n = max(0, len(self.new_tokens) - 1)
        return n / self.decode_seconds if self.decode_seconds > 0 else 0.0


def _encode(tokenizer, prompt) -> List[int]:
    if isinstance(prompt, str):
        if hasattr(tokenizer, "encode_ordinary") and not hasattr(tokenizer, "chars"):
            return tokenizer.encode(prompt, allowed_special="all")
        return tokenizer.encode(prompt)
    ids = [int(t) for t in prompt]
    return ids


def generate(model, tokenizer, prompt: Union[str, Sequence[int]], max_new_tokens: int = 256,
             sampling: Optional[SamplingConfig] = None, seed: Optional[int] = None,
             stop_tokens: Sequence[int] = (), stop_strings: Sequence[str] = (),
             cache=None, stats: Optional[GenerationStats] = None, fast_decode: bool = True,
             **settings) -> Iterator[str]:
    """Yields text pieces. `settings` are SamplingConfig fields (temperature, top_k, ...).
    Pass a cache (model.new_cache()) to reuse it across calls: a prompt that extends what the
    cache holds only processes the new tokens. With fast_decode (and a native model, batch 1)
    each new token is one native call (model.decode_next) and the sampler runs in C++
    (Sampler.fast); the text is the same as with fast_decode=False for the same seed."""
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    sampling = sampling or SamplingConfig(**settings)
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
    stats.prompt_tokens = len(ids)
    stop_tokens = set(int(t) for t in stop_tokens)
    t0 = time.perf_counter()
    reuse = cache.common_prefix(ids)
    if reuse == len(ids):  # the whole prompt is cached: recompute its last token for logits
        reuse -= 1
    cache.truncate(reuse)
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
        if cache.length >= min(block, cache.max_len):
            keep_tokens = context[-(block // 2):]
            cache.reset()
            logits = to_numpy(model.forward_cached(np.asarray([keep_tokens]), cache)[0])
        elif fast:
            logits = model.decode_next(token, cache, out=logits_buffer)
        else:
            logits = to_numpy(model.forward_cached(np.asarray([[token]]), cache)[0])
    else:
        pass
    if not stats.stop_reason:
        stats.stop_reason = "length"
    if stats.stop_reason != "stop_string":
        pending += decoder.finish()
        if pending:
            yield pending
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
