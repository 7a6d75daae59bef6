"""softmax and log-softmax over the last axis, forward and backward, float32.

Versions (one numbering: csrc/kernels/softmax.cpp, csrc/cuda/softmax.cu, backend= names)
  forward
    1 naive    C++, CUDA  three passes per row: the max, the sum of exp, the outputs (C++: one
                          thread; CUDA: a thread per row)
    2 online   C++, CUDA  one read gives the max and the sum together (the running sum is
                          rescaled when the max grows), then one pass writes (C++: SIMD, threads
                          over rows, streaming stores; CUDA: a block per row, warp shuffles)
  backward
    1 naive    C++, CUDA  the reduction sum(dy * y), then dx, plain loops
    2 fused    C++, CUDA  the reduction and the write while the row is in cache (a block per row)
backend="auto" (or "fast"): 2; "numpy": kernelgpt.reference.

Special values (every version and the reference): a NaN or +inf in a row makes the whole row
NaN (x - max(x) is inf - inf); -inf entries get probability exactly 0 (log: -inf); a row whose
entries are all -inf (or fully masked) gives NaN, as in PyTorch.
"""
from __future__ import annotations

from .. import _C, reference
from ._dispatch import Versions, check_f32, check_shape, into, output, where_of

__all__ = ["softmax", "log_softmax", "softmax_backward", "log_softmax_backward",
           "VERSIONS", "BACKWARD_VERSIONS"]

VERSIONS = Versions("softmax", {1: ("naive", "cpu cuda"), 2: ("online", "cpu cuda")},
                    auto={"cpu": 2, "cuda": 2})
BACKWARD_VERSIONS = Versions("softmax_backward", {1: ("naive", "cpu cuda"),
                                                  2: ("fused", "cpu cuda")},
                             auto={"cpu": 2, "cuda": 2})


def softmax(x, *, scale=1.0, causal=False, out=None, backend="auto"):
    """y = softmax(scale * x) over the last axis, computed stably (the row max is subtracted).

    x: [..., S] float32.  Returns y with the shape of x.
    causal=True views x as [..., T, S] (S >= T) and lets row i attend only to the columns
    j <= i + (S - T), aligned to the bottom right as with a KV cache; the other entries are
    exactly 0. backend: "auto"/"online" (one read for max and sum, SIMD, threads), "naive",
    "numpy".
    """
    return _forward("softmax", x, scale, causal, out, backend, log=False)


def log_softmax(x, *, scale=1.0, causal=False, out=None, backend="auto"):
    """y = log_softmax(scale * x) = scale * x - logsumexp(scale * x) over the last axis.

    x: [..., S] float32.  Returns y with the shape of x; masked entries (causal=True, see
    ``softmax``) are -inf. backend: "auto"/"online", "naive", "numpy".
    """
    return _forward("log_softmax", x, scale, causal, out, backend, log=True)


def _forward(fn, x, scale, causal, out, backend, log):
    where, dev = where_of(fn, backend, x)
    if where == "cpu":
        return _C.softmax(x, out, scale, bool(causal), log,
                          VERSIONS.number(backend, "cpu"))
    check_f32(dev, x, fn, "x")
    cols = x.shape[-1]
    t = x.shape[-2] if x.ndim >= 2 else 1
    if causal:
        if x.ndim < 2:
            raise ValueError(f"{fn}: causal=True needs x of rank >= 2 ([..., T, S])")
        if cols < t:
            raise ValueError(f"{fn}: causal=True needs S >= T, got x shape {tuple(x.shape)}")
    if where == "numpy":
        formula = reference.log_softmax if log else reference.softmax
        return into(out, formula(x, scale=scale, causal=causal))
    version = VERSIONS.number(backend, "cuda")
    y = output(dev, out, x.shape, fn, (x,))
    dev.lib.cuda_softmax(version, x.data.ptr, y.data.ptr, x.size // cols, cols, t,
                         float(scale), bool(causal), log, dev.stream())
    return y


def softmax_backward(dy, y, *, scale=1.0, out=None, backend="auto"):
    """dx = scale * y * (dy - sum_j dy_j * y_j): the gradient of y = softmax(scale * x).

    dy, y: [..., S] float32 (y is the forward output; masked entries have y = 0 and get 0).
    Returns dx [..., S]. backend: "auto"/"fused", "naive", "numpy".
    """
    return _backward("softmax_backward", dy, y, scale, out, backend, log=False)


def log_softmax_backward(dy, y, *, scale=1.0, out=None, backend="auto"):
    """dx = scale * (dy - exp(y) * sum_j dy_j): the gradient of y = log_softmax(scale * x).

    dy, y: [..., S] float32 (y is the forward output). Masked entries (y = -inf) get dx = 0
    and their dy is left out of the sum. Returns dx [..., S].
    backend: "auto"/"fused", "naive", "numpy".
    """
    return _backward("log_softmax_backward", dy, y, scale, out, backend, log=True)


def _backward(fn, dy, y, scale, out, backend, log):
    where, dev = where_of(fn, backend, dy, y)
    if where == "cpu":
        return _C.softmax_backward(dy, y, out, scale, log,
                                   BACKWARD_VERSIONS.number(backend, "cpu"))
    check_f32(dev, dy, fn, "dy")
    check_f32(dev, y, fn, "y")
    check_shape(y, dy.shape, fn, "y")
    if where == "numpy":
        formula = reference.log_softmax_backward if log else reference.softmax_backward
        return into(out, formula(dy, y, scale=scale))
    version = BACKWARD_VERSIONS.number(backend, "cuda")
    dx = output(dev, out, dy.shape, fn, (dy, y))
    cols = dy.shape[-1]
    dev.lib.cuda_softmax_backward(version, dy.data.ptr, y.data.ptr,
                                  dx.data.ptr, dy.size // cols, cols, float(scale), log,
                                  dev.stream())
    return dx
