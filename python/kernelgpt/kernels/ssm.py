"""Selective scan: the recurrence of a Mamba-style state-space layer (kernelgpt.ssm), forward
and backward, float32.

For every sequence b and channel e, a state of N numbers runs along time:

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t      (A < 0: how fast each state forgets)
    y_t = C_t . h_t + D * u_t

delta (the step), B (what enters the state) and C (what is read out) depend on the input: the
"selection" that lets the layer keep or drop each token. Unlike attention, the whole past is
folded into h: generation keeps N numbers per channel, whatever the length of the context.

Versions (one numbering: csrc/kernels/ssm.cpp, csrc/cuda/ssm.cu, backend= names)
  forward
    1 naive    C++, CUDA  one channel at a time, step after step (C++: one thread; CUDA: a
                          thread per channel)
    2 chunked  C++, CUDA  time cut into chunks: each chunk scanned from a zero state, the true
                          start states carried across chunks (the recurrence is linear), each
                          chunk scanned again from its start; SIMD over channels, threads over
                          (sequence, channel group, chunk)
  backward
    1 naive    C++, CUDA  the states kept, then one walk back in time per channel
    2 chunked  C++        the same three passes for the gradient of the state, which runs
                          backwards in time; per-item partial sums added in a fixed order
backend="auto" (or "fast"): 2 on the CPU, 2 (forward) / 1 (backward) on a GPU; "numpy":
kernelgpt.reference (one step at a time over the whole batch).
Shapes: u, delta [Bt, T, E]; A [E, N] (N <= 128); B, C [Bt, T, N]; D [E]; h0, state [Bt, E, N].
"""
from __future__ import annotations

from .. import _C, reference
from ._dispatch import Versions, check_f32, check_shape, int_option, output, ptr, where_of

__all__ = ["selective_scan", "selective_scan_backward", "VERSIONS", "BACKWARD_VERSIONS"]

VERSIONS = Versions("selective_scan", {1: ("naive", "cpu cuda"), 2: ("chunked", "cpu cuda")},
                    auto={"cpu": 2, "cuda": 2})
BACKWARD_VERSIONS = Versions("selective_scan_backward",
                             {1: ("naive", "cpu cuda"), 2: ("chunked", "cpu")},
                             auto={"cpu": 2, "cuda": 1})


def selective_scan(u, delta, A, B, C, D, *, h0=None, return_state=False, chunk=0,
                   backend="auto"):
    """y [Bt, T, E] of the scan (formula in the module docstring) from the state h0 (default 0);
    with return_state=True, (y, the state after the last step [Bt, E, N]): what a generation
    cache keeps. chunk: steps per chunk for "chunked" (0: chosen by shape and threads; the
    result is the same to float32 rounding whatever the chunk). backend: "auto"/"chunked",
    "naive", "numpy"."""
    fn = "selective_scan"
    chunk = int_option(chunk, fn, "chunk")
    where, dev = where_of(fn, backend, u, delta, A, B, C, D, h0)
    if where == "cpu":
        return _C.selective_scan(u, delta, A, B, C, D, h0, bool(return_state), chunk,
                                 VERSIONS.number(backend, "cpu"))
    Bt, T, E, N = _check(dev, fn, u, delta, A, B, C, D)
    if chunk < 0:
        raise ValueError(f"{fn}: chunk must be >= 0 (0: automatic), got {chunk}")
    if h0 is not None:
        check_f32(dev, h0, fn, "h0", (3,))
        check_shape(h0, (Bt, E, N), fn, "h0")
    if where == "numpy":
        import numpy as np
        r = reference.selective_scan(u, delta, A, B, C, D, h0=h0, return_state=True)
        y, h = np.asarray(r[0], np.float32), np.asarray(r[1], np.float32)
        return (y, h) if return_state else y
    version = VERSIONS.number(backend, "cuda")
    y = output(dev, None, u.shape, fn)
    h = output(dev, None, (Bt, E, N), fn) if return_state else None
    L = _C.selective_scan_plan(Bt, T, E, chunk, False)
    nc = (T + L - 1) // L
    work = dev.xp.empty(max(1, 2 * Bt * nc * N * E), dev.xp.float32)
    dev.lib.cuda_selective_scan(version, ptr(u), ptr(delta), ptr(A), ptr(B), ptr(C), ptr(D),
                                ptr(h0), ptr(y), ptr(h), Bt, T, E, N, L, ptr(work), dev.stream())
    return (y, h) if return_state else y


def selective_scan_backward(dy, u, delta, A, B, C, D, *, chunk=0, backend="auto"):
    """Gradients of selective_scan (from h0 = 0) given dy [Bt, T, E]:
    (du, d_delta, dA, dB, dC, dD) with the shapes of (u, delta, A, B, C, D).
    backend: "auto"/"chunked", "naive", "numpy"."""
    fn = "selective_scan_backward"
    chunk = int_option(chunk, fn, "chunk")
    where, dev = where_of(fn, backend, dy, u, delta, A, B, C, D)
    if where == "cpu":
        return _C.selective_scan_backward(dy, u, delta, A, B, C, D, chunk,
                                          BACKWARD_VERSIONS.number(backend, "cpu"))
    Bt, T, E, N = _check(dev, fn, u, delta, A, B, C, D)
    check_f32(dev, dy, fn, "dy", (3,))
    check_shape(dy, u.shape, fn, "dy")
    if where == "numpy":
        import numpy as np
        return tuple(np.asarray(g, np.float32)
                     for g in reference.selective_scan_backward(dy, u, delta, A, B, C, D))
    version = BACKWARD_VERSIONS.number(backend, "cuda")
    grads = [output(dev, None, x.shape, fn) for x in (u, delta, A, B, C, D)]
    work = dev.xp.empty(Bt * E * (T + 1) * N, dev.xp.float32)
    dev.lib.cuda_selective_scan_backward(version, ptr(dy), ptr(u), ptr(delta), ptr(A), ptr(B),
                                         ptr(C), ptr(D), *(ptr(g) for g in grads),
                                         Bt, T, E, N, ptr(work), dev.stream())
    return tuple(grads)


def _check(dev, fn, u, delta, A, B, C, D):
    """(Bt, T, E, N) after checking the six inputs against each other."""
    check_f32(dev, u, fn, "u", (3,))
    Bt, T, E = u.shape
    check_f32(dev, delta, fn, "delta", (3,))
    check_shape(delta, u.shape, fn, "delta")
    check_f32(dev, A, fn, "A", (2,))
    N = A.shape[1]
    check_shape(A, (E, N), fn, "A")
    if N > 128:
        raise ValueError(f"{fn}: the state size N (A.shape[1] = {N}) must be <= 128")
    for name, x in (("B", B), ("C", C)):
        check_f32(dev, x, fn, name, (3,))
        check_shape(x, (Bt, T, N), fn, name)
    check_f32(dev, D, fn, "D", (1,))
    check_shape(D, (E,), fn, "D")
    return Bt, T, E, N
