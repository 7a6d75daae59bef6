"""Quantized weights (ggml's Q8_0 and Q4_1 blocks, as in GGUF files): dequantize, and
y = x @ W^T straight from the blocks. Formats in docs/quant.md and csrc/kernels/quant.h.

Versions (one numbering: csrc/kernels/quant.cpp, csrc/cuda/quant.cu, backend= names)
  dequantize
    1 naive  C++, CUDA  block by block, weight by weight (CUDA: a thread per weight)
    2 fast   C++        a block's 32 integers widened in registers, one FMA each; threads
  quant_matmul
    1 naive  C++, CUDA  dequantize a row of W, dot it with x (C++: one thread; CUDA: a thread
                        per output)
    2 fused  C++        decode: each block widened in registers and multiplied with up to 4
                        rows of x there; W is read once per 4 rows of x (fp32)
    3 tiled  C++        prefill: dequantize panels of W (up to 4 MiB), then the blocked fp32
                        matmul (matmul version 5): decoding amortized over all rows of x
    4 vnni   C++        llama.cpp's scheme: x quantized to int8 per block of 32, integer block
                        dots (VPDPBUSD with AVX512-VNNI, VPMADDUBSW with AVX2); ~1% error
                        from quantizing x
    5 warp   CUDA       a warp per output, lane j decodes weight j of each block (coalesced)
  quant_pack + quant_matmul_packed (C++, the int8 path): W repacked once into panels of 16
    rows whose 16 lanes one VPDPBUSD fills (AVX2 without VNNI: VPMADDUBSW + VPMADDWD, 8 rows
    per ymm); x quantized to int8 per block as "vnni" does, the same integers and formula
    (reference.quant_matmul_q8), for decode and prefill alike.
backend="auto": on the CPU "fused" for M <= 16 rows of x, "tiled" above (chosen in
csrc/kernels/quant.cpp, which the decode runner shares: the C++ binding takes it as version 0,
"auto, by shape"); on a GPU "warp". "numpy":
kernelgpt.reference (dequantize, then x @ W.T).
"""
from __future__ import annotations

import numpy as np

from .. import _C, reference
from ._dispatch import Versions, check_f32, check_typed, int_option, into, output, where_of

__all__ = ["QUANT_TYPES", "quant_row_bytes", "dequantize", "quant_matmul", "VERSIONS",
           "DEQUANTIZE_VERSIONS", "quant_pack", "quant_packed_bytes", "quant_matmul_packed",
           "int8_native"]

DEQUANTIZE_VERSIONS = Versions("dequantize", {1: ("naive", "cpu cuda"), 2: ("fast", "cpu")},
                               auto={"cpu": 2, "cuda": 1})
VERSIONS = Versions("quant_matmul", {1: ("naive", "cpu cuda"), 2: ("fused", "cpu"),
                                     3: ("tiled", "cpu"), 4: ("vnni", "cpu"),
                                     5: ("warp", "cuda")},
                    auto={"cpu": 0, "cuda": 5})  # 0: the C++ binding's "auto, by shape"

# ggml's type ids (gguf.GGMLQuantizationType) for the formats we run.
QUANT_TYPES = {"q4_1": 3, "q8_0": 8}
_QUANT_NAMES = {v: k for k, v in QUANT_TYPES.items()}


def qtype_name(qtype, fn) -> str:
    """'q8_0' / 'Q8_0' / 8 / gguf.GGMLQuantizationType.Q8_0 -> 'q8_0'."""
    if isinstance(qtype, str):
        name = qtype.lower()
        if name in QUANT_TYPES:
            return name
    elif isinstance(qtype, (int, np.integer)) and not isinstance(qtype, bool):
        if int(qtype) in _QUANT_NAMES:
            return _QUANT_NAMES[int(qtype)]
    else:
        raise TypeError(f"{fn}: qtype must be a name ('q8_0', 'q4_1') or a ggml type id, got "
                        f"{type(qtype).__name__}")
    raise ValueError(f"{fn}: unsupported qtype {qtype!r}; supported: 'q8_0' (8), 'q4_1' (3)")


def quant_row_bytes(qtype, K):
    """Bytes of one quantized row of K weights (K a multiple of 32)."""
    return reference.quant_row_bytes(qtype_name(qtype, "quant_row_bytes"), K)


def _check_raw(dev, fn, raw, qtype, rows, K):
    """raw holds exactly `rows` rows of K weights of type qtype (numpy and device routes)."""
    check_typed(dev, raw, np.uint8, fn, "raw", "the quantized blocks")
    if K <= 0 or K % reference.QK:
        raise ValueError(f"{fn}: K must be a positive multiple of 32, got {K}")
    if rows <= 0:
        raise ValueError(f"{fn}: the number of rows must be positive, got {rows}")
    expected = rows * reference.quant_row_bytes(qtype, K)
    if raw.nbytes != expected:
        raise ValueError(f"{fn}: raw has {raw.nbytes} bytes, expected {expected} for {rows} "
                         f"rows of {K} {qtype} weights")


