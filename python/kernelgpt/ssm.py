"""A state-space layer (Mamba-style selective scan) as a block's sequence mixer, and the
recurrent cache that generation keeps for it.

    GPTConfig(layers="ssm,attn,ssm,attn")          # kernelgpt train --layers ssm,attn,ssm,attn

In a block whose mixer is "ssm", attention is replaced by (x: the normalized residual stream
[B*T, C]; E channels, N states per channel, R the rank of the step):

    xs, z = split(x @ W_in^T)              [B*T, E] each
    u     = silu(xs)
    dt_in, B, C = split(u @ W_x^T)         [B*T, R], [B*T, N], [B*T, N]  (input-dependent)
    delta = softplus(dt_in @ W_dt^T + b_dt)  [B*T, E]   the step: how much of each token enters
    y     = selective_scan(u, delta, A = -exp(A_log), B, C, D)   (kernels/ssm.py)
    out   = (y * silu(z)) @ W_out^T        a gated output, back to [B*T, C]

The scan keeps, per sequence and channel, N numbers h that decay at rates A and take in each
token weighted by its own delta and B: the model chooses per token what to remember. Unlike
attention it never looks back: the whole past is in h. Generation therefore keeps a state of
E x N numbers per layer, the same at token 10 and token 10,000, where attention's KV cache
grows by 2 x n_kv_head x head_dim numbers per layer per token (RecurrentCache.nbytes shows it).
Mamba's short causal convolution before the scan is left out: the selection above is the
idea this layer is here to show.

Initialization as Mamba: A_log = log(1..N) in every channel (decay rates 1..N), D = 1, and a
step bias that puts softplus(b_dt) log-uniformly in [0.001, 0.1].
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence

import numpy as np

from .device import array_module
from .kv_cache import KVCache

__all__ = ["ssm_forward", "ssm_backward", "init_ssm", "RecurrentCache"]


def _softplus(x, xp):
    return xp.logaddexp(x.dtype.type(0), x)


def _sigmoid(x, xp):
    return 0.5 * (xp.tanh(0.5 * x) + 1)


def ssm_forward(ops, xp, P, i, c, x, B, T, h0=None):
    """(out [B*T, C], the state after the last token [B, E, N], saved for the backward pass)
    of block i's state-space mixer on x [B*T, C], starting from state h0 (None: zeros)."""
    E, N, R = c.ssm_inner, c.ssm_state, c.ssm_dt_rank
    L = f"h.{i}.ssm."
    xz = ops.linear(x, P[L + "in_proj.weight"])
    xs, z = xp.ascontiguousarray(xz[:, :E]), xp.ascontiguousarray(xz[:, E:])
    u = ops.silu(xs)
    dbc = ops.linear(u, P[L + "x_proj.weight"])
    dt_in = xp.ascontiguousarray(dbc[:, :R])
    Bm = xp.ascontiguousarray(dbc[:, R:R + N]).reshape(B, T, N)
    Cm = xp.ascontiguousarray(dbc[:, R + N:]).reshape(B, T, N)
    dt_raw = ops.linear(dt_in, P[L + "dt_proj.weight"], P[L + "dt_proj.bias"])
    delta = _softplus(dt_raw, xp)
    A = -xp.exp(P[L + "A_log"])
    y, h = ops.selective_scan(u.reshape(B, T, E), delta.reshape(B, T, E), A, Bm, Cm, P[L + "D"],
                              h0=h0, return_state=True)
    y = y.reshape(B * T, E)
    g = ops.swiglu(z, y)  # silu(z) * y: the gate
    out = ops.linear(g, P[L + "out_proj.weight"])
    return out, h, (xs, z, u, dt_in, Bm, Cm, dt_raw, delta, A, y, g)


def ssm_backward(ops, xp, P, G, i, c, x, saved, d_out, B, T, linear_backward):
    """Adds block i's mixer gradients into G and returns d_x [B*T, C] given d_out [B*T, C].
    linear_backward(d_y, x, name) is the model's (it adds dW and returns dx)."""
    E = c.ssm_inner
    L = f"h.{i}.ssm."
    xs, z, u, dt_in, Bm, Cm, dt_raw, delta, A, y, g = saved
    d_g = linear_backward(d_out, g, L + "out_proj")
    d_z, d_y = ops.swiglu_backward(d_g, z, y)
    du, d_delta, dA, dB, dC, dD = ops.selective_scan_backward(
        xp.ascontiguousarray(d_y).reshape(B, T, E), u.reshape(B, T, E), delta.reshape(B, T, E),
        A, Bm, Cm, P[L + "D"])
    G[L + "D"] += dD
    G[L + "A_log"] += dA * A  # A = -exp(A_log): dA/dA_log = A
    d_dt_raw = d_delta.reshape(B * T, E) * _sigmoid(dt_raw, xp)  # softplus' = sigmoid
    d_dt_in = linear_backward(d_dt_raw, dt_in, L + "dt_proj")
    d_dbc = xp.concatenate([d_dt_in, dB.reshape(B * T, -1), dC.reshape(B * T, -1)], axis=1)
    du = du.reshape(B * T, E) + linear_backward(d_dbc, u, L + "x_proj")
    d_xs = ops.silu_backward(du, xs)
    return linear_backward(xp.concatenate([d_xs, d_z], axis=1), x, L + "in_proj")


