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
    paths["embedding"] = _C.embedding_path()  # embedding, embedding_backward
    paths["rope"] = _C.rope_path()  # rope, rope_backward, sinusoidal_positions
    paths["adamw"] = _C.adamw_path()  # adamw_step, grad_norm, clip_grad_norm
    return paths


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
    if backend == "numpy":
        return reference.clip_grad_norm(grads, max_norm, eps)
    return _C.clip_grad_norm(grads, max_norm, eps, _native_version(backend, "fast"))
