"""The one timing harness of kernelgpt's benchmarks, and the kernel cases of `kernelgpt bench`.

Every benchmark (the `kernelgpt bench` table, benchmarks/bench_*.py, the pytest-benchmark
files benchmarks/test_bench_*.py) takes its threads, timing loops, peaks and tables from here.

Threads: every library gets the same count (2 unless KERNELGPT_THREADS says): kernelgpt,
numpy's BLAS (threadpoolctl) and PyTorch (:func:`setup_threads`).

Timing: a time is the median of repeated calls after a warm-up. Side by side, the
implementations of a case take turns in rounds (numpy, torch, kernelgpt, numpy, ...); before
each turn we sleep 0.2 s, because the worker threads a library leaves spinning after a call
(OpenBLAS, OpenMP) would steal cycles from the next one, then make one untimed call that
wakes the library's own threads (:func:`alternate`).

Peaks: the fp32 FMA rate (kernelgpt._C.measure_fma_gflops), the bf16 dot-product rate
(measure_bf16_gflops: the % peak of the bf16 matmul rows) and the DRAM bandwidth, which
counts the bytes a kernel must read plus the bytes it must write, once each; the reference
is kernelgpt._C.stream_scale (dst = src * 1) on 256 MiB, counted the same way
(:class:`StreamPeak`). On a shared machine the bandwidth drifts by tens of percent over
minutes, so a case can measure it alongside its kernels, in the same rounds.

OpenBLAS picks its kernel from the CPU unless OPENBLAS_CORETYPE forces one; a forced (often
slower) kernel would flatter us, so `kernelgpt bench` re-runs itself without
OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE and reports the kernel threadpoolctl shows.
"""
from __future__ import annotations

import gc
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import _C, ops, reference

try:
    import threadpoolctl  # pins numpy's BLAS threads (optional)
except ImportError:
    threadpoolctl = None

THREADS = int(os.environ.get("KERNELGPT_THREADS", "2"))
PAUSE = 0.2  # seconds between libraries: OpenBLAS / OpenMP worker threads spin that long
PEAK = "(peak: stream_scale)"
_OPENBLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")

# an implementation in a case: (name, fn, calls per round; None: as many as fill ~0.1 s)
Impl = Tuple[str, Callable[[], object], Optional[int]]


# ---- threads --------------------------------------------------------------------------------

def torch_or_none():
    """PyTorch if it imports, else None (it is an optional peer)."""
    try:
        import torch
        return torch
    except Exception:
        return None


def setup_threads(threads: Optional[int] = None, torch=True):
    """Pins kernelgpt, numpy's BLAS and PyTorch (the module given, or the installed one
    unless torch=None/False) to the same thread count (default THREADS). Returns the
    threadpoolctl limiter, which must be kept alive (None without threadpoolctl)."""
    threads = threads or THREADS
    _C.set_num_threads(threads)
    limiter = threadpoolctl.threadpool_limits(threads) if threadpoolctl else None
    if torch is True:
        torch = torch_or_none()
    if torch:
        torch.set_num_threads(threads)
    return limiter


# ---- timing ---------------------------------------------------------------------------------

def time_calls(fn, repeats: int, collect=False) -> List[float]:
    """Seconds of each of `repeats` calls (collect: gc.collect() before each, untimed)."""
    times = []
    for _ in range(repeats):
        if collect:
            gc.collect()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def median_best(fn, repeats: int, collect=False) -> Tuple[float, float]:
    """(median, best) seconds of `repeats` calls after one warm-up call (page faults of the
    output, thread pools, caches). On a shared machine another process often takes a core
    for a whole time slice; the best is the kernel's own speed."""
    fn()
    times = time_calls(fn, repeats, collect)
    return statistics.median(times), min(times)


def median_time(fn, repeats: int, collect=False) -> float:
    """Median seconds of `repeats` calls after one warm-up call."""
    return median_best(fn, repeats, collect)[0]