def dequantize(raw, qtype, shape, *, out=None, backend="auto"):
    """Quantized blocks -> float32 array of `shape` (last dimension a multiple of 32).

    raw: uint8, C-contiguous, exactly prod(shape) / 32 blocks (34 bytes each for Q8_0, 20
    for Q4_1), any shape (e.g. a GGUF tensor's data). qtype: 'q8_0', 'q4_1' or ggml's id.
    Q4_1 weights come out as one fused multiply-add d * q + m (numpy rounds twice: the two
    may differ in the last bit).
    """
    fn = "dequantize"
    name = qtype_name(qtype, fn)
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    shape = tuple(int_option(s, fn, "shape") for s in shape)
    where, dev = where_of(fn, backend, raw)
    if where == "cpu":
        return _C.dequantize(raw, name, shape, out,
                             DEQUANTIZE_VERSIONS.number(backend, "cpu"))
    rows = int(np.prod(shape[:-1], dtype=np.int64)) if shape else 0
    _check_raw(dev, fn, raw, name, rows, shape[-1] if shape else 0)
    if where == "numpy":
        return into(out, reference.dequantize(raw, name, shape))
    version = DEQUANTIZE_VERSIONS.number(backend, "cuda")
    y = output(dev, out, shape, fn)
    dev.lib.cuda_dequantize(version, QUANT_TYPES[name], raw.data.ptr,
                            y.data.ptr, y.size // 32, dev.stream())
    return y


def quant_matmul(x, raw, qtype, n_rows, *, out=None, backend="auto"):
    """y = x @ W^T where W [n_rows, K] is stored quantized (nn.Linear's weight layout).

    x: [K] or [M, K] float32 (K a multiple of 32)  ->  y: [n_rows] or [M, n_rows] float32.
    raw: uint8, exactly n_rows * K / 32 blocks. backend: "auto", "naive", "fused", "tiled",
    "vnni" (C++), "warp" (CUDA), "numpy" (see the versions above). "auto" and "fused" /
    "tiled" are fp32, within 1e-4 of the reference; "vnni" quantizes x to int8 (~1% error).
    """
    fn = "quant_matmul"
    name = qtype_name(qtype, fn)
    n_rows = int_option(n_rows, fn, "n_rows")
    where, dev = where_of(fn, backend, x, raw)
    if where == "cpu":
        return _C.quant_matmul(x, raw, name, n_rows, out, VERSIONS.number(backend, "cpu"))
    check_f32(dev, x, fn, "x", (1, 2))
    K = x.shape[-1]
    _check_raw(dev, fn, raw, name, n_rows, K)
    if where == "numpy":
        return into(out, reference.quant_matmul(x, raw, name, n_rows))
    version = VERSIONS.number(backend, "cuda")
    M = 1 if x.ndim == 1 else x.shape[0]
    y = output(dev, out, x.shape[:-1] + (n_rows,), fn, (x,))
    dev.lib.cuda_quant_matmul(version, QUANT_TYPES[name], x.data.ptr, raw.data.ptr,
                              y.data.ptr, M, n_rows, K, False, dev.stream())
    return y


def quant_packed_bytes(qtype, n_rows, K) -> int:
    """Bytes of quant_pack's panels for W [n_rows, K]: a 64-byte header, then n_rows rounded
    up to 16 rows of the same blocks."""
    name = qtype_name(qtype, "quant_packed_bytes")
    return 64 + -(-int(n_rows) // 16) * 16 * quant_row_bytes(name, int(K))


def quant_pack(raw, qtype, n_rows, K, *, out=None):
    """The int8 path's packed panels (uint8, 1-D) of W [n_rows, K] given as GGUF blocks raw:
    groups of 16 rows, block by block, one VPDPBUSD's worth per 64 bytes (csrc/kernels/quant.h).
    The same bytes as raw, rearranged, after a header; CPU only. out: a uint8 array of
    quant_packed_bytes(qtype, n_rows, K) to write them into (e.g. a slice of one buffer for a
    whole model, which then streams through contiguous huge pages)."""
    fn = "quant_pack"
    return _C.quant_pack(raw, qtype_name(qtype, fn), int_option(n_rows, fn, "n_rows"),
                         int_option(K, fn, "K"), out)


def quant_matmul_packed(x, panels, qtype, n_rows, *, out=None, x_bits=16):
    """y = x @ W^T with W as quant_pack's panels: x [K] or [M, K] float32 quantized per block
    of 32, integer block dots (VPDPBUSD; AVX2: VPMADDUBSW + VPMADDWD, the same integers), float
    scales per block. x_bits 8: one int8 pass, as backend="vnni" and llama.cpp (~1% error per
    product); x_bits 16: a second int8 pass on the remainder (~4e-5). Within float rounding of reference.quant_matmul_q8(x_bits=...)."""
    fn = "quant_matmul_packed"
    return _C.quant_matmul_packed(x, panels, qtype_name(qtype, fn), int_option(n_rows, fn, "n_rows"),
                                  out, int_option(x_bits, fn, "x_bits"))


def int8_native() -> bool:
    """Whether the dispatched kernels run the int8 path in SIMD: VPDPBUSD (AVX512-VNNI) or
    VPMADDUBSW + VPMADDWD (AVX2, the same integers); elsewhere (SSE2 baseline,
    aarch64) the same integers run in plain loops (correct, slower than the fp32 path)."""
    return bool(_C.quant_packed_path()[0])
