"""The CUDA path of `kernelgpt.ops` for device arrays.

Same functions and signatures as the CPU kernels. Device arrays are CuPy arrays (a real GPU)
or ``kernelgpt.cuda_emu`` arrays (the same kernels run on the CPU by an emulator); which one is
decided by the first array argument, and the others must be of the same kind. Arrays must be
float32, C-contiguous, non-empty and on the current device; kernels run on CuPy's current
stream and outputs are allocated by CuPy, so there is no host round trip. Mixing numpy and
device arrays in one call is a TypeError. CuPy is imported only when a CuPy array arrives.
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


class _Device:
    """Where the arrays of one call live: the array module (cupy or kernelgpt.cuda_emu), the
    compiled launchers (_C or _cuda_emu) and a name for error messages."""

    def __init__(self, xp, lib, what):
        self.xp, self.lib, self.what = xp, lib, what

    def stream(self):
        return self.xp.cuda.get_current_stream().ptr


def _is_device_array(x) -> bool:
    mod = type(x).__module__
    return mod.split(".")[0] == "cupy" or mod == "kernelgpt.cuda_emu"


def _backend(x, fn) -> _Device:
    """The device of array x (the first array argument of a call)."""
    mod = type(x).__module__
    if mod == "kernelgpt.cuda_emu":
        from . import cuda_emu
        return _Device(cuda_emu, cuda_emu._lib(), "emulated-GPU (kernelgpt.cuda_emu)")
    if mod.split(".")[0] != "cupy":
        raise TypeError(f"{fn}: expected a CuPy or kernelgpt.cuda_emu array, got "
                        f"{type(x).__name__}")
    if not hasattr(_C, "cuda_device_count"):
        raise RuntimeError("kernelgpt was built without CUDA (no nvcc was found at build time); "
                           "kernelgpt.cuda_emu runs the kernels on the CPU instead")
    import cupy
    return _Device(cupy, _C, "CuPy")


def _check(dev, x, fn, name, ranks=None):
    cp = dev.xp
    if not isinstance(x, cp.ndarray):
        raise TypeError(f"{fn}: {name} must be a {dev.what} array like the other arguments, "
                        f"got {type(x).__name__} (mixing numpy and device arrays is not allowed)")
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


def _output(dev, out, shape, fn, inputs):
    cp = dev.xp
    if out is None:
        return cp.empty(shape, dtype=cp.float32)
    _check(dev, out, fn, "out")
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"{fn}: out has shape {tuple(out.shape)}, expected {tuple(shape)}")
    for x in inputs:
        if x is not None and cp.may_share_memory(out, x):
            raise ValueError(f"{fn}: out must not overlap an input array")
    return out


def _version(backend, names):
    if backend in ("auto", "fast"):
        return len(names) - 1
    if backend not in names:
        raise ValueError(f"unknown version '{backend}' for the CUDA kernel, expected one of "
                         f"{', '.join(repr(n) for n in names)}")
    return names.index(backend)


# the SGEMM ladder of csrc/cuda/matmul.cu, slowest first
MATMUL_VERSIONS = ["naive", "coalesced", "tiled", "blocked1d", "blocked", "vectorized",
                   "warptiled"]


def matmul(a, b, bias=None, *, trans_a=False, trans_b=False, out=None, accumulate=False,
           backend="auto"):
    fn = "matmul"
    dev = _backend(a, fn)
    version = _version(backend, MATMUL_VERSIONS)
    _check(dev, a, fn, "a", (2, 3))
    _check(dev, b, fn, "b", (2, 3))
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
        _check(dev, bias, fn, "bias", (1,))
        if bias.shape != (n,):
            raise ValueError(f"{fn}: bias has shape {bias.shape}, expected {(n,)}")
    if accumulate and out is None:
        raise ValueError(f"{fn}: accumulate=True needs out= (the array to add to)")
    shape = (batch, m, n) if 3 in (a.ndim, b.ndim) else (m, n)
    c = _output(dev, out, shape, fn, (a, b, bias))
    dev.lib.cuda_matmul(version, a.data.ptr, b.data.ptr, 0 if bias is None else bias.data.ptr,
                        c.data.ptr, batch, m, n, ka, m * ka if a.ndim == 3 else 0,
                        kb * n if b.ndim == 3 else 0, m * n, bool(trans_a), bool(trans_b),
                        bool(accumulate), dev.stream())
    return c


def softmax(x, *, scale=1.0, causal=False, out=None, log=False, backend="auto"):
    fn = "log_softmax" if log else "softmax"
    dev = _backend(x, fn)
    version = _version(backend, ["naive", "online"])
    _check(dev, x, fn, "x")
    cols = x.shape[-1]
    t = x.shape[-2] if x.ndim >= 2 else 1
    if causal:
        if x.ndim < 2:
            raise ValueError(f"{fn}: causal=True needs x of rank >= 2 ([..., T, S])")
        if cols < t:
            raise ValueError(f"{fn}: causal=True needs S >= T, got x shape {x.shape}")
    y = _output(dev, out, x.shape, fn, (x,))
    dev.lib.cuda_softmax(version, x.data.ptr, y.data.ptr, x.size // cols, cols, t, float(scale),
                         bool(causal), bool(log), dev.stream())
    return y


def softmax_backward(dy, y, *, scale=1.0, out=None, log=False, backend="auto"):
    """dx of softmax (or log-softmax, log=True) from dy and the forward output y."""
    fn = "log_softmax_backward" if log else "softmax_backward"
    dev = _backend(dy, fn)
    version = _version(backend, ["naive", "fused"])
    _check(dev, dy, fn, "dy")
    _check(dev, y, fn, "y")
    _shape_is(y, dy.shape, fn, "y")
    dx = _output(dev, out, dy.shape, fn, (dy, y))
    cols = dy.shape[-1]
    dev.lib.cuda_softmax_backward(version, dy.data.ptr, y.data.ptr, dx.data.ptr, dy.size // cols,
                                  cols, float(scale), bool(log), dev.stream())
    return dx


# ---- shared checks for the families below ----------------------------------------------------
#
# Integer arrays (ids, targets, positions) may have any integer dtype; other than int64 they
# are converted with an explicit ``astype(int64)`` (a copy on the GPU, documented here).
# Their range is checked before any kernel runs: that check reads one boolean back to the
# host (the only host round trip of these functions), because an out-of-range id must be a
# ValueError, not garbage. The kernels themselves never read out of bounds either way.


def _ints(dev, x, fn, name):
    cp = dev.xp
    if not isinstance(x, cp.ndarray):
        raise TypeError(f"{fn}: {name} must be a {dev.what} array like the other arguments, "
                        f"got {type(x).__name__} (mixing numpy and device arrays is not allowed)")
    if x.dtype.kind not in "iu":
        raise TypeError(f"{fn}: {name} must be an integer array, got {x.dtype}")
    if x.size == 0:
        raise ValueError(f"{fn}: {name} has a zero-size dimension, shape {x.shape}")
    if x.device.id != cp.cuda.Device().id:
        raise ValueError(f"{fn}: {name} is on device {x.device.id}, "
                         f"the current device is {cp.cuda.Device().id}")
    return cp.ascontiguousarray(x, dtype=cp.int64)


def _check_range(dev, ids, hi, fn, name, ignore=None):
    """ValueError naming the first value of ids outside [0, hi) (other than `ignore`)."""
    cp = dev.xp
    bad = (ids < 0) | (ids >= hi)
    if ignore is not None:
        bad &= ids != ignore
    if bool(bad.any()):
        i = int(cp.argmax(bad.ravel()))
        raise ValueError(f"{fn}: {name}[{i}] = {int(ids.ravel()[i])} is out of range [0, {hi})")


def _shape_is(x, shape, fn, name):
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{fn}: {name} has shape {tuple(x.shape)}, expected {tuple(shape)}")


def _ptr(x):
    return 0 if x is None else x.data.ptr


# ---- layernorm, rmsnorm ------------------------------------------------------------------------

_NORM_VERSIONS = ["naive", "fast"]


def _check_norm(dev, fn, x, weight):
    """x [..., C] and weight [C]; returns C."""
    _check(dev, x, fn, "x")
    C = x.shape[-1]
    _check(dev, weight, fn, "weight")
    _shape_is(weight, (C,), fn, "weight")
    return C


def layernorm(x, weight, bias=None, eps=1e-5, *, return_stats=False, out=None, backend="auto"):
    fn = "layernorm"
    dev = _backend(x, fn)
    version = _version(backend, _NORM_VERSIONS)
    C = _check_norm(dev, fn, x, weight)
    if bias is not None:
        _check(dev, bias, fn, "bias")
        _shape_is(bias, (C,), fn, "bias")
    cp = dev.xp
    y = _output(dev, out, x.shape, fn, (x, weight, bias))
    mean = cp.empty(x.shape[:-1], cp.float32) if return_stats else None
    rstd = cp.empty(x.shape[:-1], cp.float32) if return_stats else None
    dev.lib.cuda_layernorm(version, x.data.ptr, weight.data.ptr, _ptr(bias), y.data.ptr,
                           _ptr(mean), _ptr(rstd), x.size // C, C, float(eps), dev.stream())
    return (y, mean, rstd) if return_stats else y


def _check_norm_backward(dev, fn, dy, x, weight, stats):
    _check(dev, x, fn, "x")
    _check(dev, dy, fn, "dy")
    _shape_is(dy, x.shape, fn, "dy")
    _check(dev, weight, fn, "weight")
    _shape_is(weight, (x.shape[-1],), fn, "weight")
    for name, s in stats:
        _check(dev, s, fn, name)
        _shape_is(s, x.shape[:-1], fn, name)


def layernorm_backward(dy, x, weight, mean, rstd, *, backend="auto"):
    fn = "layernorm_backward"
    dev = _backend(x, fn)
    version = _version(backend, _NORM_VERSIONS)
    _check_norm_backward(dev, fn, dy, x, weight, (("mean", mean), ("rstd", rstd)))
    cp = dev.xp
    C = x.shape[-1]
    dx, dw, db = cp.empty(x.shape, cp.float32), cp.empty(C, cp.float32), cp.empty(C, cp.float32)
    dev.lib.cuda_layernorm_backward(version, dy.data.ptr, x.data.ptr, weight.data.ptr,
                                    mean.data.ptr, rstd.data.ptr, dx.data.ptr, dw.data.ptr,
                                    db.data.ptr, x.size // C, C, dev.stream())
    return dx, dw, db


def rmsnorm(x, weight, eps=1e-6, *, return_stats=False, out=None, backend="auto"):
    fn = "rmsnorm"
    dev = _backend(x, fn)
    version = _version(backend, _NORM_VERSIONS)
    C = _check_norm(dev, fn, x, weight)
    y = _output(dev, out, x.shape, fn, (x, weight))
    rstd = dev.xp.empty(x.shape[:-1], "float32") if return_stats else None
    dev.lib.cuda_rmsnorm(version, x.data.ptr, weight.data.ptr, y.data.ptr, _ptr(rstd), x.size // C,
                         C, float(eps), dev.stream())
    return (y, rstd) if return_stats else y


def rmsnorm_backward(dy, x, weight, rstd, *, backend="auto"):
    fn = "rmsnorm_backward"
    dev = _backend(x, fn)
    version = _version(backend, _NORM_VERSIONS)
    _check_norm_backward(dev, fn, dy, x, weight, (("rstd", rstd),))
    cp = dev.xp
    C = x.shape[-1]
    dx, dw = cp.empty(x.shape, cp.float32), cp.empty(C, cp.float32)
    dev.lib.cuda_rmsnorm_backward(version, dy.data.ptr, x.data.ptr, weight.data.ptr, rstd.data.ptr,
                                  dx.data.ptr, dw.data.ptr, x.size // C, C, dev.stream())
    return dx, dw


# ---- activations -------------------------------------------------------------------------------

_ACT_VERSIONS = ["naive", "vec4"]
_ACT_OPS = {"gelu_tanh": 0, "gelu_none": 1, "silu": 2, "relu": 3, "sigmoid": 4, "tanh": 5}


def _act_op(name, approximate):
    return _ACT_OPS[f"gelu_{approximate}" if name == "gelu" else name]


def activation(name, x, approximate="tanh", out=None, backend="auto"):
    """name: relu, sigmoid, tanh, silu, gelu (approximate 'tanh' / 'none'); x any shape."""
    version = _version(backend, _ACT_VERSIONS)
    dev = _backend(x, name)
    _check(dev, x, name, "x")
    y = _output(dev, out, x.shape, name, (x,))
    dev.lib.cuda_activation(version, _act_op(name, approximate), x.data.ptr, y.data.ptr, x.size,
                            dev.stream())
    return y


def activation_backward(name, dy, x, approximate="tanh", out=None, backend="auto"):
    fn = name + "_backward"
    dev = _backend(x, fn)
    version = _version(backend, _ACT_VERSIONS)
    _check(dev, x, fn, "x")
    _check(dev, dy, fn, "dy")
    _shape_is(dy, x.shape, fn, "dy")
    dx = _output(dev, out, x.shape, fn, (x, dy))
    dev.lib.cuda_activation_backward(version, _act_op(name, approximate), dy.data.ptr, x.data.ptr,
                                     dx.data.ptr, x.size, dev.stream())
    return dx


def swiglu(gate, up, *, out=None, backend="auto"):
    fn = "swiglu"
    dev = _backend(gate, fn)
    version = _version(backend, _ACT_VERSIONS)
    _check(dev, gate, fn, "gate")
    _check(dev, up, fn, "up")
    _shape_is(up, gate.shape, fn, "up")
    y = _output(dev, out, gate.shape, fn, (gate, up))
    dev.lib.cuda_swiglu(version, gate.data.ptr, up.data.ptr, y.data.ptr, gate.size, dev.stream())
    return y


def swiglu_backward(dy, gate, up, *, backend="auto"):
    fn = "swiglu_backward"
    dev = _backend(gate, fn)
    version = _version(backend, _ACT_VERSIONS)
    for name, a in (("dy", dy), ("gate", gate), ("up", up)):
        _check(dev, a, fn, name)
        _shape_is(a, gate.shape, fn, name)
    cp = dev.xp
    dgate, dup = cp.empty(gate.shape, cp.float32), cp.empty(gate.shape, cp.float32)
    dev.lib.cuda_swiglu_backward(version, dy.data.ptr, gate.data.ptr, up.data.ptr, dgate.data.ptr,
                                 dup.data.ptr, gate.size, dev.stream())
    return dgate, dup


# ---- cross-entropy -------------------------------------------------------------------------------
# The mean / sum losses come back as 0-d float64 device arrays (float(loss) reads them to the
# host when wanted): no hidden device-to-host copy in a training step.

_CE_VERSIONS = ["naive", "online"]


def _check_ce(dev, fn, logits, targets, ignore_index, reduction):
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"{fn}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    _check(dev, logits, fn, "logits", (2,))
    targets = _ints(dev, targets, fn, "targets")
    _shape_is(targets, (logits.shape[0],), fn, "targets")
    _check_range(dev, targets, logits.shape[1], fn, "targets", ignore=ignore_index)
    return targets


def _ce_row_weight(dev, targets, ignore_index, reduction, dloss):
    """(device float32 array of row weights, stride): dloss / count, dloss, or dloss[i]."""
    cp = dev.xp
    if reduction == "none" and isinstance(dloss, cp.ndarray) and dloss.size != 1:
        _check(dev, dloss, "cross_entropy_backward", "dloss")
        _shape_is(dloss, targets.shape, "cross_entropy_backward", "dloss")
        return dloss, 1
    if not isinstance(dloss, cp.ndarray) and getattr(dloss, "size", 1) != 1:
        raise TypeError("cross_entropy_backward: dloss must be a number or a device array like "
                        f"the other arguments, got {type(dloss).__name__}")
    d = cp.asarray(dloss, dtype=cp.float64).reshape(())
    if reduction == "mean":
        count = (targets != ignore_index).sum()
        d = cp.where(count > 0, d / cp.maximum(count, 1), 0.0)
    return d.astype(cp.float32).reshape(1), 0


def cross_entropy(logits, targets, *, ignore_index=-100, reduction="mean", return_grad=False,
                  out=None, backend="auto"):
    fn = "cross_entropy"
    dev = _backend(logits, fn)
    version = _version(backend, _CE_VERSIONS)
    targets = _check_ce(dev, fn, logits, targets, ignore_index, reduction)
    cp = dev.xp
    N, V = logits.shape
    losses = cp.empty(N, cp.float32)
    grad = _output(dev, out, logits.shape, fn, (logits,)) if return_grad else None
    weight, stride = _ce_row_weight(dev, targets, ignore_index, reduction, 1.0)
    dev.lib.cuda_cross_entropy(version, logits.data.ptr, targets.data.ptr, losses.data.ptr,
                               _ptr(grad), weight.data.ptr, stride, N, V, int(ignore_index),
                               dev.stream())
    if reduction == "none":
        loss = losses
    else:
        loss = losses.sum(dtype=cp.float64)
        if reduction == "mean":
            count = (targets != ignore_index).sum()
            loss = cp.where(count > 0, loss / cp.maximum(count, 1), 0.0)
    return (loss, grad) if return_grad else loss


def cross_entropy_backward(logits, targets, *, dloss=1.0, ignore_index=-100, reduction="mean",
                           out=None, backend="auto"):
    fn = "cross_entropy_backward"
    dev = _backend(logits, fn)
    version = _version(backend, _CE_VERSIONS)
    targets = _check_ce(dev, fn, logits, targets, ignore_index, reduction)
    N, V = logits.shape
    grad = _output(dev, out, logits.shape, fn, (logits,))
    weight, stride = _ce_row_weight(dev, targets, ignore_index, reduction, dloss)
    dev.lib.cuda_cross_entropy(version, logits.data.ptr, targets.data.ptr, 0, grad.data.ptr,
                               weight.data.ptr, stride, N, V, int(ignore_index), dev.stream())
    return grad


# ---- embedding -----------------------------------------------------------------------------------


def embedding(ids, table, *, out=None, backend="auto"):
    fn = "embedding"
    dev = _backend(table, fn)
    _version(backend, ["naive"])
    ids = _ints(dev, ids, fn, "ids")
    _check(dev, table, fn, "table", (2,))
    V, C = table.shape
    _check_range(dev, ids, V, fn, "ids")
    y = _output(dev, out, ids.shape + (C,), fn, (table,))
    dev.lib.cuda_embedding(0, ids.data.ptr, table.data.ptr, y.data.ptr, ids.size, V, C,
                           dev.stream())
    return y


def embedding_backward(dout, ids, num_embeddings, *, out=None, accumulate=False, backend="auto"):
    """version "naive": atomicAdd scatter (the order of the additions varies from run to run);
    "sorted" (auto): deterministic, each id's rows added in position order like the CPU."""
    fn = "embedding_backward"
    dev = _backend(dout, fn)
    version = _version(backend, ["naive", "sorted"])
    cp = dev.xp
    ids = _ints(dev, ids, fn, "ids")
    _check(dev, dout, fn, "dout")
    if num_embeddings < 1:
        raise ValueError(f"{fn}: num_embeddings must be >= 1, got {num_embeddings}")
    C = dout.shape[-1]
    _shape_is(dout, ids.shape + (C,), fn, "dout")
    _check_range(dev, ids, num_embeddings, fn, "ids")
    if accumulate and out is None:
        raise ValueError(f"{fn}: accumulate=True needs out= (the array to add to)")
    dtable = _output(dev, out, (num_embeddings, C), fn, (dout,))
    if not accumulate:
        dtable.fill(0)
    flat = ids.ravel()
    order = None
    if version == 1:  # unique keys (id, position): any sort gives the same order
        order = cp.argsort(flat * flat.size + cp.arange(flat.size, dtype=cp.int64))
    dev.lib.cuda_embedding_backward(version, dout.data.ptr, flat.data.ptr, _ptr(order),
                                    dtable.data.ptr, flat.size, num_embeddings, C, dev.stream())
    return dtable