def median_time_cuda(fn, repeats: int, cupy) -> float:
    """Median seconds of `repeats` calls after a warm-up call (and CuPy's lazy kernel
    compilation), each timed with CUDA events on CuPy's current stream: the GPU's time."""
    fn()
    times = []
    for _ in range(repeats):
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, stop) * 1e-3)
    return statistics.median(times)


def alternate(impls: Sequence[Impl], rounds: int, *, pause=PAUSE, warmup=True,
              wake_single=True, fill=0.1, max_reps=50, per_round=False) -> Dict[str, float]:
    """Times implementations side by side: `rounds` times, each one in turn sleeps `pause`,
    makes one untimed call (it wakes the library's threads, which a training loop never
    waits for; with wake_single=False it is skipped after the first round for
    implementations timed once per round, the slow ones) and then its calls (reps, or as
    many as fill `fill` seconds judged from the untimed call, at most max_reps).
    warmup: one call of each before the rounds. Returns {name: median seconds} over every
    timed call, or with per_round the median of the medians of each round. An entry may
    appear twice (a reference measured at both ends of each round): its calls pool."""
    samples: Dict[str, List[float]] = {name: [] for name, _, _ in impls}
    if warmup:
        for _, fn, _ in impls:
            fn()
    for round_ in range(rounds):
        for name, fn, reps in impls:
            time.sleep(pause)
            if reps is None or reps > 1 or wake_single or round_ == 0:
                first = time_calls(fn, 1)[0]  # the untimed call: its time sizes the block
            n = reps or int(min(max_reps, max(1, fill / max(first, 1e-9))))
            times = time_calls(fn, n)
            samples[name] += [statistics.median(times)] if per_round else times
    return {name: statistics.median(s) for name, s in samples.items()}


# ---- peaks ----------------------------------------------------------------------------------

class StreamPeak:
    """dst = src * 1 over two 256 MiB arrays (kernelgpt._C.stream_scale), far beyond the
    caches: the machine's DRAM bandwidth, counted as read + write."""

    def __init__(self, mib: int = 256):
        self.src = np.random.default_rng(0).random(mib << 18, dtype=np.float32)
        self.dst = np.empty_like(self.src)
        self.bytes = 2 * self.src.nbytes

    def __call__(self):
        _C.stream_scale(self.src, self.dst, 1.0)

    def gbs(self, seconds: float) -> float:
        return self.bytes / seconds / 1e9

    def measure(self, repeats=5) -> float:
        """GB/s of the median pass (after a warm-up one)."""
        return self.gbs(median_time(self, repeats))

    def best(self, repeats=7) -> float:
        """GB/s of the fastest pass (after a warm-up one)."""
        return self.gbs(median_best(self, repeats)[1])


def measure_fma_gflops(threads: int) -> float:
    """The machine's fp32 FMA rate on `threads` threads, GFLOP/s (best of 3)."""
    return max(_C.measure_fma_gflops(threads, 0.2) for _ in range(3))


def measure_bf16_gflops(threads: int) -> float:
    """The machine's bf16 dot-product rate (VDPBF16PS; the fp32 FMA rate without AVX512-BF16)
    on `threads` threads, GFLOP/s (best of 3)."""
    return max(_C.measure_bf16_gflops(threads, 0.2) for _ in range(3))


def measure_peaks(threads: int) -> dict:
    """The fp32 FMA rate, the bf16 dot-product rate and the streaming bandwidth (best of 5
    passes)."""
    return {"fma_gflops": measure_fma_gflops(threads), "bf16_gflops": measure_bf16_gflops(threads),
            "dram_gbs": StreamPeak().best(5)}


def paired_with_peak(fn, peak: StreamPeak, rounds: int) -> List[Tuple[float, float, float]]:
    """Alternates short stream / kernel measurements (robust to this machine's slow drifts
    of bandwidth): per round (kernel median s, kernel best s, stream GB/s)."""
    fn()
    pairs = []
    for _ in range(rounds):
        p = peak.measure(repeats=3)
        time.sleep(0.05)
        pairs.append(median_best(fn, 3) + (p,))
    return pairs


