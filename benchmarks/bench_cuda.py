"""Every version of every CUDA kernel against CuPy's built-ins, and two end-to-end jobs.

    python benchmarks/bench_cuda.py [--repeats 20] [--no-e2e] [--json OUT.json] [--smollm2 FILE.gguf]
    flock .bench.lock python benchmarks/bench_cuda.py --device emu --small   # a dry run on the CPU

Kernels are timed with CUDA events on CuPy's stream (median of --repeats after a warm-up;
kernelgpt.bench.median_time_cuda).
Each line: the median time, the rate it implies (TFLOP/s for products, GB/s for the memory-bound
kernels: the bytes each must read + write once), that rate as a % of the GPU's peak (memory
bandwidth from the device properties; FLOP peaks are not computed, compare with the baseline
instead) and the ratio to the baseline on the same line:
  - matmul fp32: cupy.matmul (cuBLAS SGEMM);
  - matmul bf16: torch.matmul in bf16 if a CUDA PyTorch is installed, else cupy.matmul in fp16
    (cuBLAS on the same tensor cores; CuPy has no bf16 type);
  - softmax, layernorm, cross-entropy: the same formula as CuPy expressions;
  - attention: torch.nn.functional.scaled_dot_product_attention when a CUDA PyTorch is there.
End to end: a GPT-2-124M-sized model's training step (tokens/s, `GPT.to("cuda")`) and
SmolLM2-135M decoding (tokens/s, `load_model("smollm2", device="cuda")`, if fetched), with
and without the CUDA graph per step (kernelgpt/graph_decode.py).
Every result is checked against the numpy reference once before timing. --json writes every
measured line as a record (written as the run goes, so a run stopped half-way keeps what it
measured); --smollm2 takes a GGUF file of SmolLM2's shape instead of the fetched model
(tools/gpu_check.sh builds one on a machine the 98 MB file cannot reach).

--device emu runs the same script on the CPU emulator (kernelgpt.cuda_emu) with --small sizes:
it checks that the script and the kernels run, its times mean nothing.
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from kernelgpt import cuda_emu, ops, reference
from kernelgpt.bench import median_time, median_time_cuda
from kernelgpt.device import cuda_available
from kernelgpt.generate import GenerationStats
from kernelgpt.kernels.matmul import VERSIONS as MATMUL_VERSIONS
from kernelgpt.llama import load_model
from kernelgpt.model import GPT, GPTConfig


def peak_bandwidth(xp, device):
    """Bytes/s of the GPU's memory (2 transfers per clock), or None on the emulator."""
    if device != "cuda":
        return None
    props = xp.cuda.runtime.getDeviceProperties(xp.cuda.Device().id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    bw = 2 * props["memoryClockRate"] * 1e3 * props["memoryBusWidth"] / 8
    print(f"device: {name}, {props['multiProcessorCount']} SMs, memory {bw / 1e12:.2f} TB/s")
    return bw


def cuda_torch():
    try:
        import torch
        return torch if torch.cuda.is_available() else None
    except Exception:
        return None


RESULTS = []  # every measured line, for --json


def record(path, **fields):
    RESULTS.append(fields)
    if path:
        with open(path, "w") as f:
            json.dump(RESULTS, f, indent=1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", choices=["cuda", "emu"], default="cuda")
    parser.add_argument("--small", action="store_true", help="tiny sizes (for --device emu)")
    parser.add_argument("--no-e2e", action="store_true", help="skip the end-to-end jobs")
    parser.add_argument("--json", default=None, help="also write every result to this JSON file")
    parser.add_argument("--smollm2", default="smollm2",
                        help="the SmolLM2 model to decode with: 'smollm2' (fetched) or a GGUF path")
    args = parser.parse_args()
    if args.device == "cuda":
        if not cuda_available():
            sys.exit("bench_cuda: needs a CUDA build of kernelgpt, CuPy and an NVIDIA GPU "
                     "(--device emu --small runs it on the CPU emulator)")
        import cupy as xp
    else:
        xp = cuda_emu
    small = args.small
    expr = "CuPy" if args.device == "cuda" else "numpy"  # the baseline expressions' library
    if args.device == "cuda":
        def timed(fn):
            return median_time_cuda(fn, args.repeats, xp)
    else:
        def timed(fn):
            return median_time(fn, args.repeats)
    bw = peak_bandwidth(xp, args.device)
    torch = cuda_torch() if args.device == "cuda" else None
    rng = np.random.default_rng(0)

    def randn(*shape):
        return xp.asarray(rng.standard_normal(shape).astype(np.float32))

    def row(name, version, seconds, amount, unit, base=None):
        rate = amount / seconds / (1e12 if unit == "TFLOP/s" else 1e9)
        peak = f"{amount / seconds / bw * 100:5.1f}% peak" if bw and unit == "GB/s" else " " * 10
        ratio = f"{base / seconds:6.2f}x baseline" if base else ""
        record(args.json, kernel=name, version=version, ms=seconds * 1e3, rate=rate, unit=unit,
               peak_pct=amount / seconds / bw * 100 if bw and unit == "GB/s" else None,
               vs_baseline=base / seconds if base else None, device=args.device)
        print(f"{name:<30} {version:<12} {seconds * 1e3:9.3f} ms {rate:9.2f} {unit:<8} {peak} "
              f"{ratio}", flush=True)

    # ---- matmul fp32: the SGEMM ladder against cuBLAS ----------------------------------------
    n = 64 if small else 4096
    a, b = randn(n, n), randn(n, n)
    ref = cuda_emu.asnumpy(a) @ cuda_emu.asnumpy(b) if small else None
    base = timed(lambda: xp.matmul(a, b))
    lib = "cuBLAS" if args.device == "cuda" else "numpy"  # what xp.matmul is
    row(f"matmul fp32 {n}^3", lib, base, 2 * n ** 3, "TFLOP/s")
    for v in MATMUL_VERSIONS.names("cuda"):  # the SGEMM ladder
        if small:
            assert np.allclose(xp.asnumpy(ops.matmul(a, b, backend=v)), ref, atol=1e-3), v
        row(f"matmul fp32 {n}^3", v, timed(lambda: ops.matmul(a, b, backend=v)), 2 * n ** 3,
            "TFLOP/s", base)

    # ---- matmul bf16 on tensor cores -----------------------------------------------------------
    ab, bb = ops.to_bf16(a), ops.to_bf16(b)
    if torch is not None:
        ta = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
        tb = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
        base, what = timed(lambda: torch.matmul(ta, tb)), "torch bf16"
    elif args.device == "cuda":
        ah, bh = a.astype(xp.float16), b.astype(xp.float16)
        base, what = timed(lambda: xp.matmul(ah, bh)), "cuBLAS fp16"
    else:
        base, what = None, None
    if base:
        row(f"matmul bf16 {n}^3", what, base, 2 * n ** 3, "TFLOP/s")
    for v in ("naive", "wmma"):
        row(f"matmul bf16 {n}^3", v, timed(lambda: ops.matmul_bf16(ab, bb, backend=v)),
            2 * n ** 3, "TFLOP/s", base)

    # ---- memory-bound kernels against CuPy expressions ----------------------------------------
    rows, cols = (8, 100) if small else (8192, 8192)
    x = randn(rows, cols)

    def cupy_softmax():
        e = xp.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    base = timed(cupy_softmax)
    row(f"softmax {rows}x{cols}", expr, base, 2 * x.nbytes, "GB/s")
    for v in ("naive", "online"):
        row(f"softmax {rows}x{cols}", v, timed(lambda: ops.softmax(x, backend=v)),
            2 * x.nbytes, "GB/s", base)
    y = ops.softmax(x)
    for v in ("naive", "fused"):
        row(f"softmax_backward {rows}x{cols}", v,
            timed(lambda: ops.softmax_backward(x, y, backend=v)), 3 * x.nbytes, "GB/s")

    # ---- selective scan (the state-space layer): naive vs chunked ----------------------------
    Bt, T, E, N = (2, 9, 20, 4) if small else (16, 1024, 1536, 16)
    u, Bm, Cm, D = randn(Bt, T, E), randn(Bt, T, N), randn(Bt, T, N), randn(E)
    delta = xp.log1p(xp.exp(randn(Bt, T, E)))
    A = -xp.exp(randn(E, N) * 0.5)
    scan_flops = 6 * Bt * T * E * N  # per (t, e, n): exp, 2 mul + add for h, mul + add for y
    base = None
    for v in ("naive", "chunked"):
        t = timed(lambda: ops.selective_scan(u, delta, A, Bm, Cm, D, backend=v))
        row(f"selective_scan {Bt}x{T}x{E}x{N}", v, t, scan_flops, "TFLOP/s", base)
        base = base or t
    dy = randn(Bt, T, E)
    row(f"selective_scan_backward {Bt}x{T}x{E}x{N}", "naive",
        timed(lambda: ops.selective_scan_backward(dy, u, delta, A, Bm, Cm, D, backend="naive")),
        3 * scan_flops, "TFLOP/s")

    rows, cols = (8, 96) if small else (16384, 768)
    xl, w, bias = randn(rows, cols), randn(cols), randn(cols)

    def cupy_layernorm():
        mu = xl.mean(axis=-1, keepdims=True)
        var = ((xl - mu) ** 2).mean(axis=-1, keepdims=True)
        return (xl - mu) / xp.sqrt(var + 1e-5) * w + bias

    base = timed(cupy_layernorm)
    row(f"layernorm {rows}x{cols}", expr, base, 2 * xl.nbytes, "GB/s")
    for v in ("naive", "fast"):
        row(f"layernorm {rows}x{cols}", v, timed(lambda: ops.layernorm(xl, w, bias, backend=v)),
            2 * xl.nbytes, "GB/s", base)
        row(f"rmsnorm {rows}x{cols}", v, timed(lambda: ops.rmsnorm(xl, w, backend=v)),
            2 * xl.nbytes, "GB/s")

    big = randn(1 << (10 if small else 26))
    base = timed(lambda: 0.5 * big * (1 + xp.tanh(0.7978845608 * (big + 0.044715 * big ** 3))))
    row(f"gelu {big.size}", expr, base, 2 * big.nbytes, "GB/s")
    for v in ("naive", "vec4"):
        row(f"gelu {big.size}", v, timed(lambda: ops.gelu(big, backend=v)), 2 * big.nbytes,
            "GB/s", base)

    rows, V = (4, 1000) if small else (8192, 50257)
    logits = randn(rows, V)
    targets = xp.asarray(rng.integers(0, V, rows))

    def cupy_ce():
        m = logits.max(axis=-1, keepdims=True)
        lse = m[:, 0] + xp.log(xp.exp(logits - m).sum(axis=-1))
        grad = xp.exp(logits - lse[:, None])
        grad[xp.arange(rows), targets] -= 1
        return (lse - logits[xp.arange(rows), targets]).mean(), grad / rows

    base = timed(cupy_ce)
    row(f"cross_entropy {rows}x{V}", expr, base, 2 * logits.nbytes, "GB/s")
    for v in ("naive", "online"):
        row(f"cross_entropy {rows}x{V}", v,
            timed(lambda: ops.cross_entropy(logits, targets, return_grad=True, backend=v)),
            2 * logits.nbytes, "GB/s", base)

    # ---- attention ------------------------------------------------------------------------------
    B, H, T, D = (1, 2, 64, 64) if small else (4, 12, 2048, 64)
    q, k, vv = randn(B, H, T, D), randn(B, H, T, D), randn(B, H, T, D)
    flops = 4 * B * H * T * T * D / 2  # causal: half the scores
    ref, _ = reference.attention(*(xp.asnumpy(t[:1, :1]) for t in (q, k, vv)))
    base = None
    if torch is not None:
        tq, tk, tv = (torch.as_tensor(t, device="cuda") for t in (q, k, vv))
        sdpa = torch.nn.functional.scaled_dot_product_attention
        base = timed(lambda: sdpa(tq, tk, tv, is_causal=True))
        row(f"attention {B}x{H}x{T}x{D}", "torch SDPA fp32", base, flops, "TFLOP/s")
    for v in ("naive", "flash", "flash_tc"):  # flash_tc: bf16 tensor cores, fp32 in memory
        got = ops.attention(q[:1, :1].copy(), k[:1, :1].copy(), vv[:1, :1].copy(), backend=v)
        assert np.abs(xp.asnumpy(got) - ref).max() < (3e-2 if v == "flash_tc" else 1e-3), v
        row(f"attention {B}x{H}x{T}x{D}", v, timed(lambda: ops.attention(q, k, vv, backend=v)),
            flops, "TFLOP/s", base)
    out, lse = ops.attention(q, k, vv, return_lse=True)
    dout = randn(B, H, T, D)
    for v in ("naive", "flash"):
        row(f"attention bwd {B}x{H}x{T}x{D}", v,
            timed(lambda: ops.attention_backward(dout, q, k, vv, out, lse, backend=v)),
            2.5 * flops, "TFLOP/s")
    S = 256 if small else 4096
    q1, kc, vc = randn(1, 9, 1, 64), randn(1, 3, S, 64), randn(1, 3, S, 64)
    for v in ("naive", "flash", "decode"):
        row(f"decode 1 query vs {S}", v, timed(lambda: ops.attention(q1, kc, vc, backend=v)),
            kc.nbytes + vc.nbytes, "GB/s")

    rows = 64 if small else 4096
    wq = reference.quantize(rng.standard_normal((rows, rows)).astype(np.float32), "q4_1")
    raw, xq = xp.asarray(wq), randn(rows)
    for v in ("naive", "warp"):
        row(f"quant_matmul q4_1 {rows}^2", v,
            timed(lambda: ops.quant_matmul(xq, raw, "q4_1", rows, backend=v)), raw.nbytes,
            "GB/s")

    if args.no_e2e:
        return
    # ---- end to end -------------------------------------------------------------------------
    if small:
        cfg = GPTConfig(vocab_size=50, n_layer=1, n_head=2, n_embd=32, block_size=16)
        batch = 2
    else:
        cfg = GPTConfig(vocab_size=50304, n_layer=12, n_head=12, n_embd=768, block_size=1024)
        batch = 8
    model = GPT(cfg, seed=0).to(args.device)
    idx = rng.integers(0, cfg.vocab_size, (batch, cfg.block_size))
    tgt = rng.integers(0, cfg.vocab_size, (batch, cfg.block_size))

    def step():
        model.zero_grad()
        model.forward_backward(idx, tgt)
        ops.clip_grad_norm(model.grads.data, 1.0)

    sec = timed(step)
    print(f"train step {cfg.n_layer}L/{cfg.n_embd}d B{batch} T{cfg.block_size}: {sec * 1e3:.1f}"
          f" ms, {batch * cfg.block_size / sec:,.0f} tokens/s (fp32, forward + backward + "
          f"clip; the AdamW step adds one pass over the weights)", flush=True)
    record(args.json, job=f"train step {cfg.n_layer}L/{cfg.n_embd}d B{batch} T{cfg.block_size}",
           ms=sec * 1e3, tokens_per_s=batch * cfg.block_size / sec, device=args.device)
    if small:
        return
    try:
        smol = load_model(args.smollm2, device=args.device)
    except Exception as e:  # not fetched
        print(f"SmolLM2 decode: skipped ({e})")
        return
    stats = GenerationStats()
    smol.generate("The capital of France is", 128, temperature=0, stats=stats)
    prefill = stats.prompt_tokens / max(stats.prefill_seconds, 1e-9)
    graphs = stats.decode_tokens_per_second
    smol.cuda_graphs = False
    eager = GenerationStats()
    smol.generate("The capital of France is", 128, temperature=0, stats=eager)
    print(f"SmolLM2-135M decode on {args.device}: {graphs:.1f} tokens/s with a CUDA graph per "
          f"step, {eager.decode_tokens_per_second:.1f} launching kernel by kernel; prefill "
          f"{prefill:.1f} tokens/s")
    record(args.json, job="SmolLM2-135M decode", model=args.smollm2,
           decode_tokens_per_s_graphs=graphs,
           decode_tokens_per_s_eager=eager.decode_tokens_per_second,
           prefill_tokens_per_s=prefill, device=args.device)


if __name__ == "__main__":
    main()
