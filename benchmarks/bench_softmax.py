"""Softmax, log-softmax and cross-entropy: numpy reference vs naive vs fast (vs PyTorch CPU).

    flock /work/main/.bench.lock env PYTHONPATH=python python3 benchmarks/bench_softmax.py
        [--threads 2] [--quick] [--repeats 5]

Every case times each implementation in alternating rounds (numpy, naive, fast, torch,
numpy, ...) with a 0.2 s pause between libraries (OpenBLAS / OpenMP worker threads spin for
a while after a call) and one untimed call after it, and prints the median. GB/s counts the bytes each kernel must move,
once each: inputs read + outputs written (softmax: 2 * 4 * N * V). The peak is
kernelgpt._C.stream_scale (dst = src * 1, read + write) on a 256 MiB array, measured again
alongside every case because this machine's bandwidth drifts with its neighbours' load.

"fresh out" calls allocate their result as the API does by default: for outputs beyond the
caches the OS then zeroes every new page before the kernel writes it, which costs about as
much as the kernel itself; "out=" rows reuse a preallocated output (as a training loop would).
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


class StreamPeak:
    """dst = src * 1 on 256 MiB arrays (kernelgpt._C.stream_scale): read + write bandwidth."""

    def __init__(self):
        self.src = np.random.default_rng(0).random(64 << 20, dtype=np.float32)
        self.dst = np.empty_like(self.src)
        _C.stream_scale(self.src, self.dst, 1.0)

    def __call__(self):
        _C.stream_scale(self.src, self.dst, 1.0)

    def gbs(self, seconds):
        return 2 * self.src.nbytes / seconds / 1e9


def time_calls(fn, reps):
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def run_case(name, nbytes, impls, repeats, peak):
    """impls: list of (label, fn, reps_per_round). Prints one line per implementation.

    The memory bandwidth of this machine varies from minute to minute (other tenants), so
    the peak is measured again in every round of every case, alongside the kernels, and
    "% of peak" compares with the median of those measurements."""
    impls = impls + [("(peak: stream_scale)", peak, 3)]
    samples = {label: [] for label, _, _ in impls}
    for label, fn, _ in impls:  # warm up: page faults, thread pools, caches
        fn()
    for _ in range(repeats):
        for label, fn, reps in impls:
            time.sleep(PAUSE)
            fn()  # untimed: wakes this library's threads after the pause
            samples[label] += time_calls(fn, reps)
    peak_gbs = peak.gbs(statistics.median(samples["(peak: stream_scale)"]))
    base = statistics.median(samples["numpy"]) if "numpy" in samples else None
    print(f"\n{name}   ({nbytes / 1e6:.0f} MB moved per call; peak during this case "
          f"{peak_gbs:.1f} GB/s)")
    for label, _, _ in impls[:-1]:
        t = statistics.median(samples[label])
        gbs = nbytes / t / 1e9
        ratio = f"{base / t:6.2f}x" if base else "      "
        print(f"  {label:<24} {t * 1e3:9.2f} ms  {ratio} numpy  {gbs:6.1f} GB/s"
              f"  {100 * gbs / peak_gbs:5.1f}% of peak")
    gc.collect()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="smaller shapes, fewer repeats")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-naive", action="store_true", help="skip the (slow) naive versions")
    ap.add_argument("--only", choices=["vocab", "attention"], help="run one group of cases")
    args = ap.parse_args()

    kernelgpt.set_num_threads(args.threads)
    try:
        import threadpoolctl
        threadpoolctl.threadpool_limits(args.threads)
    except ImportError:
        pass
    try:
        import torch
        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None

    peak = StreamPeak()
    info = kernelgpt.cpu_features()
    print(f"{info['brand']}, {args.threads} threads, isa {info['active_isa']}")
    print(f"softmax path:       {ops.kernel_paths()['softmax']}")
    print(f"cross_entropy path: {ops.kernel_paths()['cross_entropy']}")
    times = time_calls(peak, 7)
    print(f"peak (stream_scale, 256 MiB, read + write): {peak.gbs(min(times)):.1f} GB/s best, "
          f"{peak.gbs(statistics.median(times)):.1f} median of 7")

    rng = np.random.default_rng(0)
    big = [(1024, 50304)] if args.quick else [(4096, 50304), (8192, 32768)]
    reps = 1 if not args.quick else 2
    naive = not args.no_naive

    if args.only == "attention":
        big = []
    for n, v in big:
        x = rng.standard_normal((n, v), dtype=np.float32) * 3
        y = np.empty_like(x)
        nb = 2 * x.nbytes
        impls = [("numpy", lambda: reference.softmax(x), reps)]
        if naive:
            impls.append(("naive (out=)", lambda: ops.softmax(x, out=y, backend="naive"), 1))
        impls += [("online (fresh out)", lambda: ops.softmax(x), reps),
                  ("online (out=)", lambda: ops.softmax(x, out=y), reps)]
        if torch is not None:
            tx, ty = torch.from_numpy(x), torch.from_numpy(y)
            impls.append(("torch (out=)", lambda: torch.softmax(tx, -1, out=ty), reps))
        run_case(f"softmax [{n}, {v}]", nb, impls, args.repeats, peak)

        impls = [("numpy", lambda: reference.log_softmax(x), reps),
                 ("online (out=)", lambda: ops.log_softmax(x, out=y), reps)]
        if torch is not None:
            impls.append(("torch (out=)", lambda: torch.log_softmax(tx, -1, out=ty), reps))
        run_case(f"log_softmax [{n}, {v}]", nb, impls, args.repeats, peak)

        targets = rng.integers(0, v, n)
        targets[::17] = -100
        impls = [("numpy", lambda: reference.cross_entropy(x, targets, return_grad=True), reps)]
        if naive:
            impls.append(("naive (out=)", lambda: ops.cross_entropy(
                x, targets, return_grad=True, out=y, backend="naive"), 1))
        impls += [("online (fresh out)", lambda: ops.cross_entropy(x, targets, return_grad=True),
                   reps),
                  ("online (out=)", lambda: ops.cross_entropy(x, targets, return_grad=True,
                                                              out=y), reps)]
        if torch is not None:
            tt = torch.from_numpy(targets)

            def torch_ce():
                tl = tx.detach().requires_grad_(True)
                torch.nn.functional.cross_entropy(tl, tt).backward()
                return tl.grad
            impls.append(("torch (autograd)", torch_ce, reps))
        run_case(f"cross_entropy + grad [{n}, {v}]", nb, impls, args.repeats, peak)

        impls = [("numpy", lambda: reference.cross_entropy(x, targets), reps),
                 ("online", lambda: ops.cross_entropy(x, targets), reps)]
        if torch is not None:
            impls.append(("torch", lambda: torch.nn.functional.cross_entropy(tx, tt), reps))
        run_case(f"cross_entropy loss only [{n}, {v}]", x.nbytes, impls, args.repeats, peak)

        probs = ops.softmax(x)
        dy = rng.standard_normal((n, v), dtype=np.float32)
        impls = [("numpy", lambda: reference.softmax_backward(dy, probs), reps)]
        if naive:
            impls.append(("naive (out=)", lambda: ops.softmax_backward(dy, probs, out=y,
                                                                        backend="naive"), 1))
        impls += [("fused (out=)", lambda: ops.softmax_backward(dy, probs, out=y), reps)]
        if torch is not None:
            tp, tdy = torch.from_numpy(probs), torch.from_numpy(dy)
            impls.append(("torch", lambda: torch._softmax_backward_data(
                tdy, tp, -1, torch.float32), reps))
        run_case(f"softmax_backward [{n}, {v}]", 3 * x.nbytes, impls, args.repeats, peak)
        del x, y, probs, dy, impls
        gc.collect()

    # attention-shaped: causal scores, and a case that fits in the L3 cache
    attention = [((16, 1024, 1024), True), ((64, 12, 256, 256), False), ((8, 256, 512), False)]
    for shape, causal in attention if args.only != "vocab" else []:
        x = rng.standard_normal(shape, dtype=np.float32)
        y = np.empty_like(x)
        impls = [("numpy", lambda: reference.softmax(x, scale=0.125, causal=causal), 3)]
        if naive:
            impls.append(("naive (out=)", lambda: ops.softmax(x, scale=0.125, causal=causal,
                                                              out=y, backend="naive"), 1))
        impls.append(("online (out=)", lambda: ops.softmax(x, scale=0.125, causal=causal,
                                                           out=y), 10))
        if torch is not None and not causal:  # torch has no scale: give it x * 0.125 ready
            tx, ty = torch.from_numpy(x * np.float32(0.125)), torch.from_numpy(y)
            impls.append(("torch (prescaled, out=)", lambda: torch.softmax(tx, -1, out=ty), 10))
        run_case(f"softmax{' causal' if causal else ''} {list(shape)}, scale 0.125",
                 2 * x.nbytes, impls, args.repeats, peak)


if __name__ == "__main__":
    main()
