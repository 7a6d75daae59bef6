"""Pre-tokenization: the regex patterns text is cut with before BPE merges inside each piece.

tiktoken runs a regular expression over the text. kernelgpt has two ways to do the same in C++:
a hand-written, non-backtracking scanner for each of the hottest patterns
(csrc/bpe/pretokenize.h: cl100k, o200k, GPT-2, Llama 3, Qwen 2, SmolLM2), and a general engine for
every other pattern (csrc/bpe/regex.h: a backtracking matcher for the regex dialect of split
patterns: Unicode general categories, (?i:...), possessive and lazy quantifiers, lookaround).
A pre-tokenizer can also be a list of patterns applied one after the other, each splitting the
pieces of the one before as texts of their own (Hugging Face's Sequence of Splits, llama.cpp's
`regex_exprs`). This module names the patterns, maps each to its scanner or to the engine,
holds the table of every pre-tokenizer llama.cpp reads from a GGUF file (GGUF_PRE_TOKENIZERS),
and offers the cut itself:

    >>> pretokenize("How's it going?", "gpt2")
    ['How', "'s", ' it', ' going', '?']
    >>> pretokenize("HTTPServer's", O200K_PATTERN)
    ['HTTPServer's']

Text no match starts in ("gaps") becomes pieces of its own, as Hugging Face and llama.cpp keep
it; `$` is the end of the text being split. A pattern the engine cannot read raises ValueError
naming the construct.
"""
from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

from .. import _C

__all__ = ["CL100K_PATTERN", "LLAMA3_PATTERN", "CL100K_ORIGINAL_PATTERN", "QWEN2_PATTERN",
           "GPT2_PATTERN", "GPT2_ORIGINAL_PATTERN", "WHITESPACE_PATTERN", "SMOLLM_PATTERN",
           "O200K_PATTERN", "GGUF_PRE_TOKENIZERS", "GGUFPreTokenizer", "gguf_pre_tokenizer",
           "pretokenize", "scanner_for", "pattern_string"]

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

