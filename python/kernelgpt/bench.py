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


def _rand(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape, dtype=np.float32) * np.float32(scale))


def softmax_cases(torch, quick: bool) -> List[Case]:
    from . import ops, reference
    rng = np.random.default_rng(1)
    R, V = (2048, 50304) if quick else (4096, 50304)  # 824 MB in + out: far beyond the caches
    x = _rand(rng, R, V, scale=3.0)
    y = np.empty_like(x)
    targets = rng.integers(0, V, size=R)
    g = np.empty_like(x)
    sm = Case("softmax", f"[{R}x{V}]", bytes=2 * x.nbytes)
    sm.impls["numpy"] = lambda: reference.softmax(x)
    if torch is not None:
        tx, ty = torch.from_numpy(x), torch.from_numpy(y)
        sm.impls["torch"] = lambda: torch.softmax(tx, dim=-1, out=ty)
    sm.impls["kernelgpt"] = lambda: ops.softmax(x, out=y)
    ce = Case("cross_entropy fwd+grad", f"[{R}x{V}]", bytes=2 * x.nbytes)
    ce.impls["numpy"] = lambda: reference.cross_entropy(x, targets, return_grad=True)
    if torch is not None:
        tt = torch.from_numpy(targets)

        def torch_ce():
            t = torch.from_numpy(x).requires_grad_(True)
            torch.nn.functional.cross_entropy(t, tt).backward()
        ce.impls["torch"] = torch_ce
    ce.impls["kernelgpt"] = lambda: ops.cross_entropy(x, targets, return_grad=True, out=g)
    return [sm, ce]


def norm_activation_cases(torch, quick: bool) -> List[Case]:
    from . import ops, reference
    rng = np.random.default_rng(2)
    R, C = (4096, 4096) if quick else (8192, 4096)  # 128 MiB per array
    x = _rand(rng, R, C)
    w, b = _rand(rng, C), _rand(rng, C)
    y = np.empty_like(x)
    cases = []
    ln = Case("layernorm", f"[{R}x{C}]", bytes=2 * x.nbytes)
    ln.impls["numpy"] = lambda: reference.layernorm(x, w, b)
    if torch is not None:
        tx, tw, tb = map(torch.from_numpy, (x, w, b))
        ln.impls["torch"] = lambda: torch.nn.functional.layer_norm(tx, (C,), tw, tb)
    ln.impls["kernelgpt"] = lambda: ops.layernorm(x, w, b, out=y)
    cases.append(ln)
    rms = Case("rmsnorm", f"[{R}x{C}]", bytes=2 * x.nbytes)
    rms.impls["numpy"] = lambda: reference.rmsnorm(x, w)
    if torch is not None and hasattr(torch.nn.functional, "rms_norm"):
        rms.impls["torch"] = lambda: torch.nn.functional.rms_norm(tx, (C,), tw, 1e-6)
    rms.impls["kernelgpt"] = lambda: ops.rmsnorm(x, w, out=y)
    cases.append(rms)
    ge = Case("gelu (tanh)", f"[{R}x{C}]", bytes=2 * x.nbytes)
    ge.impls["numpy"] = lambda: reference.gelu(x)
    if torch is not None:
        ge.impls["torch"] = lambda: torch.nn.functional.gelu(tx, approximate="tanh")
    ge.impls["kernelgpt"] = lambda: ops.gelu(x, out=y)
    cases.append(ge)
    dy = _rand(rng, R, C)
    gb = Case("gelu backward", f"[{R}x{C}]", bytes=3 * x.nbytes)
    gb.impls["numpy"] = lambda: reference.gelu_backward(dy, x)
    gb.impls["kernelgpt"] = lambda: ops.gelu_backward(dy, x, out=y)
    cases.append(gb)
    return cases


