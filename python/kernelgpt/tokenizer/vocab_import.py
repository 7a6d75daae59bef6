"""Reading vocabularies written by other tools: GPT-2's encoder.json + vocab.bpe, and the
tokenizer in a GGUF file's metadata. Both spell token bytes with GPT-2's byte-to-unicode
alphabet and list merges as "left right".

The functions here read and check; they return plain values (ranks, special tokens, the
scanner), and the classmethods `Encoding.from_gpt2_files`, `Encoding.from_gguf_vocab` and
`Encoding.from_gguf_metadata` (encoding.py) build the Encoding from them.

Merge rule (GGUF). Merging follows the ranks (ids) of the merged tokens, tiktoken's rule;
Hugging Face follows the position of the pair in the merge list. They agree when merged
tokens are numbered in merge order after their parts (SmolLM2: merge k makes token 252 + k)
and every token longer than one byte comes from a merge, both checked by `gguf_vocab`
(ValueError otherwise), and when no adjacent pair whose concatenation is a token, but not by
its own merge, is ever the best candidate: true of vocabularies that BPE training made
(checked on SmolLM2 against reference.bpe_encode_merges in the tests, and on 412,394 distinct
pieces of Python source and Shakespeare against Hugging Face tokenizers).
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Dict, Optional, Sequence, Tuple, Union

__all__ = ["GGUF_PRE_TOKENIZERS", "gpt2_char_to_byte", "gpt2_files", "gguf_vocab",
           "gguf_metadata_arguments"]

# tokenizer.ggml.pre values -> the scanner that splits like them.
GGUF_PRE_TOKENIZERS = {"smollm": "smollm", "gpt2": "gpt2"}
_GGUF_NORMAL, _GGUF_CONTROL = 1, 3  # llama.cpp's token types


def gpt2_char_to_byte() -> Dict[str, int]:
    """GPT-2's byte-to-unicode spelling, reversed: printable bytes other than space stand for
    themselves, the other bytes are chr(256), chr(257), ... in byte order. The dict's order
    (printable bytes first) is also the order of GPT-2's 256 byte tokens."""
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    table = {chr(b): b for b in printable}
    others = [b for b in range(256) if b not in table.values()]
    table.update({chr(256 + k): b for k, b in enumerate(others)})
    return table


def gpt2_files(encoder_json: Union[str, os.PathLike], vocab_bpe: Union[str, os.PathLike],
               special_tokens: Optional[Dict[str, int]]) -> Tuple[Dict[bytes, int], Dict[str, int]]:
    """(mergeable ranks, special tokens) of a GPT-2 style vocabulary: the 256 byte tokens in
    GPT-2's order, then one token per line of vocab.bpe, checked against encoder.json."""
    char_to_byte = gpt2_char_to_byte()

    def to_bytes(word: str) -> bytes:
        try:
            return bytes(char_to_byte[c] for c in word)
        except KeyError as err:
            raise ValueError(f"{vocab_bpe}: token {word!r:.40} has the character {err.args[0]!r}, "
                             "which is not in GPT-2's byte-to-unicode alphabet") from None

    ranks = {bytes([b]): i for i, b in enumerate(char_to_byte.values())}
    lines = pathlib.Path(vocab_bpe).read_text(encoding="utf-8").split("\n")
    for line in lines[1:]:
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{vocab_bpe}: a merge line must be two tokens, got {line!r:.60}")
        first, second = parts
        ranks[to_bytes(first) + to_bytes(second)] = len(ranks)
    encoder = json.loads(pathlib.Path(encoder_json).read_text(encoding="utf-8"))
    if not isinstance(encoder, dict):
        raise ValueError(f"{encoder_json}: expected a JSON object of token -> id")
    specials = {"<|endoftext|>": 50256} if special_tokens is None else dict(special_tokens)
    from_json = {to_bytes(k): v for k, v in encoder.items() if k not in specials and
                 k != "<|startoftext|>"}
    if from_json != ranks:
        raise ValueError(f"{encoder_json} does not match the merges in {vocab_bpe}")
    return ranks, specials


