"""SmolLM2's tokenizer (GGUF metadata -> Encoding.from_gguf_vocab), its "smollm" pre-tokenizer,
the ChatML template (kernelgpt.chat), and the transformers reference data.

Tests that need the GGUF skip without it ($KERNELGPT_SMOLLM2_GGUF or `kernelgpt fetch smollm2`);
tests that need tests/data/smollm2_reference.json skip without it. The pre-tokenizer, the
chat template and the constructor's checks are tested without either.
"""
import pickle
import sysconfig
import pathlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernelgpt import chat, reference
from kernelgpt import tokenizer as tk

import smollm2_files

regex = pytest.importorskip("regex")

GRAVITY = ("Gravity is a fundamental concept in physics that describes the curvature of "
           "spacetime caused by the presence of mass.")


# ---- the "smollm" pre-tokenizer ----------------------------------------------------------------

_DIGIT = regex.compile(r"\p{N}")
_GPT2 = regex.compile(tk.GPT2_PATTERN)
_SMOLLM = regex.compile(tk.SMOLLM_PATTERN)


def definition_split(text):
    """SmolLM2's tokenizer.json, literally: Digits(individual_digits=True) isolates every \\p{N}
    character, then ByteLevel's GPT-2 regex splits each remaining segment on its own."""
    pieces, start = [], 0
    for m in _DIGIT.finditer(text):
        pieces += _GPT2.findall(text[start:m.start()])
        pieces.append(m.group())
        start = m.end()
    return pieces + _GPT2.findall(text[start:])


ALPHABET = list("abcXYZsdmtlvre'’ \t\n\r\x0b\x0c.,;!?-_()[]{}<>|/\\\"#@$%^&*=+~`0123456789") + [
    "é", "ß", "ſ", "Ω", "ж", "א", "ش", "中", "日本", "한", "\u0301", "\u200d", "\ufe0f", "\u00a0",
    "\u2003", "\u3000", "\u0085", "٣", "४", "Ⅻ", "½", "²", "😀", "👍🏽", "🇫🇷", "\ufffd", "𝔘",
    "<|im_start|>", "<|im_end|>",
]


@st.composite
def mixed_text(draw):
    parts = draw(st.lists(st.sampled_from(ALPHABET), max_size=60))
    runs = draw(st.lists(st.tuples(st.sampled_from([" ", "\n", "\t", "1", "a", "!", " 7", "\r\n"]),
                                   st.integers(1, 30)), max_size=4))
    for ch, n in runs:
        parts.insert(draw(st.integers(0, len(parts))), ch * n)
    return "".join(parts)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=mixed_text())
def test_split_matches_tokenizer_json_definition(text):
    expected = definition_split(text)
    assert _SMOLLM.findall(text) == expected  # the one-regex form says the same
    assert tk.pretokenize(text, "smollm") == expected


ADVERSARIAL = [
    "", " ", "1", " 1", "  1", "a  1", "a 1", "x\n1", "x\n\n2", "1 ", "1  ", "12 34", " \t 5",
    "'s1", "1's", "a1b2c3", "½²Ⅻ٣", " ½", "\u3000" * 5 + "9", "9" * 1000, " " * 1000 + "1",
    " " * 999 + "a", "1 " * 500, "x \r\n\r\n 3 y", "3.14159", "$1,234.56", "0x1F",
]


@pytest.mark.parametrize("text", ADVERSARIAL, ids=lambda t: repr(t[:12]) + f"..{len(t)}")
def test_split_adversarial(text):
    assert tk.pretokenize(text, "smollm") == definition_split(text)
    assert tk.pretokenize(text, tk.SMOLLM_PATTERN) == definition_split(text)


def test_split_of_python_source():
    text = pathlib.Path(sysconfig.get_paths()["stdlib"], "decimal.py").read_text(encoding="utf-8")
    text += pathlib.Path(sysconfig.get_paths()["stdlib"], "datetime.py").read_text(encoding="utf-8")
    assert tk.pretokenize(text, "smollm") == definition_split(text)


# ---- a small synthetic GGUF vocabulary (no file needed) -----------------------------------------

_BYTE_CHAR = {b: c for c, b in tk._gpt2_char_to_byte().items()}


def spell(data: bytes) -> str:
    return "".join(_BYTE_CHAR[b] for b in data)


