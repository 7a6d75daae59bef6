"""Normalization over the last axis: layernorm (GPT-2) and rmsnorm (Llama), forward and backward.

Versions (one numbering: csrc/kernels/norm.cpp, csrc/cuda/norm.cu, backend= names)
    1 naive  C++, CUDA  the formulas row by row with float64 sums (C++: one thread; CUDA: a
                        thread per row); the backward sums dweight / dbias column by column
    2 fast   C++, CUDA  C++: threads over rows, one read of a row for its statistics (Chan's
                        merge of per-lane mean and M2), streaming stores for large outputs;
                        CUDA: a warp per row, lanes over the columns, sums in warp shuffles
backend="auto" (or "fast"): 2; "numpy": kernelgpt.reference.

x is [..., C]; the statistics (mean, rstd) have shape x.shape[:-1]. NaN or inf anywhere in a
row makes that row of y and its rstd NaN (mean: inf or NaN). With eps = 0 a constant row has
variance 0 and gives inf rstd and NaN y. The fast kernels sum in float32 (after a shift by the
row's first value for layernorm), so |x| must stay below ~1e19 (x^2 overflows float32 beyond).
"""
from __future__ import annotations

import numpy as np

from .. import _C, reference
from ._dispatch import Versions, check_f32, check_shape, into, output, ptr, where_of

__all__ = ["layernorm", "layernorm_backward", "rmsnorm", "rmsnorm_backward", "VERSIONS"]

VERSIONS = Versions("norm", {1: ("naive", "cpu cuda"), 2: ("fast", "cpu cuda")},
                    auto={"cpu": 2, "cuda": 2})


