"""Plain numpy versions of every kernel: the baseline the benchmarks compare against and
the oracle the tests check the native kernels with.

Each function is the textbook formula, written for clarity, computed in float32 unless a
comment says otherwise. Shapes follow ``kernelgpt.ops``.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["matmul", "lowrank_add", "bpe_train", "bpe_encode", "bpe_encode_merges"]


def matmul(a, b, bias=None, trans_a=False, trans_b=False):
    """op(a) @ op(b) + bias, where op transposes the last two axes when asked."""
    A = np.swapaxes(a, -1, -2) if trans_a else a
    B = np.swapaxes(b, -1, -2) if trans_b else b
    c = np.matmul(A, B)
    if bias is not None:
        c = c + bias
    return c


def lowrank_add(base, b, a):
    """base + b @ a (LoRA's merged weight W + s B A, the scale in b), in float64."""
    return np.asarray(base, np.float64) + np.asarray(b, np.float64) @ np.asarray(a, np.float64)


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


def attention_weights(q, k, causal=True, scale=None):
    """softmax(scale * q k^T + mask) [B, H, T, S]: the weights each query gives each key (rows
    sum to 1), with q [B, H, T, D] and k [B, Hkv, S, D]; the lessons and `kernelgpt trace`
    draw them."""
    B, H, T, D = q.shape
    _, s, hidden = _attention_probs(q, k, causal, 1.0 / np.sqrt(D) if scale is None else scale)
    if hidden is not None:
        s = np.where(hidden, -np.inf, s)
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).reshape(B, H, T, -1)


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
    Hkv = k.shape[1]
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
# ---- normalization (layernorm, rmsnorm) --------------------------------------------------
__all__ += ["layernorm", "layernorm_backward", "rmsnorm", "rmsnorm_backward"]


def layernorm(x, weight, bias=None, eps=1e-5):
    """y = (x - mean) * rstd * weight + bias over the last axis, rstd = 1 / sqrt(var + eps)
    with the biased variance. Returns (y, mean, rstd); mean and rstd have shape x.shape[:-1]."""
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    rstd = 1.0 / np.sqrt(var + eps)
    y = (x - mean) * rstd * weight
    if bias is not None:
        y = y + bias
    return y, mean[..., 0], rstd[..., 0]


def layernorm_backward(dy, x, weight, mean, rstd):
    """(dx, dweight, dbias) from the forward's mean and rstd. With xhat = (x - mean) * rstd and
    g = dy * weight: dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) (means over the last
    axis), dweight = sum of dy * xhat and dbias = sum of dy over all other axes."""
    mean, rstd = mean[..., None], rstd[..., None]
    xhat = (x - mean) * rstd
    g = dy * weight
    dx = rstd * (g - g.mean(axis=-1, keepdims=True)
                 - xhat * (g * xhat).mean(axis=-1, keepdims=True))
    C = x.shape[-1]
    dweight = (dy * xhat).reshape(-1, C).sum(axis=0)
    dbias = dy.reshape(-1, C).sum(axis=0)
    return dx, dweight, dbias


def rmsnorm(x, weight, eps=1e-6):
    """y = x * rstd * weight, rstd = 1 / sqrt(mean(x^2) + eps) over the last axis (Llama's
    RMSNorm). Returns (y, rstd)."""
    rstd = 1.0 / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps)
    return x * rstd * weight, rstd[..., 0]


def rmsnorm_backward(dy, x, weight, rstd):
    """(dx, dweight): with xhat = x * rstd and g = dy * weight,
    dx = rstd * (g - xhat * mean(g * xhat)), dweight = sum of dy * xhat."""
    rstd = rstd[..., None]
    xhat = x * rstd
    g = dy * weight
    dx = rstd * (g - xhat * (g * xhat).mean(axis=-1, keepdims=True))
    dweight = (dy * xhat).reshape(-1, x.shape[-1]).sum(axis=0)
    return dx, dweight


# ---- activations -----------------------------------------------------------------------
# Written to stay accurate over the whole float range: 1 - sigmoid(x) is sigmoid(-x) (no
# cancellation when sigmoid(x) ~ 1), and exp is only ever called on -|x| (no overflow).
__all__ += ["relu", "relu_backward", "sigmoid", "sigmoid_backward", "tanh", "tanh_backward",
            "silu", "silu_backward", "gelu", "gelu_backward", "swiglu", "swiglu_backward"]

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def relu(x):
    return np.maximum(x, 0)


