"""What a model computes with: the number formats of its weights and the "ops" that run them.

model.py's GPT calls every kernel through ``self.ops``. Which object that is decides the
arithmetic, without a line of the model changing:

    kernelgpt.ops            float32 kernels (C++ on the CPU, CUDA on a device): the default
    ReferenceOps()           kernelgpt.reference's numpy formulas in float64: the oracle the
                             gradient checks compare the float32 model with
    MixedPrecisionOps()      every matrix product with both operands rounded to bf16 and
                             float32 accumulation (VDPBF16PS on the CPU, tensor cores on a
                             GPU), the rest float32: mixed-precision training
                             (GPT.to(device, precision="bf16"))
    PackedWeightOps()        linear layers and embedding lookups that take packed weights:
                             QuantWeight (GGUF Q8_0 / Q4_1 blocks) and Bf16Weight (bf16 bits)

Packed weights cannot live in the model's one float32 buffer, so a model built from them keeps
its weights in a PackedParams (a dict with FlatBuffer's read interface) and is inference-only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np

from . import ops, reference
from .device import move, to_numpy

__all__ = ["QuantWeight", "Bf16Weight", "PackedParams", "PackedWeightOps", "MixedPrecisionOps",
           "pack_all",
           "ReferenceOps", "is_packed", "native_bf16"]


# ---- packed weights -----------------------------------------------------------------------

@dataclass
class QuantWeight:
    """A [rows, K] weight matrix kept in its quantized GGUF blocks (raw: uint8 [rows, row_bytes]).
    panels, when present, holds the same weights as the int8 path's packed panels
    (ops.quant_pack): linear layers then quantize x to int8 per block and multiply on VPDPBUSD
    (ops.quant_matmul_packed), prefill and decode alike; raw stays for embedding lookups, the
    GPU and the fp32 path."""
    raw: np.ndarray
    qtype: str
    shape: tuple
    panels: Optional[np.ndarray] = None
    x_bits: int = 16  # with panels: x in one int8 pass (8, llama.cpp's) or two (16)

    def with_panels(self, x_bits: int = 16, out=None) -> "QuantWeight":
        """The same weight with its int8 panels (CPU; written into out if given, see
        ops.quant_pack); x_bits: see ops.quant_matmul_packed."""
        if x_bits not in (8, 16):
            raise ValueError(f"x_bits must be 8 or 16, got {x_bits!r}")
        panels = self.panels if self.panels is not None else \
            ops.quant_pack(self.raw, self.qtype, self.shape[0], self.shape[1], out=out)
        return QuantWeight(self.raw, self.qtype, self.shape, panels, x_bits)

    @property
    def panels_bytes(self) -> int:
        return ops.quant_packed_bytes(self.qtype, self.shape[0], self.shape[1])


    @property
    def size(self) -> int:
        return int(self.shape[0]) * int(self.shape[1])

    def dequantize(self) -> np.ndarray:
        return ops.dequantize(self.raw, self.qtype, self.shape)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Dequantized rows ids (an embedding lookup straight from the quantized table)."""
        picked = self.raw[ids]  # fancy indexing: a new C-contiguous array (numpy or device)
        return ops.dequantize(picked, self.qtype, (len(ids), int(self.shape[1])))

    def to(self, xp) -> "QuantWeight":
        """The same blocks on the device of array module xp (the CPU's int8 panels stay behind:
        a GPU multiplies the blocks as they are)."""
        if xp is np and isinstance(self.raw, np.ndarray):
            return self
        return QuantWeight(move(self.raw, xp), self.qtype, self.shape)


