"""o200k_base and o200k_harmony against tiktoken, built from the same vocabulary file.

tiktoken downloads o200k_base.tiktoken from the internet, which is not reachable here, so the
reference is a tiktoken.Encoding built from the file kernelgpt fetched (bpe-openai's copy,
whose sha256 both check against tiktoken's pin) with tiktoken's own pattern and special tokens.
"""
import glob
import pathlib
import random

import pytest

import kernelgpt
from kernelgpt.io import fetch

tiktoken = pytest.importorskip("tiktoken")
load = pytest.importorskip("tiktoken.load")
openai_public = pytest.importorskip("tiktoken_ext.openai_public")

pytestmark = pytest.mark.skipif(fetch.cached("o200k_base") is None,
                                reason="run `kernelgpt fetch o200k_base`")


@pytest.fixture(scope="module")
def pair():
    ranks = load.load_tiktoken_bpe(str(fetch.cached("o200k_base")), expected_hash=fetch.O200K_SHA256)
    theirs = tiktoken.Encoding("o200k_base", pat_str=kernelgpt.tokenizer.O200K_PATTERN,
                               mergeable_ranks=ranks,
                               special_tokens={"<|endoftext|>": 199999, "<|endofprompt|>": 200018})
    return kernelgpt.get_encoding("o200k_base"), theirs


@pytest.mark.parametrize("name", ["o200k_base", "o200k_harmony"])
def test_pattern_and_specials_are_tiktokens(name, monkeypatch):
    # tiktoken's own constructors, with the download replaced by nothing
    monkeypatch.setattr(openai_public, "load_tiktoken_bpe", lambda *a, **k: {})
    spec = getattr(openai_public, name)()
    enc = kernelgpt.get_encoding(name)
    assert enc._pat_str == spec["pat_str"]
    assert enc._special_tokens == spec["special_tokens"]
    assert enc.eot_token == 199999


def _texts():
    texts = []
    for source in ("shakespeare", "multilingual"):
        if fetch.cached(source) is not None:
            texts.append(fetch.cached(source).read_text(encoding="utf-8")[:400_000])
    root = pathlib.Path(kernelgpt.__file__).parent
    texts.append("".join(pathlib.Path(p).read_text() for p in sorted(glob.glob(str(root / "**/*.py"), recursive=True)))[:400_000])
    rng = random.Random(200)
    alphabet = (list("aAbBzZsStT'’ \t\n\r0123456789/.,!?-_") +
                ["é", "Ü", "ſ", "\u212a", "ǅ", "ʰ", "\u0301", "你", "好", "ア", "가", "١", "½", "…",
                 "。", "—", "€", "🙂", "\u00a0", "\u3000", "İ", "ß", "ẞ", "HTTP", "Server", "'S"])
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(5000)]
    return texts


def test_encode_equals_tiktoken(pair):
    ours, theirs = pair
    for text in _texts():
        assert ours.encode_ordinary(text) == theirs.encode_ordinary(text), text[:200]
    assert ours.encode("<|endoftext|>x", allowed_special="all") == [199999, 87]


def test_batch_and_decode(pair):
    ours, theirs = pair
    texts = _texts()[3:500]
    assert ours.encode_ordinary_batch(texts) == theirs.encode_ordinary_batch(texts)
    for text in texts[:100]:
        assert ours.decode(ours.encode_ordinary(text)) == text


def test_harmony():
    enc = kernelgpt.get_encoding("o200k_harmony")
    assert enc.encode("<|start|>assistant<|channel|>final<|message|>Hi<|end|>",
                      allowed_special="all") == [200006, 173781, 200005, 17196, 200008, 12194, 200007]
    assert enc.encode("<|endofprompt|>", allowed_special="all") == [200018]
    assert enc.decode([200018]) == "<|reserved_200018|>"  # as tiktoken: the later name
    assert enc.n_vocab == 201088
    assert kernelgpt.encoding_for_model("gpt-oss-120b").name == "o200k_harmony"
    assert kernelgpt.encoding_for_model("gpt-4o").name == "o200k_base"