# ---- RoPE ----------------------------------------------------------------------------------------

_MAX_POSITION = 1 << 31


def rope(x, *, positions=None, offset=0, base=10000.0, layout="half", rotary_dim=None,
         inverse=False, out=None, backend="auto"):
    fn = "rope"
    dev = _backend(x, fn)
    _version(backend, ["naive"])
    _check(dev, x, fn, "x")
    if x.ndim < 2:
        raise ValueError(f"{fn}: x must be [..., T, D] (at least 2-D), got shape {x.shape}")
    T, D = x.shape[-2], x.shape[-1]
    rd = D if rotary_dim is None else rotary_dim
    if rotary_dim is None and D % 2:
        raise ValueError(f"{fn}: the last dimension of x (D = {D}) must be even, x has shape "
                         f"{x.shape}")
    if rd < 2 or rd > D or rd % 2:
        raise ValueError(f"{fn}: rotary_dim must be even and in [2, D = {D}], got {rd}")
    if not (base > 0 and base < float("inf")):
        raise ValueError(f"{fn}: base must be a finite number > 0, got {base}")
    if positions is not None:
        if offset != 0:
            raise ValueError(f"{fn}: give positions or offset, not both (offset = {offset})")
        positions = _ints(dev, positions, fn, "positions")
        _shape_is(positions, (T,), fn, "positions")
        _check_range(dev, positions, _MAX_POSITION, fn, "positions")
    elif offset < 0 or offset + T > _MAX_POSITION:
        raise ValueError(f"{fn}: offset must be >= 0 with offset + T <= 2^31, got offset "
                         f"{offset} and T = {T}")
    y = _output(dev, out, x.shape, fn, (x,))
    dev.lib.cuda_rope(0, x.data.ptr, y.data.ptr, _ptr(positions), offset, float(base),
                      layout == "interleaved", rd, bool(inverse), x.size // D, T, D, dev.stream())
    return y


# ---- AdamW, gradient norm, clipping --------------------------------------------------------------


def adamw_step(param, grad, m, v, *, step, lr, beta1, beta2, eps, weight_decay, backend="auto"):
    fn = "adamw_step"
    dev = _backend(param, fn)
    _version(backend, ["naive"])
    cp = dev.xp
    arrays = (("param", param), ("grad", grad), ("m", m), ("v", v))
    for name, a in arrays:
        _check(dev, a, fn, name)
        _shape_is(a, param.shape, fn, name)
    for i, (n1, a1) in enumerate(arrays):
        for n2, a2 in arrays[i + 1:]:
            if cp.may_share_memory(a1, a2):
                raise ValueError(f"{fn}: {n1} and {n2} must not overlap")
    finite = all(abs(z) < float("inf") for z in (lr, beta1, beta2, eps, weight_decay))
    if step < 1:
        raise ValueError(f"{fn}: step must be >= 1, got {step}")
    if not finite or lr < 0 or not 0 <= beta1 < 1 or not 0 <= beta2 < 1 or eps <= 0 \
            or weight_decay < 0:
        raise ValueError(f"{fn}: need finite lr >= 0, 0 <= beta1, beta2 < 1, eps > 0 and "
                         f"weight_decay >= 0; got lr={lr}, beta1={beta1}, beta2={beta2}, "
                         f"eps={eps}, weight_decay={weight_decay}")
    bc1, bc2 = 1.0 - beta1 ** step, 1.0 - beta2 ** step
    dev.lib.cuda_adamw(0, param.data.ptr, grad.data.ptr, m.data.ptr, v.data.ptr, param.size, lr,
                       beta1, beta2, eps, weight_decay, bc1, bc2, dev.stream())


def _sum_squares(dev, grads, fn):
    """Device float64 [1]: the sum of squares of every value of every array."""
    cp = dev.xp
    grads = [grads] if isinstance(grads, cp.ndarray) else list(grads)
    if not grads:
        raise ValueError(f"{fn}: grads is empty")
    for i, g in enumerate(grads):
        _check(dev, g, fn, f"grads[{i}]")
    total = cp.zeros(1, cp.float64)
    partials = cp.empty(dev.lib.cuda_grad_norm_partials(), cp.float64)
    for g in grads:
        dev.lib.cuda_grad_norm_accumulate(g.data.ptr, g.size, partials.data.ptr, total.data.ptr,
                                          dev.stream())
    return grads, total


def _grads_backend(grads, fn):
    if _is_device_array(grads):
        return _backend(grads, fn)
    grads = list(grads)
    if not grads:
        raise ValueError(f"{fn}: grads is empty")
    return _backend(grads[0], fn)


def grad_norm(grads, *, backend="auto"):
    """A 0-d float64 device array (float() of it reads it to the host)."""
    _version(backend, ["naive"])
    dev = _grads_backend(grads, "grad_norm")
    _, total = _sum_squares(dev, grads, "grad_norm")
    return dev.xp.sqrt(total[0])


def clip_grad_norm(grads, max_norm, *, eps=1e-6, backend="auto"):
    """Returns the norm before clipping as a 0-d float64 device array; the scaling is decided on
    the device (no host round trip)."""
    fn = "clip_grad_norm"
    dev = _grads_backend(grads, fn)
    _version(backend, ["naive"])
    if not (0 <= max_norm < float("inf")) or not (0 <= eps < float("inf")):
        raise ValueError(f"{fn}: max_norm and eps must be finite and >= 0, got {max_norm}, {eps}")
    grads, total = _sum_squares(dev, grads, fn)
    for g in grads:
        dev.lib.cuda_clip_scale(g.data.ptr, g.size, total.data.ptr, max_norm, eps, dev.stream())
    return dev.xp.sqrt(total[0])


# ---- attention -----------------------------------------------------------------------------------

_ATTN_VERSIONS = ["naive", "flash", "decode", "flash_tc"]
_MAX_HEAD = 128  # head size limit of the flash and decode versions (registers per lane)


def attention(q, k, v, *, causal=True, scale=None, return_lse=False, out=None, kv_length=None,
              backend="auto"):
    """backend: "auto" (decode for T <= 16, else flash; naive when D > 128), "naive" (scores
    materialized), "flash" (tiled, online softmax), "decode" (keys split over 8 warps),
    "flash_tc" (flash on tensor cores: q, k, v and the probabilities rounded to bf16, float32
    accumulation; D a multiple of 16)."""
    fn = "attention"
    dev = _backend(q, fn)
    cp = dev.xp
    for name, a in (("q", q), ("k", k), ("v", v)):
        _check(dev, a, fn, name, (4,))
    if k.shape != v.shape:
        raise ValueError(f"{fn}: k and v must have the same shape [B, Hkv, S, D], got k "
                         f"{k.shape} and v {v.shape}")
    B, H, T, D = q.shape
    Hkv, cap = k.shape[1], k.shape[2]
    if k.shape[0] != B or k.shape[3] != D:
        raise ValueError(f"{fn}: k and v must have shape [B, Hkv, S, D] = [{B}, Hkv, S, {D}] "
                         f"to match q {q.shape}, got {k.shape}")
    if H % Hkv:
        raise ValueError(f"{fn}: the number of query heads (q.shape[1] = {H}) must be a multiple "
                         f"of the number of kv heads (k.shape[1] = {Hkv})")
    S = cap if kv_length is None else int(kv_length)
    if not 1 <= S <= cap:
        raise ValueError(f"{fn}: kv_length must be in [1, {cap}] (k.shape[2]), got {kv_length}")
    if causal and S < T:
        raise ValueError(f"{fn}: causal attention needs at least as many keys as queries, got "
                         f"T = {T} (q.shape[2]) and S = {S}")
    if scale is None:
        scale = 1.0 / D ** 0.5
    if not (0 < scale < float("inf")):
        raise ValueError(f"{fn}: scale must be finite and > 0, got {scale}")
    if backend in ("auto", "fast"):
        version = 0 if D > _MAX_HEAD else (2 if T <= 16 else 1)
    else:
        version = _version(backend, _ATTN_VERSIONS)
        if version > 0 and D > _MAX_HEAD:
            raise ValueError(f"{fn}: the {backend} version needs head size D <= {_MAX_HEAD}, "
                             f"got {D} (use backend='naive')")
        if version == 3 and D % 16:
            raise ValueError(f"{fn}: the flash_tc version needs a head size D that is a multiple "
                             f"of 16, got {D}")
    y = _output(dev, out, q.shape, fn, (q, k, v))
    lse = cp.empty((B, H, T), cp.float32) if return_lse else None
    scores = cp.empty((B, H, T, S), cp.float32) if version == 0 else None
    dev.lib.cuda_attention(version, q.data.ptr, k.data.ptr, v.data.ptr, y.data.ptr, _ptr(lse),
                           _ptr(scores), B, H, Hkv, T, S, cap, D, float(scale), bool(causal),
                           0, dev.stream())
    return (y, lse) if return_lse else y


def attention_backward(dout, q, k, v, out, lse, *, causal=True, scale=None, backend="auto"):
    """(dq, dk, dv); backend "naive" (P materialized) or "flash"/"auto" (no [T, S] matrix;
    naive when D > 128)."""
    fn = "attention_backward"
    dev = _backend(q, fn)
    cp = dev.xp
    for name, a in (("dout", dout), ("q", q), ("k", k), ("v", v), ("out", out)):
        _check(dev, a, fn, name, (4,))
    _check(dev, lse, fn, "lse", (3,))
    B, H, T, D = q.shape
    if k.shape != v.shape or k.shape[0] != B or k.shape[3] != D:
        raise ValueError(f"{fn}: k and v must both have shape [B, Hkv, S, D] = [{B}, Hkv, S, "
                         f"{D}] to match q {q.shape}, got k {k.shape} and v {v.shape}")
    Hkv, S = k.shape[1], k.shape[2]
    if H % Hkv:
        raise ValueError(f"{fn}: the number of query heads ({H}) must be a multiple of the "
                         f"number of kv heads ({Hkv})")
    _shape_is(dout, q.shape, fn, "dout")
    _shape_is(out, q.shape, fn, "out")
    _shape_is(lse, (B, H, T), fn, "lse")
    if causal and S < T:
        raise ValueError(f"{fn}: causal attention needs S >= T, got T = {T} and S = {S}")
    if scale is None:
        scale = 1.0 / D ** 0.5
    if not (0 < scale < float("inf")):
        raise ValueError(f"{fn}: scale must be finite and > 0, got {scale}")
    if backend in ("auto", "fast"):
        version = 0 if D > _MAX_HEAD else 1
    else:
        version = _version(backend, ["naive", "flash"])
        if version == 1 and D > _MAX_HEAD:
            raise ValueError(f"{fn}: the flash version needs head size D <= {_MAX_HEAD}, got {D} "
                             f"(use backend='naive')")
    dq = cp.empty(q.shape, cp.float32)
    dk, dv = cp.empty(k.shape, cp.float32), cp.empty(k.shape, cp.float32)
    delta = cp.empty((B, H, T), cp.float32)
    scores = cp.empty((B, H, T, S), cp.float32) if version == 0 else None
    dev.lib.cuda_attention_backward(version, dout.data.ptr, q.data.ptr, k.data.ptr, v.data.ptr,
                                    out.data.ptr, lse.data.ptr, dq.data.ptr, dk.data.ptr,
                                    dv.data.ptr, delta.data.ptr, _ptr(scores), B, H, Hkv, T, S, D,
                                    float(scale), bool(causal), dev.stream())
    return dq, dk, dv


# ---- bf16 ---------------------------------------------------------------------------------------


def _check_bits(dev, x, fn, name):
    cp = dev.xp
    if not isinstance(x, cp.ndarray) or x.dtype != cp.uint16:
        raise TypeError(f"{fn}: {name} must be a {dev.what} uint16 array of bf16 bits like the "
                        f"other arguments, got {type(x).__name__} {getattr(x, 'dtype', '')}")
    if not x.flags.c_contiguous:
        raise ValueError(f"{fn}: {name} must be C-contiguous")
    if x.size == 0:
        raise ValueError(f"{fn}: {name} has a zero-size dimension, shape {x.shape}")
    return x


def to_bf16(x, *, out=None, backend="auto"):
    fn = "to_bf16"
    dev = _backend(x, fn)
    _version(backend, ["naive"])
    _check(dev, x, fn, "x")
    cp = dev.xp
    if out is None:
        out = cp.empty(x.shape, cp.uint16)
    else:
        _check_bits(dev, out, fn, "out")
        _shape_is(out, x.shape, fn, "out")
    dev.lib.cuda_to_bf16(x.data.ptr, out.data.ptr, x.size, dev.stream())
    return out


def from_bf16(bits, *, out=None, backend="auto"):
    """Exact: the 16 bits moved to the top of a float32 (a CuPy / numpy expression)."""
    fn = "from_bf16"
    dev = _backend(bits, fn)
    _check_bits(dev, bits, fn, "bits")
    cp = dev.xp
    y = (bits.astype(cp.uint32) << 16).view(cp.float32)
    if out is None:
        return y
    _check(dev, out, fn, "out")
    _shape_is(out, bits.shape, fn, "out")
    out[...] = y
    return out


def matmul_bf16(a, b, bias=None, *, trans_a=False, trans_b=False, out=None, accumulate=False,
                backend="auto"):
    """c = op(a) @ op(b) (+ bias) (+ c) with a [M, K] ([K, M] with trans_a), b [K, N] ([N, K]
    with trans_b) as bf16 bits (uint16), float32 bias [N], float32 accumulation and output.
    backend: "naive", "wmma"/"auto" (tensor cores)."""
    fn = "matmul_bf16"
    dev = _backend(a, fn)
    version = _version(backend, ["naive", "wmma"])
    _check_bits(dev, a, fn, "a")
    _check_bits(dev, b, fn, "b")
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"{fn}: a and b must be 2-D, got {a.shape} and {b.shape}")
    M, K = (a.shape[1], a.shape[0]) if trans_a else a.shape
    N, Kb = (b.shape[0], b.shape[1]) if trans_b else (b.shape[1], b.shape[0])
    if K != Kb:
        raise ValueError(f"{fn}: inner dimensions differ: a {a.shape}, b {b.shape} "
                         f"(trans_a={trans_a}, trans_b={trans_b})")
    if bias is not None:
        _check(dev, bias, fn, "bias", (1,))
        _shape_is(bias, (N,), fn, "bias")
    if accumulate and out is None:
        raise ValueError(f"{fn}: accumulate=True needs out= (the array to add to)")
    c = _output(dev, out, (M, N), fn, (bias,))
    dev.lib.cuda_matmul_bf16(version, a.data.ptr, b.data.ptr, _ptr(bias), c.data.ptr, M, N, K,
                             bool(trans_a), bool(trans_b), bool(accumulate), dev.stream())
    return c


