"""GGUF files (llama.cpp's format, versions 2 and 3): safe, memory-mapped and lazy.

    >>> from kernelgpt.io.gguf import GGUFFile
    >>> with GGUFFile(path) as f:                                  # doctest: +SKIP
    ...     f.metadata["llama.block_count"]                        # 30
    ...     f.tensors["token_embd.weight"]      # TensorInfo(type_name='Q8_0', shape=(49152, 576), ...)
    ...     f.tensor("blk.0.attn_norm.weight")  # float32 view of the file's bytes, shape (576,)

Opening parses and validates the whole header in C++ (csrc/gguf/gguf.cpp: every count,
length, offset, type and dimension checked against the file size; see docs/gguf.md) and
decodes nothing big: large arrays such as ``tokenizer.ggml.tokens`` are read when first
accessed, numeric ones as zero-copy numpy views. Any malformed file raises GGUFError.

``tensor(name)`` returns a read-only numpy view of the mapped file: F32 / F16 / F64 / I8..I64
with their numpy dtypes, BF16 as uint16 bit patterns, quantized types as uint8 blocks of shape
``shape[:-1] + (shape[-1] // block_size * type_size,)`` (the layout of the `gguf` package).
Views stay valid after close(): they keep the mapping alive. (As with any memory map, a file
truncated by another process while mapped cannot be protected against.)

``validate_llama(metadata, tensors)`` checks what a Llama model needs on top of a valid file.
"""
from __future__ import annotations

import dataclasses
import enum
import mmap
import os
from collections.abc import Mapping
from typing import Any, Dict, Iterator, Optional, Tuple

import numpy as np

from .. import _C

__all__ = ["GGUFError", "ValueType", "GGMLType", "GGML_TYPES", "TensorInfo", "Metadata",
           "GGUFFile", "LlamaParams", "validate_llama"]


class GGUFError(ValueError):
    """A file that is not a valid GGUF file, or not a valid model of the expected kind."""


class ValueType(enum.IntEnum):
    """Types of metadata values."""
    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


_ARRAY_DTYPES = {ValueType.UINT8: "<u1", ValueType.INT8: "<i1", ValueType.UINT16: "<u2",
                 ValueType.INT16: "<i2", ValueType.UINT32: "<u4", ValueType.INT32: "<i4",
                 ValueType.FLOAT32: "<f4", ValueType.BOOL: "?", ValueType.UINT64: "<u8",
                 ValueType.INT64: "<i8", ValueType.FLOAT64: "<f8"}


@dataclasses.dataclass(frozen=True)
class GGMLType:
    """A ggml tensor type: `block_size` elements are stored in `type_size` bytes."""
    id: int
    name: str
    block_size: int
    type_size: int


GGML_TYPES: Dict[int, GGMLType] = {i: GGMLType(i, n, b, s) for i, n, b, s in _C.gguf_ggml_types()}
_BY_NAME = {t.name: t for t in GGML_TYPES.values()}
# element types that numpy has; BF16 is given as its uint16 bit patterns
_TENSOR_DTYPES = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "BF16": "<u2", "I8": "<i1",
                  "I16": "<i2", "I32": "<i4", "I64": "<i8"}


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """Where a tensor is and what it is. `shape` is in numpy order (ggml's ne reversed:
    a [n_vocab, n_embd] embedding is stored with ne = (n_embd, n_vocab)); `offset` is the
    absolute file offset of its data, `nbytes` the size of that data."""
    name: str
    type: int
    shape: Tuple[int, ...]
    offset: int
    nbytes: int
    n_elements: int

    @property
    def type_name(self) -> str:
        return GGML_TYPES[self.type].name

    @property
    def ggml_type(self) -> GGMLType:
        return GGML_TYPES[self.type]

    @property
    def ne(self) -> Tuple[int, ...]:
        """The dimensions in ggml order (ne[0] is the contiguous one)."""
        return self.shape[::-1]


class _Mapping:
    """The memory map, shared by a GGUFFile and its Metadata (no reference cycle, so the
    mapping goes as soon as both are dropped)."""
    __slots__ = ("path", "mm")

    def __init__(self, path, mm):
        self.path, self.mm = path, mm

    def buffer(self):
        if self.mm is None:
            raise ValueError(f"{self.path}: the GGUF file is closed")
        return self.mm


