"""bf16 weights at SmolLM2-135M's shapes, 2 threads.

    flock .bench.lock python benchmarks/bench_bf16.py
    flock .bench.lock python benchmarks/bench_bf16.py --quick   # fewer repeats, no naive version

1. Decode (M = 1), one weight matrix at a time: GB/s of the weight bytes each version reads
   (2 bytes per weight for bf16, 4 for fp32) against numpy (widen to fp32, then W @ x: the
   reference), numpy and kernelgpt fp32 matvecs on the same weights widened beforehand.
   One matrix (<= 1.8 MiB bf16, except the LM head) stays in cache between repeats.
2. Decode sweep: every matvec of one SmolLM2 token (30 layers x q, k, v, o, gate, up, down and
   the 49152 x 576 head: 257 MiB bf16, 514 MiB fp32, far beyond the last-level cache), as
   tokens/s if the matvecs were the whole model (an upper bound) and % of streaming bandwidth.
3. M rows of x (4 ... 128) through gate / up: widen (one pass over W per 4 rows) against tiled
   (widened panels + the blocked fp32 matmul): where `auto` switches; dpbf16 and fp32 beside.
4. SmolLM2 end to end (when the GGUF is fetched): model.generate, greedy, 64 new tokens after a
   chat prompt, decode tok/s (GenerationStats) for weights = quantized, bf16, fp32.
Times are medians of repeats after a warm-up, best repeat beside it (a shared 2-core machine
often loses a core for a time slice; the best is the kernel's own speed). Timing, threads and
the stream peak: kernelgpt/bench.py.
"""
import argparse
import statistics

import numpy as np

from kernelgpt import ops, reference
from kernelgpt.bench import StreamPeak, median_best, paired_median, print_row, setup_threads
from kernelgpt.generate import GenerationStats
from kernelgpt.io import fetch
from kernelgpt.llama import load_model

C, I, KV, V, LAYERS = 576, 1536, 192, 49152, 30
SHAPES = [("q / o", C, C), ("k / v", KV, C), ("gate / up", I, C), ("down", C, I),
          ("lm_head", V, C)]


def bf16(rng, n, k):
    return ops.to_bf16(rng.standard_normal((n, k), dtype=np.float32) * np.float32(0.05))