def tiny_vocab(missing=b"\x04"):
    """Three control tokens, the bytes (all but `missing`) in a shuffled order, then merges
    learned by the reference trainer on some text: a GGUF-style vocabulary."""
    text = ("the theme of the thesis: 1984 is 12345 people; they'll say it's 2 + 2 = 4\n" * 3 +
            "  indented  code(x)  \n\tand tabs Ünïcödé 東京")
    pieces = [p.encode() for p in definition_split(text)]
    learned = reference.bpe_train(pieces, 256 + 60)
    rng = np.random.default_rng(7)
    byte_order = [int(b) for b in rng.permutation(256) if bytes([b]) not in missing]
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    types = [3, 3, 3]
    id_of = {}  # the trainer's ids -> ours
    for b in byte_order:
        id_of[b] = len(tokens)
        tokens.append(spell(bytes([b])))
        types.append(1)
    value = {b: bytes([b]) for b in range(256)}
    merges = []
    for left, right, new_id, _ in learned:
        value[new_id] = value[left] + value[right]
        if any(bytes([b]) in missing for b in value[new_id]):
            continue
        id_of[new_id] = len(tokens)
        tokens.append(spell(value[new_id]))
        types.append(1)
        merges.append(f"{spell(value[left])} {spell(value[right])}")
    return tokens, merges, types


def reference_ids(tokens, merges, text, pre="smollm"):
    """reference.bpe_encode_merges on the pieces of `text` (Hugging Face's BPE semantics)."""
    ids = {t: i for i, t in enumerate(tokens)}
    byte_ids = {b: ids[c] for c, b in tk._gpt2_char_to_byte().items() if c in ids}
    triples = [(ids[a], ids[b], ids[a + b]) for a, b in (m.split(" ") for m in merges)]
    pieces = definition_split(text) if pre == "smollm" else _GPT2.findall(text)
    return reference.bpe_encode_merges([p.encode() for p in pieces], byte_ids, triples)


@pytest.fixture(scope="module")
def tiny():
    tokens, merges, types = tiny_vocab()
    enc = tk.Encoding.from_gguf_vocab(tokens, merges, types, "smollm", bos_token_id=1,
                                      eos_token_id=2, name="tiny")
    return tokens, merges, types, enc


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=mixed_text())
def test_tiny_vocabulary_matches_merge_reference(tiny, text):
    tokens, merges, _, enc = tiny
    assert enc.encode_ordinary(text) == reference_ids(tokens, merges, text)


def test_tiny_vocabulary_facts(tiny):
    tokens, _, _, enc = tiny
    assert enc.pattern == "smollm" and enc.n_vocab == len(tokens)
    assert enc.special_tokens_set == {"<|endoftext|>", "<|im_start|>", "<|im_end|>"}
    assert (enc.bos_token_id, enc.eos_token_id, enc.add_bos_token) == (1, 2, False)
    text = "<|im_start|>user\nthe theme<|im_end|>\n"
    with pytest.raises(ValueError, match="disallowed special token"):
        enc.encode(text)  # tiktoken's policy: special text must be allowed explicitly
    ids = enc.encode(text, allowed_special="all")
    assert ids[0] == 1 and ids[-2] == 2 and enc.decode(ids) == text
    assert 1 not in enc.encode_ordinary(text) and enc.decode(enc.encode_ordinary(text)) == text


def test_bytes_without_a_token_are_dropped(tiny):
    tokens, merges, _, enc = tiny
    for text in ["\x04", "a\x04b", "the\x04me", " \x04 1\x04\x042", "\x04" * 100 + "x"]:
        ids = enc.encode_ordinary(text)
        assert ids == reference_ids(tokens, merges, text)
        assert enc.decode(ids) == text.replace("\x04", "")
    # Every merge algorithm drops them the same way.
    piece = ("the\x04 theme" * 20).encode()  # 200 bytes: every algorithm may take it
    ids = {t: i for i, t in enumerate(tokens)}
    byte_ids = {b: ids[c] for c, b in tk._gpt2_char_to_byte().items() if c in ids}
    triples = [(ids[a], ids[b], ids[a + b]) for a, b in (m.split(" ") for m in merges)]
    expected = reference.bpe_encode_merges([piece], byte_ids, triples)
    for algorithm in ("scan", "stack_heap", "heap"):
        assert enc._core.encode_single_piece(piece, algorithm) == expected


def test_pickle_keeps_gguf_settings(tiny):
    enc = tiny[3]
    back = pickle.loads(pickle.dumps(enc))
    text = "a\x04b the theme 1984"
    assert back.encode_ordinary(text) == enc.encode_ordinary(text)
    assert (back.bos_token_id, back.eos_token_id, back.pattern) == (1, 2, "smollm")


def _bad(tokens, merges, types, pre="smollm", **kw):
    return lambda: tk.Encoding.from_gguf_vocab(tokens, merges, types, pre, **kw)


