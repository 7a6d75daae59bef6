"""Attention: numpy reference vs kernelgpt (naive, flash, decode) vs PyTorch CPU.

    python benchmarks/bench_attention.py [--threads 2] [--repeats 7] [--no-naive]

Prints, per case, the median time of each implementation, its speed relative to numpy and to
PyTorch's scaled_dot_product_attention, and GFLOP/s (compute-bound cases: % of the 222 GFLOP/s
two-core FMA peak) or GB/s of K and V read (decode). FLOPs: 4 * B * H * T * S * D for the
forward (two matmuls), halved when causal with T == S; 2.5x that for the backward (five).
Every library runs on the same number of threads; the implementations take turns in rounds,
and between libraries we sleep 0.2 s because OpenBLAS and OpenMP worker threads keep spinning
for a while after a call. Times are medians over all timed calls.
"""
import argparse
import time

import numpy as np

import kernelgpt
from kernelgpt import ops, reference

PEAK_GFLOPS = 222.0  # 2 cores x ~111 GFLOP/s fp32 FMA (measured on the target machine)


def torch_or_none():
    try:
        import torch
    except ImportError:
        return None
    return torch


def run_case(title, impls, repeats, flops=None, nbytes=None, rounds=3):
    """impls: list of (name, fn, calls per round or None for `repeats`). The implementations
    take turns, `rounds` times (so a slow spell of the machine hits all of them); each
    result is the median over all timed calls."""
    print(f"\n{title}")
    times = {name: [] for name, _, _ in impls}
    for round_ in range(rounds):
        for name, fn, reps in impls:
            time.sleep(0.2)
            if round_ == 0 or (reps or repeats) > 1:
                fn()  # warm up after the switch (wakes the library's worker threads)
            for _ in range(reps or repeats):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    results = {name: float(np.median(t)) for name, t in times.items()}
    base = results.get("numpy")
    torch_t = results.get("torch")
    for name, t in results.items():
        line = f"  {name:18s} {t * 1e3:10.3f} ms"
        if base:
            line += f"   {base / t:7.2f}x numpy"
        if torch_t:
            line += f"   {torch_t / t:6.2f}x torch"
        if flops:
            gf = flops / t / 1e9
            line += f"   {gf:7.1f} GFLOP/s ({100 * gf / PEAK_GFLOPS:4.1f}% of peak)"
        if nbytes:
            line += f"   {nbytes / t / 1e9:7.1f} GB/s"
        print(line)
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per round")
    parser.add_argument("--no-naive", action="store_true", help="skip the (slow) naive kernels")
    args = parser.parse_args()

    kernelgpt.set_num_threads(args.threads)
    try:
        import threadpoolctl
        _limiter = threadpoolctl.threadpool_limits(args.threads)  # noqa: F841 (kept alive)
    except ImportError:
        print("threadpoolctl not installed: numpy's BLAS may use more threads")
    torch = torch_or_none()
    if torch is not None:
        torch.set_num_threads(args.threads)
    print(f"threads: {args.threads}; kernelgpt path: {ops.kernel_paths()['attention']}; "
          f"isa: {kernelgpt.get_isa()}; torch: {torch.__version__ if torch else 'not installed'}")

    rng = np.random.default_rng(0)
    F = torch.nn.functional if torch is not None else None

    # ---- training shape: causal, B=1, H=12, T=1024, D=64 --------------------------------------
    B, H, T, D = 1, 12, 1024, 64
    q, k, v, dout = (rng.standard_normal((B, H, T, D), dtype=np.float32) for _ in range(4))
    fwd_flops = 4 * B * H * T * T * D / 2
    out, lse = ops.attention(q, k, v, return_lse=True)
    impls = [("numpy", lambda: reference.attention(q, k, v, True), 2),
             ("kernelgpt flash", lambda: ops.attention(q, k, v), None)]
    if not args.no_naive:
        impls.append(("kernelgpt naive", lambda: ops.attention(q, k, v, backend="naive"), 1))
    if torch is not None:
        tq, tk, tv = (torch.from_numpy(x) for x in (q, k, v))

        def torch_fwd():
            with torch.no_grad():
                F.scaled_dot_product_attention(tq, tk, tv, is_causal=True)
        impls.append(("torch", torch_fwd, None))
    run_case(f"forward, causal, B={B} H={H} T=S={T} D={D}", impls, args.repeats, flops=fwd_flops)

    def kg_train(backend):
        def step():
            o, l = ops.attention(q, k, v, return_lse=True, backend=backend)
            ops.attention_backward(dout, q, k, v, o, l, backend=backend)
        return step

    def numpy_train():
        o, l = reference.attention(q, k, v, True)
        reference.attention_backward(dout, q, k, v, o, l, True)

    impls = [("numpy", numpy_train, 1), ("kernelgpt flash", kg_train("flash"), None)]
    if not args.no_naive:
        impls.append(("kernelgpt naive", kg_train("naive"), 1))
    if torch is not None:
        tq, tk, tv = (torch.from_numpy(x).requires_grad_() for x in (q, k, v))
        tdout = torch.from_numpy(dout)

        def torch_train():
            for x in (tq, tk, tv):
                x.grad = None
            F.scaled_dot_product_attention(tq, tk, tv, is_causal=True).backward(tdout)
        impls.append(("torch", torch_train, None))
    run_case(f"forward + backward, causal, B={B} H={H} T=S={T} D={D}", impls, args.repeats,
             flops=3.5 * fwd_flops)

    impls = [("kernelgpt flash", lambda: ops.attention_backward(dout, q, k, v, out, lse), None)]
    run_case(f"backward alone, causal, B={B} H={H} T=S={T} D={D}", impls, args.repeats,
             flops=2.5 * fwd_flops)

    # ---- decode: one new token against a KV cache, GQA 9 query heads / 3 kv heads -----------
    B, H, HKV, D = 1, 9, 3, 64
    for S in (1024, 2048, 4096, 8192):
        q = rng.standard_normal((B, H, 1, D), dtype=np.float32)
        k, v = (rng.standard_normal((B, HKV, S, D), dtype=np.float32) for _ in range(2))
        impls = [("numpy", lambda: reference.attention(q, k, v, True), 15),
                 ("kernelgpt decode", lambda: ops.attention(q, k, v), 31),
                 ("kernelgpt flash", lambda: ops.attention(q, k, v, backend="flash"), 3)]
        if torch is not None:
            tq, tk, tv = (torch.from_numpy(x) for x in (q, k, v))

            def torch_decode():
                with torch.no_grad():
                    F.scaled_dot_product_attention(tq, tk, tv, is_causal=False, enable_gqa=True)
            impls.append(("torch", torch_decode, 31))
        run_case(f"decode, T=1 S={S}, B={B} H={H} Hkv={HKV} D={D}", impls, args.repeats,
                 flops=4 * B * H * S * D, nbytes=k.nbytes + v.nbytes)


if __name__ == "__main__":
    main()
