"""The kernel API: one function per kernel, forward and backward.

Every function takes numpy float32 arrays (CuPy arrays run the CUDA kernels, see
``kernelgpt._cuda``) and returns new arrays, or writes into ``out=`` when given. The
``backend=`` argument picks the implementation:

    "auto"    the fastest native kernel for the array type (default)
    "naive"   the naive C++ version: plain loops a student can read in one sitting
    "numpy"   the numpy reference in ``kernelgpt.reference``: the baseline and the oracle
    other     a named version of that kernel family (e.g. matmul: "blocked")

Arguments are checked before any kernel runs (``kernelgpt._C`` does it, so the checks also
guard direct calls): float arrays must be float32 (TypeError otherwise, nothing is cast
behind your back), C-contiguous and non-empty (ValueError), shapes must agree (ValueError
naming the argument and the expected shape), ``out=`` must not overlap an input. Ids must be
in range. NaN and inf in inputs propagate as IEEE arithmetic says (a NaN in a softmax row
makes that row NaN); they never crash a kernel.
"""
from __future__ import annotations

import numpy as np

from . import _C, reference

__all__ = ["matmul", "linear", "kernel_paths"]

_BACKENDS = ("auto", "fast", "naive", "numpy")


def _is_cupy(x) -> bool:
    return type(x).__module__.split(".")[0] == "cupy"


def _native_version(backend: str, fast: str) -> str:
    """Maps backend= to the C++ version name (the C++ side rejects unknown names)."""
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a string, got {type(backend).__name__}")
    if backend in ("auto", "fast"):
        return fast
    return backend


def _into(out, result):
    """Puts a reference result into out= (if given) with the same checks as the kernels."""
    result = np.asarray(result, dtype=np.float32)
    if out is None:
        return result
    if not isinstance(out, np.ndarray) or out.dtype != np.float32:
        raise TypeError("out must be a float32 numpy array")
    if out.shape != result.shape:
        raise ValueError(f"out has shape {out.shape}, expected {result.shape}")
    out[...] = result
    return out


def _cuda():
    from . import _cuda as cuda_ops

    return cuda_ops


# ---- matmul ---------------------------------------------------------------------------------

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
    if _is_cupy(a) or _is_cupy(b):
        return _cuda().matmul(a, b, bias, trans_a=trans_a, trans_b=trans_b, out=out,
                              accumulate=accumulate, backend=backend)
    if backend == "numpy":
        result = reference.matmul(a, b, bias, trans_a=trans_a, trans_b=trans_b)
        if accumulate:
            if out is None:
                raise ValueError("matmul: accumulate=True needs out= (the array to add to)")
            result = out + result
        return _into(out, result)
    return _C.matmul(a, b, bias, out, bool(trans_a), bool(trans_b), bool(accumulate),
                     _native_version(backend, "blocked"))


def linear(x, weight, bias=None, *, out=None, backend="auto"):
    """y = x @ weight^T + bias, with x [..., in] and weight [out, in] (PyTorch's layout)."""
    if x.ndim not in (2, 3):
        raise ValueError(f"linear: x must be 2-D or 3-D, got shape {x.shape}")
    return matmul(x, weight, bias, trans_b=True, out=out, backend=backend)


def kernel_paths() -> dict:
    """The code path each kernel family's fast version takes on this CPU."""
    return {
        "matmul": _C.matmul_path(),
        "softmax": _C.softmax_path(),
        "cross_entropy": _C.cross_entropy_path(),
    }


# ---- softmax, log-softmax ---------------------------------------------------------------------
# Special values (native kernels and reference alike): a NaN or +inf in a row makes the whole
# row NaN (x - max(x) is inf - inf); -inf entries get probability exactly 0 (log: -inf); a row
# whose entries are all -inf (or fully masked by the caller) gives NaN, as in PyTorch.

__all__ += ["softmax", "log_softmax", "softmax_backward", "log_softmax_backward"]


def softmax(x, *, scale=1.0, causal=False, out=None, backend="auto"):
    """y = softmax(scale * x) over the last axis, computed stably (the row max is subtracted).

    x: [..., S] float32.  Returns y with the shape of x.
    causal=True views x as [..., T, S] (S >= T) and lets row i attend only to the columns
    j <= i + (S - T), aligned to the bottom right as with a KV cache; the other entries are
    exactly 0. backend: "auto"/"online" (one read for max and sum, SIMD, threads), "naive",
    "numpy".
    """
    if _is_cupy(x):
        return _cuda().softmax(x, scale=scale, causal=causal, out=out, backend=backend)
    if backend == "numpy":
        return _into(out, reference.softmax(x, scale=scale, causal=causal))
    return _C.softmax(x, out, scale, bool(causal), False, _native_version(backend, "online"))


