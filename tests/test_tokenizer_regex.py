"""The general pre-tokenizer engine (csrc/bpe/regex.*) against Python's `regex` module.

Every pattern of GGUF_PRE_TOKENIZERS, tiktoken's patterns and a set of constructs (lookbehind,
lazy and possessive quantifiers, atomic groups, \\b, case-insensitive classes) must cut fuzzed
strings exactly where `regex` does, with the splitting rule of Hugging Face's Split(Isolated)
and llama.cpp: at each position the first match in priority order that is not empty is a
piece, text no match starts in becomes pieces of its own. The reference is written with
`regex.match` at each position (the same rule), `\\s` as \\p{White_Space} (Python's \\s also
takes U+001C..U+001F, which Rust's, Oniguruma's and the engine's do not) and `$` as \\Z.
"""
import random
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kernelgpt
from kernelgpt import _C
from kernelgpt.tokenizer import patterns as P

regex = pytest.importorskip("regex")

ALPHABET = (list("aAbBzZsStTkK'’ \t\n\r\x0b\x0c0123456789/.,!?-_$+<=>^~|`\"#{}()[]:;@\\") +
            ["é", "Ü", "ſ", "\u212a", "ǅ", "ʰ", "\u0301", "\u0915", "\u093f", "你", "好", "ア", "가", "١",
             "½", "…", "。", "—", "€", "🙂", "\u00a0", "\u2028", "\x85", "\u3000", "İ", "ı", "ß",
             "ẞ", "ぁ", "ｱ", "ᾼ", "\u200d", "\x1c", "Ⅻ", "𝔸", "\U0001e900", "\ufeff", "\x00"])

CONSTRUCTS = [
    r"(?<=a)b+|(?<!c)d", r"a+?b|x{2,3}?y|(?>ab|a)c|(?:ab)++c", r"\w+|\W", r"(?i)straße|K+",
    r"(?i:[s-z]+)|\d", r"\b\w{2}\b|.", r"[^\n]+|[\n]+", r"\S+", r"(IMGIMG)((A|B|C){1,4})Z",
    r"\d{1,3}(?=(?:\d{3})*\b)", r"[\p{Lu}\p{Lt}]+[\p{Ll}\p{M}]*|\P{L}", r"\p{Sc}|\p{Sm}+|\p{So}",
    r"\U0001F642|\u00e9|\x41", r"[\s\d]+|[^\s\d]{1,2}", r"(?:a|ab)(?:c|bcd)(?:d*)", r"\s*$|x",
    r"[\p{P}\$\+<=>\^~\|`]+", r"(?<=\p{L}\p{L})\p{N}|\p{L}", r"(?-i:a)(?i:b)", r"a{0}b|c{,2}d",
]


def _gguf_patterns():
    out = []
    for name, pre in sorted(P.GGUF_PRE_TOKENIZERS.items()):
        if not isinstance(pre.patterns, str):
            out += [p for p in pre.patterns if p not in out]
    return out


PATTERNS = ([P.CL100K_PATTERN, P.GPT2_PATTERN, P.LLAMA3_PATTERN, P.QWEN2_PATTERN, P.O200K_PATTERN,
             P.SMOLLM_PATTERN, P.WHITESPACE_PATTERN] + _gguf_patterns() + CONSTRUCTS)


def _reference(pattern):
    compiled = regex.compile(pattern.replace(r"\s", r"\p{White_Space}")
                             .replace(r"\S", r"\P{White_Space}").replace("+$", r"+\Z")
                             .replace("*$", r"*\Z"))

    def split(text):
        out, i, gap = [], 0, 0
        while i < len(text):
            m = compiled.match(text, i)
            if m and m.end() > i:
                if gap < i:
                    out.append(text[gap:i])
                out.append(m.group())
                i = gap = m.end()
            else:
                i += 1
        if gap < len(text):
            out.append(text[gap:])
        return out
    return split


_ENGINES = {}


def _engine(pattern):
    if pattern not in _ENGINES:
        _ENGINES[pattern] = _C.BPE.from_ranks({bytes([b]): b for b in range(256)}, {}, [pattern])
    return _ENGINES[pattern]


@pytest.mark.parametrize("pattern", PATTERNS, ids=lambda p: p[:40])
def test_engine_splits_like_regex(pattern):
    engine, reference = _engine(pattern), _reference(pattern)
    rng = random.Random(hash(pattern) & 0xFFFF)
    for _ in range(600):
        text = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 40)))
        assert engine.split(text) == reference(text), (pattern, text)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(PATTERNS), st.text(st.sampled_from(ALPHABET), max_size=60))
