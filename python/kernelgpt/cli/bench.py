"""`kernelgpt bench`: every kernel against its numpy baseline (and PyTorch CPU when
installed), side by side in one run, printed as one table.

Each case times every implementation in alternating rounds (numpy, torch, kernelgpt, numpy,
...) with a pause between libraries; the table shows the median. All libraries get the same
thread count. The "% peak" column compares with the machine's fp32 FMA rate and DRAM
bandwidth measured at the start. The method and the cases: kernelgpt/bench.py.
"""
from __future__ import annotations

import json

from .. import bench
from ._common import positive_int


def add_arguments(p):
    p.add_argument("--threads", type=positive_int, default=2, metavar="N",
                   help="threads for every library, >= 1")
    p.add_argument("--only", default="", metavar="FAMILIES", help="comma-separated kernel families to run "
                   f"({', '.join(bench.CASE_BUILDERS)}; default: all)")
    p.add_argument("--rounds", type=positive_int, default=5, metavar="N",
                   help="alternating timing rounds")
    p.add_argument("--quick", action="store_true", help="fewer shapes and rounds")
    p.add_argument("--no-torch", action="store_true", help="skip PyTorch even if installed")
    p.add_argument("--json", metavar="FILE", help="also save the results as JSON to FILE")


def _argv(args) -> list:
    """This command's arguments, to start it again (bench.reexec_without_openblas_overrides)."""
    argv = ["bench", "--threads", str(args.threads), "--rounds", str(args.rounds)]
    argv += ["--only", args.only] if args.only else []
    argv += ["--quick"] if args.quick else []
    argv += ["--no-torch"] if args.no_torch else []
    argv += ["--json", args.json] if args.json else []
    return argv


def main(args) -> int:
    bench.reexec_without_openblas_overrides(_argv(args))
    only = [s for s in args.only.split(",") if s]
    unknown = [s for s in only if s not in bench.CASE_BUILDERS]
    if unknown:
        raise ValueError(f"unknown kernel families {unknown}; known: {sorted(bench.CASE_BUILDERS)}")
    threads = args.threads
    torch = None if args.no_torch else bench.torch_or_none()
    limiter = bench.setup_threads(threads, torch=torch)
    peaks = bench.measure_peaks(threads)
    summary = bench.machine_summary(threads, peaks, torch)
    print("# " + ", ".join(f"{k}: {v}" for k, v in summary.items()), flush=True)
    rounds = 3 if args.quick else args.rounds
    results = []
    for name, builder in bench.CASE_BUILDERS.items():
        if only and name not in only:
            continue
        for case in builder(torch, args.quick):
            results.append(bench.run_bench_case(case, rounds))
            print(f"  {case.kernel} {case.shape}: " + ", ".join(
                f"{k} {v * 1e3:.3f} ms" for k, v in results[-1].seconds.items()), flush=True)
    print()
    print(bench.format_table(results, peaks))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": summary, "results": [r.__dict__ for r in results]}, f, indent=1)
    del limiter
    return 0