def relu_backward(dy, x):
    return dy * (x > 0)


def sigmoid(x):
    e = np.exp(-np.abs(x))  # in (0, 1]
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def sigmoid_backward(dy, x):
    return dy * sigmoid(x) * sigmoid(-x)  # sigmoid' = s (1 - s)


def tanh(x):
    return np.tanh(x)


def tanh_backward(dy, x):
    # 1 - tanh(x)^2 = 4e / (1 + e)^2 with e = exp(-2|x|); the left side loses all relative
    # accuracy once tanh(x) rounds to +-1 (|x| > 9 in float32).
    e = np.exp(-2 * np.abs(x))
    return dy * (4 * e / ((1 + e) * (1 + e)))


def silu(x):
    return x * sigmoid(x)


def silu_backward(dy, x):
    s = sigmoid(x)
    return dy * s * (1 + x * sigmoid(-x))  # s + x s (1 - s)


def _check_approximate(approximate):
    if approximate not in ("tanh", "none"):
        raise ValueError(f"gelu: approximate must be 'tanh' or 'none', got {approximate!r}")


def _erfc(z):
    """erfc elementwise, in float64 (numpy has no erf; math.erfc is accurate to an ulp)."""
    return np.vectorize(math.erfc, otypes=[np.float64])(np.asarray(z, dtype=np.float64))


def _normal_cdf(x):
    """Phi(x) = 0.5 erfc(-x / sqrt(2)): erfc keeps the relative accuracy for x << 0."""
    return 0.5 * _erfc(-np.asarray(x, dtype=np.float64) / math.sqrt(2.0))


def gelu(x, approximate="tanh"):
    """approximate="tanh": GPT-2's 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3),
    computed as x * sigmoid(2u) (the same number; 1 + tanh(u) cancels for x << 0).
    approximate="none": x * Phi(x), Phi the standard normal CDF (float64 inside)."""
    _check_approximate(approximate)
    if approximate == "tanh":
        u = _SQRT_2_OVER_PI * (x + 0.044715 * x ** 3)
        return x * sigmoid(2 * u)
    return (x * _normal_cdf(x)).astype(np.result_type(x, np.float32))


def gelu_backward(dy, x, approximate="tanh"):
    """dy * gelu'(x). tanh form: s + x s (1 - s) 2u' with s = sigmoid(2u);
    exact form: Phi(x) + x phi(x)."""
    _check_approximate(approximate)
    if approximate == "tanh":
        u = _SQRT_2_OVER_PI * (x + 0.044715 * x ** 3)
        du = _SQRT_2_OVER_PI * (1 + 3 * 0.044715 * x * x)
        return dy * sigmoid(2 * u) * (1 + x * sigmoid(-2 * u) * 2 * du)
    x64 = np.asarray(x, dtype=np.float64)
    pdf = np.exp(-0.5 * x64 * x64) / math.sqrt(2 * math.pi)
    grad = _normal_cdf(x64) + x64 * pdf
    return (dy * grad).astype(np.result_type(dy, x, np.float32))


def swiglu(gate, up):
    """silu(gate) * up (the gated MLP of Llama)."""
    return silu(gate) * up


def swiglu_backward(dy, gate, up):
    """(dgate, dup) = (dy * up * silu'(gate), dy * silu(gate))."""
    return silu_backward(dy * up, gate), dy * silu(gate)


def swiglu_packed(h):
    """swiglu of h [..., 2F] = [gate | up] (Llama's fused gate/up projection) -> [..., F]."""
    F = h.shape[-1] // 2
    return swiglu(h[..., :F], h[..., F:])


def swiglu_packed_backward(dy, h):
    """d(loss)/d(h) [..., 2F] = [dgate | dup] of swiglu_packed, from dy [..., F]."""
    F = h.shape[-1] // 2
    return np.concatenate(swiglu_backward(dy, h[..., :F], h[..., F:]), axis=-1)
# ---- embedding --------------------------------------------------------------------------------

__all__ += ["swiglu_packed", "swiglu_packed_backward"]

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
# ---- BPE (the oracle for csrc/bpe; minbpe-style, plain Python) -----------------------------