def test_engine_splits_like_regex_hypothesis(pattern, text):
    assert _engine(pattern).split(text) == _reference(pattern)(text)


CATEGORIES = ["Lu", "Ll", "Lt", "Lm", "Lo", "Mn", "Mc", "Me", "Nd", "Nl", "No", "Pc", "Pd", "Ps",
              "Pe", "Pi", "Pf", "Po", "Sm", "Sc", "Sk", "So", "Zs", "Zl", "Zp", "Cc", "Cf", "Cs",
              "Co", "Cn"]


def _same_unicode_version(c, _ours=[]):
    """Whether `regex` (its own Unicode version) and the engine's tables (tiktoken's Unicode
    16.0) give the character the same general category."""
    if not _ours:
        _ours.append(_C.bpe_char_categories())
    return regex.match(r"\p{%s}" % CATEGORIES[_ours[0][ord(c)] & 0x1F], c) is not None


def test_category_tables_agree_with_regex_on_assigned_code_points():
    # They differ only where the Unicode versions differ: regex here knows Unicode 17, whose
    # ~17,800 new code points (CJK Extension J, ...) the tables call unassigned, and a few
    # code points it reclassified (U+0295 moved from Ll to Lo).
    ours = _C.bpe_char_categories()
    differ = [cp for cp in range(0x110000) if not 0xD800 <= cp < 0xE000
              and not _same_unicode_version(chr(cp))]
    assert len(differ) < 20000, len(differ)
    reclassified = [hex(cp) for cp in differ if CATEGORIES[ours[cp] & 0x1F] != "Cn"]
    assert len(reclassified) < 20, reclassified


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_o200k_on_any_text(text):
    text = "".join(c for c in P.fix_surrogates(text) if _same_unicode_version(c))
    assert _engine(P.O200K_PATTERN).split(text) == _reference(P.O200K_PATTERN)(text)


@pytest.mark.parametrize("scanner", ["cl100k", "o200k", "gpt2", "llama3", "qwen2", "smollm",
                                     "whitespace"])
def test_hand_scanners_equal_the_engine(scanner):
    # The hand-written scanners are the fast path of patterns the engine also runs.
    fast = _C.BPE.from_ranks({bytes([b]): b for b in range(256)}, {}, scanner)
    general = _engine(P._PATTERN_OF[scanner])
    rng = random.Random(7)
    for _ in range(20000):
        text = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 40)))
        assert fast.split(text) == general.split(text), (scanner, text)


@pytest.mark.parametrize("scanner", ["cl100k", "o200k", "gpt2", "llama3", "qwen2", "smollm"])
def test_hand_scanners_equal_the_engine_on_long_runs(scanner):
    # Runs of one kind of character of every length up to 40 (the scanners take ASCII letters
    # 16 bytes at a time: runs that end before, at and after a 16-byte step, and a non-ASCII
    # letter or a mark inside a run), in texts up to a few hundred bytes.
    fast = _C.BPE.from_ranks({bytes([b]): b for b in range(256)}, {}, scanner)
    general = _engine(P._PATTERN_OF[scanner])
    kinds = [string.ascii_uppercase, string.ascii_lowercase, string.ascii_letters, "éÉßøŁǅʰ",
             "\u0301", "中文", string.digits, " ", "\n", ".,'!/", "\t "]
    rng = random.Random(16)
    for _ in range(3000):
        text = "".join("".join(rng.choice(rng.choice(kinds)) for _ in range(rng.randint(0, 40)))
                       for _ in range(rng.randint(1, 8)))
        assert fast.split(text) == general.split(text), (scanner, text)


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(["cl100k", "o200k", "gpt2", "llama3", "qwen2", "smollm"]), st.text(max_size=60))
def test_hand_scanners_equal_the_engine_on_any_text(scanner, text):
    text = P.fix_surrogates(text)
    fast = _C.BPE.from_ranks({bytes([b]): b for b in range(256)}, {}, scanner)
    assert fast.split(text) == _engine(P._PATTERN_OF[scanner]).split(text)


def test_pipeline_splits_each_piece_as_a_text():
    # Stage 2 sees each piece of stage 1 as a whole text: $ is the end of the piece.
    assert P.pretokenize("ab  \ncd  ", [r"[^\n]+|\n+", r"\s+$|\S+"]) == ["ab", "  ", "\n", "cd", "  "]
    deepseek = list(P.GGUF_PRE_TOKENIZERS["deepseek-v3"].patterns)
    assert P.pretokenize("12345 Hello你好", deepseek) == ["123", "45", " Hello", "你好"]


