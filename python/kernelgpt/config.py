"""GPTConfig: the shape of a model, and the parameter layout that shape implies.

One config describes both flavours model.py runs: GPT-2 (learned positions, LayerNorm, GELU,
biases, tied head) and Llama (RoPE, RMSNorm, SwiGLU, no biases, grouped-query attention), and
the architectures beyond the dense transformer: a mixture of experts in place of each MLP
(``n_expert``), and state-space layers (ssm.py) in place of attention in some or all blocks
(``layers``: "ssm,attn,ssm,attn" is a hybrid stack).
``parameter_layout`` lists every parameter with its shape, in the order of the model's one
flat buffer (see flat_buffer.py).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

__all__ = ["GPTConfig", "parameter_layout", "ssm_shapes"]


@dataclass
class GPTConfig:
    vocab_size: int = 65
    block_size: int = 256          # longest context
    n_layer: int = 6
    n_head: int = 6
    n_kv_head: Optional[int] = None  # None: = n_head (multi-head); fewer: grouped-query
    n_embd: int = 384
    mlp_hidden: Optional[int] = None  # None: 4 * n_embd for GELU, (8/3) n_embd rounded for SwiGLU
    norm: str = "layernorm"        # "layernorm" | "rmsnorm"
    norm_eps: float = 1e-5
    activation: str = "gelu"       # "gelu" | "swiglu" | "relu"
    positions: str = "learned"     # "learned" | "sinusoidal" | "rope"
    rope_base: float = 10000.0
    rope_layout: str = "half"      # "half" (HF / NeoX) | "interleaved" (GPT-J / llama.cpp)
    bias: bool = True              # biases in the linear layers and LayerNorms
    tied_head: bool = True         # lm_head shares the token embedding
    n_expert: int = 0              # > 0: every block's MLP is a mixture of experts (moe.py)
    n_expert_active: int = 2       # experts per token (top-k routing)
    moe_aux_weight: float = 0.01   # weight of the load-balancing loss
    layers: Optional[Tuple[str, ...]] = None  # each block's sequence mixer, "attn" or "ssm"
                                   # (None: attention everywhere); "ssm,attn" strings accepted
    ssm_state: int = 16            # N: state size per channel of a state-space layer
    ssm_inner: Optional[int] = None  # E: its channels (None: 2 * n_embd, Mamba's expansion)
    ssm_dt_rank: Optional[int] = None  # R: rank of its step projection (None: ceil(n_embd / 16))

    def __post_init__(self):
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.layers is not None:
            self.layers = _parse_layers(self.layers, self.n_layer)
        if self.ssm_inner is None:
            self.ssm_inner = 2 * self.n_embd
        if self.ssm_dt_rank is None:
            self.ssm_dt_rank = max(1, -(-self.n_embd // 16))
        checks = [
            (self.vocab_size >= 1, "vocab_size must be >= 1"),
            (self.block_size >= 1, "block_size must be >= 1"),
            (self.n_layer >= 1, "n_layer must be >= 1"),
            (self.n_head >= 1 and self.n_embd % self.n_head == 0,
             f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})"),
            (self.n_kv_head >= 1 and self.n_head % self.n_kv_head == 0,
             f"n_head ({self.n_head}) must be divisible by n_kv_head ({self.n_kv_head})"),
            (self.norm in ("layernorm", "rmsnorm"), f"unknown norm {self.norm!r}"),
            (self.activation in ("gelu", "swiglu", "relu"),
             f"unknown activation {self.activation!r}"),
            (self.positions in ("learned", "sinusoidal", "rope"),
             f"unknown positions {self.positions!r}"),
            (self.rope_layout in ("half", "interleaved"), f"unknown rope_layout {self.rope_layout!r}"),
            (self.positions != "rope" or self.n_head < 1 or self.head_dim % 2 == 0,
             "RoPE needs an even head_dim"),  # (n_head < 1 fails above; no division by 0)
            (self.norm_eps >= 0 and math.isfinite(self.norm_eps), "norm_eps must be finite, >= 0"),
            (self.n_expert >= 0, "n_expert must be >= 0 (0: a dense MLP)"),
            (self.n_expert == 0 or 1 <= self.n_expert_active <= self.n_expert,
             f"n_expert_active must be in [1, n_expert = {self.n_expert}], got {self.n_expert_active}"),
            (self.moe_aux_weight >= 0 and math.isfinite(self.moe_aux_weight),
             "moe_aux_weight must be finite, >= 0"),
            (1 <= self.ssm_state <= 128, f"ssm_state must be in [1, 128], got {self.ssm_state}"),
            (self.ssm_inner >= 1, f"ssm_inner must be >= 1, got {self.ssm_inner}"),
            (self.ssm_dt_rank >= 1, f"ssm_dt_rank must be >= 1, got {self.ssm_dt_rank}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"GPTConfig: {msg}")
        if self.mlp_hidden is None:
            if self.activation == "swiglu":
                self.mlp_hidden = 256 * ((int(8 * self.n_embd / 3) + 255) // 256)
            else:
                self.mlp_hidden = 4 * self.n_embd

    def mixer(self, i: int) -> str:
        """Block i's sequence mixer: "attn" (attention) or "ssm" (a state-space layer)."""
        return "attn" if self.layers is None else self.layers[i]

    @property
    def attn_layers(self) -> List[int]:
        """The blocks that attend (and so keep keys and values in a generation cache)."""
        return [i for i in range(self.n_layer) if self.mixer(i) == "attn"]

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def qkv_dim(self) -> int:
        return (self.n_head + 2 * self.n_kv_head) * self.head_dim

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"GPTConfig: unknown fields {sorted(unknown)}")
        return cls(**d)


