"""The decoder-only transformer, forward and hand-written backward, on kernelgpt.ops.

    tokens ─ embedding (+ learned / sinusoidal positions) ─▶ x [B, T, C]
    N × block:  x += attention(norm(x))        (causal, multi-head, RoPE optional, GQA;
                                                or a state-space layer: ssm.py)
                x += mlp(norm(x))              (GELU 4x, or SwiGLU; or a mixture of experts)
    norm ─▶ lm_head (tied to the embedding) ─▶ logits [B, T, V] ─▶ cross-entropy

Two flavours from one config (config.py): GPT-2 (learned positions, LayerNorm, GELU, biases,
tied head) and Llama (RoPE, RMSNorm, SwiGLU, no biases, grouped-query attention). Every kernel
is called through ``self.ops``: kernelgpt.ops by default, or one of precision.py's stand-ins
(float64 reference, bf16 mixed precision, packed weights).

Like llm.c, all parameters live in one flat float32 buffer (``model.params.data``) with named
views (``model.params["h.0.attn.c_attn.weight"]``), the gradients in another of the same
layout, and the activations a training step keeps for the backward pass in a third, sized for
one (batch, time) shape. ``forward_backward`` runs the forward pass, the loss and every
layer's backward in reverse; each layer's backward is written out by hand below its forward.
"""
from __future__ import annotations

import math
import weakref
from typing import Callable, Dict, Optional

import numpy as np

from . import _C, moe, ops, ssm
from .config import GPTConfig, parameter_layout
from .device import array_module, move, to_numpy
from .flat_buffer import FlatBuffer
from .graph_decode import GraphDecoder
from .kv_cache import KVCache
from .precision import (MixedPrecisionOps, PackedParams, PackedWeightOps, ReferenceOps, is_packed,
                        native_bf16)

__all__ = ["GPTConfig", "GPT", "BatchDecoder", "FlatBuffer", "parameter_layout"]


