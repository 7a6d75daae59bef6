"""AdamW step, gradient norm and clipping: numpy reference vs naive vs fast (vs PyTorch CPU).

    flock .bench.lock python benchmarks/bench_adamw.py [--threads 2] [--params 64] [--repeats 5]
        [--no-naive] [--no-torch]

Each case times the implementations in alternating rounds (numpy, naive, fast, torch, numpy,
...; kernelgpt.bench.run_case) and prints the median. GB/s counts the bytes a kernel must
move, once each: AdamW reads param, grad, m, v and writes param, m, v (7 x 4 bytes per
parameter); the norm reads each gradient once. The peak is kernelgpt._C.stream_scale
(dst = src * 1: read + write) on a 256 MiB array, with the same thread count.
"""
from __future__ import annotations

import argparse
import gc

import numpy as np

import kernelgpt
from kernelgpt import ops, reference
from kernelgpt.bench import StreamPeak, run_case, setup_threads, torch_or_none

HP = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1)
# a GPT-2-small-like list of gradient arrays
GPT2_SHAPES = [(50257, 768), (1024, 768)] + [
    (768,), (768,), (768, 2304), (2304,), (768, 768), (768,), (768,), (768,), (768, 3072),
    (3072,), (3072, 768), (768,)] * 12 + [(768,), (768,)]


def adamw_state(rng, n):
    """param, grad, m, v: n float32 values each."""
    return (rng.standard_normal(n, dtype=np.float32), rng.standard_normal(n, dtype=np.float32),
            rng.standard_normal(n, dtype=np.float32) * 0.1,
            np.abs(rng.standard_normal(n, dtype=np.float32)) * 0.01)


def adamw_impls(param, grad, m, v, torch, naive=True):
    """[(label, fn)]: every call is the next step (the state keeps evolving). The torch
    optimizers hold a copy of param."""
    steps = iter(range(1, 1 << 30))
    impls = [("numpy", lambda: reference.adamw_step(param, grad, m, v, next(steps), **HP))]
    if naive:
        impls.append(("kernelgpt naive", lambda: ops.adamw_step(
            param, grad, m, v, step=next(steps), backend="naive", **HP)))
    impls.append(("kernelgpt fast", lambda: ops.adamw_step(param, grad, m, v, step=next(steps),
                                                           **HP)))
    if torch is not None:
        tp = torch.nn.Parameter(torch.from_numpy(param.copy()))
        tp.grad = torch.from_numpy(grad)
        for label, foreach in (("torch AdamW", False), ("torch AdamW foreach", True)):
            opt = torch.optim.AdamW([tp], lr=HP["lr"], betas=(HP["beta1"], HP["beta2"]),
                                    eps=HP["eps"], weight_decay=HP["weight_decay"],
                                    foreach=foreach)
            impls.append((label, opt.step))
    return impls


def grad_norm_impls(grads, torch, naive=True):
    """[(label, fn)] of the norm of one array or a list of arrays."""
    impls = [("numpy", lambda: reference.grad_norm(grads))]
    if naive:
        impls.append(("kernelgpt naive", lambda: ops.grad_norm(grads, backend="naive")))
    impls.append(("kernelgpt fast", lambda: ops.grad_norm(grads)))
    if torch is not None and isinstance(grads, list):
        tl = [torch.from_numpy(g) for g in grads]
        impls.append(("torch vector_norm", lambda: torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(t) for t in tl]))))
    return impls


def clip_impls(grads, torch):
    impls = [("numpy", lambda: reference.clip_grad_norm(grads, 1.0)),
             ("kernelgpt fast", lambda: ops.clip_grad_norm(grads, 1.0))]
    if torch is not None:
        ps = []
        for g in grads:
            p = torch.nn.Parameter(torch.empty(g.shape))
            p.grad = torch.from_numpy(g)
            ps.append(p)
        impls.append(("torch clip_grad_norm_", lambda: torch.nn.utils.clip_grad_norm_(ps, 1.0)))
    return impls


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--params", type=int, default=64, help="millions of parameters (64)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-naive", action="store_true")
    ap.add_argument("--no-torch", action="store_true")
    args = ap.parse_args()
    torch = None if args.no_torch else torch_or_none()
    _limiter = setup_threads(args.threads, torch=torch)
    peak = StreamPeak().best()
    print(f"kernelgpt {kernelgpt.__version__}, {args.threads} threads, isa {kernelgpt.get_isa()}")
    print(f"stream peak (stream_scale, 256 MiB, read + write): {peak:.1f} GB/s")
    print(f"path: {ops.kernel_paths()['adamw']}")
    naive = not args.no_naive

    def case(title, impls, nbytes):
        run_case(title, [(label, fn, None) for label, fn in impls], rounds=args.repeats,
                 nbytes=nbytes, peak=peak)

    n = args.params << 20
    rng = np.random.default_rng(0)
    state = adamw_state(rng, n)
    case(f"adamw_step, {args.params}M float32 parameters", adamw_impls(*state, torch, naive),
         7 * 4 * n)
    del state
    gc.collect()

    glist = [rng.standard_normal(s, dtype=np.float32) for s in GPT2_SHAPES]
    nbytes = sum(g.nbytes for g in glist)
    case(f"grad_norm, GPT-2 small gradients ({len(glist)} arrays, "
         f"{sum(g.size for g in glist) / 1e6:.0f}M values)", grad_norm_impls(glist, torch, naive),
         nbytes)
    # clip: norm + scale of every array (read + read/write)
    case("clip_grad_norm, GPT-2 small gradients (norm > max_norm: scales once, then the norm "
         "is ~1 and it only reads)", clip_impls(glist, torch), nbytes)
    big = glist[0]
    case(f"grad_norm, one array {big.shape}", grad_norm_impls(big, None, naive=False), big.nbytes)


if __name__ == "__main__":
    main()
