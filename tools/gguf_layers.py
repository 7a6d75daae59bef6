#!/usr/bin/env python3
"""A Llama GGUF with fewer or more blocks than its source, for the GPU check (issue 22).

    python tools/gguf_layers.py SRC DST --keep K              # SRC's first K blocks, same vocabulary
    python tools/gguf_layers.py SRC DST --keep K --blocks N   # then repeated to N blocks

The GPU machine takes at most 64 MiB of the tree per call, and SmolLM2's GGUF is 98 MB: its
first 6 blocks with the embedding and the vocabulary (about 45 MB) travel instead. There,
`--keep 6` checks the real weights on the GPU against the CPU, and `--blocks 30` rebuilds a
file of SmolLM2's exact shape (block i holds block i mod K's weights: real weight statistics,
the same bytes per token to stream) to time decoding. Every metadata key is kept
(block_count changed), tensors keep their types and bytes; the file is written atomically.
"""
from __future__ import annotations

import argparse
import os
import re
import struct
import sys
from pathlib import Path

from kernelgpt.io.gguf import GGUFFile, ValueType

_SCALAR = {ValueType.UINT8: "<B", ValueType.INT8: "<b", ValueType.UINT16: "<H",
           ValueType.INT16: "<h", ValueType.UINT32: "<I", ValueType.INT32: "<i",
           ValueType.FLOAT32: "<f", ValueType.BOOL: "<B", ValueType.UINT64: "<Q",
           ValueType.INT64: "<q", ValueType.FLOAT64: "<d"}
_BLOCK = re.compile(r"^blk\.(\d+)\.(.+)$")


def _string(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def _value(md, key: str, override=None) -> bytes:
    t = md.value_type(key)
    v = md[key] if override is None else override
    if t == ValueType.STRING:
        return _string(v)
    if t in _SCALAR:
        is_float = t in (ValueType.FLOAT32, ValueType.FLOAT64)
        return struct.pack(_SCALAR[t], float(v) if is_float else int(v))
    # an array (of numbers, strings or arrays): its bytes as they are in the file
    et, count, offset, end = md._arrays[key]
    return struct.pack("<IQ", et, count) + bytes(md._mapping.buffer()[offset:end])


def rewrite(src, dst, keep: int, blocks: int = None) -> dict:
    """Writes DST from SRC's first `keep` blocks, repeated to `blocks` (default: keep)."""
    blocks = keep if blocks is None else blocks
    with GGUFFile(src) as f:
        md = f.metadata
        arch = md["general.architecture"]
        count_key = f"{arch}.block_count"
        n = int(md[count_key])
        if not 1 <= keep <= n:
            raise ValueError(f"--keep must be in [1, {n}] (SRC has {n} blocks), got {keep}")
        if blocks < keep:
            raise ValueError(f"--blocks ({blocks}) must be >= --keep ({keep})")
        kv = b""
        for key in md:
            kv += _string(key) + struct.pack("<I", md.value_type(key))
            kv += _value(md, key, blocks if key == count_key else None)
        plan = []  # (new name, source tensor)
        for name, info in f.tensors.items():
            m = _BLOCK.match(name)
            if m is None:
                plan.append((name, info))
        for i in range(blocks):
            j = i % keep
            for name, info in f.tensors.items():
                m = _BLOCK.match(name)
                if m is not None and int(m.group(1)) == j:
                    plan.append((f"blk.{i}.{m.group(2)}", info))
        align = f.alignment
        infos, offset = b"", 0
        for name, info in plan:
            infos += _string(name) + struct.pack("<I", len(info.ne))
            infos += b"".join(struct.pack("<Q", d) for d in info.ne)
            infos += struct.pack("<IQ", info.type, offset)
            offset += (info.nbytes + align - 1) // align * align
        head = b"GGUF" + struct.pack("<IQQ", 3, len(plan), len(md)) + kv + infos
        head += b"\0" * (-len(head) % align)
        tmp = Path(str(dst) + ".tmp")
        with open(tmp, "wb") as out:
            out.write(head)
            for _, info in plan:
                raw = f.tensor(info.name).tobytes()
                out.write(raw + b"\0" * (-len(raw) % align))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dst)
    return {"blocks": blocks, "kept": keep, "tensors": len(plan), "bytes": os.path.getsize(dst)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--keep", type=int, required=True, help="blocks of SRC to keep (the first K)")
    ap.add_argument("--blocks", type=int, default=None,
                    help="blocks of DST (the kept ones repeated; default: --keep)")
    args = ap.parse_args(argv)
    try:
        r = rewrite(args.src, args.dst, args.keep, args.blocks)
    except (ValueError, OSError) as err:
        print(f"gguf_layers: error: {err}", file=sys.stderr)
        return 1
    print(f"{args.dst}: {r['blocks']} blocks ({r['kept']} of the source's, repeated), "
          f"{r['tensors']} tensors, {r['bytes'] / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
