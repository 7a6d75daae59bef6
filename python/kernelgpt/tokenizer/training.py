"""Training a byte-level BPE vocabulary, as GPT-2 and minbpe define it, and reading its
merge history.

The loop itself, in minbpe's words: pre-tokenize the corpus into pieces, count every adjacent
pair of tokens in them, merge the most frequent pair into a new token (ties: the smallest
(left id, right id)), repeat until `vocab_size` tokens. `reference.bpe_train` is that loop in
a screen of plain Python; `train` here runs the same loop in C++ (csrc/bpe/trainer.cpp:
parallel piece counting, incremental pair counts, a lazy max-heap) and gives the same merges.
With `trace=True` the merge history stays on the encoding as `enc.trace`, a list of
`Merge(left, right, id, count)`, and `format_trace` prints it:

    >>> enc = train(["low lower lowest"], vocab_size=259, pattern="whitespace", trace=True)
    >>> enc.trace[0]
    Merge(left=108, right=111, id=256, count=3)
    >>> print(format_trace(enc))                      # doctest: +NORMALIZE_WHITESPACE
    base vocabulary: 256 byte tokens; the corpus uses 8: 'l' 'o' 'w' ' ' 'e' 'r' 's' 't'
    merge 1: 'l' + 'o' -> 'lo'  (id 256, count 3)
    merge 2: 'lo' + 'w' -> 'low'  (id 257, count 3)
    merge 3: 'low' + 'e' -> 'lowe'  (id 258, count 2)
"""
from __future__ import annotations

import collections
import os
import pathlib
from typing import Dict, Iterable, List, Optional, Sequence, Union

import numpy as np

from .. import _C
from .encoding import Encoding
from .patterns import CL100K_PATTERN, fix_surrogates, scanner_for

__all__ = ["train", "format_trace", "Merge", "show_bytes"]

Merge = collections.namedtuple("Merge", ["left", "right", "id", "count"])
Merge.__doc__ = "One training step: tokens `left` and `right` became `id`; the pair occurred `count` times."


def train(texts_or_paths: Iterable[Union[str, bytes, os.PathLike]], vocab_size: int, *,
          pattern: str = CL100K_PATTERN,
          special_tokens: Union[None, Sequence[str], Dict[str, int]] = None,
          trace: bool = False, num_threads: Optional[int] = None,
          name: str = "trained") -> Encoding:
    """Trains a byte-level BPE vocabulary of `vocab_size` tokens (256 bytes + merges).

    texts_or_paths: str or bytes are training text; pathlib.Path (any os.PathLike) are files
        read as bytes (a plain str is always text, never a file name).
    pattern: the pre-tokenizer ('cl100k', 'gpt2', 'whitespace' or their pattern strings).
    special_tokens: names that get the ids after the merges (a list), or {name: id}.
    trace: keep every merge as `Merge(left, right, id, count)` in `encoding.trace` (see
        `format_trace`).
    Ties between equally frequent pairs go to the smallest (left id, right id), so training
    is deterministic and the same for any `num_threads` (default: kernelgpt.get_num_threads()).
    Training stops early when no pair is left (a tiny corpus).
    """
    if isinstance(texts_or_paths, (str, bytes, os.PathLike)):
        texts_or_paths = [texts_or_paths]
    inputs, is_path = [], []
    for item in texts_or_paths:
        if isinstance(item, os.PathLike):
            path = pathlib.Path(item)
            if not path.is_file():
                raise FileNotFoundError(f"train: no such file: {path}")
            inputs.append(os.fsencode(path))  # bytes: any file name the OS allows
            is_path.append(True)
        elif isinstance(item, (str, bytes)):
            inputs.append(item)
            is_path.append(False)
        else:
            raise TypeError(f"train: expected str, bytes or a path, got {type(item).__name__}")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise TypeError(f"train: vocab_size must be an int, got {type(vocab_size).__name__}")
    if vocab_size < 256:
        raise ValueError(f"train: vocab_size must be at least 256 (the byte tokens), got {vocab_size}")
    if num_threads is None:
        num_threads = _C.get_num_threads()
    scanner = scanner_for(pattern)
    try:
        result = _C.bpe_train(inputs, is_path, vocab_size, scanner, num_threads)
    except UnicodeEncodeError:  # lone surrogates: fix them as encode() does
        inputs = [fix_surrogates(x) if isinstance(x, str) and not p else x
                  for x, p in zip(inputs, is_path)]
        result = _C.bpe_train(inputs, is_path, vocab_size, scanner, num_threads)
    tokens = result["tokens"]
    ranks = {t: i for i, t in enumerate(tokens)}
    if special_tokens is None:
        specials = {}
    elif isinstance(special_tokens, dict):
        specials = dict(special_tokens)
    else:
        specials = {s: len(tokens) + k for k, s in enumerate(special_tokens)}
    enc = Encoding(name, pat_str=pattern, mergeable_ranks=ranks, special_tokens=specials)
    if trace:
        enc.trace = [Merge(*m) for m in result["merges"]]
        enc._trace_base = _bytes_used(inputs, is_path)
    enc.training_stats = {k: result[k] for k in ("pieces", "distinct_pieces", "bytes")}
    return enc


def _bytes_used(inputs, is_path) -> List[int]:
    """The byte values the corpus contains, in order of first appearance."""
    first = {}
    offset = 0
    for item, path in zip(inputs, is_path):
        data = pathlib.Path(os.fsdecode(item)).read_bytes() if path else (
            item.encode("utf-8") if isinstance(item, str) else item)
        present = np.flatnonzero(np.bincount(np.frombuffer(data, np.uint8), minlength=256))
        for b in present:
            if int(b) not in first:
                first[int(b)] = offset + data.find(bytes([int(b)]))
        offset += len(data)
    return sorted(first, key=first.get)


def show_bytes(data: bytes) -> str:
    """Token bytes as a quoted string (bytes that are not UTF-8 as \\x.. escapes)."""
    return repr(data.decode("utf-8", "backslashreplace"))


def format_trace(encoding: Encoding) -> str:
    """The merges of a `train(..., trace=True)` run, one line each, with token text."""
    if encoding.trace is None:
        raise ValueError("this encoding has no trace: train it with trace=True")
    base = getattr(encoding, "_trace_base", [])
    lines = [f"base vocabulary: 256 byte tokens; the corpus uses {len(base)}: " +
             " ".join(show_bytes(bytes([b])) for b in base)]
    tok = encoding.decode_single_token_bytes
    for k, m in enumerate(encoding.trace, 1):
        lines.append(f"merge {k}: {show_bytes(tok(m.left))} + {show_bytes(tok(m.right))} -> "
                     f"{show_bytes(tok(m.id))}  (id {m.id}, count {m.count})")
    return "\n".join(lines)
