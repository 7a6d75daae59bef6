"""Quantized matmuls (Q4_1 / Q8_0) at SmolLM2-135M's shapes, 2 threads.

    flock .bench.lock python benchmarks/bench_quant.py
    flock .bench.lock python benchmarks/bench_quant.py --quick   # fewer repeats, no naive version

1. Decode (M = 1), one weight matrix at a time: GB/s of the weight bytes each version reads
   (quantized bytes for the quantized kernels, float32 bytes for the fp32 matvecs), against
   numpy (dequantize, then x @ W.T, the reference), numpy and kernelgpt on float32 weights
   dequantized beforehand. A single matrix of SmolLM2 (<= 1.8 MiB, except the LM head) stays
   in cache between repeats, so these are cache-speed numbers.
2. Decode sweep: every matvec of one SmolLM2 token (30 layers x q, k, v, o, gate, up, down in
   Q4_1, then the 49152 x 576 Q8_0 LM head: 96 MiB of distinct weights, more than the
   last-level cache), so the weights come from DRAM as in a real decode. Reported as
   tokens/s if the matvecs were the whole model (an upper bound on decode speed), GB/s and %
   of the measured streaming bandwidth (kernelgpt._C.stream_scale; read + write counted).
3. Prefill, M = 128 rows of x: GFLOP/s of the tiled path against the fused path (the decode
   kernel, one pass over W per 4 rows of x), numpy and the fp32 blocked matmul; then the
   same sweep as 2 for a 128-token prompt, in tokens/s.
Times are medians of repeats after a warm-up; the best repeat is printed beside it, since on
a shared 2-core machine another process often takes a core for a whole time slice (then the
2-thread medians show ~4-12 ms stalls; the best is the kernel's own speed). Timing, threads
and the stream peak: kernelgpt/bench.py.
"""
import argparse

import numpy as np

from kernelgpt import ops, reference
from kernelgpt.bench import StreamPeak, median_best, paired_median, print_row, setup_threads

C, I, KV, V, LAYERS = 576, 1536, 192, 49152, 30
SHAPES = [("q", C, C, "q4_1"), ("k / v", KV, C, "q4_1"), ("gate / up", I, C, "q4_1"),
          ("down", C, I, "q4_1"), ("lm_head", V, C, "q8_0")]


def quantized(rng, n, k, qtype):
    return reference.quantize(rng.standard_normal((n, k), dtype=np.float32) * 0.05, qtype)