def paired_median(fn, peak: StreamPeak, rounds: int) -> Tuple[float, float, float]:
    """(median kernel s, best kernel s, median stream GB/s) of paired_with_peak's rounds."""
    times, bests, peaks = zip(*paired_with_peak(fn, peak, rounds))
    return statistics.median(times), min(bests), statistics.median(peaks)


def paired_fraction_of_peak(title, nbytes, fn, peak: StreamPeak, rounds=11):
    """Prints the median of the per-pair ratios kernel GB/s / stream GB/s."""
    pairs = paired_with_peak(fn, peak, rounds)
    gbs = [nbytes / t / 1e9 for t, _, _ in pairs]
    ratios = sorted(g / p for g, (_, _, p) in zip(gbs, pairs))
    print(f"  {title:44s} {statistics.median(gbs):6.1f} GB/s vs stream "
          f"{statistics.median(p for _, _, p in pairs):5.1f} GB/s: median "
          f"{100 * statistics.median(ratios):4.0f}% of peak (pairs range "
          f"{100 * ratios[0]:.0f}-{100 * ratios[-1]:.0f}%)")


# ---- ratio tables ---------------------------------------------------------------------------

def print_ratios(title, seconds: Dict[str, float], *, nbytes=None, flops=None, peak_gbs=None,
                 peak_gflops=None, own_bytes: Optional[Dict[str, float]] = None):
    """One block of a benchmark's table: per implementation the time, the speed-ups over
    "numpy" and "torch" (when those ran), GB/s (nbytes per call; own_bytes overrides it
    per implementation) and GFLOP/s, each as % of its peak when given."""
    own_bytes = own_bytes or {}
    base, peer = seconds.get("numpy"), seconds.get("torch")
    note = [f"{nbytes / 1e6:.1f} MB moved per call"] if nbytes else []
    note += [f"stream peak {peak_gbs:.1f} GB/s"] if nbytes and peak_gbs else []
    print(f"\n{title}" + (f"   ({'; '.join(note)})" if note else ""))
    width = max([24] + [len(name) for name in seconds])
    for name, t in seconds.items():
        line = f"  {name:<{width}} {t * 1e3:10.3f} ms"
        line += f"  {base / t:7.2f}x numpy" if base else ""
        line += f"  {peer / t:6.2f}x torch" if peer else ""
        if flops:
            gf = flops / t / 1e9
            line += f"  {gf:7.1f} GFLOP/s"
            line += f" ({100 * gf / peak_gflops:5.1f}% peak)" if peak_gflops else ""
        b = own_bytes.get(name, nbytes)
        if b:
            line += f"  {b / t / 1e9:7.1f} GB/s"
            line += f" ({100 * b / t / 1e9 / peak_gbs:5.1f}% peak)" if peak_gbs else ""
        print(line)


def run_case(title, impls: Sequence[Impl], *, rounds=1, nbytes=None, flops=None, peak=None,
             peak_gflops=None, own_bytes=None, **timing) -> Dict[str, float]:
    """Times `impls` side by side (:func:`alternate`, `timing` its options) and prints their
    ratio table. peak: the DRAM reference, GB/s measured beforehand or a StreamPeak, which
    then runs first and last in every round (3 passes each) so that the case is compared
    with the bandwidth of its own minutes. Returns {name: median seconds}."""
    impls = list(impls)
    if isinstance(peak, StreamPeak):
        impls = [(PEAK, peak, 3)] + impls + [(PEAK, peak, 3)]
    seconds = alternate(impls, rounds, **timing)
    if isinstance(peak, StreamPeak):
        peak = peak.gbs(seconds.pop(PEAK))
    print_ratios(title, seconds, nbytes=nbytes, flops=flops, peak_gbs=peak,
                 peak_gflops=peak_gflops, own_bytes=own_bytes)
    gc.collect()
    return seconds


