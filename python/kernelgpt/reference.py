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


# ---- attention --------------------------------------------------------------------------------

__all__ += ["attention", "attention_backward"]


def _attention_probs(q, k, causal, scale):
    """Scaled scores of q [B, H, T, D] against k [B, Hkv, S, D], grouped as
    [B, Hkv, G, T, S] (G = H // Hkv query heads share a kv head), and the causal mask."""
    B, H, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    qg = q.reshape(B, Hkv, H // Hkv, T, D)
    scores = (qg @ np.swapaxes(k, -1, -2)[:, :, None]) * scale
    hidden = None
    if causal:  # query i is position i + (S - T) of the sequence: it sees keys j <= i + S - T
        hidden = np.arange(S)[None, :] > np.arange(T)[:, None] + (S - T)
    return qg, scores, hidden


def attention(q, k, v, causal=True, scale=None):
    """softmax(scale * q k^T + mask) v, with q [B, H, T, D], k and v [B, Hkv, S, D].

    Returns (out [B, H, T, D], lse [B, H, T]) where lse is the natural-log logsumexp of each
    row of masked, scaled scores. Computed in the dtype of the inputs.
    """
    B, H, T, D = q.shape
    if scale is None:
        scale = 1.0 / np.sqrt(D)
    _, s, hidden = _attention_probs(q, k, causal, scale)
    if hidden is not None:
        s = np.where(hidden, -np.inf, s)
    m = s.max(axis=-1, keepdims=True)
    e = np.exp(s - m)
    l = e.sum(axis=-1, keepdims=True)
    out = (e / l) @ v[:, :, None]
    lse = (m + np.log(l))[..., 0]
    return out.reshape(B, H, T, D), lse.reshape(B, H, T)


def attention_backward(dout, q, k, v, out, lse, causal=True, scale=None):
    """Gradients (dq, dk, dv) of attention given dout = dL/dout and the forward's out and lse.

        P = exp(scale * q k^T - lse)        dv = P^T dout
        dP = dout v^T                       dS = P * (dP - rowsum(dout * out))
        dq = scale * dS k                   dk = scale * dS^T q
    dk and dv are summed over the query heads that share a kv head.
    """
    B, H, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    G = H // Hkv
    if scale is None:
        scale = 1.0 / np.sqrt(D)
    qg, s, hidden = _attention_probs(q, k, causal, scale)
    p = np.exp(s - lse.reshape(B, Hkv, G, T, 1))
    if hidden is not None:
        p = np.where(hidden, 0.0, p).astype(p.dtype)
    dog = dout.reshape(B, Hkv, G, T, D)
    dv = (np.swapaxes(p, -1, -2) @ dog).sum(axis=2)
    dp = dog @ np.swapaxes(v, -1, -2)[:, :, None]
    delta = (dout * out).sum(axis=-1).reshape(B, Hkv, G, T, 1)
    ds = p * (dp - delta) * scale
    dq = ds @ k[:, :, None]
    dk = (np.swapaxes(ds, -1, -2) @ qg).sum(axis=2)
    return dq.reshape(B, H, T, D), dk, dv