def bf16_matmul(x, w, *, out=None, backend="auto"):
    """y = x @ W^T, W [N, K] bf16 bits: x is rounded to bf16 on the device (tensor-core inputs),
    products accumulate in float32. backend: "naive", "wmma"/"auto"."""
    fn = "bf16_matmul"
    dev = _backend(x, fn)
    _check(dev, x, fn, "x", (1, 2))
    xb = to_bf16(x)
    y = matmul_bf16(xb.reshape(-1, x.shape[-1]), w, trans_b=True,
                    out=None if out is None else out.reshape(-1, w.shape[0]), backend=backend)
    return y.reshape(x.shape[:-1] + (w.shape[0],)) if out is None else out


# ---- quantized weights ---------------------------------------------------------------------------

_QTYPE_IDS = {"q8_0": 8, "q4_1": 3}
_QBLOCK_BYTES = {"q8_0": 34, "q4_1": 20}


def _check_raw(dev, fn, raw, qtype, rows, K):
    cp = dev.xp
    if not isinstance(raw, cp.ndarray) or raw.dtype != cp.uint8:
        raise TypeError(f"{fn}: raw must be a {dev.what} uint8 array like the other arguments")
    if not raw.flags.c_contiguous:
        raise ValueError(f"{fn}: raw must be C-contiguous")
    if raw.device.id != cp.cuda.Device().id:
        raise ValueError(f"{fn}: raw is on device {raw.device.id}, "
                         f"the current device is {cp.cuda.Device().id}")
    if K <= 0 or K % 32:
        raise ValueError(f"{fn}: K must be a positive multiple of 32, got {K}")
    if rows <= 0:
        raise ValueError(f"{fn}: the number of rows must be positive, got {rows}")
    expected = rows * K // 32 * _QBLOCK_BYTES[qtype]
    if raw.nbytes != expected:
        raise ValueError(f"{fn}: raw has {raw.nbytes} bytes, expected {expected} for {rows} "
                         f"rows of {K} {qtype} weights")


