"""A tiny random Llama GGUF that chats: a byte-level vocabulary (the 256 bytes, no merges,
so any text encodes), ChatML's special tokens and template, written with the package's own
GGUF writer. For the fine-tuning and export tests: every command runs on it in seconds."""
from __future__ import annotations

import numpy as np

from kernelgpt.io.gguf import ValueType as T
from kernelgpt.io.gguf_write import write_gguf
from kernelgpt.tokenizer.vocab_import import gpt2_char_to_byte

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def write_tiny_llama(path, seed: int = 0, n_layer: int = 2, n_embd: int = 32, n_head: int = 4,
                     n_kv_head: int = 2, n_ff: int = 64, context: int = 256, untied=False):
    spelling = {b: ch for ch, b in gpt2_char_to_byte().items()}
    byte_tokens = [spelling[b] for b in range(256)]
    tokens = byte_tokens + SPECIALS
    V = len(tokens)
    md = [("general.architecture", T.STRING, "llama"), ("general.name", T.STRING, "tiny chat"),
          ("llama.block_count", T.UINT32, n_layer), ("llama.context_length", T.UINT32, context),
          ("llama.embedding_length", T.UINT32, n_embd),
          ("llama.feed_forward_length", T.UINT32, n_ff),
          ("llama.attention.head_count", T.UINT32, n_head),
          ("llama.attention.head_count_kv", T.UINT32, n_kv_head),
          ("llama.rope.freq_base", T.FLOAT32, 10000.0),
          ("llama.attention.layer_norm_rms_epsilon", T.FLOAT32, 1e-5),
          ("llama.vocab_size", T.UINT32, V),
          ("tokenizer.ggml.model", T.STRING, "gpt2"), ("tokenizer.ggml.pre", T.STRING, "smollm"),
          ("tokenizer.ggml.tokens", T.ARRAY, (T.STRING, tokens)),
          ("tokenizer.ggml.token_type", T.ARRAY, (T.INT32, [1] * 256 + [3] * len(SPECIALS))),
          ("tokenizer.ggml.merges", T.ARRAY, (T.STRING, [])),
          ("tokenizer.ggml.bos_token_id", T.UINT32, 257),
          ("tokenizer.ggml.eos_token_id", T.UINT32, 258),
          ("tokenizer.chat_template", T.STRING, CHATML)]
    rng = np.random.default_rng(seed)
    C, F, hd = n_embd, n_ff, n_embd // n_head

    def w(*shape, scale=0.2):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    tensors = [("token_embd.weight", w(V, C, scale=0.5), "F32"),
               ("output_norm.weight", 1 + w(C, scale=0.1), "F32")]
    if untied:
        tensors.append(("output.weight", w(V, C), "F32"))
    for i in range(n_layer):
        b = f"blk.{i}."
        tensors += [(b + "attn_norm.weight", 1 + w(C, scale=0.1), "F32"),
                    (b + "attn_q.weight", w(n_head * hd, C), "F32"),
                    (b + "attn_k.weight", w(n_kv_head * hd, C), "F32"),
                    (b + "attn_v.weight", w(n_kv_head * hd, C), "F32"),
                    (b + "attn_output.weight", w(C, n_head * hd), "F32"),
                    (b + "ffn_norm.weight", 1 + w(C, scale=0.1), "F32"),
                    (b + "ffn_gate.weight", w(F, C), "F32"),
                    (b + "ffn_up.weight", w(F, C), "F32"),
                    (b + "ffn_down.weight", w(C, F), "F32")]
    write_gguf(path, md, tensors)
    return path