def print_row(name, t: Tuple[float, float], nbytes=None, flops=None, base=None, peak=None):
    """One line of a (median, best) measurement in microseconds: GB/s of nbytes (% of the
    peak GB/s when given), GFLOP/s of flops, speed-up over base (numpy's (median, best))."""
    seconds, best = t
    cols = f"  {name:30s} {seconds * 1e6:10.1f} us (best {best * 1e6:9.1f})"
    if nbytes is not None:
        cols += f" {nbytes / seconds / 1e9:7.1f} GB/s (best {nbytes / best / 1e9:5.1f})"
        cols += f" {100 * nbytes / seconds / 1e9 / peak:4.0f}% peak" if peak else ""
    if flops is not None:
        cols += f" {flops / seconds / 1e9:7.1f} GFLOP/s"
    if base is not None:
        cols += f" {base[0] / seconds:7.2f}x numpy"
    print(cols)


def blas_info() -> str:
    """numpy's BLAS library, version and kernel, as threadpoolctl reports them."""
    for pool in threadpoolctl.threadpool_info() if threadpoolctl else []:
        if pool.get("internal_api") in ("openblas", "mkl", "blis"):
            return f"{pool['internal_api']} {pool.get('version')} ({pool.get('architecture')})"
    return "unknown"


def machine_summary(threads: int, peaks: dict, torch=None) -> dict:
    info = _C.cpu_info()
    return {
        "cpu": f"{info['vendor']} {info['brand']}".strip(),
        "isa": info["active_isa"],
        "threads": threads,
        "numpy": np.__version__,
        "numpy_blas": blas_info(),
        "torch": getattr(torch, "__version__", None) if torch else None,
        "python": platform.python_version(),
        "fma_peak_gflops": round(peaks["fma_gflops"], 1),
        "bf16_peak_gflops": round(peaks["bf16_gflops"], 1),
        "dram_gbs": round(peaks["dram_gbs"], 1),
    }


def reexec_without_openblas_overrides(argv: Sequence[str]):
    """Starts the process again (python -m kernelgpt <argv>) without OPENBLAS_CORETYPE /
    OPENBLAS_L2_SIZE: they must be unset before numpy loads OpenBLAS, so the running process
    cannot drop them."""
    if os.environ.get("KERNELGPT_BENCH_REEXEC") == "1":
        return
    if not any(v in os.environ for v in _OPENBLAS_VARS):
        return
    env = {k: v for k, v in os.environ.items() if k not in _OPENBLAS_VARS}
    env["KERNELGPT_BENCH_REEXEC"] = "1"
    print("# re-running without " + ", ".join(v for v in _OPENBLAS_VARS if v in os.environ),
          flush=True)
    os.execve(sys.executable, [sys.executable, "-m", "kernelgpt"] + list(argv), env)


# ---- the kernel cases of `kernelgpt bench` --------------------------------------------------

@dataclass
class Case:
    kernel: str           # "matmul"
    shape: str            # "[128x576]@[576x1536]"
    flops: float = 0.0    # per call, 0 if memory-bound
    bytes: float = 0.0    # DRAM traffic per call (read + write once), 0 if compute-bound
    impls: Dict[str, Callable[[], object]] = field(default_factory=dict)
    peak: str = "fma_gflops"  # the measure_peaks entry its flops are a % of


@dataclass
class Result:
    kernel: str
    shape: str
    seconds: Dict[str, float]
    flops: float
    bytes: float
    peak: str = "fma_gflops"


def _rand(rng, *shape, scale=1.0):
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)