def pack_all(weights: Dict[str, object], x_bits: int = 16) -> Dict[str, object]:
    """Every QuantWeight of a model with its int8 panels, all in one buffer in the order given
    (a decode then reads one contiguous stream; numpy asks for huge pages on a buffer this
    large, which spares the stream TLB misses). Other weights as they are."""
    names = [n for n, w in weights.items() if isinstance(w, QuantWeight)]
    offsets, total = {}, 0
    for n in names:
        offsets[n] = total
        total += -(-weights[n].panels_bytes // 64) * 64  # each panel 64-byte aligned
    arena = np.empty(total + 64, np.uint8)
    base = (-arena.ctypes.data) % 64
    out = dict(weights)
    for n in names:
        w = weights[n]
        start = base + offsets[n]
        out[n] = w.with_panels(x_bits, out=arena[start:start + w.panels_bytes])
    return out


@dataclass
class Bf16Weight:
    """A [rows, K] weight matrix stored as bfloat16 bit patterns (bits: uint16 [rows, K])."""
    bits: np.ndarray
    shape: tuple

    @classmethod
    def from_float(cls, w: np.ndarray) -> "Bf16Weight":
        """Rounds a float32 [rows, K] matrix to bf16 (nearest, ties to even)."""
        w = np.ascontiguousarray(w, np.float32)
        return cls(ops.to_bf16(w), tuple(w.shape))

    @property
    def size(self) -> int:
        return int(self.shape[0]) * int(self.shape[1])

    def dequantize(self) -> np.ndarray:
        return ops.from_bf16(self.bits)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Rows ids widened to float32 (an embedding lookup straight from the bf16 table)."""
        return ops.from_bf16(self.bits[ids])

    def to(self, xp) -> "Bf16Weight":
        return Bf16Weight(move(self.bits, xp), self.shape)


def is_packed(w) -> bool:
    return isinstance(w, (QuantWeight, Bf16Weight))


class PackedParams:
    """The slice of FlatBuffer's interface that inference uses, over a dict of float arrays and
    packed weights."""

    def __init__(self, tensors: Dict[str, object]):
        self.views = dict(tensors)
        self.data = self  # what GPT.decode_next checks to know its runner is current

    def __getitem__(self, name):
        return self.views[name]

    def __contains__(self, name):
        return name in self.views

    def names(self) -> List[str]:
        return list(self.views)

    @property
    def size(self) -> int:
        return sum(int(t.size) for t in self.views.values())

    def to(self, xp) -> "PackedParams":
        """Every weight on the device of array module xp (quantized blocks as they are)."""
        return PackedParams({n: t.to(xp) if is_packed(t) else move(t, xp)
                             for n, t in self.views.items()})

    def runner_views(self) -> Dict[str, object]:
        """The weights as the native decode runner takes them: arrays, (raw, qtype) or (raw,
        qtype, panels, x_bits), (bits, "bf16")."""
        return {name: ((t.raw, t.qtype) if t.panels is None else (t.raw, t.qtype, t.panels, t.x_bits))
                if isinstance(t, QuantWeight)
                else (t.bits, "bf16") if isinstance(t, Bf16Weight) else t
                for name, t in self.views.items()}


# ---- the ops objects ---------------------------------------------------------------------

class PackedWeightOps:
    """kernelgpt.ops, except that linear layers and the embedding lookup also accept QuantWeight
    (ops.quant_matmul, ops.dequantize) and Bf16Weight (ops.bf16_matmul, ops.from_bf16)."""

    def __getattr__(self, name):
        return getattr(ops, name)

    def linear(self, x, weight, bias=None, *, out=None, **kw):
        if isinstance(weight, QuantWeight) and weight.panels is not None:
            y = ops.quant_matmul_packed(x, weight.panels, weight.qtype, weight.shape[0], out=out,
                                        x_bits=weight.x_bits)
        elif isinstance(weight, QuantWeight):
            y = ops.quant_matmul(x, weight.raw, weight.qtype, weight.shape[0], out=out)
        elif isinstance(weight, Bf16Weight):
            y = ops.bf16_matmul(x, weight.bits, out=out)
        else:
            return ops.linear(x, weight, bias, out=out, **kw)
        if bias is not None:
            y += bias
        return y

    def embedding(self, ids, table, *, out=None, **kw):
        if not is_packed(table):
            return ops.embedding(ids, table, out=out, **kw)
        host = to_numpy(ids)  # ids may live on a device; the range check reads them here
        if host.size and (host.min() < 0 or host.max() >= table.shape[0]):
            raise ValueError(f"embedding: token ids must be in [0, {table.shape[0]})")
        rows = table.rows(ids.reshape(-1))
        if out is not None:
            out[...] = rows.reshape(out.shape)
            return out
        return rows.reshape(*ids.shape, -1)


def native_bf16(device: str) -> bool:
    """Whether `device` multiplies bf16 natively: a GPU (tensor cores), the emulator (which
    stands for one), or a CPU whose kernels run the AVX512-BF16 copy (or, on ARM64, the i8mm
    copy, whose bf16 GEMM runs BFMMLA)."""
    if device != "cpu":
        return True
    from . import _C
    return _C.get_isa() in ("avx512bf16", "i8mm")


class MixedPrecisionOps:
    """kernelgpt.ops with every matrix product in bf16 (both operands rounded to bf16, float32
    accumulation and output, bias and accumulate= in the epilogue): GPT.to(device,
    precision="bf16"). On the CPU ops.matmul_bf16 runs VDPBF16PS (or, without AVX512-BF16,
    the same products through float32 FMAs) and rounds float32 operands as it packs them: no
    conversion pass, no bf16 copy of a weight or an activation kept anywhere. On a GPU tensor
    cores. Everything else is kernelgpt.ops.

    It also fuses a linear layer with the activation after it (GPT's MLP): forward
    linear_activation (the GELU in the GEMM's epilogue) and backward matmul_activation_backward
    (dX * GELU'(x) in the epilogue); GPT calls them where its ops object has them."""

    fuses_activation = True

    def __getattr__(self, name):
        return getattr(ops, name)

    def matmul(self, a, b, bias=None, *, trans_a=False, trans_b=False, out=None,
               accumulate=False, backend="auto"):
        return ops.matmul_bf16(a, b, bias, trans_a=trans_a, trans_b=trans_b, out=out,
                               accumulate=accumulate)

    def linear(self, x, weight, bias=None, *, out=None, backend="auto"):
        return self.matmul(x, weight, bias, trans_b=True, out=out)

    def linear_activation(self, x, weight, bias, activation, *, out, act_out):
        """out = x @ weight^T + bias (the pre-activation, kept for backward) and
        act_out = activation(out), in one pass. activation: "gelu" (tanh form) or "relu"."""
        ops.matmul_bf16(x, weight, bias, trans_b=True, out=out, activation=activation,
                        act_out=act_out)
        return act_out

    def matmul_activation_backward(self, d_y, weight, x_pre, activation, *, out=None):
        """(d_y @ weight) * activation'(x_pre): the gradient at the pre-activation x_pre of
        y = linear(activation(x_pre)), from the gradient d_y at y."""
        return ops.matmul_bf16(d_y, weight, activation=activation, act_x=x_pre, out=out)


class ReferenceOps:
    """The ops the model uses, as kernelgpt.reference's numpy formulas in the input's dtype
    (float64 for the gradient checks). Same signatures as kernelgpt.ops."""

    @staticmethod
    def _out(result, out):
        if out is None:
            return result
        out[...] = result
        return out

    def matmul(self, a, b, bias=None, *, trans_a=False, trans_b=False, out=None, accumulate=False):
        r = reference.matmul(a, b, bias, trans_a=trans_a, trans_b=trans_b)
        if accumulate:
            out += r
            return out
        return self._out(r, out)

    def linear(self, x, weight, bias=None, *, out=None):
        return self.matmul(x, weight, bias, trans_b=True, out=out)

    def embedding(self, ids, table, *, out=None):
        return self._out(reference.embedding(ids, table), out)

    def embedding_backward(self, dout, ids, num_embeddings, *, out=None, accumulate=False):
        r = reference.embedding_backward(dout, ids, num_embeddings)
        if accumulate:
            out += r
            return out
        return self._out(r, out)

    def layernorm(self, x, weight, bias=None, eps=1e-5, *, return_stats=False, out=None):
        y, mean, rstd = reference.layernorm(x, weight, bias, eps)
        y = self._out(y, out)
        return (y, mean, rstd) if return_stats else y

    def rmsnorm(self, x, weight, eps=1e-6, *, return_stats=False, out=None):
        y, rstd = reference.rmsnorm(x, weight, eps)
        y = self._out(y, out)
        return (y, rstd) if return_stats else y

    def __getattr__(self, name):
        fn = getattr(reference, name)  # the backward ops, activations, rope, attention...

        def call(*args, out=None, **kwargs):
            return self._out(fn(*args, **kwargs), out)
        return call

    def attention(self, q, k, v, *, causal=True, return_lse=False, kv_length=None, out=None):
        if kv_length is not None:
            k, v = k[:, :, :kv_length], v[:, :, :kv_length]
        k, v = k.astype(q.dtype, copy=False), v.astype(q.dtype, copy=False)  # a float16 cache
        y, lse = reference.attention(q, k, v, causal)
        y = self._out(y, out)
        return (y, lse) if return_lse else y

    def attention_backward(self, dout, q, k, v, out, lse, *, causal=True):
        return reference.attention_backward(dout, q, k, v, out, lse, causal)

    def cross_entropy(self, logits, targets, *, ignore_index=-100, reduction="mean",
                      return_grad=False, out=None):
        m = logits.max(axis=1, keepdims=True)
        logp = logits - m - np.log(np.exp(logits - m).sum(axis=1, keepdims=True))
        valid = targets != ignore_index
        safe = np.where(valid, targets, 0)
        losses = np.where(valid, -logp[np.arange(len(targets)), safe], 0.0)
        count = max(int(valid.sum()), 1)
        loss = losses if reduction == "none" else float(losses.sum()) / (
            count if reduction == "mean" else 1)
        if not return_grad:
            return loss
        grad = np.exp(logp)
        grad[np.arange(len(targets)), safe] -= 1.0
        grad *= valid[:, None]
        if reduction == "mean":
            grad /= count
        return loss, self._out(grad, out)
