"""SentencePiece BPE: the tokenizer of GGUF files with `tokenizer.ggml.model = "llama"` (Llama 2,
Mistral, Phi-3, TinyLlama, Baichuan), as llama.cpp runs it.

Not byte-level: pieces are UTF-8 text where "▁" (U+2581) stands for a space, merged by score
rather than by rank. To encode a text: the text between added and special tokens gets a leading
space (`add_space_prefix`, the default), spaces become "▁", then the adjacent pair of symbols
whose concatenation is a piece with the highest score merges (the leftmost on ties) until none
does; a character no piece covers becomes its UTF-8 bytes as <0xNN> tokens (byte fallback), or
the unknown token. The C++ core is csrc/bpe/spm.cpp; this class gives it the same API as
`Encoding` where the two meet (encode, encode_ordinary, encode_batch, decode, n_vocab, the
special-token policy), and `Encoding.from_gguf_metadata` returns one for such files.

    >>> enc = Encoding.from_gguf_metadata(metadata)    # doctest: +SKIP
    >>> enc.encode("Hello world")                        # doctest: +SKIP
    [15043, 3186]
"""
from __future__ import annotations

from typing import AbstractSet, Collection, Dict, List, Optional, Sequence, Union

import numpy as np

from .. import _C
from .patterns import fix_surrogates

__all__ = ["SentencePieceEncoding", "from_gguf_metadata"]

_GGUF_UNKNOWN = 2