class Metadata(Mapping):
    """The key-value metadata, read-only, in file order. Scalars and strings were decoded
    when the file was opened; arrays are built on first access and cached: numbers as
    read-only numpy views of the file, strings as lists of str, arrays of arrays as lists."""

    def __init__(self, mapping: _Mapping, entries):
        self._mapping = mapping
        self._types = {key: ValueType(t) for key, t, _ in entries}
        self._values = {key: value for key, _, value in entries}
        # arrays: (element type, count, offset, end) until first read
        self._arrays = {key: value for key, t, value in entries if t == ValueType.ARRAY}

    def __getitem__(self, key: str) -> Any:
        value = self._values[key]
        if key in self._arrays and value is self._arrays[key]:
            value = self._values[key] = self._array(self._arrays[key])
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, key) -> bool:
        return key in self._values

    def value_type(self, key: str) -> ValueType:
        return self._types[key]

    def array_type(self, key: str) -> Optional[ValueType]:
        """The element type of an array value (None for other values), without reading it."""
        return ValueType(self._arrays[key][0]) if key in self._arrays else None

    def array_length(self, key: str) -> int:
        """The number of elements of an array value, without reading it."""
        if key not in self._arrays:
            raise TypeError(f"metadata {key!r} is a {self._types[key].name.lower()}, not an array")
        return self._arrays[key][1]

    def _array(self, descriptor):
        elem_type, count, offset, _ = descriptor
        elem_type = ValueType(elem_type)
        buffer = self._mapping.buffer()
        if elem_type in _ARRAY_DTYPES:
            # bounds and bool values (0/1) were validated when the file was opened
            return np.frombuffer(buffer, dtype=_ARRAY_DTYPES[elem_type], count=count, offset=offset)
        items = _C.gguf_array_items(buffer, int(elem_type), count, offset)
        if elem_type == ValueType.ARRAY:
            return [self._array(d) for d in items]
        return items

    def __repr__(self) -> str:
        def show(key):
            if key in self._arrays:
                return f"<array of {self.array_length(key)} {self.array_type(key).name.lower()}>"
            return repr(self._values[key])[:60]
        return "Metadata({" + ", ".join(f"{k!r}: {show(k)}" for k in self._values) + "})"


