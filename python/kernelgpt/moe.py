"""Mixture of experts: the MLP of a block as E experts, each token sent to k of them.

    GPTConfig(n_expert=8, n_expert_active=2)         # kernelgpt train --moe 8x2

For each token x [C] of the block's normalized residual stream:

    z = x @ W_router^T                 router logits [E]
    p = softmax(z)                     router probabilities
    e_1..e_k = the k largest p         (the lowest expert index first on ties)
    g_j = p[e_j] / sum_j p[e_j]        gates (k = 1: g = p[e_1], as Switch Transformer: the
                                        router then learns from the loss too)
    y = sum_j g_j * expert_{e_j}(x)    expert_e(x) = act(x @ W1_e^T + b1_e) @ W2_e^T + b2_e

Load balance (Switch Transformer's auxiliary loss), added to the training loss:

    aux = moe_aux_weight * E * sum_e f_e * P_e

f_e: the fraction of the N*k token slots sent to expert e (no gradient), P_e: the mean router
probability of e. It is smallest (moe_aux_weight) when both are uniform.

Capacity: none. Every token goes to all of its k experts, however many choose the same one;
no token is ever dropped (an expert's batch is simply larger), so nothing is lost silently.

Two versions of the same layer, as everywhere in kernelgpt, both with forward and backward:
"naive" runs each (token, expert) pair as its own matrix-vector products, the loop a reader
follows; "grouped" gathers the tokens of each expert into one contiguous block and runs the
expert once as two matrix products over all of them (the kernels' fast GEMMs), then scatters
the weighted results back. kernelgpt.reference.moe_mlp is the float64 numpy oracle (every
expert on every token, masked by the gates).
"""
from __future__ import annotations

from typing import Callable, Dict, List, Tuple

import numpy as np

__all__ = ["route", "moe_forward", "moe_backward", "VERSIONS"]

VERSIONS = ("grouped", "naive")


