"""Activations: relu, sigmoid, tanh, silu, gelu (tanh form and exact), swiglu; forward and
backward, elementwise on any shape.

Versions (one numbering: csrc/kernels/activation.cpp, csrc/cuda/activation.cu, backend= names)
    1 naive  C++, CUDA  a scalar loop over std:: math (C++: one thread, gelu in float64; CUDA:
                        a thread per element)
    2 fast   C++, CUDA  C++: the same formulas on SIMD vectors (simd.h), threads over chunks,
                        streaming stores for outputs over 32 MiB; CUDA: float4 loads and stores
                        (backend="vec4" is the CUDA name of this version)
backend="auto": 2; "numpy": kernelgpt.reference.

The backward functions take the forward's INPUT x and dy and return dx = dy * f'(x) (same
shape). Accurate to 2e-6 relative over the whole float range (most to 2e-7; where a
derivative crosses zero, silu' at -1.28 and gelu' at -0.75, to 2e-7 absolute). NaN in x gives
NaN; +-inf in x gives the limit (relu(inf) = inf, sigmoid(-inf) = 0, silu(-inf) =
gelu(-inf) = -0, every derivative at +-inf is its limit 0 or 1). dy is simply multiplied in:
NaN or inf in dy gives NaN or inf (inf * 0 = NaN where f'(x) = 0).
"""
from __future__ import annotations

from .. import _C, reference
from ._dispatch import Versions, check_f32, check_shape, into, output, where_of

__all__ = ["relu", "relu_backward", "sigmoid", "sigmoid_backward", "tanh", "tanh_backward",
           "silu", "silu_backward", "gelu", "gelu_backward", "swiglu", "swiglu_backward",
           "swiglu_packed", "swiglu_packed_backward", "VERSIONS"]

VERSIONS = Versions("activation", {1: ("naive", "cpu cuda"), 2: ("fast", "cpu cuda")},
                    auto={"cpu": 2, "cuda": 2}, aliases={"vec4": "fast"})

# The operation codes of csrc/cuda/activation.cu.
_CUDA_OPS = {"gelu_tanh": 0, "gelu_none": 1, "silu": 2, "relu": 3, "sigmoid": 4, "tanh": 5}


def cuda_op(name: str, approximate: str = "tanh") -> int:
    """The code of activation `name` for the CUDA launchers (gelu's two forms differ)."""
    return _CUDA_OPS[f"gelu_{approximate}" if name == "gelu" else name]


def _check_approximate(approximate, fn):
    if not isinstance(approximate, str) or approximate not in ("tanh", "none"):
        raise ValueError(f"{fn}: approximate must be 'tanh' or 'none', got {approximate!r}")


def _forward(name, x, out, backend, approximate="tanh"):
    where, dev = where_of(name, backend, x)
    if where == "cpu":
        return _C.activation(x, name, approximate, out,
                             VERSIONS.number(backend, "cpu"))
    check_f32(dev, x, name, "x")
    if where == "numpy":
        formula = getattr(reference, name)
        return into(out, formula(x, approximate) if name == "gelu" else formula(x))
    version = VERSIONS.number(backend, "cuda")
    y = output(dev, out, x.shape, name, (x,))
    dev.lib.cuda_activation(version, cuda_op(name, approximate), x.data.ptr,
                            y.data.ptr, x.size, dev.stream())
    return y


def _backward(name, dy, x, out, backend, approximate="tanh"):
    fn = name + "_backward"
    where, dev = where_of(fn, backend, x, dy)
    if where == "cpu":
        return _C.activation_backward(dy, x, name, approximate, out,
                                      VERSIONS.number(backend, "cpu"))
    check_f32(dev, x, fn, "x")
    check_f32(dev, dy, fn, "dy")
    check_shape(dy, x.shape, fn, "dy")
    if where == "numpy":
        formula = getattr(reference, fn)
        return into(out, formula(dy, x, approximate) if name == "gelu" else formula(dy, x))
    version = VERSIONS.number(backend, "cuda")
    dx = output(dev, out, x.shape, fn, (x, dy))
    dev.lib.cuda_activation_backward(version, cuda_op(name, approximate),
                                     dy.data.ptr, x.data.ptr, dx.data.ptr, x.size, dev.stream())
    return dx


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
    fn = "swiglu"
    where, dev = where_of(fn, backend, gate, up)
    if where == "cpu":
        return _C.swiglu(gate, up, out, VERSIONS.number(backend, "cpu"))
    check_f32(dev, gate, fn, "gate")
    check_f32(dev, up, fn, "up")
    check_shape(up, gate.shape, fn, "up")
    if where == "numpy":
        return into(out, reference.swiglu(gate, up))
    version = VERSIONS.number(backend, "cuda")
    y = output(dev, out, gate.shape, fn, (gate, up))
    dev.lib.cuda_swiglu(version, gate.data.ptr, up.data.ptr, y.data.ptr,
                        gate.size, dev.stream())
    return y


