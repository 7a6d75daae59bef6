"""`Encoding`, the tokenizer object with tiktoken's API, and `StreamDecoder` for generation.

`Encoding` holds the policy, as tiktoken's core.py does: the special-token checks, the
lone-surrogate fix-up, argument handling, pickling. The work happens in the C++ core
(`_C.BPE`, csrc/bpe), which releases the GIL. Where the pieces come from: the patterns are in
patterns.py, reading GPT-2 / GGUF vocabularies in vocab_import.py, named encodings in
registry.py, training in training.py.
"""
from __future__ import annotations

import bisect
import hashlib
import os
import pathlib
from typing import (AbstractSet, Callable, Collection, Dict, Iterator, List, Optional, Sequence,
                    Tuple, Union)

import numpy as np

from .. import _C
from . import vocab_import
from .patterns import GPT2_PATTERN, fix_surrogates, pattern_string, scanner_for

__all__ = ["Encoding", "StreamDecoder"]


def _raise_disallowed_special_token(token: str):
    raise ValueError(
        f"Encountered text corresponding to disallowed special token {token!r}.\n"
        "If you want this text to be encoded as a special token, "
        f"pass it to `allowed_special`, e.g. `allowed_special={{{token!r}, ...}}`.\n"
        f"If you want this text to be encoded as normal text, disable the check for this token "
        f"by passing `disallowed_special=(enc.special_tokens_set - {{{token!r}}})`.\n"
        "To disable this check for all special tokens, pass `disallowed_special=()`.\n"
    )