def init_ssm(P, i, c, rng, proj_std: float) -> None:
    """Mamba's initialization of block i's state-space parameters (see the module docstring)."""
    E, N, R = c.ssm_inner, c.ssm_state, c.ssm_dt_rank
    L = f"h.{i}.ssm."
    P[L + "in_proj.weight"][...] = rng.normal(0.0, 0.02, P[L + "in_proj.weight"].shape)
    P[L + "x_proj.weight"][...] = rng.normal(0.0, 0.02, P[L + "x_proj.weight"].shape)
    P[L + "out_proj.weight"][...] = rng.normal(0.0, proj_std, P[L + "out_proj.weight"].shape)
    bound = R ** -0.5
    P[L + "dt_proj.weight"][...] = rng.uniform(-bound, bound, (E, R))
    dt = np.exp(rng.uniform(math.log(1e-3), math.log(1e-1), E))
    P[L + "dt_proj.bias"][...] = dt + np.log(-np.expm1(-dt))  # softplus^-1(dt)
    P[L + "A_log"][...] = np.log(np.arange(1, N + 1, dtype=np.float64))[None, :]
    P[L + "D"][...] = 1.0


class RecurrentCache:
    """What generation keeps for a model with state-space layers (GPT.new_cache makes it):
    a state [B, E, N] per state-space layer, whose size does not depend on the context, and
    keys and values (a KVCache) for the attention layers of a hybrid stack only.

    The same interface as KVCache (length, tokens, advance, truncate, common_prefix, nbytes),
    with one difference: a state cannot be rewound, so ``truncate`` accepts only the current
    length or 0, and ``common_prefix`` counts a cached prompt only when the new one extends
    it (then generation continues from the state; otherwise it starts again)."""

    def __init__(self, config, max_len: int, batch: int = 1, device: str = "cpu",
                 dtype="float32"):
        c = config
        if max_len < 1 or batch < 1:
            raise ValueError("RecurrentCache: max_len and batch must be >= 1")
        xp = array_module(device)
        self.max_len, self.device = max_len, device
        attn = c.attn_layers
        self.kv = KVCache(len(attn), c.n_kv_head, c.head_dim, max_len, batch, device,
                          dtype) if attn else None
        self.dtype = self.kv.dtype if self.kv is not None else np.dtype(np.float32)
        slot = {layer: j for j, layer in enumerate(attn)}
        # per block: the attention layer's K and V buffers (None for a state-space block)
        self.k = [self.kv.k[slot[i]] if i in slot else None for i in range(c.n_layer)]
        self.v = [self.kv.v[slot[i]] if i in slot else None for i in range(c.n_layer)]
        self._slot = slot
        self.state: List[Optional[np.ndarray]] = [
            None if i in slot else xp.zeros((batch, c.ssm_inner, c.ssm_state), np.float32)
            for i in range(c.n_layer)]
        self.length = 0
        self.tokens: List[int] = []

    @property
    def nbytes(self) -> int:
        """Bytes held: the states (constant) plus the attention layers' K and V."""
        return sum(s.nbytes for s in self.state if s is not None) + \
            (self.kv.nbytes if self.kv is not None else 0)

    def write(self, layer: int, k_new, v_new) -> None:
        self.kv.length = self.length
        self.kv.write(self._slot[layer], k_new, v_new)

    def set_state(self, layer: int, h) -> None:
        self.state[layer][...] = h

    def advance(self, token_ids: Sequence[int]) -> None:
        n = len(token_ids)
        if self.length + n > self.max_len:
            raise ValueError(f"cache full: {self.length} + {n} tokens > max_len {self.max_len}")
        self.length += n
        self.tokens.extend(int(t) for t in token_ids)
        if self.kv is not None:
            self.kv.length, self.kv.tokens = self.length, self.tokens

    def truncate(self, length: int) -> None:
        if length == self.length:
            return
        if length != 0:
            raise ValueError(f"truncate: a recurrent state cannot be rewound to {length} of "
                             f"{self.length} tokens (only reset to 0)")
        self.length = 0
        self.tokens = []
        for s in self.state:
            if s is not None:
                s[...] = 0
        if self.kv is not None:
            self.kv.truncate(0)

    def reset(self) -> None:
        self.truncate(0)

    def common_prefix(self, token_ids: Sequence[int]) -> int:
        """self.length when token_ids starts with every cached token and goes on past them,
        else 0 (a state holds the whole past or nothing)."""
        n = self.length
        if n < len(token_ids) and all(a == int(b) for a, b in zip(self.tokens, token_ids[:n])):
            return n
        return 0