def _check_packed(dev, h, fn):
    check_f32(dev, h, fn, "h")
    if h.ndim < 1 or h.shape[-1] % 2:
        raise ValueError(f"{fn}: h must have an even last dimension ([gate | up]), got "
                         f"shape {tuple(h.shape)}")
    return h.shape[:-1] + (h.shape[-1] // 2,)


def swiglu_packed(h, *, out=None, backend="auto"):
    """swiglu of h [..., 2F] = [gate | up], the output of Llama's fused gate/up projection:
    silu(h[..., :F]) * h[..., F:] -> [..., F], without copying the two halves apart."""
    fn = "swiglu_packed"
    where, dev = where_of(fn, backend, h)
    if where == "cpu":
        return _C.swiglu_packed(h, out, VERSIONS.number(backend, "cpu"))
    half = _check_packed(dev, h, fn)
    if where == "numpy":
        return into(out, reference.swiglu_packed(h))
    F = half[-1]
    xp = dev.xp
    return swiglu(xp.ascontiguousarray(h[..., :F]), xp.ascontiguousarray(h[..., F:]), out=out,
                  backend=backend)


def swiglu_packed_backward(dy, h, *, out=None, backend="auto"):
    """d(loss)/d(h) [..., 2F] = [dgate | dup] of swiglu_packed, from dy [..., F]: written in
    place into out (say, the gradient buffer of the fused projection's output)."""
    fn = "swiglu_packed_backward"
    where, dev = where_of(fn, backend, h, dy)
    if where == "cpu":
        return _C.swiglu_packed_backward(dy, h, out, VERSIONS.number(backend, "cpu"))
    half = _check_packed(dev, h, fn)
    check_f32(dev, dy, fn, "dy")
    check_shape(dy, half, fn, "dy")
    if where == "numpy":
        return into(out, reference.swiglu_packed_backward(dy, h))
    F = half[-1]
    xp = dev.xp
    dgate, dup = swiglu_backward(dy, xp.ascontiguousarray(h[..., :F]),
                                 xp.ascontiguousarray(h[..., F:]), backend=backend)
    d_h = output(dev, out, h.shape, fn, (dy, h))
    d_h[..., :F] = dgate
    d_h[..., F:] = dup
    return d_h


def swiglu_backward(dy, gate, up, *, backend="auto"):
    """Returns (dgate, dup) = (dy * up * silu'(gate), dy * silu(gate)); all the same shape."""
    fn = "swiglu_backward"
    where, dev = where_of(fn, backend, gate, up, dy)
    if where == "cpu":
        return _C.swiglu_backward(dy, gate, up, VERSIONS.number(backend, "cpu"))
    for name, a in (("dy", dy), ("gate", gate), ("up", up)):
        check_f32(dev, a, fn, name)
        check_shape(a, gate.shape, fn, name)
    if where == "numpy":
        return tuple(into(None, g) for g in reference.swiglu_backward(dy, gate, up))
    version = VERSIONS.number(backend, "cuda")
    xp = dev.xp
    dgate, dup = xp.empty(gate.shape, xp.float32), xp.empty(gate.shape, xp.float32)
    dev.lib.cuda_swiglu_backward(version, dy.data.ptr, gate.data.ptr, up.data.ptr,
                                 dgate.data.ptr, dup.data.ptr, gate.size, dev.stream())
    return dgate, dup
