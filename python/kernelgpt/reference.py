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


# ---- embedding --------------------------------------------------------------------------------

__all__ += ["embedding", "embedding_backward"]


def embedding(ids, table):
    """table[ids]: ids [...] integers in [0, V), table [V, C] -> [..., C]."""
    return table[ids]


def embedding_backward(dout, ids, num_embeddings):
    """dtable [V, C]: row v is the sum of the rows of dout whose id is v (np.add.at adds
    repeated ids, where ``dtable[ids] += dout`` would keep only one of them)."""
    C = dout.shape[-1]
    dtable = np.zeros((num_embeddings, C), dtype=dout.dtype)
    np.add.at(dtable, np.reshape(ids, -1), np.reshape(dout, (-1, C)))
    return dtable


# ---- positions: sinusoidal, RoPE --------------------------------------------------------------
#
# Angles are always formed in float64 (position * frequency); at position 1e6 a float32 angle
# would already be off by ~0.03 rad.

__all__ += ["sinusoidal_positions", "rope_frequencies", "rope", "rope_backward"]


def sinusoidal_positions(T, C, base=10000.0, offset=0):
    """[T, C]: pe[t, 2i] = sin(p w_i), pe[t, 2i+1] = cos(p w_i), p = offset + t,
    w_i = base^(-2i/C) (Vaswani et al. 2017; for odd C the last column is a sin). float64."""
    p = np.arange(offset, offset + T, dtype=np.float64)[:, None]
    i = np.arange(C) // 2
    angle = p * np.power(float(base), -2.0 * i / C)
    return np.where(np.arange(C) % 2 == 0, np.sin(angle), np.cos(angle))


def rope_frequencies(rotary_dim, base=10000.0):
    """w_i = base^(-2i/rotary_dim) for i < rotary_dim/2, float64."""
    return np.power(float(base), -2.0 * np.arange(rotary_dim // 2) / rotary_dim)


def rope(x, positions=None, offset=0, base=10000.0, layout="half", rotary_dim=None,
         inverse=False):
    """Rotary position embedding of x [..., T, D] (computed in x's dtype; cos / sin from
    float64 angles). Pairs (i, i + rd/2) for layout "half" (HF rotate_half), (2i, 2i+1) for
    "interleaved"; each rotates by p_t * w_i (by minus that when inverse); columns >= rd pass."""
    T, D = x.shape[-2], x.shape[-1]
    rd = D if rotary_dim is None else rotary_dim
    h = rd // 2
    p = (np.arange(offset, offset + T) if positions is None else np.asarray(positions))
    angle = p.astype(np.float64)[:, None] * rope_frequencies(rd, base)  # [T, rd/2]
    cos = np.cos(angle).astype(x.dtype)
    sin = np.sin(angle).astype(x.dtype)
    if inverse:
        sin = -sin
    y = x.copy()
    if layout == "half":
        x1, x2 = x[..., :h], x[..., h:rd]
        y[..., :h] = x1 * cos - x2 * sin
        y[..., h:rd] = x2 * cos + x1 * sin
    else:
        x1, x2 = x[..., 0:rd:2], x[..., 1:rd:2]
        y[..., 0:rd:2] = x1 * cos - x2 * sin
        y[..., 1:rd:2] = x2 * cos + x1 * sin
    return y


def rope_backward(dy, positions=None, offset=0, base=10000.0, layout="half", rotary_dim=None,
                  inverse=False):
    """dx = R^T dy: the rotation is orthogonal, so the backward rotates by the opposite angle."""
    return rope(dy, positions, offset, base, layout, rotary_dim, not inverse)


# ---- optimizer: AdamW, gradient norm and clipping ----------------------------------------

__all__ += ["adamw_step", "grad_norm", "clip_grad_norm"]


def adamw_step(param, grad, m, v, step, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0):
    """One AdamW step in place on param, m, v (torch.optim.AdamW's formula, in their dtype)."""
    param *= 1.0 - lr * weight_decay
    m *= beta1
    m += (1.0 - beta1) * grad
    v *= beta2
    v += (1.0 - beta2) * grad * grad
    bias_correction1 = 1.0 - beta1 ** step
    bias_correction2 = 1.0 - beta2 ** step
    denom = np.sqrt(v) / bias_correction2 ** 0.5 + eps  # (a Python float: np.sqrt of it
    # would be a float64 scalar and promote the whole expression to float64)
    param -= (lr / bias_correction1) * m / denom


def grad_norm(grads):
    """The L2 norm of all values of one array or a list of arrays, summed in float64."""
    if isinstance(grads, np.ndarray):
        grads = [grads]
    total = 0.0
    for g in grads:
        g64 = np.asarray(g, dtype=np.float64).reshape(-1)
        total += float(g64 @ g64)
    return float(np.sqrt(total))


def clip_grad_norm(grads, max_norm, eps=1e-6):
    """torch.nn.utils.clip_grad_norm_: scales the arrays in place by max_norm / (norm + eps)
    when that is below 1; returns the norm before clipping. A NaN / inf norm leaves them alone."""
    if isinstance(grads, np.ndarray):
        grads = [grads]
    norm = grad_norm(grads)
    if np.isfinite(norm) and norm + eps > 0:
        coef = max_norm / (norm + eps)
        if coef < 1.0:
            for g in grads:
                g *= np.asarray(coef, dtype=g.dtype)
    return norm
