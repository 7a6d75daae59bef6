"""Timing helpers shared by the plain-Python benchmark scripts (bench_*.py).

Every library gets the same thread count (2 by default, KERNELGPT_THREADS overrides).
Times are medians of repeats after one warm-up call. Between libraries we sleep 0.2 s:
OpenBLAS / OpenMP worker threads keep spinning for a while after a call and would steal a
core from the next measurement.

Bandwidth: "GB/s" counts the bytes a kernel must read plus the bytes it must write, once
each. The machine's reference is kernelgpt._C.stream_scale (dst = src * s) on 256 MiB,
counted the same way; it is measured around every benchmark case because on this machine
it drifts by tens of percent over minutes, and each case is compared with its own
neighbours (the mean of the measurements just before and just after it).
"""
import os
import statistics
import time

import numpy as np

import kernelgpt
from kernelgpt import _C

THREADS = int(os.environ.get("KERNELGPT_THREADS", "2"))


def setup_threads():
    kernelgpt.set_num_threads(THREADS)
    limiter = None
    try:
        import threadpoolctl
        limiter = threadpoolctl.threadpool_limits(THREADS)
    except ImportError:
        pass
    try:
        import torch
        torch.set_num_threads(THREADS)
    except ImportError:
        pass
    return limiter


def torch_or_none():
    try:
        import torch
        return torch
    except ImportError:
        return None


def median_time(fn, repeats):
    fn()  # warm up (page faults of the output, thread pools, caches)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


class StreamPeak:
    """The measured streaming bandwidth, dst = src * s on 256 MiB (read + write)."""

    def __init__(self, mib=256):
        self.src = np.random.default_rng(0).standard_normal(mib << 18, dtype=np.float32)
        self.dst = np.empty_like(self.src)
        self.bytes = 2 * self.src.nbytes

    def measure(self, repeats=5):
        return self.bytes / median_time(lambda: _C.stream_scale(self.src, self.dst), repeats) / 1e9


def run_case(title, nbytes, impls, peak, repeats=None):
    """impls: list of (name, fn, repeats). Prints one table block; returns {name: seconds}."""
    before = peak.measure()
    results = {}
    for name, fn, reps in impls:
        time.sleep(0.2)
        results[name] = median_time(fn, reps if repeats is None else repeats)
    after = peak.measure()
    gbs_peak = 0.5 * (before + after)
    base = results.get("numpy")
    print(f"\n{title}   ({nbytes / 2**20:.0f} MiB moved; stream peak {gbs_peak:.1f} GB/s "
          f"[{before:.1f} before, {after:.1f} after])")
    print(f"  {'impl':22s} {'ms':>9s} {'vs numpy':>9s} {'GB/s':>7s} {'% peak':>7s}")
    for name, t in results.items():
        speedup = f"{base / t:8.2f}x" if base else "        -"
        gbs = nbytes / t / 1e9
        print(f"  {name:22s} {t * 1e3:9.2f} {speedup} {gbs:7.1f} {100 * gbs / gbs_peak:6.0f}%")
    return results


def paired_fraction_of_peak(title, nbytes, fn, peak, rounds=11):
    """Alternates short stream / kernel measurements and reports the median of the per-pair
    ratios: robust to the slow drifts of this machine's bandwidth."""
    ratios, kernel_gbs, peaks = [], [], []
    fn()
    for _ in range(rounds):
        p = peak.measure(repeats=3)
        time.sleep(0.05)
        g = nbytes / median_time(fn, 3) / 1e9
        peaks.append(p)
        kernel_gbs.append(g)
        ratios.append(g / p)
    ratios.sort()
    print(f"  {title:44s} {statistics.median(kernel_gbs):6.1f} GB/s vs stream "
          f"{statistics.median(peaks):5.1f} GB/s: median {100 * statistics.median(ratios):4.0f}% of "
          f"peak (pairs range {100 * ratios[0]:.0f}-{100 * ratios[-1]:.0f}%)")