class SentencePieceEncoding:
    """A SentencePiece BPE tokenizer (see the module docstring). Immutable, picklable, safe
    to share between threads."""

    def __init__(self, name: str, tokens: Sequence[str], scores: Sequence[float],
                 token_types: Sequence[int], *, add_space_prefix: bool = True,
                 unknown_token_id: Optional[int] = None, bos_token_id: Optional[int] = None,
                 eos_token_id: Optional[int] = None, add_bos_token: bool = True):
        """tokens, scores, token_types: tokenizer.ggml.tokens / scores / token_type of a GGUF
        file (llama.cpp's types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused,
        6 byte). Control tokens are special tokens (matched only when allowed), user-defined
        tokens are matched in every text."""
        for what, seq in (("tokens", tokens), ("scores", scores), ("token_types", token_types)):
            if isinstance(seq, (str, bytes, dict)) or not hasattr(seq, "__len__"):
                raise TypeError(f"SentencePieceEncoding: {what} must be a list")
        tokens = list(tokens)
        if not all(isinstance(t, str) for t in tokens):
            raise TypeError("SentencePieceEncoding: every token must be a str")
        scores = np.asarray(scores, dtype=np.float64)
        if scores.ndim != 1 or not np.all(np.isfinite(scores)):
            raise ValueError("SentencePieceEncoding: scores must be finite numbers")
        types = [int(t) for t in token_types]
        n = len(tokens)
        for what, value in (("unknown_token_id", unknown_token_id), ("bos_token_id", bos_token_id),
                            ("eos_token_id", eos_token_id)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))
                                      or not 0 <= int(value) < n):
                raise ValueError(f"SentencePieceEncoding: {what} must be a token id in [0, {n}), "
                                 f"got {value!r}")
        if unknown_token_id is None and _GGUF_UNKNOWN in types:
            unknown_token_id = types.index(_GGUF_UNKNOWN)
        self._core = _C.SPM(tokens, scores.astype(np.float32).tolist(), types,
                            bool(add_space_prefix), None if unknown_token_id is None
                            else int(unknown_token_id))
        self._init(name, bos_token_id, eos_token_id, add_bos_token)

    def _init(self, name, bos_token_id, eos_token_id, add_bos_token):
        self.name = name
        self._special_tokens: Dict[str, int] = self._core.special_tokens()
        self._special_token_values = set(self._special_tokens.values())
        self.special_tokens_set = set(self._special_tokens)
        self.n_vocab = self._core.n_vocab
        self.max_token_value = self.n_vocab - 1
        self.bos_token_id = None if bos_token_id is None else int(bos_token_id)
        self.eos_token_id = None if eos_token_id is None else int(eos_token_id)
        self.add_bos_token = bool(add_bos_token)

    def __repr__(self) -> str:
        return f"<SentencePieceEncoding {self.name!r}>"

    @property
    def eot_token(self) -> Optional[int]:
        return self.eos_token_id

    @property
    def pattern(self) -> str:
        return "sentencepiece"

    def __getstate__(self):
        return {"name": self.name, "core": self._core.__getstate_data__(),
                "ids": (self.bos_token_id, self.eos_token_id, self.add_bos_token)}

    def __setstate__(self, state):
        self._core = _C.SPM(*state["core"])
        self._init(state["name"], *state["ids"])

    # ---- encoding -----------------------------------------------------------------------

    def _allowed(self, allowed_special, disallowed_special, texts):
        if allowed_special == "all":
            allowed_special = self.special_tokens_set
        if disallowed_special == "all":
            disallowed_special = self.special_tokens_set - set(allowed_special)
        for text in texts:
            if not isinstance(text, str):
                raise TypeError(f"expected string, got {type(text).__name__}")
            for token in disallowed_special or ():
                if token in text:
                    raise ValueError(
                        f"Encountered text corresponding to disallowed special token {token!r}.\n"
                        f"Pass it to `allowed_special` to encode it as a special token, or "
                        f"`disallowed_special=()` to encode it as text.")
        return set(allowed_special)

    def encode_ordinary(self, text: str) -> List[int]:
        """Token ids of text; special-token text is ordinary text (added tokens still match).
        No BOS: prepend bos_token_id yourself when add_bos_token says so, as for Encoding."""
        try:
            return self._core.encode(text)
        except UnicodeEncodeError:
            return self._core.encode(fix_surrogates(text))

    def encode(self, text: str, *, allowed_special: Union[str, AbstractSet[str]] = set(),  # noqa: B006
               disallowed_special: Union[str, Collection[str]] = "all") -> List[int]:
        """Token ids of text, with tiktoken's special-token policy (see Encoding.encode)."""
        allowed = self._allowed(allowed_special, disallowed_special, (text,))
        try:
            return self._core.encode(text, allowed)
        except UnicodeEncodeError:
            return self._core.encode(fix_surrogates(text), allowed)

    def encode_batch(self, text: Sequence[str], *, num_threads: Optional[int] = None,
                     allowed_special: Union[str, AbstractSet[str]] = set(),  # noqa: B006
                     disallowed_special: Union[str, Collection[str]] = "all") -> List[List[int]]:
        if isinstance(text, str):
            raise TypeError("encode_batch expects a list of str, got a str")
        texts = [fix_surrogates(t) if isinstance(t, str) else t for t in text]
        allowed = self._allowed(allowed_special, disallowed_special, texts)
        return self._core.encode_batch(texts, allowed, num_threads or _C.get_num_threads())

    def encode_ordinary_batch(self, text: Sequence[str], *,
                              num_threads: Optional[int] = None) -> List[List[int]]:
        if isinstance(text, str):
            raise TypeError("encode_ordinary_batch expects a list of str, got a str")
        texts = [fix_surrogates(t) if isinstance(t, str) else t for t in text]
        return self._core.encode_batch(texts, None, num_threads or _C.get_num_threads())

    def count(self, text: str, **kwargs) -> int:
        return len(self.encode(text, **kwargs))

    # ---- decoding -----------------------------------------------------------------------

    def decode_bytes(self, tokens: Sequence[int]) -> bytes:
        """The bytes of the tokens: "▁" as a space, <0xNN> as its byte, special tokens as
        their text. KeyError for an id the vocabulary does not have."""
        return self._core.decode_bytes([int(t) for t in tokens])

    def decode(self, tokens: Sequence[int], errors: str = "replace") -> str:
        """The text of the tokens, without the space add_space_prefix put in front (as
        llama.cpp's and Hugging Face's decoders remove it): decode(encode(t)) == t."""
        text = self.decode_bytes(tokens).decode("utf-8", errors)
        if self._core.add_space_prefix and text.startswith(" "):
            text = text[1:]
        return text

    def decode_single_token_bytes(self, token: int) -> bytes:
        return self.decode_bytes([token])

    def decode_tokens_bytes(self, tokens: Sequence[int]) -> List[bytes]:
        return [self.decode_bytes([t]) for t in tokens]

    def is_special_token(self, token: int) -> bool:
        return token in self._special_token_values

    def encode_single_token(self, text: Union[str, bytes]) -> int:
        """The id of the special, added or normal token written `text` ("▁" for a space in
        normal pieces); KeyError if there is none."""
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        if text in self._special_tokens:
            return self._special_tokens[text]
        if getattr(self, "_piece_ids", None) is None:
            texts = self._core.__getstate_data__()[0]
            self._piece_ids = {}
            for i, t in enumerate(texts):
                self._piece_ids.setdefault(t, i)
        piece = self._piece_ids.get(text.replace(" ", "\u2581"))
        if piece is not None:
            return piece
        raise KeyError(text)

    def stream_decoder(self, errors: str = "replace"):
        """Incremental decoding for generation (Encoding.stream_decoder): each token's bytes,
        never half a character; "▁" is a space (a continuation keeps its leading space)."""
        from .encoding import StreamDecoder
        return StreamDecoder(self, errors)


def from_gguf_metadata(metadata: Dict[str, object], name: str = "gguf") -> SentencePieceEncoding:
    """The SentencePiece tokenizer a GGUF file's metadata describes (tokenizer.ggml.model =
    "llama"): tokens, scores and token_type are required; add_space_prefix (default true),
    the unknown / BOS / EOS ids and add_bos_token (default true) are read when present."""
    missing = [k for k in ("tokens", "scores", "token_type") if f"tokenizer.ggml.{k}" not in metadata]
    if missing:
        raise ValueError("from_gguf_metadata: a SentencePiece vocabulary needs " +
                         ", ".join(f"tokenizer.ggml.{k}" for k in missing))
    get = metadata.get
    return SentencePieceEncoding(
        name, get("tokenizer.ggml.tokens"), get("tokenizer.ggml.scores"),
        get("tokenizer.ggml.token_type"),
        add_space_prefix=bool(get("tokenizer.ggml.add_space_prefix", True)),
        unknown_token_id=get("tokenizer.ggml.unknown_token_id"),
        bos_token_id=get("tokenizer.ggml.bos_token_id"),
        eos_token_id=get("tokenizer.ggml.eos_token_id"),
        add_bos_token=bool(get("tokenizer.ggml.add_bos_token", True)))