def test_constructor_rejects_bad_input(tiny):
    tokens, merges, types, _ = tiny
    n = len(tokens)
    swapped = list(merges)
    swapped[3], swapped[7] = swapped[7], swapped[3]
    cases = [
        (_bad(tokens, merges, types, pre="nonesuch"), ValueError, "unknown GGUF pre-tokenizer"),
        (_bad(tokens, merges, types, pre="kimi-k2"), ValueError, "unsupported GGUF pre-tokenizer"),
        (_bad(tokens, merges, types, pre=5), TypeError, "tokenizer.ggml.pre"),
        (_bad(tokens, merges, types[:-1]), ValueError, "token types"),
        (_bad("abc", merges, types), TypeError, "tokens must be a list"),
        (_bad(tokens, 5, types), TypeError, "merges must be a list"),
        (_bad(tokens[:-1] + [7], merges, types), TypeError, "not a str"),
        (_bad(tokens, merges, types[:-1] + [2]), ValueError, "has type 2"),
        (_bad(tokens, merges, types[:-1] + [6]), ValueError, "has type 6"),
        (_bad(tokens[:-1] + [tokens[5]], merges, types), ValueError, "are both"),
        (_bad(tokens, merges + ["zz qq"], types), ValueError, "two tokens of the vocabulary"),
        (_bad(tokens, merges + ["onlyone"], types), ValueError, "'left right'"),
        (_bad(tokens, swapped, types), ValueError, "merge order"),
        (_bad(tokens, merges, types, bos_token_id=n), ValueError, "bos_token_id"),
        (_bad(tokens, merges, types, eos_token_id=-1), ValueError, "eos_token_id"),
        (_bad(tokens, merges, types, eos_token_id="2"), ValueError, "eos_token_id"),
    ]
    for make, error, match in cases:
        with pytest.raises(error, match=match):
            make()


# ---- the chat template ----------------------------------------------------------------------------

def test_chat_template_renders_smollm2():
    messages = [{"role": "user", "content": "What is gravity?"}]
    assert chat.apply_chat_template(messages) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
        "Face<|im_end|>\n<|im_start|>user\nWhat is gravity?<|im_end|>\n<|im_start|>assistant\n")
    custom = [{"role": "system", "content": "Be brief."}] + messages
    assert chat.apply_chat_template(custom, add_generation_prompt=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is gravity?<|im_end|>\n")
    with pytest.raises(ValueError, match="empty"):
        chat.apply_chat_template([])
    # The default system prompt is added only before the first message.
    two = messages + [{"role": "assistant", "content": "Mass."}, {"role": "user", "content": "?"}]
    assert chat.apply_chat_template(two).count("<|im_start|>system") == 1


_PLAIN_CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
                 "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if "
                 "add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
_VARIANTS = [
    chat.SMOLLM2_CHAT_TEMPLATE,
    chat.SMOLLM2_CHAT_TEMPLATE.replace("SmolLM, trained by Hugging Face", "Bob"),
    chat.SMOLLM2_CHAT_TEMPLATE.replace("\n", "\\n"),           # "\n" escapes in the literals
    chat.SMOLLM2_CHAT_TEMPLATE.replace("'", '"'),
    chat.SMOLLM2_CHAT_TEMPLATE.replace("{% ", "{%- ").replace(" %}", " -%}"),
    _PLAIN_CHATML,
]

conversation = st.lists(st.fixed_dictionaries({
    "role": st.sampled_from(["system", "user", "assistant", "tool"]),
    "content": st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)}), min_size=1,
    max_size=5)


@settings(max_examples=200, deadline=None)
@given(messages=conversation, add=st.booleans(), which=st.integers(0, len(_VARIANTS) - 1))
def test_chat_template_matches_jinja(messages, add, which):
    jinja2 = pytest.importorskip("jinja2")
    template = _VARIANTS[which]
    # transformers renders with this environment (trim_blocks, lstrip_blocks).
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    expected = env.from_string(template).render(messages=messages, add_generation_prompt=add)
    assert chat.apply_chat_template(messages, add, template=template) == expected


def test_any_template_renders_as_jinja_does():
    """Templates outside the ChatML family (once refused) render exactly as jinja2 does."""
    jinja2 = pytest.importorskip("jinja2")
    messages = [{"role": "user", "content": "hi"}]
    for template in ["{% for message in messages %}{{ message['content'] }}{% endfor %}",
                     chat.SMOLLM2_CHAT_TEMPLATE.replace("message['content']",
                                                        "message['content'] | trim"),
                     chat.SMOLLM2_CHAT_TEMPLATE.replace("assistant\n", "assistant")]:
        env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
        expected = env.from_string(template).render(messages=messages, add_generation_prompt=True)
        assert chat.apply_chat_template(messages, template=template) == expected


