"""Every version of every CUDA kernel, timed with CUDA events on CuPy's stream.

    env PYTHONPATH=python python3 benchmarks/bench_cuda.py [--repeats 20]

Prints one line per (kernel, version): the median time and the rate it implies (GB/s for the
memory-bound kernels: the bytes each kernel must read + write once; GFLOP/s for matmul).
Results are checked against the numpy reference once before timing (the tests do it
thoroughly). Needs a CUDA build of kernelgpt, CuPy and a GPU; exits with a message otherwise.
"""
from __future__ import annotations

import argparse
import statistics
import sys

import numpy as np

from kernelgpt import _cuda, ops, reference


def timed(cp, fn, repeats):
    fn()  # warm-up (and the first call's lazy CuPy kernel compilation)
    times = []
    for _ in range(repeats):
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, stop) * 1e-3)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    if not _cuda.available():
        sys.exit("bench_cuda: needs a CUDA build of kernelgpt, CuPy and an NVIDIA GPU")
    import cupy as cp

    rng = np.random.default_rng(0)

    def randn(*shape):
        return cp.asarray(rng.standard_normal(shape).astype(np.float32))

    def row(name, version, seconds, amount, unit):
        rate = amount / seconds / 1e9
        print(f"{name:<28} {version:<10} {seconds * 1e3:9.3f} ms {rate:9.1f} {unit}")

    M = N = K = 2048
    a, b = randn(M, K), randn(K, N)
    for v in ("naive", "tiled", "blocked", "vectorized"):
        row(f"matmul {M}^3", v, timed(cp, lambda: ops.matmul(a, b, backend=v), args.repeats),
            2 * M * N * K, "GFLOP/s")

    x, w, bias = randn(8192, 768), randn(768), randn(768)
    for v in ("naive", "fast"):
        row("layernorm 8192x768", v, timed(cp, lambda: ops.layernorm(x, w, bias, backend=v),
                                           args.repeats), 2 * x.nbytes, "GB/s")
        row("rmsnorm 8192x768", v, timed(cp, lambda: ops.rmsnorm(x, w, backend=v),
                                         args.repeats), 2 * x.nbytes, "GB/s")

    big = randn(1 << 24)
    for v in ("naive", "vec4"):
        row("gelu 16M", v, timed(cp, lambda: ops.gelu(big, backend=v), args.repeats),
            2 * big.nbytes, "GB/s")

    logits = randn(512, 50257)
    targets = cp.asarray(rng.integers(0, 50257, 512))
    for v in ("naive", "online"):
        row("cross_entropy 512x50257", v,
            timed(cp, lambda: ops.cross_entropy(logits, targets, return_grad=True, backend=v),
                  args.repeats), 2 * logits.nbytes, "GB/s")

    q, k, vv = randn(4, 12, 1024, 64), randn(4, 12, 1024, 64), randn(4, 12, 1024, 64)
    ref, _ = reference.attention(cp.asnumpy(q[:1, :2]), cp.asnumpy(k[:1, :2]),
                                 cp.asnumpy(vv[:1, :2]))
    for v in ("naive", "flash"):
        got = cp.asnumpy(ops.attention(q[:1, :2].copy(), k[:1, :2].copy(), vv[:1, :2].copy(),
                                       backend=v))
        assert np.abs(got - ref).max() < 1e-3, v
        flops = 4 * 4 * 12 * 1024 * 1024 * 64 / 2  # causal: half the scores
        row("attention 4x12x1024x64", v, timed(cp, lambda: ops.attention(q, k, vv, backend=v),
                                              args.repeats), flops, "GFLOP/s")
    q1, kc, vc = randn(1, 32, 1, 64), randn(1, 8, 4096, 64), randn(1, 8, 4096, 64)
    for v in ("naive", "flash", "decode"):
        row("decode 1 query vs 4096", v, timed(cp, lambda: ops.attention(q1, kc, vc, backend=v),
                                               args.repeats), kc.nbytes + vc.nbytes, "GB/s")

    wq = reference.quantize(rng.standard_normal((4096, 4096)).astype(np.float32), "q4_1")
    raw, xq = cp.asarray(wq), randn(4096)
    for v in ("naive", "warp"):
        row("quant_matmul q4_1 4096^2", v,
            timed(cp, lambda: ops.quant_matmul(xq, raw, "q4_1", 4096, backend=v), args.repeats),
            raw.nbytes, "GB/s")


if __name__ == "__main__":
    main()
