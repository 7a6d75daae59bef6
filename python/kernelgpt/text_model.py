"""Text in, text out: a GPT with its tokenizer, chat template and stop tokens, used alike
whether it came from a GGUF file (llama.py) or from our own training (checkpoint.py).

    model = kernelgpt.load_model("smollm2")          # or a .gguf path, or a checkpoint dir
    model.generate("The capital of France is", max_tokens=20, temperature=0)

    session = model.chat_session(system="You are terse.")   # a conversation: owns a KV cache
    for piece in session.send("What is gravity?"):
        print(piece, end="", flush=True)
    session.send("And on the Moon?", stream=False).text     # the next turn prefills only it

    model.chat([{"role": "user", "content": "Hi"}], stream=False)   # stateless: a ChatResult
    model.create_chat_completion(messages, max_tokens=64)           # OpenAI-shaped dicts

Conversations never share mutable state. A ChatSession owns its KV cache; the stateless calls
(chat, create_chat_completion) borrow a cache from a small pool of recent prompts (the one
whose tokens share the longest prefix with the new prompt, so a client that resends the whole
conversation each turn still prefills only the new turn) and give it back when the reply ends:
two replies in flight never hold the same cache.

Context: a cache holds the model's whole context (``load_model(..., max_context=N)`` makes it
smaller; ``model.kv_cache_bytes()`` is what a full one takes; its pages are touched only as
they fill). A conversation longer than the context drops its oldest turns (the system prompt
stays) and says so in ``ChatResult.notice``; a reply that reaches the end of the context stops
with finish_reason "length".

Sampling starts from sampling.DEFAULT_SAMPLING (temperature 0.2, top-p 0.9; temperature=0 is
greedy). ``max_tokens`` (OpenAI, llama-cpp-python) and ``max_new_tokens`` (transformers) are
the same thing. An unknown keyword raises TypeError listing the accepted ones.
"""
from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Union

import numpy as np

from . import chat as chat_format
from .generate import GenerationStats, generate as _generate, generate_batch
from .sampling import SamplingConfig, sampling_config

__all__ = ["TextModel", "ChatSession", "ChatResult"]

DEFAULT_MAX_TOKENS = 256
_POOL_SIZE = 2  # caches kept for the stateless chat calls (each grows only as it is filled)
_STRUCTURED_ARGS = ("json_schema", "regex", "grammar", "response_format")
_GENERATE_ARGS = ("prompt", "max_new_tokens", "max_tokens", "stream", "seed", "stop",
                  "stop_strings", "cache", "stats", "sampling") + _STRUCTURED_ARGS
_CHAT_ARGS = ("max_new_tokens", "max_tokens", "stream", "seed", "stop", "stats",
              "sampling") + _STRUCTURED_ARGS


def _constraint(model, structured: dict):
    """structured.Constraint for json_schema= / regex= / grammar= / response_format=, or None."""
    if all(v is None for v in structured.values()):
        return None
    from .structured import Constraint
    return Constraint.for_model(model, **structured)


@dataclass
class ChatResult:
    """One assistant reply: ``str(result)`` is its text."""
    text: str
    finish_reason: str            # "stop", "length" or "interrupted"
    prompt_tokens: int
    completion_tokens: int
    dropped_turns: int = 0        # oldest messages left out to fit the context
    notice: Optional[str] = None  # what was dropped, in words
    stats: GenerationStats = field(default_factory=GenerationStats, repr=False)

    def __str__(self) -> str:
        return self.text

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def _max_tokens(max_tokens, max_new_tokens, default: int = DEFAULT_MAX_TOKENS) -> int:
    if max_tokens is not None and max_new_tokens is not None and max_tokens != max_new_tokens:
        raise ValueError(f"max_tokens={max_tokens} and max_new_tokens={max_new_tokens} disagree "
                         "(they are the same setting: give one)")
    n = max_tokens if max_tokens is not None else max_new_tokens
    return default if n is None else n