def dequantize(raw, qtype, shape, *, out=None, backend="auto"):
    """qtype: 'q8_0' or 'q4_1' (ops.dequantize normalizes it)."""
    fn = "dequantize"
    dev = _backend(raw, fn)
    _version(backend, ["naive"])
    rows = 1
    for s in shape[:-1]:
        rows *= s
    _check_raw(dev, fn, raw, qtype, rows, shape[-1] if shape else 0)
    y = _output(dev, out, shape, fn, ())
    dev.lib.cuda_dequantize(0, _QTYPE_IDS[qtype], raw.data.ptr, y.data.ptr, y.size // 32,
                            dev.stream())
    return y


def quant_matmul(x, raw, qtype, n_rows, *, out=None, accumulate=False, backend="auto"):
    """y = x @ W^T, W [n_rows, K] quantized; x [K] or [M, K]. backend: "naive" (a thread per
    output), "warp"/"auto" (a warp per output, lanes over the 32 weights of each block)."""
    fn = "quant_matmul"
    dev = _backend(x, fn)
    version = _version(backend, ["naive", "warp"])
    _check(dev, x, fn, "x", (1, 2))
    K = x.shape[-1]
    _check_raw(dev, fn, raw, qtype, n_rows, K)
    M = 1 if x.ndim == 1 else x.shape[0]
    y = _output(dev, out, x.shape[:-1] + (n_rows,), fn, (x,))
    if accumulate and out is None:
        raise ValueError(f"{fn}: accumulate=True needs out= (the array to add to)")
    dev.lib.cuda_quant_matmul(version, _QTYPE_IDS[qtype], x.data.ptr, raw.data.ptr, y.data.ptr,
                              M, n_rows, K, bool(accumulate), dev.stream())
    return y
