"""A compact nanoGPT-equivalent in PyTorch, parameterised exactly like kernelgpt.model.GPT.

Used two ways: as the oracle for kernelgpt's hand-written backward (same weights -> same
logits and gradients, tests/test_model.py) and as the peer in the training benchmark
(benchmarks/bench_train.py). Eager mode, CPU, float32.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def _rope(x, base, layout, offset=0):
    # x [B, H, T, D]
    B, H, T, D = x.shape
    inv = base ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    pos = torch.arange(offset, offset + T, dtype=torch.float64)
    ang = pos[:, None] * inv[None, :]
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    if layout == "half":
        x1, x2 = x[..., : D // 2], x[..., D // 2:]
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    out = torch.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    return out.flatten(-2)


def _sinusoidal(T, C, base=10000.0):
    pos = np.arange(T, dtype=np.float64)[:, None]
    i = np.arange(C, dtype=np.float64)[None, :]
    ang = pos / base ** ((2 * (i // 2)) / C)
    table = np.where(i % 2 == 0, np.sin(ang), np.cos(ang))
    return torch.tensor(table, dtype=torch.float32)


class RMSNorm(nn.Module):
    def __init__(self, C, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(C))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        Norm = (lambda: nn.LayerNorm(c.n_embd, eps=c.norm_eps, bias=c.bias)) \
            if c.norm == "layernorm" else (lambda: RMSNorm(c.n_embd, c.norm_eps))
        self.c = c
        self.ln_1 = Norm()
        self.ln_2 = Norm()
        self.attn = nn.Module()
        self.attn.c_attn = nn.Linear(c.n_embd, c.qkv_dim, bias=c.bias)
        self.attn.c_proj = nn.Linear(c.n_embd, c.n_embd, bias=c.bias)
        fc_out = 2 * c.mlp_hidden if c.activation == "swiglu" else c.mlp_hidden
        self.mlp = nn.Module()
        self.mlp.c_fc = nn.Linear(c.n_embd, fc_out, bias=c.bias)
        self.mlp.c_proj = nn.Linear(c.mlp_hidden, c.n_embd, bias=c.bias)

    def forward(self, x):
        c = self.c
        B, T, C = x.shape
        H, Hkv, hd = c.n_head, c.n_kv_head, c.head_dim
        qkv = self.attn.c_attn(self.ln_1(x)).view(B, T, H + 2 * Hkv, hd).transpose(1, 2)
        q, k, v = qkv[:, :H], qkv[:, H:H + Hkv], qkv[:, H + Hkv:]
        if c.positions == "rope":
            q, k = _rope(q, c.rope_base, c.rope_layout), _rope(k, c.rope_base, c.rope_layout)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=Hkv != H)
        x = x + self.attn.c_proj(y.transpose(1, 2).reshape(B, T, C))
        h = self.mlp.c_fc(self.ln_2(x))
        if c.activation == "gelu":
            h = F.gelu(h, approximate="tanh")
        elif c.activation == "relu":
            h = F.relu(h)
        else:
            gate, up = h.split(c.mlp_hidden, dim=-1)
            h = F.silu(gate) * up
        return x + self.mlp.c_proj(h)


class TorchGPT(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.wte = nn.Embedding(c.vocab_size, c.n_embd)
        if c.positions == "learned":
            self.wpe = nn.Embedding(c.block_size, c.n_embd)
        elif c.positions == "sinusoidal":
            self.register_buffer("sin_table", _sinusoidal(c.block_size, c.n_embd))
        self.h = nn.ModuleList(Block(c) for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.n_embd, eps=c.norm_eps, bias=c.bias) if c.norm == "layernorm" \
            else RMSNorm(c.n_embd, c.norm_eps)
        if not c.tied_head:
            self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)

    def forward(self, idx, targets=None):
        B, T = idx.shape
        x = self.wte(idx)
        if self.c.positions == "learned":
            x = x + self.wpe(torch.arange(T))
        elif self.c.positions == "sinusoidal":
            x = x + self.sin_table[:T]
        for block in self.h:
            x = block(x)
        x = self.ln_f(x)
        W = self.wte.weight if self.c.tied_head else self.lm_head.weight
        logits = x @ W.t()
        if targets is None:
            return logits
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1),
                                       ignore_index=-100)

    # ---- exchange with kernelgpt's flat buffer ----------------------------------------------

    def torch_name(self, name):
        return {"wte": "wte.weight", "wpe": "wpe.weight"}.get(name, name)

    def load_from(self, model):
        """Copies kernelgpt parameters (model.params) into this module."""
        state = dict(self.named_parameters())
        with torch.no_grad():
            for name in model.params.names():
                state[self.torch_name(name)].copy_(torch.from_numpy(model.params[name].copy()))

    def grads_like(self, model):
        """This module's .grad as a dict keyed by kernelgpt parameter names."""
        state = dict(self.named_parameters())
        return {name: state[self.torch_name(name)].grad.numpy() for name in model.params.names()}
