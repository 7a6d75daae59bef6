"""The optimizer: an AdamW step, the global gradient norm and clipping by it.

Versions (one numbering: csrc/kernels/adamw.cpp, csrc/cuda/adamw.cu, backend= names)
    1 naive  C++, CUDA  the formula element by element (C++: one thread; CUDA: a thread per
                        element, one read and write of param, m, v each); the norm's squares
                        summed in float64 (CUDA: a fixed grid of partial sums, then one block
                        adds them in order: no atomics, the same bits every run)
    2 fast   C++        one fused SIMD pass over equal contiguous ranges per thread (28 bytes
                        per parameter); the norm in 4 float64 accumulators per thread, the
                        threads' partials added in thread order
backend="auto": 2 on the CPU, 1 on a GPU; "numpy": kernelgpt.reference.
"""
from __future__ import annotations

import math

from .. import _C, reference
from ..device import is_device_array
from ._dispatch import Versions, check_f32, check_shape, float_option, int_option, route, where_of

__all__ = ["adamw_step", "grad_norm", "clip_grad_norm", "VERSIONS"]

VERSIONS = Versions("adamw", {1: ("naive", "cpu cuda"), 2: ("fast", "cpu")},
                    auto={"cpu": 2, "cuda": 1})


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
    step = int_option(step, fn, "step")
    lr, beta1, beta2 = (float_option(lr, fn, "lr"), float_option(beta1, fn, "beta1"),
                        float_option(beta2, fn, "beta2"))
    eps, weight_decay = float_option(eps, fn, "eps"), float_option(weight_decay, fn, "weight_decay")
    where, dev = where_of(fn, backend, param)
    if where == "cpu":
        _C.adamw_step(param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay,
                      VERSIONS.number(backend, "cpu"))
        return None
    arrays = (("param", param), ("grad", grad), ("m", m), ("v", v))
    for name, a in arrays:
        check_f32(dev, a, fn, name)
        check_shape(a, param.shape, fn, name)
    for i, (n1, a1) in enumerate(arrays):
        for n2, a2 in arrays[i + 1:]:
            if dev.xp.may_share_memory(a1, a2):
                raise ValueError(f"{fn}: {n1} and {n2} must not overlap")
    if step < 1:
        raise ValueError(f"{fn}: step must be >= 1, got {step}")
    finite = all(math.isfinite(z) for z in (lr, beta1, beta2, eps, weight_decay))
    if not finite or lr < 0 or not 0 <= beta1 < 1 or not 0 <= beta2 < 1 or eps <= 0 \
            or weight_decay < 0:
        raise ValueError(f"{fn}: need finite lr >= 0, 0 <= beta1, beta2 < 1, eps > 0 and "
                         f"weight_decay >= 0; got lr={lr}, beta1={beta1}, beta2={beta2}, "
                         f"eps={eps}, weight_decay={weight_decay}")
    if where == "numpy":
        reference.adamw_step(param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay)
        return None
    version = VERSIONS.number(backend, "cuda")
    bc1, bc2 = 1.0 - beta1 ** step, 1.0 - beta2 ** step
    dev.lib.cuda_adamw(version, param.data.ptr, grad.data.ptr, m.data.ptr,
                       v.data.ptr, param.size, lr, beta1, beta2, eps, weight_decay, bc1, bc2,
                       dev.stream())
    return None


def _arrays(grads, fn):
    """grads as a non-empty list of arrays."""
    grads = [grads] if hasattr(grads, "dtype") else list(grads)
    if not grads:
        raise ValueError(f"{fn}: grads is empty")
    return grads


def _route(grads, backend, fn):
    if is_device_array(grads) or (isinstance(grads, (list, tuple)) and grads and
                                  is_device_array(grads[0])):
        first = grads if is_device_array(grads) else grads[0]
        return where_of(fn, backend, first)
    return route(backend), None


def _sum_squares(dev, grads, fn):
    """Device float64 [1]: the sum of squares of every value of every array."""
    xp = dev.xp
    for i, g in enumerate(grads):
        check_f32(dev, g, fn, f"grads[{i}]")
    total = xp.zeros(1, xp.float64)
    partials = xp.empty(dev.lib.cuda_grad_norm_partials(), xp.float64)
    for g in grads:
        dev.lib.cuda_grad_norm_accumulate(g.data.ptr, g.size, partials.data.ptr, total.data.ptr,
                                          dev.stream())
    return total


def grad_norm(grads, *, backend="auto"):
    """The global L2 norm sqrt(sum of g^2 over every value of every array), as a float.

    grads: one float32 array or a list / tuple of them (any shapes, C-contiguous, non-empty).
    Squares are summed in float64 (per-thread partials added in a fixed order: the same
    result on every run with the same thread count). Any NaN gives NaN; otherwise any inf
    gives inf. On a device: a 0-d float64 device array (float() of it reads it to the host).
    """
    fn = "grad_norm"
    where, dev = _route(grads, backend, fn)
    if where == "cpu":
        return _C.grad_norm(grads, VERSIONS.number(backend, "cpu"))
    if where == "numpy":
        return reference.grad_norm(grads)
    VERSIONS.number(backend, "cuda")
    total = _sum_squares(dev, _arrays(grads, fn), fn)
    return dev.xp.sqrt(total[0])


def clip_grad_norm(grads, max_norm, *, eps=1e-6, backend="auto"):
    """torch.nn.utils.clip_grad_norm_: returns the global norm before clipping, and if
    max_norm / (norm + eps) < 1 (so: norm > max_norm, up to eps) multiplies every array in
    place by that factor. grads as in grad_norm (each array at most once, writeable);
    max_norm: finite >= 0; eps: finite >= 0.

    A non-finite norm (NaN or inf in some gradient) is returned as is and the gradients are
    NOT modified (PyTorch would scale them all by NaN / 0); check the returned norm and skip
    the step. On a device the norm is a 0-d float64 device array and the scaling is decided
    on the device (no host round trip).
    """
    fn = "clip_grad_norm"
    max_norm, eps = float_option(max_norm, fn, "max_norm"), float_option(eps, fn, "eps")
    where, dev = _route(grads, backend, fn)
    if where == "cpu":
        return _C.clip_grad_norm(grads, max_norm, eps, VERSIONS.number(backend, "cpu"))
    if where == "numpy":
        return reference.clip_grad_norm(grads, max_norm, eps)
    VERSIONS.number(backend, "cuda")
    if not (0 <= max_norm < float("inf")) or not (0 <= eps < float("inf")):
        raise ValueError(f"{fn}: max_norm and eps must be finite and >= 0, got {max_norm}, {eps}")
    grads = _arrays(grads, fn)
    total = _sum_squares(dev, grads, fn)
    for g in grads:
        dev.lib.cuda_clip_scale(g.data.ptr, g.size, total.data.ptr, max_norm, eps, dev.stream())
    return dev.xp.sqrt(total[0])
