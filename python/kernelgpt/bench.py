"""`kernelgpt bench`: every kernel against its numpy baseline (and PyTorch CPU when
installed), side by side in one run, printed as one table.

Method: each case times every implementation in alternating rounds (numpy, torch,
kernelgpt, numpy, ...) with a pause between libraries so that the worker threads a library
leaves spinning after a call (OpenBLAS, OpenMP) do not steal cycles from the next one; the
table shows the median. All libraries get the same thread count. The "% peak" column
compares with the machine's fp32 FMA rate and DRAM bandwidth measured at the start.

OpenBLAS picks its kernel from the CPU unless OPENBLAS_CORETYPE forces one; a forced (often
slower) kernel would flatter us, so the benchmark re-runs itself without OPENBLAS_CORETYPE
and OPENBLAS_L2_SIZE and reports the kernel threadpoolctl shows.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np

_OPENBLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


@dataclass
class Case:
    kernel: str           # "matmul"
    shape: str            # "[128x576]@[576x1536]"
    flops: float = 0.0    # per call, 0 if memory-bound
    bytes: float = 0.0    # DRAM traffic per call (read + write once), 0 if compute-bound
    impls: Dict[str, Callable[[], object]] = field(default_factory=dict)


@dataclass
class Result:
    kernel: str
    shape: str
    seconds: Dict[str, float]
    flops: float
    bytes: float


# ---- peaks ----------------------------------------------------------------------------------

def measure_peaks(threads: int) -> dict:
    from . import _C
    gflops = max(_C.measure_fma_gflops(threads, 0.2) for _ in range(3))
    n = 64 << 20  # 256 MiB per array: far beyond the caches
    src = np.random.default_rng(0).random(n, dtype=np.float32)
    dst = np.empty_like(src)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        _C.stream_scale(src, dst, 1.0)
        times.append(time.perf_counter() - t0)
    gbs = 2 * src.nbytes / min(times) / 1e9
    return {"fma_gflops": gflops, "dram_gbs": gbs}


# ---- the cases ------------------------------------------------------------------------------

def _torch():
    try:
        import torch  # noqa: F401
        return torch
    except Exception:
        return None


def matmul_cases(torch, quick: bool) -> List[Case]:
    from . import ops
    rng = np.random.default_rng(0)
    shapes = [(128, 576, 1536), (512, 768, 3072), (1024, 1024, 1024), (1, 576, 1536)]
    if quick:
        shapes = [(128, 576, 1536), (1024, 1024, 1024)]
    cases = []
    for m, k, n in shapes:
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        c = np.empty((m, n), np.float32)
        case = Case("matmul", f"[{m}x{k}]@[{k}x{n}]", flops=2.0 * m * n * k)
        case.impls["numpy"] = lambda a=a, b=b, c=c: np.matmul(a, b, out=c)
        if torch is not None:
            ta, tb, tc = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(c)
            case.impls["torch"] = lambda ta=ta, tb=tb, tc=tc: torch.matmul(ta, tb, out=tc)
        case.impls["kernelgpt"] = lambda a=a, b=b, c=c: ops.matmul(a, b, out=c)
        cases.append(case)
    return cases


# Kernel families register their case builders here: name -> builder(torch, quick).
CASE_BUILDERS: Dict[str, Callable] = {"matmul": matmul_cases}


# ---- timing ---------------------------------------------------------------------------------

def _time_once(fn, min_seconds=0.05, max_reps=200) -> float:
    """Median seconds per call over a block of calls lasting about min_seconds."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    reps = int(min(max_reps, max(1, min_seconds / max(first, 1e-9))))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_case(case: Case, rounds: int, pause: float) -> Result:
    for fn in case.impls.values():  # warm up: caches, page faults, thread pools
        fn()
    samples: Dict[str, List[float]] = {name: [] for name in case.impls}
    for _ in range(rounds):
        for name, fn in case.impls.items():
            time.sleep(pause)
            samples[name].append(_time_once(fn))
    return Result(case.kernel, case.shape, {k: statistics.median(v) for k, v in samples.items()},
                  case.flops, case.bytes)


# ---- output ---------------------------------------------------------------------------------

