"""matmul: C = op(A) @ op(B) (+ bias) (+ C), float32, and linear (nn.Linear's y = x W^T + b).

Versions (one numbering: csrc/kernels/matmul.cpp, csrc/cuda/matmul.cu, backend= names)
    1 naive       C++, CUDA  one dot product per output: the triple loop a student reads first
                             (CUDA: a thread per output, threadIdx.x down the rows: uncoalesced)
    2 coalesced   CUDA       threadIdx.x along a row of C: a warp reads 32 consecutive values
    3 tiled       CUDA       32x32 tiles of op(A) and op(B) staged in shared memory
    4 blocked1d   CUDA       1-D register blocking: each thread 8 outputs down a column
    5 blocked     C++, CUDA  register blocking. C++: A and B packed BLIS-style for an 8x48
                             AVX-512 microkernel (6x16 on AVX2), threads share the A panel;
                             CUDA: each thread a 4x4 grid of outputs of a 64x64 tile
    6 vectorized  CUDA       version 5 with float4 global loads where the layout allows
    7 warptiled   CUDA       128x128 block tiles, warps own 64x32 pieces, lanes 4x4 blocks
backend="auto" (or "fast"): 5 on the CPU, 7 on a GPU; "numpy": kernelgpt.reference.matmul.
"""
from __future__ import annotations

from .. import _C, reference
from ._dispatch import (Versions, accumulate_into, check_f32, check_shape, output, ptr,
                        where_of)

__all__ = ["matmul", "linear", "lowrank_add", "VERSIONS"]

VERSIONS = Versions("matmul", {
    1: ("naive", "cpu cuda"),
    2: ("coalesced", "cuda"),
    3: ("tiled", "cuda"),
    4: ("blocked1d", "cuda"),
    5: ("blocked", "cpu cuda"),
    6: ("vectorized", "cuda"),
    7: ("warptiled", "cuda"),
}, auto={"cpu": 5, "cuda": 7})


def matmul(a, b, bias=None, *, trans_a=False, trans_b=False, out=None, accumulate=False,
           backend="auto"):
    """C = op(a) @ op(b) (+ bias) (+ out if accumulate), float32.

    a: [M, K] or [B, M, K] (stored [.., K, M] when trans_a)
    b: [K, N] or [B, K, N] (stored [.., N, K] when trans_b, like nn.Linear's weight)
    bias: [N] or None.  Returns [M, N] or [B, M, N].

    The transposed forms are what backpropagation needs: for y = x @ W^T + b,
    dx = dy @ W (``matmul(dy, W)``) and dW = dy^T @ x (``matmul(dy, x, trans_a=True)``).
    ``accumulate=True`` adds into ``out`` (gradient accumulation without a temporary).
    """
    fn = "matmul"
    where, dev = where_of(fn, backend, a, b)
    if where == "cpu":
        return _C.matmul(a, b, bias, out, bool(trans_a), bool(trans_b), bool(accumulate),
                         VERSIONS.number(backend, "cpu"))
    shape, (batch, m, n, k) = _check(dev, fn, a, b, bias, trans_a, trans_b)
    if where == "numpy":
        return accumulate_into(fn, out, reference.matmul(a, b, bias, trans_a=trans_a,
                                                         trans_b=trans_b), accumulate)
    version = VERSIONS.number(backend, "cuda")
    if accumulate and out is None:
        raise ValueError(f"{fn}: accumulate=True needs out= (the array to add to)")
    c = output(dev, out, shape, fn, (a, b, bias))
    dev.lib.cuda_matmul(version, a.data.ptr, b.data.ptr, ptr(bias), c.data.ptr,
                        batch, m, n, k, m * k if a.ndim == 3 else 0, k * n if b.ndim == 3 else 0,
                        m * n, bool(trans_a), bool(trans_b), bool(accumulate), dev.stream())
    return c


def _check(dev, fn, a, b, bias, trans_a, trans_b):
    """The shape of C and (batch, M, N, K) of a valid call (numpy and device routes)."""
    check_f32(dev, a, fn, "a", (2, 3))
    check_f32(dev, b, fn, "b", (2, 3))
    m = a.shape[-1] if trans_a else a.shape[-2]
    ka = a.shape[-2] if trans_a else a.shape[-1]
    kb = b.shape[-1] if trans_b else b.shape[-2]
    n = b.shape[-2] if trans_b else b.shape[-1]
    if ka != kb:
        raise ValueError(f"{fn}: inner dimensions differ: op(a) is {(m, ka)}, op(b) is {(kb, n)}")
    if a.ndim == 3 and b.ndim == 3 and a.shape[0] != b.shape[0]:
        raise ValueError(f"{fn}: batch sizes differ: a {tuple(a.shape)}, b {tuple(b.shape)}")
    batch = a.shape[0] if a.ndim == 3 else (b.shape[0] if b.ndim == 3 else 1)
    if bias is not None:
        check_f32(dev, bias, fn, "bias", (1,))
        check_shape(bias, (n,), fn, "bias")
    shape = (batch, m, n) if 3 in (a.ndim, b.ndim) else (m, n)
    return shape, (batch, m, n, ka)


def linear(x, weight, bias=None, *, out=None, backend="auto"):
    """y = x @ weight^T + bias, with x [..., in] and weight [out, in] (PyTorch's layout)."""
    if x.ndim not in (2, 3):
        raise ValueError(f"linear: x must be 2-D or 3-D, got shape {x.shape}")
    return matmul(x, weight, bias, trans_b=True, out=out, backend=backend)


def lowrank_add(base, b, a, *, out=None, backend="auto"):
    """out = base + b @ a for a small inner dimension r: base [M, N], b [M, r], a [r, N].

    LoRA's merged weight W + s B A (the scale folded into b) in one pass: base read and out
    written once, where a copy of base followed by matmul(..., accumulate=True) passes over
    the big matrix four times. Memory-bound, one version (threads split the rows);
    "numpy": kernelgpt.reference.lowrank_add."""
    fn = "lowrank_add"
    where, dev = where_of(fn, backend, base, b, a)
    if where == "cpu":
        return _C.lowrank_add(base, b, a, out)
    for name, x in (("base", base), ("b", b), ("a", a)):
        check_f32(dev, x, fn, name, (2,))
    m, n = base.shape
    check_shape(b, (m, b.shape[1]), fn, "b")
    check_shape(a, (b.shape[1], n), fn, "a")
    c = output(dev, out, base.shape, fn, (base, b, a))
    c[...] = reference.lowrank_add(base, b, a) if where == "numpy" else base + b @ a
    return c