def bpe_train(pieces, vocab_size):
    """Byte-level BPE training on pre-tokenized pieces (list of bytes), minbpe style:
    count adjacent pairs, merge the most frequent (ties: the smallest (left, right) ids)
    everywhere, repeat. Returns [(left, right, new_id, count), ...]."""
    words = [list(p) for p in pieces]
    merges = []
    for new_id in range(256, vocab_size):
        stats = {}
        for w in words:
            for pair in zip(w, w[1:]):
                stats[pair] = stats.get(pair, 0) + 1
        if not stats:
            break
        pair = max(stats, key=lambda p: (stats[p], -p[0], -p[1]))
        words = [_bpe_replace(w, pair, new_id) for w in words]
        merges.append((pair[0], pair[1], new_id, stats[pair]))
    return merges


def _bpe_replace(ids, pair, new_id):
    """ids with every occurrence of `pair` (left to right, not overlapping) made new_id."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _bpe_merge_piece(ids, rank):
    """Merges the adjacent pair with the earliest merge until none has one. rank: (left,
    right) -> (merge index, new id)."""
    while len(ids) >= 2:
        pair = min(zip(ids, ids[1:]), key=lambda p: rank.get(p, (float("inf"),))[0])
        if pair not in rank:
            break
        ids = _bpe_replace(ids, pair, rank[pair][1])
    return ids


def bpe_encode(pieces, merges):
    """Encodes pieces (list of bytes) with a merges list from bpe_train: in each piece,
    apply the earliest-learned merge present, until none applies."""
    rank = {(a, b): (k, new_id) for k, (a, b, new_id, _) in enumerate(merges)}
    out = []
    for piece in pieces:
        ids = list(piece)
        out.extend(_bpe_merge_piece(ids, rank))
    return out


# ---- quantized weights (ggml Q8_0 / Q4_1) -----------------------------------------------------
#
# A quantized matrix [N, K] stores each row as K / 32 blocks of 32 weights, little endian:
#   Q8_0 (34 bytes): fp16 d, 32 x int8 q;                  w = d * q
#   Q4_1 (20 bytes): fp16 d, fp16 m, 16 bytes of nibbles;  w = d * q + m, where q of weight
#                    j < 16 is the low nibble of byte j and q of weight j + 16 its high nibble.
# These are llama.cpp's formats (and the `gguf` package's); a GGUF tensor's data is exactly
# this byte string.

__all__ += ["QK", "QUANT_BLOCK_BYTES", "quant_row_bytes", "quantize_q8_0", "quantize_q4_1",
            "quantize", "dequantize", "quant_matmul"]

QK = 32  # weights per block
QUANT_BLOCK_BYTES = {"q8_0": 34, "q4_1": 20}


def quant_row_bytes(qtype, K):
    """Bytes of one quantized row of K weights (K a multiple of 32)."""
    return K // QK * QUANT_BLOCK_BYTES[qtype]


def _roundf(x):
    """C's roundf (halves away from zero), as ggml rounds; np.round rounds halves to even."""
    x = np.asarray(x, np.float32)
    t = np.trunc(x)  # x - trunc(x) is exact: step away from zero where it is >= 1/2
    return np.where(np.abs(x - t) >= np.float32(0.5), t + np.sign(x), t).astype(np.float32)


def _blocks(w):
    w = np.asarray(w, dtype=np.float32)
    if w.shape[-1] % QK:
        raise ValueError(f"quantize: the last dimension must be a multiple of {QK}, got {w.shape}")
    return w.reshape(-1, QK)


def quantize_q8_0(w):
    """float32 [..., K] -> uint8 [..., K / 32 * 34]: d = max|w| / 127, q = round(w / d)."""
    b = _blocks(w)
    d = np.abs(b).max(axis=1, keepdims=True) / np.float32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d)
    q = _roundf(b * inv).astype(np.int8)
    raw = np.concatenate([d.astype(np.float16).view(np.uint8), q.view(np.uint8)], axis=1)
    return raw.reshape(*np.shape(w)[:-1], -1)


def quantize_q4_1(w):
    """float32 [..., K] -> uint8 [..., K / 32 * 20]: m = min, d = (max - min) / 15,
    q = round((w - m) / d) in 0..15."""
    b = _blocks(w)
    lo, hi = b.min(axis=1, keepdims=True), b.max(axis=1, keepdims=True)
    d = (hi - lo) / np.float32(15)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d)
    q = np.clip(np.trunc((b - lo) * inv + np.float32(0.5)), 0, 15).astype(np.uint8)
    nibbles = q[:, :16] | (q[:, 16:] << np.uint8(4))
    raw = np.concatenate([d.astype(np.float16).view(np.uint8),
                          lo.astype(np.float16).view(np.uint8), nibbles], axis=1)
    return raw.reshape(*np.shape(w)[:-1], -1)