def format_table(results: List[Result], peaks: dict) -> str:
    head = ["kernel", "shape", "numpy ms", "torch ms", "kernelgpt ms", "vs numpy", "vs torch",
            "kernelgpt rate", "% peak"]
    rows = []
    for r in results:
        s = r.seconds
        kg = s.get("kernelgpt")
        npy, tor = s.get("numpy"), s.get("torch")
        if r.flops:
            rate = f"{r.flops / kg / 1e9:.1f} GFLOP/s"
            pct = f"{100 * r.flops / kg / 1e9 / peaks['fma_gflops']:.0f}%"
        elif r.bytes:
            rate = f"{r.bytes / kg / 1e9:.1f} GB/s"
            pct = f"{100 * r.bytes / kg / 1e9 / peaks['dram_gbs']:.0f}%"
        else:
            rate, pct = "", ""
        rows.append([
            r.kernel, r.shape,
            f"{npy * 1e3:.3f}" if npy else "-",
            f"{tor * 1e3:.3f}" if tor else "-",
            f"{kg * 1e3:.3f}",
            f"{npy / kg:.2f}x" if npy else "-",
            f"{tor / kg:.2f}x" if tor else "-",
            rate, pct,
        ])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    out = [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in rows]
    return "\n".join(out)


def machine_summary(threads: int, peaks: dict) -> dict:
    from . import _C
    info = _C.cpu_info()
    blas = "unknown"
    try:
        import threadpoolctl
        for pool in threadpoolctl.threadpool_info():
            if pool.get("internal_api") in ("openblas", "mkl", "blis"):
                blas = f"{pool['internal_api']} {pool.get('version')} ({pool.get('architecture')})"
                break
    except Exception:
        pass
    torch = _torch()
    return {
        "cpu": f"{info['vendor']} {info['brand']}".strip(),
        "isa": info["active_isa"],
        "threads": threads,
        "numpy": np.__version__,
        "numpy_blas": blas,
        "torch": getattr(torch, "__version__", None) if torch else None,
        "python": platform.python_version(),
        "fma_peak_gflops": round(peaks["fma_gflops"], 1),
        "dram_gbs": round(peaks["dram_gbs"], 1),
    }


# ---- command line ---------------------------------------------------------------------------

def add_arguments(p):
    p.add_argument("--threads", type=int, default=2, help="threads for every library (2)")
    p.add_argument("--only", default="", help="comma-separated kernel families to run")
    p.add_argument("--rounds", type=int, default=5, help="alternating timing rounds (5)")
    p.add_argument("--quick", action="store_true", help="fewer shapes and rounds")
    p.add_argument("--no-torch", action="store_true", help="skip PyTorch even if installed")
    p.add_argument("--json", metavar="FILE", help="also save the results as JSON")


def _reexec_without_openblas_overrides():
    """Starts this benchmark again without OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE (they must be
    unset before numpy loads OpenBLAS, so the running process cannot drop them)."""
    if os.environ.get("KERNELGPT_BENCH_REEXEC") == "1":
        return
    if not any(v in os.environ for v in _OPENBLAS_VARS):
        return
    env = {k: v for k, v in os.environ.items() if k not in _OPENBLAS_VARS}
    env["KERNELGPT_BENCH_REEXEC"] = "1"
    argv = sys.argv[1:]
    if "bench" in argv:
        argv = argv[argv.index("bench") + 1:]
    print("# re-running without " + ", ".join(v for v in _OPENBLAS_VARS if v in os.environ),
          flush=True)
    os.execve(sys.executable, [sys.executable, "-m", "kernelgpt", "bench"] + argv, env)


def main(args) -> int:
    _reexec_without_openblas_overrides()
    from . import _C
    threads = args.threads
    _C.set_num_threads(threads)
    torch = None if args.no_torch else _torch()
    if torch is not None:
        torch.set_num_threads(threads)
    try:
        import threadpoolctl
        limiter = threadpoolctl.threadpool_limits(threads)
    except ImportError:
        limiter = None
    only = [s for s in args.only.split(",") if s]
    unknown = [s for s in only if s not in CASE_BUILDERS]
    if unknown:
        raise ValueError(f"unknown kernel families {unknown}; known: {sorted(CASE_BUILDERS)}")
    peaks = measure_peaks(threads)
    summary = machine_summary(threads, peaks)
    print("# " + ", ".join(f"{k}: {v}" for k, v in summary.items()), flush=True)
    rounds = 3 if args.quick else args.rounds
    results = []
    for name, builder in CASE_BUILDERS.items():
        if only and name not in only:
            continue
        for case in builder(torch, args.quick):
            results.append(run_case(case, rounds, pause=0.2))
            print(f"  {case.kernel} {case.shape}: " + ", ".join(
                f"{k} {v * 1e3:.3f} ms" for k, v in results[-1].seconds.items()), flush=True)
    print()
    print(format_table(results, peaks))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": summary, "results": [r.__dict__ for r in results]}, f, indent=1)
    del limiter
    return 0