class GPT:
    """The model: parameters, the training pass (forward_backward) and inference forward.

    ``GPT(config, seed=0)`` initializes like GPT-2 / nanoGPT: normal(0, 0.02) for weights and
    embeddings, residual projections scaled by 1/sqrt(2 * n_layer), zeros for biases, ones for
    norm weights. ``seed=None`` leaves every parameter 0 (for loading); ``params=`` adopts a
    flat float32 buffer as the parameters; ``weights=`` a dict of named weights (a pretrained
    model: llama.py): float arrays are copied into the buffer, while packed ones (QuantWeight,
    Bf16Weight from kernelgpt.precision) are kept as they are and make the model inference-only.
    """

    def __init__(self, config: GPTConfig, seed: Optional[int] = 0, params: Optional[np.ndarray] = None,
                 backend: str = "native", weights: Optional[Dict[str, object]] = None):
        if backend not in ("native", "reference"):
            raise ValueError(f"backend must be 'native' or 'reference', got {backend!r}")
        self.config = config
        # "reference": every op is kernelgpt.reference's numpy formula in float64 (the oracle
        # the gradient checks compare the native float32 model with)
        self.ops = ops if backend == "native" else ReferenceOps()
        self.dtype = np.float32 if backend == "native" else np.float64
        layout = parameter_layout(config)
        self.param_decay = {name: decay for name, _, decay in layout}
        self.n_decayed = sum(int(np.prod(s)) for _, s, d in layout if d)
        self.grads: Optional[FlatBuffer] = None
        # called as grad_hook(stage) during the backward pass once the gradients of stage
        # `stage` (grad_stages) are final: data-parallel training starts their all-reduce there
        self.grad_hook: Optional[Callable[[int], None]] = None
        # called as layer_hook(i, x) by forward_cached after block i with the residual stream
        # x [B * T, C] (kernelgpt.trace reads every layer's state this way)
        self.layer_hook: Optional[Callable[[int, object], None]] = None
        # fine-tuning: parameters whose gradients the backward pass skips (they stay 0), and
        # adapters (lora.LoRA) whose own gradients it adds at every linear layer: see lora.py
        self.frozen: frozenset = frozenset()
        self.adapters = None
        self._acts: Optional[_Activations] = None
        self._sin_cache: Dict[int, np.ndarray] = {}
        # decode_next's native runners, one per live cache (so interleaved conversations do not
        # rebuild one per token): cache -> (params.data, _C.Transformer, max positions)
        self._runners = weakref.WeakKeyDictionary()
        self._graph_decoder: Optional[GraphDecoder] = None
        self.device, self.xp, self.precision = "cpu", np, "fp32"  # see to()
        self.cuda_graphs = True  # decode_next on a device replays a CUDA graph (graph_decode)
        # new_cache's dtype on the CPU: 'float32', or 'float16' (half the bytes a decode step
        # reads from the cache; kv_cache.py). A device's cache is float32.
        self.kv_dtype = "float32"
        if weights is not None and any(is_packed(w) for w in weights.values()):
            self._adopt_packed(layout, weights)
            return
        self.params = FlatBuffer([(n, s) for n, s, _ in layout], params, self.dtype)
        if weights is not None:
            for name in self.params.names():
                if name not in weights:
                    raise ValueError(f"GPT: weight {name!r} is missing")
                self.params[name][...] = weights[name]
        elif params is None and seed is not None:
            self.init_weights(seed)  # seed=None: all zeros (to be loaded)

    def _adopt_packed(self, layout, weights: Dict[str, object]) -> None:
        """Packed weights: kept as given (quantized blocks, bf16 bits), run by PackedWeightOps."""
        for name, shape, _ in layout:
            w = weights.get(name)
            if w is None:
                raise ValueError(f"GPT: weight {name!r} is missing")
            if tuple(w.shape) != tuple(shape):
                raise ValueError(f"GPT: weight {name!r} has shape {tuple(w.shape)}, expected "
                                 f"{tuple(shape)}")
        self.params = PackedParams(weights)
        self.ops = PackedWeightOps()

    @property
    def packed(self) -> bool:
        """True when some weights are packed (quantized or bf16): inference only."""
        return isinstance(self.params, PackedParams)

    # ---- devices ------------------------------------------------------------------------------

    def to(self, device: str, precision: str = "fp32") -> "GPT":
        """Moves the parameters (and gradients) to `device` and returns the model.

        "cpu": numpy arrays and the C++ kernels (the default); "cuda": CuPy arrays and the
        CUDA kernels (needs a GPU, CuPy and a CUDA build); "emu": kernelgpt.cuda_emu arrays,
        the same CUDA kernels run by the CPU emulator (slow; for checking the GPU path on a
        machine without one). Everything runs on any device: training (forward_backward,
        loss, train()) and generation (forward_cached, logits, generate; logits stay on the
        device). Packed weights move as they are (quantized blocks stay quantized).
        precision="bf16": mixed precision, every matrix product of the linear layers and the
        LM head (forward and backward) with both operands rounded to bf16 and float32
        accumulation (ops.matmul_bf16: AVX512-BF16 on the CPU, tensor cores on a GPU); the
        master weights, gradients, optimizer state, attention, norms, softmax and loss stay
        float32. "auto": bf16 where the processor multiplies bf16 natively (a GPU, or a CPU
        with AVX512-BF16), else fp32."""
        if isinstance(self.ops, ReferenceOps):
            raise ValueError("to(): only the native backend runs on devices")
        if precision not in ("fp32", "bf16", "auto"):
            raise ValueError(f"precision must be 'fp32', 'bf16' or 'auto', got {precision!r}")
        if precision == "auto":
            precision = "bf16" if not self.packed and native_bf16(device) else "fp32"
        if precision == "bf16" and self.packed:
            raise ValueError("precision='bf16' is for training; this model's weights are packed")
        if self.config.n_expert and device != "cpu":
            raise ValueError("to(): a mixture-of-experts model runs on the CPU only (its routing "
                             "gathers tokens with numpy)")
        if self._has_ssm and device != "cpu":
            raise ValueError("to(): a model with state-space layers runs on the CPU only (its "
                             "scan has CUDA kernels, ops.selective_scan, but the layer has not "
                             "been run on a GPU)")
        xp = array_module(device)
        if self.packed:
            self.params = self.params.to(xp)
        else:
            self.params = FlatBuffer(self.params.layout, move(self.params.data, xp), self.dtype,
                                     xp)
            self.ops = MixedPrecisionOps() if precision == "bf16" else ops
        if self.grads is not None:
            self.grads = FlatBuffer(self.grads.layout, move(self.grads.data, xp), self.dtype, xp)
        self.device, self.xp, self.precision = device, xp, precision
        self._acts, self._sin_cache = None, {}
        self._runners = weakref.WeakKeyDictionary()
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
        for i in range(c.n_layer):
            if c.mixer(i) == "ssm":
                ssm.init_ssm(self.params, i, c, rng, proj_std)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        n = self.params.size
        if exclude_embeddings and "wpe" in self.params:
            n -= self.params["wpe"].size
        return n

    @property
    def _has_ssm(self) -> bool:
        return self.config.layers is not None and "ssm" in self.config.layers

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
                table = move(self.ops.sinusoidal_positions(c.block_size, c.n_embd), self.xp)
                self._sin_cache[c.block_size] = table
            return table[t0: t0 + T]
        return None  # RoPE: positions enter inside attention

    def _activate(self, h, out):
        act = self.config.activation
        if act == "gelu":
            return self.ops.gelu(h, out=out)
        if act == "relu":
            return self.ops.relu(h, out=out)
        return self.ops.swiglu_packed(h, out=out)  # h = [gate | up]: silu(gate) * up

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
                         ignore_index: int = -100, token_weights=None,
                         hidden_grad: Optional[Callable] = None) -> float:
        """One training pass: the mean cross-entropy loss of predicting targets [B, T] from
        idx [B, T]; adds grad_scale * d(loss)/d(params) into ``self.grads`` (call zero_grad()
        first; several calls accumulate, e.g. for gradient accumulation).

        For the objectives of alignment (finetune.py):
        token_weights [B, T]: the loss is sum_t w_t * CE_t instead of the mean (a policy
        gradient weights each sampled token's -log p by its advantage);
        hidden_grad(h) -> (loss, d_h): a loss of the final norm's output h [B*T, C] (a reward
        or value head on the hidden states), added to the objective and backpropagated with it.
        """
        self._check_trainable()
        idx, targets = self._check_batch(idx, targets)
        if self.grads is None:
            self.zero_grad()
        B, T = idx.shape
        weights = None
        if token_weights is not None:
            weights = np.ascontiguousarray(token_weights, dtype=self.dtype)
            if weights.size != B * T or not np.all(np.isfinite(weights)):
                raise ValueError(f"token_weights must be finite numbers of shape {(B, T)}")
            weights = weights.reshape(B, T)
        if hidden_grad is None:  # (a head on the hidden states may read every position)
            idx, targets = self._cut_padding(idx, targets, ignore_index)
            T = idx.shape[1]
            if weights is not None:
                weights = weights[:, :T]
        if weights is not None:
            weights = move(np.ascontiguousarray(weights).reshape(-1), self.xp)
        count = int(np.count_nonzero(targets != ignore_index))
        idx, targets = move(idx, self.xp), move(targets, self.xp)
        acts = self._activations(B, T)
        self._forward_train(idx, acts)
        loss, d_x = self._head_loss(acts, targets.reshape(-1), ignore_index, count,
                                    with_grad=True, grad_scale=grad_scale, weights=weights)
        if hidden_grad is not None:
            extra, d_h = hidden_grad(acts["lnf"])
            loss += float(extra)
            d_x += d_h * d_x.dtype.type(grad_scale)
        self._backward(idx, acts, d_x, grad_scale)
        return loss + acts.aux  # (+ the experts' load-balancing loss, the objective trained)

    def loss(self, idx: np.ndarray, targets: np.ndarray, ignore_index: int = -100) -> float:
        """Mean cross-entropy, forward only (evaluation)."""
        idx, targets = self._cut_padding(*self._check_batch(idx, targets), ignore_index)
        B, T = idx.shape
        count = int(np.count_nonzero(targets != ignore_index))
        idx, targets = move(idx, self.xp), move(targets, self.xp)
        acts = self._activations(B, T)
        self._forward_train(idx, acts)
        loss, _ = self._head_loss(acts, targets.reshape(-1), ignore_index, count, with_grad=False)
        return loss + acts.aux

    def token_logprobs(self, idx: np.ndarray, targets: np.ndarray, ignore_index: int = -100,
                       hidden: bool = False):
        """log p(targets[b, t] | idx[b, :t+1]) as float64 [B, T] (0 where ignored), forward
        only; hidden=True also returns the final norm's output [B, T, C] (a copy)."""
        idx, targets = self._check_batch(idx, targets)
        B, T_all = idx.shape
        if not hidden:
            idx, targets = self._cut_padding(idx, targets, ignore_index)
        T = idx.shape[1]
        idx, targets = move(idx, self.xp), move(targets, self.xp)
        acts = self._activations(B, T)
        self._forward_train(idx, acts)
        per = self._head_loss(acts, targets.reshape(-1), ignore_index, 0, with_grad=False,
                              per_token=True)
        out = np.zeros((B, T_all))
        out[:, :T] = -to_numpy(per).astype(np.float64).reshape(B, T)
        if hidden:
            return out, to_numpy(acts["lnf"]).reshape(B, T, -1).copy()
        return out

    def _cut_padding(self, idx, targets, ignore_index: int):
        """idx and targets [B, T] cut after the last position whose target is not ignore_index,
        in any row. In a causal model the positions after it influence nothing trained, so
        batches padded at the end (SFT conversations, preference pairs) skip the padding's
        work; the loss and the gradients are unchanged. A mixture of experts keeps every
        position (its load-balancing loss counts them all)."""
        trained = np.flatnonzero((targets != ignore_index).any(axis=0))
        if self.config.n_expert or not trained.size or trained[-1] + 1 == targets.shape[1]:
            return idx, targets
        T = int(trained[-1]) + 1
        return idx[:, :T].copy(), targets[:, :T].copy()

    def _check_trainable(self) -> None:
        if self.packed:
            raise ValueError("a model with packed (quantized or bf16) weights cannot be "
                             "trained: load it with weights='fp32'")

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
        a.aux = 0.0  # the mixture of experts' load-balancing loss, summed over layers
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
            mid = a[f"mid{i}"]
            if c.mixer(i) == "ssm":  # a state-space layer (ssm.py) instead of attention
                y, _, a.saved[f"ssm_{i}"] = ssm.ssm_forward(self.ops, self.xp, P, i, c,
                                                            a[f"ln1_{i}"], B, T)
                mid[...] = y
            else:
                self._attention_train(a, i, B, T, mid)
            mid += x
            ln2 = self._norm(mid, i, "ln_2", out=a[f"ln2_{i}"], stats=True)
            a.stats[f"ln2_{i}"] = ln2[1:]
            if c.n_expert:  # a mixture of experts (moe.py) instead of the one MLP
                y, aux, a.saved[f"moe_{i}"] = self._moe(a[f"ln2_{i}"], i)
                a.aux += aux
                nxt = a[f"res{i + 1}"]
                nxt[...] = y
                nxt += mid
                continue
            if self._fused_activation():
                self.ops.linear_activation(a[f"ln2_{i}"], P[L + "mlp.c_fc.weight"],
                                           P.views.get(L + "mlp.c_fc.bias"), c.activation,
                                           out=a[f"fch_{i}"], act_out=a[f"fcha_{i}"])
            else:
                h = self.ops.linear(a[f"ln2_{i}"], P[L + "mlp.c_fc.weight"],
                                    P.views.get(L + "mlp.c_fc.bias"), out=a[f"fch_{i}"])
                self._activate(h, out=a[f"fcha_{i}"])
            nxt = a[f"res{i + 1}"]
            self.ops.linear(a[f"fcha_{i}"], P[L + "mlp.c_proj.weight"],
                       P.views.get(L + "mlp.c_proj.bias"), out=nxt)
            nxt += mid
        lnf = self._norm(a[f"res{c.n_layer}"], None, None, out=a["lnf"], stats=True)
        a.stats["lnf"] = lnf[1:]

    def _attention_train(self, a, i, B, T, out) -> None:
        """Block i's attention on a["ln1_i"] into out [B*T, C], keeping what backward needs."""
        c, P = self.config, self.params
        L = f"h.{i}."
        qkv = self.ops.linear(a[f"ln1_{i}"], P[L + "attn.c_attn.weight"],
                              P.views.get(L + "attn.c_attn.bias"), out=a["qkv"])
        q, k, v = self._split_heads(qkv, B, T)
        if c.positions == "rope":
            q, k = self._rope(q, 0), self._rope(k, 0)
        y, lse = self.ops.attention(q, k, v, causal=True, return_lse=True)
        a.saved[f"attn_{i}"] = (q, k, v, y, lse)
        self._merge_heads(y, out=a[f"attm_{i}"])
        self.ops.linear(a[f"attm_{i}"], P[L + "attn.c_proj.weight"],
                        P.views.get(L + "attn.c_proj.bias"), out=out)

    def _head_loss(self, a, targets, ignore_index, count, with_grad, grad_scale=1.0,
                   weights=None, per_token=False):
        """LM head + cross-entropy over row chunks (logits are never all in memory at once).
        Returns (mean loss, d_lnf [N, C] or None); accumulates the head's weight gradient.
        weights [N]: the loss is sum_i weights_i * CE_i instead. per_token: returns CE [N].

        Rows whose target is ignored need no logits: on the CPU only the others go through
        the head (fine-tuning's prompt tokens, a reward model's whole batch), gathered into
        one block, their gradient scattered back (zero elsewhere)."""
        c = self.config
        lnf = a["lnf"]
        N = lnf.shape[0]
        keep = None
        if self.xp is np:
            valid = targets != ignore_index
            n_valid = int(np.count_nonzero(valid))
            if n_valid < N:
                keep = np.flatnonzero(valid)
        d_lnf = a["d_x"] if with_grad else None
        if per_token:
            per = self.xp.zeros(N, dtype=lnf.dtype)
            if keep is None:
                self._head_rows(a, lnf, targets, ignore_index, per_out=per)
            elif len(keep):
                per[keep] = self._head_rows(a, lnf[keep], targets[keep], ignore_index,
                                            per_out=np.zeros(len(keep), lnf.dtype))
            return per
        if count == 0 and weights is None:  # every target ignored (a reward model's batch)
            if with_grad:
                d_lnf[...] = 0
            return 0.0, d_lnf
        g_head = None
        head_name = "wte" if c.tied_head else "lm_head.weight"
        if with_grad and head_name not in self.frozen:
            g_head = self.grads[head_name]
        scale = grad_scale / max(count, 1)
        if keep is None:
            total = self._head_rows(a, lnf, targets, ignore_index, with_grad, scale, grad_scale,
                                    weights, g_head, d_lnf)
        else:
            d_rows = np.empty((len(keep), lnf.shape[1]), lnf.dtype) if with_grad else None
            total = self._head_rows(a, lnf[keep], targets[keep], ignore_index, with_grad, scale,
                                    grad_scale, None if weights is None else weights[keep],
                                    g_head, d_rows)
            if with_grad:
                d_lnf[...] = 0
                d_lnf[keep] = d_rows
        if weights is not None:
            return float(total), d_lnf
        return float(total) / max(count, 1), d_lnf  # float(): one device-to-host read

    def _head_rows(self, a, x, targets, ignore_index, with_grad=False, scale=1.0, grad_scale=1.0,
                   weights=None, g_head=None, d_out=None, per_out=None):
        """_head_loss on rows x [n, C] in chunks: the summed (or weighted) loss, d_out [n, C]
        and g_head accumulated; per_out: each row's CE into it instead (returned)."""
        W = self.lm_head
        n = x.shape[0]
        rows = a["logits"].shape[0]  # <= 64 MiB of logits per chunk
        total = 0.0
        for r0 in range(0, n, rows):
            r1 = min(n, r0 + rows)
            t = targets[r0:r1]
            logits = self.ops.linear(x[r0:r1], W, out=a["logits"][:r1 - r0])
            if per_out is not None:
                per_out[r0:r1] = self.ops.cross_entropy(logits, t, ignore_index=ignore_index,
                                                        reduction="none")
                continue
            if not with_grad:
                total += self.ops.cross_entropy(logits, t, ignore_index=ignore_index,
                                                reduction="sum")
                continue
            if weights is not None:  # sum_i w_i CE_i: each row's gradient scaled by its w_i
                per, dlogits = self.ops.cross_entropy(logits, t, ignore_index=ignore_index,
                                                      reduction="none", return_grad=True,
                                                      out=a["d_logits"][:r1 - r0])
                w = weights[r0:r1]
                total += float((per * w).sum())
                dlogits *= (w * dlogits.dtype.type(grad_scale))[:, None]
            else:
                loss, dlogits = self.ops.cross_entropy(logits, t, ignore_index=ignore_index,
                                                       reduction="sum", return_grad=True,
                                                       out=a["d_logits"][:r1 - r0])
                total += loss
                dlogits *= dlogits.dtype.type(scale)
            if g_head is not None:
                self.ops.matmul(dlogits, x[r0:r1], trans_a=True, out=g_head, accumulate=True)
            self.ops.matmul(dlogits, W, out=d_out[r0:r1])
        return per_out if per_out is not None else total

    def _fused_activation(self) -> bool:
        """Whether the ops fuse the MLP's linear layer with its activation (bf16 ops do)."""
        return getattr(self.ops, "fuses_activation", False) and self.config.activation in ("gelu", "relu")

    def _linear_backward(self, d_y, x, name, d_x_out=None, accumulate_dx=False, activation_x=None):
        """y = x @ W^T + b: adds dW, db into the gradient buffer and returns dx (with
        activation_x: x = act(activation_x), and the gradient at activation_x is returned)."""
        G, P = self.grads, self.params
        if name + ".weight" not in self.frozen:
            self.ops.matmul(d_y, x, trans_a=True, out=G[name + ".weight"], accumulate=True)
        if name + ".bias" in G and name + ".bias" not in self.frozen:
            G[name + ".bias"] += d_y.sum(axis=0)
        if self.adapters is not None:
            self.adapters.add_grad(name, d_y, x)
        if activation_x is not None:
            return self.ops.matmul_activation_backward(d_y, P[name + ".weight"], activation_x,
                                                       self.config.activation, out=d_x_out)
        if d_x_out is None:
            return self.ops.matmul(d_y, P[name + ".weight"])
        return self.ops.matmul(d_y, P[name + ".weight"], out=d_x_out, accumulate=accumulate_dx)

    def _norm_backward(self, d_y, x, i_or_f, which, stats):
        c, P, G = self.config, self.params, self.grads
        prefix = "ln_f" if i_or_f is None else f"h.{i_or_f}.{which}"
        if c.norm == "layernorm":
            mean, rstd = stats
            dx, dw, db = self.ops.layernorm_backward(d_y, x, P[prefix + ".weight"], mean, rstd)
            if prefix + ".bias" in G and prefix + ".bias" not in self.frozen:
                G[prefix + ".bias"] += db
        else:
            (rstd,) = stats
            dx, dw = self.ops.rmsnorm_backward(d_y, x, P[prefix + ".weight"], rstd)
        if prefix + ".weight" not in self.frozen:
            G[prefix + ".weight"] += dw
        return dx

    # ---- mixture of experts (moe.py) ----------------------------------------------------------

    moe_version = "grouped"  # or "naive": each (token, expert) pair on its own

    def _moe(self, x, i):
        """(y, aux loss, saved) of block i's mixture of experts on x [N, C]."""
        c, P = self.config, self.params
        L = f"h.{i}.mlp."
        return moe.moe_forward(self.ops, x, P[L + "router.weight"], P[L + "c_fc.weight"],
                               P.views.get(L + "c_fc.bias"), P[L + "c_proj.weight"],
                               P.views.get(L + "c_proj.bias"), c.n_expert_active,
                               lambda h: self._activate(h, out=None), self.moe_version,
                               c.moe_aux_weight)

    def _activation_backward(self, d_a, h, out=None):
        """d(loss)/d(h) of a = act(h), from d_a (into out for GELU and ReLU)."""
        act = self.config.activation
        if act == "gelu":
            return self.ops.gelu_backward(d_a, h, out=out)
        if act == "relu":
            return self.ops.relu_backward(d_a, h, out=out)
        return self.ops.swiglu_packed_backward(d_a, h, out=out)  # [d_gate | d_up]

    def _moe_backward(self, d_y, saved, i, grad_scale):
        P, G = self.params, self.grads
        L = f"h.{i}.mlp."
        grads = {"router": G[L + "router.weight"], "w1": G[L + "c_fc.weight"],
                 "b1": G.views.get(L + "c_fc.bias"), "w2": G[L + "c_proj.weight"],
                 "b2": G.views.get(L + "c_proj.bias")}
        return moe.moe_backward(self.ops, d_y, saved, P[L + "router.weight"], P[L + "c_fc.weight"],
                                P[L + "c_proj.weight"], self._activation_backward, grads,
                                aux_scale=grad_scale)

    def grad_stages(self) -> Dict[str, int]:
        """For each parameter, the stage of the backward pass after which its gradient is
        final (_backward calls grad_hook(stage) there): 0 once the head and the final norm are
        done, n_layer - i after block i, n_layer + 1 at the end (the token embedding, which a
        tied head also uses, and learned positions)."""
        L = self.config.n_layer
        stages = {}
        for name in self.params.names():
            if name.startswith("h."):
                stages[name] = L - int(name.split(".")[1])
            elif name in ("wte", "wpe"):
                stages[name] = L + 1
            else:  # ln_f.*, lm_head.weight
                stages[name] = 0
        return stages

    def _backward(self, idx, a, d_lnf, grad_scale: float = 1.0) -> None:
        c, G = self.config, self.grads
        B, T = idx.shape
        hook = self.grad_hook or (lambda stage: None)
        # d_res: gradient w.r.t. the residual stream, walking back through the layers
        d_res = self._norm_backward(d_lnf, a[f"res{c.n_layer}"], None, None, a.stats["lnf"])
        hook(0)
        for i in reversed(range(c.n_layer)):
            L = f"h.{i}."
            # MLP: res{i+1} = mid + c_proj(act(c_fc(ln_2(mid))))
            h = a[f"fch_{i}"]
            if c.n_expert:  # res{i+1} = mid + moe(ln_2(mid))
                d_ln2 = self._moe_backward(d_res, a.saved[f"moe_{i}"], i, grad_scale)
            else:
                if self._fused_activation():  # d_h = (d_res @ W_proj) * act'(h) in one pass
                    d_h = self._linear_backward(d_res, a[f"fcha_{i}"], L + "mlp.c_proj",
                                                d_x_out=a["d_ff"], activation_x=h)
                else:
                    d_act = self._linear_backward(d_res, a[f"fcha_{i}"], L + "mlp.c_proj")
                    d_h = self._activation_backward(d_act, h, out=a["d_ff"])
                d_ln2 = self._linear_backward(d_h, a[f"ln2_{i}"], L + "mlp.c_fc")
            d_mid = self._norm_backward(d_ln2, a[f"mid{i}"], i, "ln_2", a.stats[f"ln2_{i}"])
            d_mid += d_res
            if c.mixer(i) == "ssm":  # mid = res{i} + ssm(ln_1(res{i}))
                d_ln1 = ssm.ssm_backward(self.ops, self.xp, self.params, G, i, c, a[f"ln1_{i}"],
                                         a.saved[f"ssm_{i}"], d_mid, B, T, self._linear_backward)
            else:
                d_ln1 = self._attention_backward(a, i, B, T, d_mid)
            d_res = self._norm_backward(d_ln1, a[f"res{i}"], i, "ln_1", a.stats[f"ln1_{i}"])
            d_res += d_mid
            hook(c.n_layer - i)
        # embeddings: res0 = wte[idx] + positions
        if "wte" not in self.frozen:
            self.ops.embedding_backward(d_res, idx.reshape(-1), c.vocab_size, out=G["wte"],
                                        accumulate=True)
        if c.positions == "learned" and "wpe" not in self.frozen:
            G["wpe"][:T] += d_res.reshape(B, T, -1).sum(axis=0)
        hook(c.n_layer + 1)

    def _attention_backward(self, a, i, B, T, d_mid):
        """d_ln1 of block i's attention (mid = res{i} + c_proj(attention(heads(c_attn(ln1)))));
        adds the weight gradients."""
        c = self.config
        H, Hkv, hd = c.n_head, c.n_kv_head, c.head_dim
        L = f"h.{i}."
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
        return self._linear_backward(a["qkv"], a[f"ln1_{i}"], L + "attn.c_attn")

    # ---- inference with a KV cache ---------------------------------------------------------

    def new_cache(self, max_len: Optional[int] = None, batch: int = 1, dtype=None) -> KVCache:
        """A KV cache for max_len positions (default block_size); dtype 'float32' or 'float16'
        (default: self.kv_dtype on the CPU, float32 on a device)."""
        c = self.config
        if dtype is None:
            dtype = self.kv_dtype if self.device == "cpu" else "float32"
        if self._has_ssm:  # states for the state-space layers, K and V for the others
            return ssm.RecurrentCache(c, max_len or c.block_size, batch, self.device, dtype)
        return KVCache(c.n_layer, c.n_kv_head, c.head_dim, max_len or c.block_size, batch,
                       device=self.device, dtype=dtype)

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
        ids = move(host_ids, self.xp)
        B, T = ids.shape
        t0 = cache.length
        if t0 + T > min(c.block_size, cache.max_len):
            raise self._context_error(t0 + T, cache)
        x = self.ops.embedding(ids.reshape(-1), P["wte"])
        pos = self._positions_table(t0, T)
        if pos is not None:
            x.reshape(B, T, -1)[...] += pos
        for i in range(c.n_layer):
            L = f"h.{i}."
            h = self._norm(x, i, "ln_1")
            if c.mixer(i) == "ssm":  # on from the layer's state, which then moves on
                y, state, _ = ssm.ssm_forward(self.ops, self.xp, P, i, c, h, B, T,
                                              h0=cache.state[i])
                cache.set_state(i, state)
                x += y
            else:
                qkv = self.ops.linear(h, P[L + "attn.c_attn.weight"],
                                      P.views.get(L + "attn.c_attn.bias"))
                q, k, v = self._split_heads(qkv, B, T)
                if c.positions == "rope":
                    q, k = self._rope(q, t0), self._rope(k, t0)
                cache.write(i, k, v)
                y = self.ops.attention(q, cache.k[i], cache.v[i], causal=True, kv_length=t0 + T)
                x += self.ops.linear(self._merge_heads(y), P[L + "attn.c_proj.weight"],
                                     P.views.get(L + "attn.c_proj.bias"))
            h = self._norm(x, i, "ln_2")
            if c.n_expert:
                x += self._moe(h, i)[0]
            else:
                h = self.ops.linear(h, P[L + "mlp.c_fc.weight"], P.views.get(L + "mlp.c_fc.bias"))
                a = self._activate(h, out=None)
                x += self.ops.linear(a, P[L + "mlp.c_proj.weight"], P.views.get(L + "mlp.c_proj.bias"))
            if self.layer_hook is not None:
                self.layer_hook(i, x)
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
        if self.config.n_expert or self._has_ssm:  # the native runner and the CUDA graph
            return False                               # are dense transformers only
        if self.device != "cpu":
            return GraphDecoder.supports(self, cache)[0]
        return not isinstance(self.ops, ReferenceOps) and cache.k[0].shape[0] == 1 and \
            cache.k[0].dtype in (np.float32, np.float16)

    def decode_next(self, token: int, cache, out: Optional[np.ndarray] = None) -> np.ndarray:
        """forward_cached(np.array([[token]]), cache)[0] in one native call: appends the token
        (at position cache.length) to the cache and returns the next-token logits [V] (written
        into out, float32 [V], if given). The same numbers as forward_cached, which stays the
        readable version; this one skips ~10 Python-level kernel calls per layer
        (csrc/model/transformer.h). Kept short: it runs once per generated token.
        On a device the step is a CUDA graph replayed per token (graph_decode.GraphDecoder)."""
        if self.device != "cpu":
            return self._decode_on_device(token, cache, out)
        r = self._runner(cache)
        pos = cache.length
        if pos >= r[2]:
            raise self._context_error(pos + 1, cache)
        if out is None:
            out = np.empty(self.config.vocab_size, np.float32)
        r[1].decode(token, pos, out)
        cache.advance((token,))
        return out

    def prefill(self, ids, cache) -> np.ndarray:
        """forward_cached(ids [1, T] or [T], cache)[0]: runs one sequence's new tokens, appends
        them to the cache, returns the last position's logits [V]. Where decode_next runs
        natively (the CPU, batch 1) the whole prompt is one native call (the decode runner's
        prefill: forward_cached's kernels in its order, without its ~15 Python-level calls and
        copies per layer); elsewhere it is forward_cached, which stays the readable version."""
        ids = np.asarray(ids)
        if ids.ndim == 1:
            ids = ids[None]
        if self.device != "cpu" or ids.shape[0] != 1 or not self.supports_fast_decode(cache):
            return self.forward_cached(ids, cache)[0]
        host_ids, _ = self._check_batch(ids, None)
        c, t0, T = self.config, cache.length, host_ids.shape[1]
        if t0 + T > min(c.block_size, cache.max_len):
            raise self._context_error(t0 + T, cache)
        out = np.empty(c.vocab_size, np.float32)
        self.decode_runner(cache).prefill(np.ascontiguousarray(host_ids[0], np.int64), t0, out)
        cache.advance(host_ids[0].tolist())
        return out

    def batch_decoder(self, caches) -> "BatchDecoder":
        """decode_next for several sequences at once (one KV cache each, batch 1): see
        BatchDecoder. Native backend on the CPU only."""
        return BatchDecoder(self, caches)

    def decode_runner(self, cache):
        """The native runner decode_next uses for `cache` (_C.Transformer, built if needed):
        runner.set_profiling(True), then runner.profile() says where the tokens' time went
        (matrix-vector products, attention, the rest) and how the work pool scheduled them."""
        return self._runner(cache)[1]

    def _runner(self, cache):
        """(params.data, runner, max positions) for cache: the kept one while the parameters
        are the same buffer, else a new one."""
        r = self._runners.get(cache)
        if r is None or r[0] is not self.params.data:
            r = self._build_runner(cache)
        return r

    def _context_error(self, length: int, cache) -> ValueError:
        c = self.config
        return ValueError(f"context of {length} tokens exceeds the model's block_size "
                          f"{c.block_size}" + ("" if cache.max_len >= c.block_size else
                                               f" / the cache's max_len {cache.max_len}"))

    def _decode_on_device(self, token, cache, out):
        dec = self._graph_decoder
        if dec is None or dec.cache is not cache:
            dec = self._graph_decoder = GraphDecoder(self, cache, graphs=self.cuda_graphs)
        out = dec.step(int(token), cache.length, out)
        cache.advance((token,))
        return out

    def _build_runner(self, cache):
        """The native runner for this cache: it borrows the parameter views and the cache's
        buffers (and keeps them alive); in-place parameter updates are seen, a new parameter
        buffer builds a new runner. Kept per cache while the cache lives."""
        if not self.supports_fast_decode(cache):
            raise ValueError("decode_next needs the native backend and a batch-1 cache; "
                             "use forward_cached")
        views = self.params.runner_views() if self.packed else self.params.views
        runner = _C.Transformer(self.config.to_dict(), views, cache.k, cache.v)
        ref = getattr(self, "_last_runner", None)
        last = ref() if ref is not None else None
        if last is not None:  # one thread or two: start from what the last runner found
            runner.solo = last.solo
        self._last_runner = weakref.ref(runner)
        r = self._runners[cache] = (self.params.data, runner, runner.max_positions)
        return r

    def logits(self, ids: np.ndarray) -> np.ndarray:
        """Logits of every position of ids [B, T] (no cache kept): [B, T, V]."""
        ids = np.asarray(ids)
        if ids.ndim == 1:
            ids = ids[None]
        return self.forward_cached(ids, self.new_cache(ids.shape[1], ids.shape[0]), all_logits=True)


