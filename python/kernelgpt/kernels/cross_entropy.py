"""cross-entropy over a vocabulary: loss_i = -log softmax(logits_i)[targets_i], fused with its
gradient (the logits are read once for the loss, once more for the gradient).

Versions (one numbering: csrc/kernels/cross_entropy.cpp, csrc/cuda/cross_entropy.cu, backend=)
    1 naive   C++, CUDA  per row: the max, the sum of exp, the loss, then the gradient (C++: one
                         thread, sums in float64; CUDA: a thread per row)
    2 online  C++, CUDA  one read of a row gives max and sum together (online softmax), then one
                         write pass for the gradient from the exps still in cache (C++: SIMD,
                         threads over rows; CUDA: a block per row, warp shuffles)
backend="auto": 2; "numpy": kernelgpt.reference.

On a device the "mean" / "sum" losses come back as 0-d float64 device arrays (float(loss) reads
them to the host when wanted): no hidden device-to-host copy in a training step.
"""
from __future__ import annotations

from operator import index

import numpy as np

from .. import _C, reference
from ._dispatch import (Versions, check_f32, check_ints, check_range, check_shape, into, output,
                        ptr, where_of)

__all__ = ["cross_entropy", "cross_entropy_backward", "VERSIONS"]

VERSIONS = Versions("cross_entropy", {1: ("naive", "cpu cuda"), 2: ("online", "cpu cuda")},
                    auto={"cpu": 2, "cuda": 2})


def _check(dev, fn, logits, targets, ignore_index, reduction):
    """The targets as int64 [N], checked against logits [N, V] (numpy and device routes)."""
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"{fn}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    check_f32(dev, logits, fn, "logits", (2,))
    targets = check_ints(dev, targets, fn, "targets")
    check_shape(targets, (logits.shape[0],), fn, "targets")
    check_range(dev, targets, logits.shape[1], fn, "targets", ignore=ignore_index)
    return targets


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
    fn = "cross_entropy"
    if out is not None and not return_grad:
        raise ValueError(f"{fn}: out= receives the gradient, so it needs return_grad=True")
    ignore_index = index(ignore_index)
    where, dev = where_of(fn, backend, logits)
    if where == "cpu":
        return _C.cross_entropy(logits, targets, ignore_index, reduction, bool(return_grad), out,
                                VERSIONS.number(backend, "cpu"))
    targets = _check(dev, fn, logits, targets, ignore_index, reduction)
    if where == "numpy":
        result = reference.cross_entropy(logits, targets, ignore_index=ignore_index,
                                         reduction=reduction, return_grad=return_grad)
        return (result[0], into(out, result[1])) if return_grad else result
    version = VERSIONS.number(backend, "cuda")
    xp = dev.xp
    N, V = logits.shape
    losses = xp.empty(N, xp.float32)
    grad = output(dev, out, logits.shape, fn, (logits,)) if return_grad else None
    weight, stride = _row_weight(dev, targets, ignore_index, reduction, 1.0)
    dev.lib.cuda_cross_entropy(version, logits.data.ptr, targets.data.ptr,
                               losses.data.ptr, ptr(grad), weight.data.ptr, stride, N, V,
                               ignore_index, dev.stream())
    if reduction == "none":
        loss = losses
    else:
        loss = losses.sum(dtype=xp.float64)
        if reduction == "mean":
            count = (targets != ignore_index).sum()
            loss = xp.where(count > 0, loss / xp.maximum(count, 1), 0.0)
    return (loss, grad) if return_grad else loss


def cross_entropy_backward(logits, targets, *, dloss=1.0, ignore_index=-100, reduction="mean",
                           out=None, backend="auto"):
    """dlogits [N, V] = dloss * d cross_entropy(logits, targets) / d logits.

    Same arguments as ``cross_entropy``; dloss is a number for "mean" and "sum", and a
    float32 array [N] (or one number for every row) for "none". Ignored rows get 0.
    backend: "auto"/"online", "naive", "numpy".
    """
    fn = "cross_entropy_backward"
    ignore_index = index(ignore_index)
    where, dev = where_of(fn, backend, logits)
    if where == "cpu":
        return _C.cross_entropy_backward(logits, targets, dloss, ignore_index, reduction, out,
                                         VERSIONS.number(backend, "cpu"))
    targets = _check(dev, fn, logits, targets, ignore_index, reduction)
    if where == "numpy":
        return into(out, reference.cross_entropy_backward(logits, targets, dloss=dloss,
                                                          ignore_index=ignore_index,
                                                          reduction=reduction))
    version = VERSIONS.number(backend, "cuda")
    N, V = logits.shape
    grad = output(dev, out, logits.shape, fn, (logits,))
    weight, stride = _row_weight(dev, targets, ignore_index, reduction, dloss)
    dev.lib.cuda_cross_entropy(version, logits.data.ptr, targets.data.ptr, 0,
                               grad.data.ptr, weight.data.ptr, stride, N, V, ignore_index,
                               dev.stream())
    return grad


def _row_weight(dev, targets, ignore_index, reduction, dloss):
    """(device float32 array of row weights, stride) for the CUDA kernel: dloss / count for
    "mean" (counted on the device), dloss for "sum", dloss[i] (stride 1) for "none"."""
    xp = dev.xp
    fn = "cross_entropy_backward"
    if reduction == "none" and isinstance(dloss, xp.ndarray) and dloss.size != 1:
        check_f32(dev, dloss, fn, "dloss")
        check_shape(dloss, targets.shape, fn, "dloss")
        return dloss, 1
    if not isinstance(dloss, xp.ndarray) and getattr(dloss, "size", 1) != 1:
        raise TypeError(f"{fn}: dloss must be a number or a device array like the other "
                        f"arguments, got {type(dloss).__name__}")
    d = xp.asarray(dloss, dtype=np.float64).reshape(())
    if reduction == "mean":
        count = (targets != ignore_index).sum()
        d = xp.where(count > 0, d / xp.maximum(count, 1), 0.0)
    return d.astype(np.float32).reshape(1), 0
