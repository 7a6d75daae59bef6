"""RoPE (both layouts, forward and backward) and the sinusoidal table: numpy vs naive vs fast.

    flock /work/main/.bench.lock env PYTHONPATH=python python3 benchmarks/bench_rope.py
        [--threads 2] [--repeats 5] [--no-naive] [--no-torch]

Alternating rounds with a 0.2 s pause between libraries and one untimed call after it (it
wakes the library's threads), median times. GB/s counts x read once and y written once
(the cos / sin table is extra work every implementation does per call). The peak is
kernelgpt._C.stream_scale (read + write) on 256 MiB. "torch HF" is transformers'
apply_rotary_pos_emb (q * cos + rotate_half(q) * sin) with cos / sin computed per call, as
the model's rotary embedding module does each forward.
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
    print(f"\n{name}   ({nbytes / 1e6:.1f} MB moved per call)")
    for label, _ in impls:
        t = statistics.median(samples[label])
        gbs = nbytes / t / 1e9
        ratio = f"{base / t:7.2f}x" if base else "        "
        print(f"  {label:<24} {t * 1e3:9.3f} ms  {ratio} numpy  {gbs:6.1f} GB/s"
              f"  {100 * gbs / peak:5.1f}% of peak")
    gc.collect()


def torch_hf_rope(torch, x, offset, base):
    """transformers' LlamaRotaryEmbedding + apply_rotary_pos_emb (float32 inv_freq)."""
    T, D = x.shape[-2], x.shape[-1]
    inv_freq = 1.0 / (base ** (torch.arange(0, D, 2, dtype=torch.int64).float() / D))
    pos = torch.arange(offset, offset + T, dtype=torch.float32)
    freqs = torch.outer(pos, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos(), emb.sin()
    x1, x2 = x[..., : D // 2], x[..., D // 2:]
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
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
    print(f"path: {ops.kernel_paths()['rope']}")
    rng = np.random.default_rng(0)

    # (name, [B, H, T, D], offset, base, layouts, naive?)
    cases = [
        ("GPT-2-ish q", (8, 12, 1024, 64), 0, 10000.0, ("half", "interleaved"), True),
        ("Llama-ish q, 4k", (1, 32, 4096, 128), 0, 500000.0, ("half", "interleaved"), False),
        ("decode, 1 token at 32k", (1, 32, 1, 128), 32767, 1e6, ("half",), True),
        ("small", (1, 4, 64, 32), 7, 10000.0, ("half",), True),
    ]
    for name, shape, offset, base, layouts, with_naive in cases:
        x = rng.standard_normal(shape, dtype=np.float32)
        out = np.empty_like(x)
        for layout in layouts:
            kw = dict(offset=offset, base=base, layout=layout)
            impls = [("numpy", lambda: reference.rope(x, None, offset, base, layout))]
            if with_naive and not args.no_naive:
                impls.append(("kernelgpt naive", lambda: ops.rope(x, out=out, backend="naive", **kw)))
            impls += [("kernelgpt fast", lambda: ops.rope(x, **kw)),
                      ("kernelgpt fast out=", lambda: ops.rope(x, out=out, **kw)),
                      ("kernelgpt backward out=", lambda: ops.rope_backward(x, out=out, **kw))]
            if torch is not None and layout == "half":
                xt = torch.from_numpy(x)
                impls.append(("torch HF", lambda: torch_hf_rope(torch, xt, offset, base)))
            run_case(f"rope {layout}, {name}: x {list(shape)}, positions {offset}..{offset + shape[-2] - 1}",
                     2 * x.nbytes, impls, args.repeats, peak)
        del x, out
        gc.collect()

    for T, C, offset in [(1024, 768, 0), (8192, 4096, 10**6)]:
        impls = [("numpy", lambda: reference.sinusoidal_positions(T, C, 10000.0, offset).astype(np.float32))]
        if not args.no_naive:
            impls.append(("kernelgpt naive", lambda: ops.sinusoidal_positions(T, C, offset=offset, backend="naive")))
        impls.append(("kernelgpt fast", lambda: ops.sinusoidal_positions(T, C, offset=offset)))
        run_case(f"sinusoidal_positions T={T}, C={C}, offset {offset}", T * C * 4, impls,
                 args.repeats, peak)


if __name__ == "__main__":
    main()