def check_eps(eps, fn) -> float:
    """eps must be a real number, finite and >= 0 (TypeError / ValueError naming eps)."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.integer, np.floating)):
        raise TypeError(f"{fn}: eps must be a float, got {type(eps).__name__}")
    eps = float(eps)
    if not (0.0 <= eps <= float(np.finfo(np.float32).max)):
        raise ValueError(f"{fn}: eps must be a finite number >= 0, got {eps}")
    return eps


def _check(dev, fn, x, weight, bias=None, dy=None, stats=()):
    """x [..., C], weight [C], bias [C] or None, dy like x, stats of shape x.shape[:-1]."""
    check_f32(dev, x, fn, "x")
    C = x.shape[-1]
    check_f32(dev, weight, fn, "weight")
    check_shape(weight, (C,), fn, "weight")
    if bias is not None:
        check_f32(dev, bias, fn, "bias")
        check_shape(bias, (C,), fn, "bias")
    if dy is not None:
        check_f32(dev, dy, fn, "dy")
        check_shape(dy, x.shape, fn, "dy")
    for name, s in stats:
        check_f32(dev, s, fn, name)
        check_shape(s, x.shape[:-1], fn, name)
    return C


def layernorm(x, weight, bias=None, eps=1e-5, *, return_stats=False, out=None, backend="auto"):
    """Layer normalization over the last axis (PyTorch's LayerNorm, biased variance).

    x: [..., C], weight: [C], bias: [C] or None.  Returns y [..., C], or (y, mean, rstd) with
    return_stats=True, mean and rstd float32 of shape x.shape[:-1]:
        y = (x - mean) * rstd * weight + bias,  rstd = 1 / sqrt(var + eps)
    eps: a finite float >= 0.  The statistics are what layernorm_backward needs.
    """
    fn = "layernorm"
    eps = check_eps(eps, fn)
    where, dev = where_of(fn, backend, x)
    if where == "cpu":
        return _C.layernorm(x, weight, bias, eps, out, bool(return_stats),
                            VERSIONS.number(backend, "cpu"))
    C = _check(dev, fn, x, weight, bias)
    if where == "numpy":
        y, mean, rstd = reference.layernorm(x, weight, bias, eps)
        y = into(out, y)
        return (y, into(None, mean), into(None, rstd)) if return_stats else y
    version = VERSIONS.number(backend, "cuda")
    xp = dev.xp
    y = output(dev, out, x.shape, fn, (x, weight, bias))
    mean = xp.empty(x.shape[:-1], xp.float32) if return_stats else None
    rstd = xp.empty(x.shape[:-1], xp.float32) if return_stats else None
    dev.lib.cuda_layernorm(version, x.data.ptr, weight.data.ptr, ptr(bias),
                           y.data.ptr, ptr(mean), ptr(rstd), x.size // C, C, eps, dev.stream())
    return (y, mean, rstd) if return_stats else y


def layernorm_backward(dy, x, weight, mean, rstd, *, backend="auto"):
    """Gradients of layernorm: returns (dx [..., C], dweight [C], dbias [C]).

    dy, x: [..., C]; weight: [C]; mean, rstd: x.shape[:-1] (from layernorm(...,
    return_stats=True)). dweight and dbias sum over all rows (per-thread partial sums in float64,
    added in a fixed order: bit-identical for a given thread count).
    """
    fn = "layernorm_backward"
    where, dev = where_of(fn, backend, x, dy)
    if where == "cpu":
        return _C.layernorm_backward(dy, x, weight, mean, rstd,
                                     VERSIONS.number(backend, "cpu"))
    C = _check(dev, fn, x, weight, dy=dy, stats=(("mean", mean), ("rstd", rstd)))
    if where == "numpy":
        return tuple(into(None, g) for g in reference.layernorm_backward(dy, x, weight, mean,
                                                                         rstd))
    version = VERSIONS.number(backend, "cuda")
    xp = dev.xp
    dx, dw, db = xp.empty(x.shape, xp.float32), xp.empty(C, xp.float32), xp.empty(C, xp.float32)
    dev.lib.cuda_layernorm_backward(version, dy.data.ptr, x.data.ptr,
                                    weight.data.ptr, mean.data.ptr, rstd.data.ptr, dx.data.ptr,
                                    dw.data.ptr, db.data.ptr, x.size // C, C, dev.stream())
    return dx, dw, db


def rmsnorm(x, weight, eps=1e-6, *, return_stats=False, out=None, backend="auto"):
    """RMS normalization over the last axis (Llama's RMSNorm).

    x: [..., C], weight: [C].  Returns y [..., C], or (y, rstd) with return_stats=True, rstd
    float32 of shape x.shape[:-1]:
        y = x * rstd * weight,  rstd = 1 / sqrt(mean(x^2) + eps)
    """
    fn = "rmsnorm"
    eps = check_eps(eps, fn)
    where, dev = where_of(fn, backend, x)
    if where == "cpu":
        return _C.rmsnorm(x, weight, eps, out, bool(return_stats),
                          VERSIONS.number(backend, "cpu"))
    C = _check(dev, fn, x, weight)
    if where == "numpy":
        y, rstd = reference.rmsnorm(x, weight, eps)
        y = into(out, y)
        return (y, into(None, rstd)) if return_stats else y
    version = VERSIONS.number(backend, "cuda")
    y = output(dev, out, x.shape, fn, (x, weight))
    rstd = dev.xp.empty(x.shape[:-1], np.float32) if return_stats else None
    dev.lib.cuda_rmsnorm(version, x.data.ptr, weight.data.ptr, y.data.ptr,
                         ptr(rstd), x.size // C, C, eps, dev.stream())
    return (y, rstd) if return_stats else y


def rmsnorm_backward(dy, x, weight, rstd, *, backend="auto"):
    """Gradients of rmsnorm: returns (dx [..., C], dweight [C]).

    dy, x: [..., C]; weight: [C]; rstd: x.shape[:-1] (from rmsnorm(..., return_stats=True)).
    """
    fn = "rmsnorm_backward"
    where, dev = where_of(fn, backend, x, dy)
    if where == "cpu":
        return _C.rmsnorm_backward(dy, x, weight, rstd,
                                   VERSIONS.number(backend, "cpu"))
    C = _check(dev, fn, x, weight, dy=dy, stats=(("rstd", rstd),))
    if where == "numpy":
        return tuple(into(None, g) for g in reference.rmsnorm_backward(dy, x, weight, rstd))
    version = VERSIONS.number(backend, "cuda")
    xp = dev.xp
    dx, dw = xp.empty(x.shape, xp.float32), xp.empty(C, xp.float32)
    dev.lib.cuda_rmsnorm_backward(version, dy.data.ptr, x.data.ptr,
                                  weight.data.ptr, rstd.data.ptr, dx.data.ptr, dw.data.ptr,
                                  x.size // C, C, dev.stream())
    return dx, dw
