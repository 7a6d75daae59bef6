"""Positions: the sinusoidal table ("Attention Is All You Need") and rotary embeddings (RoPE).

Versions (one numbering: csrc/kernels/rope.cpp, csrc/cuda/rope.cu, backend= names)
    1 naive  C++, CUDA  per value: the frequency with pow, the angle in float64, its sin / cos
                        (C++: one thread; CUDA: a thread per rotated pair, already memory-bound)
    2 fast   C++        the frequencies once per call, a SIMD float64 sincos for the table of
                        the T positions, then plain multiply-adds over every [T, D] slice
backend="auto": 2 on the CPU, 1 on a GPU; "numpy": kernelgpt.reference.

Positions are integers in [0, 2^31). Angles are formed in float64 (position * frequency) and
only their sin / cos rounded to float32, so position 1e6 is as accurate as position 1.
"""
from __future__ import annotations

import math

import numpy as np

from .. import _C, reference
from ._dispatch import (Versions, check_f32, check_ints, check_range, check_shape, float_option,
                        int_option, into, output, ptr, route, where_of)

__all__ = ["sinusoidal_positions", "rope", "rope_backward", "VERSIONS"]

VERSIONS = Versions("rope", {1: ("naive", "cpu cuda"), 2: ("fast", "cpu")},
                    auto={"cpu": 2, "cuda": 1})

MAX_POSITION = 1 << 31


def _check_base(base, fn):
    if not (base > 0 and math.isfinite(base)):
        raise ValueError(f"{fn}: base must be a finite number > 0, got {base}")


def _check_offset(offset, T, fn):
    if offset < 0 or offset + T > MAX_POSITION:
        raise ValueError(f"{fn}: offset must be >= 0 with offset + T <= 2^31, got offset "
                         f"{offset} for T = {T}")


def sinusoidal_positions(T, C, *, base=10000.0, offset=0, backend="auto"):
    """The fixed position table of "Attention Is All You Need": [T, C] float32 with
        pe[t, 2i] = sin(p / base^(2i/C)),  pe[t, 2i+1] = cos(p / base^(2i/C)),  p = offset + t
    (for odd C the last column is a sin). T, C >= 1; base finite > 0; offset >= 0.
    """
    fn = "sinusoidal_positions"
    T, C = int_option(T, fn, "T"), int_option(C, fn, "C")
    base, offset = float_option(base, fn, "base"), int_option(offset, fn, "offset")
    if route(backend) == "numpy":
        if T < 1 or C < 1:
            raise ValueError(f"{fn}: T and C must be >= 1, got T = {T}, C = {C}")
        _check_base(base, fn)
        _check_offset(offset, T, fn)
        return reference.sinusoidal_positions(T, C, base, offset).astype(np.float32)
    return _C.sinusoidal_positions(T, C, base, offset, VERSIONS.number(backend, "cpu"))


def rope(x, *, positions=None, offset=0, base=10000.0, layout="half", rotary_dim=None,
         inverse=False, out=None, backend="auto"):
    """Rotary position embedding (Su et al. 2021) of x [..., T, D] float32 (e.g. [B, H, T, D]).

    Each pair (x1, x2) of the first rd = rotary_dim (default D; even, <= D) columns of row t
    rotates by the angle p_t * w_i, w_i = base^(-2i/rd), i < rd/2:
        y1 = x1 cos - x2 sin,   y2 = x2 cos + x1 sin
    Columns rd..D-1 are copied unchanged.
      positions: None (p_t = offset + t) or integers [T] in [0, 2^31) (then offset must be 0).
      layout: "half" pairs (i, i + rd/2) (HF / GPT-NeoX rotate_half), "interleaved" pairs
        (2i, 2i + 1) (GPT-J, llama.cpp, Meta's original Llama code).
      inverse: rotate by minus the angle, which is exactly the backward (see rope_backward).
    Returns [..., T, D] float32. The frequencies and angles are float64 (HF computes the
    frequencies in float32, which drifts by ~1e-3 rad at position 32k). NaN / inf in x give
    NaN / inf in the outputs of their pair.
    """
    fn = "rope"
    offset, base = int_option(offset, fn, "offset"), float_option(base, fn, "base")
    if rotary_dim is not None:
        rotary_dim = int_option(rotary_dim, fn, "rotary_dim")
    if not isinstance(layout, str) or layout not in ("half", "interleaved"):
        raise ValueError(f"{fn}: layout must be 'half' or 'interleaved', got {layout!r}")
    where, dev = where_of(fn, backend, x)
    if where == "cpu":
        return _C.rope(x, positions, offset, base, layout, rotary_dim, bool(inverse), out,
                       VERSIONS.number(backend, "cpu"))
    check_f32(dev, x, fn, "x")
    if x.ndim < 2:
        raise ValueError(f"{fn}: x must be [..., T, D] (at least 2-D), got shape {x.shape}")
    T, D = x.shape[-2], x.shape[-1]
    rd = D if rotary_dim is None else rotary_dim
    if rotary_dim is None and D % 2:
        raise ValueError(f"{fn}: the last dimension of x (D = {D}) must be even, x has shape "
                         f"{tuple(x.shape)}")
    if rd < 2 or rd > D or rd % 2:
        raise ValueError(f"{fn}: rotary_dim must be even and in [2, D = {D}], got {rd}")
    _check_base(base, fn)
    if positions is not None:
        if offset != 0:
            raise ValueError(f"{fn}: give positions or offset, not both (offset = {offset})")
        positions = check_ints(dev, positions, fn, "positions")
        check_shape(positions, (T,), fn, "positions")
        check_range(dev, positions, MAX_POSITION, fn, "positions")
    else:
        _check_offset(offset, T, fn)
    if where == "numpy":
        return into(out, reference.rope(x, positions, offset, base, layout, rotary_dim,
                                        bool(inverse)))
    version = VERSIONS.number(backend, "cuda")
    y = output(dev, out, x.shape, fn, (x,))
    dev.lib.cuda_rope(version, x.data.ptr, y.data.ptr, ptr(positions), offset,
                      base, layout == "interleaved", rd, bool(inverse), x.size // D, T, D,
                      dev.stream())
    return y


def rope_backward(dy, *, positions=None, offset=0, base=10000.0, layout="half", rotary_dim=None,
                  inverse=False, out=None, backend="auto"):
    """Gradient of rope: dx = R(-angle) dy, i.e. rope(dy, inverse=not inverse, ...) with the
    forward's keyword arguments. dy: [..., T, D] float32; returns [..., T, D]."""
    return rope(dy, positions=positions, offset=offset, base=base, layout=layout,
                rotary_dim=rotary_dim, inverse=not inverse, out=out, backend=backend)
