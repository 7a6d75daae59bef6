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
    paths = {"matmul": _C.matmul_path()}
    paths["attention"] = _C.attention_path()
    return paths


# ---- attention ------------------------------------------------------------------------------

__all__ += ["attention", "attention_backward"]


def _check_attention_numpy(fn, q, k, v, causal, scale):
    """The native kernels' argument checks, for backend="numpy" (which has no C++ side)."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{fn}: {name} must be a numpy array, got {type(x).__name__}")
        if x.ndim != 4:
            raise ValueError(f"{fn}: {name} must be 4-D, got shape {x.shape}")
    if k.shape != v.shape:
        raise ValueError(f"{fn}: k and v must have the same shape [B, Hkv, S, D], got k "
                         f"{k.shape} and v {v.shape}")
    B, H, T, D = q.shape
    if k.shape[0] != B or k.shape[3] != D:
        raise ValueError(f"{fn}: k and v must have shape [B, Hkv, S, D] = [{B}, Hkv, S, {D}] "
                         f"to match q {q.shape}, got {k.shape}")
    if H % k.shape[1] != 0:
        raise ValueError(f"{fn}: the number of query heads (q.shape[1] = {H}) must be a multiple "
                         f"of the number of kv heads (k.shape[1] = {k.shape[1]})")
    if causal and k.shape[2] < T:
        raise ValueError(f"{fn}: causal attention needs at least as many keys as queries, got "
                         f"T = {T} (q.shape[2]) and S = {k.shape[2]} (k.shape[2])")
    if scale is not None and not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"{fn}: scale must be finite and > 0, got {scale}")


def attention(q, k, v, *, causal=True, scale=None, return_lse=False, out=None, kv_length=None,
              backend="auto"):
    """Scaled dot-product attention: softmax(scale * q k^T + mask) v, float32.

    q: [B, H, T, D]; k, v: [B, Hkv, S, D] with H a multiple of Hkv (grouped-query attention:
    query head h reads kv head h // (H // Hkv); Hkv == H is ordinary multi-head attention).
    scale: defaults to 1 / sqrt(D); must be finite and > 0.
    causal: query i sees keys j <= i + (S - T), i.e. the T queries are the last T positions of
    the sequence (a KV cache: T new tokens against S cached ones; T == S is the usual causal
    mask). causal with S < T is a ValueError.
    Returns out [B, H, T, D], or (out, lse) with return_lse=True, where lse [B, H, T] is the
    natural-log logsumexp of each query's scaled, masked scores (attention_backward needs it).
    kv_length: use only the first kv_length rows of k and v (S = kv_length): k and v can then be
    the preallocated buffers of a KV cache [B, Hkv, capacity, D], read in place.

    backend: "auto" ("decode" when T <= 16, else "flash"), "flash" (tiled, online softmax),
    "decode" (split-K over the keys, for few queries against a long cache), "naive" (the full
    score matrix, plain loops), "numpy" (kernelgpt.reference.attention).
    Finite input never gives NaN. A NaN in q or k makes NaN the rows whose (visible) scores it
    reaches, as does an inf unless its score is -inf (then that key gets weight 0); a NaN or
    inf in v reaches the rows that weight it, and may reach rows that mask it (0 * NaN).
    """
    if backend == "numpy":
        if kv_length is not None:
            k, v = k[:, :, :kv_length], v[:, :, :kv_length]
        _check_attention_numpy("attention", q, k, v, causal, scale)
        result, lse = reference.attention(q, k, v, causal, scale)
        result = _into(out, result)
        return (result, np.asarray(lse, np.float32)) if return_lse else result
    version = _native_version(backend, "flash")
    if backend == "auto" and isinstance(q, np.ndarray) and q.ndim == 4 and q.shape[2] <= 16:
        version = "decode"  # measured: faster than "flash" up to T = 16 queries per head
    return _C.attention(q, k, v, out, bool(causal), scale, bool(return_lse), version, kv_length)


def attention_backward(dout, q, k, v, out, lse, *, causal=True, scale=None, backend="auto"):
    """Gradients of attention: returns (dq [B, H, T, D], dk [B, Hkv, S, D], dv [B, Hkv, S, D]).

    dout: [B, H, T, D], the gradient of the loss with respect to out; q, k, v, causal, scale as
    given to attention; out and lse: what attention(..., return_lse=True) returned. dk and dv
    are summed over the query heads that share a kv head.
    backend: "auto"/"flash" (flash-attention-2 style: recomputes the probabilities tile by tile
    from lse, O(T) extra memory), "naive", "numpy" (kernelgpt.reference.attention_backward).
    """
    if backend == "numpy":
        _check_attention_numpy("attention_backward", q, k, v, causal, scale)
        grads = reference.attention_backward(dout, q, k, v, out, lse, causal, scale)
        return tuple(np.asarray(g, np.float32) for g in grads)
    return _C.attention_backward(dout, q, k, v, out, lse, bool(causal), scale,
                                 _native_version(backend, "flash"))