def _parse_layers(layers, n_layer: int) -> Tuple[str, ...]:
    """("ssm", "attn", ...) from a tuple / list or a comma-separated string, checked."""
    if isinstance(layers, str):
        layers = [x.strip() for x in layers.split(",")]
    try:
        layers = tuple(layers)
    except TypeError:
        raise ValueError(f"GPTConfig: layers must be a list of 'attn' / 'ssm', got {layers!r}")
    bad = [x for x in layers if x not in ("attn", "ssm")]
    if bad:
        raise ValueError(f"GPTConfig: unknown layer kind {bad[0]!r} in layers (expected 'attn' "
                         f"or 'ssm')")
    if len(layers) != n_layer:
        raise ValueError(f"GPTConfig: layers names {len(layers)} blocks, n_layer is {n_layer}")
    return layers


def ssm_shapes(c: GPTConfig, i: int):
    """(name, shape, weight_decay) of the parameters of state-space block i (ssm.py)."""
    C, E, N, R = c.n_embd, c.ssm_inner, c.ssm_state, c.ssm_dt_rank
    L = f"h.{i}.ssm."
    return [(L + "in_proj.weight", (2 * E, C), True), (L + "x_proj.weight", (R + 2 * N, E), True),
            (L + "dt_proj.weight", (E, R), True), (L + "out_proj.weight", (C, E), True),
            (L + "dt_proj.bias", (E,), False), (L + "A_log", (E, N), False), (L + "D", (E,), False)]


def parameter_layout(c: GPTConfig) -> List[Tuple[str, Tuple[int, ...], bool]]:
    """(name, shape, weight_decay) of every parameter, in buffer order: the decayed matrices
    first, then embeddings' positions, norms and biases, so that AdamW sees two contiguous
    ranges. Linear weights use PyTorch's [out, in] layout."""
    C, F, L = c.n_embd, c.mlp_hidden, c.n_layer
    fc_out = 2 * F if c.activation == "swiglu" else F
    E = c.n_expert
    ex = (E,) if E else ()  # a mixture of experts stacks each MLP matrix E times
    decayed = [("wte", (c.vocab_size, C))]
    for i in range(L):
        if c.mixer(i) == "ssm":
            decayed += [(n, s) for n, s, d in ssm_shapes(c, i) if d]
        else:
            decayed += [(f"h.{i}.attn.c_attn.weight", (c.qkv_dim, C)),
                        (f"h.{i}.attn.c_proj.weight", (C, C))]
        decayed += [
            (f"h.{i}.mlp.c_fc.weight", ex + (fc_out, C)),
            (f"h.{i}.mlp.c_proj.weight", ex + (C, F)),
        ]
        if E:
            decayed.append((f"h.{i}.mlp.router.weight", (E, C)))
    if not c.tied_head:
        decayed.append(("lm_head.weight", (c.vocab_size, C)))
    rest = []
    if c.positions == "learned":
        rest.append(("wpe", (c.block_size, C)))
    for i in range(L):
        rest.append((f"h.{i}.ln_1.weight", (C,)))
        if c.bias and c.norm == "layernorm":
            rest.append((f"h.{i}.ln_1.bias", (C,)))
        if c.mixer(i) == "ssm":
            rest += [(n, s) for n, s, d in ssm_shapes(c, i) if not d]
        elif c.bias:
            rest += [(f"h.{i}.attn.c_attn.bias", (c.qkv_dim,)), (f"h.{i}.attn.c_proj.bias", (C,))]
        rest.append((f"h.{i}.ln_2.weight", (C,)))
        if c.bias and c.norm == "layernorm":
            rest.append((f"h.{i}.ln_2.bias", (C,)))
        if c.bias:
            rest += [(f"h.{i}.mlp.c_fc.bias", ex + (fc_out,)), (f"h.{i}.mlp.c_proj.bias", ex + (C,))]
    rest.append(("ln_f.weight", (C,)))
    if c.bias and c.norm == "layernorm":
        rest.append(("ln_f.bias", (C,)))
    return [(n, s, True) for n, s in decayed] + [(n, s, False) for n, s in rest]