# o200k_base (GPT-4o, o1, o3, GPT-5) and o200k_harmony (gpt-oss): words split at case changes
# (an upper-case run, then lower-case letters: "HTTPServer" is one piece, "helloWorld" two),
# contractions kept on the word, "/" kept on punctuation runs. A hand-written scanner ("o200k").
O200K_PATTERN = "|".join([
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""",
    r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
    r"""\s*[\r\n]+""",
    r"""\s+(?!\S)""",
    r"""\s+""",
])

# pattern string or short name -> the scanner's name (what _C.BPE takes)
_SCANNERS = {
    "cl100k": "cl100k", CL100K_PATTERN: "cl100k",
    "llama3": "llama3", LLAMA3_PATTERN: "llama3",
    "gpt2": "gpt2", GPT2_PATTERN: "gpt2", GPT2_ORIGINAL_PATTERN: "gpt2",
    "whitespace": "whitespace", WHITESPACE_PATTERN: "whitespace",
    "smollm": "smollm", SMOLLM_PATTERN: "smollm",
    "qwen2": "qwen2", QWEN2_PATTERN: "qwen2",
    "o200k": "o200k", O200K_PATTERN: "o200k",
}
# scanner's name -> its pattern string
_PATTERN_OF = {"cl100k": CL100K_PATTERN, "gpt2": GPT2_PATTERN, "whitespace": WHITESPACE_PATTERN,
               "smollm": SMOLLM_PATTERN, "llama3": LLAMA3_PATTERN, "qwen2": QWEN2_PATTERN,
               "o200k": O200K_PATTERN}
# short names of patterns the general engine runs (none now: o200k has its scanner)
_NAMED_PATTERNS: Dict[str, str] = {}

Splitter = Union[str, List[str]]  # a scanner's name, or patterns for the general engine


def scanner_for(pattern: Union[str, Sequence[str]]) -> Splitter:
    """What _C.BPE takes for `pattern`: the name of the C++ scanner that splits exactly like it
    (a pattern string with a scanner, or a short name: 'cl100k', 'gpt2', 'llama3', 'qwen2',
    'smollm', 'whitespace'), or else the list of patterns for the general engine ('o200k', any
    other pattern string, or a list of patterns applied one after the other). The engine
    checks the patterns when the tokenizer is built (ValueError naming what it cannot read)."""
    if isinstance(pattern, str):
        if pattern in _SCANNERS:
            return _SCANNERS[pattern]
        return [_NAMED_PATTERNS.get(pattern, pattern)]
    if isinstance(pattern, (list, tuple)) and pattern and all(isinstance(p, str) for p in pattern):
        if len(pattern) == 1:
            return scanner_for(pattern[0])
        return [_NAMED_PATTERNS.get(p, _PATTERN_OF.get(p, p)) for p in pattern]
    raise TypeError("pattern must be a str (a regular expression or a short name such as "
                    f"'cl100k') or a non-empty list of them, got {type(pattern).__name__}")


def pattern_string(pattern: Union[str, Sequence[str]]) -> Union[str, List[str]]:
    """A short name's pattern string ('gpt2' -> GPT2_PATTERN); a pattern string unchanged; a
    list of patterns as the list of their strings."""
    spec = scanner_for(pattern)
    if isinstance(spec, str):
        return _PATTERN_OF[spec] if pattern in _PATTERN_OF else pattern
    return spec[0] if len(spec) == 1 else spec


def fix_surrogates(text: str) -> str:
    """tiktoken's fix-up for a str the C++ core cannot take as UTF-8: surrogate pairs become
    the character they encode, lone surrogates become U+FFFD."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


# scanner name or tuple of patterns -> a core with only the 256 byte tokens, for its split()
_SPLITTERS: Dict[object, "_C.BPE"] = {}


def pretokenize(text: str, pattern: Union[str, Sequence[str]] = CL100K_PATTERN) -> List[str]:
    """The pieces `pattern` (a pattern string, a short name such as 'cl100k' or 'o200k', or a
    list of patterns applied one after the other) cuts text into."""
    spec = scanner_for(pattern)
    key = spec if isinstance(spec, str) else tuple(spec)
    splitter = _SPLITTERS.get(key)
    if splitter is None:
        splitter = _C.BPE.from_ranks({bytes([b]): b for b in range(256)}, {}, spec)
        if len(_SPLITTERS) < 64:
            _SPLITTERS[key] = splitter
    try:
        return splitter.split(text)
    except UnicodeEncodeError:
        return splitter.split(fix_surrogates(text))


# ---- the pre-tokenizers of GGUF files ------------------------------------------------------

class GGUFPreTokenizer(NamedTuple):
    """What a GGUF file's `tokenizer.ggml.pre` names: how text is split (a scanner's name or
    a list of patterns applied one after the other) and whether a piece that is a whole token
    skips merging (Hugging Face's `ignore_merges`; kernelgpt's encoder always does that, as
    tiktoken does, so the flag only documents where the two rules are the same by design)."""
    patterns: Union[str, Tuple[str, ...]]
    ignore_merges: bool = False


# Patterns as the models' own tokenizer.json files write them (llama.cpp rewrites some of them
# for std::regex: (?i:'s|...) as '[sS]|..., o200k's classes as lookaheads; these are the
# originals, which the general engine reads directly).
_GPT2_LLAMA = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"""
# (non-ASCII characters as escapes: several are not in Unicode normal form, e.g. U+1FD3, and
# would not survive an editor that normalizes them)
_DEEPSEEK_LETTERS = (
    '\\s?[A-Za-z\xb5\xc0-\xd6\xd8-\xf6\xf8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af'
    '\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1'
    '\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5'
    '\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a'
    '\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d'
    '\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3'
    '\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115'
    '\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f'
    '\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3'
    '\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf'
    '\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f'
    '\U000104b0-\U000104d3\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2'
    '\U000118a0-\U000118df\U0001e900-\U0001e943]+')
_DEEPSEEK_PUNCT = '\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+'
_YOUTU_CJK = ('[\uac00-\ud7a3\u3131-\u318e]+|[\uff01\u2026\u201c\u201d\u2018\u2019\u2014'
              '\uff1a\uff1b\uff0c\u3001-\u303f\ufe30-\ufe4f]+|[\u3105-\u312f]+|'
              '[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+')
_DEEPSEEK_V3_WORDS = (r"""[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?"""
                      r"""[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
_CONTRACTIONS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)"
_LLAMA3_LIKE = (_CONTRACTIONS + r"""|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"""
                r"""[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
_QWEN2_LIKE = _LLAMA3_LIKE.replace(r"\p{N}{1,3}", r"\p{N}")
_TEKKEN = (r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|"""
           r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}|"""
           r""" ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
_O200K_M = (r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"""
            r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+"""
            r"""[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}|"""
            r""" ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
_FINNISH = ' ?[^(\\s|.,!?\u2026\u3002\uff0c\u3001\u0964\u06d4\u060c)]+'
_CJK = '[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+'
_KANA_HAN = '[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+'


def _table() -> Dict[str, GGUFPreTokenizer]:
    T = GGUFPreTokenizer
    groups = [
        # llama.cpp's default: no tokenizer.ggml.pre key, or "default"
        (("default",), T((r"[\p{P}\$\+<=>\^~\|]+", _GPT2_LLAMA, r"\p{N}+", "[0-9][0-9][0-9]"))),
        (("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
          "jina-v5-nano"), T("llama3", True)),
        (("dbrx", "smaug-bpe", "chatglm-bpe"), T("llama3")),
        (("glm4", "glm5"), T("llama3", True)),
        (("jais-2",), T((_CONTRACTIONS + r"""|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"""
                         r"""[\r\n]*|\s*[\r\n]+|\s{512}(?!\S)|\s{256}(?!\S)|\s{128}(?!\S)|"""
                         r"""\s{64}(?!\S)|\s{32}(?!\S)|\s{16}(?!\S)|\s{8}(?!\S)|\s{4}(?!\S)|"""
                         r"""\s{1,2}(?!\S)|\s{1}""",))),
        (("deepseek-llm",), T(("[\r\n]", _DEEPSEEK_LETTERS, _DEEPSEEK_PUNCT,
                               r"\s+$", _CJK, r"\p{N}+"))),
        (("deepseek-v3", "hunyuan-dense", "joyai-llm", "hy_v4"),
         T((r"\p{N}{1,3}", _KANA_HAN, _DEEPSEEK_V3_WORDS))),
        (("spark2_5",), T((r"\p{N}{1,3}", _KANA_HAN, _DEEPSEEK_V3_WORDS.replace(
            r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+", r"| ?[\p{P}\p{S}]+|[\r\n]"), r"\p{N}"))),
        (("youtu",), T((_YOUTU_CJK,
                        _O200K_M.replace(r"\p{N}{1,3}", r"\p{N}")), True)),
        (("deepseek-coder",), T(("[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _CJK, r"\p{N}"))),
        (("falcon",), T((r"[\p{P}\$\+<=>\^~\|`]+", _GPT2_LLAMA, "[0-9][0-9][0-9]"))),
        (("starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b",
          "mellum2"), T("smollm")),
        (("gpt-2", "gpt2", "mpt", "olmo", "jais", "trillion", "granite-docling", "phi-2", "jina-es",
          "jina-de", "gigachat", "jina-v2-es", "jina-v2-de", "a.x-4.0", "mellum", "modern-bert",
          "jina-v1-en", "jina-v2-code", "roberta-bpe", "exaone4"), T("gpt2")),
        (("stablelm2", "qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez", "hunyuan",
          "solar-open", "grok-2"), T("qwen2")),
        (("qwen35",), T((_CONTRACTIONS + r"""|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}"""
                         r"""\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",))),
        (("poro-chat", "bloom", "gpt3-finnish"), T((_FINNISH,))),
        (("viking",), T((_FINNISH, r"\p{N}"))),
        (("tekken",), T((_TEKKEN,), True)),
        (("chameleon",), T(("<sentinel:[0-9]+>", "(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z",
                            "([\\t\\n]|    |  )", r"\p{N}", r"[\p{P}!-/:-@\[-`{-~]", _GPT2_LLAMA))),
        (("gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"), T((O200K_PATTERN,))),
        # llama.cpp's own pattern (its tokenizer.json regex is not in llama.cpp's sources)
        (("granite-embed-multi-97m",), T((
            r"""[^\r\n\p{L}\p{N}]?((?=[\p{L}\p{M}])([^a-z]))*((?=[\p{L}\p{M}])([^A-Z]))+"""
            r"""(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?"""
            r"""((?=[\p{L}\p{M}])([^a-z]))+((?=[\p{L}\p{M}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|"""
            r"""'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|"""
            r"""\s*[\r\n]+|\s+(?!\S)|\s+""",), True)),
        (("tiny_aya", "cohere2moe"), T((r"\d{1,3}(?=(?:\d{3})*\b)", O200K_PATTERN))),
        (("bailingmoe", "bailingmoe2", "llada-moe"),
         T((r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]++[\r\n]*|"""
            r"""\s*[\r\n]|\s+(?!\S)|\s+""",))),
        (("seed-coder",), T((_CONTRACTIONS + r"""|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}"""
                             r"""\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+""",))),
        (("ufakzeka",), T((r"""[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"""
                           r"""\s+(?!\S)|\s+""",))),
        (("laguna",), T(("[^\\n]+|[\\n]+", _QWEN2_LIKE))),
        (("exaone-moe",), T((_CONTRACTIONS + r"""|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+"""
                             r"""|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]?|\s*[\r\n]|\s+(?!\S)|\s+""",))),
        (("minicpm5",), T((r"\p{N}{1,3}", _LLAMA3_LIKE.replace(r"\p{N}{1,3}", r"\p{N}+")), True)),
    ]
    table = {}
    for names, pre in groups:
        for name in names:
            table[name] = pre
    return table


# tokenizer.ggml.pre -> how llama.cpp (and the model's tokenizer.json) pre-tokenizes
GGUF_PRE_TOKENIZERS: Dict[str, GGUFPreTokenizer] = _table()
# Names llama.cpp knows that kernelgpt refuses, and why.
_GGUF_UNSUPPORTED = {
    "kimi-k2": "llama.cpp splits it with custom code for \\p{Han} (scripts are not supported)",
    "afmoe": "llama.cpp splits its digits with custom code (\\p{AFMoE_digits})",
    "superbpe": "its second pattern only matches empty strings, which splits between digits",
    "gemma4": "it is a SentencePiece-style BPE on raw UTF-8, not byte-level",
    "granite-embed-multi-311m": "it is a SentencePiece-style BPE on raw UTF-8, not byte-level",
    "sarvam-moe": "it is a SentencePiece-style BPE on raw UTF-8, not byte-level",
    "whitespace": "it is a BPE on raw UTF-8, not byte-level",
}


def gguf_pre_tokenizer(pre: Optional[str]) -> GGUFPreTokenizer:
    """The pre-tokenizer of a GGUF file's `tokenizer.ggml.pre` (None: the key is absent, and
    llama.cpp falls back to its default), or ValueError naming it."""
    if pre is None or pre == "":
        return GGUF_PRE_TOKENIZERS["default"]
    if not isinstance(pre, str):
        raise TypeError(f"tokenizer.ggml.pre must be a str, got {type(pre).__name__}")
    if pre in GGUF_PRE_TOKENIZERS:
        return GGUF_PRE_TOKENIZERS[pre]
    if pre in _GGUF_UNSUPPORTED:
        raise ValueError(f"unsupported GGUF pre-tokenizer {pre!r}: {_GGUF_UNSUPPORTED[pre]}")
    raise ValueError(f"unknown GGUF pre-tokenizer {pre!r}; kernelgpt knows "
                     f"{', '.join(sorted(GGUF_PRE_TOKENIZERS))}")
