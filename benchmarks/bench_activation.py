"""Activations, forward and backward: numpy reference vs kernelgpt naive vs fast (vs PyTorch
CPU when installed), 2 threads.

    flock .bench.lock python benchmarks/bench_activation.py
    flock .bench.lock python benchmarks/bench_activation.py --only gelu --rows 8192 --cols 3072

kernelgpt "fast" writes into a preallocated out= (as the training loop does); "fast (new y)"
allocates its output like numpy and PyTorch do. Bytes counted: x read + y written (forward),
dy + x read + dx written (backward); swiglu: gate + up read + y written, and dy + gate + up
read + dgate + dup written. The exact (erf) gelu runs on a 1/8 size array: the numpy
reference calls math.erfc per element (numpy has no erf). The numpy references are written
for accuracy (stable sigmoid, exp of -|x| only), and their exp underflows into slow denormal
arithmetic for large |x|; gelu also gets a row for the plain textbook numpy formula.
Timing, threads and the stream peak: kernelgpt/bench.py.
"""
import argparse

import numpy as np

from kernelgpt import ops, reference
from kernelgpt.bench import (StreamPeak, paired_fraction_of_peak, run_case, setup_threads,
                             torch_or_none)

NAMES = ["gelu", "gelu_erf", "relu", "sigmoid", "tanh", "silu", "swiglu"]


def inputs(rng, rows, cols):
    """x (scaled by 2: large |x| reach the slow tails), dy and up, [rows, cols] float32."""
    return (rng.standard_normal((rows, cols), dtype=np.float32) * 2,
            rng.standard_normal((rows, cols), dtype=np.float32),
            rng.standard_normal((rows, cols), dtype=np.float32))


def torch_impls(torch, name, x, dy, up):
    """(forward, backward) PyTorch callables for one activation, or (None, None)."""
    if torch is None:
        return None, None
    tx, tdy, tup = map(torch.from_numpy, (x, dy, up))
    F, aten = torch.nn.functional, torch.ops.aten
    if name == "gelu":
        return (lambda: F.gelu(tx, approximate="tanh"),
                lambda: aten.gelu_backward(tdy, tx, approximate="tanh"))
    if name == "gelu_erf":
        return lambda: F.gelu(tx), lambda: aten.gelu_backward(tdy, tx)
    if name == "relu":
        return lambda: torch.relu(tx), lambda: aten.threshold_backward(tdy, tx, 0)
    if name == "sigmoid":
        ty = torch.sigmoid(tx)  # PyTorch's backward takes the output
        return lambda: torch.sigmoid(tx), lambda: aten.sigmoid_backward(tdy, ty)
    if name == "tanh":
        ty = torch.tanh(tx)
        return lambda: torch.tanh(tx), lambda: aten.tanh_backward(tdy, ty)
    if name == "silu":
        return lambda: F.silu(tx), lambda: aten.silu_backward(tdy, tx)
    if name == "swiglu":
        return lambda: F.silu(tx) * tup, None
    return None, None


def case_impls(name, x, dy, up, torch, reps=(5, 3, 30), naive=True):
    """(forward impls, backward impls, forward bytes, backward bytes) of one activation:
    lists of (label, fn, calls); reps: calls of numpy, naive, the rest."""
    reps_np, reps_naive, reps_fast = reps
    y, dx = np.empty_like(x), np.empty_like(x)
    n = x.nbytes
    if name == "swiglu":
        fwd = [("numpy", lambda: reference.swiglu(x, up), reps_np),
               ("naive (1 thread)", lambda: ops.swiglu(x, up, out=y, backend="naive"), reps_naive),
               ("fast", lambda: ops.swiglu(x, up, out=y), reps_fast),
               ("fast (new y)", lambda: ops.swiglu(x, up), reps_fast)]
        bwd = [("numpy", lambda: reference.swiglu_backward(dy, x, up), reps_np),
               ("naive (1 thread)", lambda: ops.swiglu_backward(dy, x, up, backend="naive"),
                reps_naive),
               ("fast (allocates both)", lambda: ops.swiglu_backward(dy, x, up), reps_fast)]
        fwd_bytes, bwd_bytes = 3 * n, 5 * n
    else:
        op = name.split("_")[0]
        kw = {"approximate": "none"} if name == "gelu_erf" else {}
        ref, ref_b = getattr(reference, op), getattr(reference, op + "_backward")
        f, f_b = getattr(ops, op), getattr(ops, op + "_backward")
        fwd = [("numpy", lambda: ref(x, **kw), reps_np),
               ("naive (1 thread)", lambda: f(x, out=y, backend="naive", **kw), reps_naive),
               ("fast", lambda: f(x, out=y, **kw), reps_fast),
               ("fast (new y)", lambda: f(x, **kw), reps_fast)]
        bwd = [("numpy", lambda: ref_b(dy, x, **kw), reps_np),
               ("naive (1 thread)", lambda: f_b(dy, x, out=dx, backend="naive", **kw), reps_naive),
               ("fast", lambda: f_b(dy, x, out=dx, **kw), reps_fast),
               ("fast (new dx)", lambda: f_b(dy, x, **kw), reps_fast)]
        fwd_bytes, bwd_bytes = 2 * n, 3 * n
    if name == "gelu":  # also the plain textbook formula, without the stable sigmoid
        fwd.insert(1, ("numpy (textbook tanh)",
                       lambda: 0.5 * x * (1 + np.tanh(0.7978845608 * (x + 0.044715 * x * x * x))),
                       reps_np))
    if not naive:
        fwd = [i for i in fwd if not i[0].startswith("naive")]
        bwd = [i for i in bwd if not i[0].startswith("naive")]
    t_fwd, t_bwd = torch_impls(torch, name, x, dy, up)
    if t_fwd is not None:
        fwd.append(("torch", t_fwd, reps_fast))
    if t_bwd is not None:
        bwd.append(("torch", t_bwd, reps_fast))
    return fwd, bwd, fwd_bytes, bwd_bytes


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=16384)
    parser.add_argument("--cols", type=int, default=4096)
    parser.add_argument("--only", nargs="*", choices=NAMES, default=NAMES)
    parser.add_argument("--no-naive", action="store_true", help="skip the one-thread naive version")
    args = parser.parse_args()
    _limiter = setup_threads()
    torch = torch_or_none()
    rng = np.random.default_rng(0)
    peak = StreamPeak()
    print(f"kernel paths: {ops.kernel_paths()['activation']}")
    for name in args.only:
        R = args.rows // 8 if name == "gelu_erf" else args.rows
        x, dy, up = inputs(rng, R, args.cols)
        reps = (3, 2, 10) if x.nbytes >= 64 << 20 else (5, 3, 30)
        fwd, bwd, fwd_bytes, bwd_bytes = case_impls(name, x, dy, up, torch, reps,
                                                    naive=not args.no_naive)
        shape = f"[{R}, {args.cols}]"
        run_case(f"{name} forward {shape}", fwd, nbytes=fwd_bytes, peak=peak, warmup=False)
        run_case(f"{name} backward {shape}", bwd, nbytes=bwd_bytes, peak=peak, warmup=False)
        fast_fwd = dict((k, f) for k, f, _ in fwd)["fast"]
        fast_bwd = [f for k, f, _ in bwd if k.startswith("fast")][0]
        print("fast vs the streaming bandwidth, alternating short measurements of each:")
        paired_fraction_of_peak(f"{name} forward (out=)", fwd_bytes, fast_fwd, peak)
        paired_fraction_of_peak(f"{name} backward", bwd_bytes, fast_bwd, peak)


if __name__ == "__main__":
    main()
