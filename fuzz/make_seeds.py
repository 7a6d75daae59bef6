"""Writes the seed inputs of the fuzz targets into tests/data/fuzz/<target>/ (committed):
small valid files of each format, cut from the real ones where they are fetched.

    python fuzz/make_seeds.py
"""
from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SEEDS = ROOT / "tests" / "data" / "fuzz"
sys.path.insert(0, str(ROOT / "tests"))


def put(target: str, name: str, data: bytes) -> None:
    d = SEEDS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def main() -> None:
    import gguf_writer
    from kernelgpt import chat
    from kernelgpt.config import GPTConfig
    from kernelgpt.io import fetch, safetensors
    from kernelgpt.model import GPT
    from kernelgpt.tokenizer import vocab_import

    put("gguf", "llama-tiny.gguf", gguf_writer.llama_file())
    put("gguf", "llama-tiny-untied.gguf", gguf_writer.llama_file(untied=True))

    model = GPT(GPTConfig(vocab_size=11, n_layer=1, n_head=2, n_embd=8, block_size=8), seed=0)
    tensors = {n: model.params[n] for n in model.params.names()}
    tmp = SEEDS / "model.safetensors.tmp"
    safetensors.save(tensors, tmp, metadata={"format": "np"})
    put("safetensors", "tiny-gpt.safetensors", tmp.read_bytes())
    tmp.unlink()

    put("checkpoint_config", "model.json", json.dumps(model.config.to_dict()).encode())
    rng = np.random.default_rng(3)
    state = {"step": 20, "rng": rng.bit_generator.state, "log": [{"step": 1, "loss": 2.5}]}
    put("checkpoint_config", "state.json", json.dumps(state).encode())

    cl100k = fetch.cached("cl100k_base")
    if cl100k:
        lines = Path(cl100k).read_bytes().split(b"\n")
        put("tiktoken", "cl100k-head.tiktoken", b"\n".join(lines[:400]) + b"\n")
    else:  # the 256 byte tokens and a few merges, written here
        rows = [base64.b64encode(bytes([b])) + b" %d" % b for b in range(256)]
        put("tiktoken", "bytes.tiktoken", b"\n".join(rows) + b"\n")

    # a consistent GPT-2 pair: the 256 byte tokens, then 40 merges
    c2b = vocab_import.gpt2_char_to_byte()
    chars = list(c2b)
    encoder = {c: i for i, c in enumerate(chars)}
    merges = []
    for i in range(40):
        a, b = chars[65 + i % 26], chars[97 + (i * 7) % 26]
        if a + b not in encoder:
            merges.append(f"{a} {b}")
            encoder[a + b] = len(encoder)
    encoder["<|endoftext|>"] = len(encoder)
    put("merges", "gpt2-tiny", json.dumps(encoder).encode() + b"\0" +
        ("#version: 0.2\n" + "\n".join(merges) + "\n").encode())

    put("chat_template", "chatml.jinja", chat.CHATML_CHAT_TEMPLATE.encode())
    for name, source in chat.BUILTIN_TEMPLATES.items():
        put("chat_template", f"{name}.jinja", source.encode())

    put("decode", "text", "ROMEO: But soft, what light through yonder window breaks?\n".encode())
    put("decode", "unicode", "naïve café — 東京 🙂 \u200d\n\t  123,456".encode())
    put("decode", "bytes", bytes(range(256)))


if __name__ == "__main__":
    main()
