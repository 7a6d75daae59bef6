"""RoPE (both layouts, forward and backward) and the sinusoidal table: numpy vs naive vs fast.

    flock .bench.lock python benchmarks/bench_rope.py [--threads 2] [--repeats 5] [--no-naive]
        [--no-torch]

Alternating rounds (kernelgpt.bench.run_case), median times. GB/s counts x read once and y
written once (the cos / sin table is extra work every implementation does per call). The
peak is kernelgpt._C.stream_scale (read + write) on 256 MiB. "torch HF" is transformers'
apply_rotary_pos_emb (q * cos + rotate_half(q) * sin) with cos / sin computed per call, as
the model's rotary embedding module does each forward.
"""
from __future__ import annotations

import argparse
import gc

import numpy as np

import kernelgpt
from kernelgpt import ops, reference
from kernelgpt.bench import StreamPeak, run_case, setup_threads, torch_or_none

# (name, [B, H, T, D], offset, base, layouts, naive?)
CASES = [
    ("GPT-2-ish q", (8, 12, 1024, 64), 0, 10000.0, ("half", "interleaved"), True),
    ("Llama-ish q, 4k", (1, 32, 4096, 128), 0, 500000.0, ("half", "interleaved"), False),
    ("decode, 1 token at 32k", (1, 32, 1, 128), 32767, 1e6, ("half",), True),
    ("small", (1, 4, 64, 32), 7, 10000.0, ("half",), True),
]
TABLES = [(1024, 768, 0), (8192, 4096, 10**6)]  # sinusoidal_positions: T, C, offset


def torch_hf_rope(torch, x, offset, base):
    """transformers' LlamaRotaryEmbedding + apply_rotary_pos_emb (float32 inv_freq)."""
    T, D = x.shape[-2], x.shape[-1]
    inv_freq = 1.0 / (base ** (torch.arange(0, D, 2, dtype=torch.int64).float() / D))
    pos = torch.arange(offset, offset + T, dtype=torch.float32)
    freqs = torch.outer(pos, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos(), emb.sin()
    x1, x2 = x[..., : D // 2], x[..., D // 2:]
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def rope_impls(x, offset, base, layout, torch, naive=True):
    """[(label, fn)] of one layout."""
    out = np.empty_like(x)
    kw = dict(offset=offset, base=base, layout=layout)
    impls = [("numpy", lambda: reference.rope(x, None, offset, base, layout))]
    if naive:
        impls.append(("kernelgpt naive", lambda: ops.rope(x, out=out, backend="naive", **kw)))
    impls += [("kernelgpt fast", lambda: ops.rope(x, **kw)),
              ("kernelgpt fast out=", lambda: ops.rope(x, out=out, **kw)),
              ("kernelgpt backward out=", lambda: ops.rope_backward(x, out=out, **kw))]
    if torch is not None and layout == "half":
        xt = torch.from_numpy(x)
        impls.append(("torch HF", lambda: torch_hf_rope(torch, xt, offset, base)))
    return impls


def sinusoidal_impls(T, C, offset, naive=True):
    impls = [("numpy", lambda: reference.sinusoidal_positions(T, C, 10000.0, offset)
              .astype(np.float32))]
    if naive:
        impls.append(("kernelgpt naive",
                      lambda: ops.sinusoidal_positions(T, C, offset=offset, backend="naive")))
    impls.append(("kernelgpt fast", lambda: ops.sinusoidal_positions(T, C, offset=offset)))
    return impls


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-naive", action="store_true")
    ap.add_argument("--no-torch", action="store_true")
    args = ap.parse_args()
    torch = None if args.no_torch else torch_or_none()
    _limiter = setup_threads(args.threads, torch=torch)
    peak = StreamPeak().best()
    print(f"kernelgpt {kernelgpt.__version__}, {args.threads} threads, isa {kernelgpt.get_isa()}")
    print(f"stream peak (stream_scale, 256 MiB, read + write): {peak:.1f} GB/s")
    print(f"path: {ops.kernel_paths()['rope']}")
    rng = np.random.default_rng(0)

    def case(title, impls, nbytes):
        run_case(title, [(label, fn, None) for label, fn in impls], rounds=args.repeats,
                 nbytes=nbytes, peak=peak)

    for name, shape, offset, base, layouts, with_naive in CASES:
        x = rng.standard_normal(shape, dtype=np.float32)
        for layout in layouts:
            case(f"rope {layout}, {name}: x {list(shape)}, positions "
                 f"{offset}..{offset + shape[-2] - 1}",
                 rope_impls(x, offset, base, layout, torch, with_naive and not args.no_naive),
                 2 * x.nbytes)
        del x
        gc.collect()
    for T, C, offset in TABLES:
        case(f"sinusoidal_positions T={T}, C={C}, offset {offset}",
             sinusoidal_impls(T, C, offset, not args.no_naive), T * C * 4)


if __name__ == "__main__":
    main()
