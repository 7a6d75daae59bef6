"""Plain numpy versions of every kernel: the baseline the benchmarks compare against and
the oracle the tests check the native kernels with.

Each function is the textbook formula, written for clarity, computed in float32 unless a
comment says otherwise. Shapes follow ``kernelgpt.ops``.
"""
from __future__ import annotations

import numpy as np

__all__ = ["matmul", "bpe_train", "bpe_encode"]


def matmul(a, b, bias=None, trans_a=False, trans_b=False):
    """op(a) @ op(b) + bias, where op transposes the last two axes when asked."""
    A = np.swapaxes(a, -1, -2) if trans_a else a
    B = np.swapaxes(b, -1, -2) if trans_b else b
    c = np.matmul(A, B)
    if bias is not None:
        c = c + bias
    return c


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


def bpe_encode(pieces, merges):
    """Encodes pieces (list of bytes) with a merges list from bpe_train: in each piece,
    apply the earliest-learned merge present, until none applies."""
    rank = {(a, b): (k, new_id) for k, (a, b, new_id, _) in enumerate(merges)}
    out = []
    for piece in pieces:
        ids = list(piece)
        while len(ids) >= 2:
            pair = min(zip(ids, ids[1:]), key=lambda p: rank.get(p, (float("inf"),))[0])
            if pair not in rank:
                break
            ids = _bpe_replace(ids, pair, rank[pair][1])
        out.extend(ids)
    return out
