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
    """A device array: CuPy (a GPU) or kernelgpt.cuda_emu (the same kernels, emulated)."""
    mod = type(x).__module__
    return mod.split(".")[0] == "cupy" or mod == "kernelgpt.cuda_emu"


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


# Kernel families whose fast path kernel_paths() reports (each has _C.<family>_path()).
_FAMILIES = ["matmul", "softmax", "cross_entropy", "attention", "norm", "activation", "embedding",
             "rope", "adamw"]


def kernel_paths() -> dict:
    """The code path each kernel family's fast version takes on this CPU."""
    return {name: getattr(_C, name + "_path")() for name in _FAMILIES}


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
    if _is_cupy(q):
        return _cuda().attention(q, k, v, causal=causal, scale=scale, return_lse=return_lse,
                                 out=out, kv_length=kv_length, backend=backend)
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
    if _is_cupy(q):
        return _cuda().attention_backward(dout, q, k, v, out, lse, causal=causal, scale=scale,
                                          backend=backend)
    if backend == "numpy":
        _check_attention_numpy("attention_backward", q, k, v, causal, scale)
        grads = reference.attention_backward(dout, q, k, v, out, lse, causal, scale)
        return tuple(np.asarray(g, np.float32) for g in grads)
    return _C.attention_backward(dout, q, k, v, out, lse, bool(causal), scale,
                                 _native_version(backend, "flash"))


# ---- normalization: layernorm, rmsnorm -------------------------------------------------------
#
# Over the last axis of x [..., C]; the statistics (mean, rstd) have shape x.shape[:-1].
# NaN or inf anywhere in a row makes that row of y and its rstd NaN (mean: inf or NaN). With
# eps = 0 a constant row has variance 0 and gives inf rstd and NaN y. The fast kernels sum in
# float32 (after a shift by the row's first value for layernorm), so |x| must stay below ~1e19
# (x^2 overflows float32 beyond that).

__all__ += ["layernorm", "layernorm_backward", "rmsnorm", "rmsnorm_backward"]