def matmul_case(torch, m, k, n, rng=None) -> Case:
    rng = rng or np.random.default_rng(0)
    a, b = _rand(rng, m, k), _rand(rng, k, n)
    c = np.empty((m, n), np.float32)
    case = Case("matmul", f"[{m}x{k}]@[{k}x{n}]", flops=2.0 * m * n * k)
    case.impls["numpy"] = lambda: np.matmul(a, b, out=c)
    if torch is not None:
        ta, tb, tc = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(c)
        case.impls["torch"] = lambda: torch.matmul(ta, tb, out=tc)
    case.impls["kernelgpt"] = lambda: ops.matmul(a, b, out=c)
    return case


MATMUL_SHAPES = [(128, 576, 1536), (512, 768, 3072), (1024, 1024, 1024), (1, 576, 1536)]


def matmul_cases(torch, quick: bool) -> List[Case]:
    rng = np.random.default_rng(0)
    shapes = [MATMUL_SHAPES[0], MATMUL_SHAPES[2]] if quick else MATMUL_SHAPES
    return [matmul_case(torch, m, k, n, rng) for m, k, n in shapes]


def matmul_bf16_cases(torch, quick: bool) -> List[Case]:
    """bf16 operands, fp32 accumulation (ops.matmul_bf16 on float32 arrays: rounded while
    packed, as training calls it), beside numpy's fp32 product and torch's bf16 one; its
    % peak is of the bf16 dot-product rate."""
    rng = np.random.default_rng(0)
    shapes = [MATMUL_SHAPES[2]] if quick else MATMUL_SHAPES[1:3]
    cases = []
    for m, k, n in shapes:
        a, b = _rand(rng, m, k), _rand(rng, k, n)
        c = np.empty((m, n), np.float32)
        case = Case("matmul bf16", f"[{m}x{k}]@[{k}x{n}]", flops=2.0 * m * n * k,
                    peak="bf16_gflops")
        case.impls["numpy"] = lambda a=a, b=b, c=c: np.matmul(a, b, out=c)
        if torch is not None:
            ta, tb = (torch.from_numpy(x).to(torch.bfloat16) for x in (a, b))
            case.impls["torch"] = lambda ta=ta, tb=tb: torch.matmul(ta, tb)
        case.impls["kernelgpt"] = lambda a=a, b=b, c=c: ops.matmul_bf16(a, b, out=c)
        cases.append(case)
    return cases


def softmax_cases(torch, quick: bool) -> List[Case]:
    rng = np.random.default_rng(1)
    R, V = (2048, 50304) if quick else (4096, 50304)  # 824 MB in + out: far beyond the caches
    x = _rand(rng, R, V, scale=3.0)
    y, g = np.empty_like(x), np.empty_like(x)
    targets = rng.integers(0, V, size=R)
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
    rng = np.random.default_rng(2)
    R, C = (4096, 4096) if quick else (8192, 4096)  # 128 MiB per array
    x = _rand(rng, R, C)
    w, b = _rand(rng, C), _rand(rng, C)
    y = np.empty_like(x)
    F = torch.nn.functional if torch is not None else None
    if torch is not None:
        tx, tw, tb = map(torch.from_numpy, (x, w, b))
    ln = Case("layernorm", f"[{R}x{C}]", bytes=2 * x.nbytes)
    ln.impls["numpy"] = lambda: reference.layernorm(x, w, b)
    if torch is not None:
        ln.impls["torch"] = lambda: F.layer_norm(tx, (C,), tw, tb)
    ln.impls["kernelgpt"] = lambda: ops.layernorm(x, w, b, out=y)
    rms = Case("rmsnorm", f"[{R}x{C}]", bytes=2 * x.nbytes)
    rms.impls["numpy"] = lambda: reference.rmsnorm(x, w)
    if torch is not None and hasattr(F, "rms_norm"):
        rms.impls["torch"] = lambda: F.rms_norm(tx, (C,), tw, 1e-6)
    rms.impls["kernelgpt"] = lambda: ops.rmsnorm(x, w, out=y)
    ge = Case("gelu (tanh)", f"[{R}x{C}]", bytes=2 * x.nbytes)
    ge.impls["numpy"] = lambda: reference.gelu(x)
    if torch is not None:
        ge.impls["torch"] = lambda: F.gelu(tx, approximate="tanh")
    ge.impls["kernelgpt"] = lambda: ops.gelu(x, out=y)
    dy = _rand(rng, R, C)
    gb = Case("gelu backward", f"[{R}x{C}]", bytes=3 * x.nbytes)
    gb.impls["numpy"] = lambda: reference.gelu_backward(dy, x)
    gb.impls["kernelgpt"] = lambda: ops.gelu_backward(dy, x, out=y)
    return [ln, rms, ge, gb]


