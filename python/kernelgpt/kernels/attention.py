"""Scaled dot-product attention, causal or not, grouped-query heads, a KV cache read in place;
forward and backward.

Versions (one numbering: csrc/kernels/attention.cpp, csrc/cuda/attention*.cu, backend= names)
  forward
    1 naive     C++, CUDA  the whole T x S score matrix, a softmax per row, then P @ V
    2 flash     C++, CUDA  tiles of queries and keys, an online softmax (running max and sum,
                           rescaled output): the score matrix never exists. C++: SIMD
                           micro-GEMMs per tile, threads over (batch, head, query block); CUDA:
                           4 warps share key / value tiles in shared memory (head size <= 128)
    3 decode    C++, CUDA  few queries (T == 1: the next token) against a long cache: the query
                           heads of a kv head together, the keys split over threads / warps
                           (split-K), partial (max, sum, output) merged in a fixed order
    4 flash_tc  CUDA       version 2 with both products on tensor cores (WMMA, bf16 inputs,
                           float32 accumulation; head size a multiple of 16)
  backward
    1 naive     C++, CUDA  P materialized, the textbook gradient
    2 flash     C++, CUDA  flash-attention-2: P recomputed tile by tile from the forward's lse
backend="auto": on the CPU "decode" when T <= 16 (measured faster up to 16 queries per head),
"flash" otherwise; on a GPU the same, except "naive" for head sizes over 128. "numpy":
kernelgpt.reference.attention.
"""
from __future__ import annotations

import math

import numpy as np

from .. import _C, reference
from ._dispatch import Versions, check_f32, check_shape, into, output, ptr, where_of

__all__ = ["attention", "attention_backward", "VERSIONS", "BACKWARD_VERSIONS"]

VERSIONS = Versions("attention", {1: ("naive", "cpu cuda"), 2: ("flash", "cpu cuda"),
                                  3: ("decode", "cpu cuda"), 4: ("flash_tc", "cuda")},
                    auto={})
BACKWARD_VERSIONS = Versions("attention_backward", {1: ("naive", "cpu cuda"),
                                                    2: ("flash", "cpu cuda")},
                             auto={"cpu": 2})

DECODE_MAX_QUERIES = 16  # auto picks "decode" up to this many queries per head
CUDA_MAX_HEAD = 128      # head size limit of the CUDA flash and decode versions (registers)


def _auto(backend, where, T, D) -> int:
    """The version backend= selects for T queries of head size D."""
    if backend not in ("auto", "fast"):
        return VERSIONS.number(backend, where)
    if where == "cuda" and D > CUDA_MAX_HEAD:
        return 1
    return 3 if T <= DECODE_MAX_QUERIES else 2


def _check(dev, fn, q, k, v, causal, scale, kv_length=None):
    """(B, H, Hkv, T, S, capacity, D, scale) of a valid call (numpy and device routes)."""
    for name, a in (("q", q), ("k", k), ("v", v)):
        check_f32(dev, a, fn, name, (4,))
    if k.shape != v.shape:
        raise ValueError(f"{fn}: k and v must have the same shape [B, Hkv, S, D], got k "
                         f"{tuple(k.shape)} and v {tuple(v.shape)}")
    B, H, T, D = q.shape
    Hkv, cap = k.shape[1], k.shape[2]
    if k.shape[0] != B or k.shape[3] != D:
        raise ValueError(f"{fn}: k and v must have shape [B, Hkv, S, D] = [{B}, Hkv, S, {D}] "
                         f"to match q {tuple(q.shape)}, got {tuple(k.shape)}")
    if H % Hkv:
        raise ValueError(f"{fn}: the number of query heads (q.shape[1] = {H}) must be a multiple "
                         f"of the number of kv heads (k.shape[1] = {Hkv})")
    S = cap if kv_length is None else int(kv_length)
    if not 1 <= S <= cap:
        raise ValueError(f"{fn}: kv_length must be in [1, {cap}] (k.shape[2]), got {kv_length}")
    if causal and S < T:
        raise ValueError(f"{fn}: causal attention needs at least as many keys as queries, got "
                         f"T = {T} (q.shape[2]) and S = {S} (k.shape[2])")
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    if not (0 < scale < float("inf")):
        raise ValueError(f"{fn}: scale must be finite and > 0, got {scale}")
    return B, H, Hkv, T, S, cap, D, float(scale)


