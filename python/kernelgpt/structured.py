"""Structured output: text that follows a JSON schema, a regular expression or a grammar, token
by token.

At every step the grammar says which tokens may come next; the others' logits are set to -inf
before the sampler runs, so whatever the sampler draws keeps the text on the grammar, and the
text is complete (it parses) when the model ends it with its stop token, the only token the
grammar allows once it is complete.

The matching is done by llguidance (``pip install "kernelgpt[structured]"``), the Rust library
llama.cpp and vLLM use: it compiles JSON schemas (with nested objects, arrays, enums, numbers
with bounds, strings with patterns), regular expressions and Lark / GBNF grammars, and computes
each step's token mask over the whole vocabulary in tens of microseconds. kernelgpt gives it
the model's vocabulary (each token's bytes) and its tokenizer, computes the next mask on a
helper thread while the forward pass runs (llguidance releases the GIL), and applies it in
place on the logits (one pass, no copy of the vocabulary-sized array).

    model.generate("A user as JSON:", json_schema={"type": "object", ...})
    model.generate("Date: ", regex=r"\\d{4}-\\d{2}-\\d{2}")
    model.generate("Answer: ", grammar='start: "yes" | "no"')        # Lark (or GBNF)
    model.chat(messages, response_format={"type": "json_object"})   # as the OpenAI API

The text can still end early at the token limit (max_tokens): give the reply room.
"""
from __future__ import annotations

import json
import threading
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Optional, Sequence

import numpy as np

__all__ = ["Constraint", "compile_grammar", "grammar_from_response_format", "StructuredOutputError"]


# The whitespace allowed between JSON tokens, as llama.cpp's JSON-schema grammars allow it: a
# space, or one or two newlines and an indent of up to 20 spaces / tabs. Pretty-printed JSON
# fits; a model cannot loop on whitespace until the token limit (llguidance's default, any
# amount, lets SmolLM2 emit newlines forever). A schema's "x-guidance" options override it.
JSON_WHITESPACE = r"(?:[ ]|\n{1,2}[ \t]{0,20})"


class StructuredOutputError(ValueError):
    """A schema, regex or grammar that cannot be compiled, or a constraint misused."""


def _llguidance():
    try:
        import llguidance
        import llguidance.numpy  # noqa: F401
    except ImportError:
        raise ImportError('structured output (json_schema=, regex=, grammar=, response_format=) '
                          'needs llguidance: pip install "kernelgpt[structured]"') from None
    return llguidance


def compile_grammar(json_schema: Any = None, regex: Optional[str] = None,
                    grammar: Optional[str] = None) -> str:
    """The llguidance grammar for exactly one of: a JSON schema (a dict, or its JSON text;
    True or {} for any JSON value), a regular expression, or a Lark / GBNF grammar."""
    given = [name for name, v in (("json_schema", json_schema), ("regex", regex),
                                  ("grammar", grammar)) if v is not None]
    if len(given) != 1:
        raise StructuredOutputError(f"give exactly one of json_schema, regex, grammar (got "
                                    f"{', '.join(given) or 'none'})")
    llg = _llguidance()
    try:
        if json_schema is not None:
            if json_schema is True:
                json_schema = {}
            if isinstance(json_schema, str):
                json_schema = json.loads(json_schema)
            if not isinstance(json_schema, dict):
                raise StructuredOutputError(f"json_schema must be a JSON object (a dict), got "
                                            f"{type(json_schema).__name__}")
            return llg.LLMatcher.grammar_from_json_schema(
                json_schema, defaults={"whitespace_pattern": JSON_WHITESPACE})
        if regex is not None:
            if not isinstance(regex, str):
                raise StructuredOutputError(f"regex must be a str, got {type(regex).__name__}")
            return llg.LLMatcher.grammar_from_regex(regex)
        if not isinstance(grammar, str):
            raise StructuredOutputError(f"grammar must be a str, got {type(grammar).__name__}")
        return llg.grammar_from("grammar", grammar)
    except StructuredOutputError:
        raise
    except (ValueError, TypeError, json.JSONDecodeError) as e:
        raise StructuredOutputError(f"cannot compile the {given[0]}: {e}") from None


def grammar_from_response_format(response_format: Any) -> Optional[str]:
    """The OpenAI API's response_format: {"type": "text"} (None: no constraint),
    {"type": "json_object"} (any JSON object) or {"type": "json_schema", "json_schema":
    {"name": ..., "schema": {...}, "strict": ...}}."""
    if response_format is None:
        return None
    if not isinstance(response_format, dict):
        raise StructuredOutputError("response_format must be an object with a 'type'")
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return compile_grammar(json_schema={"type": "object"})
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
            raise StructuredOutputError("response_format json_schema must be an object with a "
                                        "'schema' object")
        return compile_grammar(json_schema=spec.get("schema", {}))
    raise StructuredOutputError(f"response_format type must be 'text', 'json_object' or "
                                f"'json_schema', got {kind!r}")