def decode_shapes(rng, reps, naive):
    print("\n1. decode, M = 1, one matrix (cache-resident except lm_head)")
    for name, n, k, qtype in SHAPES:
        raw = quantized(rng, n, k, qtype)
        w = reference.dequantize(raw, qtype, (n, k))
        x = rng.standard_normal(k, dtype=np.float32)
        y = np.empty(n, np.float32)
        print(f" {name}: {k} -> {n} {qtype}, {raw.nbytes / 2**20:.2f} MiB quantized, "
              f"{w.nbytes / 2**20:.2f} MiB float32")
        r = max(3, reps // 10) if n == V else reps
        t_np = median_best(lambda: reference.quant_matmul(x, raw, qtype, n), max(3, r // 10))
        print_row("numpy dequantize + matvec", t_np, raw.nbytes, base=t_np)
        t = median_best(lambda: w @ x, r)
        print_row("numpy fp32 matvec", t, w.nbytes, base=t_np)
        t = median_best(lambda: ops.linear(x[None], w), r)
        print_row("kernelgpt fp32 matvec", t, w.nbytes, base=t_np)
        if naive:
            t = median_best(lambda: ops.quant_matmul(x, raw, qtype, n, out=y, backend="naive"),
                            max(3, r // 10))
            print_row("kernelgpt naive (1 thread)", t, raw.nbytes, base=t_np)
        for backend in ("fused", "vnni", *PACKED):
            f = product(backend, raw, qtype, n, k)
            t = median_best(lambda: f(x, y), r)
            print_row(f"kernelgpt {backend}", t, raw.nbytes, base=t_np)


# The int8 path (ops.quant_pack + ops.quant_matmul_packed): what SmolLM2 runs on a VNNI or AVX2 CPU.
PACKED = {"packed x8": 8, "packed x16": 16}


def product(backend, raw, qtype, n, k):
    """y = x @ W^T as `backend` computes it: a quant_matmul backend or a PACKED mode (W packed
    once, here)."""
    if backend in PACKED:
        panels = ops.quant_pack(raw, qtype, n, k)
        return lambda x, y: ops.quant_matmul_packed(x, panels, qtype, n, out=y,
                                                    x_bits=PACKED[backend])
    return lambda x, y: ops.quant_matmul(x, raw, qtype, n, out=y, backend=backend)


def model_weights(rng):
    layers = []
    for _ in range(LAYERS):
        layers.append([(quantized(rng, n, k, "q4_1"), n) for n, k in
                       [(C, C), (KV, C), (KV, C), (C, C), (I, C), (I, C), (C, I)]])
    return layers, quantized(rng, V, C, "q8_0")


def sweep(layers, head, M, backend, rng):
    """Every matmul of one forward pass over M tokens (the other layers' work left out); the
    LM head only for the last token, as generation needs."""
    x = rng.standard_normal((M, C), dtype=np.float32)
    xi = rng.standard_normal((M, I), dtype=np.float32)
    outs = {n: np.empty((M, n), np.float32) for n in (C, KV, I)}
    logits = np.empty(V, np.float32)

    fns = [[(product(backend, raw, "q4_1", n, I if idx == 6 else C), n)
            for idx, (raw, n) in enumerate(mats)] for mats in layers]
    head_fn = product(backend, head, "q8_0", V, C)

    def run():
        for mats in fns:
            for idx, (f, n) in enumerate(mats):
                f(xi if idx == 6 else x, outs[n])
        head_fn(x[-1], logits)
    return run


def decode_sweep(rng, layers, head, peak, rounds):
    nbytes = sum(raw.nbytes for mats in layers for raw, _ in mats) + head.nbytes
    print(f"\n2. decode sweep: one token's matvecs, {nbytes / 2**20:.0f} MiB of distinct weights "
          "(from DRAM)")
    for backend in ("fused", "vnni", *PACKED):
        t, best, p = paired_median(sweep(layers, head, 1, backend, rng), peak, rounds)
        for what, s in (("median", t), ("best", best)):
            print(f"  kernelgpt {backend:10s} {what:6s} {s * 1e3:7.2f} ms = {1 / s:6.1f} tok/s   "
                  f"{nbytes / s / 1e9:5.1f} GB/s = {100 * nbytes / s / 1e9 / p:3.0f}% of stream "
                  f"{p:.1f} GB/s (read + write, median)")


def prefill(rng, layers, head, reps, M=128):
    print(f"\n3. prefill, M = {M}")
    for name, n, k, qtype in SHAPES:
        raw = quantized(rng, n, k, qtype)
        w = reference.dequantize(raw, qtype, (n, k))
        x = rng.standard_normal((M, k), dtype=np.float32)
        y = np.empty((M, n), np.float32)
        flops = 2.0 * M * n * k
        r = max(3, reps // 10) if n == V else reps
        print(f" {name}: [{M}, {k}] x [{n}, {k}]^T {qtype}")
        t_np = median_best(lambda: reference.quant_matmul(x, raw, qtype, n), max(3, r // 5))
        print_row("numpy dequantize + matmul", t_np, flops=flops, base=t_np)
        t = median_best(lambda: ops.linear(x, w, out=y), r)
        print_row("kernelgpt fp32 matmul", t, flops=flops, base=t_np)
        for backend in ("tiled", "fused", "vnni", *PACKED):
            f = product(backend, raw, qtype, n, k)
            t = median_best(lambda: f(x, y), r)
            print_row(f"kernelgpt {backend}", t, flops=flops, base=t_np)
    print(f" sweep: every matmul of a {M}-token prompt (LM head for the last token)")
    for backend in ("auto", "vnni", *PACKED):
        t, best = median_best(sweep(layers, head, M, backend, rng), 5)
        print(f"  kernelgpt {backend:10s} {t * 1e3:7.1f} ms = {M / t:6.1f} tok/s "
              f"(best {best * 1e3:7.1f} ms = {M / best:6.1f} tok/s)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    _limiter = setup_threads()
    reps = 30 if args.quick else 200
    rng = np.random.default_rng(0)
    print(f"kernel path: {ops.kernel_paths()['quant']}")
    peak = StreamPeak()
    decode_shapes(rng, reps, naive=not args.quick)
    layers, head = model_weights(rng)
    decode_sweep(rng, layers, head, peak, 5 if args.quick else 11)
    prefill(rng, layers, head, max(5, reps // 10))


if __name__ == "__main__":
    main()
