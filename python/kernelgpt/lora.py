"""LoRA: fine-tuning a few million numbers instead of a hundred million (Hu et al. 2021).

A linear layer y = x W^T keeps W frozen and learns a low-rank change to it:

    W' = W + s * B A,      A [r, in], B [out, r], s = alpha / r

B starts at zero (so the tuned model starts as the base model) and A at small random values.
Only A and B are trained: for SmolLM2-135M with rank 8 on every projection that is 2.4M
numbers, so AdamW's two moments are 19 MB instead of 1 GB.

How it runs here: the forward pass uses the merged W' (written into the model's parameters
after every update: one [out, r] x [r, in] product per layer, cheap), so it costs exactly what
the base model costs. The backward pass skips the frozen weights' gradients (GPT.frozen: the
[out, in] products that full fine-tuning pays for) and asks the adapters for theirs instead
(GPT.adapters.add_grad at every linear layer), from the layer's input x [N, in] and its output
gradient dy [N, out]:

    dA = s * (dy B)^T x        dB = s * dy^T (x A^T)

each a product through the rank-r bottleneck. dx = dy W' is what the model computes anyway,
and W' includes the adapter, so the gradient flowing to earlier layers is exact.

    model = kernelgpt.load_model("smollm2", weights="fp32")
    lora = LoRA(model.gpt, rank=8, alpha=16)     # freezes the model, attaches the adapters
    loss = model.gpt.forward_backward(x, y)      # grads land in lora.grads
    ...AdamW on lora.params.data with lora.grads.data..., then lora.apply()
    lora.merge()                                 # a plain model again, adapters folded in
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np

from . import ops as _ops
from .flat_buffer import FlatBuffer

__all__ = ["LoRA", "LORA_TARGETS", "resolve_targets"]

# the linear layers of a block, by our names (model.py fuses Q, K, V into attn.c_attn and,
# for SwiGLU, gate and up into mlp.c_fc: an adapter on c_attn adapts all three at once)
LORA_TARGETS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
_ALIASES = {"qkv": ("attn.c_attn",), "o": ("attn.c_proj",), "attn": LORA_TARGETS[:2],
            "mlp": LORA_TARGETS[2:], "all": LORA_TARGETS, "fc": ("mlp.c_fc",),
            "down": ("mlp.c_proj",)}


def resolve_targets(targets) -> Tuple[str, ...]:
    """Layer names from names or aliases: 'all', 'attn', 'mlp', 'qkv', 'o', 'fc', 'down', or
    'attn.c_attn' etc.; a comma-separated string works too."""
    if isinstance(targets, str):
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    out = []
    for t in targets:
        names = _ALIASES.get(t, (t,) if t in LORA_TARGETS else None)
        if names is None:
            raise ValueError(f"unknown LoRA target {t!r}: use {', '.join(LORA_TARGETS)} or "
                             f"{', '.join(_ALIASES)}")
        out += [n for n in names if n not in out]
    if not out:
        raise ValueError("LoRA needs at least one target layer")
    return tuple(out)


class LoRA:
    """Rank-`rank` adapters on the `targets` linear layers of every block of `model` (a GPT
    with float weights). Attaching freezes every parameter of the model; ``params`` and
    ``grads`` are the adapters' own flat buffers (named '<layer>.lora_A' / '.lora_B')."""

    def __init__(self, model, rank: int = 8, alpha: float = 16.0, targets=LORA_TARGETS,
                 seed: Optional[int] = 0):
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"LoRA rank must be a positive int, got {rank!r}")
        if not np.isfinite(alpha) or alpha <= 0:
            raise ValueError(f"LoRA alpha must be finite and > 0, got {alpha!r}")
        if model.packed:
            raise ValueError("LoRA needs float weights: load the model with weights='fp32'")
        if model.config.n_expert:
            raise ValueError("LoRA does not adapt a mixture of experts' layers (n_expert > 0)")
        if model.adapters is not None:
            raise ValueError("this model already has adapters attached")
        self.model, self.rank, self.alpha = model, rank, float(alpha)
        self.targets = resolve_targets(targets)
        self.scale = self.alpha / rank
        P = model.params
        self.layers = [f"h.{i}.{t}" for i in range(model.config.n_layer) for t in self.targets
                       if f"h.{i}.{t}.weight" in P.views]
        if not self.layers:
            raise ValueError(f"the model has none of the LoRA target layers {self.targets}")
        layout = []
        for name in self.layers:
            out_f, in_f = P[name + ".weight"].shape
            if rank > min(out_f, in_f):
                raise ValueError(f"LoRA rank {rank} exceeds {name}'s smaller side "
                                 f"({min(out_f, in_f)})")
            layout += [(name + ".lora_A", (rank, in_f)), (name + ".lora_B", (out_f, rank))]
        xp, dtype = model.xp, model.dtype
        self.params = FlatBuffer(layout, dtype=dtype, xp=xp)
        self.grads = FlatBuffer(layout, dtype=dtype, xp=xp)
        self.base: Dict[str, np.ndarray] = {n: P[n + ".weight"].copy() for n in self.layers}
        if seed is not None:
            rng = np.random.default_rng(seed)
            for name in self.layers:  # PEFT's init: A ~ U(-1/sqrt(in), 1/sqrt(in)), B = 0
                A = self.params[name + ".lora_A"]
                bound = 1.0 / np.sqrt(A.shape[1])
                A[...] = xp.asarray(rng.uniform(-bound, bound, A.shape).astype(dtype))
        model.frozen = frozenset(P.names())
        model.adapters = self
        self.apply()

    def num_parameters(self) -> int:
        return self.params.size

    def apply(self) -> None:
        """Writes W + s * B A into the model's weights (call after every update of params),
        in the weights' own precision (float32 even when the model multiplies in bf16)."""
        P = self.model.params
        for name in self.layers:
            W = P[name + ".weight"]
            B = self.params[name + ".lora_B"] * W.dtype.type(self.scale)
            if self.model.dtype == np.float32:  # one pass over W (host or device)
                _ops.lowrank_add(self.base[name], B, self.params[name + ".lora_A"], out=W)
            else:  # the float64 reference model
                W[...] = self.base[name] + B @ self.params[name + ".lora_A"]

    def zero_grad(self) -> None:
        self.grads.zero()

    def add_grad(self, name: str, d_y, x) -> None:
        """GPT._linear_backward's hook: adds layer `name`'s adapter gradients from its input
        x [N, in] and output gradient d_y [N, out] (a layer without an adapter: nothing)."""
        if name not in self.base:
            return
        ops, s = self.model.ops, d_y.dtype.type(self.scale)
        A, B = self.params[name + ".lora_A"], self.params[name + ".lora_B"]
        # The products are taken with the rank r as their row count ([r, N], [r, out]): a
        # matrix product with few rows streams the long operand once, where r columns would
        # pack it into panels for nothing.
        uT = ops.matmul(B, d_y, trans_a=True, trans_b=True)  # [r, N] = (dy B)^T
        uT *= s
        ops.matmul(uT, x, out=self.grads[name + ".lora_A"], accumulate=True)  # dA = s (dy B)^T x
        vT = ops.matmul(A, x, trans_b=True)                  # [r, N] = (x A^T)^T
        dBT = ops.matmul(vT, d_y)                            # [r, out] = (dy^T x A^T)^T
        dBT *= s
        self.grads[name + ".lora_B"] += dBT.T                # dB = s dy^T (x A^T)

    def tensors(self) -> Dict[str, np.ndarray]:
        """The adapters by name (for saving), as host arrays."""
        return {n: np.asarray(self.params[n]) for n in self.params.names()}

    def load(self, tensors: Dict[str, np.ndarray], where: str = "adapters") -> None:
        """Sets the adapters from `tensors` (as tensors() gives them), then apply()."""
        for n in self.params.names():
            t = tensors.get(n)
            if t is None:
                raise ValueError(f"{where}: LoRA tensor {n!r} is missing")
            if tuple(t.shape) != tuple(self.params[n].shape):
                raise ValueError(f"{where}: LoRA tensor {n!r} has shape {tuple(t.shape)}, "
                                 f"expected {tuple(self.params[n].shape)}")
            self.params[n][...] = t
        self.apply()

    def settings(self) -> dict:
        return {"rank": self.rank, "alpha": self.alpha, "targets": list(self.targets)}

    def merge(self):
        """Folds the adapters into the weights for good and detaches: the model is a plain,
        fully trainable GPT again (what export saves). Returns the model."""
        self.apply()
        self.detach(restore=False)
        return self.model

    def detach(self, restore: bool = True) -> None:
        """Removes the adapters; restore=True puts the base weights back."""
        if restore:
            for name in self.layers:
                self.model.params[name + ".weight"][...] = self.base[name]
        self.model.frozen = frozenset()
        self.model.adapters = None
        self.base = {}

