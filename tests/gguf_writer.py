"""A tiny GGUF writer for the tests: builds small valid files, and lets a test override any
field (counts, lengths, types, offsets) to build broken ones. Not part of the package.

    kvs, tensors = llama_parts()             # a valid 2-layer Llama with a 12-token vocabulary
    blob = build(encode(kvs), tensors)       # bytes of a GGUF v3 file
"""
from __future__ import annotations

import dataclasses
import struct
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)
_FORMATS = {UINT8: "<B", INT8: "<b", UINT16: "<H", INT16: "<h", UINT32: "<I", INT32: "<i",
            FLOAT32: "<f", BOOL: "<B", UINT64: "<Q", INT64: "<q", FLOAT64: "<d"}
# ggml type id, block size, bytes per block
GGML = {"F32": (0, 1, 4), "F16": (1, 1, 2), "Q4_0": (2, 32, 18), "Q4_1": (3, 32, 20),
        "Q8_0": (8, 32, 34), "Q4_K": (12, 256, 144), "I32": (26, 1, 4), "BF16": (30, 1, 2),
        "F64": (28, 1, 8), "I8": (24, 1, 1)}
U64 = (1 << 64) - 1


def string(s) -> bytes:
    b = s.encode("utf-8") if isinstance(s, str) else bytes(s)
    return struct.pack("<Q", len(b)) + b


def value(vtype: int, v) -> bytes:
    """A value's bytes; arrays are given as (element type, [items])."""
    if vtype == STRING:
        return string(v)
    if vtype == ARRAY:
        elem, items = v
        return struct.pack("<IQ", elem, len(items)) + b"".join(value(elem, x) for x in items)
    return struct.pack(_FORMATS[vtype], v)


def kv(key, vtype: int, v) -> bytes:
    return string(key) + struct.pack("<I", vtype) + value(vtype, v)


def encode(kvs: Dict[str, Tuple[int, object]]) -> List[bytes]:
    return [kv(k, t, v) for k, (t, v) in kvs.items()]


def align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


@dataclasses.dataclass
class Tensor:
    name: str
    ne: Sequence[int]           # ggml order: ne[0] is contiguous
    type: int
    data: bytes = b""
    offset: Optional[int] = None  # relative to the data section; None = placed by build()
    n_dims: Optional[int] = None  # written instead of len(ne) when given