def quantize(w, qtype):
    return {"q8_0": quantize_q8_0, "q4_1": quantize_q4_1}[qtype](w)


def dequantize(raw, qtype, shape):
    """uint8 blocks -> float32 `shape` (its last dimension a multiple of 32)."""
    raw = np.ascontiguousarray(raw).view(np.uint8).reshape(-1, QUANT_BLOCK_BYTES[qtype])
    d = raw[:, 0:2].copy().view(np.float16).astype(np.float32)  # [blocks, 1]
    if qtype == "q8_0":
        w = d * raw[:, 2:].view(np.int8).astype(np.float32)
    else:
        m = raw[:, 2:4].copy().view(np.float16).astype(np.float32)
        nib = raw[:, 4:]
        q = np.concatenate([nib & 0x0F, nib >> 4], axis=1).astype(np.float32)
        w = d * q + m
    return w.reshape(shape)


def quant_matmul(x, raw, qtype, n_rows):
    """y = x @ W^T with W = dequantize(raw) [n_rows, K]; x [K] or [M, K] -> [N] or [M, N]."""
    K = np.shape(x)[-1]
    return x @ dequantize(raw, qtype, (n_rows, K)).T


__all__ += ["quantize_activations_q8", "quantize_activations_q8x2", "quant_matmul_q8"]


def quantize_activations_q8(x):
    """x [..., K] float32 -> (qx int8 [..., K], dx float32 [..., K/32]): per block of 32,
    dx = max|x| / 127 and qx = round(x / dx), computed as x * (1 / dx) in float32 like
    llama.cpp's quantize_row_q8_0 (the native "vnni" kernels reproduce it bit for bit).
    A block holding NaN or inf gets dx = NaN and qx = 0, so its products come out NaN."""
    b = _blocks(x)
    finite = np.isfinite(b).all(axis=1, keepdims=True)
    b = np.where(finite, b, np.float32(0))
    d = np.abs(b).max(axis=1, keepdims=True) / np.float32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
    q = _roundf(b * inv).astype(np.int8)
    d = np.where(finite, d, np.float32(np.nan))  # a block with NaN / inf: NaN outputs
    return q.reshape(np.shape(x)), d.reshape(*np.shape(x)[:-1], -1)


def quantize_activations_q8x2(x):
    """x [..., K] float32 -> (qx int32 [..., K], dx float32 [..., K/32]): x in two int8 passes,
    qx = 256 q1 + q2 and x ~ dx qx (what ops.quant_matmul_packed(x_bits=16) multiplies by).
    q1, d1 = quantize_activations_q8(x); the remainder r = x - q1 d1 (one float32 rounding, as
    an FMA gives) is quantized on a 256 times finer step: q2 = round(r 256 / d1) clamped to
    +-127, and dx = d1 / 256. Error <= d1 / 512 per element (~4e-5 of the block's max|x|),
    <= 1.5 d1 / 256 for the ~1% of elements whose q2 is clamped."""
    q1, d1 = quantize_activations_q8(x)
    b = _blocks(x)
    q1b = q1.reshape(b.shape).astype(np.float64)
    d1b = d1.reshape(-1, 1)
    finite = np.isfinite(d1b)
    d1f = np.where(finite, d1b, np.float32(0)).astype(np.float32)
    r = (np.where(finite, b, 0).astype(np.float64) - q1b * d1f).astype(np.float32)  # exact, then one rounding
    with np.errstate(divide="ignore"):
        inv = np.where(d1f == 0, np.float32(0), np.float32(1) / d1f).astype(np.float32)
    inv2 = (inv * np.float32(256)).astype(np.float32)
    q2 = np.clip(_roundf((r * inv2).astype(np.float32)), -127, 127)
    q = (256 * q1b + q2).astype(np.int32)
    dx = (d1b / np.float32(256)).astype(np.float32)
    return q.reshape(np.shape(x)), dx.reshape(*np.shape(x)[:-1], -1)