class _Vocabulary:
    """What llguidance.TokenizerWrapper reads from a tokenizer: every token's bytes (special
    tokens as 0xff + their name, llguidance's convention), the stop token, and encode()."""

    def __init__(self, tokenizer, n_vocab: int, eos: int):
        n_tok = tokenizer.n_vocab
        special = [i for i in range(n_tok) if tokenizer.is_special_token(i)]
        special_set = set(special)
        tokens = []
        for i in range(n_tok):
            raw = tokenizer.decode_single_token_bytes(i)
            tokens.append(b"\xff" + raw if i in special_set else raw)
        tokens += [b""] * (n_vocab - n_tok)  # the model's padding rows, if any
        self.tokens, self.special_token_ids = tokens, special
        self.eos_token_id, self.bos_token_id = eos, None
        self._tokenizer = tokenizer

    def __call__(self, text):
        if isinstance(text, bytes):
            raise TypeError("str only")  # TokenizerWrapper then passes str
        return self._tokenizer.encode_ordinary(text)


# LLTokenizer per (tokenizer, vocabulary size, stop tokens): building one takes ~1 s at SmolLM2's
# 49,152 tokens; kept while the tokenizer lives.
_TOKENIZERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_TOKENIZERS_LOCK = threading.Lock()


def _lltokenizer(tokenizer, n_vocab: int, stop_tokens: Sequence[int]):
    llg = _llguidance()
    key = (n_vocab, tuple(stop_tokens))
    with _TOKENIZERS_LOCK:
        per = _TOKENIZERS.setdefault(tokenizer, {})
        if key not in per:
            vocab = _Vocabulary(tokenizer, n_vocab, int(stop_tokens[0]))
            per[key] = llg.LLTokenizer(llg.TokenizerWrapper(vocab), n_vocab=n_vocab,
                                       eos_token=[int(t) for t in stop_tokens])
        return per[key]


class Constraint:
    """One sequence's grammar state: ``apply(logits)`` masks the tokens the grammar forbids
    next (in place), ``accept(token)`` advances it. The next mask is computed on a helper
    thread as soon as a token is accepted, so it is ready when the next logits are."""

    def __init__(self, grammar: str, tokenizer, n_vocab: int, stop_tokens: Sequence[int]):
        if not stop_tokens:
            raise StructuredOutputError("structured output needs the model's stop token (the "
                                        "grammar ends the text with it)")
        llg = _llguidance()
        self.n_vocab = int(n_vocab)
        self.stop_tokens = [int(t) for t in stop_tokens]
        self.matcher = llg.LLMatcher(_lltokenizer(tokenizer, self.n_vocab, self.stop_tokens),
                                     grammar, log_level=0)
        if self.matcher.is_error():
            raise StructuredOutputError(f"invalid grammar: {self.matcher.get_error()}")
        self._words = (self.n_vocab + 31) // 32
        self._mask = np.full((1, self._words), -1, dtype=np.int32)
        self._executor: Optional[ThreadPoolExecutor] = None
        self._pending: Optional[Future] = None
        self.prepare()

    @classmethod
    def for_model(cls, model, json_schema=None, regex=None, grammar=None,
                  response_format=None) -> Optional["Constraint"]:
        """The constraint for a TextModel's vocabulary and stop tokens, or None when nothing
        constrains the text."""
        if response_format is not None:
            if json_schema is not None or regex is not None or grammar is not None:
                raise StructuredOutputError("give response_format or one of json_schema, regex, "
                                            "grammar, not both")
            compiled = grammar_from_response_format(response_format)
        elif json_schema is None and regex is None and grammar is None:
            return None
        else:
            compiled = compile_grammar(json_schema, regex, grammar)
        if compiled is None:
            return None
        return cls(compiled, model.tokenizer, model.config.vocab_size, model.stop_tokens)

    def _compute(self) -> None:
        import llguidance.numpy as lln
        lln.fill_next_token_bitmask(self.matcher, self._mask, 0)

    def prepare(self) -> None:
        """Start computing the next mask (a helper thread; llguidance releases the GIL)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kg-grammar")
        self._pending = self._executor.submit(self._compute)

    def _settle(self) -> None:
        """Wait for the mask being computed (the matcher is busy until then)."""
        if self._pending is not None:
            self._pending.result()
            self._pending = None

    def allowed(self) -> np.ndarray:
        """bool [n_vocab]: the tokens the grammar allows next."""
        self._settle()
        bits = np.unpackbits(self._mask.view(np.uint8), bitorder="little")
        return bits[:self.n_vocab].astype(bool)

    def apply(self, logits: np.ndarray) -> np.ndarray:
        """Sets the forbidden tokens' logits to -inf, in place when the array is writable
        (else on a copy); returns the array."""
        if logits.shape != (self.n_vocab,):
            raise ValueError(f"logits of shape {logits.shape} for a vocabulary of {self.n_vocab}")
        allowed = self.allowed()
        if not allowed.any():
            raise StructuredOutputError(f"the grammar allows no next token: "
                                        f"{self.matcher.get_error() or 'dead end'}")
        if not logits.flags.writeable:
            logits = logits.copy()
        np.copyto(logits, -np.inf, where=~allowed)
        return logits

    def accept(self, token: int) -> None:
        """Advance past the sampled token and start computing the next mask."""
        self._settle()
        if not self.matcher.consume_token(int(token)):
            raise StructuredOutputError(f"token {token} does not follow the grammar: "
                                        f"{self.matcher.get_error()}")
        self.prepare()  # once the grammar is complete, the mask allows only the stop tokens

    @property
    def done(self) -> bool:
        """The grammar is complete and allows nothing more (the text can only end)."""
        self._settle()
        return self.matcher.is_stopped()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def __del__(self):
        ex = getattr(self, "_executor", None)
        if ex is not None:
            ex.shutdown(wait=False)