class BatchDecoder:
    """Decodes one token for any subset of several sequences in one native call
    (GPT.batch_decoder(caches)): every quantized weight matrix is read once for the whole batch
    (float32 / bf16 weights are multiplied row by row), and each row's logits equal
    decode_next's for that sequence alone, bit for bit. Used by generate_batch."""

    def __init__(self, model, caches):
        caches = list(caches)
        if not caches:
            raise ValueError("batch_decoder: give at least one cache")
        if len({id(c) for c in caches}) != len(caches):
            raise ValueError("batch_decoder: a cache appears twice")
        for c in caches:
            if model.device != "cpu" or not model.supports_fast_decode(c):
                raise ValueError("batch_decoder needs the native backend on the CPU and batch-1 "
                                 "caches (model.new_cache())")
        views = model.params.runner_views() if model.packed else model.params.views
        self.model, self.caches, self._data = model, caches, model.params.data
        self.runner = _C.Transformer(model.config.to_dict(), views, [c.k for c in caches],
                                     [c.v for c in caches])
        self._logits = np.empty((len(caches), model.config.vocab_size), np.float32)

    def step(self, tokens, which=None) -> np.ndarray:
        """Appends tokens[j] to caches[which[j]] (default: every cache, in order) and returns
        the next-token logits [len(tokens), V] (a buffer the next step reuses)."""
        which = list(range(len(self.caches))) if which is None else [int(i) for i in which]
        if len(which) != len(tokens):
            raise ValueError(f"BatchDecoder.step: {len(tokens)} tokens for {len(which)} caches")
        if self.model.params.data is not self._data:
            raise ValueError("BatchDecoder: the model's parameters were replaced; make a new one")
        caches = [self.caches[i] for i in which]
        positions = [c.length for c in caches]
        for c, pos in zip(caches, positions):
            if pos >= min(self.model.config.block_size, c.max_len):
                raise self.model._context_error(pos + 1, c)
        out = self._logits[:len(which)]
        self.runner.decode_batch(which, [int(t) for t in tokens], positions, out)
        for c, t in zip(caches, tokens):
            c.advance((int(t),))
        return out


class _Activations:
    """What the training forward pass keeps for the backward pass, for one (B, T)."""

    def __init__(self, c: GPTConfig, B: int, T: int, dtype=np.float32, xp=np):
        self.shape = (B, T)
        N, C = B * T, c.n_embd
        fc_out = 2 * c.mlp_hidden if c.activation == "swiglu" else c.mlp_hidden
        # qkv doubles as d_qkv in backward, d_ff holds the MLP's hidden gradient; the LM head
        # runs over row chunks of <= 64 MiB of logits (and as much of their gradient), reused
        # chunk after chunk and step after step (fresh arrays that size cost page faults)
        head_rows = max(1, min(N, (1 << 24) // c.vocab_size))
        layout = [("qkv", (N, c.qkv_dim)), ("lnf", (N, C)), ("d_x", (N, C)), ("d_ff", (N, fc_out)),
                  ("logits", (head_rows, c.vocab_size)), ("d_logits", (head_rows, c.vocab_size))]
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
        self.aux = 0.0  # the mixture of experts' load-balancing loss of the last forward pass

    def __getitem__(self, name):
        return self.buffer[name]
