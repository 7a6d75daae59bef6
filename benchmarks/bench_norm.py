"""layernorm / rmsnorm, forward and backward: numpy reference vs kernelgpt naive vs fast
(vs PyTorch CPU when installed), 2 threads.

    flock /work/main/.bench.lock env PYTHONPATH=python python3 benchmarks/bench_norm.py
    ... bench_norm.py --rows 8192 --cols 768      # another shape (GPT-2 small, 24 MiB)

kernelgpt "fast" writes into a preallocated out= (as the training loop does); "fast (new y)"
allocates its output like numpy and PyTorch do (fresh pages from the OS cost ~10-20% at
256 MiB). The backward kernels always allocate dx. Bytes counted: x read + y written
(forward), dy + x read + dx written (backward).
"""
import argparse

import numpy as np

from kernelgpt import ops, reference
from _timing import StreamPeak, paired_fraction_of_peak, run_case, setup_threads, torch_or_none


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=16384)
    parser.add_argument("--cols", type=int, default=4096)
    parser.add_argument("--no-naive", action="store_true", help="skip the one-thread naive version")
    args = parser.parse_args()
    _limiter = setup_threads()
    torch = torch_or_none()
    R, C = args.rows, args.cols
    rng = np.random.default_rng(0)
    x = rng.standard_normal((R, C), dtype=np.float32)
    dy = rng.standard_normal((R, C), dtype=np.float32)
    w = rng.standard_normal(C, dtype=np.float32)
    b = rng.standard_normal(C, dtype=np.float32)
    y = np.empty_like(x)
    n_bytes = x.nbytes
    big = n_bytes >= 64 << 20
    reps_np, reps_naive, reps_fast = (3, 2, 10) if big else (10, 5, 50)
    peak = StreamPeak()
    print(f"x [{R}, {C}] float32 = {n_bytes / 2**20:.0f} MiB; kernel paths: {ops.kernel_paths()['norm']}")

    # ---- layernorm forward
    impls = [("numpy", lambda: reference.layernorm(x, w, b, 1e-5), reps_np)]
    if not args.no_naive:
        impls.append(("naive (1 thread)", lambda: ops.layernorm(x, w, b, out=y, backend="naive"),
                      reps_naive))
    impls += [("fast", lambda: ops.layernorm(x, w, b, out=y), reps_fast),
              ("fast (new y)", lambda: ops.layernorm(x, w, b), reps_fast)]
    if torch is not None:
        tx, tw, tb = map(torch.from_numpy, (x, w, b))
        impls.append(("torch", lambda: torch.nn.functional.layer_norm(tx, (C,), tw, tb, 1e-5),
                      reps_fast))
    run_case(f"layernorm forward [{R}, {C}]", 2 * n_bytes, impls, peak)

    # ---- layernorm backward
    _, mean, rstd = ops.layernorm(x, w, b, return_stats=True)
    impls = [("numpy", lambda: reference.layernorm_backward(dy, x, w, mean, rstd), reps_np)]
    if not args.no_naive:
        impls.append(("naive (1 thread)",
                      lambda: ops.layernorm_backward(dy, x, w, mean, rstd, backend="naive"),
                      reps_naive))
    impls.append(("fast", lambda: ops.layernorm_backward(dy, x, w, mean, rstd), reps_fast))
    if torch is not None:
        tdy = torch.from_numpy(dy)
        _, tmean, trstd = torch.ops.aten.native_layer_norm(tx, [C], tw, tb, 1e-5)
        impls.append(("torch", lambda: torch.ops.aten.native_layer_norm_backward(
            tdy, tx, [C], tmean, trstd, tw, tb, [True, True, True]), reps_fast))
    run_case(f"layernorm backward [{R}, {C}] (dx, dweight, dbias)", 3 * n_bytes, impls, peak)

    # ---- rmsnorm forward
    impls = [("numpy", lambda: reference.rmsnorm(x, w, 1e-6), reps_np)]
    if not args.no_naive:
        impls.append(("naive (1 thread)", lambda: ops.rmsnorm(x, w, out=y, backend="naive"),
                      reps_naive))
    impls += [("fast", lambda: ops.rmsnorm(x, w, out=y), reps_fast),
              ("fast (new y)", lambda: ops.rmsnorm(x, w), reps_fast)]
    if torch is not None and hasattr(torch.nn.functional, "rms_norm"):
        impls.append(("torch", lambda: torch.nn.functional.rms_norm(tx, (C,), tw, 1e-6),
                      reps_fast))
    run_case(f"rmsnorm forward [{R}, {C}]", 2 * n_bytes, impls, peak)

    # ---- rmsnorm backward
    _, rstd = ops.rmsnorm(x, w, return_stats=True)
    impls = [("numpy", lambda: reference.rmsnorm_backward(dy, x, w, rstd), reps_np)]
    if not args.no_naive:
        impls.append(("naive (1 thread)",
                      lambda: ops.rmsnorm_backward(dy, x, w, rstd, backend="naive"), reps_naive))
    impls.append(("fast", lambda: ops.rmsnorm_backward(dy, x, w, rstd), reps_fast))
    run_case(f"rmsnorm backward [{R}, {C}] (dx, dweight)", 3 * n_bytes, impls, peak)

    print("\nfast vs the streaming bandwidth, alternating short measurements of each:")
    _, mean, rstd = ops.layernorm(x, w, b, return_stats=True)
    paired_fraction_of_peak("layernorm forward (out=)", 2 * n_bytes,
                            lambda: ops.layernorm(x, w, b, out=y), peak)
    paired_fraction_of_peak("layernorm backward (allocates dx)", 3 * n_bytes,
                            lambda: ops.layernorm_backward(dy, x, w, mean, rstd), peak)
    paired_fraction_of_peak("rmsnorm forward (out=)", 2 * n_bytes,
                            lambda: ops.rmsnorm(x, w, out=y), peak)
    paired_fraction_of_peak("rmsnorm backward (allocates dx)", 3 * n_bytes,
                            lambda: ops.rmsnorm_backward(dy, x, w, rstd), peak)


if __name__ == "__main__":
    main()
