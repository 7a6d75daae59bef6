"""Every byte-level BPE vocabulary of llama.cpp's own tokenizer tests, exact.

llama.cpp's tests/test-tokenizer-0 runs `models/ggml-vocab-*.gguf` (vocabulary-only GGUF files of
real models: Llama 3, Qwen 2 and 3.5, DeepSeek LLM and Coder, Falcon, MPT, StarCoder, Refact,
Command-R, GPT-2, ...) on the strings of their `.inp` files and compares with the ids of their
`.out` files (what Hugging Face tokenizers gives): no BOS, special tokens not parsed. Here the
same, through Encoding.from_gguf_metadata. Then, beyond those few dozen strings, each vocabulary
against Hugging Face `tokenizers` itself on a tokenizer.json built from the same GGUF (its
pre-tokenizer written as the model's Split regexes, from GGUF_PRE_TOKENIZERS) over prose, code,
several languages and fuzzed strings (white-space runs, digits, emoji, marks, CJK).

The vocabularies come from the llama-cpp-python sdist: `python tools/fetch_llamacpp_vocabs.py`
(.ci/run does it); the tests skip without them.
"""
import json
import pathlib
import random

import pytest

from kernelgpt.io import fetch
from kernelgpt.io.gguf import GGUFFile
from kernelgpt.tokenizer import GGUF_PRE_TOKENIZERS, Encoding
from kernelgpt.tokenizer import vocab_import

VOCABS = fetch.cache_dir() / "llama.cpp-vocabs-0.3.36"
BPE_WITH_VECTORS = ["command-r", "deepseek-coder", "deepseek-llm", "falcon", "gpt-2", "llama-bpe",
                    "mpt", "qwen2", "qwen35", "refact", "starcoder"]
BPE_WITHOUT_VECTORS = ["aquila", "gpt-neox"]  # no tokenizer.ggml.pre: llama.cpp's default

needs_vocabs = pytest.mark.skipif(not (VOCABS / "ggml-vocab-gpt-2.gguf").is_file(),
                                  reason="run `python tools/fetch_llamacpp_vocabs.py`")


def _metadata(name):
    md = GGUFFile(VOCABS / f"ggml-vocab-{name}.gguf").metadata
    return {k: v for k, v in md.items() if k.startswith("tokenizer.ggml.")}


def _vectors(name):
    """(text, ids) pairs, split as test-tokenizer-0 splits the files."""
    raw = (VOCABS / f"ggml-vocab-{name}.gguf.inp").read_text(encoding="utf-8")
    outs = (VOCABS / f"ggml-vocab-{name}.gguf.out").read_text(encoding="utf-8").split("\n")
    sep, texts, pos = "\n__ggml_vocab_test__\n", [], 0
    while pos < len(raw):
        nxt = raw.find(sep, pos)
        if nxt < 0:
            texts.append(raw[pos:])
            break
        texts.append(raw[pos:nxt])
        pos = nxt + len(sep)
    outs = outs[:len(texts)]
    assert len(texts) == len(outs) > 10
    return [(t, [int(x) for x in o.split()]) for t, o in zip(texts, outs)]


@needs_vocabs
@pytest.mark.parametrize("name", BPE_WITH_VECTORS)
def test_llamacpp_vectors(name):
    enc = Encoding.from_gguf_metadata(_metadata(name))
    cases = _vectors(name)
    wrong = [(text, want, enc.encode_ordinary(text)) for text, want in cases
             if enc.encode_ordinary(text) != want]
    assert not wrong, f"{name}: {len(wrong)} of {len(cases)} differ, e.g. {wrong[0]}"
    for text, want in cases:  # and back
        assert enc.decode(want) == text or "\ufffd" in enc.decode(want) or not want


@needs_vocabs
@pytest.mark.parametrize("name", BPE_WITH_VECTORS + BPE_WITHOUT_VECTORS)
def test_loads_with_its_pre_tokenizer(name):
    md = _metadata(name)
    enc = Encoding.from_gguf_metadata(md)
    pre = md.get("tokenizer.ggml.pre") or "default"
    spec = GGUF_PRE_TOKENIZERS[pre].patterns
    assert enc.pattern == (spec if isinstance(spec, str) else list(spec))


def _tokenizer_json(md):
    return json.dumps(vocab_import.tokenizer_json_from_gguf(md))


def _corpus():
    texts = []
    for source in ("shakespeare", "multilingual"):
        if fetch.cached(source) is not None:
            texts += fetch.cached(source).read_text(encoding="utf-8")[:150_000].split("\n\n")
    root = pathlib.Path(__file__).resolve().parent.parent / "python" / "kernelgpt"
    code = "".join(p.read_text(encoding="utf-8") for p in sorted(root.rglob("*.py")))[:150_000]
    texts += code.split("\n\n")
    rng = random.Random(24)
    alphabet = (list("aAbBzZsStT'’ \t\n\r0123456789/.,!?-_$+<=>^~|`\"#{}()[]") +
                ["é", "Ü", "ſ", "\u212a", "ǅ", "ʰ", "\u0301", "你", "好", "ア", "가", "١", "½", "…",
                 "。", "—", "€", "🙂", "\u00a0", "\u3000", "İ", "ß", "ẞ", "ぁ", "ｱ", "ᾼ", "\u200d"])
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(1500)]
    return texts


