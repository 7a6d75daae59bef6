"""Embedding forward (row gather) and backward (scatter-add): numpy vs naive vs fast (vs torch).

    flock /work/main/.bench.lock env PYTHONPATH=python python3 benchmarks/bench_embedding.py
        [--threads 2] [--repeats 7] [--no-naive] [--no-torch]

Alternating rounds with a 0.2 s pause between libraries and one untimed call after it (it
wakes the library's threads), median times. GB/s counts the bytes
each call must move once: forward reads n rows of the table and writes n rows (n = B*T);
backward reads dout (n rows) and reads + writes the rows it adds into, plus, unless it
accumulates, writes the whole [V, C] table once (zeros). The peak is kernelgpt._C.stream_scale
(read + write) on 256 MiB.

"fresh" calls allocate their result as the API does by default (the backward's fresh table
comes from np.zeros, whose pages the OS zeroes lazily on first touch, as for the numpy
reference); "out=" calls reuse a preallocated output, as a training loop would.
"""
from __future__ import annotations

import argparse
import gc
import statistics
import time

import numpy as np

import kernelgpt
from kernelgpt import _C, ops, reference

PAUSE = 0.2


def measure_stream_peak():
    src = np.random.default_rng(0).random(64 << 20, dtype=np.float32)  # 256 MiB
    dst = np.empty_like(src)
    _C.stream_scale(src, dst, 1.0)
    times = []
    for _ in range(7):
        t0 = time.perf_counter()
        _C.stream_scale(src, dst, 1.0)
        times.append(time.perf_counter() - t0)
    return 2 * src.nbytes / min(times) / 1e9


def run_case(name, nbytes, impls, repeats, peak):
    """impls: list of (label, fn) or (label, fn, bytes moved by this one if not nbytes).
    Prints median time, ratio vs numpy, GB/s, % of peak.

    Each round: pause, one untimed call (wakes this library's threads: after a pause the OS
    takes up to a few ms to schedule them, which a training loop never sees), then enough
    timed calls to fill ~0.1 s."""
    own_bytes = {impl[0]: impl[2] for impl in impls if len(impl) > 2}
    impls = [impl[:2] for impl in impls]
    samples = {label: [] for label, _ in impls}
    reps = {}
    for label, fn in impls:  # warm up: page faults, thread pools, caches; size the rounds
        fn()
        t0 = time.perf_counter()
        fn()
        reps[label] = max(1, min(50, int(0.1 / (time.perf_counter() - t0))))
    for _ in range(repeats):
        for label, fn in impls:
            time.sleep(PAUSE)
            fn()
            for _ in range(reps[label]):
                t0 = time.perf_counter()
                fn()
                samples[label].append(time.perf_counter() - t0)
    base = statistics.median(samples["numpy"]) if "numpy" in samples else None
    print(f"\n{name}   ({nbytes / 1e6:.0f} MB moved per call)")
    for label, _ in impls:
        t = statistics.median(samples[label])
        gbs = own_bytes.get(label, nbytes) / t / 1e9
        ratio = f"{base / t:6.2f}x" if base else "       "
        print(f"  {label:<26} {t * 1e3:9.3f} ms  {ratio} numpy  {gbs:6.1f} GB/s"
              f"  {100 * gbs / peak:5.1f}% of peak")
    gc.collect()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--no-naive", action="store_true")
    ap.add_argument("--no-torch", action="store_true")
    args = ap.parse_args()
    kernelgpt.set_num_threads(args.threads)
    torch = None
    if not args.no_torch:
        try:
            import torch
            torch.set_num_threads(args.threads)
        except ImportError:
            pass

    peak = measure_stream_peak()
    print(f"kernelgpt {kernelgpt.__version__}, {args.threads} threads, isa {kernelgpt.get_isa()}")
    print(f"stream peak (stream_scale, 256 MiB, read + write): {peak:.1f} GB/s")
    print(f"path: {ops.kernel_paths()['embedding']}")
    rng = np.random.default_rng(0)

    # (name, V, C, B, T): GPT-2 small token table; a position table (ids = arange); Llama-ish
    cases = [("GPT-2 wte", 50257, 768, 8, 1024), ("GPT-2 wpe (ids = arange)", 1024, 768, 8, 1024),
             ("Llama-ish", 32000, 4096, 1, 2048), ("small", 1000, 64, 4, 256)]
    for name, V, C, B, T in cases:
        table = rng.standard_normal((V, C), dtype=np.float32)
        if "arange" in name:
            ids = np.broadcast_to(np.arange(T), (B, T)).copy()
        else:
            ids = rng.integers(0, V, size=(B, T))
        n = B * T
        out = np.empty((B, T, C), np.float32)
        impls = [("numpy", lambda: reference.embedding(ids, table)),  # table[ids]
                 ("numpy take out=", lambda: np.take(table, ids, axis=0, out=out))]
        if not args.no_naive:
            impls.append(("kernelgpt naive out=", lambda: ops.embedding(ids, table, out=out, backend="naive")))
        impls += [("kernelgpt fast fresh", lambda: ops.embedding(ids, table)),
                  ("kernelgpt fast out=", lambda: ops.embedding(ids, table, out=out))]
        if torch is not None:
            tt, ti, to = torch.from_numpy(table), torch.from_numpy(ids), torch.from_numpy(out)
            impls.append(("torch F.embedding", lambda: torch.nn.functional.embedding(ti, tt)))
        run_case(f"embedding forward, {name}: table [{V}, {C}], ids [{B}, {T}]",
                 2 * n * C * 4 + n * 8, impls, args.repeats, peak)

        dout = rng.standard_normal((B, T, C), dtype=np.float32)
        dtable = np.empty((V, C), np.float32)
        touched = len(np.unique(ids))
        impls = [("numpy", lambda: reference.embedding_backward(dout, ids, V))]
        if not args.no_naive:
            impls.append(("kernelgpt naive out=", lambda: ops.embedding_backward(
                dout, ids, V, out=dtable, backend="naive")))
        impls += [("kernelgpt fast fresh", lambda: ops.embedding_backward(dout, ids, V)),
                  ("kernelgpt fast out=", lambda: ops.embedding_backward(dout, ids, V, out=dtable)),
                  ("kernelgpt fast accumulate", lambda: ops.embedding_backward(
                      dout, ids, V, out=dtable, accumulate=True),
                   (n * C + 2 * touched * C) * 4 + n * 8)]  # (no zeroing)
        if torch is not None:
            td, tdt = torch.from_numpy(dout).reshape(-1, C), torch.from_numpy(dtable)
            til = ti.reshape(-1)
            impls.append(("torch zeros + index_add_",
                          lambda: torch.zeros(V, C).index_add_(0, til, td)))
        nbytes = (n * C + 2 * touched * C + V * C) * 4 + n * 8
        run_case(f"embedding backward, {name}: dtable [{V}, {C}], {n} ids, {touched} distinct",
                 nbytes, impls, args.repeats, peak)
        del table, out, dout, dtable, impls
        gc.collect()


if __name__ == "__main__":
    main()
