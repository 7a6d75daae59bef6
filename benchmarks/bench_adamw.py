"""AdamW step, gradient norm and clipping: numpy reference vs naive vs fast (vs PyTorch CPU).

    flock /work/main/.bench.lock env PYTHONPATH=python python3 benchmarks/bench_adamw.py
        [--threads 2] [--params 64] [--repeats 5] [--no-naive] [--no-torch]

Each case times the implementations in alternating rounds (numpy, naive, fast, torch, numpy,
...) with a 0.2 s pause between libraries (OpenBLAS / OpenMP worker threads spin for a while
after a call) and one untimed call after it, and prints the median. GB/s counts the bytes a kernel must move, once each:
AdamW reads param, grad, m, v and writes param, m, v (7 x 4 bytes per parameter); the norm
reads each gradient once. The peak is kernelgpt._C.stream_scale (dst = src * 1: read + write)
on a 256 MiB array, with the same thread count.
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
    """impls: list of (label, fn). Prints median time, ratio vs numpy, GB/s, % of peak.

    Each round: pause, one untimed call (wakes this library's threads: after a pause the OS
    takes up to a few ms to schedule them, which a training loop never sees), then enough
    timed calls to fill ~0.1 s."""
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
        gbs = nbytes / t / 1e9
        ratio = f"{base / t:6.2f}x" if base else "       "
        print(f"  {label:<26} {t * 1e3:9.3f} ms  {ratio} numpy  {gbs:6.1f} GB/s"
              f"  {100 * gbs / peak:5.1f}% of peak")
    gc.collect()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--params", type=int, default=64, help="millions of parameters (64)")
    ap.add_argument("--repeats", type=int, default=5)
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
    print(f"path: {ops.kernel_paths()['adamw']}")

    n = args.params << 20
    rng = np.random.default_rng(0)
    param = rng.standard_normal(n, dtype=np.float32)
    grad = rng.standard_normal(n, dtype=np.float32)
    m = rng.standard_normal(n, dtype=np.float32) * 0.1
    v = np.abs(rng.standard_normal(n, dtype=np.float32)) * 0.01
    hp = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1)
    steps = iter(range(1, 1 << 30))  # every call is the next step (the state keeps evolving)

    impls = [("numpy", lambda: reference.adamw_step(param, grad, m, v, next(steps), **hp))]
    if not args.no_naive:
        impls.append(("kernelgpt naive", lambda: ops.adamw_step(
            param, grad, m, v, step=next(steps), backend="naive", **hp)))
    impls.append(("kernelgpt fast", lambda: ops.adamw_step(param, grad, m, v, step=next(steps), **hp)))
    if torch is not None:
        tp = torch.nn.Parameter(torch.from_numpy(param.copy()))
        tp.grad = torch.from_numpy(grad)
        opts = {fe: torch.optim.AdamW([tp], lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]),
                                      eps=hp["eps"], weight_decay=hp["weight_decay"], foreach=fe)
                for fe in (False, True)}
        impls.append(("torch AdamW", opts[False].step))
        impls.append(("torch AdamW foreach", opts[True].step))
    run_case(f"adamw_step, {args.params}M float32 parameters", 7 * 4 * n, impls, args.repeats, peak)
    if torch is not None:
        del tp, opts
    impls.clear()
    gc.collect()

    # gradient norm over a GPT-2-small-like list of arrays, and one big array
    shapes = [(50257, 768), (1024, 768)] + [(768,), (768,), (768, 2304), (2304,), (768, 768),
                                             (768,), (768,), (768,), (768, 3072), (3072,),
                                             (3072, 768), (768,)] * 12 + [(768,), (768,)]
    glist = [rng.standard_normal(s, dtype=np.float32) for s in shapes]
    nbytes = sum(g.nbytes for g in glist)
    impls = [("numpy", lambda: reference.grad_norm(glist))]
    if not args.no_naive:
        impls.append(("kernelgpt naive", lambda: ops.grad_norm(glist, backend="naive")))
    impls.append(("kernelgpt fast", lambda: ops.grad_norm(glist)))
    if torch is not None:
        tl = [torch.from_numpy(g) for g in glist]
        impls.append(("torch vector_norm", lambda: torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(t) for t in tl]))))
    run_case(f"grad_norm, GPT-2 small gradients ({len(glist)} arrays, "
             f"{sum(g.size for g in glist) / 1e6:.0f}M values)", nbytes, impls, args.repeats, peak)

    # clip: norm + scale of every array (read + read/write)
    impls = [("numpy", lambda: reference.clip_grad_norm(glist, 1.0))]
    impls.append(("kernelgpt fast", lambda: ops.clip_grad_norm(glist, 1.0)))
    if torch is not None:
        ps = []
        for t in tl:
            p = torch.nn.Parameter(torch.empty_like(t))
            p.grad = t
            ps.append(p)
        impls.append(("torch clip_grad_norm_", lambda: torch.nn.utils.clip_grad_norm_(ps, 1.0)))
    run_case("clip_grad_norm, GPT-2 small gradients (norm > max_norm: scales once, then the "
             "norm is ~1 and it only reads)", nbytes, impls, args.repeats, peak)

    big = glist[0]
    impls = [("numpy", lambda: reference.grad_norm(big))]
    impls.append(("kernelgpt fast", lambda: ops.grad_norm(big)))
    run_case(f"grad_norm, one array {big.shape}", big.nbytes, impls, args.repeats, peak)


if __name__ == "__main__":
    main()
