"""The CUDA path of `kernelgpt.ops` for CuPy arrays.

Same functions and signatures as the CPU kernels. Arrays must be CuPy float32, C-contiguous,
non-empty and on the current device; kernels run on CuPy's current stream and outputs are
allocated by CuPy, so there is no host round trip. Mixing numpy and CuPy arrays in one call is
a TypeError. This module imports CuPy only when a CuPy array reaches it.
"""
from __future__ import annotations

from . import _C


def available() -> bool:
    """True when the kernels were compiled with CUDA, CuPy imports and a GPU is visible."""
    if not hasattr(_C, "cuda_device_count") or _C.cuda_device_count() == 0:
        return False
    try:
        import cupy  # noqa: F401
    except Exception:
        return False
    return True


def _cupy():
    if not hasattr(_C, "cuda_device_count"):
        raise RuntimeError("kernelgpt was built without CUDA (no nvcc was found at build time)")
    import cupy
    return cupy


def _check(x, fn, name, ranks=None):
    cp = _cupy()
    if not isinstance(x, cp.ndarray):
        raise TypeError(f"{fn}: {name} must be a CuPy array like the other arguments, "
                        f"got {type(x).__name__} (mixing numpy and CuPy arrays is not allowed)")
    if x.dtype != cp.float32:
        raise TypeError(f"{fn}: {name} must be float32, got {x.dtype}")
    if ranks and x.ndim not in ranks:
        raise ValueError(f"{fn}: {name} must be " + " or ".join(f"{r}-D" for r in ranks) +
                         f", got shape {x.shape}")
    if not x.flags.c_contiguous:
        raise ValueError(f"{fn}: {name} must be C-contiguous (cupy.ascontiguousarray copies)")
    if x.size == 0:
        raise ValueError(f"{fn}: {name} has a zero-size dimension, shape {x.shape}")
    if x.device.id != cp.cuda.Device().id:
        raise ValueError(f"{fn}: {name} is on device {x.device.id}, "
                         f"the current device is {cp.cuda.Device().id}")
    return x


def _output(out, shape, fn, inputs):
    cp = _cupy()
    if out is None:
        return cp.empty(shape, dtype=cp.float32)
    _check(out, fn, "out")
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"{fn}: out has shape {tuple(out.shape)}, expected {tuple(shape)}")
    for x in inputs:
        if x is not None and cp.shares_memory(out, x, max_work="MAY_SHARE_BOUNDS"):
            raise ValueError(f"{fn}: out must not overlap an input array")
    return out


def _version(backend, names):
    if backend in ("auto", "fast"):
        return len(names) - 1
    if backend not in names:
        raise ValueError(f"unknown version '{backend}' for the CUDA kernel, expected one of "
                         f"{', '.join(repr(n) for n in names)}")
    return names.index(backend)


def _stream():
    return _cupy().cuda.get_current_stream().ptr


def matmul(a, b, bias=None, *, trans_a=False, trans_b=False, out=None, accumulate=False,
           backend="auto"):
    fn = "matmul"
    version = _version(backend, ["naive", "tiled"])
    _check(a, fn, "a", (2, 3))
    _check(b, fn, "b", (2, 3))
    m = a.shape[-1] if trans_a else a.shape[-2]
    ka = a.shape[-2] if trans_a else a.shape[-1]
    kb = b.shape[-1] if trans_b else b.shape[-2]
    n = b.shape[-2] if trans_b else b.shape[-1]
    if ka != kb:
        raise ValueError(f"{fn}: inner dimensions differ: op(a) is {(m, ka)}, op(b) is {(kb, n)}")
    if a.ndim == 3 and b.ndim == 3 and a.shape[0] != b.shape[0]:
        raise ValueError(f"{fn}: batch sizes differ: a {a.shape}, b {b.shape}")
    batch = a.shape[0] if a.ndim == 3 else (b.shape[0] if b.ndim == 3 else 1)
    if bias is not None:
        _check(bias, fn, "bias", (1,))
        if bias.shape != (n,):
            raise ValueError(f"{fn}: bias has shape {bias.shape}, expected {(n,)}")
    if accumulate and out is None:
        raise ValueError(f"{fn}: accumulate=True needs out= (the array to add to)")
    shape = (batch, m, n) if 3 in (a.ndim, b.ndim) else (m, n)
    c = _output(out, shape, fn, (a, b, bias))
    _C.cuda_matmul(version, a.data.ptr, b.data.ptr, 0 if bias is None else bias.data.ptr,
                   c.data.ptr, batch, m, n, ka, m * ka if a.ndim == 3 else 0,
                   kb * n if b.ndim == 3 else 0, m * n, bool(trans_a), bool(trans_b),
                   bool(accumulate), _stream())
    return c


def softmax(x, *, scale=1.0, causal=False, out=None, log=False, backend="auto"):
    fn = "log_softmax" if log else "softmax"
    version = _version(backend, ["naive", "online"])
    _check(x, fn, "x")
    cols = x.shape[-1]
    t = x.shape[-2] if x.ndim >= 2 else 1
    if causal:
        if x.ndim < 2:
            raise ValueError(f"{fn}: causal=True needs x of rank >= 2 ([..., T, S])")
        if cols < t:
            raise ValueError(f"{fn}: causal=True needs S >= T, got x shape {x.shape}")
    y = _output(out, x.shape, fn, (x,))
    _C.cuda_softmax(version, x.data.ptr, y.data.ptr, x.size // cols, cols, t, float(scale),
                    bool(causal), bool(log), _stream())
    return y
