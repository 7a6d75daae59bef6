"""Attention: numpy reference vs kernelgpt (naive, flash, decode) vs PyTorch CPU.

    flock .bench.lock python benchmarks/bench_attention.py [--threads 2] [--repeats 5] [--no-naive]

Prints, per case, the median time of each implementation, its speed relative to numpy and to
PyTorch's scaled_dot_product_attention, and GFLOP/s (compute-bound cases: % of the machine's
fp32 FMA peak, measured at the start) or GB/s of K and V read (decode). FLOPs:
4 * B * H * T * S * D for the forward (two matmuls), halved when causal with T == S; 2.5x
that for the backward (five). Every library runs on the same number of threads; the
implementations take turns in 3 rounds (kernelgpt.bench.run_case). Times are medians over
all timed calls.
"""
import argparse

import numpy as np

import kernelgpt
from kernelgpt import ops, reference
from kernelgpt.bench import measure_fma_gflops, run_case, setup_threads, torch_or_none

TRAIN = (1, 12, 12, 1024, 1024, 64)  # B, H, Hkv, T, S, D: causal training shape, T == S
DECODE = (1, 9, 3, 1, None, 64)      # one new token against a KV cache of S, GQA 9 / 3


def inputs(rng, b, h, hkv, t, s, d):
    """q [b, h, t, d], k and v [b, hkv, s, d], dout [b, h, t, d]."""
    return (rng.standard_normal((b, h, t, d), dtype=np.float32),
            rng.standard_normal((b, hkv, s, d), dtype=np.float32),
            rng.standard_normal((b, hkv, s, d), dtype=np.float32),
            rng.standard_normal((b, h, t, d), dtype=np.float32))


def forward_impls(q, k, v, torch, naive=True):
    """[(label, fn, calls per round or None for --repeats)], causal."""
    impls = [("numpy", lambda: reference.attention(q, k, v, True), 2),
             ("kernelgpt flash", lambda: ops.attention(q, k, v), None)]
    if naive:
        impls.append(("kernelgpt naive", lambda: ops.attention(q, k, v, backend="naive"), 1))
    if torch is not None:
        tq, tk, tv = (torch.from_numpy(x) for x in (q, k, v))
        sdpa = torch.nn.functional.scaled_dot_product_attention

        def torch_fwd():
            with torch.no_grad():
                sdpa(tq, tk, tv, is_causal=True)
        impls.append(("torch", torch_fwd, None))
    return impls


def train_impls(q, k, v, dout, torch, naive=True):
    """Forward + backward, causal."""
    def numpy_train():
        o, lse = reference.attention(q, k, v, True)
        reference.attention_backward(dout, q, k, v, o, lse, True)

    def kg_train(backend):
        def step():
            o, lse = ops.attention(q, k, v, return_lse=True, backend=backend)
            ops.attention_backward(dout, q, k, v, o, lse, backend=backend)
        return step

    impls = [("numpy", numpy_train, 1), ("kernelgpt flash", kg_train("flash"), None)]
    if naive:
        impls.append(("kernelgpt naive", kg_train("naive"), 1))
    if torch is not None:
        tq, tk, tv = (torch.from_numpy(x).requires_grad_() for x in (q, k, v))
        tdout = torch.from_numpy(dout)

        def torch_train():
            for x in (tq, tk, tv):
                x.grad = None
            torch.nn.functional.scaled_dot_product_attention(
                tq, tk, tv, is_causal=True).backward(tdout)
        impls.append(("torch", torch_train, None))
    return impls


def decode_impls(q, k, v, torch):
    impls = [("numpy", lambda: reference.attention(q, k, v, True), 15),
             ("kernelgpt decode", lambda: ops.attention(q, k, v), 31),
             ("kernelgpt flash", lambda: ops.attention(q, k, v, backend="flash"), 3)]
    if torch is not None:
        tq, tk, tv = (torch.from_numpy(x) for x in (q, k, v))

        def torch_decode():
            with torch.no_grad():
                torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=False,
                                                                 enable_gqa=True)
        impls.append(("torch", torch_decode, 31))
    return impls


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per round")
    parser.add_argument("--no-naive", action="store_true", help="skip the (slow) naive kernels")
    args = parser.parse_args()
    torch = torch_or_none()
    _limiter = setup_threads(args.threads, torch=torch)
    peak_gflops = measure_fma_gflops(args.threads)
    print(f"threads: {args.threads}; kernelgpt path: {ops.kernel_paths()['attention']}; "
          f"isa: {kernelgpt.get_isa()}; torch: {torch.__version__ if torch else 'not installed'}; "
          f"fp32 FMA peak {peak_gflops:.1f} GFLOP/s")
    rng = np.random.default_rng(0)
    naive = not args.no_naive

    def case(title, impls, **kw):
        impls = [(name, fn, reps or args.repeats) for name, fn, reps in impls]
        run_case(title, impls, rounds=3, warmup=False, wake_single=False,
                 peak_gflops=peak_gflops, **kw)

    B, H, _, T, _, D = TRAIN
    q, k, v, dout = inputs(rng, *TRAIN)
    fwd_flops = 4 * B * H * T * T * D / 2
    out, lse = ops.attention(q, k, v, return_lse=True)
    shape = f"causal, B={B} H={H} T=S={T} D={D}"
    case(f"forward, {shape}", forward_impls(q, k, v, torch, naive), flops=fwd_flops)
    case(f"forward + backward, {shape}", train_impls(q, k, v, dout, torch, naive),
         flops=3.5 * fwd_flops)
    case(f"backward alone, {shape}",
         [("kernelgpt flash", lambda: ops.attention_backward(dout, q, k, v, out, lse), None)],
         flops=2.5 * fwd_flops)

    B, H, HKV, T, _, D = DECODE
    for S in (1024, 2048, 4096, 8192):
        qd, kc, vc, _ = inputs(rng, B, H, HKV, T, S, D)
        case(f"decode, T=1 S={S}, B={B} H={H} Hkv={HKV} D={D}", decode_impls(qd, kc, vc, torch),
             flops=4 * B * H * S * D, nbytes=kc.nbytes + vc.nbytes)


if __name__ == "__main__":
    main()
