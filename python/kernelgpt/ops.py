"""The kernel API: one function per kernel, forward and backward.

Every function takes numpy float32 arrays (CuPy or kernelgpt.cuda_emu arrays run the CUDA
kernels) and returns new arrays, or writes into ``out=`` when given. The ``backend=``
argument picks the implementation:

    "auto"    the fastest native kernel for the array type (default)
    "naive"   version 1: plain loops a student can read in one sitting
    "numpy"   the numpy reference in ``kernelgpt.reference``: the baseline and the oracle
    other     a named version of that kernel family (e.g. matmul: "blocked")

The functions live in ``kernelgpt/kernels/<family>.py``, one file per family, which lists its
numbered versions at the top; this module gathers them. Arguments are checked before any
kernel runs: float arrays must be float32 (TypeError otherwise, nothing is cast behind your
back), C-contiguous and non-empty (ValueError), shapes must agree (ValueError naming the
argument and the expected shape), ``out=`` must not overlap an input. Ids must be in range.
NaN and inf in inputs propagate as IEEE arithmetic says (a NaN in a softmax row makes that row
NaN); they never crash a kernel.
"""
from __future__ import annotations

from . import _C
from .kernels import FAMILIES
from .kernels.activation import (gelu, gelu_backward, relu, relu_backward, sigmoid,
                                 sigmoid_backward, silu, silu_backward, swiglu, swiglu_backward,
                                 swiglu_packed, swiglu_packed_backward, tanh, tanh_backward)
from .kernels.adamw import adamw_step, clip_grad_norm, grad_norm
from .kernels.attention import attention, attention_backward
from .kernels.bf16 import bf16_matmul, from_bf16, matmul_bf16, to_bf16
from .kernels.cross_entropy import cross_entropy, cross_entropy_backward
from .kernels.embedding import embedding, embedding_backward
from .kernels.matmul import linear, lowrank_add, matmul
from .kernels.norm import layernorm, layernorm_backward, rmsnorm, rmsnorm_backward
from .kernels.quant import (QUANT_TYPES, dequantize, int8_native, quant_matmul, quant_matmul_packed,
                            quant_pack, quant_packed_bytes, quant_row_bytes)
from .kernels.rope import rope, rope_backward, sinusoidal_positions
from .kernels.softmax import log_softmax, log_softmax_backward, softmax, softmax_backward
from .kernels.ssm import selective_scan, selective_scan_backward

__all__ = [
    "matmul", "linear", "lowrank_add",
    "attention", "attention_backward",
    "layernorm", "layernorm_backward", "rmsnorm", "rmsnorm_backward",
    "relu", "relu_backward", "sigmoid", "sigmoid_backward", "tanh", "tanh_backward",
    "silu", "silu_backward", "gelu", "gelu_backward", "swiglu", "swiglu_backward",
    "swiglu_packed", "swiglu_packed_backward",
    "embedding", "embedding_backward",
    "sinusoidal_positions", "rope", "rope_backward",
    "adamw_step", "grad_norm", "clip_grad_norm",
    "softmax", "log_softmax", "softmax_backward", "log_softmax_backward",
    "cross_entropy", "cross_entropy_backward",
    "QUANT_TYPES", "quant_row_bytes", "dequantize", "quant_matmul", "quant_pack",
    "quant_matmul_packed", "quant_packed_bytes", "int8_native",
    "to_bf16", "from_bf16", "bf16_matmul", "matmul_bf16",
    "selective_scan", "selective_scan_backward",
    "kernel_paths",
]


def kernel_paths() -> dict:
    """The code path each kernel family's fast version takes on this CPU."""
    return {name: getattr(_C, name + "_path")() for name in FAMILIES}
