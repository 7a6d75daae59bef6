"""layernorm / rmsnorm, forward and backward: numpy reference vs kernelgpt naive vs fast
(vs PyTorch CPU when installed), 2 threads.

    flock .bench.lock python benchmarks/bench_norm.py
    flock .bench.lock python benchmarks/bench_norm.py --rows 8192 --cols 768   # GPT-2 small, 24 MiB

kernelgpt "fast" writes into a preallocated out= (as the training loop does); "fast (new y)"
allocates its output like numpy and PyTorch do (fresh pages from the OS cost ~10-20% at
256 MiB). The backward kernels always allocate dx. Bytes counted: x read + y written
(forward), dy + x read + dx written (backward). Timing, threads and the stream peak:
kernelgpt/bench.py.
"""
import argparse

import numpy as np

from kernelgpt import ops, reference
from kernelgpt.bench import (StreamPeak, paired_fraction_of_peak, run_case, setup_threads,
                             torch_or_none)


def inputs(rng, R, C):
    """x, dy [R, C] and the weight, bias [C]."""
    return (rng.standard_normal((R, C), dtype=np.float32),
            rng.standard_normal((R, C), dtype=np.float32),
            rng.standard_normal(C, dtype=np.float32), rng.standard_normal(C, dtype=np.float32))


def case_impls(x, dy, w, b, torch, reps=(10, 5, 50), naive=True):
    """{case: [(label, fn, calls)]} for "layernorm forward", "layernorm backward", "rmsnorm
    forward", "rmsnorm backward"; reps: calls of numpy, naive, the rest."""
    reps_np, reps_naive, reps_fast = reps
    C = x.shape[-1]
    y = np.empty_like(x)
    _, mean, rstd = ops.layernorm(x, w, b, return_stats=True)
    _, rms_rstd = ops.rmsnorm(x, w, return_stats=True)
    cases = {
        "layernorm forward": [
            ("numpy", lambda: reference.layernorm(x, w, b, 1e-5), reps_np),
            ("naive (1 thread)", lambda: ops.layernorm(x, w, b, out=y, backend="naive"),
             reps_naive),
            ("fast", lambda: ops.layernorm(x, w, b, out=y), reps_fast),
            ("fast (new y)", lambda: ops.layernorm(x, w, b), reps_fast)],
        "layernorm backward": [
            ("numpy", lambda: reference.layernorm_backward(dy, x, w, mean, rstd), reps_np),
            ("naive (1 thread)",
             lambda: ops.layernorm_backward(dy, x, w, mean, rstd, backend="naive"), reps_naive),
            ("fast", lambda: ops.layernorm_backward(dy, x, w, mean, rstd), reps_fast)],
        "rmsnorm forward": [
            ("numpy", lambda: reference.rmsnorm(x, w, 1e-6), reps_np),
            ("naive (1 thread)", lambda: ops.rmsnorm(x, w, out=y, backend="naive"), reps_naive),
            ("fast", lambda: ops.rmsnorm(x, w, out=y), reps_fast),
            ("fast (new y)", lambda: ops.rmsnorm(x, w), reps_fast)],
        "rmsnorm backward": [
            ("numpy", lambda: reference.rmsnorm_backward(dy, x, w, rms_rstd), reps_np),
            ("naive (1 thread)", lambda: ops.rmsnorm_backward(dy, x, w, rms_rstd, backend="naive"),
             reps_naive),
            ("fast", lambda: ops.rmsnorm_backward(dy, x, w, rms_rstd), reps_fast)],
    }
    if not naive:
        cases = {k: [i for i in v if not i[0].startswith("naive")] for k, v in cases.items()}
    if torch is not None:
        F, aten = torch.nn.functional, torch.ops.aten
        tx, tdy, tw, tb = map(torch.from_numpy, (x, dy, w, b))
        _, tmean, trstd = aten.native_layer_norm(tx, [C], tw, tb, 1e-5)
        cases["layernorm forward"].append(
            ("torch", lambda: F.layer_norm(tx, (C,), tw, tb, 1e-5), reps_fast))
        cases["layernorm backward"].append(("torch", lambda: aten.native_layer_norm_backward(
            tdy, tx, [C], tmean, trstd, tw, tb, [True, True, True]), reps_fast))
        if hasattr(F, "rms_norm"):
            cases["rmsnorm forward"].append(
                ("torch", lambda: F.rms_norm(tx, (C,), tw, 1e-6), reps_fast))
    return cases


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=16384)
    parser.add_argument("--cols", type=int, default=4096)
    parser.add_argument("--no-naive", action="store_true", help="skip the one-thread naive version")
    args = parser.parse_args()
    _limiter = setup_threads()
    torch = torch_or_none()
    R, C = args.rows, args.cols
    x, dy, w, b = inputs(np.random.default_rng(0), R, C)
    n_bytes = x.nbytes
    reps = (3, 2, 10) if n_bytes >= 64 << 20 else (10, 5, 50)
    peak = StreamPeak()
    print(f"x [{R}, {C}] float32 = {n_bytes / 2**20:.0f} MiB; "
          f"kernel paths: {ops.kernel_paths()['norm']}")
    cases = case_impls(x, dy, w, b, torch, reps, naive=not args.no_naive)
    titles = {"layernorm backward": " (dx, dweight, dbias)", "rmsnorm backward": " (dx, dweight)"}
    for name, impls in cases.items():
        nbytes = (3 if "backward" in name else 2) * n_bytes
        run_case(f"{name} [{R}, {C}]{titles.get(name, '')}", impls, nbytes=nbytes, peak=peak,
                 warmup=False)

    print("\nfast vs the streaming bandwidth, alternating short measurements of each:")
    for name, impls in cases.items():
        what = "(allocates dx)" if "backward" in name else "(out=)"
        nbytes = (3 if "backward" in name else 2) * n_bytes
        paired_fraction_of_peak(f"{name} {what}", nbytes, dict((k, f) for k, f, _ in impls)["fast"],
                                peak)


if __name__ == "__main__":
    main()