def _stop_list(stop) -> List[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    stop = list(stop)
    for s in stop:
        if not isinstance(s, str):
            raise TypeError(f"stop must be a str or a list of str, got an item of type "
                            f"{type(s).__name__}")
    return stop


class _CachePool:
    """Caches lent to one reply at a time, picked by the longest common prefix."""

    def __init__(self, make, size: int):
        self._make, self._size = make, size
        self._free: List[object] = []
        self._lock = threading.Lock()

    def take(self, ids: Sequence[int]):
        with self._lock:
            if not self._free:
                return self._make()
            best = max(range(len(self._free)), key=lambda i: self._free[i].common_prefix(ids))
            return self._free.pop(best)

    def give_back(self, cache) -> None:
        with self._lock:
            self._free.append(cache)
            del self._free[: max(0, len(self._free) - self._size)]  # forget the oldest

    def clear(self) -> None:
        with self._lock:
            self._free.clear()


class TextModel:
    """A GPT (``model.gpt``) with its tokenizer, chat template and stop tokens. Everything a
    GPT has (config, params, forward_cached, new_cache, ...) is reached on it too.

    template: how chats are formatted: None (the model file's own template; a model without
    one raises MissingTemplateError when asked to chat), a built-in name ("chatml", ...), a
    Jinja template string or a path to one."""

    def __init__(self, gpt, tokenizer, chat_template: Optional[str] = None,
                 stop_tokens: Sequence[int] = (), weights: str = "fp32", source: str = "",
                 template=None, name: str = ""):
        self.gpt = gpt
        self.weights = weights  # 'quantized' / 'bf16' (packed, inference only) or 'fp32'
        self.tokenizer = tokenizer
        self.chat_template = chat_template  # the model file's template source (or None)
        self.template = template            # what the user chose instead (or None)
        self.stop_tokens = list(stop_tokens)
        self.source = source
        self.name = name or source
        self._pool = _CachePool(self.new_cache, _POOL_SIZE)
        self._format = None

    def __getattr__(self, name):
        if name == "gpt":  # not set yet (e.g. while unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.gpt, name)

    def __repr__(self) -> str:
        c = self.config
        return (f"{type(self).__name__}({self.name!r}, {c.n_layer} layers, n_embd {c.n_embd}, "
                f"vocab {c.vocab_size}, context {self.context_length}, {self.weights} weights "
                f"on {self.device})")

    @property
    def quantized(self) -> bool:
        """True for packed weights (quantized or bf16), which are inference only."""
        return self.gpt.packed

    @property
    def context_length(self) -> int:
        """The most tokens a prompt plus its reply can hold (the model's block_size, or the
        max_context it was loaded with)."""
        return self.config.block_size

    def kv_cache_bytes(self, n_tokens: Optional[int] = None) -> int:
        """Bytes of the K and V buffers for n_tokens (default: the whole context), in the
        dtype new_cache makes (self.gpt.kv_dtype: float32, or float16 for half as many)."""
        c = self.config
        n = self.context_length if n_tokens is None else int(n_tokens)
        itemsize = np.dtype(self.gpt.kv_dtype if self.gpt.device == "cpu" else np.float32).itemsize
        return 2 * c.n_layer * c.n_kv_head * c.head_dim * n * itemsize

    def to(self, device: str) -> "TextModel":
        """Moves the weights to 'cpu', 'cuda' or 'emu' (see GPT.to); caches follow."""
        self.gpt.to(device)
        self._pool.clear()
        return self

    def new_cache(self, max_len: Optional[int] = None, batch: int = 1, dtype=None):
        """A KV cache for max_len tokens (default: the whole context); dtype as GPT.new_cache."""
        return self.gpt.new_cache(max_len or self.context_length, batch, dtype)

    # ---- plain continuation -------------------------------------------------------------------

    def generate(self, prompt, max_new_tokens: Optional[int] = None, *, max_tokens=None,
                 stream: bool = False, seed: Optional[int] = None, stop=None,
                 stop_strings: Sequence[str] = (), cache=None, stats=None,
                 sampling: Optional[SamplingConfig] = None, json_schema=None, regex=None,
                 grammar=None, response_format=None, **settings):
        """Continues `prompt` (text, or a list of token ids; a list of texts gives a list of
        continuations, decoded together: one pass over the weights per step for the whole batch,
        each text equal to its prompt's run alone with the same seed). Returns the text, or an
        iterator of pieces with stream=True. settings: temperature (0 = greedy), top_k, top_p,
        min_p, repetition_penalty over sampling.DEFAULT_SAMPLING. stop / stop_strings: strings
        that end the text. For a list: max_tokens, sampling, seed and stop may also be lists
        (one per prompt); stats, a list of GenerationStats to fill. json_schema / regex /
        grammar (Lark or GBNF) / response_format (the OpenAI API's): the text follows it
        (structured output, kernelgpt.structured; needs the "structured" extra)."""
        structured = dict(json_schema=json_schema, regex=regex, grammar=grammar,
                          response_format=response_format)
        if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(p, str) for p in prompt):
            if stream:
                raise ValueError("stream=True takes one prompt, not a list")
            if cache is not None:
                raise ValueError("cache= takes one prompt; a list of prompts gets its own caches")
            return self._generate_list(prompt, max_new_tokens, max_tokens, seed, stop,
                                       stop_strings, stats, sampling, settings, structured)
        n = _max_tokens(max_tokens, max_new_tokens, 128)
        stops = _stop_list(stop) + _stop_list(stop_strings)
        config = sampling_config(settings, sampling, where="generate", also=_GENERATE_ARGS)
        pieces = _generate(self, self.tokenizer, prompt, n, config, seed=seed,
                           stop_tokens=self.stop_tokens, stop_strings=stops, cache=cache,
                           stats=stats, constraint=_constraint(self, structured))
        return pieces if stream else "".join(pieces)

    def _generate_list(self, prompts, max_new_tokens, max_tokens, seed, stop, stop_strings,
                       stats, sampling, settings, structured=None):
        k = len(prompts)

        def each(value, name):  # one value for every prompt, or a list of k
            if isinstance(value, (list, tuple)) and not (name == "stop" and
                                                         all(isinstance(v, str) for v in value)):
                if len(value) != k:
                    raise ValueError(f"generate: {name} has {len(value)} entries for {k} prompts")
                return list(value)
            return [value] * k

        if isinstance(max_tokens, (list, tuple)) or isinstance(max_new_tokens, (list, tuple)):
            limits = [_max_tokens(a, b, 128) for a, b in zip(each(max_tokens, "max_tokens"),
                                                             each(max_new_tokens, "max_tokens"))]
        else:
            limits = _max_tokens(max_tokens, max_new_tokens, 128)
        stops = [_stop_list(s) + _stop_list(stop_strings) for s in each(stop, "stop")]
        configs = [sampling_config(dict(settings), c, where="generate", also=_GENERATE_ARGS)
                   for c in each(sampling, "sampling")]
        constraints = [_constraint(self, structured or {}) for _ in range(k)]
        return generate_batch(self, self.tokenizer, prompts, limits, configs, each(seed, "seed"),
                              self.stop_tokens, stops, stats, constraints)

    # ---- chat ------------------------------------------------------------------------------------

    def chat_format(self):
        """The ChatTemplate chats are rendered with (see the class docstring)."""
        if self._format is None:
            self._format = chat_format.resolve_template(self.template, self.chat_template,
                                                        self.tokenizer)
        return self._format

    def encode_chat(self, messages, add_generation_prompt: bool = True) -> List[int]:
        return chat_format.encode_chat(self.tokenizer, messages, add_generation_prompt,
                                       template=self.chat_format())

    def chat_session(self, system: Optional[str] = None, *, max_context: Optional[int] = None
                     ) -> "ChatSession":
        """A conversation that owns its KV cache (max_context tokens, default the model's)."""
        return ChatSession(self, system, max_context)

    def chat(self, messages, max_new_tokens: Optional[int] = None, *, max_tokens=None,
             stream: bool = True, seed: Optional[int] = None, stop=None, stats=None,
             sampling: Optional[SamplingConfig] = None, json_schema=None, regex=None,
             grammar=None, response_format=None, **settings):
        """The assistant's reply to `messages` ([{"role", "content"}], OpenAI style; content
        may be a list of text parts). Stateless: nothing of this call is remembered except
        a cache of recent prompts' keys and values (prefix reuse). stream=True (default)
        returns an iterator of text pieces whose ``.result`` is the ChatResult once it ends;
        stream=False returns the ChatResult. json_schema / regex / grammar / response_format:
        the reply follows it (structured output, as generate)."""
        n = _max_tokens(max_tokens, max_new_tokens)
        config = sampling_config(settings, sampling, where="chat", also=_CHAT_ARGS)
        messages = chat_format.normalize_messages(messages)
        ids, kept, notice = _fit(self, messages, n, self.context_length)
        reply = _Reply(self, ids, n, config, seed, _stop_list(stop), stats, None,
                       len(messages) - len(kept), notice,
                       _constraint(self, dict(json_schema=json_schema, regex=regex,
                                              grammar=grammar, response_format=response_format)))
        return reply if stream else reply.run()

    def create_chat_completion(self, messages, *, stream: bool = False,
                               max_tokens: Optional[int] = None, stop=None,
                               seed: Optional[int] = None, model: Optional[str] = None,
                               response_format=None, **settings):
        """OpenAI's chat.completions.create / llama-cpp-python's create_chat_completion: a
        dict with id, object "chat.completion", created, model, choices [{index, message
        {role, content}, finish_reason}] and usage {prompt_tokens, completion_tokens,
        total_tokens}; with stream=True an iterator of "chat.completion.chunk" dicts whose
        choices carry a delta (the role first, then content pieces, then finish_reason)."""
        config = sampling_config(settings, None, where="create_chat_completion",
                                 also=("messages", "stream", "max_tokens", "stop", "seed", "model",
                                       "response_format"))
        reply = self.chat(messages, max_tokens=max_tokens, stream=True, seed=seed, stop=stop,
                          sampling=config, response_format=response_format)
        meta = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()),
                "model": model or self.name}
        if stream:
            return _chunks(reply, meta)
        r = reply.run()
        return dict(meta, object="chat.completion", choices=[{
            "index": 0, "message": {"role": "assistant", "content": r.text}, "logprobs": None,
            "finish_reason": r.finish_reason}], usage=_usage(r))

    def create_completion(self, prompt: str, *, stream: bool = False,
                          max_tokens: Optional[int] = 16, stop=None, seed: Optional[int] = None,
                          model: Optional[str] = None, response_format=None, **settings):
        """OpenAI's completions.create (plain text continuation): choices [{text, index,
        finish_reason}] and usage; stream=True yields "text_completion" chunks."""
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
        config = sampling_config(settings, None, where="create_completion",
                                 also=("prompt", "stream", "max_tokens", "stop", "seed", "model",
                                       "response_format"))
        stats = GenerationStats()
        pieces = self.generate(prompt, max_tokens=max_tokens, stream=True, seed=seed, stop=stop,
                               stats=stats, sampling=config, response_format=response_format)
        meta = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion",
                "created": int(time.time()), "model": model or self.name}

        def choice(text, finish):
            return {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}

        if stream:
            def chunks():
                for piece in pieces:
                    yield dict(meta, choices=[choice(piece, None)])
                yield dict(meta, choices=[choice("", stats.finish_reason)])
            return chunks()
        text = "".join(pieces)
        n = len(stats.new_tokens)
        return dict(meta, choices=[choice(text, stats.finish_reason)], usage={
            "prompt_tokens": stats.prompt_tokens, "completion_tokens": n,
            "total_tokens": stats.prompt_tokens + n})


