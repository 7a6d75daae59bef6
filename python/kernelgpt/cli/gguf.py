"""`kernelgpt gguf`: show (and check) a GGUF file's metadata and tensors (kernelgpt.io.gguf)."""
from __future__ import annotations

import os
from typing import Dict, Tuple

import numpy as np

from ..io import fetch
from ..io.gguf import GGUFFile, validate_llama


def add_arguments(parser) -> None:
    parser.add_argument("file", help="a .gguf file, or the name of a fetched model (smollm2)")
    parser.add_argument("--tensors", action="store_true", help="list every tensor")
    parser.add_argument("--check-llama", action="store_true",
                        help="also check it is a Llama model kernelgpt can run (validate_llama)")


def main(args) -> int:
    path = args.file
    if not os.path.exists(path) and path in fetch.SOURCES:
        cached = fetch.cached(path)
        if cached is None:
            raise FileNotFoundError(f"{path} is not fetched yet: run `kernelgpt fetch {path}`")
        path = str(cached)
    with GGUFFile(path) as f:
        print(f"{path}: GGUF v{f.version}, {len(f.metadata)} metadata entries, "
              f"{len(f.tensors)} tensors from byte {f.data_offset} (alignment {f.alignment})")
        for key in f.metadata:
            elem = f.metadata.array_type(key)
            if elem is None:
                text = repr(f.metadata[key])
                text = text if len(text) <= 72 else text[:69] + "..."
            else:
                items = f.metadata[key]
                items = items[:3].tolist() if isinstance(items, np.ndarray) else items[:3]
                head = ", ".join(repr(x) for x in items)
                text = f"[{f.metadata.array_length(key)} x {elem.name.lower()}: {head}, ...]"
            print(f"  {key:42s} {text}")
        by_type: Dict[str, Tuple[int, int]] = {}
        for info in f.tensors.values():
            n, size = by_type.get(info.type_name, (0, 0))
            by_type[info.type_name] = (n + 1, size + info.nbytes)
        print("tensors: " + ", ".join(f"{n} {t} ({size / 2**20:.1f} MiB)"
                                      for t, (n, size) in by_type.items()))
        if args.tensors:
            for info in f.tensors.values():
                print(f"  {info.name:40s} {info.type_name:6s} {str(info.shape):16s} "
                      f"{info.nbytes:>12,d} bytes at {info.offset}")
        if args.check_llama:
            print(validate_llama(f.metadata, f.tensors))
    return 0