class Encoding:
    """A BPE tokenizer with tiktoken's API. Immutable, picklable, safe to share between
    threads (the C++ core releases the GIL while it works)."""

    def __init__(self, name: str, *, pat_str: str, mergeable_ranks: Dict[bytes, int],
                 special_tokens: Dict[str, int], explicit_n_vocab: Optional[int] = None):
        """Same arguments as tiktoken.Encoding; `pat_str` must be one of the patterns with a
        scanner (CL100K_PATTERN, GPT2_PATTERN, WHITESPACE_PATTERN, or their short names)."""
        core = _C.BPE.from_ranks(mergeable_ranks, special_tokens, scanner_for(pat_str))
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
        self._pat_str = pattern_string(pat_str)
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
        core = _C.BPE.from_tiktoken(data, special_tokens or {}, scanner_for(pattern))
        return cls._from_core(name or pathlib.Path(path).stem, pattern, core)

    @classmethod
    def from_gpt2_files(cls, encoder_json: Union[str, os.PathLike],
                        vocab_bpe: Union[str, os.PathLike], *, name: str = "gpt2",
                        special_tokens: Optional[Dict[str, int]] = None) -> "Encoding":
        """Loads a GPT-2 style vocabulary (encoder.json + vocab.bpe, tokens written with the
        byte-to-unicode mapping). Ranks follow the merges list, as in tiktoken's r50k_base,
        and are checked against encoder.json."""
        ranks, specials = vocab_import.gpt2_files(encoder_json, vocab_bpe, special_tokens)
        return cls(name, pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens=specials)

    @classmethod
    def from_gguf_vocab(cls, tokens: Sequence[str], merges: Sequence[str],
                        token_types: Sequence[int], pre: Optional[str], *,
                        bos_token_id: Optional[int] = None, eos_token_id: Optional[int] = None,
                        add_bos_token: bool = False, name: str = "gguf") -> "Encoding":
        """The tokenizer a GGUF file describes with `tokenizer.ggml.model = "gpt2"` (byte-level
        BPE), from its metadata as plain lists, so that any GGUF reader can feed it:

            tokens       tokenizer.ggml.tokens: token texts in GPT-2's byte-to-unicode spelling
            merges       tokenizer.ggml.merges: "left right", highest priority first
            token_types  tokenizer.ggml.token_type: 1 normal, 3 control, 4 user-defined, 5
                         unused (llama.cpp's numbers; see vocab_import.byte_level_vocab)
            pre          tokenizer.ggml.pre: any name of patterns.GGUF_PRE_TOKENIZERS (85 of
                         llama.cpp's: "llama-bpe", "qwen2", "deepseek-coder", "gpt-4o", ...);
                         None when the file has none (llama.cpp's "default")
            bos_token_id, eos_token_id, add_bos_token: tokenizer.ggml.* of the same names

        Control tokens (`<|im_start|>`, `<|im_end|>`, `<|endoftext|>`, ...) become special
        tokens: `encode(text, allowed_special="all")` turns their text into their ids as
        Hugging Face tokenizers does, `encode_ordinary` treats it as plain text, and decode
        writes their text. A byte that has no token of its own (SmolLM2 has none for 21 byte
        values, e.g. \\x04) is dropped before merging, as transformers and llama.cpp do.

        Merging follows the ranks (ids) of the merged tokens, tiktoken's rule; Hugging Face
        follows the position of the pair in the merge list. The vocabulary is checked for the
        conditions under which the two agree (ValueError otherwise): see vocab_import.py.
        """
        ranks, specials, added, decode_only, scanner = vocab_import.gguf_vocab(
            tokens, merges, token_types, pre, bos_token_id, eos_token_id)
        core = _C.BPE.from_ranks(ranks, specials, scanner, skip_unknown_bytes=True,
                                 added_tokens=added, decode_only=decode_only)
        enc = cls._from_core(name, scanner, core)
        enc.bos_token_id, enc.eos_token_id = bos_token_id, eos_token_id
        enc.add_bos_token = bool(add_bos_token)
        return enc

    @classmethod
    def from_gguf_metadata(cls, metadata: Dict[str, object], *, name: str = "gguf") -> "Encoding":
        """The tokenizer of a GGUF file's metadata as a {key: value} dict (any GGUF reader's
        output). `tokenizer.ggml.model = "gpt2"` (byte-level BPE): from_gguf_vocab on its
        tokens, merges and token_type (required) and pre, BOS / EOS (optional).
        `"llama"` (SentencePiece BPE: Llama 2, Mistral, Phi-3): a SentencePieceEncoding
        (kernelgpt/tokenizer/sentencepiece.py), which has the same encode / decode API. Other
        models (WordPiece "bert", Unigram "t5", RWKV, ...) raise ValueError naming them. The chat
        template stays in the metadata (`tokenizer.chat_template`, for kernelgpt.chat)."""
        if isinstance(metadata, dict) and metadata.get("tokenizer.ggml.model") == "llama":
            from . import sentencepiece
            return sentencepiece.from_gguf_metadata(metadata, name=name)
        args, kwargs = vocab_import.gguf_metadata_arguments(metadata)
        return cls.from_gguf_vocab(*args, **kwargs, name=name)

    @classmethod
    def from_tokenizer_json(cls, path: Union[str, os.PathLike, dict], *,
                            name: Optional[str] = None) -> "Encoding":
        """A Hugging Face `tokenizer.json` (a path, or the file parsed into a dict) of the
        byte-level BPE family: GPT-2, Llama 3, Qwen 2, SmolLM2 style. Read are its BPE model
        (vocab, merges), its pre-tokenizer (ByteLevel; Digits + ByteLevel; or a Split regex +
        ByteLevel, mapped to kernelgpt's exact scanner for that regex), its added tokens and a
        TemplateProcessing post-processor that adds a BOS (`add_bos_token`, as GGUF files say
        it). Added tokens become special tokens: `encode(text, allowed_special="all")` gives
        the ids of `tokenizers`' `encode(text, add_special_tokens=False)`.
        Anything else (a WordPiece / Unigram model, a normalizer, byte fallback, a regex
        without a scanner, add_prefix_space) raises ValueError naming it; the merge rule is
        checked as for GGUF vocabularies (vocab_import.py)."""
        import json
        if isinstance(path, dict):
            data, where = path, "tokenizer.json"
        elif not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"from_tokenizer_json: expected a path or a dict, got "
                            f"{type(path).__name__}")
        else:
            where = str(path)
            try:
                data = json.loads(pathlib.Path(path).read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ValueError(f"{where}: not a JSON file: {e}") from None
        tokens, merges, types, scanner, bos, add_bos = \
            vocab_import.tokenizer_json_arguments(data, where)
        ranks, specials, added, decode_only = vocab_import.byte_level_vocab(
            tokens, merges, types, bos, None, where)
        core = _C.BPE.from_ranks(ranks, specials, scanner, skip_unknown_bytes=True,
                                 added_tokens=added, decode_only=decode_only)
        if name is None:
            name = "tokenizer.json" if isinstance(path, dict) else pathlib.Path(path).parent.name \
                or "tokenizer.json"
        enc = cls._from_core(name, scanner, core)
        enc.bos_token_id, enc.eos_token_id, enc.add_bos_token = bos, None, add_bos
        return enc

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

    # ---- pickling: named encodings by name, others with their vocabulary --------------------

    # How unpickling finds a named encoding: registry.py sets this to get_encoding (registry.py
    # imports this module, so this module does not import it).
    _by_name: Callable[[str], "Encoding"]

    def __getstate__(self):
        if self._registered:
            return self.name
        return {"name": self.name, "pat_str": self._pat_str, "tiktoken": self._core.to_tiktoken(),
                "special_tokens": self._special_tokens,
                "added_tokens": self._core.added_tokens(),
                "decode_only": self._core.decode_only_tokens(),
                "skip_unknown_bytes": self._core.skip_unknown_bytes,
                "gguf": (self.bos_token_id, self.eos_token_id, self.add_bos_token)}

    def __setstate__(self, value) -> None:
        if isinstance(value, str):
            self.__dict__ = self._by_name(value).__dict__
            return
        core = _C.BPE.from_tiktoken(value["tiktoken"], value["special_tokens"],
                                    scanner_for(value["pat_str"]),
                                    value.get("skip_unknown_bytes", False),
                                    added_tokens=value.get("added_tokens"),
                                    decode_only=value.get("decode_only"))
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
                    hit = self._core.find_special(fix_surrogates(text), strings)
                if hit is not None:
                    _raise_disallowed_special_token(hit[1])
        return allowed_special

    def encode_ordinary(self, text: str) -> List[int]:
        """Encodes a str into token ids, treating special-token text as ordinary text."""
        try:
            return self._core.encode(text)
        except UnicodeEncodeError:
            return self._core.encode(fix_surrogates(text))

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
            return self._core.encode(fix_surrogates(text), allowed)

    def encode_to_numpy(self, text: str, *, allowed_special: Union[str, AbstractSet[str]] = set(),  # noqa: B006
                        disallowed_special: Union[str, Collection[str]] = "all") -> np.ndarray:
        """Like encode, as a uint32 numpy array."""
        allowed = self._allowed(allowed_special, disallowed_special, text)
        try:
            return self._core.encode_to_numpy(text, allowed)
        except UnicodeEncodeError:
            return self._core.encode_to_numpy(fix_surrogates(text), allowed)

    def encode_with_offsets(self, text: str, *,
                            allowed_special: Union[str, AbstractSet[str]] = set(),  # noqa: B006
                            disallowed_special: Union[str, Collection[str]] = "all"
                            ) -> Tuple[List[int], List[Tuple[int, int]]]:
        """encode(text) and, for each token, the (start, end) character span of text it came
        from, as Hugging Face tokenizers' `offsets`: a token holding part of a multi-byte
        character spans that whole character. Bytes a vocabulary has no token for (dropped
        before merging, see from_gguf_vocab) belong to no token."""
        ids = self.encode(text, allowed_special=allowed_special,
                          disallowed_special=disallowed_special)
        data = fix_surrogates(text).encode("utf-8") if ids else b""
        sizes = np.fromiter((len(b) for b in self.decode_tokens_bytes(ids)), np.int64, len(ids))
        if int(sizes.sum()) == len(data):
            ends = np.cumsum(sizes)
        else:  # some bytes were dropped: find each token's bytes in the text, in order
            ends, at = np.empty(len(ids), np.int64), 0
            for i, b in enumerate(self.decode_tokens_bytes(ids)):
                at = data.index(b, at) + len(b)
                ends[i] = at
        starts = ends - sizes
        raw = np.frombuffer(data, np.uint8)
        chars = np.cumsum((raw & 0xC0) != 0x80)  # chars[k]: characters that start at or before byte k
        spans = [(int(chars[s]) - 1, int(chars[e - 1])) if e > s else (int(chars[s - 1]) if s else 0,) * 2
                 for s, e in zip(starts.tolist(), ends.tolist())]
        return ids, spans

    def count(self, text: str, *, allowed_special: Union[str, AbstractSet[str]] = set(),  # noqa: B006
              disallowed_special: Union[str, Collection[str]] = "all") -> int:
        """len(encode(text, ...)) without building the list."""
        allowed = self._allowed(allowed_special, disallowed_special, text)
        try:
            return self._core.count(text, allowed)
        except UnicodeEncodeError:
            return self._core.count(fix_surrogates(text), allowed)

    def _batch(self, texts, allowed, num_threads, return_numpy=False):
        if num_threads is None:
            num_threads = _C.get_num_threads()
        if isinstance(texts, str):
            raise TypeError("encode_batch expects a list of str, got a str")
        texts = list(texts)
        run = self._core.encode_batch_flat if return_numpy else self._core.encode_batch
        try:
            return run(texts, allowed, num_threads)
        except UnicodeEncodeError:
            return run([fix_surrogates(t) for t in texts], allowed, num_threads)

    def encode_ordinary_batch(self, text: Sequence[str], *, num_threads: Optional[int] = None,
                              return_numpy: bool = False):
        """encode_ordinary for each str, on `num_threads` threads (default:
        kernelgpt.get_num_threads()), the GIL released for the whole batch. Work is split by
        bytes, not texts: a long text is cut where every pattern splits the same, so one big
        document keeps every thread busy. return_numpy=True gives the flat form for data
        pipelines instead of a list of lists: (ids uint32 [total], offsets uint64
        [len(text) + 1]), text i's ids being ids[offsets[i]:offsets[i + 1]]."""
        return self._batch(text, None, num_threads, return_numpy)

    def encode_batch(self, text: Sequence[str], *, num_threads: Optional[int] = None,
                     allowed_special: Union[str, AbstractSet[str]] = set(),  # noqa: B006
                     disallowed_special: Union[str, Collection[str]] = "all",
                     return_numpy: bool = False):
        """encode for each str, on `num_threads` threads (default: kernelgpt.get_num_threads());
        return_numpy as in encode_ordinary_batch."""
        if isinstance(text, str):
            raise TypeError("encode_batch expects a list of str, got a str")
        text = list(text)
        if disallowed_special != "all" and not isinstance(disallowed_special, frozenset):
            disallowed_special = frozenset(disallowed_special)  # as tiktoken (None: TypeError)
        allowed = self._allowed(allowed_special, disallowed_special, text, many=True)
        return self._batch(text, allowed, num_threads, return_numpy)

    def encode_with_unstable(self, text: str, *,
                             allowed_special: Union[str, AbstractSet[str]] = set(),  # noqa: B006
                             disallowed_special: Union[str, Collection[str]] = "all"
                             ) -> Tuple[List[int], List[List[int]]]:
        """Encodes `text` into the tokens that cannot change whatever text is appended (the
        stable ones) and the possible token sequences for the rest (the completions), as
        tiktoken's encode_with_unstable does (for completing text that is not finished, e.g.
        a prompt ending in the middle of a word):

            >>> enc.encode_with_unstable("hello fanta")       # doctest: +SKIP
            ([15339], [[8755, 59422], [8755, 49921], ..., [40438], ...])

        Every completion decodes to bytes that start with the unstable tail. Same special-
        token checks as encode. The completions are sorted (tiktoken's are in no order)."""
        allowed = self._allowed(allowed_special, disallowed_special, text)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = fix_surrogates(text)
        tokens = self._core.encode(text, allowed)
        if not tokens or tokens[-1] in self._special_token_values:
            return tokens, []  # the text ends with a special token: nothing is unstable
        # How many tokens the last pre-tokenized piece of the text made (tiktoken's
        # last_piece_token_len): the piece is the last of the text after the last special
        # token, and its bytes are those of the tokens at the end.
        decoder = self._core.decode_single_token_bytes
        n = self._last_piece_token_len(tokens)
        unstable = self._core.decode_bytes(tokens[-n:])
        stable = tokens[:-n]
        if not unstable:
            return stable, []

        sorted_tokens, ranks = self._unstable_tables()
        completions = set()
        # Every single token that starts with the unstable bytes.
        i = bisect.bisect_left(sorted_tokens, unstable)
        while i < len(sorted_tokens) and sorted_tokens[i].startswith(unstable):
            completions.add((ranks[sorted_tokens[i]],))
            i += 1
        # A token straddling the end of the text: the unstable bytes up to each position
        # followed by every token starting with the bytes after it, encoded again, cut after
        # the tokens that cover the unstable bytes.
        for cut in range(1, len(unstable)):
            prefix, suffix = unstable[:cut], unstable[cut:]
            i = bisect.bisect_left(sorted_tokens, suffix)
            while i < len(sorted_tokens) and sorted_tokens[i].startswith(suffix):
                possibility = prefix + sorted_tokens[i]
                try:
                    encoded = self._core.encode(possibility.decode("utf-8"))
                except UnicodeDecodeError:
                    encoded = _byte_pair_encode(possibility, ranks)
                seq, seq_len = [], 0
                for token in encoded:
                    seq.append(token)
                    seq_len += len(decoder(token))
                    if seq_len >= len(unstable):
                        break
                completions.add(tuple(seq))
                i += 1
        # Trailing white space: " " alone is a token one only gets from the last character of
        # white space, so the last character may end up as a token of its own.
        if len(unstable) > 1:
            last = _last_utf8_char(unstable)
            if len(unstable) > len(last) and _is_whitespace(last):
                completions.add(tuple(_byte_pair_encode(unstable[:-len(last)], ranks) +
                                      _byte_pair_encode(last, ranks)))
        return stable, sorted(list(c) for c in completions)

    def _last_piece_token_len(self, tokens: List[int]) -> int:
        """How many tokens at the end of `tokens` (which end with an ordinary token) the last
        pre-tokenized piece made, extended over the all-space tokens before it: tiktoken's
        last_piece_token_len after _increase_last_piece_token_len (a split inside trailing
        white space may disappear when text is appended: "\n" + " " ...)."""
        start = len(tokens)
        while start > 0 and tokens[start - 1] not in self._special_token_values:
            start -= 1
        segment = self._core.decode_bytes(tokens[start:]).decode("utf-8")
        last_piece = self._core.split(segment)[-1].encode("utf-8")
        decoder = self._core.decode_single_token_bytes
        n, size = 0, 0
        while size < len(last_piece) and n < len(tokens) - start:
            n += 1
            size += len(decoder(tokens[-n]))

        def all_space(token: int) -> bool:
            return all(b in b" \n\t" for b in decoder(token))

        if all_space(tokens[-n]):
            while n < len(tokens) and tokens[-n - 1] not in self._special_token_values and \
                    all_space(tokens[-n - 1]):
                n += 1
        return n

    def encode_bytes(self, data: Union[bytes, bytearray, memoryview]) -> List[int]:
        """Any byte string, valid UTF-8 or not, to token ids that decode_bytes turns back into
        exactly those bytes: tiktoken's _encode_bytes, with the same ids. Valid UTF-8 encodes
        as encode_ordinary; otherwise the valid prefix is encoded, and its last piece (with the
        white space before it) and the bytes from the first invalid one on are merged again
        by byte-level BPE as one piece."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"encode_bytes takes bytes, got {type(data).__name__} (use encode "
                            "for str)")
        data = bytes(data)
        try:
            return self.encode_ordinary(data.decode("utf-8"))
        except UnicodeDecodeError as e:
            valid = e.start
        tokens = self.encode_ordinary(data[:valid].decode("utf-8"))
        if tokens:
            n = self._last_piece_token_len(tokens)
            unstable = self._core.decode_bytes(tokens[-n:]) + data[valid:]
            del tokens[-n:]
        else:
            unstable = data[valid:]
        ranks = self._unstable_tables()[1]
        token = ranks.get(unstable)
        if token is not None:
            tokens.append(token)
        else:
            merged = _byte_pair_encode(unstable, ranks)
            if len(self._core.decode_bytes(merged)) != len(unstable):
                raise ValueError(f"{self.name}: some of these bytes have no token (its "
                                 "vocabulary lacks single bytes)")
            tokens.extend(merged)
        return tokens

    _encode_bytes = encode_bytes  # tiktoken's name for it (its tests call it)

    def _unstable_tables(self):
        """(the mergeable tokens' bytes, sorted; bytes -> id), built once, for
        encode_with_unstable."""
        tables = self.__dict__.get("_unstable_cache")
        if tables is None:
            ranks = self._core.mergeable_ranks()
            tables = (sorted(ranks), ranks)
            self._unstable_cache = tables
        return tables

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
            return self._core.split(fix_surrogates(text))

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
        """The pre-tokenizer: 'cl100k', 'gpt2', 'whitespace', 'smollm', 'llama3' or 'qwen2'."""
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


def _bpe_states(piece: bytes, ranks: Dict[bytes, int]) -> Iterator[List[bytes]]:
    """The parts of `piece` as byte-pair encoding goes: its single bytes first, then after each
    merge of the adjacent pair whose concatenation has the lowest rank (the leftmost on ties),
    until no pair is a token. Yields one list, changed in place (copy it to keep a state)."""
    parts = [piece[i:i + 1] for i in range(len(piece))]
    yield parts
    while len(parts) > 1:
        best, best_rank = -1, None
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and (best_rank is None or rank < best_rank):
                best, best_rank = i, rank
        if best_rank is None:
            return
        parts[best:best + 2] = [parts[best] + parts[best + 1]]
        yield parts


def _byte_pair_encode(piece: bytes, ranks: Dict[bytes, int]) -> List[int]:
    """tiktoken's byte_pair_encode: BPE on one piece (_bpe_states to the end); unlike the C++
    core it does not first look the whole piece up. Bytes without a token are dropped."""
    for parts in _bpe_states(piece, ranks):
        pass
    return [ranks[p] for p in parts if p in ranks]


def _last_utf8_char(data: bytes) -> bytes:
    """The bytes of the last UTF-8 character of `data`, or its last byte when they do not
    end with a valid character (bstr's decode_last_utf8)."""
    for back in range(1, min(4, len(data)) + 1):
        if data[-back] & 0xC0 != 0x80:  # not a continuation byte: the character starts here
            tail = data[-back:]
            try:
                tail.decode("utf-8")
            except UnicodeDecodeError:
                return data[-1:]
            return tail
    return data[-1:]


# Rust's char::is_whitespace (Unicode White_Space), which tiktoken uses; str.isspace differs
# (it counts U+001C..U+001F).
_WHITE_SPACE = frozenset("\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
                         "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")


def _is_whitespace(char: bytes) -> bool:
    try:
        return char.decode("utf-8") in _WHITE_SPACE
    except UnicodeDecodeError:
        return False


def _valid_second(lead: int, second: int) -> bool:
    lo, hi = {0xE0: (0xA0, 0xBF), 0xED: (0x80, 0x9F), 0xF0: (0x90, 0xBF),
              0xF4: (0x80, 0x8F)}.get(lead, (0x80, 0xBF))
    return lo <= second <= hi