def _usage(r: ChatResult) -> Dict[str, int]:
    return {"prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
            "total_tokens": r.total_tokens}


def _chunks(reply: "_Reply", meta: dict) -> Iterator[dict]:
    def chunk(delta, finish=None):
        return dict(meta, object="chat.completion.chunk", choices=[
            {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}])
    yield chunk({"role": "assistant", "content": ""})
    for piece in reply:
        yield chunk({"content": piece})
    yield chunk({}, reply.result.finish_reason)


def _fit(model: TextModel, messages: List[dict], max_tokens: int, context: int):
    """The prompt ids for the newest messages that fit `context` with room for a reply: the
    oldest turns after the system prompt are dropped first. Returns (ids, kept, notice)."""
    head = [m for m in messages[:1] if m["role"] == "system"]
    turns = messages[len(head):]
    room = min(max_tokens, context // 2)  # what a reply may need, at most half the context
    dropped = 0
    while True:
        kept = head + turns[dropped:]
        ids = model.encode_chat(kept)
        if len(ids) + room <= context or dropped >= len(turns) - 1:
            break
        dropped += 1
        if turns[dropped - 1]["role"] == "user" and dropped < len(turns) - 1 and \
                turns[dropped]["role"] == "assistant":
            dropped += 1  # drop a whole exchange: a conversation starts with the user
    if len(ids) >= context:
        raise ValueError(f"the conversation's last message alone is {len(ids)} tokens with the "
                         f"chat template, more than the model's context of {context} tokens")
    notice = None
    if dropped:
        notice = (f"dropped the {dropped} oldest message{'s' if dropped > 1 else ''} to fit "
                  f"the {context}-token context")
    return ids, kept, notice


class _Reply:
    """One assistant reply being generated: iterate for the text pieces; ``result`` (and
    ``run()``) give the ChatResult. ``notice`` (what was dropped to fit the context) is known
    before the first piece. The cache it uses is either a session's or borrowed from
    the model's pool and given back when the reply ends, however it ends."""

    def __init__(self, model, ids, max_tokens, config, seed, stop, stats, cache, n_dropped,
                 notice, constraint=None):
        self.constraint = constraint
        self.model, self.ids, self.n_dropped, self.notice = model, ids, n_dropped, notice
        self.stats = stats if stats is not None else GenerationStats()
        self._own_cache = cache
        self._args = (max_tokens, config, seed, stop)
        self._pieces: List[str] = []
        self._iter = None
        self.result: Optional[ChatResult] = None
        self.on_done = None  # called with the ChatResult (ChatSession records the turn)

    def __iter__(self):
        if self._iter is None:
            self._iter = self._run()
        return self._iter

    def __next__(self):
        return next(iter(self))

    def close(self) -> None:
        if self._iter is not None:
            self._iter.close()

    def run(self) -> ChatResult:
        for _ in self:
            pass
        return self.result

    def _run(self):
        model = self.model
        max_tokens, config, seed, stop = self._args
        cache = self._own_cache if self._own_cache is not None else model._pool.take(self.ids)
        try:
            for piece in _generate(model, model.tokenizer, self.ids, max_tokens, config,
                                   seed=seed, stop_tokens=model.stop_tokens, stop_strings=stop,
                                   cache=cache, stats=self.stats, slide=False,
                                   constraint=self.constraint):
                self._pieces.append(piece)
                yield piece
        finally:
            if self._own_cache is None:
                model._pool.give_back(cache)
            s = self.stats
            self.result = ChatResult("".join(self._pieces), s.finish_reason or "interrupted",
                                     len(self.ids), len(s.new_tokens), self.n_dropped,
                                     self.notice, s)
            if self.on_done is not None:
                self.on_done(self.result)


class ChatSession:
    """A conversation with a model: remembers the messages and owns one KV cache, so each
    turn prefills only what is new. Sessions on one model are independent of each other.

        session = model.chat_session(system="You are a pirate.")
        for piece in session.send("Hello!"):
            print(piece, end="")
        session.last.finish_reason, session.messages, session.reset()

    A reply stopped early (its iterator closed, or Ctrl-C while iterating) is kept as the
    assistant's turn with finish_reason "interrupted"."""

    def __init__(self, model: TextModel, system: Optional[str] = None,
                 max_context: Optional[int] = None):
        if system is not None and not isinstance(system, str):
            raise TypeError(f"system must be a str or None, got {type(system).__name__}")
        context = model.context_length if max_context is None else int(max_context)
        if not 1 <= context <= model.context_length:
            raise ValueError(f"max_context must be in [1, {model.context_length}] (the model's "
                             f"context), got {max_context}")
        self.model = model
        self.context_length = context
        self.cache = model.new_cache(context)
        self._system = system
        self.history: List[dict] = []  # user and assistant turns
        self.last: Optional[ChatResult] = None
        model.chat_format()  # a model without a chat template fails here, not at the 1st turn

    @property
    def system(self) -> Optional[str]:
        return self._system

    @system.setter
    def system(self, text: Optional[str]) -> None:
        if text is not None and not isinstance(text, str):
            raise TypeError(f"system must be a str or None, got {type(text).__name__}")
        self._system = text
        self.reset()

    @property
    def messages(self) -> List[dict]:
        """The conversation so far, as the chat template sees it."""
        head = [{"role": "system", "content": self._system}] if self._system else []
        return head + [dict(m) for m in self.history]

    def reset(self) -> None:
        """Forgets the conversation (the system prompt stays)."""
        self.history = []
        self.last = None
        self.cache.reset()

    def send(self, content, *, stream: bool = True, max_tokens: Optional[int] = None,
             max_new_tokens: Optional[int] = None, seed: Optional[int] = None, stop=None,
             stats=None, sampling: Optional[SamplingConfig] = None,
             **settings) -> Union[Iterator[str], ChatResult]:
        """Adds a user message and generates the reply: an iterator of text pieces (stream)
        or the ChatResult. ``self.last`` is the reply's ChatResult once it ends."""
        n = _max_tokens(max_tokens, max_new_tokens)
        config = sampling_config(settings, sampling, where="send", also=_CHAT_ARGS)
        user = chat_format.normalize_messages([{"role": "user", "content": content}])[0]
        messages = self.messages + [user]
        ids, kept, notice = _fit(self.model, messages, n, self.context_length)
        n_dropped = len(messages) - len(kept)
        reply = _Reply(self.model, ids, n, config, seed, _stop_list(stop), stats, self.cache,
                       n_dropped, notice)

        def done(result: ChatResult) -> None:
            if n_dropped:  # the dropped turns are gone for good: later turns must fit too
                self.history = self.history[n_dropped:]
            self.history += [user, {"role": "assistant", "content": result.text}]
            self.last = result

        reply.on_done = done
        return reply if stream else reply.run()