@needs_vocabs
@pytest.mark.parametrize("name", BPE_WITH_VECTORS + BPE_WITHOUT_VECTORS)
def test_equal_to_hugging_face_tokenizers(name):
    tokenizers = pytest.importorskip("tokenizers")
    md = _metadata(name)
    hf = tokenizers.Tokenizer.from_str(_tokenizer_json(md))
    enc = Encoding.from_gguf_metadata(md)
    texts = _corpus()
    want = [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]
    # Hugging Face matches special added tokens in the text too: allowed_special="all"
    got = enc.encode_batch(texts, allowed_special="all")
    wrong = [(t, w, g) for t, w, g in zip(texts, want, got) if w != g]
    assert not wrong, f"{name}: {len(wrong)} of {len(texts)} texts differ, e.g. {wrong[0]}"


# ---- SentencePiece BPE (tokenizer.ggml.model = "llama") -------------------------------------

SPM_WITH_VECTORS = ["llama-spm", "phi-3"]


@needs_vocabs
@pytest.mark.parametrize("name", SPM_WITH_VECTORS)
def test_sentencepiece_vectors(name):
    enc = Encoding.from_gguf_metadata(_metadata(name))
    assert type(enc).__name__ == "SentencePieceEncoding"
    cases = _vectors(name)
    wrong = [(text, want, enc.encode_ordinary(text)) for text, want in cases
             if enc.encode_ordinary(text) != want]
    assert not wrong, f"{name}: {len(wrong)} of {len(cases)} differ, e.g. {wrong[0]}"
    assert enc.encode_ordinary_batch([t for t, _ in cases]) == [w for _, w in cases]


@needs_vocabs
@pytest.mark.parametrize("name", SPM_WITH_VECTORS + ["baichuan"])
def test_sentencepiece_round_trip_and_specials(name):
    import pickle
    enc = Encoding.from_gguf_metadata(_metadata(name))
    for text in _corpus()[:400] + ["", " ", "  leading", "trailing  ", "\U0001F642\u0301\x00"]:
        assert enc.decode(enc.encode_ordinary(text)) == text, text
    bos = enc.bos_token_id
    bos_text = enc.decode_single_token_bytes(bos).decode()
    assert enc.encode(bos_text + "Hi", allowed_special="all")[0] == bos
    assert bos not in enc.encode_ordinary(bos_text + "Hi")
    with pytest.raises(ValueError, match="disallowed special token"):
        enc.encode(bos_text)
    assert pickle.loads(pickle.dumps(enc)).encode_ordinary("pickled text") == \
        enc.encode_ordinary("pickled text")
    with pytest.raises(KeyError):
        enc.decode([enc.n_vocab])
    # what generation uses: stream decoding (a continuation keeps its spaces), special ids
    ids = enc.encode_ordinary("Hello w\u00f6rld \U0001F642!")
    stream = enc.stream_decoder()
    assert "".join(stream.push(i) for i in ids) + stream.finish() == " Hello w\u00f6rld \U0001F642!"
    assert enc.is_special_token(bos) and enc.encode_single_token(bos_text) == bos
    with pytest.raises(KeyError):
        enc.encode_single_token("no such piece at all")
    with pytest.raises(TypeError):
        enc.encode(5)


def test_sentencepiece_rejects_bad_vocabularies():
    from kernelgpt.tokenizer.sentencepiece import SentencePieceEncoding
    ok = (["<unk>", "a", "b", "ab"], [0.0, -1.0, -2.0, -0.5], [2, 1, 1, 1])
    enc = SentencePieceEncoding("tiny", *ok, add_space_prefix=False)
    assert enc.encode_ordinary("abba") == [3, 2, 1]
    assert enc.encode_ordinary("c") == [0]  # no piece and no byte tokens: unknown
    with pytest.raises(ValueError, match="type 9"):
        SentencePieceEncoding("bad", ok[0], ok[1], [2, 1, 1, 9])
    with pytest.raises(ValueError, match="scores"):
        SentencePieceEncoding("bad", ok[0], [0.0, float("nan"), 0.0, 0.0], ok[2])
    with pytest.raises(ValueError, match="tokens, 3 scores"):
        SentencePieceEncoding("bad", ok[0], ok[1][:3], ok[2])
    with pytest.raises(ValueError, match="two ids"):
        SentencePieceEncoding("bad", ["<unk>", "a", "a"], [0.0, 0.0, 0.0], [2, 1, 1])
    with pytest.raises(ValueError, match="<0xNN>"):
        SentencePieceEncoding("bad", ["<unk>", "<0xZZ>"], [0.0, 0.0], [2, 6])
    with pytest.raises(ValueError, match="bos_token_id"):
        SentencePieceEncoding("bad", *ok, bos_token_id=4)
    with pytest.raises(ValueError, match="WordPiece"):
        Encoding.from_gguf_metadata({"tokenizer.ggml.model": "bert"})
