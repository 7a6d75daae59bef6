"""The kernels, one file per family, each forward and backward together:

    matmul         matmul, linear
    softmax        softmax, log_softmax and their backwards
    attention      attention (causal, grouped-query, KV cache) and its backward
    norm           layernorm, rmsnorm and their backwards
    activation     relu, sigmoid, tanh, silu, gelu, swiglu and their backwards
    embedding      embedding lookup and its scatter-add backward
    rope           sinusoidal position table, rotary embeddings (RoPE)
    cross_entropy  fused cross-entropy loss and gradient
    adamw          AdamW step, gradient norm, clipping
    quant          Q8_0 / Q4_1 quantized weights: dequantize, quant_matmul
    bf16           bfloat16 conversion and bf16 matrix products
    ssm            selective scan (the state-space layer) and its backward

Each file starts with its numbered versions (the same numbers in csrc/kernels/<family>.cpp
and csrc/cuda/<family>.cu), checks its arguments once and routes each call to the C++
kernel, the CUDA kernel or the numpy reference (kernelgpt.reference) through _dispatch.py.
``kernelgpt.ops`` re-exports every function: ``from kernelgpt import ops; ops.softmax(x)``.
"""
from . import (activation, adamw, attention, bf16, cross_entropy, embedding, matmul, norm, quant,
               rope, softmax, ssm)

# family -> its module; each has a C++ fast path described by kernelgpt._C.<family>_path()
FAMILIES = {
    "matmul": matmul, "softmax": softmax, "cross_entropy": cross_entropy,
    "attention": attention, "norm": norm, "activation": activation, "embedding": embedding,
    "rope": rope, "adamw": adamw, "quant": quant, "bf16": bf16, "ssm": ssm,
}