def tensor(name, shape, type_name="F32", rng=None, numeric=False) -> Tensor:
    """A tensor of numpy shape `shape` with random contents of the right size; numeric=True
    makes them a usable weight (normal values * 0.2, quantized properly) instead of raw bytes."""
    rng = rng or np.random.default_rng(len(name))
    type_id, block, size = GGML[type_name]
    ne = tuple(reversed(shape))
    n = int(np.prod(shape))
    if type_name == "F32":
        data = rng.standard_normal(n).astype("<f4").tobytes()
    elif numeric:
        from kernelgpt import reference
        values = (rng.standard_normal(shape) * 0.2).astype(np.float32)
        if type_name == "F16":
            data = values.astype("<f2").tobytes()
        else:
            data = reference.quantize(values, type_name.lower()).tobytes()
    else:
        data = rng.integers(0, 256, n // block * size, dtype=np.uint8).tobytes()
    return Tensor(name, ne, type_id, data)


def build(kvs: List[bytes], tensors: List[Tensor], version=3, alignment=32, magic=b"GGUF",
          n_tensors=None, n_kv=None) -> bytes:
    """The file: header, metadata entries (already encoded), tensor infos, padding, data."""
    head = magic + struct.pack("<IQQ", version & 0xFFFFFFFF,
                               (len(tensors) if n_tensors is None else n_tensors) & U64,
                               (len(kvs) if n_kv is None else n_kv) & U64)
    head += b"".join(kvs)
    data = bytearray()
    for t in tensors:
        offset = t.offset
        if offset is None:
            offset = len(data)
            data += t.data + b"\0" * (align(len(t.data), alignment) - len(t.data))
        elif 0 <= offset < 1 << 24:  # an explicit offset: the data goes there (may overlap)
            data += b"\0" * max(0, offset + len(t.data) - len(data))
            data[offset:offset + len(t.data)] = t.data
        n_dims = len(t.ne) if t.n_dims is None else t.n_dims
        head += string(t.name) + struct.pack("<I", n_dims & 0xFFFFFFFF)
        head += b"".join(struct.pack("<Q", d & U64) for d in t.ne)
        head += struct.pack("<IQ", t.type & 0xFFFFFFFF, offset & U64)
    return head + b"\0" * (align(len(head), alignment) - len(head)) + bytes(data)


# ---- a tiny valid Llama -----------------------------------------------------------------

TOKENS = ["<|endoftext|>", "<|im_start|>", "a", "b", "c", "d", "Ġ", "ab", "cd", "abcd", "Ġa", "Ġab"]
MERGES = ["a b", "c d", "ab cd", "Ġ a", "Ġa b"]
N_LAYER, N_EMBD, N_HEAD, N_KV_HEAD, N_FF = 2, 32, 4, 2, 64


def llama_parts(untied=False, numeric=False):
    """(metadata dict key -> (type, value), tensors) of a valid 2-layer Llama GGUF that also
    holds one metadata value of every type. numeric=True: weights a model can run."""
    kvs = {
        "general.architecture": (STRING, "llama"),
        "general.name": (STRING, "tiny llama ☃"),
        "llama.block_count": (UINT32, N_LAYER),
        "llama.context_length": (UINT32, 64),
        "llama.embedding_length": (UINT32, N_EMBD),
        "llama.feed_forward_length": (UINT32, N_FF),
        "llama.attention.head_count": (UINT32, N_HEAD),
        "llama.attention.head_count_kv": (UINT32, N_KV_HEAD),
        "llama.rope.freq_base": (FLOAT32, 10000.0),
        "llama.attention.layer_norm_rms_epsilon": (FLOAT32, 1e-5),
        "llama.vocab_size": (UINT32, len(TOKENS)),
        "tokenizer.ggml.model": (STRING, "gpt2"),
        "tokenizer.ggml.tokens": (ARRAY, (STRING, TOKENS)),
        "tokenizer.ggml.token_type": (ARRAY, (INT32, [3, 3] + [1] * (len(TOKENS) - 2))),
        "tokenizer.ggml.merges": (ARRAY, (STRING, MERGES)),
        "tokenizer.ggml.bos_token_id": (UINT32, 1),
        "tokenizer.ggml.eos_token_id": (UINT32, 0),
        "tokenizer.chat_template": (STRING, "{% for m in messages %}{{ m['content'] }}{% endfor %}"),
        # one of every other type, for the round-trip tests
        "test.u8": (UINT8, 200), "test.i8": (INT8, -100), "test.u16": (UINT16, 60000),
        "test.i16": (INT16, -30000), "test.i32": (INT32, -2_000_000_000),
        "test.u64": (UINT64, (1 << 64) - 3), "test.i64": (INT64, -(1 << 62) - 7),
        "test.f64": (FLOAT64, -2.5e-300), "test.bool": (BOOL, 1), "test.empty": (STRING, ""),
        "test.bools": (ARRAY, (BOOL, [1, 0, 1, 1, 0])),
        "test.f32s": (ARRAY, (FLOAT32, [1.5, -2.25, 3e-8])),
        "test.u64s": (ARRAY, (UINT64, [0, 1, (1 << 64) - 1])),
        "test.empty_array": (ARRAY, (INT16, [])),
        "test.nested": (ARRAY, (ARRAY, [(INT8, [1, -2, 3]), (STRING, ["x", "yz"]), (UINT8, [])])),
    }
    rng = np.random.default_rng(7)
    V, C, F = len(TOKENS), N_EMBD, N_FF
    hd = C // N_HEAD
    tensors = [tensor("token_embd.weight", (V, C), "Q8_0", rng, numeric),
               tensor("output_norm.weight", (C,), "F32", rng, numeric)]
    if untied:
        tensors.append(tensor("output.weight", (V, C), "Q4_1", rng, numeric))
    for i in range(N_LAYER):
        p = f"blk.{i}."
        tensors += [tensor(p + "attn_norm.weight", (C,), "F32", rng, numeric),
                    tensor(p + "attn_q.weight", (N_HEAD * hd, C), "Q4_1", rng, numeric),
                    tensor(p + "attn_k.weight", (N_KV_HEAD * hd, C), "Q4_1", rng, numeric),
                    tensor(p + "attn_v.weight", (N_KV_HEAD * hd, C), "Q8_0", rng, numeric),
                    tensor(p + "attn_output.weight", (C, N_HEAD * hd), "F32", rng, numeric),
                    tensor(p + "ffn_norm.weight", (C,), "F32", rng, numeric),
                    tensor(p + "ffn_gate.weight", (F, C), "Q4_1", rng, numeric),
                    tensor(p + "ffn_up.weight", (F, C), "F16", rng, numeric),
                    tensor(p + "ffn_down.weight", (C, F), "Q4_1", rng, numeric)]
    return kvs, tensors


def llama_file(**kw) -> bytes:
    kvs, tensors = llama_parts(**kw)
    return build(encode(kvs), tensors)