def route(z: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Router logits z [N, E] -> (p [N, E] softmax, top [N, k] expert ids, gates [N, k])."""
    zz = z.astype(np.float64) if z.dtype != np.float64 else z
    p = np.exp(zz - zz.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    top = np.argsort(-p, axis=1, kind="stable")[:, :k]
    g = np.take_along_axis(p, top, axis=1)
    if k > 1:
        g = g / g.sum(axis=1, keepdims=True)
    return p.astype(z.dtype), top, g.astype(z.dtype)


def _expert_rows(top: np.ndarray, E: int) -> List[Tuple[np.ndarray, np.ndarray]]:
    """For each expert: (the tokens routed to it, in order; the slot j of each)."""
    n, k = top.shape
    flat = top.ravel()
    order = np.argsort(flat, kind="stable")
    bounds = np.searchsorted(flat[order], np.arange(E + 1))
    out = []
    for e in range(E):
        sel = order[bounds[e]:bounds[e + 1]]
        out.append((sel // k, sel % k))
    return out


def moe_forward(ops, x, W_router, W1, b1, W2, b2, k: int,
                activate: Callable, version: str = "grouped", aux_weight: float = 0.0):
    """y [N, C] for x [N, C]; W_router [E, C], W1 [E, F1, C], b1 [E, F1] or None, W2 [E, C, F],
    b2 [E, C] or None; activate(h [n, F1]) -> a [n, F]. Returns (y, aux loss, saved for
    moe_backward)."""
    if version not in VERSIONS:
        raise ValueError(f"moe: version must be one of {VERSIONS}, got {version!r}")
    N, C = x.shape
    E = W_router.shape[0]
    if not 1 <= k <= E:
        raise ValueError(f"moe: k (experts per token) must be in [1, {E}], got {k}")
    z = ops.linear(x, W_router)
    p, top, g = route(z, k)
    y = np.zeros_like(x)
    saved = {"x": x, "p": p, "top": top, "g": g, "version": version, "experts": []}
    if version == "grouped":
        for e, (rows, slots) in enumerate(_expert_rows(top, E)):
            if rows.size == 0:
                saved["experts"].append(None)
                continue
            xe = np.ascontiguousarray(x[rows])                  # gather
            h = ops.linear(xe, W1[e], None if b1 is None else b1[e])
            a = activate(h)
            o = ops.linear(a, W2[e], None if b2 is None else b2[e])
            ge = g[rows, slots]
            y[rows] += ge[:, None] * o                          # scatter (no token twice)
            saved["experts"].append((rows, slots, xe, h, a, o))
    else:
        for n in range(N):
            for j in range(k):
                e = int(top[n, j])
                xe = x[n:n + 1]
                h = ops.linear(xe, W1[e], None if b1 is None else b1[e])
                a = activate(h)
                o = ops.linear(a, W2[e], None if b2 is None else b2[e])
                y[n] += g[n, j] * o[0]
                saved["experts"].append((n, j, e, h, a, o))
    aux = 0.0
    if aux_weight:
        f = np.bincount(top.ravel(), minlength=E) / (N * k)
        saved["f"] = f
        aux = float(aux_weight * E * np.dot(f, p.astype(np.float64).mean(axis=0)))
    saved["aux_weight"] = aux_weight
    return y, aux, saved


def moe_backward(ops, dy, saved: dict, W_router, W1, W2, activate_backward: Callable,
                 grads: Dict[str, object], aux_scale: float = 1.0):
    """dx [N, C] from dy [N, C]; adds the weights' gradients into grads["router"] [E, C],
    grads["w1"] [E, F1, C], grads["b1"] (or None), grads["w2"], grads["b2"] (or None).
    activate_backward(d_a, h) -> d_h. aux_scale multiplies the auxiliary loss's gradient (the
    loss's grad_scale)."""
    x, p, top, g = saved["x"], saved["p"], saved["top"], saved["g"]
    N, C = x.shape
    E = W_router.shape[0]
    k = top.shape[1]
    dx = np.zeros_like(x)
    dg = np.zeros_like(g)

    def expert_grads(e, xe, h, a, o, d_o):
        ops.matmul(d_o, a, trans_a=True, out=grads["w2"][e], accumulate=True)
        if grads.get("b2") is not None:
            grads["b2"][e] += d_o.sum(axis=0)
        dh = activate_backward(ops.matmul(d_o, W2[e]), h)
        ops.matmul(dh, xe, trans_a=True, out=grads["w1"][e], accumulate=True)
        if grads.get("b1") is not None:
            grads["b1"][e] += dh.sum(axis=0)
        return ops.matmul(dh, W1[e])

    if saved["version"] == "grouped":
        for e, item in enumerate(saved["experts"]):
            if item is None:
                continue
            rows, slots, xe, h, a, o = item
            dye = dy[rows]
            dg[rows, slots] = (dye * o).sum(axis=1)
            dx[rows] += expert_grads(e, xe, h, a, o, g[rows, slots][:, None] * dye)
    else:
        for n, j, e, h, a, o in saved["experts"]:
            dye = dy[n:n + 1]
            dg[n, j] = float((dye * o).sum())
            dx[n] += expert_grads(e, x[n:n + 1], h, a, o, g[n, j] * dye)[0]
    # gates -> router logits
    gd = g.astype(np.float64) * dg
    dz = np.zeros((N, E))
    if k > 1:  # g = softmax over the k chosen logits
        np.put_along_axis(dz, top, gd - g * gd.sum(axis=1, keepdims=True), axis=1)
    else:      # g = p[e_1]: dp = dg on the chosen expert
        dp = np.zeros((N, E))
        np.put_along_axis(dp, top, dg.astype(np.float64), axis=1)
        pp = p.astype(np.float64)
        dz = pp * (dp - (pp * dp).sum(axis=1, keepdims=True))
    if saved["aux_weight"]:
        dp = np.broadcast_to(aux_scale * saved["aux_weight"] * E * saved["f"] / N, (N, E))
        pp = p.astype(np.float64)
        dz += pp * (dp - (pp * dp).sum(axis=1, keepdims=True))
    dz = dz.astype(x.dtype)
    ops.matmul(dz, x, trans_a=True, out=grads["router"], accumulate=True)
    dx += ops.matmul(dz, W_router)
    return dx