def decode_shapes(rng, reps, naive):
    print("\n1. decode, M = 1, one matrix (cache-resident except lm_head)")
    for name, n, k in SHAPES:
        w = bf16(rng, n, k)
        wf = ops.from_bf16(w)
        x = rng.standard_normal(k, dtype=np.float32)
        y = np.empty(n, np.float32)
        print(f" {name}: {k} -> {n}, {w.nbytes / 2**20:.2f} MiB bf16, "
              f"{wf.nbytes / 2**20:.2f} MiB fp32")
        r = max(3, reps // 10) if n == V else reps
        t_np = median_best(lambda: reference.from_bf16(w) @ x, max(3, r // 10))
        print_row("numpy widen + matvec", t_np, w.nbytes, base=t_np)
        print_row("numpy fp32 matvec", median_best(lambda: wf @ x, r), wf.nbytes, base=t_np)
        print_row("kernelgpt fp32 matvec", median_best(lambda: ops.linear(x[None], wf), r),
                  wf.nbytes, base=t_np)
        if naive:
            print_row("kernelgpt naive (1 thread)", median_best(
                lambda: ops.bf16_matmul(x, w, out=y, backend="naive"), max(3, r // 10)),
                w.nbytes, base=t_np)
        for backend in ("widen", "dpbf16"):
            print_row(f"kernelgpt bf16 {backend}", median_best(
                lambda: ops.bf16_matmul(x, w, out=y, backend=backend), r), w.nbytes, base=t_np)


def model_weights(rng):
    dims = [(C, C), (KV, C), (KV, C), (C, C), (I, C), (I, C), (C, I)]
    layers = [[bf16(rng, n, k) for n, k in dims] for _ in range(LAYERS)]
    return layers, bf16(rng, V, C)


def decode_sweep(layers, head, peak, rounds, rng):
    x, xi = rng.standard_normal(C, dtype=np.float32), rng.standard_normal(I, dtype=np.float32)
    outs = {n: np.empty(n, np.float32) for n in (C, KV, I, V)}

    def run_bf16(backend):
        def run():
            for mats in layers:
                for idx, w in enumerate(mats):
                    ops.bf16_matmul(xi if idx == 6 else x, w, out=outs[w.shape[0]], backend=backend)
            ops.bf16_matmul(x, head, out=outs[V], backend=backend)
        return run

    fp32 = [[ops.from_bf16(w) for w in mats] for mats in layers], ops.from_bf16(head)

    def run_fp32():
        for mats in fp32[0]:
            for idx, w in enumerate(mats):
                ops.linear((xi if idx == 6 else x)[None], w, out=outs[w.shape[0]][None])
        ops.linear(x[None], fp32[1], out=outs[V][None])

    nbytes = sum(w.nbytes for mats in layers for w in mats) + head.nbytes
    print(f"\n2. decode sweep: one token's matvecs, {nbytes / 2**20:.0f} MiB of bf16 weights "
          f"({2 * nbytes / 2**20:.0f} MiB as fp32), from DRAM")
    for name, fn, size in [("bf16 widen", run_bf16("widen"), nbytes),
                           ("bf16 dpbf16", run_bf16("dpbf16"), nbytes),
                           ("fp32 matvec", run_fp32, 2 * nbytes)]:
        t, best, p = paired_median(fn, peak, rounds)
        print(f"  kernelgpt {name:12s} {t * 1e3:7.2f} ms = {1 / t:6.1f} tok/s (best "
              f"{1 / best:6.1f})  {size / t / 1e9:5.1f} GB/s = {100 * size / t / 1e9 / p:3.0f}% "
              f"of stream {p:.1f} GB/s")


def crossover(rng, reps):
    n, k = I, C
    w = bf16(rng, n, k)
    wf = ops.from_bf16(w)
    print(f"\n3. M rows through gate / up ([M, {k}] x [{n}, {k}]^T): widen vs tiled (auto: widen "
          "for M <= 32)")
    for M in (4, 8, 16, 32, 64, 128):
        x = rng.standard_normal((M, k), dtype=np.float32)
        y = np.empty((M, n), np.float32)
        flops = 2.0 * M * n * k
        print(f" M = {M}")
        t_np = median_best(lambda: x @ reference.from_bf16(w).T, reps)
        print_row("numpy widen + matmul", t_np, flops=flops, base=t_np)
        print_row("kernelgpt fp32 matmul", median_best(lambda: ops.linear(x, wf, out=y), reps),
                  flops=flops, base=t_np)
        for backend in ("widen", "tiled", "dpbf16"):
            print_row(f"kernelgpt bf16 {backend}", median_best(
                lambda: ops.bf16_matmul(x, w, out=y, backend=backend), reps), flops=flops,
                base=t_np)


def end_to_end(new_tokens, rounds):
    path = fetch.cached("smollm2")
    if path is None:
        print("\n4. SmolLM2 end to end: skipped (kernelgpt fetch smollm2)")
        return
    print(f"\n4. SmolLM2-135M end to end: greedy, {new_tokens} new tokens after a chat prompt "
          f"(median of {rounds} runs)")
    msgs = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]
    for weights in ("quantized", "bf16", "fp32"):
        model = load_model(path, weights=weights)
        decode, prefill, first = [], [], None
        for _ in range(rounds):
            model._chat_cache = None  # no prompt caching between runs
            stats = GenerationStats()
            text = "".join(model.chat(msgs, new_tokens, temperature=0.0, stats=stats))
            first = first or text
            decode.append(stats.decode_tokens_per_second)
            prefill.append(stats.prompt_tokens / max(stats.prefill_seconds, 1e-9))
        print(f"  {weights:9s} decode {statistics.median(decode):6.1f} tok/s (best "
              f"{max(decode):6.1f}), prefill {statistics.median(prefill):6.1f} tok/s "
              f"({stats.prompt_tokens} prompt tokens, {len(stats.new_tokens)} new): "
              f"{first[:48]!r}")
        del model


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    _limiter = setup_threads()
    reps = 30 if args.quick else 200
    rng = np.random.default_rng(0)
    print(f"kernel path: {ops.kernel_paths()['bf16']}")
    decode_shapes(rng, reps, naive=not args.quick)
    peak = StreamPeak()
    layers, head = model_weights(rng)
    decode_sweep(layers, head, peak, 3 if args.quick else 7, rng)
    del layers, head, peak
    crossover(rng, max(5, reps // 10))
    end_to_end(64, 2 if args.quick else 3)


if __name__ == "__main__":
    main()