def gguf_vocab(tokens: Sequence[str], merges: Sequence[str], token_types: Sequence[int],
               pre: str, bos_token_id: Optional[int], eos_token_id: Optional[int]
               ) -> Tuple[Dict[bytes, int], Dict[str, int], str]:
    """(mergeable ranks, special tokens, scanner) of a GGUF vocabulary given as plain lists
    (see Encoding.from_gguf_vocab), after checking everything the merge rule relies on."""
    scanner = GGUF_PRE_TOKENIZERS.get(pre) if isinstance(pre, str) else None
    if scanner is None:
        raise ValueError(f"unsupported GGUF pre-tokenizer {pre!r}; supported: "
                         f"{', '.join(sorted(GGUF_PRE_TOKENIZERS))}")
    lists = {}
    for what, seq in (("tokens", tokens), ("merges", merges), ("token_types", token_types)):
        if isinstance(seq, (str, bytes, dict)) or not hasattr(seq, "__len__"):
            raise TypeError(f"from_gguf_vocab: {what} must be a list, got {type(seq).__name__}")
        lists[what] = list(seq)  # numpy arrays too
    tokens, merges, token_types = lists["tokens"], lists["merges"], lists["token_types"]
    if len(token_types) != len(tokens):
        raise ValueError(f"from_gguf_vocab: {len(tokens)} tokens but {len(token_types)} token types")
    char_to_byte = gpt2_char_to_byte()
    ranks: Dict[bytes, int] = {}
    specials: Dict[str, int] = {}
    for i, (token, kind) in enumerate(zip(tokens, token_types)):
        if not isinstance(token, str):
            raise TypeError(f"from_gguf_vocab: token {i} is a {type(token).__name__}, not a str")
        if kind == _GGUF_CONTROL:
            specials[token] = i
        elif kind == _GGUF_NORMAL:
            try:
                data = bytes(char_to_byte[c] for c in token)
            except (KeyError, TypeError):
                raise ValueError(f"from_gguf_vocab: token {i} ({token!r}) is not written in "
                                 "GPT-2's byte-to-unicode alphabet") from None
            if data in ranks:
                raise ValueError(f"from_gguf_vocab: tokens {ranks[data]} and {i} are both {token!r}")
            ranks[data] = i
        else:
            raise ValueError(f"from_gguf_vocab: token {i} ({token!r}) has type {kind!r}; only "
                             "normal (1) and control (3) tokens are supported")
    # Check that ranks reproduce the merge order (see the module docstring).
    made = set()
    previous = -1
    ids = {t: i for i, t in enumerate(tokens)}
    for k, merge in enumerate(merges):
        parts = merge.split(" ") if isinstance(merge, str) else ()
        if len(parts) != 2 or parts[0] not in ids or parts[1] not in ids:
            raise ValueError(f"from_gguf_vocab: merge {k} ({merge!r}) is not 'left right' "
                             "with two tokens of the vocabulary")
        result = ids.get(parts[0] + parts[1])
        if result is None or token_types[result] != _GGUF_NORMAL:
            raise ValueError(f"from_gguf_vocab: merge {k} ({merge!r}) makes "
                             f"{parts[0] + parts[1]!r}, which is not a normal token")
        if result <= previous or result <= max(ids[parts[0]], ids[parts[1]]):
            raise ValueError(f"from_gguf_vocab: merge {k} ({merge!r}) makes token {result}, "
                             "which is not numbered after its parts and the tokens of earlier "
                             "merges: kernelgpt needs merged tokens numbered in merge order")
        previous = result
        made.add(result)
    for data, i in ranks.items():
        if len(data) > 1 and i not in made:
            raise ValueError(f"from_gguf_vocab: token {i} ({tokens[i]!r}) is longer than one "
                             "byte but no merge makes it")
    for what, value in (("bos_token_id", bos_token_id), ("eos_token_id", eos_token_id)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or not 0 <= value < len(tokens)):
            raise ValueError(f"from_gguf_vocab: {what} must be a token id in [0, "
                             f"{len(tokens)}), got {value!r}")
    return ranks, specials, scanner


def gguf_metadata_arguments(metadata: Dict[str, object]) -> Tuple[tuple, Dict[str, object]]:
    """The (positional, keyword) arguments of Encoding.from_gguf_vocab that a GGUF file's
    {key: value} metadata holds, after checking that it describes a byte-level BPE."""
    if not isinstance(metadata, dict):
        raise TypeError(f"from_gguf_metadata: expected a dict, got {type(metadata).__name__}")
    model = metadata.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise ValueError(f"from_gguf_metadata: tokenizer.ggml.model is {model!r}; only 'gpt2' "
                         "(byte-level BPE) is supported")
    missing = [k for k in ("tokens", "merges", "token_type", "pre")
               if f"tokenizer.ggml.{k}" not in metadata]
    if missing:
        raise ValueError("from_gguf_metadata: the metadata has no " +
                         ", ".join(f"tokenizer.ggml.{k}" for k in missing))
    get = metadata.get
    args = (get("tokenizer.ggml.tokens"), get("tokenizer.ggml.merges"),
            get("tokenizer.ggml.token_type"), get("tokenizer.ggml.pre"))
    kwargs = dict(bos_token_id=get("tokenizer.ggml.bos_token_id"),
                  eos_token_id=get("tokenizer.ggml.eos_token_id"),
                  add_bos_token=bool(get("tokenizer.ggml.add_bos_token", False)))
    return args, kwargs
