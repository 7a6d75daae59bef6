"""The safetensors format, read and written with numpy alone.

A file is: 8-byte little-endian header length N, N bytes of JSON
({"name": {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, "__metadata__": {...}}),
then the raw little-endian tensor bytes. Files written here load with
``safetensors.numpy.load_file`` and ``safetensors.torch.load_file``. Reading validates every
offset against the file size and refuses oversized headers, so a corrupt or hostile file
raises ValueError instead of reading out of bounds.
"""
from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

from .atomic import atomic_write

_DTYPES = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "I64": np.int64,
           "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}
MAX_HEADER = 100 << 20


def save(tensors: Dict[str, np.ndarray], path, metadata: Optional[Dict[str, str]] = None) -> None:
    """Writes tensors atomically (see io.atomic)."""
    header: Dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    arrays = []
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        dtype = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
        if np.dtype(dtype) not in _NAMES:
            raise TypeError(f"safetensors: unsupported dtype {arr.dtype} for {name!r}")
        arr = arr.astype(np.dtype(dtype).newbyteorder("<"), copy=False)
        header[name] = {"dtype": _NAMES[np.dtype(dtype)], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
        arrays.append(arr)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # align the data to 8 bytes

    def write(f):
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for arr in arrays:
            f.write(memoryview(arr).cast("B"))

    atomic_write(path, write)


def load(path) -> Tuple[Dict[str, np.ndarray], Dict[str, str]]:
    """Returns (tensors, metadata); tensors are copies owned by the caller."""
    path = Path(path)
    data = path.read_bytes()
    if len(data) < 8:
        raise ValueError(f"{path}: not a safetensors file (too short)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER or 8 + n > len(data):
        raise ValueError(f"{path}: corrupt safetensors header length {n}")
    try:
        header = json.loads(data[8: 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: corrupt safetensors header ({err})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: corrupt safetensors header")
    metadata = header.pop("__metadata__", {}) or {}
    body = memoryview(data)[8 + n:]
    tensors = {}
    for name, info in header.items():
        try:
            dtype = np.dtype(_DTYPES[info["dtype"]])
            shape = tuple(int(s) for s in info["shape"])
            begin, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ValueError(f"{path}: corrupt entry for tensor {name!r}") from None
        if any(s < 0 for s in shape) or not (0 <= begin <= end <= len(body)):
            raise ValueError(f"{path}: tensor {name!r} lies outside the file")
        count = math.prod(shape)  # Python ints: no overflow
        if count * dtype.itemsize != end - begin:
            raise ValueError(f"{path}: tensor {name!r} has {end - begin} bytes for shape {shape}")
        # the native dtype object (a '<f4' array fails numpy-identity checks of C extensions)
        tensors[name] = np.frombuffer(body[begin:end], dtype=dtype.newbyteorder("<")).astype(
            dtype, copy=True).reshape(shape)
    return tensors, metadata
