"""Writing GGUF files (version 3): what io/gguf.py reads, and what llama.cpp and the `gguf`
package read.

    write_gguf(path, metadata, tensors)

metadata: (key, ValueType, value) triples in file order; an ARRAY value is (element type,
list or numpy array). tensors: (name, array in numpy order, ggml type name) with type F32,
F16, BF16 (values given as float32, rounded to nearest even) or Q8_0 (float32 values,
quantized by reference.quantize_q8_0: per block of 32, d = max|w| / 127). The file is written
to a temporary name and renamed, so a failed write leaves no half file.
"""
from __future__ import annotations

import struct
from typing import Any, Iterable, List, Sequence, Tuple

import numpy as np

from .atomic import atomic_write
from .gguf import _ARRAY_DTYPES, _BY_NAME, ValueType

__all__ = ["write_gguf", "metadata_items"]

_SCALAR = {ValueType.UINT8: "<B", ValueType.INT8: "<b", ValueType.UINT16: "<H",
           ValueType.INT16: "<h", ValueType.UINT32: "<I", ValueType.INT32: "<i",
           ValueType.FLOAT32: "<f", ValueType.BOOL: "<B", ValueType.UINT64: "<Q",
           ValueType.INT64: "<q", ValueType.FLOAT64: "<d"}
ALIGNMENT = 32


def _string(s) -> bytes:
    b = s.encode("utf-8") if isinstance(s, str) else bytes(s)
    return struct.pack("<Q", len(b)) + b


def _value(vtype: ValueType, v) -> bytes:
    vtype = ValueType(vtype)
    if vtype == ValueType.STRING:
        return _string(v)
    if vtype == ValueType.ARRAY:
        etype, items = v
        etype = ValueType(etype)
        head = struct.pack("<IQ", int(etype), len(items))
        if etype in _ARRAY_DTYPES:
            return head + np.asarray(items).astype(_ARRAY_DTYPES[etype]).tobytes()
        return head + b"".join(_value(etype, item) for item in items)
    return struct.pack(_SCALAR[vtype], v)


def metadata_items(md) -> List[Tuple[str, ValueType, Any]]:
    """The (key, type, value) triples of an io.gguf Metadata, for copying into a new file."""
    out = []
    for key in md:
        vtype = md.value_type(key)
        value = md[key]
        if vtype == ValueType.ARRAY:
            value = (md.array_type(key), value)
        out.append((key, vtype, value))
    return out


def _tensor_bytes(name: str, array, type_name: str) -> Tuple[bytes, int]:
    from .. import reference
    t = _BY_NAME.get(type_name)
    if t is None or type_name not in ("F32", "F16", "BF16", "Q8_0"):
        raise ValueError(f"write_gguf: tensor {name!r}: type {type_name!r} is not one this "
                         "writer makes (F32, F16, BF16, Q8_0)")
    a = np.ascontiguousarray(array, dtype=np.float32)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"write_gguf: tensor {name!r} holds NaN or inf")
    if type_name == "F32":
        return a.astype("<f4").tobytes(), t.id
    if type_name == "F16":
        return a.astype("<f2").tobytes(), t.id
    if type_name == "BF16":
        bits = a.view(np.uint32).astype(np.uint64)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16  # round to nearest even
        return bits.astype("<u2").tobytes(), t.id
    if a.shape[-1] % 32:
        raise ValueError(f"write_gguf: tensor {name!r}: Q8_0 needs rows of a multiple of 32 "
                         f"values, got {a.shape[-1]}")
    return np.ascontiguousarray(reference.quantize_q8_0(a)).tobytes(), t.id


def write_gguf(path, metadata: Iterable[Tuple[str, ValueType, Any]],
               tensors: Sequence[Tuple[str, np.ndarray, str]]) -> None:
    metadata = list(metadata)
    keys = [k for k, _, _ in metadata]
    if len(set(keys)) != len(keys):
        raise ValueError("write_gguf: a metadata key appears twice")
    names = [n for n, _, _ in tensors]
    if len(set(names)) != len(names):
        raise ValueError("write_gguf: a tensor name appears twice")
    head = [b"GGUF", struct.pack("<IQQ", 3, len(tensors), len(metadata))]
    for key, vtype, value in metadata:
        if vtype == ValueType.ARRAY and ValueType(value[0]) == ValueType.ARRAY:
            raise ValueError(f"write_gguf: {key!r}: arrays of arrays are not supported")
        head.append(_string(key) + struct.pack("<I", int(vtype)) + _value(vtype, value))
    blobs, offset = [], 0
    for name, array, type_name in tensors:
        data, type_id = _tensor_bytes(name, array, type_name)
        shape = np.shape(array)
        head.append(_string(name) + struct.pack("<I", len(shape))
                    + b"".join(struct.pack("<Q", d) for d in reversed(shape))
                    + struct.pack("<IQ", type_id, offset))
        pad = -len(data) % ALIGNMENT
        blobs.append(data + b"\0" * pad)
        offset += len(data) + pad
    header = b"".join(head)
    header += b"\0" * (-len(header) % ALIGNMENT)

    def write(f):
        f.write(header)
        for b in blobs:
            f.write(b)
    atomic_write(path, write)
