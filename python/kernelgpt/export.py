"""Saving a (fine-tuned) Llama-flavour model for other tools.

    export_gguf(model, "tuned.gguf", dtype="q8_0")   # kernelgpt chat --model tuned.gguf, llama.cpp
    export_hf(model, "tuned-hf/")                     # transformers' LlamaForCausalLM.from_pretrained

GGUF: the base file's metadata (architecture, hyperparameters, tokenizer, chat template) is
copied as it is, general.file_type set to the new type, and every weight written under
llama.cpp's names: the fused Q/K/V and gate/up matrices split back apart, Q and K rows in the
order llama.cpp's converter gives them (as loaded: the model runs the "interleaved" RoPE
layout on them), norms always F32. dtype: 'f32', 'bf16' or 'q8_0'.

Hugging Face: model.safetensors in transformers' Llama names with Q and K rows un-permuted
back to the "half" RoPE layout, and a config.json for LlamaConfig.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Tuple

import numpy as np

from .io import safetensors
from .io.atomic import atomic_write_bytes
from .io.gguf import ValueType
from .io.gguf_write import metadata_items, write_gguf

__all__ = ["export_gguf", "export_hf", "gguf_tensors", "hf_tensors"]

_FILE_TYPES = {"f32": (0, "F32"), "bf16": (32, "BF16"), "q8_0": (7, "Q8_0")}


def _split(gpt, P=None) -> List[Tuple[str, np.ndarray, bool]]:
    """(llama.cpp name, float32 array, is a matrix) for every weight of the GPT (or, with P,
    for every tensor of a buffer of the same layout: its gradients)."""
    c = gpt.config
    P = gpt.params if P is None else P
    if gpt.packed:
        raise ValueError("export needs fp32 weights (load with weights='fp32', or a finetune "
                         "run's model)")
    if c.norm != "rmsnorm" or c.activation != "swiglu" or c.positions != "rope" or c.bias:
        raise ValueError("export writes Llama-flavour models (RMSNorm, SwiGLU, RoPE, no biases)")
    hd, F = c.head_dim, c.mlp_hidden
    nq, nk = c.n_head * hd, c.n_kv_head * hd
    out = [("token_embd.weight", P["wte"], True), ("output_norm.weight", P["ln_f.weight"], False)]
    if not c.tied_head:
        out.append(("output.weight", P["lm_head.weight"], True))
    for i in range(c.n_layer):
        L, b = f"h.{i}.", f"blk.{i}."
        qkv, fc = P[L + "attn.c_attn.weight"], P[L + "mlp.c_fc.weight"]
        out += [(b + "attn_norm.weight", P[L + "ln_1.weight"], False),
                (b + "attn_q.weight", qkv[:nq], True),
                (b + "attn_k.weight", qkv[nq:nq + nk], True),
                (b + "attn_v.weight", qkv[nq + nk:], True),
                (b + "attn_output.weight", P[L + "attn.c_proj.weight"], True),
                (b + "ffn_norm.weight", P[L + "ln_2.weight"], False),
                (b + "ffn_gate.weight", fc[:F], True),
                (b + "ffn_up.weight", fc[F:], True),
                (b + "ffn_down.weight", P[L + "mlp.c_proj.weight"], True)]
    return out


def gguf_tensors(gpt, dtype: str = "f32"):
    """(name, array, ggml type) of every weight, matrices in `dtype`, norms in F32."""
    if dtype not in _FILE_TYPES:
        raise ValueError(f"dtype must be one of {', '.join(_FILE_TYPES)}, got {dtype!r}")
    kind = _FILE_TYPES[dtype][1]
    return [(n, np.asarray(a, np.float32), kind if matrix else "F32")
            for n, a, matrix in _split(gpt)]


def export_gguf(model, path, dtype: str = "q8_0", name: str = "") -> Path:
    """Writes `model` (a TextModel loaded from a GGUF, with fp32 weights) as a GGUF file."""
    gguf = getattr(model, "_gguf", None)
    if gguf is None:
        raise ValueError("export_gguf needs a model loaded from a GGUF file (its metadata is "
                         "copied: tokenizer, chat template, hyperparameters)")
    tensors = gguf_tensors(model.gpt, dtype)
    items = []
    for key, vtype, value in metadata_items(gguf.metadata):
        if key in ("general.file_type", "general.alignment"):
            continue
        if key == "general.name" and name:
            value = name
        items.append((key, vtype, value))
    items.append(("general.file_type", ValueType.UINT32, _FILE_TYPES[dtype][0]))
    write_gguf(path, items, tensors)
    return Path(path)


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's row order of a Q or K matrix back to Hugging Face's (rotate-half RoPE)."""
    rows, C = w.shape
    hd = rows // n_head
    return np.ascontiguousarray(w.reshape(n_head, hd // 2, 2, C).swapaxes(1, 2).reshape(rows, C))


def hf_tensors(gpt, P=None) -> dict:
    """The GPT's weights (or a buffer of the same layout, e.g. its gradients) under
    transformers' Llama names, Q and K rows in its rotate-half order."""
    c = gpt.config
    if c.rope_layout != "interleaved":
        raise ValueError("export_hf expects the GGUF row order of Q and K (rope_layout "
                         "'interleaved')")
    names = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
             "output.weight": "lm_head.weight"}
    per_layer = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj",
                 "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                 "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
                 "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
    tensors = {}
    for n, a, _ in _split(gpt, P):
        a = np.asarray(a, np.float32)
        if n.startswith("blk."):
            _, i, kind, _ = n.split(".")
            if kind == "attn_q":
                a = _unpermute(a, c.n_head)
            elif kind == "attn_k":
                a = _unpermute(a, c.n_kv_head)
            tensors[f"model.layers.{i}.{per_layer[kind]}.weight"] = np.ascontiguousarray(a)
        else:
            tensors[names[n]] = np.ascontiguousarray(a)
    return tensors


def export_hf(model, directory) -> Path:
    """Writes `model` (Llama flavour, fp32, interleaved RoPE as loaded from GGUF) as a
    transformers Llama checkpoint: model.safetensors and config.json."""
    gpt = model.gpt
    c = gpt.config
    tensors = hf_tensors(gpt)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    safetensors.save(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    tok = model.tokenizer
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": c.vocab_size, "hidden_size": c.n_embd, "intermediate_size": c.mlp_hidden,
        "num_hidden_layers": c.n_layer, "num_attention_heads": c.n_head,
        "num_key_value_heads": c.n_kv_head, "head_dim": c.head_dim, "hidden_act": "silu",
        "max_position_embeddings": c.block_size, "rms_norm_eps": c.norm_eps,
        "rope_theta": c.rope_base, "tie_word_embeddings": c.tied_head,
        "attention_bias": False, "mlp_bias": False, "torch_dtype": "float32",
        "bos_token_id": getattr(tok, "bos_token_id", None),
        "eos_token_id": getattr(tok, "eos_token_id", None),
    }
    atomic_write_bytes(directory / "config.json", json.dumps(config, indent=1).encode())
    return directory