def _check_eps(eps, fn):
    """eps must be a real number, finite and >= 0 (TypeError / ValueError naming eps)."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.integer, np.floating)):
        raise TypeError(f"{fn}: eps must be a float, got {type(eps).__name__}")
    eps = float(eps)
    if not (0.0 <= eps <= float(np.finfo(np.float32).max)):
        raise ValueError(f"{fn}: eps must be a finite number >= 0, got {eps}")
    return eps


def layernorm(x, weight, bias=None, eps=1e-5, *, return_stats=False, out=None, backend="auto"):
    """Layer normalization over the last axis (PyTorch's LayerNorm, biased variance).

    x: [..., C], weight: [C], bias: [C] or None.  Returns y [..., C], or (y, mean, rstd) with
    return_stats=True, mean and rstd float32 of shape x.shape[:-1]:
        y = (x - mean) * rstd * weight + bias,  rstd = 1 / sqrt(var + eps)
    eps: a finite float >= 0.  The statistics are what layernorm_backward needs.
    """
    eps = _check_eps(eps, "layernorm")
    if _is_cupy(x):
        return _cuda().layernorm(x, weight, bias, eps, return_stats=return_stats, out=out,
                                 backend=backend)
    if backend == "numpy":
        y, mean, rstd = reference.layernorm(x, weight, bias, eps)
        y = _into(out, y)
        if return_stats:
            return y, np.asarray(mean, np.float32), np.asarray(rstd, np.float32)
        return y
    return _C.layernorm(x, weight, bias, eps, out, bool(return_stats),
                        _native_version(backend, "fast"))


def layernorm_backward(dy, x, weight, mean, rstd, *, backend="auto"):
    """Gradients of layernorm: returns (dx [..., C], dweight [C], dbias [C]).

    dy, x: [..., C]; weight: [C]; mean, rstd: x.shape[:-1] (from layernorm(...,
    return_stats=True)). dweight and dbias sum over all rows (per-thread partial sums in float64,
    added in a fixed order: bit-identical for a given thread count).
    """
    if _is_cupy(x):
        return _cuda().layernorm_backward(dy, x, weight, mean, rstd, backend=backend)
    if backend == "numpy":
        dx, dw, db = reference.layernorm_backward(dy, x, weight, mean, rstd)
        return (np.asarray(dx, np.float32), np.asarray(dw, np.float32),
                np.asarray(db, np.float32))
    return _C.layernorm_backward(dy, x, weight, mean, rstd, _native_version(backend, "fast"))


def rmsnorm(x, weight, eps=1e-6, *, return_stats=False, out=None, backend="auto"):
    """RMS normalization over the last axis (Llama's RMSNorm).

    x: [..., C], weight: [C].  Returns y [..., C], or (y, rstd) with return_stats=True, rstd
    float32 of shape x.shape[:-1]:
        y = x * rstd * weight,  rstd = 1 / sqrt(mean(x^2) + eps)
    """
    eps = _check_eps(eps, "rmsnorm")
    if _is_cupy(x):
        return _cuda().rmsnorm(x, weight, eps, return_stats=return_stats, out=out,
                               backend=backend)
    if backend == "numpy":
        y, rstd = reference.rmsnorm(x, weight, eps)
        y = _into(out, y)
        return (y, np.asarray(rstd, np.float32)) if return_stats else y
    return _C.rmsnorm(x, weight, eps, out, bool(return_stats), _native_version(backend, "fast"))


def rmsnorm_backward(dy, x, weight, rstd, *, backend="auto"):
    """Gradients of rmsnorm: returns (dx [..., C], dweight [C]).

    dy, x: [..., C]; weight: [C]; rstd: x.shape[:-1] (from rmsnorm(..., return_stats=True)).
    """
    if _is_cupy(x):
        return _cuda().rmsnorm_backward(dy, x, weight, rstd, backend=backend)
    if backend == "numpy":
        dx, dw = reference.rmsnorm_backward(dy, x, weight, rstd)
        return np.asarray(dx, np.float32), np.asarray(dw, np.float32)
    return _C.rmsnorm_backward(dy, x, weight, rstd, _native_version(backend, "fast"))


# ---- activations: relu, sigmoid, tanh, silu, gelu, swiglu -----------------------------------
#
# Elementwise on any shape; the backward functions take the forward's INPUT x and dy and
# return dx = dy * f'(x) (same shape). Accurate to 2e-6 relative over the whole float range
# (most to 2e-7; where a derivative crosses zero, silu' at -1.28 and gelu' at -0.75, to
# 2e-7 absolute). Outputs over 32 MiB are written with streaming (cache-bypassing) stores.
# NaN in x gives NaN; +-inf in x gives the limit (relu(inf) = inf, sigmoid(-inf) = 0,
# silu(-inf) = gelu(-inf) = -0, every derivative at +-inf is its limit 0 or 1). dy is simply
# multiplied in: NaN or inf in dy gives NaN or inf (inf * 0 = NaN where f'(x) = 0).

__all__ += ["relu", "relu_backward", "sigmoid", "sigmoid_backward", "tanh", "tanh_backward",
            "silu", "silu_backward", "gelu", "gelu_backward", "swiglu", "swiglu_backward"]


def _check_approximate(approximate, fn):
    if not isinstance(approximate, str) or approximate not in ("tanh", "none"):
        raise ValueError(f"{fn}: approximate must be 'tanh' or 'none', got {approximate!r}")


def _forward(name, x, out, backend, approximate="tanh"):
    if _is_cupy(x):
        return _cuda().activation(name, x, approximate, out, backend)
    if backend == "numpy":
        ref = getattr(reference, name)
        return _into(out, ref(x, approximate) if name == "gelu" else ref(x))
    return _C.activation(x, name, approximate, out, _native_version(backend, "fast"))


def _backward(name, dy, x, out, backend, approximate="tanh"):
    if _is_cupy(x):
        return _cuda().activation_backward(name, dy, x, approximate, out, backend)
    if backend == "numpy":
        ref = getattr(reference, name + "_backward")
        return _into(out, ref(dy, x, approximate) if name == "gelu" else ref(dy, x))
    return _C.activation_backward(dy, x, name, approximate, out, _native_version(backend, "fast"))


def relu(x, *, out=None, backend="auto"):
    """max(x, 0). x: any shape; returns the same shape."""
    return _forward("relu", x, out, backend)


def relu_backward(dy, x, *, out=None, backend="auto"):
    """dy * (x > 0). dy, x: the same shape (x: the forward's input)."""
    return _backward("relu", dy, x, out, backend)


def sigmoid(x, *, out=None, backend="auto"):
    """1 / (1 + exp(-x)). x: any shape; returns the same shape."""
    return _forward("sigmoid", x, out, backend)


def sigmoid_backward(dy, x, *, out=None, backend="auto"):
    """dy * sigmoid(x) * (1 - sigmoid(x)). dy, x: the same shape (x: the forward's input)."""
    return _backward("sigmoid", dy, x, out, backend)


def tanh(x, *, out=None, backend="auto"):
    """tanh(x). x: any shape; returns the same shape."""
    return _forward("tanh", x, out, backend)


def tanh_backward(dy, x, *, out=None, backend="auto"):
    """dy * (1 - tanh(x)^2). dy, x: the same shape (x: the forward's input)."""
    return _backward("tanh", dy, x, out, backend)


def silu(x, *, out=None, backend="auto"):
    """x * sigmoid(x) (a.k.a. swish). x: any shape; returns the same shape."""
    return _forward("silu", x, out, backend)


def silu_backward(dy, x, *, out=None, backend="auto"):
    """dy * (s + x s (1 - s)), s = sigmoid(x). dy, x: the same shape (x: the forward's input)."""
    return _backward("silu", dy, x, out, backend)


def gelu(x, *, approximate="tanh", out=None, backend="auto"):
    """GELU. x: any shape; returns the same shape.

    approximate="tanh" (GPT-2): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)));
    approximate="none": the exact x * Phi(x), Phi the standard normal CDF (erf form).
    """
    _check_approximate(approximate, "gelu")
    return _forward("gelu", x, out, backend, approximate)


def gelu_backward(dy, x, *, approximate="tanh", out=None, backend="auto"):
    """dy * gelu'(x) for the same `approximate` as the forward. dy, x: the same shape."""
    _check_approximate(approximate, "gelu_backward")
    return _backward("gelu", dy, x, out, backend, approximate)


def swiglu(gate, up, *, out=None, backend="auto"):
    """silu(gate) * up (Llama's gated MLP). gate, up: the same shape; returns that shape."""
    if _is_cupy(gate):
        return _cuda().swiglu(gate, up, out=out, backend=backend)
    if backend == "numpy":
        return _into(out, reference.swiglu(gate, up))
    return _C.swiglu(gate, up, out, _native_version(backend, "fast"))


def swiglu_backward(dy, gate, up, *, backend="auto"):
    """Returns (dgate, dup) = (dy * up * silu'(gate), dy * silu(gate)); all the same shape."""
    if _is_cupy(gate):
        return _cuda().swiglu_backward(dy, gate, up, backend=backend)
    if backend == "numpy":
        dgate, dup = reference.swiglu_backward(dy, gate, up)
        return np.asarray(dgate, np.float32), np.asarray(dup, np.float32)
    return _C.swiglu_backward(dy, gate, up, _native_version(backend, "fast"))


# ---- scalar options (shared by the families below) -----------------------------------------

def _int_option(x, fn, name):
    """An integer option (Python or numpy int, not bool): TypeError otherwise."""
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)):
        raise TypeError(f"{fn}: {name} must be an int, got {type(x).__name__}")
    x = int(x)
    if not -(1 << 62) <= x < (1 << 62):
        raise ValueError(f"{fn}: {name} = {x} is out of range")
    return x


def _float_option(x, fn, name):
    """A real-number option (int or float, not bool): TypeError otherwise."""
    if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
        raise TypeError(f"{fn}: {name} must be a number, got {type(x).__name__}")
    return float(x)


# ---- embedding ------------------------------------------------------------------------------
#
# ids: an integer array of any shape (any integer dtype; int64 is used without a copy), every
# value in [0, V) (ValueError naming the flat index and the value otherwise).

__all__ += ["embedding", "embedding_backward"]


def embedding(ids, table, *, out=None, backend="auto"):
    """Row lookup: out[..., :] = table[ids[...], :].

    ids: [...] integers in [0, V); table: [V, C] float32.  Returns [..., C] float32.
    NaN / inf in table rows are copied like any other value.
    """
    if _is_cupy(table):
        return _cuda().embedding(ids, table, out=out, backend=backend)
    if backend == "numpy":
        return _into(out, reference.embedding(ids, table))
    return _C.embedding(ids, table, out, _native_version(backend, "fast"))


def embedding_backward(dout, ids, num_embeddings, *, out=None, accumulate=False, backend="auto"):
    """Gradient of embedding with respect to the table: a scatter-add.

    dout: [..., C] float32 (ids.shape + (C,)); ids: [...] integers in [0, num_embeddings).
    Returns dtable [num_embeddings, C]: row v = sum of dout[j] over the positions j with
    ids[j] == v (repeated ids add up; rows never named are 0). ``accumulate=True`` adds into
    ``out`` instead (gradient accumulation). The fast version gives each thread a disjoint
    range of table rows and adds in id order, so the result is bit-identical to the naive one
    (and the same for every thread count).
    """
    num_embeddings = _int_option(num_embeddings, "embedding_backward", "num_embeddings")
    if _is_cupy(dout):
        return _cuda().embedding_backward(dout, ids, num_embeddings, out=out,
                                          accumulate=accumulate, backend=backend)
    if backend == "numpy":
        result = reference.embedding_backward(dout, ids, num_embeddings)
        if accumulate:
            if out is None:
                raise ValueError("embedding_backward: accumulate=True needs out= (the array to add to)")
            result = out + result
        return _into(out, result)
    return _C.embedding_backward(dout, ids, num_embeddings, out, bool(accumulate),
                                 _native_version(backend, "fast"))


# ---- positions: sinusoidal table, rotary embeddings (RoPE) ---------------------------------
#
# Positions are integers in [0, 2^31). Angles are formed in float64 (position * frequency) and
# only their sin / cos rounded to float32, so position 1e6 is as accurate as position 1.

__all__ += ["sinusoidal_positions", "rope", "rope_backward"]


def sinusoidal_positions(T, C, *, base=10000.0, offset=0, backend="auto"):
    """The fixed position table of "Attention Is All You Need": [T, C] float32 with
        pe[t, 2i] = sin(p / base^(2i/C)),  pe[t, 2i+1] = cos(p / base^(2i/C)),  p = offset + t
    (for odd C the last column is a sin). T, C >= 1; base finite > 0; offset >= 0.
    """
    fn = "sinusoidal_positions"
    T, C = _int_option(T, fn, "T"), _int_option(C, fn, "C")
    base, offset = _float_option(base, fn, "base"), _int_option(offset, fn, "offset")
    if backend == "numpy":
        return reference.sinusoidal_positions(T, C, base, offset).astype(np.float32)
    return _C.sinusoidal_positions(T, C, base, offset, _native_version(backend, "fast"))


def rope(x, *, positions=None, offset=0, base=10000.0, layout="half", rotary_dim=None,
         inverse=False, out=None, backend="auto"):
    """Rotary position embedding (Su et al. 2021) of x [..., T, D] float32 (e.g. [B, H, T, D]).

    Each pair (x1, x2) of the first rd = rotary_dim (default D; even, <= D) columns of row t
    rotates by the angle p_t * w_i, w_i = base^(-2i/rd), i < rd/2:
        y1 = x1 cos - x2 sin,   y2 = x2 cos + x1 sin
    Columns rd..D-1 are copied unchanged.
      positions: None (p_t = offset + t) or integers [T] in [0, 2^31) (then offset must be 0).
      layout: "half" pairs (i, i + rd/2) (HF / GPT-NeoX rotate_half), "interleaved" pairs
        (2i, 2i + 1) (GPT-J, llama.cpp, Meta's original Llama code).
      inverse: rotate by minus the angle, which is exactly the backward (see rope_backward).
    Returns [..., T, D] float32. The frequencies and angles are float64 (HF computes the
    frequencies in float32, which drifts by ~1e-3 rad at position 32k). NaN / inf in x give
    NaN / inf in the outputs of their pair.
    """
    fn = "rope"
    offset, base = _int_option(offset, fn, "offset"), _float_option(base, fn, "base")
    if rotary_dim is not None:
        rotary_dim = _int_option(rotary_dim, fn, "rotary_dim")
    if not isinstance(layout, str) or layout not in ("half", "interleaved"):
        raise ValueError(f"{fn}: layout must be 'half' or 'interleaved', got {layout!r}")
    if _is_cupy(x):
        return _cuda().rope(x, positions=positions, offset=offset, base=base, layout=layout,
                            rotary_dim=rotary_dim, inverse=inverse, out=out, backend=backend)
    if backend == "numpy":
        return _into(out, reference.rope(x, positions, offset, base, layout, rotary_dim,
                                         bool(inverse)))
    return _C.rope(x, positions, offset, base, layout, rotary_dim, bool(inverse), out,
                   _native_version(backend, "fast"))


def rope_backward(dy, *, positions=None, offset=0, base=10000.0, layout="half", rotary_dim=None,
                  inverse=False, out=None, backend="auto"):
    """Gradient of rope: dx = R(-angle) dy, i.e. rope(dy, inverse=not inverse, ...) with the
    forward's keyword arguments. dy: [..., T, D] float32; returns [..., T, D]."""
    return rope(dy, positions=positions, offset=offset, base=base, layout=layout,
                rotary_dim=rotary_dim, inverse=not inverse, out=out, backend=backend)


# ---- optimizer: AdamW, gradient norm and clipping ------------------------------------------

__all__ += ["adamw_step", "grad_norm", "clip_grad_norm"]


def adamw_step(param, grad, m, v, *, step, lr, beta1=0.9, beta2=0.999, eps=1e-8,
               weight_decay=0.0, backend="auto"):
    """One AdamW step, in place on param, m and v (torch.optim.AdamW's formula). Returns None.

    param, grad, m, v: float32, the same shape, C-contiguous, no two overlapping; grad is only
    read. With bc1 = 1 - beta1^step and bc2 = 1 - beta2^step:
        param *= 1 - lr * weight_decay
        m = beta1 * m + (1 - beta1) * grad
        v = beta2 * v + (1 - beta2) * grad^2
        param -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)
    step: int >= 1 (the 1-based count of steps taken, including this one); lr >= 0;
    0 <= beta1, beta2 < 1; eps > 0; weight_decay >= 0; all finite (ValueError otherwise).
    A NaN / inf gradient makes that element's param, m and v NaN / inf (as in PyTorch).
    """
    fn = "adamw_step"
    step = _int_option(step, fn, "step")
    lr, beta1, beta2 = (_float_option(lr, fn, "lr"), _float_option(beta1, fn, "beta1"),
                        _float_option(beta2, fn, "beta2"))
    eps, weight_decay = _float_option(eps, fn, "eps"), _float_option(weight_decay, fn, "weight_decay")
    if _is_cupy(param):
        return _cuda().adamw_step(param, grad, m, v, step=step, lr=lr, beta1=beta1, beta2=beta2,
                                  eps=eps, weight_decay=weight_decay, backend=backend)
    if backend == "numpy":
        reference.adamw_step(param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay)
        return None
    _C.adamw_step(param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay,
                  _native_version(backend, "fast"))
    return None


def grad_norm(grads, *, backend="auto"):
    """The global L2 norm sqrt(sum of g^2 over every value of every array), as a float.

    grads: one float32 array or a list / tuple of them (any shapes, C-contiguous, non-empty).
    Squares are summed in float64 (per-thread partials added in a fixed order: the same
    result on every run with the same thread count). Any NaN gives NaN; otherwise any inf
    gives inf.
    """
    if _is_cupy(grads) or (isinstance(grads, (list, tuple)) and grads and _is_cupy(grads[0])):
        return _cuda().grad_norm(grads, backend=backend)
    if backend == "numpy":
        return reference.grad_norm(grads)
    return _C.grad_norm(grads, _native_version(backend, "fast"))


def clip_grad_norm(grads, max_norm, *, eps=1e-6, backend="auto"):
    """torch.nn.utils.clip_grad_norm_: returns the global norm before clipping, and if
    max_norm / (norm + eps) < 1 (so: norm > max_norm, up to eps) multiplies every array in
    place by that factor. grads as in grad_norm (each array at most once, writeable);
    max_norm: finite >= 0; eps: finite >= 0.

    A non-finite norm (NaN or inf in some gradient) is returned as is and the gradients are
    NOT modified (PyTorch would scale them all by NaN / 0); check the returned norm and skip
    the step.
    """
    fn = "clip_grad_norm"
    max_norm, eps = _float_option(max_norm, fn, "max_norm"), _float_option(eps, fn, "eps")
    if _is_cupy(grads) or (isinstance(grads, (list, tuple)) and grads and _is_cupy(grads[0])):
        return _cuda().clip_grad_norm(grads, max_norm, eps=eps, backend=backend)
    if backend == "numpy":
        return reference.clip_grad_norm(grads, max_norm, eps)
    return _C.clip_grad_norm(grads, max_norm, eps, _native_version(backend, "fast"))


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
    if _is_cupy(dy):
        return _cuda().softmax_backward(dy, y, scale=scale, out=out, backend=backend)
    if backend == "numpy":
        return _into(out, reference.softmax_backward(dy, y, scale=scale))
    return _C.softmax_backward(dy, y, out, scale, False, _native_version(backend, "fused"))


def log_softmax_backward(dy, y, *, scale=1.0, out=None, backend="auto"):
    """dx = scale * (dy - exp(y) * sum_j dy_j): the gradient of y = log_softmax(scale * x).

    dy, y: [..., S] float32 (y is the forward output). Masked entries (y = -inf) get dx = 0
    and their dy is left out of the sum. Returns dx [..., S].
    backend: "auto"/"fused", "naive", "numpy".
    """
    if _is_cupy(dy):
        return _cuda().softmax_backward(dy, y, scale=scale, out=out, log=True, backend=backend)
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
    if _is_cupy(logits):
        return _cuda().cross_entropy(logits, targets, ignore_index=_index(ignore_index),
                                     reduction=reduction, return_grad=return_grad, out=out,
                                     backend=backend)
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
    if _is_cupy(logits):
        return _cuda().cross_entropy_backward(logits, targets, dloss=dloss,
                                              ignore_index=_index(ignore_index),
                                              reduction=reduction, out=out, backend=backend)
    if backend == "numpy":
        _check_targets(logits, targets, ignore_index, "cross_entropy_backward")
        return _into(out, reference.cross_entropy_backward(logits, targets, dloss=dloss,
                                                           ignore_index=ignore_index,
                                                           reduction=reduction))
    return _C.cross_entropy_backward(logits, targets, dloss, _index(ignore_index), reduction, out,
                                     _native_version(backend, "online"))


# ---- quantized weights (ggml Q8_0 / Q4_1) ---------------------------------------------------

__all__ += ["QUANT_TYPES", "quant_row_bytes", "dequantize", "quant_matmul"]

_FAMILIES.append("quant")

# ggml's type ids (gguf.GGMLQuantizationType) for the formats we run.
QUANT_TYPES = {"q4_1": 3, "q8_0": 8}
_QUANT_NAMES = {v: k for k, v in QUANT_TYPES.items()}


def _qtype(qtype, fn):
    """'q8_0' / 'Q8_0' / 8 / gguf.GGMLQuantizationType.Q8_0 -> 'q8_0'."""
    if isinstance(qtype, str):
        name = qtype.lower()
        if name in QUANT_TYPES:
            return name
    elif isinstance(qtype, (int, np.integer)) and not isinstance(qtype, bool):
        if int(qtype) in _QUANT_NAMES:
            return _QUANT_NAMES[int(qtype)]
    else:
        raise TypeError(f"{fn}: qtype must be a name ('q8_0', 'q4_1') or a ggml type id, got "
                        f"{type(qtype).__name__}")
    raise ValueError(f"{fn}: unsupported qtype {qtype!r}; supported: 'q8_0' (8), 'q4_1' (3)")


def quant_row_bytes(qtype, K):
    """Bytes of one quantized row of K weights (K a multiple of 32)."""
    return reference.quant_row_bytes(_qtype(qtype, "quant_row_bytes"), K)


def _check_quant_numpy(fn, raw, name, rows, K):
    """The native kernels' checks of raw and K, for backend="numpy"."""
    if not isinstance(raw, np.ndarray) or raw.dtype != np.uint8:
        raise TypeError(f"{fn}: raw must be a numpy uint8 array")
    if K <= 0 or K % reference.QK:
        raise ValueError(f"{fn}: K must be a positive multiple of 32, got {K}")
    if rows <= 0:
        raise ValueError(f"{fn}: the number of rows must be positive, got {rows}")
    expected = rows * reference.quant_row_bytes(name, K)
    if raw.nbytes != expected:
        raise ValueError(f"{fn}: raw has {raw.nbytes} bytes, expected {expected} for {rows} "
                         f"rows of {K} {name} weights")


def dequantize(raw, qtype, shape, *, out=None, backend="auto"):
    """Quantized blocks -> float32 array of `shape` (last dimension a multiple of 32).

    raw: uint8, C-contiguous, exactly prod(shape) / 32 blocks (34 bytes each for Q8_0, 20
    for Q4_1), any shape (e.g. a GGUF tensor's data). qtype: 'q8_0', 'q4_1' or ggml's id.
    Q4_1 weights come out as one fused multiply-add d * q + m (numpy rounds twice: the two
    may differ in the last bit).
    """
    name = _qtype(qtype, "dequantize")
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    shape = tuple(_int_option(s, "dequantize", "shape") for s in shape)
    if backend == "numpy":
        rows = int(np.prod(shape[:-1], dtype=np.int64)) if shape else 0
        _check_quant_numpy("dequantize", raw, name, rows, shape[-1] if shape else 0)
        return _into(out, reference.dequantize(raw, name, shape))
    if _is_cupy(raw):
        return _cuda().dequantize(raw, name, shape, out=out, backend=backend)
    return _C.dequantize(raw, name, shape, out, _native_version(backend, "fast"))


def quant_matmul(x, raw, qtype, n_rows, *, out=None, backend="auto"):
    """y = x @ W^T where W [n_rows, K] is stored quantized (nn.Linear's weight layout).

    x: [K] or [M, K] float32 (K a multiple of 32)  ->  y: [n_rows] or [M, n_rows] float32.
    raw: uint8, exactly n_rows * K / 32 blocks. backend:
      "auto"   fused decode-and-dot for M <= 16 (decoding), dequantized panels + the blocked
               fp32 matmul for larger M (prefill); both fp32, within 1e-4 of the reference
      "naive"  dequantize a row, dot it (one thread)
      "fused" / "tiled"  force one of the two paths above
      "vnni"   llama.cpp's scheme: x quantized to int8 per block of 32, integer block dots
               (AVX512-VNNI where the CPU has it); ~1% error from quantizing x
      "numpy"  reference.quant_matmul (dequantize, then x @ W.T)
    """
    name = _qtype(qtype, "quant_matmul")
    n_rows = _int_option(n_rows, "quant_matmul", "n_rows")
    if backend == "numpy":
        if not isinstance(x, np.ndarray) or x.dtype != np.float32:
            raise TypeError("quant_matmul: x must be a float32 numpy array")
        if x.ndim not in (1, 2):
            raise ValueError(f"quant_matmul: x must be 1-D or 2-D, got shape {x.shape}")
        _check_quant_numpy("quant_matmul", raw, name, n_rows, x.shape[-1])
        return _into(out, reference.quant_matmul(x, raw, name, n_rows))
    if _is_cupy(x) or _is_cupy(raw):
        return _cuda().quant_matmul(x, raw, name, n_rows, out=out, backend=backend)
    return _C.quant_matmul(x, raw, name, n_rows, out, _native_version(backend, "auto"))


# ---- bfloat16 weights ---------------------------------------------------------------------------

__all__ += ["to_bf16", "from_bf16", "bf16_matmul"]

_FAMILIES.append("bf16")


def _check_bf16_numpy(fn, bits, name):
    if not isinstance(bits, np.ndarray) or bits.dtype != np.uint16:
        raise TypeError(f"{fn}: {name} must be a numpy uint16 array (bf16 bit patterns)")
    if bits.size == 0:
        raise ValueError(f"{fn}: {name} must not be empty")


def to_bf16(x, *, out=None, backend="auto"):
    """float32 array -> uint16 array of bf16 bit patterns, same shape: round to nearest, ties to
    even (denormals included); NaN stays NaN, overflow becomes inf."""
    if _is_cupy(x):
        return _cuda().to_bf16(x, out=out, backend=backend)
    if backend == "numpy":
        if not isinstance(x, np.ndarray) or x.dtype != np.float32:
            raise TypeError("to_bf16: x must be a float32 numpy array")
        bits = reference.to_bf16(x)
        if out is None:
            return bits
        _check_bf16_numpy("to_bf16", out, "out")
        if out.shape != bits.shape:
            raise ValueError(f"to_bf16: out has shape {out.shape}, expected {bits.shape}")
        out[...] = bits
        return out
    if backend not in ("auto", "fast"):
        raise ValueError(f"to_bf16: unknown backend {backend!r} (expected 'auto' or 'numpy')")
    return _C.to_bf16(x, out)


def from_bf16(bits, *, out=None, backend="auto"):
    """uint16 bf16 bit patterns -> float32 array of the same shape (exact)."""
    if _is_cupy(bits):
        return _cuda().from_bf16(bits, out=out, backend=backend)
    if backend == "numpy":
        _check_bf16_numpy("from_bf16", bits, "bits")
        return _into(out, reference.from_bf16(bits))
    if backend not in ("auto", "fast"):
        raise ValueError(f"from_bf16: unknown backend {backend!r} (expected 'auto' or 'numpy')")
    return _C.from_bf16(bits, out)


def bf16_matmul(x, w, *, out=None, backend="auto"):
    """y = x @ W^T where W [N, K] is stored as bf16 bits (uint16, nn.Linear's layout), with
    float32 accumulation.

    x: [K] or [M, K] float32  ->  y: [N] or [M, N] float32. backend:
      "auto"    "widen" for M <= 32 (decoding), "tiled" for larger M (prefill)
      "naive"   widen one weight at a time, scalar dot (one thread)
      "widen"   SIMD: bf16 widened to float32 by a 16-bit shift in registers, FMA
      "tiled"   widen panels of W to float32, then the blocked fp32 matmul
      "dpbf16"  x rounded to bf16 too, bf16 pair dot products (AVX512-BF16 VDPBF16PS where the
                CPU has it): ~2^-9 relative error per element of x; compare against
                bf16_matmul(from_bf16(to_bf16(x)), w)
      "numpy"   reference.bf16_matmul (float64 accumulation)
    On device arrays (CuPy / cuda_emu): x is rounded to bf16 on the device and the product runs
    on tensor cores ("wmma", the default) or "naive"; compare as for "dpbf16".
    """
    if _is_cupy(x):
        return _cuda().bf16_matmul(x, w, out=out, backend=backend)
    if backend == "numpy":
        if not isinstance(x, np.ndarray) or x.dtype != np.float32:
            raise TypeError("bf16_matmul: x must be a float32 numpy array")
        if x.ndim not in (1, 2):
            raise ValueError(f"bf16_matmul: x must be 1-D or 2-D, got shape {x.shape}")
        _check_bf16_numpy("bf16_matmul", w, "w")
        if w.ndim != 2 or w.shape[1] != x.shape[-1]:
            raise ValueError(f"bf16_matmul: w has shape {w.shape}, expected [N, {x.shape[-1]}]")
        return _into(out, reference.bf16_matmul(x, w))
    return _C.bf16_matmul(x, w, out, _native_version(backend, "auto"))
