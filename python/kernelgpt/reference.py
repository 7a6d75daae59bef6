"""Plain numpy versions of every kernel: the baseline the benchmarks compare against and
the oracle the tests check the native kernels with.

Each function is the textbook formula, written for clarity, computed in float32 unless a
comment says otherwise. Shapes follow ``kernelgpt.ops``.
"""
from __future__ import annotations

import numpy as np

__all__ = ["matmul"]


def matmul(a, b, bias=None, trans_a=False, trans_b=False):
    """op(a) @ op(b) + bias, where op transposes the last two axes when asked."""
    A = np.swapaxes(a, -1, -2) if trans_a else a
    B = np.swapaxes(b, -1, -2) if trans_b else b
    c = np.matmul(A, B)
    if bias is not None:
        c = c + bias
    return c


# ---- softmax, log-softmax, cross-entropy -----------------------------------------------------
# These work in the dtype they are given (float32 for the benchmarks; the tests pass float64).

__all__ += ["causal_mask", "softmax", "log_softmax", "softmax_backward", "log_softmax_backward",
            "cross_entropy", "cross_entropy_backward"]


def causal_mask(t, s):
    """[T, S] booleans: row i keeps the columns j <= i + (S - T) (bottom-right aligned)."""
    return np.arange(s)[None, :] <= np.arange(t)[:, None] + (s - t)


def _scaled(x, scale, causal):
    z = x * x.dtype.type(scale) if scale != 1 else x
    if causal:
        z = np.where(causal_mask(*x.shape[-2:]), z, x.dtype.type(-np.inf))
    return z


def softmax(x, scale=1.0, causal=False):
    """exp(z - max z) / sum exp(z - max z) over the last axis, z = scale * x (masked: 0)."""
    z = _scaled(x, scale, causal)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def log_softmax(x, scale=1.0, causal=False):
    """z - logsumexp(z) over the last axis, z = scale * x (masked: -inf)."""
    z = _scaled(x, scale, causal)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def softmax_backward(dy, y, scale=1.0):
    """dx = scale * y * (dy - sum_j dy_j y_j), y = softmax(scale * x)."""
    return y.dtype.type(scale) * y * (dy - (dy * y).sum(axis=-1, keepdims=True))


def log_softmax_backward(dy, y, scale=1.0):
    """dx = scale * (dy - exp(y) * sum_j dy_j) over the entries with y != -inf; 0 where y = -inf."""
    keep = y != -np.inf
    total = np.where(keep, dy, 0).sum(axis=-1, keepdims=True)
    return np.where(keep, y.dtype.type(scale) * (dy - np.exp(y) * total), 0).astype(y.dtype)


def _ce_weights(n, keep, dloss, reduction):
    """Per-row gradient weights: dloss / count (mean), dloss (sum), dloss[i] (none)."""
    if reduction == "mean":
        count = int(keep.sum())
        w = np.full(n, dloss / count if count else 0.0)
    elif reduction == "sum":
        w = np.full(n, float(dloss))
    else:
        w = np.broadcast_to(np.asarray(dloss, dtype=np.float64), (n,))
    return np.where(keep, w, 0.0)


def cross_entropy(logits, targets, ignore_index=-100, reduction="mean", return_grad=False):
    """loss_i = logsumexp(logits_i) - logits_i[t_i] (0 where t_i == ignore_index), reduced by
    "mean" (over the rows that count; 0.0 if none do), "sum" or "none". With return_grad,
    also d loss / d logits = w_i * (softmax(logits_i) - onehot(t_i)), from the same softmax."""
    n = logits.shape[0]
    targets = np.asarray(targets)
    keep = targets != ignore_index
    safe = np.where(keep, targets, 0)
    m = logits.max(axis=1, keepdims=True)
    e = np.exp(logits - m)
    sums = e.sum(axis=1, keepdims=True)
    lse = (np.log(sums) + m)[:, 0]
    losses = np.where(keep, lse - logits[np.arange(n), safe], 0).astype(logits.dtype)
    if reduction == "none":
        loss = losses
    elif reduction == "sum":
        loss = float(losses.sum(dtype=np.float64))
    else:
        count = int(keep.sum())
        loss = float(losses.sum(dtype=np.float64)) / count if count else 0.0
    if not return_grad:
        return loss
    w = _ce_weights(n, keep, 1.0, reduction).astype(logits.dtype)[:, None]
    grad = e * (w / sums)
    grad[np.arange(n)[keep], targets[keep]] -= w[keep, 0]
    return loss, grad


def cross_entropy_backward(logits, targets, dloss=1.0, ignore_index=-100, reduction="mean"):
    """d loss / d logits, times dloss (a number, or an array [N] for reduction="none")."""
    n = logits.shape[0]
    targets = np.asarray(targets)
    keep = targets != ignore_index
    w = _ce_weights(n, keep, dloss, reduction).astype(logits.dtype)[:, None]
    grad = softmax(logits) * w
    grad[np.arange(n)[keep], targets[keep]] -= w[keep, 0]
    return grad
