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
           "GGUFFile", "validate_llama"]


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
