"""bfloat16: conversion to and from float32, and matrix products with bf16 operands and float32
accumulation (bf16 weights for inference; bf16 tensor cores for mixed-precision training).

Versions (one numbering: csrc/kernels/bf16.cpp, csrc/cuda/matmul_bf16.cu, backend= names)
  bf16_matmul (y = x @ W^T, W [N, K] bf16 bits)  and  matmul_bf16 (both operands bf16, GPU)
    1 naive   C++, CUDA  widen one weight at a time, scalar dot (C++: one thread; CUDA: a
                         thread per output)
    2 widen   C++        decode: bf16 widened to float32 by a 16-bit shift in registers, FMA;
                         half the bytes of fp32 weights, so a memory-bound matvec runs ~2x faster
    3 tiled   C++        prefill: panels of W widened to float32, then the blocked fp32 matmul
    4 dpbf16  C++        x rounded to bf16 too, bf16 pair dot products (AVX512-BF16 VDPBF16PS
                         where the CPU has it): ~2^-9 relative error per element of x
    5 wmma    CUDA       tensor cores (WMMA 16x16x16 bf16 tiles, float accumulators); x is
                         rounded to bf16 on the device, as for version 4
    6 packed  C++        matmul_bf16 (both operands bf16, any transposes): matmul's BLIS loops
                         on operands packed as bf16 pairs, an 8x48 VDPBF16PS microkernel (two
                         multiply-adds per lane per instruction: ~2x the float32 matmul);
                         without AVX512-BF16 the pairs are widened and go through float32 FMAs
                         (csrc/kernels/matmul_bf16.cpp)
matmul_bf16 (mixed-precision training: GPT.to(device, precision="bf16")) has versions 1, 5
and 6; auto: "packed" on the CPU, "wmma" on a GPU.
backend="auto" of bf16_matmul: on the CPU "widen" for M <= 32 rows of x, "tiled" above (chosen in
csrc/kernels/bf16.cpp, which the decode runner shares: the C++ binding takes it as version 0,
"auto, by shape"); on a GPU "wmma". "numpy":
kernelgpt.reference.bf16_matmul (float64 accumulation).
to_bf16 / from_bf16 have one version each: round to nearest even on the bit pattern, and a
16-bit shift (exact).
"""
from __future__ import annotations

import numpy as np

from .. import _C, reference
from ._dispatch import (Versions, check_f32, check_shape, check_typed, into, output, ptr,
                        where_of)

__all__ = ["to_bf16", "from_bf16", "bf16_matmul", "matmul_bf16", "VERSIONS",
           "MATMUL_VERSIONS", "CONVERSION_VERSIONS"]

VERSIONS = Versions("bf16_matmul", {1: ("naive", "cpu cuda"), 2: ("widen", "cpu"),
                                    3: ("tiled", "cpu"), 4: ("dpbf16", "cpu"),
                                    5: ("wmma", "cuda")},
                    auto={"cpu": 0, "cuda": 5})  # 0: the C++ binding's "auto, by shape"

MATMUL_VERSIONS = Versions("matmul_bf16", {1: ("naive", "cpu cuda"), 5: ("wmma", "cuda"),
                                           6: ("packed", "cpu")},
                           auto={"cpu": 6, "cuda": 5})

CONVERSION_VERSIONS = Versions("bf16 conversion", {1: ("naive", "cpu cuda")},
                               auto={"cpu": 1, "cuda": 1})

_BITS = "bf16 bit patterns"


def to_bf16(x, *, out=None, backend="auto"):
    """float32 array -> uint16 array of bf16 bit patterns, same shape: round to nearest, ties to
    even (denormals included); NaN stays NaN, overflow becomes inf."""
    fn = "to_bf16"
    where, dev = where_of(fn, backend, x)
    if where != "numpy":
        CONVERSION_VERSIONS.number(backend, "cuda" if where == "device" else "cpu")
    if where == "cpu":
        return _C.to_bf16(x, out)
    check_f32(dev, x, fn, "x")
    if where == "numpy":
        bits = reference.to_bf16(x)
        if out is None:
            return bits
        check_typed(dev, out, np.uint16, fn, "out", _BITS)
        check_shape(out, bits.shape, fn, "out")
        out[...] = bits
        return out
    out = output(dev, out, x.shape, fn, (), dtype=np.uint16)
    dev.lib.cuda_to_bf16(x.data.ptr, out.data.ptr, x.size, dev.stream())
    return out


def from_bf16(bits, *, out=None, backend="auto"):
    """uint16 bf16 bit patterns -> float32 array of the same shape (exact)."""
    fn = "from_bf16"
    where, dev = where_of(fn, backend, bits)
    if where != "numpy":
        CONVERSION_VERSIONS.number(backend, "cuda" if where == "device" else "cpu")
    if where == "cpu":
        return _C.from_bf16(bits, out)
    check_typed(dev, bits, np.uint16, fn, "bits", _BITS)
    if where == "numpy":
        return into(out, reference.from_bf16(bits))
    xp = dev.xp
    y = (bits.astype(xp.uint32) << 16).view(xp.float32)  # the bits at the top of a float32
    if out is None:
        return y
    check_f32(dev, out, fn, "out")
    check_shape(out, bits.shape, fn, "out")
    out[...] = y
    return out