def log_softmax(x, *, scale=1.0, causal=False, out=None, backend="auto"):
    """y = log_softmax(scale * x) = scale * x - logsumexp(scale * x) over the last axis.

    x: [..., S] float32.  Returns y with the shape of x; masked entries (causal=True, see
    ``softmax``) are -inf. backend: "auto"/"online", "naive", "numpy".
    """
    if _is_cupy(x):
        return _cuda().softmax(x, scale=scale, causal=causal, out=out, log=True, backend=backend)
    if backend == "numpy":
        return _into(out, reference.log_softmax(x, scale=scale, causal=causal))
    return _C.softmax(x, out, scale, bool(causal), True, _native_version(backend, "online"))


def softmax_backward(dy, y, *, scale=1.0, out=None, backend="auto"):
    """dx = scale * y * (dy - sum_j dy_j * y_j): the gradient of y = softmax(scale * x).

    dy, y: [..., S] float32 (y is the forward output; masked entries have y = 0 and get 0).
    Returns dx [..., S]. backend: "auto"/"fused", "naive", "numpy".
    """
    if backend == "numpy":
        return _into(out, reference.softmax_backward(dy, y, scale=scale))
    return _C.softmax_backward(dy, y, out, scale, False, _native_version(backend, "fused"))


def log_softmax_backward(dy, y, *, scale=1.0, out=None, backend="auto"):
    """dx = scale * (dy - exp(y) * sum_j dy_j): the gradient of y = log_softmax(scale * x).

    dy, y: [..., S] float32 (y is the forward output). Masked entries (y = -inf) get dx = 0
    and their dy is left out of the sum. Returns dx [..., S].
    backend: "auto"/"fused", "naive", "numpy".
    """
    if backend == "numpy":
        return _into(out, reference.log_softmax_backward(dy, y, scale=scale))
    return _C.softmax_backward(dy, y, out, scale, True, _native_version(backend, "fused"))


# ---- cross-entropy ----------------------------------------------------------------------------

from operator import index as _index  # noqa: E402  (an int, not a float, for ignore_index)

__all__ += ["cross_entropy", "cross_entropy_backward"]


def _check_targets(logits, targets, ignore_index, fn):
    """The numpy backend's version of the native argument checks on targets."""
    targets = np.asarray(targets)
    if targets.dtype.kind not in "iu":
        raise TypeError(f"{fn}: targets must be an integer array, got {targets.dtype}")
    bad = np.flatnonzero(((targets < 0) | (targets >= logits.shape[-1])) &
                         (targets != _index(ignore_index)))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{fn}: targets[{i}] = {int(targets.flat[i])} is out of range "
                         f"[0, {logits.shape[-1]})")


def cross_entropy(logits, targets, *, ignore_index=-100, reduction="mean", return_grad=False,
                  out=None, backend="auto"):
    """loss_i = -log softmax(logits_i)[targets_i], fused with its gradient.

    logits: [N, V] float32; targets: [N] integers in [0, V), or == ignore_index to skip a row
    (any other value is a ValueError naming the index and the value).
    reduction: "mean" over the rows that are not ignored (0.0 if every row is ignored, where
    PyTorch gives nan), "sum", or "none" (float32 [N], 0 for ignored rows). mean/sum return a
    Python float.
    return_grad=True returns (loss, dlogits) with dlogits [N, V] = d loss / d logits =
    (softmax(logits) - onehot(targets)) / count (mean) or without the division (sum, none);
    ignored rows are 0. The gradient comes from the same pass over the logits that computes
    the loss (online max and sum, then one write pass), and goes into ``out`` when given (an
    [N, V] float32 array to reuse across steps; it needs return_grad=True).
    NaN or +inf in a row makes that row's loss (and gradient) NaN; a target logit of -inf
    gives loss inf. backend: "auto"/"online", "naive", "numpy".
    """
    if out is not None and not return_grad:
        raise ValueError("cross_entropy: out= receives the gradient, so it needs return_grad=True")
    if backend == "numpy":
        _check_targets(logits, targets, ignore_index, "cross_entropy")
        result = reference.cross_entropy(logits, targets, ignore_index=ignore_index,
                                         reduction=reduction, return_grad=return_grad)
        if not return_grad:
            return result
        return result[0], _into(out, result[1])
    return _C.cross_entropy(logits, targets, _index(ignore_index), reduction, bool(return_grad),
                            out, _native_version(backend, "online"))


def cross_entropy_backward(logits, targets, *, dloss=1.0, ignore_index=-100, reduction="mean",
                           out=None, backend="auto"):
    """dlogits [N, V] = dloss * d cross_entropy(logits, targets) / d logits.

    Same arguments as ``cross_entropy``; dloss is a number for "mean" and "sum", and a
    float32 array [N] (or one number for every row) for "none". Ignored rows get 0.
    backend: "auto"/"online", "naive", "numpy".
    """
    if backend == "numpy":
        _check_targets(logits, targets, ignore_index, "cross_entropy_backward")
        return _into(out, reference.cross_entropy_backward(logits, targets, dloss=dloss,
                                                           ignore_index=ignore_index,
                                                           reduction=reduction))
    return _C.cross_entropy_backward(logits, targets, dloss, _index(ignore_index), reduction, out,
                                     _native_version(backend, "online"))
