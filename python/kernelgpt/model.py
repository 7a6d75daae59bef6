"""The decoder-only transformer, forward and hand-written backward, on kernelgpt.ops.

    tokens ─ embedding (+ learned / sinusoidal positions) ─▶ x [B, T, C]
    N × block:  x += attention(norm(x))        (causal, multi-head, RoPE optional, GQA)
                x += mlp(norm(x))              (GELU 4x, or SwiGLU)
    norm ─▶ lm_head (tied to the embedding) ─▶ logits [B, T, V] ─▶ cross-entropy

Two flavours from one config: GPT-2 (learned positions, LayerNorm, GELU, biases, tied head)
and Llama (RoPE, RMSNorm, SwiGLU, no biases, grouped-query attention).

Like llm.c, all parameters live in one flat float32 buffer (``model.params.data``) with named
views (``model.params["h.0.attn.c_attn.weight"]``), the gradients in another of the same
layout, and the activations a training step keeps for the backward pass in a third, sized for
one (batch, time) shape. ``forward_backward`` runs the forward pass, the loss and every
layer's backward in reverse; each layer's backward is written out by hand below its forward.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np

from . import ops, reference

__all__ = ["GPTConfig", "GPT", "FlatBuffer"]


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

    def __post_init__(self):
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
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
            (self.positions != "rope" or self.head_dim % 2 == 0, "RoPE needs an even head_dim"),
            (self.norm_eps >= 0 and math.isfinite(self.norm_eps), "norm_eps must be finite, >= 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"GPTConfig: {msg}")
        if self.mlp_hidden is None:
            if self.activation == "swiglu":
                self.mlp_hidden = 256 * ((int(8 * self.n_embd / 3) + 255) // 256)
            else:
                self.mlp_hidden = 4 * self.n_embd

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


def array_module(device: str):
    """The array module of a device: numpy ("cpu"), cupy ("cuda"), kernelgpt.cuda_emu ("emu")."""
    if device == "cpu":
        return np
    if device == "emu":
        from . import cuda_emu
        if not cuda_emu.available():
            raise RuntimeError("device 'emu': kernelgpt was built without the CUDA emulator")
        return cuda_emu
    if device == "cuda":
        from . import _cuda
        if not _cuda.available():
            raise RuntimeError("device 'cuda' needs a CUDA build of kernelgpt, CuPy "
                               "(pip install kernelgpt[cuda]) and an NVIDIA GPU; none was found "
                               "(device='emu' runs the CUDA kernels on the CPU instead)")
        import cupy
        return cupy
    raise ValueError(f"device must be 'cpu', 'cuda' or 'emu', got {device!r}")


def to_numpy(a) -> np.ndarray:
    """A host numpy array of a numpy, CuPy or cuda_emu array (a copy for device arrays)."""
    on_device = type(a).__module__.split(".")[0] == "cupy" or \
        type(a).__module__ == "kernelgpt.cuda_emu"
    return np.asarray(a.get()) if on_device else np.asarray(a)


def _move(a, xp):
    """Array `a` on the device of array module xp (no copy when it is already there)."""
    if xp is np:
        return to_numpy(a)
    return xp.asarray(a)


class FlatBuffer:
    """One contiguous float32 array with named, shaped views into it."""

    def __init__(self, layout: List[Tuple[str, Tuple[int, ...]]], data: Optional[np.ndarray] = None,
                 dtype=np.float32, xp=np):
        self.layout = list(layout)
        self.offsets: Dict[str, Tuple[int, Tuple[int, ...]]] = {}
        offset = 0
        for name, shape in self.layout:
            self.offsets[name] = (offset, tuple(shape))
            offset += int(np.prod(shape))
        self.size = offset
        if data is None:
            data = xp.zeros(offset, dtype=dtype)  # xp: numpy, cupy or kernelgpt.cuda_emu
        if data.dtype != dtype or data.shape != (offset,) or not data.flags.c_contiguous:
            raise ValueError(f"FlatBuffer: data must be contiguous {np.dtype(dtype).name} of "
                             f"shape ({offset},)")
        self.data = data
        self.views = {name: self.view(name) for name, _ in self.layout}

    def view(self, name: str) -> np.ndarray:
        offset, shape = self.offsets[name]
        return self.data[offset: offset + int(np.prod(shape))].reshape(shape)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.views[name]

    def __setitem__(self, name: str, value) -> None:
        view = self.views[name]  # `buf[name] += x` updates the view in place, then lands here
        if value is not view:
            view[...] = value

    def __contains__(self, name: str) -> bool:
        return name in self.views

    def names(self) -> List[str]:
        return [name for name, _ in self.layout]

    def zero(self) -> None:
        self.data.fill(0.0)


def parameter_layout(c: GPTConfig) -> List[Tuple[str, Tuple[int, ...], bool]]:
    """(name, shape, weight_decay) of every parameter, in buffer order: the decayed matrices
    first, then embeddings' positions, norms and biases, so that AdamW sees two contiguous
    ranges. Linear weights use PyTorch's [out, in] layout."""
    C, F, L = c.n_embd, c.mlp_hidden, c.n_layer
    fc_out = 2 * F if c.activation == "swiglu" else F
    decayed = [("wte", (c.vocab_size, C))]
    for i in range(L):
        decayed += [
            (f"h.{i}.attn.c_attn.weight", (c.qkv_dim, C)),
            (f"h.{i}.attn.c_proj.weight", (C, C)),
            (f"h.{i}.mlp.c_fc.weight", (fc_out, C)),
            (f"h.{i}.mlp.c_proj.weight", (C, F)),
        ]
    if not c.tied_head:
        decayed.append(("lm_head.weight", (c.vocab_size, C)))
    rest = []
    if c.positions == "learned":
        rest.append(("wpe", (c.block_size, C)))
    for i in range(L):
        rest.append((f"h.{i}.ln_1.weight", (C,)))
        if c.bias and c.norm == "layernorm":
            rest.append((f"h.{i}.ln_1.bias", (C,)))
        if c.bias:
            rest += [(f"h.{i}.attn.c_attn.bias", (c.qkv_dim,)), (f"h.{i}.attn.c_proj.bias", (C,))]
        rest.append((f"h.{i}.ln_2.weight", (C,)))
        if c.bias and c.norm == "layernorm":
            rest.append((f"h.{i}.ln_2.bias", (C,)))
        if c.bias:
            rest += [(f"h.{i}.mlp.c_fc.bias", (fc_out,)), (f"h.{i}.mlp.c_proj.bias", (C,))]
    rest.append(("ln_f.weight", (C,)))
    if c.bias and c.norm == "layernorm":
        rest.append(("ln_f.bias", (C,)))
    return [(n, s, True) for n, s in decayed] + [(n, s, False) for n, s in rest]