def quant_matmul_q8(x, raw, qtype, n_rows, x_bits=8):
    """quant_matmul as backend="vnni" (x_bits 8) or ops.quant_matmul_packed computes it: x
    quantized per block (quantize_activations_q8, or _q8x2 for x_bits 16), then each block
    adds dw * dx * sum(q * qx) (+ m * dx * sum(qx) for Q4_1). Integer dots exact, the rest in
    float64: the oracle for those kernels (which differ only in float rounding)."""
    x = np.asarray(x, np.float32)
    K = x.shape[-1]
    nb = K // QK
    if x_bits not in (8, 16):
        raise ValueError(f"x_bits must be 8 or 16, got {x_bits!r}")
    quantize = quantize_activations_q8 if x_bits == 8 else quantize_activations_q8x2
    qx, dx = quantize(x.reshape(-1, K))
    qx = qx.reshape(-1, nb, QK).astype(np.int64)
    blocks = np.ascontiguousarray(raw).view(np.uint8).reshape(n_rows, nb, -1)
    dw = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float64)  # [N, nb]
    if qtype == "q8_0":
        qw = blocks[..., 2:].view(np.int8).astype(np.int64)
    else:
        nib = blocks[..., 4:]
        qw = np.concatenate([nib & 0x0F, nib >> 4], axis=-1).astype(np.int64)
    dots = np.einsum("mbj,nbj->mnb", qx, qw)  # exact integer block dots [M, N, nb]
    y = np.einsum("mnb,nb,mb->mn", dots.astype(np.float64), dw, dx.astype(np.float64))
    if qtype == "q4_1":
        mw = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float64)
        sx = dx.astype(np.float64) * qx.sum(axis=-1)  # [M, nb]
        y += sx @ mw.T
    return y.reshape(*x.shape[:-1], n_rows)
def bpe_encode_merges(pieces, byte_ids, merges):
    """Encodes pieces (list of bytes) the way Hugging Face tokenizers' BPE model does with a
    merges list (GGUF files, tokenizer.json): each byte becomes byte_ids[byte] (a byte without
    a token is dropped, as with no unknown token), then, while some adjacent pair has a merge,
    the pair with the earliest one is merged. merges: (left id, right id, new id), earliest
    first."""
    rank = {(a, b): (k, new_id) for k, (a, b, new_id) in enumerate(merges)}
    out = []
    for piece in pieces:
        ids = [byte_ids[b] for b in piece if b in byte_ids]
        out.extend(_bpe_merge_piece(ids, rank))
    return out


# ---- bfloat16 weights ---------------------------------------------------------------------------
#
# A bf16 number is the top 16 bits of a float32 (sign, 8 exponent bits, 7 mantissa bits); arrays
# of them are stored as uint16 bit patterns.

__all__ += ["to_bf16", "from_bf16", "bf16_matmul", "matmul_bf16"]


