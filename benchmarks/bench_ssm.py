"""Selective scan (the state-space layer's recurrence): numpy reference vs naive vs chunked
(vs PyTorch CPU: the same recurrence step by step, eager and torch.compile'd).

    flock .bench.lock python benchmarks/bench_ssm.py [--threads 2] [--quick] [--repeats 5]

Cases: a training batch (forward, and forward + backward), a long prompt of one sequence
(few channel groups: the chunked scan's parallel-in-time path) and one decode step from a
state. PyTorch has no selective scan on the CPU (mamba-ssm's kernels are CUDA only), so its
rows run the recurrence as a loop over time of vectorized tensor ops, the way a PyTorch user
would write it, autograd for the backward; bf16 autocast is left out (no matrix product here
for it to speed up, and the recurrence needs fp32). GFLOP/s counts ~6 flops per (t, e, n)
forward (one exp counted as one).
"""
from __future__ import annotations

import argparse

import numpy as np

import kernelgpt
from kernelgpt import ops, reference
from kernelgpt.bench import run_case, setup_threads, torch_or_none

CASES = [  # (title, Bt, T, E, N, backward)
    ("training batch", 16, 128, 256, 16, True),
    ("prompt of one sequence", 1, 2048, 256, 16, False),
    ("decode step", 1, 1, 768, 16, False),
]


def inputs(rng, Bt, T, E, N):
    u = rng.standard_normal((Bt, T, E), dtype=np.float32)
    delta = np.logaddexp(0, rng.standard_normal((Bt, T, E), dtype=np.float32))
    A = -np.exp(rng.standard_normal((E, N), dtype=np.float32) * 0.5)
    B = rng.standard_normal((Bt, T, N), dtype=np.float32)
    C = rng.standard_normal((Bt, T, N), dtype=np.float32)
    D = rng.standard_normal(E, dtype=np.float32)
    return u, delta, A, B, C, D


def torch_scan(torch):
    """The recurrence in PyTorch: one step of vectorized ops per token."""
    def scan(u, delta, A, B, C, D, h):
        ys = []
        for t in range(u.shape[1]):
            dt = delta[:, t, :, None]
            h = torch.exp(dt * A) * h + dt * B[:, t, None, :] * u[:, t, :, None]
            ys.append((h * C[:, t, None, :]).sum(-1) + D * u[:, t])
        return torch.stack(ys, 1)
    return scan


def impls(args_np, torch, backward, naive=True, compiled=None):
    u, delta, A, B, C, D = args_np
    h0 = np.zeros((u.shape[0], u.shape[2], A.shape[1]), np.float32)
    dy = np.ones_like(u)
    out = {"forward": [("numpy", lambda: reference.selective_scan(*args_np), 1)]}
    if naive:
        out["forward"].append(("naive", lambda: ops.selective_scan(*args_np, backend="naive"), 1))
    out["forward"].append(("chunked", lambda: ops.selective_scan(*args_np, h0=h0), 5))
    if backward:
        out["forward + backward"] = [
            ("numpy", lambda: (reference.selective_scan(*args_np),
                               reference.selective_scan_backward(dy, *args_np)), 1)]
        if naive:
            out["forward + backward"].append(("naive", lambda: (
                ops.selective_scan(*args_np, backend="naive"),
                ops.selective_scan_backward(dy, *args_np, backend="naive")), 1))
        out["forward + backward"].append(("chunked", lambda: (
            ops.selective_scan(*args_np), ops.selective_scan_backward(dy, *args_np)), 3))
    if torch is not None:
        tensors = [torch.from_numpy(x) for x in args_np]
        th0 = torch.from_numpy(h0)
        eager = torch_scan(torch)
        variants = [("torch eager", eager)] + ([("torch.compile", compiled)] if compiled else [])
        for label, fn in variants:
            def fwd(fn=fn):
                with torch.no_grad():
                    return fn(*tensors, th0)
            out["forward"].append((label, fwd, 1))
            if backward:
                def fwd_bwd(fn=fn):
                    ts = [t.detach().requires_grad_(True) for t in tensors]
                    fn(*ts, th0).sum().backward()
                out["forward + backward"].append((label, fwd_bwd, 1))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="smaller shapes, one round")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    args = ap.parse_args()
    torch = torch_or_none()
    _limiter = setup_threads(args.threads, torch=torch)
    info = kernelgpt.cpu_features()
    print(f"{info['brand']}, {args.threads} threads, isa {info['active_isa']}")
    print(f"ssm path: {ops.kernel_paths()['ssm']}")
    compiled = None
    if torch is not None and not args.no_compile:
        try:  # compile one step; the loop over time stays in Python
            step = torch.compile(lambda h, a, b: a * h + b, dynamic=False)
            scan = torch_scan(torch)

            def compiled(u, delta, A, B, C, D, h):
                ys = []
                for t in range(u.shape[1]):
                    dt = delta[:, t, :, None]
                    h = step(h, torch.exp(dt * A), dt * B[:, t, None, :] * u[:, t, :, None])
                    ys.append((h * C[:, t, None, :]).sum(-1) + D * u[:, t])
                return torch.stack(ys, 1)
            compiled(*[torch.ones(1, 2, 4) if i in (0, 1, 3, 4) else torch.ones(4, 4)
                       for i in range(3)] + [torch.ones(1, 2, 4), torch.ones(1, 2, 4),
                                             torch.ones(4), torch.zeros(1, 4, 4)])
            del scan
        except Exception as e:  # noqa: BLE001 (no compiler on this machine: say so, go on)
            print(f"torch.compile unavailable: {type(e).__name__}: {e}".splitlines()[0])
            compiled = None
    rng = np.random.default_rng(0)
    for title, Bt, T, E, N, backward in CASES:
        if args.quick:
            T = min(T, 64)
        a = inputs(rng, Bt, T, E, N)
        flops = 6 * Bt * T * E * N
        for name, row in impls(a, torch, backward, compiled=compiled).items():
            run_case(f"{name}, {title} [Bt {Bt}, T {T}, E {E}, N {N}]", row,
                     rounds=1 if args.quick else args.repeats,
                     flops=flops * (3 if name != "forward" else 1))


if __name__ == "__main__":
    main()