class GPT:
    """The model: parameters, the training pass (forward_backward) and inference forward.

    ``GPT(config, seed=0)`` initializes like GPT-2 / nanoGPT: normal(0, 0.02) for weights and
    embeddings, residual projections scaled by 1/sqrt(2 * n_layer), zeros for biases, ones for
    norm weights. ``seed=None`` leaves every parameter 0 (for loading); ``params=`` adopts a
    flat float32 buffer as the parameters.
    """

    def __init__(self, config: GPTConfig, seed: Optional[int] = 0, params: Optional[np.ndarray] = None,
                 backend: str = "native"):
        if backend not in ("native", "reference"):
            raise ValueError(f"backend must be 'native' or 'reference', got {backend!r}")
        self.config = config
        # "reference": every op is kernelgpt.reference's numpy formula in float64 (the oracle
        # the gradient checks compare the native float32 model with)
        self.ops = ops if backend == "native" else ReferenceOps()
        self.dtype = np.float32 if backend == "native" else np.float64
        layout = parameter_layout(config)
        self.param_decay = {name: decay for name, _, decay in layout}
        self.params = FlatBuffer([(n, s) for n, s, _ in layout], params, self.dtype)
        self.n_decayed = sum(int(np.prod(s)) for _, s, d in layout if d)
        self.grads: Optional[FlatBuffer] = None
        self._acts: Optional[_Activations] = None
        if params is None and seed is not None:
            self.init_weights(seed)  # seed=None: all zeros (to be loaded)
        self._sin_cache: Dict[int, np.ndarray] = {}
        self._runner = None  # (params.data, cache, _C.Transformer) of the last decode_next
        self.device, self.xp, self.precision = "cpu", np, "fp32"  # see to()
        self.cuda_graphs = True  # decode_next on a device replays a CUDA graph (graph_decode)

    # ---- devices ------------------------------------------------------------------------------

    def to(self, device: str, precision: str = "fp32") -> "GPT":
        """Moves the parameters (and gradients) to `device` and returns the model.

        "cpu": numpy arrays and the C++ kernels (the default); "cuda": CuPy arrays and the
        CUDA kernels (needs a GPU, CuPy and a CUDA build); "emu": kernelgpt.cuda_emu arrays,
        the same CUDA kernels run by the CPU emulator (slow; for checking the GPU path on a
        machine without one). Everything runs on any device: training (forward_backward,
        loss, train()) and generation (forward_cached, logits, generate; logits stay on the
        device).
        precision="bf16" (devices only): mixed precision, every matrix product on bf16 tensor
        cores (inputs rounded to bf16, float32 accumulation); the master weights, gradients,
        optimizer state, norms, softmax and loss stay float32."""
        if isinstance(self.ops, ReferenceOps):
            raise ValueError("to(): only the native backend runs on devices")
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
        if precision == "bf16" and device == "cpu":
            raise ValueError("precision='bf16' (tensor-core mixed precision) needs device "
                             "'cuda' or 'emu'")
        xp = array_module(device)
        self.params = FlatBuffer(self.params.layout, _move(self.params.data, xp), self.dtype, xp)
        if self.grads is not None:
            self.grads = FlatBuffer(self.grads.layout, _move(self.grads.data, xp), self.dtype, xp)
        self.device, self.xp, self.precision = device, xp, precision
        self.ops = _MixedOps() if precision == "bf16" else ops
        self._acts, self._runner, self._sin_cache = None, None, {}
        self._graph_decoder = None
        return self

    # ---- parameters ------------------------------------------------------------------------

    def init_weights(self, seed: int) -> None:
        c = self.config
        rng = np.random.default_rng(seed)
        proj_std = 0.02 / math.sqrt(2 * c.n_layer)
        for name in self.params.names():
            p = self.params[name]
            if name.endswith(".bias"):
                p.fill(0.0)
            elif ".ln_" in name or name.startswith("ln_f"):
                p.fill(1.0)
            elif name.endswith("c_proj.weight"):
                p[...] = rng.normal(0.0, proj_std, p.shape)
            else:
                p[...] = rng.normal(0.0, 0.02, p.shape)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        n = self.params.size
        if exclude_embeddings and "wpe" in self.params:
            n -= self.params["wpe"].size
        return n

    @property
    def lm_head(self) -> np.ndarray:
        return self.params["wte"] if self.config.tied_head else self.params["lm_head.weight"]

    def zero_grad(self) -> None:
        if self.grads is None:
            self.grads = FlatBuffer(self.params.layout, dtype=self.dtype, xp=self.xp)
        self.grads.zero()

    # ---- pieces shared by training and inference --------------------------------------------

    def _norm(self, x, i_or_f, which, out=None, stats=False):
        """LayerNorm or RMSNorm of x [N, C] with the weights of layer i (or the final norm)."""
        c, P = self.config, self.params
        prefix = "ln_f" if i_or_f is None else f"h.{i_or_f}.{which}"
        w = P[prefix + ".weight"]
        if c.norm == "layernorm":
            b = P[prefix + ".bias"] if prefix + ".bias" in P else None
            return self.ops.layernorm(x, w, b, c.norm_eps, return_stats=stats, out=out)
        return self.ops.rmsnorm(x, w, c.norm_eps, return_stats=stats, out=out)

    def _positions_table(self, t0: int, T: int) -> Optional[np.ndarray]:
        c = self.config
        if c.positions == "learned":
            return self.params["wpe"][t0: t0 + T]
        if c.positions == "sinusoidal":
            table = self._sin_cache.get(c.block_size)
            if table is None:
                table = _move(self.ops.sinusoidal_positions(c.block_size, c.n_embd), self.xp)
                self._sin_cache[c.block_size] = table
            return table[t0: t0 + T]
        return None  # RoPE: positions enter inside attention

    def _activate(self, h, out):
        act = self.config.activation
        if act == "gelu":
            return self.ops.gelu(h, out=out)
        if act == "relu":
            return self.ops.relu(h, out=out)
        F = self.config.mlp_hidden
        xp = self.xp
        return self.ops.swiglu(xp.ascontiguousarray(h[:, :F]), xp.ascontiguousarray(h[:, F:]), out=out)

    def _rope(self, x, t0, backward=False):
        c = self.config
        fn = self.ops.rope_backward if backward else self.ops.rope
        return fn(x, offset=t0, base=c.rope_base, layout=c.rope_layout)

    def _split_heads(self, qkv, B, T):
        """qkv [B*T, (H + 2 Hkv) * hd] -> q [B, H, T, hd], k, v [B, Hkv, T, hd] (copies)."""
        c = self.config
        H, Hkv, hd = c.n_head, c.n_kv_head, c.head_dim
        heads = qkv.reshape(B, T, H + 2 * Hkv, hd).transpose(0, 2, 1, 3)
        xp = self.xp
        q = xp.ascontiguousarray(heads[:, :H])
        k = xp.ascontiguousarray(heads[:, H: H + Hkv])
        v = xp.ascontiguousarray(heads[:, H + Hkv:])
        return q, k, v

    def _merge_heads(self, y, out=None):
        """y [B, H, T, hd] -> [B*T, H*hd]."""
        B, H, T, hd = y.shape
        merged = y.transpose(0, 2, 1, 3).reshape(B * T, H * hd)
        if out is None:
            return self.xp.ascontiguousarray(merged)
        out[...] = merged
        return out

    # ---- training: forward, loss and backward ---------------------------------------------------

    def forward_backward(self, idx: np.ndarray, targets: np.ndarray, grad_scale: float = 1.0,
                         ignore_index: int = -100) -> float:
        """One training pass: the mean cross-entropy loss of predicting targets [B, T] from
        idx [B, T]; adds grad_scale * d(loss)/d(params) into ``self.grads`` (call zero_grad()
        first; several calls accumulate, e.g. for gradient accumulation)."""
        idx, targets = self._check_batch(idx, targets)
        if self.grads is None:
            self.zero_grad()
        B, T = idx.shape
        count = int(np.count_nonzero(targets != ignore_index))
        idx, targets = _move(idx, self.xp), _move(targets, self.xp)
        acts = self._activations(B, T)
        self._forward_train(idx, acts)
        loss, d_x = self._head_loss(acts, targets.reshape(-1), ignore_index, count,
                                    with_grad=True, grad_scale=grad_scale)
        self._backward(idx, acts, d_x)
        return loss

    def loss(self, idx: np.ndarray, targets: np.ndarray, ignore_index: int = -100) -> float:
        """Mean cross-entropy, forward only (evaluation)."""
        idx, targets = self._check_batch(idx, targets)
        B, T = idx.shape
        count = int(np.count_nonzero(targets != ignore_index))
        idx, targets = _move(idx, self.xp), _move(targets, self.xp)
        acts = self._activations(B, T)
        self._forward_train(idx, acts)
        loss, _ = self._head_loss(acts, targets.reshape(-1), ignore_index, count, with_grad=False)
        return loss

    def _check_batch(self, idx, targets):
        """Validated host (numpy) int64 copies of idx and targets [B, T]."""
        c = self.config
        idx = to_numpy(idx)
        if idx.ndim == 1:
            idx = idx[None]
        if idx.ndim != 2 or idx.dtype.kind not in "iu":
            raise ValueError(f"idx must be an integer array [B, T], got {idx.dtype} {idx.shape}")
        if idx.shape[1] > c.block_size:
            raise ValueError(f"sequence length {idx.shape[1]} exceeds block_size {c.block_size}")
        if idx.size and (idx.min() < 0 or idx.max() >= c.vocab_size):
            raise ValueError(f"token ids must be in [0, {c.vocab_size}), got "
                             f"[{idx.min()}, {idx.max()}]")
        if targets is not None:
            targets = to_numpy(targets)
            if targets.ndim == 1:
                targets = targets[None]
            if targets.shape != idx.shape:
                raise ValueError(f"targets shape {targets.shape} != idx shape {idx.shape}")
        return np.ascontiguousarray(idx, dtype=np.int64), (
            None if targets is None else np.ascontiguousarray(targets, dtype=np.int64))

    def _activations(self, B: int, T: int) -> "_Activations":
        if self._acts is None or self._acts.shape != (B, T):
            self._acts = None  # free the old buffers first
            self._acts = _Activations(self.config, B, T, self.dtype, self.xp)
        return self._acts

    def _forward_train(self, idx, a: "_Activations") -> None:
        c, P = self.config, self.params
        B, T = idx.shape
        N = B * T
        x = a["res0"]
        self.ops.embedding(idx.reshape(-1), P["wte"], out=x)
        pos = self._positions_table(0, T)
        if pos is not None:
            x.reshape(B, T, -1)[...] += pos
        for i in range(c.n_layer):
            L = f"h.{i}."
            x = a[f"res{i}"]
            ln1 = self._norm(x, i, "ln_1", out=a[f"ln1_{i}"], stats=True)
            a.stats[f"ln1_{i}"] = ln1[1:]
            qkv = self.ops.linear(a[f"ln1_{i}"], P[L + "attn.c_attn.weight"],
                             P.views.get(L + "attn.c_attn.bias"), out=a["qkv"])
            q, k, v = self._split_heads(qkv, B, T)
            if c.positions == "rope":
                q, k = self._rope(q, 0), self._rope(k, 0)
            y, lse = self.ops.attention(q, k, v, causal=True, return_lse=True)
            a.saved[f"attn_{i}"] = (q, k, v, y, lse)
            self._merge_heads(y, out=a[f"attm_{i}"])
            mid = a[f"mid{i}"]
            self.ops.linear(a[f"attm_{i}"], P[L + "attn.c_proj.weight"],
                       P.views.get(L + "attn.c_proj.bias"), out=mid)
            mid += x
            ln2 = self._norm(mid, i, "ln_2", out=a[f"ln2_{i}"], stats=True)
            a.stats[f"ln2_{i}"] = ln2[1:]
            h = self.ops.linear(a[f"ln2_{i}"], P[L + "mlp.c_fc.weight"],
                           P.views.get(L + "mlp.c_fc.bias"), out=a[f"fch_{i}"])
            self._activate(h, out=a[f"fcha_{i}"])
            nxt = a[f"res{i + 1}"]
            self.ops.linear(a[f"fcha_{i}"], P[L + "mlp.c_proj.weight"],
                       P.views.get(L + "mlp.c_proj.bias"), out=nxt)
            nxt += mid
        lnf = self._norm(a[f"res{c.n_layer}"], None, None, out=a["lnf"], stats=True)
        a.stats["lnf"] = lnf[1:]

    def _head_loss(self, a, targets, ignore_index, count, with_grad, grad_scale=1.0):
        """LM head + cross-entropy over row chunks (logits are never all in memory at once).
        Returns (mean loss, d_lnf [N, C] or None); accumulates the head's weight gradient."""
        c = self.config
        lnf = a["lnf"]
        N = lnf.shape[0]
        W = self.lm_head
        rows = max(1, min(N, (1 << 24) // c.vocab_size))  # <= 64 MiB of logits per chunk
        total = 0.0
        d_lnf = a["d_x"] if with_grad else None
        g_head = None
        if with_grad:
            g_head = self.grads["wte"] if c.tied_head else self.grads["lm_head.weight"]
        scale = grad_scale / max(count, 1)
        for r0 in range(0, N, rows):
            r1 = min(N, r0 + rows)
            logits = self.ops.linear(lnf[r0:r1], W)
            if not with_grad:
                total += self.ops.cross_entropy(logits, targets[r0:r1], ignore_index=ignore_index,
                                           reduction="sum")
                continue
            loss, dlogits = self.ops.cross_entropy(logits, targets[r0:r1], ignore_index=ignore_index,
                                              reduction="sum", return_grad=True)
            total += loss
            dlogits *= dlogits.dtype.type(scale)
            self.ops.matmul(dlogits, lnf[r0:r1], trans_a=True, out=g_head, accumulate=True)
            self.ops.matmul(dlogits, W, out=d_lnf[r0:r1])
        return float(total) / max(count, 1), d_lnf  # float(): one device-to-host read

    def _linear_backward(self, d_y, x, name, d_x_out=None, accumulate_dx=False):
        """y = x @ W^T + b: adds dW, db into the gradient buffer and returns dx."""
        G, P = self.grads, self.params
        self.ops.matmul(d_y, x, trans_a=True, out=G[name + ".weight"], accumulate=True)
        if name + ".bias" in G:
            G[name + ".bias"] += d_y.sum(axis=0)
        if d_x_out is None:
            return self.ops.matmul(d_y, P[name + ".weight"])
        return self.ops.matmul(d_y, P[name + ".weight"], out=d_x_out, accumulate=accumulate_dx)

    def _norm_backward(self, d_y, x, i_or_f, which, stats):
        c, P, G = self.config, self.params, self.grads
        prefix = "ln_f" if i_or_f is None else f"h.{i_or_f}.{which}"
        if c.norm == "layernorm":
            mean, rstd = stats
            dx, dw, db = self.ops.layernorm_backward(d_y, x, P[prefix + ".weight"], mean, rstd)
            if prefix + ".bias" in G:
                G[prefix + ".bias"] += db
        else:
            (rstd,) = stats
            dx, dw = self.ops.rmsnorm_backward(d_y, x, P[prefix + ".weight"], rstd)
        G[prefix + ".weight"] += dw
        return dx

    def _backward(self, idx, a, d_lnf) -> None:
        c, G = self.config, self.grads
        B, T = idx.shape
        H, Hkv, hd, F = c.n_head, c.n_kv_head, c.head_dim, c.mlp_hidden
        # d_res: gradient w.r.t. the residual stream, walking back through the layers
        d_res = self._norm_backward(d_lnf, a[f"res{c.n_layer}"], None, None, a.stats["lnf"])
        for i in reversed(range(c.n_layer)):
            L = f"h.{i}."
            # MLP: res{i+1} = mid + c_proj(act(c_fc(ln_2(mid))))
            d_act = self._linear_backward(d_res, a[f"fcha_{i}"], L + "mlp.c_proj")
            h = a[f"fch_{i}"]
            if c.activation == "gelu":
                d_h = self.ops.gelu_backward(d_act, h)
            elif c.activation == "relu":
                d_h = self.ops.relu_backward(d_act, h)
            else:
                xp = self.xp
                d_gate, d_up = self.ops.swiglu_backward(d_act, xp.ascontiguousarray(h[:, :F]),
                                                        xp.ascontiguousarray(h[:, F:]))
                d_h = xp.concatenate([d_gate, d_up], axis=1)
            d_ln2 = self._linear_backward(d_h, a[f"ln2_{i}"], L + "mlp.c_fc")
            d_mid = self._norm_backward(d_ln2, a[f"mid{i}"], i, "ln_2", a.stats[f"ln2_{i}"])
            d_mid += d_res
            # attention: mid = res{i} + c_proj(attention(heads(c_attn(ln_1(res{i})))))
            d_attm = self._linear_backward(d_mid, a[f"attm_{i}"], L + "attn.c_proj")
            q, k, v, y, lse = a.saved[f"attn_{i}"]
            d_y = self.xp.ascontiguousarray(d_attm.reshape(B, T, H, hd).transpose(0, 2, 1, 3))
            dq, dk, dv = self.ops.attention_backward(d_y, q, k, v, y, lse, causal=True)
            if c.positions == "rope":
                dq, dk = self._rope(dq, 0, backward=True), self._rope(dk, 0, backward=True)
            d_qkv = a["qkv"].reshape(B, T, H + 2 * Hkv, hd)  # reuse the forward scratch
            d_qkv[:, :, :H] = dq.transpose(0, 2, 1, 3)
            d_qkv[:, :, H:H + Hkv] = dk.transpose(0, 2, 1, 3)
            d_qkv[:, :, H + Hkv:] = dv.transpose(0, 2, 1, 3)
            d_ln1 = self._linear_backward(a["qkv"], a[f"ln1_{i}"], L + "attn.c_attn")
            d_res = self._norm_backward(d_ln1, a[f"res{i}"], i, "ln_1", a.stats[f"ln1_{i}"])
            d_res += d_mid
        # embeddings: res0 = wte[idx] + positions
        self.ops.embedding_backward(d_res, idx.reshape(-1), c.vocab_size, out=G["wte"], accumulate=True)
        if c.positions == "learned":
            G["wpe"][:T] += d_res.reshape(B, T, -1).sum(axis=0)


    # ---- inference with a KV cache ---------------------------------------------------------

    def new_cache(self, max_len: Optional[int] = None, batch: int = 1):
        from .kv_cache import KVCache
        c = self.config
        return KVCache(c.n_layer, c.n_kv_head, c.head_dim, max_len or c.block_size, batch,
                       device=self.device)

    def forward_cached(self, ids: np.ndarray, cache, all_logits: bool = False) -> np.ndarray:
        """Runs ids [B, T] (the tokens after the cached ones) through the model, appending their
        keys and values to the cache. Returns the logits of the last position [B, V], or of
        every position [B, T, V] with all_logits=True. One batched pass for a whole prompt
        (prefill), one token at a time while generating (decode)."""
        c, P = self.config, self.params
        if getattr(cache, "device", "cpu") != self.device:
            raise ValueError(f"forward_cached: the cache is on {getattr(cache, 'device', 'cpu')!r}"
                             f" and the model on {self.device!r} (make it with model.new_cache())")
        host_ids, _ = self._check_batch(ids, None)
        ids = _move(host_ids, self.xp)
        B, T = ids.shape
        t0 = cache.length
        if t0 + T > min(c.block_size, cache.max_len):
            raise ValueError(f"context of {t0 + T} tokens exceeds the model's block_size "
                             f"{c.block_size}" + ("" if cache.max_len >= c.block_size else
                                                  f" / the cache's max_len {cache.max_len}"))
        x = self.ops.embedding(ids.reshape(-1), P["wte"])
        pos = self._positions_table(t0, T)
        if pos is not None:
            x.reshape(B, T, -1)[...] += pos
        for i in range(c.n_layer):
            L = f"h.{i}."
            h = self._norm(x, i, "ln_1")
            qkv = self.ops.linear(h, P[L + "attn.c_attn.weight"], P.views.get(L + "attn.c_attn.bias"))
            q, k, v = self._split_heads(qkv, B, T)
            if c.positions == "rope":
                q, k = self._rope(q, t0), self._rope(k, t0)
            cache.write(i, k, v)
            y = self.ops.attention(q, cache.k[i], cache.v[i], causal=True, kv_length=t0 + T)
            x += self.ops.linear(self._merge_heads(y), P[L + "attn.c_proj.weight"],
                            P.views.get(L + "attn.c_proj.bias"))
            h = self._norm(x, i, "ln_2")
            h = self.ops.linear(h, P[L + "mlp.c_fc.weight"], P.views.get(L + "mlp.c_fc.bias"))
            a = self._activate(h, out=None)
            x += self.ops.linear(a, P[L + "mlp.c_proj.weight"], P.views.get(L + "mlp.c_proj.bias"))
        cache.advance(host_ids[0])
        x = x.reshape(B, T, -1)
        if not all_logits:
            x = self.xp.ascontiguousarray(x[:, -1])
        xf = self._norm(x.reshape(-1, c.n_embd), None, None)
        logits = self.ops.linear(xf, self.lm_head)
        return logits.reshape(B, T, -1) if all_logits else logits

    # ---- fast decode: the whole model in one native call per token -------------------------

    def supports_fast_decode(self, cache) -> bool:
        """Whether decode_next can run with this cache: the native backend, batch 1 (on a
        device: what GraphDecoder supports)."""
        if self.device != "cpu":
            from .graph_decode import GraphDecoder
            return GraphDecoder.supports(self, cache)[0]
        return self.ops is ops and cache.k[0].shape[0] == 1 and cache.k[0].dtype == np.float32

    def decode_next(self, token: int, cache, out: Optional[np.ndarray] = None) -> np.ndarray:
        """forward_cached(np.array([[token]]), cache)[0] in one native call: appends the token
        (at position cache.length) to the cache and returns the next-token logits [V] (written
        into out, float32 [V], if given). The same numbers as forward_cached, which stays the
        readable version; this one skips ~10 Python-level kernel calls per layer
        (csrc/model/transformer.h). Kept short: it runs once per generated token.
        On a device the step is a CUDA graph replayed per token (graph_decode.GraphDecoder)."""
        if self.device != "cpu":
            return self._decode_on_device(token, cache, out)
        r = self._runner
        if r is None or r[1] is not cache or r[0] is not self.params.data:
            r = self._build_runner(cache)
        pos = cache.length
        if pos >= r[3]:
            c = self.config
            raise ValueError(f"context of {pos + 1} tokens exceeds the model's block_size "
                             f"{c.block_size}" + ("" if cache.max_len >= c.block_size else
                                                  f" / the cache's max_len {cache.max_len}"))
        if out is None:
            out = np.empty(self.config.vocab_size, np.float32)
        r[2].decode(token, pos, out)
        cache.advance((token,))
        return out

    def _decode_on_device(self, token, cache, out):
        from .graph_decode import GraphDecoder
        dec = getattr(self, "_graph_decoder", None)
        if dec is None or dec.cache is not cache:
            dec = self._graph_decoder = GraphDecoder(self, cache, graphs=self.cuda_graphs)
        out = dec.step(int(token), cache.length, out)
        cache.advance((token,))
        return out

    def _build_runner(self, cache):
        """The native runner for this cache: it borrows the parameter views and the cache's
        buffers (and keeps them alive); in-place parameter updates are seen, a new parameter
        buffer or another cache builds a new runner."""
        if not self.supports_fast_decode(cache):
            raise ValueError("decode_next needs the native backend and a batch-1 cache; "
                             "use forward_cached")
        from . import _C
        runner = _C.Transformer(self.config.to_dict(), self.params.views, cache.k, cache.v)
        self._runner = (self.params.data, cache, runner, runner.max_positions)
        return self._runner

    def logits(self, ids: np.ndarray) -> np.ndarray:
        """Logits of every position of ids [B, T] (no cache kept): [B, T, V]."""
        ids = np.asarray(ids)
        if ids.ndim == 1:
            ids = ids[None]
        return self.forward_cached(ids, self.new_cache(ids.shape[1], ids.shape[0]), all_logits=True)


class _Activations:
    """What the training forward pass keeps for the backward pass, for one (B, T)."""

    def __init__(self, c: GPTConfig, B: int, T: int, dtype=np.float32, xp=np):
        self.shape = (B, T)
        N, C = B * T, c.n_embd
        fc_out = 2 * c.mlp_hidden if c.activation == "swiglu" else c.mlp_hidden
        layout = [("qkv", (N, c.qkv_dim)), ("lnf", (N, C)), ("d_x", (N, C))]
        for i in range(c.n_layer + 1):
            layout.append((f"res{i}", (N, C)))
        for i in range(c.n_layer):
            layout += [
                (f"ln1_{i}", (N, C)), (f"attm_{i}", (N, C)), (f"mid{i}", (N, C)),
                (f"ln2_{i}", (N, C)), (f"fch_{i}", (N, fc_out)), (f"fcha_{i}", (N, c.mlp_hidden)),
            ]
        self.buffer = FlatBuffer(layout, dtype=dtype, xp=xp)
        self.stats: Dict[str, tuple] = {}
        self.saved: Dict[str, tuple] = {}

    def __getitem__(self, name):
        return self.buffer[name]


class _MixedOps:
    """kernelgpt.ops with every matrix product in bf16 on tensor cores (both operands rounded
    to bf16 on the device, float32 accumulation and output, bias and accumulate= in the
    epilogue): GPT.to(device, precision="bf16"). Everything else is kernelgpt.ops."""

    def __getattr__(self, name):
        return getattr(ops, name)

    def matmul(self, a, b, bias=None, *, trans_a=False, trans_b=False, out=None,
               accumulate=False, backend="auto"):
        from . import _cuda
        return _cuda.matmul_bf16(ops.to_bf16(a), ops.to_bf16(b), bias, trans_a=trans_a,
                                 trans_b=trans_b, out=out, accumulate=accumulate)

    def linear(self, x, weight, bias=None, *, out=None, backend="auto"):
        return self.matmul(x, weight, bias, trans_b=True, out=out)


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
        y, lse = reference.attention(q, k, v, causal)
        y = self._out(y, out)
        return (y, lse) if return_lse else y

    def attention_backward(self, dout, q, k, v, out, lse, *, causal=True):
        return reference.attention_backward(dout, q, k, v, out, lse, causal)

    def cross_entropy(self, logits, targets, *, ignore_index=-100, reduction="mean",
                      return_grad=False):
        m = logits.max(axis=1, keepdims=True)
        logp = logits - m - np.log(np.exp(logits - m).sum(axis=1, keepdims=True))
        valid = targets != ignore_index
        safe = np.where(valid, targets, 0)
        losses = np.where(valid, -logp[np.arange(len(targets)), safe], 0.0)
        count = max(int(valid.sum()), 1)
        loss = float(losses.sum()) / (count if reduction == "mean" else 1)
        if not return_grad:
            return loss
        grad = np.exp(logp)
        grad[np.arange(len(targets)), safe] -= 1.0
        grad *= valid[:, None]
        if reduction == "mean":
            grad /= count
        return loss, grad