def bf16_matmul(x, w, *, out=None, backend="auto"):
    """y = x @ W^T where W [N, K] is stored as bf16 bits (uint16, nn.Linear's layout), with
    float32 accumulation.

    x: [K] or [M, K] float32  ->  y: [N] or [M, N] float32. backend: "auto", "naive", "widen",
    "tiled", "dpbf16" (C++: compare "dpbf16" against bf16_matmul(from_bf16(to_bf16(x)), w)),
    "wmma" (CUDA), "numpy" (see the versions above). On device arrays x is rounded to bf16 on
    the device and the product runs on tensor cores ("wmma", the default) or "naive".
    """
    fn = "bf16_matmul"
    where, dev = where_of(fn, backend, x)
    if where == "cpu":
        return _C.bf16_matmul(x, w, out, VERSIONS.number(backend, "cpu"))
    check_f32(dev, x, fn, "x", (1, 2))
    check_typed(dev, w, np.uint16, fn, "w", _BITS)
    if w.ndim != 2 or w.shape[1] != x.shape[-1]:
        raise ValueError(f"{fn}: w has shape {tuple(w.shape)}, expected [N, {x.shape[-1]}]")
    if where == "numpy":
        return into(out, reference.bf16_matmul(x, w))
    xb = to_bf16(x)
    y = matmul_bf16(xb.reshape(-1, x.shape[-1]), w, trans_b=True,
                    out=None if out is None else out.reshape(-1, w.shape[0]), backend=backend)
    return y.reshape(x.shape[:-1] + (w.shape[0],)) if out is None else out


def matmul_bf16(a, b, bias=None, *, trans_a=False, trans_b=False, out=None, accumulate=False,
                activation=None, approximate="tanh", act_out=None, act_x=None, backend="auto"):
    """c = op(a) @ op(b) (+ bias) (+ c): a [M, K] ([K, M] with trans_a) and b [K, N] ([N, K]
    with trans_b) as bf16 bits (uint16) or as float32 (rounded to bf16, nearest even: the same
    products as to_bf16 first; on the CPU the rounding happens as the operand is packed, so it
    costs no extra pass), float32 bias [N], float32 accumulation and output.
    The three products of a linear layer's training step (forward, dX, dW) all have this form:
    GPT.to(device, precision="bf16") trains with it, on the CPU ("packed": VDPBF16PS) or a GPU
    ("wmma": tensor cores). backend: "auto", "naive", "packed" (C++), "wmma" (CUDA), "numpy"
    (reference.matmul_bf16: exact products, float64 sums).

    Activation epilogue (activation= "gelu" (approximate "tanh"/"none"), "relu", "silu",
    "sigmoid", "tanh"), applied to the finished c while it is in cache:
      act_out=Y  forward of a linear layer + f: c is the pre-activation, and Y = f(c) too;
      act_x=X    backward through f: c = (op(a) @ op(b)) * f'(X) (dX of the layer before f).
    The unfused composition (matmul_bf16, then ops.gelu / ops.gelu_backward) is its oracle."""
    fn = "matmul_bf16"
    if (act_out is not None or act_x is not None) and not activation:
        raise ValueError(f"{fn}: act_out= and act_x= need activation=")
    where, dev = where_of(fn, backend, a)
    if where == "cpu":
        return _C.matmul_bf16(a, b, bias, out, bool(trans_a), bool(trans_b), bool(accumulate),
                              MATMUL_VERSIONS.number(backend, "cpu"), activation or "",
                              approximate, act_out, act_x)
    version = MATMUL_VERSIONS.number(backend, "cuda") if where == "device" else None
    if isinstance(a, dev.xp.ndarray) and a.dtype == np.float32:
        a = to_bf16(a)
    if isinstance(b, dev.xp.ndarray) and b.dtype == np.float32:
        b = to_bf16(b)
    check_typed(dev, a, np.uint16, fn, "a", _BITS)
    check_typed(dev, b, np.uint16, fn, "b", _BITS)
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"{fn}: a and b must be 2-D, got {tuple(a.shape)} and {tuple(b.shape)}")
    M, K = (a.shape[1], a.shape[0]) if trans_a else a.shape
    N, Kb = (b.shape[0], b.shape[1]) if trans_b else (b.shape[1], b.shape[0])
    if K != Kb:
        raise ValueError(f"{fn}: inner dimensions differ: a {tuple(a.shape)}, b {tuple(b.shape)} "
                         f"(trans_a={trans_a}, trans_b={trans_b})")
    if bias is not None:
        check_f32(dev, bias, fn, "bias", (1,))
        check_shape(bias, (N,), fn, "bias")
    if accumulate and out is None:
        raise ValueError(f"{fn}: accumulate=True needs out= (the array to add to)")
    if activation and (act_out is None) == (act_x is None):
        raise ValueError(f"{fn}: activation= needs exactly one of act_out= (forward) and act_x= "
                         "(backward)")
    if where == "numpy":
        c = reference.matmul_bf16(a, b, bias, trans_a, trans_b)
        c = into(out, out + c if accumulate else c)
    else:
        c = output(dev, out, (M, N), fn, (bias,))
        dev.lib.cuda_matmul_bf16(version, a.data.ptr, b.data.ptr, ptr(bias),
                                 c.data.ptr, M, N, K, bool(trans_a), bool(trans_b),
                                 bool(accumulate), dev.stream())
    if activation:  # the unfused epilogue: the activation kernels on the finished product
        from . import activation as act
        kw = {"approximate": approximate} if activation == "gelu" else {}
        sub = "numpy" if where == "numpy" else "auto"
        if act_out is not None:
            getattr(act, activation)(c, out=act_out, backend=sub, **kw)
        else:
            check_shape(act_x, (M, N), fn, "act_x")
            c[...] = getattr(act, activation + "_backward")(c, act_x, backend=sub, **kw)
    return c