def to_bf16(x):
    """float32 -> uint16 bf16 bits, rounded to nearest, ties to even. Denormals round like any
    other number; NaN stays NaN (made quiet, sign kept); overflow rounds to inf."""
    b = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (b + np.uint32(0x7FFF) + ((b >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    nan = (b & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    quiet_nan = (b >> np.uint32(16)) | np.uint32(0x40)
    return np.where(nan, quiet_nan, rounded).astype(np.uint16)


def from_bf16(bits):
    """uint16 bf16 bits -> float32 (exact)."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


def bf16_matmul(x, w):
    """y = x @ W^T with W = from_bf16(w) [N, K], accumulated in float64; x [K] or [M, K]."""
    return (np.asarray(x, np.float64) @ from_bf16(w).astype(np.float64).T).astype(np.float32)


def matmul_bf16(a, b, bias=None, trans_a=False, trans_b=False):
    """op(A) @ op(B) (+ bias) with A = from_bf16(a), B = from_bf16(b) (bf16 bits), in float64:
    every product of two bf16 numbers is exact, so this is the mixed-precision product with
    exact accumulation; float32 result."""
    A = from_bf16(a).astype(np.float64)
    B = from_bf16(b).astype(np.float64)
    c = (A.T if trans_a else A) @ (B.T if trans_b else B)
    if bias is not None:
        c = c + np.asarray(bias, np.float64)
    return c.astype(np.float32)


def moe_mlp(x, w_router, w1, b1, w2, b2, k, activation="gelu"):
    """Mixture-of-experts MLP (kernelgpt.moe), float64, the plain way: every expert on every
    token, then each token's output the gate-weighted sum of its k chosen experts.
    x [N, C], w_router [E, C], w1 [E, F1, C], b1 [E, F1] or None, w2 [E, C, F], b2 [E, C] or
    None; F1 = 2F for swiglu. Returns y [N, C]."""
    x = np.asarray(x, np.float64)
    z = x @ np.asarray(w_router, np.float64).T
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    top = np.argsort(-p, axis=1, kind="stable")[:, :k]
    E = p.shape[1]
    gates = np.zeros_like(p)
    np.put_along_axis(gates, top, np.take_along_axis(p, top, 1), 1)
    if k > 1:
        gates /= gates.sum(1, keepdims=True)
    y = np.zeros_like(x)
    for e in range(E):
        h = x @ np.asarray(w1[e], np.float64).T + (0 if b1 is None else np.asarray(b1[e], np.float64))
        if activation == "swiglu":
            F = h.shape[1] // 2
            a = swiglu(h[:, :F], h[:, F:])
        else:
            a = {"gelu": gelu, "relu": relu}[activation](h)
        o = a @ np.asarray(w2[e], np.float64).T + (0 if b2 is None else np.asarray(b2[e], np.float64))
        y += gates[:, e:e + 1] * o
    return y


# ---- selective scan (the state-space layer, kernelgpt.ssm) ------------------------------------

__all__ += ["selective_scan", "selective_scan_backward"]


def selective_scan(u, delta, A, B, C, D, h0=None, return_state=False):
    """Mamba's selective scan, one step at a time, in the dtype of u (float64 for the checks).

    u, delta [Bt, T, E]; A [E, N] (negative: decay rates); B, C [Bt, T, N]; D [E]; h0 [Bt, E, N]
    (the state before the first step, default 0). For every sequence b and channel e:

        h_t = exp(delta_t A) * h_{t-1} + delta_t B_t u_t        (the state: N numbers per channel)
        y_t = C_t . h_t + D u_t

    Returns y [Bt, T, E] (and the last state h_T [Bt, E, N] with return_state=True)."""
    Bt, T, E = u.shape
    h = np.zeros((Bt, E, A.shape[1]), u.dtype) if h0 is None else np.array(h0, u.dtype)
    y = np.empty_like(u)
    for t in range(T):
        dt = delta[:, t, :, None]                                       # [Bt, E, 1]
        h = np.exp(dt * A) * h + dt * B[:, t, None, :] * u[:, t, :, None]
        y[:, t] = np.einsum("ben,bn->be", h, C[:, t]) + D * u[:, t]
    return (y, h) if return_state else y


def selective_scan_backward(dy, u, delta, A, B, C, D):
    """Gradients of selective_scan (started from h0 = 0) given dy [Bt, T, E]: the scan run
    backwards in time, dh_t = C_t dy_t + exp(delta_{t+1} A) dh_{t+1}.
    Returns (du, d_delta, dA, dB, dC, dD) with the shapes of (u, delta, A, B, C, D)."""
    Bt, T, E = u.shape
    N = A.shape[1]
    hs = np.zeros((T + 1, Bt, E, N), u.dtype)  # hs[t + 1] = h_t, hs[0] = h_{-1} = 0
    for t in range(T):
        dt = delta[:, t, :, None]
        hs[t + 1] = np.exp(dt * A) * hs[t] + dt * B[:, t, None, :] * u[:, t, :, None]
    du, dd = np.zeros_like(u), np.zeros_like(delta)
    dA, dB, dC = np.zeros_like(A), np.zeros_like(B), np.zeros_like(C)
    dD = (dy * u).sum(axis=(0, 1))
    dh = np.zeros((Bt, E, N), u.dtype)
    for t in reversed(range(T)):
        dt = delta[:, t, :, None]
        a = np.exp(dt * A)
        dC[:, t] = np.einsum("ben,be->bn", hs[t + 1], dy[:, t])
        dh = dh + dy[:, t, :, None] * C[:, t, None, :]                  # dL/dh_t
        da = dh * hs[t]                                                 # through a_t = exp(dt A)
        dd[:, t] = (da * a * A).sum(-1) + (dh * B[:, t, None, :]).sum(-1) * u[:, t]
        dA += (da * a * dt).sum(0)
        dB[:, t] = np.einsum("ben,be->bn", dh, delta[:, t] * u[:, t])
        du[:, t] = (dh * B[:, t, None, :]).sum(-1) * delta[:, t] + dy[:, t] * D
        dh = dh * a                                                     # to h_{t-1}
    return du, dd, dA, dB, dC, dD