def attention_cases(torch, quick: bool) -> List[Case]:
    from . import ops, reference
    rng = np.random.default_rng(3)
    B, H, T, D = 1, 12, 1024, 64
    q, k, v, dout = (_rand(rng, B, H, T, D) for _ in range(4))
    flops_fwd = 4.0 * B * H * T * T * D / 2  # causal: half the score matrix
    fwd = Case("attention fwd (causal)", f"B{B} H{H} T{T} D{D}", flops=flops_fwd)
    fwd.impls["numpy"] = lambda: reference.attention(q, k, v, True)
    if torch is not None:
        tq, tk, tv = map(torch.from_numpy, (q, k, v))
        sdpa = torch.nn.functional.scaled_dot_product_attention
        fwd.impls["torch"] = lambda: sdpa(tq, tk, tv, is_causal=True)
    fwd.impls["kernelgpt"] = lambda: ops.attention(q, k, v, causal=True)
    both = Case("attention fwd+bwd (causal)", f"B{B} H{H} T{T} D{D}", flops=flops_fwd * 3.5)

    def numpy_train():
        o, lse = reference.attention(q, k, v, True)
        reference.attention_backward(dout, q, k, v, o, lse, True)
    both.impls["numpy"] = numpy_train
    if torch is not None:
        td = torch.from_numpy(dout)

        def torch_train():
            a, b_, c = (t.clone().requires_grad_(True) for t in (tq, tk, tv))
            sdpa(a, b_, c, is_causal=True).backward(td)
        both.impls["torch"] = torch_train

    def kg_train():
        o, lse = ops.attention(q, k, v, causal=True, return_lse=True)
        ops.attention_backward(dout, q, k, v, o, lse, causal=True)
    both.impls["kernelgpt"] = kg_train
    S, Hq, Hkv = 4096, 9, 3
    qd = _rand(rng, 1, Hq, 1, D)
    kc, vc = _rand(rng, 1, Hkv, S, D), _rand(rng, 1, Hkv, S, D)
    dec = Case("attention decode", f"1 query, S{S} H{Hq}/{Hkv} D{D}", bytes=kc.nbytes + vc.nbytes)
    dec.impls["numpy"] = lambda: reference.attention(qd, kc, vc, True)
    if torch is not None:
        tqd, tkc, tvc = map(torch.from_numpy, (qd, kc, vc))
        dec.impls["torch"] = lambda: sdpa(tqd, tkc, tvc, enable_gqa=True)
    dec.impls["kernelgpt"] = lambda: ops.attention(qd, kc, vc, causal=True)
    return [fwd, both, dec]


def embedding_rope_adamw_cases(torch, quick: bool) -> List[Case]:
    from . import ops, reference
    rng = np.random.default_rng(4)
    cases = []
    V, C, N = 50257, 768, 8192
    table = _rand(rng, V, C)
    ids = rng.integers(0, V, size=N)
    emb_out = np.empty((N, C), np.float32)
    emb = Case("embedding", f"{N} ids of [{V}x{C}]", bytes=2 * emb_out.nbytes)
    emb.impls["numpy"] = lambda: reference.embedding(ids, table)
    if torch is not None:
        tt, ti = torch.from_numpy(table), torch.from_numpy(ids)
        emb.impls["torch"] = lambda: torch.nn.functional.embedding(ti, tt)
    emb.impls["kernelgpt"] = lambda: ops.embedding(ids, table, out=emb_out)
    cases.append(emb)
    x = _rand(rng, 8, 12, 1024, 64)
    ro = np.empty_like(x)
    rope = Case("rope (half)", "[8x12x1024x64]", bytes=2 * x.nbytes)
    rope.impls["numpy"] = lambda: reference.rope(x)
    rope.impls["kernelgpt"] = lambda: ops.rope(x, out=ro)
    cases.append(rope)
    n = (16 << 20) if quick else (64 << 20)
    p, g = _rand(rng, n, scale=0.1), _rand(rng, n, scale=0.01)
    m, v = np.zeros(n, np.float32), np.zeros(n, np.float32)
    step = [0]

    def kg_adamw():
        step[0] += 1
        ops.adamw_step(p, g, m, v, step=step[0], lr=1e-4, weight_decay=0.1)
    pn, mn, vn = p.copy(), m.copy(), v.copy()
    nstep = [0]

    def numpy_adamw():
        nstep[0] += 1
        reference.adamw_step(pn, g, mn, vn, nstep[0], 1e-4, weight_decay=0.1)
    ad = Case("adamw step", f"{n >> 20}M params", bytes=7.0 * 4 * n)  # reads p,g,m,v, writes p,m,v
    ad.impls["numpy"] = numpy_adamw
    if torch is not None:
        tp = torch.nn.Parameter(torch.from_numpy(p.copy()))
        tp.grad = torch.from_numpy(g)
        opt = torch.optim.AdamW([tp], lr=1e-4, weight_decay=0.1, foreach=True)
        ad.impls["torch"] = opt.step
    ad.impls["kernelgpt"] = kg_adamw
    cases.append(ad)
    return cases


# Kernel families register their case builders here: name -> builder(torch, quick).
CASE_BUILDERS: Dict[str, Callable] = {
    "matmul": matmul_cases,
    "softmax": softmax_cases,
    "norm": norm_activation_cases,
    "attention": attention_cases,
    "misc": embedding_rope_adamw_cases,
}


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