class GGUFFile:
    """An open GGUF file: `version`, `alignment`, `data_offset`, `metadata` (Metadata, a
    read-only mapping), `tensors` (name -> TensorInfo, in file order), `tensor(name)`.
    Use as a context manager or call close()."""

    def __init__(self, path):
        self.path = os.fspath(path)
        with open(self.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            # an empty file cannot be mapped; its (tiny) bytes give the same error
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        self._mapping = _Mapping(self.path, mm)
        try:
            parsed = _C.gguf_parse(mm)
        except _C.GGUFFormatError as err:
            self.close()
            raise GGUFError(f"{self.path}: {err}") from None
        except BaseException:
            self.close()
            raise
        self.version: int = parsed["version"]
        self.alignment: int = parsed["alignment"]
        self.data_offset: int = parsed["data_offset"]
        self.metadata = Metadata(self._mapping, parsed["metadata"])
        self.tensors: Dict[str, TensorInfo] = {
            name: TensorInfo(name, ggml_type, ne[::-1], offset, nbytes, n_elements)
            for name, ggml_type, ne, offset, nbytes, n_elements in parsed["tensors"]}

    def tensor(self, name: str) -> np.ndarray:
        """A read-only numpy view of the tensor's bytes in the file (see the module doc)."""
        buffer = self._mapping.buffer()
        try:
            info = self.tensors[name]
        except KeyError:
            raise KeyError(f"{self.path}: no tensor named {name!r}") from None
        t = GGML_TYPES[info.type]
        if t.name in _TENSOR_DTYPES:
            dtype, shape = np.dtype(_TENSOR_DTYPES[t.name]), info.shape
        else:
            dtype = np.dtype(np.uint8)
            shape = info.shape[:-1] + (info.shape[-1] // t.block_size * t.type_size,)
        count = info.nbytes // dtype.itemsize
        return np.frombuffer(buffer, dtype=dtype, count=count, offset=info.offset).reshape(shape)

    def close(self) -> None:
        """Releases the mapping. Arrays obtained from tensor() or metadata keep it alive."""
        mapping = getattr(self, "_mapping", None)
        mm = mapping.mm if mapping is not None else None
        if mapping is not None:
            mapping.mm = None
        if isinstance(mm, mmap.mmap):
            try:
                mm.close()
            except BufferError:
                pass  # numpy views still use it: it is unmapped when the last one goes

    @property
    def closed(self) -> bool:
        return self._mapping.mm is None

    def __enter__(self) -> "GGUFFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return (f"<GGUFFile {self.path!r} v{getattr(self, 'version', '?')}, "
                f"{len(getattr(self, 'tensors', {}))} tensors, {state}>")


# ---- model-level checks ------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class LlamaParams:
    """The hyperparameters of a Llama GGUF, as checked by validate_llama."""
    n_layer: int
    n_embd: int
    n_head: int
    n_kv_head: int
    head_dim: int
    n_ff: int
    context_length: int
    rope_theta: float
    rope_dim: int
    rms_norm_eps: float
    vocab_size: int
    tied_embeddings: bool  # no output.weight: the LM head is token_embd.weight
    tokenizer_model: str


_INTEGER_TYPES = {ValueType.UINT8, ValueType.INT8, ValueType.UINT16, ValueType.INT16,
                  ValueType.UINT32, ValueType.INT32, ValueType.UINT64, ValueType.INT64}
_FLOAT_TYPES = {ValueType.FLOAT32, ValueType.FLOAT64}
_TOKEN_TYPES = range(1, 7)  # normal, unknown, control, user-defined, unused, byte
_NORM_TYPES = {"F32", "F16", "BF16"}


def _kind(metadata, key):
    """The ValueType of a metadata value (also for plain dicts, from the Python value)."""
    if isinstance(metadata, Metadata):
        return metadata.value_type(key)
    value = metadata[key]
    if isinstance(value, bool):
        return ValueType.BOOL
    if isinstance(value, (int, np.integer)):
        return ValueType.INT64
    if isinstance(value, (float, np.floating)):
        return ValueType.FLOAT64
    if isinstance(value, str):
        return ValueType.STRING
    return ValueType.ARRAY


def validate_llama(metadata: Mapping, tensors: Mapping) -> LlamaParams:
    """Checks that a GGUF file's metadata and tensors describe a Llama model this package can
    run: the required hyperparameters with sane values, a tokenizer whose tokens, token types
    and merges agree, and every tensor present with the shape the hyperparameters imply.
    Raises GGUFError naming the first problem; returns the hyperparameters."""

    def fail(msg):
        raise GGUFError(f"not a valid llama model: {msg}")

    def need(key):
        if key not in metadata:
            fail(f"missing required metadata {key!r}")
        return metadata[key]

    def integer(key, default=None, low=1, high=1 << 31):
        if default is not None and key not in metadata:
            return default
        value = need(key)
        if _kind(metadata, key) not in _INTEGER_TYPES:
            fail(f"metadata {key!r} must be an integer, got {_kind(metadata, key).name.lower()}")
        if not low <= int(value) <= high:
            fail(f"metadata {key!r} = {int(value)} is outside [{low}, {high}]")
        return int(value)

    def positive_float(key):
        value = need(key)
        if _kind(metadata, key) not in _FLOAT_TYPES | _INTEGER_TYPES:
            fail(f"metadata {key!r} must be a number, got {_kind(metadata, key).name.lower()}")
        if not (np.isfinite(value) and value > 0):
            fail(f"metadata {key!r} = {value} must be a finite positive number")
        return float(value)

    def string_list(key):
        if key not in metadata:
            fail(f"missing required metadata {key!r}")
        if isinstance(metadata, Metadata) and metadata.array_type(key) != ValueType.STRING:
            fail(f"metadata {key!r} must be an array of strings")
        value = metadata[key]
        if not isinstance(value, (list, tuple)) or not all(isinstance(s, str) for s in value):
            fail(f"metadata {key!r} must be an array of strings")
        return value

    arch = need("general.architecture")
    if arch != "llama":
        fail(f"general.architecture is {arch!r}, expected 'llama'")
    n_layer = integer("llama.block_count", high=4096)
    n_embd = integer("llama.embedding_length", high=1 << 20)
    n_ff = integer("llama.feed_forward_length", high=1 << 22)
    context_length = integer("llama.context_length", high=1 << 24)
    n_head = integer("llama.attention.head_count", high=1 << 12)
    n_kv_head = integer("llama.attention.head_count_kv", default=n_head, high=1 << 12)
    rope_theta = positive_float("llama.rope.freq_base")
    rms_norm_eps = positive_float("llama.attention.layer_norm_rms_epsilon")
    if n_embd % n_head:
        fail(f"llama.embedding_length {n_embd} is not a multiple of "
             f"llama.attention.head_count {n_head}")
    if n_head % n_kv_head:
        fail(f"llama.attention.head_count {n_head} is not a multiple of "
             f"llama.attention.head_count_kv {n_kv_head}")
    head_dim = n_embd // n_head
    rope_dim = integer("llama.rope.dimension_count", default=head_dim, high=head_dim)
    if rope_dim % 2:
        fail(f"llama.rope.dimension_count {rope_dim} must be even")

    # tokenizer: tokens, their types and the BPE merges must agree
    tokenizer_model = need("tokenizer.ggml.model")
    if tokenizer_model != "gpt2":
        fail(f"tokenizer.ggml.model is {tokenizer_model!r}; only 'gpt2' (byte-level BPE) "
             "is supported")
    tokens = string_list("tokenizer.ggml.tokens")
    vocab_size = len(tokens)
    if vocab_size == 0:
        fail("tokenizer.ggml.tokens is empty")
    ids = {}
    for i, token in enumerate(tokens):
        if ids.setdefault(token, i) != i:
            fail(f"tokenizer.ggml.tokens has {token!r} twice (ids {ids[token]} and {i})")
    if "llama.vocab_size" in metadata and integer("llama.vocab_size") != vocab_size:
        fail(f"llama.vocab_size {metadata['llama.vocab_size']} != {vocab_size} tokens")
    token_type = need("tokenizer.ggml.token_type")
    if not isinstance(token_type, np.ndarray) or token_type.dtype.kind not in "iu":
        token_type = np.asarray(token_type)
        if token_type.dtype.kind not in "iu":
            fail("tokenizer.ggml.token_type must be an array of integers")
    if token_type.shape != (vocab_size,):
        fail(f"tokenizer.ggml.token_type has {token_type.size} entries for {vocab_size} tokens")
    bad = np.flatnonzero((token_type < _TOKEN_TYPES.start) | (token_type >= _TOKEN_TYPES.stop))
    if bad.size:
        fail(f"tokenizer.ggml.token_type[{bad[0]}] = {token_type[bad[0]]} is not a token type (1..6)")
    for i, merge in enumerate(string_list("tokenizer.ggml.merges")):
        left, space, right = merge.partition(" ")
        if not space or not left or not right or " " in right:
            fail(f"tokenizer.ggml.merges[{i}] = {merge!r} is not two tokens joined by one space")
        for part in (left, right, left + right):
            if part not in ids:
                fail(f"tokenizer.ggml.merges[{i}] = {merge!r}: {part!r} is not in the vocabulary")
    if "tokenizer.ggml.scores" in metadata and len(metadata["tokenizer.ggml.scores"]) != vocab_size:
        fail(f"tokenizer.ggml.scores has {len(metadata['tokenizer.ggml.scores'])} entries "
             f"for {vocab_size} tokens")
    for key in ("bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id",
                "eot_token_id", "sep_token_id"):
        integer("tokenizer.ggml." + key, default=-1, low=0, high=vocab_size - 1)

    # tensors, numpy order ([out, in] for weight matrices)
    q_dim, kv_dim = n_head * head_dim, n_kv_head * head_dim
    expected = {"token_embd.weight": (vocab_size, n_embd), "output_norm.weight": (n_embd,)}
    tied = "output.weight" not in tensors
    if not tied:
        expected["output.weight"] = (vocab_size, n_embd)
    for i in range(n_layer):
        p = f"blk.{i}."
        expected.update({p + "attn_norm.weight": (n_embd,), p + "attn_q.weight": (q_dim, n_embd),
                         p + "attn_k.weight": (kv_dim, n_embd), p + "attn_v.weight": (kv_dim, n_embd),
                         p + "attn_output.weight": (n_embd, q_dim), p + "ffn_norm.weight": (n_embd,),
                         p + "ffn_gate.weight": (n_ff, n_embd), p + "ffn_up.weight": (n_ff, n_embd),
                         p + "ffn_down.weight": (n_embd, n_ff)})
    for name, shape in expected.items():
        if name not in tensors:
            fail(f"missing tensor {name!r}")
        info = tensors[name]
        if tuple(info.shape) != shape:
            fail(f"tensor {name!r} has shape {tuple(info.shape)}, expected {shape} from the metadata")
        if name.endswith("norm.weight") and GGML_TYPES[info.type].name not in _NORM_TYPES:
            fail(f"tensor {name!r} is {GGML_TYPES[info.type].name}; norm weights must be "
                 "F32, F16 or BF16")
    for name in tensors:
        if name.startswith("blk.") and name not in expected:
            layer = name.split(".")[1]
            if not layer.isdigit() or int(layer) >= n_layer:
                fail(f"tensor {name!r} does not belong to any of the {n_layer} layers")
    return LlamaParams(n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_kv_head=n_kv_head,
                       head_dim=head_dim, n_ff=n_ff, context_length=context_length,
                       rope_theta=rope_theta, rope_dim=rope_dim, rms_norm_eps=rms_norm_eps,
                       vocab_size=vocab_size, tied_embeddings=tied, tokenizer_model=tokenizer_model)
