"""The fuzz targets: each takes the bytes of one untrusted input and runs it through a parser
that reads files a user may get from anywhere. A target returns normally when the parser
accepts the input or refuses it with the errors it documents (ValueError, with the project's
GGUFError / CheckpointError / TemplateError, or TypeError); anything else (another exception,
a hang, a crash of the native code) is a bug.

fuzz/run.py drives them with atheris (coverage-guided); tests/test_fuzz_regressions.py
replays every input in tests/data/fuzz/<target>/ (the seeds and each crash ever found)
through the same functions, without atheris.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

EXPECTED = (ValueError, TypeError)

_TMP = None


def _scratch(name: str, data: bytes) -> Path:
    """`data` written to a scratch file (the parsers that take paths)."""
    global _TMP
    if _TMP is None:
        _TMP = Path(tempfile.mkdtemp(prefix="kernelgpt-fuzz-"))
    path = _TMP / name
    path.write_bytes(data)
    return path


def _quietly(fn, *args):
    try:
        return fn(*args)
    except EXPECTED:
        return None


# ---- GGUF ---------------------------------------------------------------------------------------

def gguf(data: bytes) -> None:
    """The native GGUF parser, then what the loaders read from it: metadata values, tensor
    descriptions and bytes, the Llama shape checks, the tokenizer."""
    from kernelgpt.io.gguf import GGUFFile, validate_llama
    from kernelgpt.tokenizer import Encoding

    try:
        f = GGUFFile(_scratch("model.gguf", data))
    except EXPECTED:
        return
    with f:
        for key in list(f.metadata)[:64]:
            _quietly(f.metadata.__getitem__, key)
        for name in list(f.tensors)[:16]:
            _quietly(f.tensor, name)
        _quietly(validate_llama, f.metadata, f.tensors)
        _quietly(Encoding.from_gguf_metadata, dict(f.metadata))


# ---- safetensors (checkpoints) --------------------------------------------------------------------

def safetensors(data: bytes) -> None:
    from kernelgpt.io import safetensors as st
    _quietly(st.load, _scratch("model.safetensors", data))


def checkpoint_config(data: bytes) -> None:
    """A checkpoint's config.json and state.json (the model is built from them)."""
    from kernelgpt.checkpoint import check_fields, check_resume_state
    from kernelgpt.config import GPTConfig
    try:
        d = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return
    try:
        GPTConfig(**check_fields(GPTConfig, d, "config.json", "model"))
    except EXPECTED:
        pass
    _quietly(check_resume_state, d if isinstance(d, dict) else {}, "state.json")


# ---- vocabularies ---------------------------------------------------------------------------------

_PATTERN = "cl100k"  # the scanner name (an unknown pattern string is refused up front)


def tiktoken(data: bytes) -> None:
    """A `.tiktoken` vocabulary ("<base64 token> <rank>" lines), then encoding and decoding
    with whatever it accepted."""
    from kernelgpt.tokenizer import Encoding
    try:
        enc = Encoding.from_tiktoken_file(_scratch("v.tiktoken", data), _PATTERN,
                                          {"<|end|>": 1 << 20})
    except EXPECTED:
        return
    text = "Hello, world! 123 ünïcödé <|end|>"
    try:
        ids = enc.encode(text, allowed_special="all")
    except EXPECTED:
        return
    enc.decode(ids)
    enc.decode_bytes(ids)


def merges(data: bytes) -> None:
    """GPT-2 style files: encoder.json and vocab.bpe (split at the first NUL byte), and the
    same lines as a GGUF token list and merges."""
    from kernelgpt.tokenizer import Encoding
    left, _, right = data.partition(b"\0")
    enc_json, bpe = _scratch("encoder.json", left), _scratch("vocab.bpe", right)
    _quietly(Encoding.from_gpt2_files, enc_json, bpe)
    tokens = left.decode("utf-8", "replace").split("\n")[:512]
    lines = right.decode("utf-8", "replace").split("\n")[:512]
    _quietly(lambda: Encoding.from_gguf_vocab(tokens, lines, [1] * len(tokens), "gpt2"))


# ---- chat templates and decoding ------------------------------------------------------------------

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "2+2?"}]


def chat_template(data: bytes) -> None:
    """A chat template from a model file (Jinja, sandboxed), rendered on a conversation."""
    from kernelgpt.chat import ChatTemplate
    try:
        t = ChatTemplate(data.decode("utf-8", "replace"), "<s>", "</s>", name="fuzz")
    except EXPECTED:
        return
    for messages in (MESSAGES, MESSAGES[1:]):  # some templates refuse a system message
        _quietly(t.render, messages)


_ENCODING = None


def _encoding():
    """gpt2 when fetched, else a small vocabulary trained here (the same code paths)."""
    global _ENCODING
    if _ENCODING is None:
        from kernelgpt import tokenizer as bpe
        try:
            _ENCODING = bpe.get_encoding("gpt2")
        except (ValueError, KeyError, OSError):
            text = (Path(__file__).with_name("targets.py").read_text() * 4)
            _ENCODING = bpe.train([text], 400)
    return _ENCODING


def decode(data: bytes) -> None:
    """Encoding.decode on byte soup: token ids (in and out of range) from the bytes, and the
    bytes as text to encode and decode back."""
    enc = _encoding()
    ids = [int.from_bytes(data[i:i + 3], "little") % (enc.n_vocab + 8)
           for i in range(0, len(data) - 2, 3)]
    for errors in ("replace", "strict"):
        try:  # an id out of range raises KeyError, as in tiktoken
            enc.decode(ids, errors=errors)
        except EXPECTED + (KeyError,):
            pass
    for fn in (enc.decode_bytes, enc.decode_with_offsets):
        try:
            fn(ids)
        except EXPECTED + (KeyError,):
            pass
    text = data.decode("utf-8", "replace")
    out = enc.decode(enc.encode_ordinary(text))
    if out != text:
        raise AssertionError(f"encode/decode round trip changed {text!r:.80} into {out!r:.80}")


# ---- the general pre-tokenizer engine (patterns come from tokenizer.json and GGUF files) ----

def pretokenizer(data: bytes) -> None:
    """A pattern (the first line; more patterns separated by NUL make a pipeline) compiled by
    the regex engine (csrc/bpe/regex.cpp), then the rest of the input split with it: refused
    patterns raise ValueError; the pieces of an accepted one must concatenate to the text."""
    from kernelgpt import _C
    head, _, rest = data.partition(b"\n")
    patterns = head.decode("utf-8", "replace").split("\0")
    try:
        core = _C.BPE.from_ranks({bytes([b]): b for b in range(256)}, {}, patterns)
    except EXPECTED:
        return
    text = rest.decode("utf-8", "replace")
    try:
        pieces = core.split(text)
    except ValueError:  # backtracking deeper than the engine allows: refused, not a crash
        return
    if "".join(pieces) != text or any(not p for p in pieces):
        raise AssertionError(f"{patterns!r:.80}: pieces do not rebuild {text!r:.80}")


TARGETS = {"gguf": gguf, "safetensors": safetensors, "checkpoint_config": checkpoint_config,
           "tiktoken": tiktoken, "merges": merges, "chat_template": chat_template,
           "decode": decode, "pretokenizer": pretokenizer}