def attention_cases(torch, quick: bool) -> List[Case]:
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
    rng = np.random.default_rng(4)
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
    x = _rand(rng, 8, 12, 1024, 64)
    ro = np.empty_like(x)
    rope = Case("rope (half)", "[8x12x1024x64]", bytes=2 * x.nbytes)
    rope.impls["numpy"] = lambda: reference.rope(x)
    rope.impls["kernelgpt"] = lambda: ops.rope(x, out=ro)
    n = (16 << 20) if quick else (64 << 20)
    p, g = _rand(rng, n, scale=0.1), _rand(rng, n, scale=0.01)
    m, v = np.zeros(n, np.float32), np.zeros(n, np.float32)
    pn, mn, vn = p.copy(), m.copy(), v.copy()
    step = [0, 0]

    def kg_adamw():
        step[0] += 1
        ops.adamw_step(p, g, m, v, step=step[0], lr=1e-4, weight_decay=0.1)

    def numpy_adamw():
        step[1] += 1
        reference.adamw_step(pn, g, mn, vn, step[1], 1e-4, weight_decay=0.1)
    ad = Case("adamw step", f"{n >> 20}M params", bytes=7.0 * 4 * n)  # reads p,g,m,v, writes p,m,v
    ad.impls["numpy"] = numpy_adamw
    if torch is not None:
        tp = torch.nn.Parameter(torch.from_numpy(p.copy()))
        tp.grad = torch.from_numpy(g)
        ad.impls["torch"] = torch.optim.AdamW([tp], lr=1e-4, weight_decay=0.1, foreach=True).step
    ad.impls["kernelgpt"] = kg_adamw
    return [emb, rope, ad]


# Kernel families register their case builders here: name -> builder(torch, quick).
CASE_BUILDERS: Dict[str, Callable] = {
    "matmul": matmul_cases,
    "matmul_bf16": matmul_bf16_cases,
    "softmax": softmax_cases,
    "norm": norm_activation_cases,
    "attention": attention_cases,
    "misc": embedding_rope_adamw_cases,
}


def run_bench_case(case: Case, rounds: int, pause: float = PAUSE) -> Result:
    """A case of the table: its implementations in alternating rounds, each round a block of
    calls lasting about 0.05 s (at most 200), the median of the rounds' medians."""
    seconds = alternate([(name, fn, None) for name, fn in case.impls.items()], rounds,
                        pause=pause, fill=0.05, max_reps=200, per_round=True)
    return Result(case.kernel, case.shape, seconds, case.flops, case.bytes, case.peak)


def format_table(results: List[Result], peaks: dict) -> str:
    """The `kernelgpt bench` table (markdown): times, ratios, kernelgpt's rate and % peak."""
    head = ["kernel", "shape", "numpy ms", "torch ms", "kernelgpt ms", "vs numpy", "vs torch",
            "kernelgpt rate", "% peak"]
    rows = []
    for r in results:
        s = r.seconds
        kg = s.get("kernelgpt")
        npy, tor = s.get("numpy"), s.get("torch")
        if r.flops:
            rate = f"{r.flops / kg / 1e9:.1f} GFLOP/s"
            pct = f"{100 * r.flops / kg / 1e9 / peaks[r.peak]:.0f}%"
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

    def line(cells):
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    out = [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in rows]
    return "\n".join(out)