def test_chat_bad_messages():
    with pytest.raises(TypeError, match="list of"):
        chat.apply_chat_template("hello")
    with pytest.raises(TypeError, match="list of"):
        chat.apply_chat_template({"role": "user", "content": "hi"})
    with pytest.raises(TypeError, match="message 0"):
        chat.apply_chat_template(["hello"])
    with pytest.raises(ValueError, match="has no 'content'"):
        chat.apply_chat_template([{"role": "user"}])
    with pytest.raises(TypeError, match="'content' must be a str"):
        chat.apply_chat_template([{"role": "user", "content": None}])
    with pytest.raises(TypeError, match="chat template must be a str"):
        chat.apply_chat_template([], template=3)


# ---- the real SmolLM2 vocabulary and the transformers reference ----------------------------------

@pytest.fixture(scope="module")
def metadata():
    path = smollm2_files.gguf_path()
    if path is None:
        pytest.skip("SmolLM2 GGUF not found: run `kernelgpt fetch smollm2` or set KERNELGPT_SMOLLM2_GGUF")
    return smollm2_files.read_gguf_metadata(path)


def _from_metadata(m, pre):
    return tk.Encoding.from_gguf_vocab(
        m["tokenizer.ggml.tokens"], m["tokenizer.ggml.merges"], m["tokenizer.ggml.token_type"],
        pre, bos_token_id=m["tokenizer.ggml.bos_token_id"],
        eos_token_id=m["tokenizer.ggml.eos_token_id"],
        add_bos_token=m["tokenizer.ggml.add_bos_token"], name="smollm2")


@pytest.fixture(scope="module")
def smollm(metadata):
    return tk.Encoding.from_gguf_metadata(metadata, name="smollm2")


def test_from_gguf_metadata(smollm, metadata):
    same = _from_metadata(metadata, "smollm")
    text = "In 1984, 12345 people <|im_end|>"
    assert smollm.encode(text, allowed_special="all") == same.encode(text, allowed_special="all")
    with pytest.raises(ValueError, match="SentencePiece vocabulary needs tokenizer.ggml.scores"):
        tk.Encoding.from_gguf_metadata({**metadata, "tokenizer.ggml.model": "llama"})
    with pytest.raises(ValueError, match="'t5' \\(Unigram\\)"):
        tk.Encoding.from_gguf_metadata({**metadata, "tokenizer.ggml.model": "t5"})
    with pytest.raises(ValueError, match="no tokenizer.ggml.merges"):
        tk.Encoding.from_gguf_metadata({k: v for k, v in metadata.items()
                                        if k != "tokenizer.ggml.merges"})
    with pytest.raises(TypeError, match="expected a dict"):
        tk.Encoding.from_gguf_metadata([])


@pytest.fixture(scope="module")
def as_transformers(metadata):
    """The same vocabulary split like transformers' GGUF loader does (plain GPT-2 ByteLevel:
    it does not know the "smollm" pre-tokenizer)."""
    return _from_metadata(metadata, "gpt2")


@pytest.fixture(scope="module")
def ref():
    data = smollm2_files.load_reference()
    if data is None:
        pytest.skip("tests/data/smollm2_reference.json is absent")
    return data


def test_vocabulary_facts(smollm, metadata):
    assert metadata["tokenizer.ggml.pre"] == "smollm" and smollm.pattern == "smollm"
    assert smollm.n_vocab == 49152 and len(smollm.special_tokens_set) == 17
    assert smollm.encode_single_token("<|im_start|>") == 1 == smollm.bos_token_id
    assert smollm.encode_single_token("<|im_end|>") == 2 == smollm.eos_token_id
    assert smollm.eot_token == 0 and smollm.add_bos_token is False
    assert chat.stop_token_ids(smollm) == [0, 2]  # <|endoftext|>, <|im_end|>
    rendered = chat.parse_chat_template(metadata["tokenizer.chat_template"]).render(
        [{"role": "user", "content": "hi"}])
    assert "You are a helpful AI assistant named SmolLM, trained by Hugging Face" in rendered


def test_reference_prompts(smollm, as_transformers, metadata, ref):
    template = metadata["tokenizer.chat_template"]
    assert template == ref["conventions"]["chat_template"]
    for case in ref["cases"]:
        if case["kind"] == "plain":
            text = case["text"]
        else:
            text = chat.apply_chat_template(case["messages"], template=template)
            assert text == case["chat_text"]
            assert chat.encode_chat(smollm, case["messages"], template=template) == case["ids"]
        for enc in (smollm, as_transformers):
            assert enc.encode(text, allowed_special="all") == case["ids"], text
        assert smollm.decode(case["ids"]) == text


