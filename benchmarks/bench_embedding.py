"""Embedding forward (row gather) and backward (scatter-add): numpy vs naive vs fast (vs torch).

    flock .bench.lock python benchmarks/bench_embedding.py [--threads 2] [--repeats 7]
        [--no-naive] [--no-torch]

Alternating rounds (kernelgpt.bench.run_case), median times. GB/s counts the bytes each call
must move once: forward reads n rows of the table and writes n rows (n = B*T); backward
reads dout (n rows) and reads + writes the rows it adds into, plus, unless it accumulates,
writes the whole [V, C] table once (zeros). The peak is kernelgpt._C.stream_scale
(read + write) on 256 MiB.

"fresh" calls allocate their result as the API does by default (the backward's fresh table
comes from np.zeros, whose pages the OS zeroes lazily on first touch, as for the numpy
reference); "out=" calls reuse a preallocated output, as a training loop would.
"""
from __future__ import annotations

import argparse
import gc

import numpy as np

import kernelgpt
from kernelgpt import ops, reference
from kernelgpt.bench import StreamPeak, run_case, setup_threads, torch_or_none

# (name, V, C, B, T): GPT-2 small token table; a position table (ids = arange); Llama-ish
CASES = [("GPT-2 wte", 50257, 768, 8, 1024), ("GPT-2 wpe (ids = arange)", 1024, 768, 8, 1024),
         ("Llama-ish", 32000, 4096, 1, 2048), ("small", 1000, 64, 4, 256)]


def inputs(rng, name, V, C, B, T):
    """table [V, C], ids [B, T], dout [B, T, C]."""
    table = rng.standard_normal((V, C), dtype=np.float32)
    if "arange" in name:
        ids = np.broadcast_to(np.arange(T), (B, T)).copy()
    else:
        ids = rng.integers(0, V, size=(B, T))
    return table, ids, rng.standard_normal((B, T, C), dtype=np.float32)


def forward_impls(table, ids, torch, naive=True):
    """([(label, fn)], bytes moved per call)."""
    out = np.empty(ids.shape + table.shape[1:], np.float32)
    impls = [("numpy", lambda: reference.embedding(ids, table)),  # table[ids]
             ("numpy take out=", lambda: np.take(table, ids, axis=0, out=out))]
    if naive:
        impls.append(("kernelgpt naive out=",
                      lambda: ops.embedding(ids, table, out=out, backend="naive")))
    impls += [("kernelgpt fast fresh", lambda: ops.embedding(ids, table)),
              ("kernelgpt fast out=", lambda: ops.embedding(ids, table, out=out))]
    if torch is not None:
        tt, ti = torch.from_numpy(table), torch.from_numpy(ids)
        impls.append(("torch F.embedding", lambda: torch.nn.functional.embedding(ti, tt)))
    return impls, 2 * out.nbytes + ids.size * 8


def backward_impls(dout, ids, V, torch, naive=True):
    """([(label, fn)], bytes moved per call, {label: its own bytes when they differ})."""
    n, C = ids.size, dout.shape[-1]
    dtable = np.empty((V, C), np.float32)
    touched = len(np.unique(ids))
    impls = [("numpy", lambda: reference.embedding_backward(dout, ids, V))]
    if naive:
        impls.append(("kernelgpt naive out=", lambda: ops.embedding_backward(
            dout, ids, V, out=dtable, backend="naive")))
    impls += [("kernelgpt fast fresh", lambda: ops.embedding_backward(dout, ids, V)),
              ("kernelgpt fast out=", lambda: ops.embedding_backward(dout, ids, V, out=dtable)),
              ("kernelgpt fast accumulate", lambda: ops.embedding_backward(
                  dout, ids, V, out=dtable, accumulate=True))]
    if torch is not None:
        td, til = torch.from_numpy(dout).reshape(-1, C), torch.from_numpy(ids).reshape(-1)
        impls.append(("torch zeros + index_add_",
                      lambda: torch.zeros(V, C).index_add_(0, til, td)))
    moved = (n * C + 2 * touched * C) * 4 + n * 8
    return impls, moved + V * C * 4, {"kernelgpt fast accumulate": moved}  # (no zeroing)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--no-naive", action="store_true")
    ap.add_argument("--no-torch", action="store_true")
    args = ap.parse_args()
    torch = None if args.no_torch else torch_or_none()
    _limiter = setup_threads(args.threads, torch=torch)
    peak = StreamPeak().best()
    print(f"kernelgpt {kernelgpt.__version__}, {args.threads} threads, isa {kernelgpt.get_isa()}")
    print(f"stream peak (stream_scale, 256 MiB, read + write): {peak:.1f} GB/s")
    print(f"path: {ops.kernel_paths()['embedding']}")
    rng = np.random.default_rng(0)
    naive = not args.no_naive
    for name, V, C, B, T in CASES:
        table, ids, dout = inputs(rng, name, V, C, B, T)
        impls, nbytes = forward_impls(table, ids, torch, naive)
        run_case(f"embedding forward, {name}: table [{V}, {C}], ids [{B}, {T}]",
                 [(label, fn, None) for label, fn in impls], rounds=args.repeats, nbytes=nbytes,
                 peak=peak)
        impls, nbytes, own = backward_impls(dout, ids, V, torch, naive)
        run_case(f"embedding backward, {name}: dtable [{V}, {C}], {B * T} ids, "
                 f"{len(np.unique(ids))} distinct", [(label, fn, None) for label, fn in impls],
                 rounds=args.repeats, nbytes=nbytes, peak=peak, own_bytes=own)
        del table, ids, dout, impls
        gc.collect()


if __name__ == "__main__":
    main()