def attention(q, k, v, *, causal=True, scale=None, return_lse=False, out=None, kv_length=None,
              backend="auto"):
    """Scaled dot-product attention: softmax(scale * q k^T + mask) v, float32.

    q: [B, H, T, D]; k, v: [B, Hkv, S, D] with H a multiple of Hkv (grouped-query attention:
    query head h reads kv head h // (H // Hkv); Hkv == H is ordinary multi-head attention).
    scale: defaults to 1 / sqrt(D); must be finite and > 0.
    causal: query i sees keys j <= i + (S - T), i.e. the T queries are the last T positions of
    the sequence (a KV cache: T new tokens against S cached ones; T == S is the usual causal
    mask). causal with S < T is a ValueError.
    Returns out [B, H, T, D], or (out, lse) with return_lse=True, where lse [B, H, T] is the
    natural-log logsumexp of each query's scaled, masked scores (attention_backward needs it).
    kv_length: use only the first kv_length rows of k and v (S = kv_length): k and v can then be
    the preallocated buffers of a KV cache [B, Hkv, capacity, D], read in place. k and v may
    both be float16 (a half KV cache, CPU): they are widened to float32 as they are read, and
    the result equals attention on k.astype(np.float32), v.astype(np.float32).

    backend: "auto" ("decode" when T <= 16, else "flash"), "flash" (tiled, online softmax),
    "decode" (split-K over the keys, for few queries against a long cache), "naive" (the full
    score matrix, plain loops), "flash_tc" (GPU only), "numpy" (kernelgpt.reference.attention).
    Finite input never gives NaN. A NaN in q or k makes NaN the rows whose (visible) scores it
    reaches, as does an inf unless its score is -inf (then that key gets weight 0); a NaN or
    inf in v reaches the rows that weight it, and may reach rows that mask it (0 * NaN).
    """
    fn = "attention"
    where, dev = where_of(fn, backend, q)
    if where == "cpu":
        T = q.shape[2] if isinstance(q, np.ndarray) and q.ndim == 4 else DECODE_MAX_QUERIES + 1
        version = _auto(backend, "cpu", T, 0)
        return _C.attention(q, k, v, out, bool(causal), scale, bool(return_lse),
                            version, kv_length)
    if where == "numpy" and all(isinstance(a, np.ndarray) and a.dtype == np.float16 for a in (k, v)):
        k, v = k.astype(np.float32), v.astype(np.float32)  # a half KV cache, widened (exactly)
    B, H, Hkv, T, S, cap, D, scale = _check(dev, fn, q, k, v, causal, scale, kv_length)
    if where == "numpy":
        if kv_length is not None:
            k, v = k[:, :, :kv_length], v[:, :, :kv_length]
        result, lse = reference.attention(q, k, v, causal, scale)
        result = into(out, result)
        return (result, into(None, lse)) if return_lse else result
    version = _auto(backend, "cuda", T, D)
    if version in (2, 3, 4) and D > CUDA_MAX_HEAD:
        raise ValueError(f"{fn}: the {VERSIONS.name(version)} version needs head size "
                         f"D <= {CUDA_MAX_HEAD}, got {D} (use backend='naive')")
    if version == 4 and D % 16:
        raise ValueError(f"{fn}: the flash_tc version needs a head size D that is a multiple "
                         f"of 16, got {D}")
    xp = dev.xp
    y = output(dev, out, q.shape, fn, (q, k, v))
    lse = xp.empty((B, H, T), xp.float32) if return_lse else None
    scores = xp.empty((B, H, T, S), xp.float32) if version == 1 else None
    dev.lib.cuda_attention(version, q.data.ptr, k.data.ptr, v.data.ptr,
                           y.data.ptr, ptr(lse), ptr(scores), B, H, Hkv, T, S, cap, D, scale,
                           bool(causal), 0, dev.stream())
    return (y, lse) if return_lse else y


def attention_backward(dout, q, k, v, out, lse, *, causal=True, scale=None, backend="auto"):
    """Gradients of attention: returns (dq [B, H, T, D], dk [B, Hkv, S, D], dv [B, Hkv, S, D]).

    dout: [B, H, T, D], the gradient of the loss with respect to out; q, k, v, causal, scale as
    given to attention; out and lse: what attention(..., return_lse=True) returned. dk and dv
    are summed over the query heads that share a kv head.
    backend: "auto"/"flash" (flash-attention-2 style: recomputes the probabilities tile by tile
    from lse, O(T) extra memory), "naive", "numpy" (kernelgpt.reference.attention_backward).
    """
    fn = "attention_backward"
    where, dev = where_of(fn, backend, q)
    if where == "cpu":
        return _C.attention_backward(dout, q, k, v, out, lse, bool(causal), scale,
                                     BACKWARD_VERSIONS.number(backend, "cpu"))
    B, H, Hkv, T, S, _, D, scale = _check(dev, fn, q, k, v, causal, scale)
    for name, a in (("dout", dout), ("out", out)):
        check_f32(dev, a, fn, name, (4,))
        check_shape(a, q.shape, fn, name)
    check_f32(dev, lse, fn, "lse", (3,))
    check_shape(lse, (B, H, T), fn, "lse")
    if where == "numpy":
        grads = reference.attention_backward(dout, q, k, v, out, lse, causal, scale)
        return tuple(into(None, g) for g in grads)
    if backend in ("auto", "fast"):
        version = 1 if D > CUDA_MAX_HEAD else 2
    else:
        version = BACKWARD_VERSIONS.number(backend, "cuda")
        if version == 2 and D > CUDA_MAX_HEAD:
            raise ValueError(f"{fn}: the flash version needs head size D <= {CUDA_MAX_HEAD}, "
                             f"got {D} (use backend='naive')")
    xp = dev.xp
    dq = xp.empty(q.shape, xp.float32)
    dk, dv = xp.empty(k.shape, xp.float32), xp.empty(k.shape, xp.float32)
    delta = xp.empty((B, H, T), xp.float32)
    scores = xp.empty((B, H, T, S), xp.float32) if version == 1 else None
    dev.lib.cuda_attention_backward(version, dout.data.ptr, q.data.ptr,
                                    k.data.ptr, v.data.ptr, out.data.ptr, lse.data.ptr,
                                    dq.data.ptr, dk.data.ptr, dv.data.ptr, delta.data.ptr,
                                    ptr(scores), B, H, Hkv, T, S, D, scale, bool(causal),
                                    dev.stream())
    return dq, dk, dv