def test_reference_tricky_texts(smollm, as_transformers, ref):
    for t in ref["tricky"]:
        text = t["text"]
        assert smollm.encode(text, allowed_special="all") == t["ids_smollm"], text
        assert as_transformers.encode(text, allowed_special="all") == t["ids_transformers"], text
        assert as_transformers.encode_ordinary(text) == t["ids_split_special"], text
        assert smollm.decode(t["ids_smollm"]) == t["decoded"]


def test_reference_greedy_text_decodes(smollm, ref):
    for case in ref["cases"]:
        assert smollm.decode(case["greedy_ids"]) == case["greedy_text"]
        stream = smollm.stream_decoder()
        assert "".join(stream.push(i) for i in case["greedy_ids"]) + stream.finish() == case["greedy_text"]


def test_merge_order_on_real_vocabulary(smollm, metadata):
    # Our merge rule (lowest merged-token id) against Hugging Face's (earliest merge in the
    # list), on every distinct piece of some Python source and generated text.
    tokens, merges = metadata["tokenizer.ggml.tokens"], metadata["tokenizer.ggml.merges"]
    ids = {t: i for i, t in enumerate(tokens)}
    byte_ids = {b: ids[c] for c, b in tk._gpt2_char_to_byte().items() if c in ids}
    triples = [(ids[a], ids[b], ids[a + b]) for a, b in (m.split(" ") for m in merges)]
    text = pathlib.Path(sysconfig.get_paths()["stdlib"], "argparse.py").read_text(encoding="utf-8")
    rng = np.random.default_rng(3)
    text += "".join(ALPHABET[i] for i in rng.integers(0, len(ALPHABET), 20000))
    pieces = sorted(set(definition_split(text)))
    ours = [i for ids in smollm.encode_ordinary_batch(pieces) for i in ids]
    assert len(pieces) > 3000
    assert ours == reference.bpe_encode_merges([p.encode() for p in pieces], byte_ids, triples)


def _missing_bytes(enc):
    missing = set()
    for b in range(256):
        try:
            enc.encode_single_token(bytes([b]))
        except KeyError:
            missing.add(b)
    return missing


def test_missing_bytes(smollm):
    # 21 byte values have no token in SmolLM2: control characters and UTF-8 lead bytes of
    # planes 4-15 (\xf1, \xf2) among them; transformers and llama.cpp drop them too.
    assert _missing_bytes(smollm) == {0x04, 0x06, 0x13, 0x14, 0x16, 0x1D, 0xC0, 0xC1, 0xF1,
                                      0xF2, *range(0xF5, 0x100)}
    assert smollm.decode_bytes(smollm.encode_ordinary("\U00040000")) == b"\x80\x80\x80"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(st.characters(blacklist_categories=("Cs",)), max_size=80))
def test_round_trip_and_transformers_agree_without_digits(smollm, as_transformers, text):
    ids = smollm.encode_ordinary(text)
    kept = bytes(b for b in text.encode() if b not in _missing_bytes(smollm))
    assert smollm.decode_bytes(ids) == kept  # bytes without a token are dropped, nothing else
    if not _DIGIT.search(text):  # the two pre-tokenizers differ only around digits
        assert as_transformers.encode_ordinary(text) == ids


def test_reference_data_is_consistent(ref):
    conv = ref["conventions"]
    assert conv["add_bos_token"] is False and conv["eos_token_id"] == 2
    assert conv["rope_theta"] == 100000.0 and conv["tie_word_embeddings"] is True
    assert len([c for c in ref["cases"] if c["kind"] == "plain"]) >= 6
    assert len([c for c in ref["cases"] if c["kind"] == "chat"]) >= 3
    for case in ref["cases"]:
        logits = case["logits"]
        assert logits.shape == (49152,) and np.isfinite(logits).all()
        step = case["max_abs_logit"] / 8191
        np.testing.assert_allclose(logits[case["top50_ids"]], case["top50_logits"], rtol=0,
                                   atol=0.51 * step)
        assert case["greedy_ids"][0] == case["top50_ids"][0]
        assert len(case["greedy_ids"]) == 32 == len(case["greedy_gaps"])
    gravity = [c for c in ref["cases"] if c["kind"] == "chat" and
               c["messages"] == [{"role": "user", "content": "What is gravity?"}]]
    assert gravity and gravity[0]["greedy_text"].startswith(GRAVITY)