def test_gaps_are_pieces():
    assert P.pretokenize("ab, cd", [r"\p{L}+"]) == ["ab", ", ", "cd"]
    assert P.pretokenize("", [r"\p{L}+"]) == []
    assert P.pretokenize("!!", [r"\p{L}+"]) == ["!!"]


def test_case_insensitive_uses_unicode_case_folding():
    assert P.pretokenize("'S'ſ'\u212a", [r"'(?i:s|k)"]) == ["'S", "'ſ", "'\u212a"]


@pytest.mark.parametrize("pattern,match", [
    (r"(a)\1", "backreference"), (r"\p{Han}", "unsupported property"), (r"(?<=a+)b", "fixed length"),
    (r"[a", "no closing"), (r"(a", "no closing"), (r"a)", "unbalanced"), (r"*a", "quantifier"),
    (r"a{3,1}", "m < n"), (r"(?P=x)", "unsupported group"), (r"\k<x>", "unsupported escape"),
    (r"[z-a]", "backwards"), (r"\x{110000}", "beyond"), (r"(?s:.)", "flag"), ("a{200000}", "too large"),
    (r"[[:alpha:]]", "POSIX"),
])
def test_unreadable_patterns_are_named(pattern, match):
    with pytest.raises(ValueError, match=match):
        _C.BPE.from_ranks({}, {}, [pattern])


def test_bad_pattern_types():
    with pytest.raises(TypeError):
        P.pretokenize("x", [1])
    with pytest.raises(TypeError):
        P.pretokenize("x", [])
    with pytest.raises(TypeError):
        _C.BPE.from_ranks({}, {}, 5)


def test_long_inputs_are_linear_enough():
    # Runs that make a backtracking engine back off (no CR/LF after \s*, letters of one case
    # for o200k) on a megabyte: each must finish and match the scanner where there is one.
    for text in ["a" * 1_000_000, " " * 1_000_000 + "x", "A" * 500_000 + "a", "1" * 999_999,
                 "'" * 1_000_000, "\u0301" * 300_000]:
        pieces = _engine(P.O200K_PATTERN).split(text)
        assert "".join(pieces) == text
    fast = _C.BPE.from_ranks({bytes([b]): b for b in range(256)}, {}, "cl100k")
    text = " " * 200_000 + "x\n\n " + "\t" * 100_000
    assert _engine(P.CL100K_PATTERN).split(text) == fast.split(text)


def test_every_gguf_pre_tokenizer_builds():
    for name, pre in P.GGUF_PRE_TOKENIZERS.items():
        spec = P.scanner_for(pre.patterns if isinstance(pre.patterns, str) else list(pre.patterns))
        _C.BPE.from_ranks({bytes([b]): b for b in range(256)}, {}, spec).split("Hello, world 123!")
    with pytest.raises(ValueError, match="unsupported GGUF pre-tokenizer 'kimi-k2'"):
        P.gguf_pre_tokenizer("kimi-k2")
    with pytest.raises(ValueError, match="unknown GGUF pre-tokenizer"):
        P.gguf_pre_tokenizer("no-such-model")
    assert P.gguf_pre_tokenizer(None) == P.GGUF_PRE_TOKENIZERS["default"]


def test_too_deep_backtracking_is_a_value_error_not_a_crash():
    engine = _engine(r"(?:a|b)+")
    assert engine.split("ab" * 400) == ["ab" * 400]
    with pytest.raises(ValueError, match="deeper backtracking"):
        engine.split("a" * 100_000)
    enc = kernelgpt.Encoding("deep", pat_str=r"(?:a|b)+", special_tokens={},
                             mergeable_ranks={bytes([b]): b for b in range(256)})
    with pytest.raises(ValueError, match="deeper backtracking"):
        enc.encode_ordinary_batch(["a" * 100_000, "b"])


@pytest.mark.parametrize("pattern,text", [(r"(?:a|aa)+c", "a" * 40), (r"(a*)*b", "a" * 40)])
def test_catastrophic_backtracking_is_a_value_error_not_a_hang(pattern, text):
    with pytest.raises(ValueError, match="more backtracking than the engine allows"):
        _engine(pattern).split(text)


@pytest.mark.parametrize("pattern", [r"\s*[\r\n]", r"\s+$", r"\s+$|\s", r"[\r\n]|\s+(?=x)"])
def test_runs_that_cannot_end_stay_linear(pattern):
    # Each start inside a long run fails after backing off over the whole run: a plain
    # backtracker is quadratic (1e12 steps here); the repeat memo answers later starts at once.
    text = " " * 1_000_000 + "y"
    pieces = _engine(pattern).split(text)
    assert "".join(pieces) == text
    small = " " * 300 + "y"
    assert _engine(pattern).split(small) == _reference(pattern)(small)
