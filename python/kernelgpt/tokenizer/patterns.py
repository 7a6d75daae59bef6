"""Pre-tokenization: the regex patterns text is cut with before BPE merges inside each piece.

tiktoken runs a regular expression over the text; kernelgpt has no regex engine but one
hand-written, non-backtracking scanner per pattern in C++ (csrc/bpe/pretokenize.h) that cuts
exactly where the regex would. This module names the patterns, maps each pattern (or its
short name) to its scanner, and offers the cut itself:

    >>> pretokenize("How's it going?", "gpt2")
    ['How', "'s", ' it', ' going', '?']

Only these patterns are supported; anything else raises ValueError listing them.
"""
from __future__ import annotations

from typing import Dict, List

from .. import _C

__all__ = ["CL100K_PATTERN", "LLAMA3_PATTERN", "CL100K_ORIGINAL_PATTERN", "QWEN2_PATTERN",
           "GPT2_PATTERN", "GPT2_ORIGINAL_PATTERN", "WHITESPACE_PATTERN", "SMOLLM_PATTERN",
           "pretokenize"]

CL100K_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+|"""
                  r""" ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""")
# Llama 3's tokenizer.json (and Hugging Face conversions of cl100k vocabularies): cl100k_base's
# pattern as tiktoken first published it. It splits like CL100K_PATTERN except at the end of
# the text (no \s++$: " \n " is " \n", " " here and one piece there); Hugging Face's regex
# engine (Oniguruma) reads the newer form's possessive \p{N}{1,3}+ as a nested repeat, which is
# why tokenizer.json files keep this one.
LLAMA3_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"""
                  r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
CL100K_ORIGINAL_PATTERN = LLAMA3_PATTERN
# Qwen 2's tokenizer.json: Llama 3's pattern with each number character a piece.
QWEN2_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"""
                 r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
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

# pattern string or short name -> the scanner's name (what _C.BPE takes)
_SCANNERS = {
    "cl100k": "cl100k", CL100K_PATTERN: "cl100k",
    "llama3": "llama3", LLAMA3_PATTERN: "llama3",
    "gpt2": "gpt2", GPT2_PATTERN: "gpt2", GPT2_ORIGINAL_PATTERN: "gpt2",
    "whitespace": "whitespace", WHITESPACE_PATTERN: "whitespace",
    "smollm": "smollm", SMOLLM_PATTERN: "smollm",
    "qwen2": "qwen2", QWEN2_PATTERN: "qwen2",
}
# scanner's name -> its pattern string
_PATTERN_OF = {"cl100k": CL100K_PATTERN, "gpt2": GPT2_PATTERN, "whitespace": WHITESPACE_PATTERN,
               "smollm": SMOLLM_PATTERN, "llama3": LLAMA3_PATTERN, "qwen2": QWEN2_PATTERN}


def scanner_for(pattern: str) -> str:
    """The name of the C++ scanner that splits like `pattern` (a pattern string or a short
    name); TypeError / ValueError for anything else."""
    if not isinstance(pattern, str):
        raise TypeError(f"pattern must be a str, got {type(pattern).__name__}")
    try:
        return _SCANNERS[pattern]
    except KeyError:
        raise ValueError(
            f"unsupported pre-tokenization pattern {pattern!r}: kernelgpt has exact scanners "
            "for 'cl100k' (CL100K_PATTERN), 'gpt2' (GPT2_PATTERN), 'whitespace' "
            "(WHITESPACE_PATTERN), 'smollm' (SMOLLM_PATTERN), 'llama3' (LLAMA3_PATTERN) and "
            "'qwen2' (QWEN2_PATTERN); pass one of those names or pattern strings") from None


def pattern_string(pattern: str) -> str:
    """A short name's pattern string ('gpt2' -> GPT2_PATTERN); a pattern string unchanged."""
    return _PATTERN_OF[scanner_for(pattern)] if pattern in _PATTERN_OF else pattern


def fix_surrogates(text: str) -> str:
    """tiktoken's fix-up for a str the C++ core cannot take as UTF-8: surrogate pairs become
    the character they encode, lone surrogates become U+FFFD."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


# scanner name -> a core with only the 256 byte tokens, used for its split()
_SPLITTERS: Dict[str, "_C.BPE"] = {}


def pretokenize(text: str, pattern: str = CL100K_PATTERN) -> List[str]:
    """The pieces `pattern` ('cl100k', 'gpt2', 'whitespace' or their pattern strings) cuts
    text into, exactly as tiktoken's regex would."""
    scanner = scanner_for(pattern)
    if scanner not in _SPLITTERS:
        _SPLITTERS[scanner] = _C.BPE.from_ranks({bytes([b]): b for b in range(256)}, {}, scanner)
    splitter = _SPLITTERS[scanner]
    try:
        return splitter.split(text)
    except UnicodeEncodeError:
        return splitter.split(fix_surrogates(text))
