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
