"""Softmax, log-softmax and cross-entropy: numpy reference vs naive vs fast (vs PyTorch CPU).

    flock .bench.lock python benchmarks/bench_softmax.py [--threads 2] [--quick] [--repeats 5]
        [--no-naive] [--only vocab|attention]

Every case times each implementation in alternating rounds (numpy, naive, fast, torch,
numpy, ...; kernelgpt.bench.run_case) and prints the median. GB/s counts the bytes each
kernel must move, once each: inputs read + outputs written (softmax: 2 * 4 * N * V). The
peak is kernelgpt._C.stream_scale (dst = src * 1, read + write) on a 256 MiB array,
measured again in every round of every case because this machine's bandwidth drifts with
its neighbours' load.

"fresh out" calls allocate their result as the API does by default: for outputs beyond the
caches the OS then zeroes every new page before the kernel writes it, which costs about as
much as the kernel itself; "out=" rows reuse a preallocated output (as a training loop would).
"""
from __future__ import annotations

import argparse
import gc
import statistics

import numpy as np

import kernelgpt
from kernelgpt import ops, reference
from kernelgpt.bench import StreamPeak, run_case, setup_threads, time_calls, torch_or_none

# attention-shaped: causal scores, and a case that fits in the L3 cache
ATTENTION = [((16, 1024, 1024), True), ((64, 12, 256, 256), False), ((8, 256, 512), False)]


def logits(rng, shape):
    return rng.standard_normal(shape, dtype=np.float32) * 3


def vocab_impls(x, targets, probs, dy, torch, reps=1, naive=True):
    """{case: [(label, fn, calls)]} over logits x [N, V]: "softmax", "log_softmax",
    "cross_entropy + grad", "cross_entropy loss only", "softmax_backward" (of probs, dy)."""
    y = np.empty_like(x)
    cases = {
        "softmax": [("numpy", lambda: reference.softmax(x), reps),
                    ("naive (out=)", lambda: ops.softmax(x, out=y, backend="naive"), 1),
                    ("online (fresh out)", lambda: ops.softmax(x), reps),
                    ("online (out=)", lambda: ops.softmax(x, out=y), reps)],
        "log_softmax": [("numpy", lambda: reference.log_softmax(x), reps),
                        ("online (out=)", lambda: ops.log_softmax(x, out=y), reps)],
        "cross_entropy + grad": [
            ("numpy", lambda: reference.cross_entropy(x, targets, return_grad=True), reps),
            ("naive (out=)", lambda: ops.cross_entropy(x, targets, return_grad=True, out=y,
                                                       backend="naive"), 1),
            ("online (fresh out)", lambda: ops.cross_entropy(x, targets, return_grad=True), reps),
            ("online (out=)", lambda: ops.cross_entropy(x, targets, return_grad=True, out=y),
             reps)],
        "cross_entropy loss only": [("numpy", lambda: reference.cross_entropy(x, targets), reps),
                                    ("online", lambda: ops.cross_entropy(x, targets), reps)],
        "softmax_backward": [
            ("numpy", lambda: reference.softmax_backward(dy, probs), reps),
            ("naive (out=)", lambda: ops.softmax_backward(dy, probs, out=y, backend="naive"), 1),
            ("fused (out=)", lambda: ops.softmax_backward(dy, probs, out=y), reps)],
    }
    if not naive:
        cases = {k: [i for i in v if not i[0].startswith("naive")] for k, v in cases.items()}
    if torch is not None:
        tx, ty, tt = torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(targets)
        tp, tdy = torch.from_numpy(probs), torch.from_numpy(dy)

        def torch_ce():
            tl = tx.detach().requires_grad_(True)
            torch.nn.functional.cross_entropy(tl, tt).backward()
            return tl.grad
        cases["softmax"].append(("torch (out=)", lambda: torch.softmax(tx, -1, out=ty), reps))
        cases["log_softmax"].append(("torch (out=)", lambda: torch.log_softmax(tx, -1, out=ty),
                                     reps))
        cases["cross_entropy + grad"].append(("torch (autograd)", torch_ce, reps))
        cases["cross_entropy loss only"].append(
            ("torch", lambda: torch.nn.functional.cross_entropy(tx, tt), reps))
        cases["softmax_backward"].append(("torch", lambda: torch._softmax_backward_data(
            tdy, tp, -1, torch.float32), reps))
    return cases


def vocab_inputs(rng, n, v):
    """logits [n, v], targets (every 17th ignored: -100), probs = softmax, dy."""
    x = logits(rng, (n, v))
    targets = rng.integers(0, v, n)
    targets[::17] = -100
    return x, targets, ops.softmax(x), rng.standard_normal((n, v), dtype=np.float32)


def attention_impls(x, causal, torch, naive=True):
    """softmax of attention scores x, scale 0.125."""
    y = np.empty_like(x)
    impls = [("numpy", lambda: reference.softmax(x, scale=0.125, causal=causal), 3)]
    if naive:
        impls.append(("naive (out=)", lambda: ops.softmax(x, scale=0.125, causal=causal, out=y,
                                                          backend="naive"), 1))
    impls.append(("online (out=)", lambda: ops.softmax(x, scale=0.125, causal=causal, out=y), 10))
    if torch is not None and not causal:  # torch has no scale: give it x * 0.125 ready
        tx, ty = torch.from_numpy(x * np.float32(0.125)), torch.from_numpy(y)
        impls.append(("torch (prescaled, out=)", lambda: torch.softmax(tx, -1, out=ty), 10))
    return impls


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="smaller shapes, fewer repeats")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-naive", action="store_true", help="skip the (slow) naive versions")
    ap.add_argument("--only", choices=["vocab", "attention"], help="run one group of cases")
    args = ap.parse_args()
    torch = torch_or_none()
    _limiter = setup_threads(args.threads, torch=torch)
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
    reps = 2 if args.quick else 1
    naive = not args.no_naive
    for n, v in big if args.only != "attention" else []:
        x, targets, probs, dy = vocab_inputs(rng, n, v)
        cases = vocab_impls(x, targets, probs, dy, torch, reps, naive)
        moved = {"cross_entropy loss only": x.nbytes, "softmax_backward": 3 * x.nbytes}
        for name, impls in cases.items():
            run_case(f"{name} [{n}, {v}]", impls, rounds=args.repeats, peak=peak,
                     nbytes=moved.get(name, 2 * x.nbytes))
        del x, probs, dy, cases
        gc.collect()

    for shape, causal in ATTENTION if args.only != "vocab" else []:
        x = rng.standard_normal(shape, dtype=np.float32)
        run_case(f"softmax{' causal' if causal else ''} {list(shape)}, scale 0.125",
                 attention_impls(x, causal, torch, naive), rounds=args.repeats, peak=peak,
                 nbytes=2 * x.nbytes)


if __name__ == "__main__":
    main()
