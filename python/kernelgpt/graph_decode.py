"""One decoding step on a GPU as a CUDA graph: launch overhead paid once, not per kernel.

Generating a token with a small model is ~10 tiny kernels per layer; launched one by one from
Python each costs more than it computes. A CUDA graph records the launches once and replays
them with one call. For a replay to be right at every position, nothing in the recorded step
may depend on the host: ``GraphDecoder`` keeps every activation in buffers allocated once,
reads the token, its position and the number of cached keys from small device arrays (the RoPE
kernel takes positions from memory, ``kv_write`` appends to the KV cache at the position it
reads, the decode attention kernel reads the key count), and adds residuals with the
``accumulate`` form of the matrix products. Only the three device scalars change between
replays.

The same class runs on the CPU emulator (``kernelgpt.cuda_emu``), whose "graphs" record the
launches with their arguments and replay them: a step that secretly baked in a position would
give wrong logits from the second token on, which tests/test_device.py checks.

Supported: batch 1, RoPE or no positions (learned / sinusoidal tables fall back to
per-kernel launches), weights as float32 arrays or quantized blocks (QuantWeight), biases on
float32 weights only. ``supports(model, cache)`` says why not otherwise.
"""
from __future__ import annotations

import warnings
from typing import Optional, Tuple

import numpy as np

from .device import device_for
from .kernels import activation, attention, embedding, matmul, norm, quant, rope
from .precision import QuantWeight

__all__ = ["GraphDecoder"]


# The versions one decoding step launches (one row of x at a time), by name; the CUDA launchers
# take the family's version number (see kernels/_dispatch.py).
_MATMUL = matmul.VERSIONS.number("coalesced", "cuda")  # a thread per output beats the tiled ones
_QUANT_MATMUL = quant.VERSIONS.number("warp", "cuda")
_NORM = norm.VERSIONS.number("fast", "cuda")
_ROPE = rope.VERSIONS.number("naive", "cuda")
_DECODE = attention.VERSIONS.number("decode", "cuda")
_ACTIVATION = activation.VERSIONS.number("naive", "cuda")
_SWIGLU = activation.VERSIONS.number("fast", "cuda")
_EMBEDDING = embedding.VERSIONS.number("naive", "cuda")


def _is_quant(w) -> bool:
    return isinstance(w, QuantWeight)


class GraphDecoder:
    """Decodes one token at a time for `model` (on "cuda" or "emu") into `cache`, replaying a
    captured graph of the step (graphs=False: the same launches one by one)."""

    @staticmethod
    def supports(model, cache) -> Tuple[bool, str]:
        c = model.config
        if model.device == "cpu":
            return False, "the model is on the CPU"
        if cache.k[0].shape[0] != 1:
            return False, "batch > 1"
        if c.positions not in ("rope", "none"):
            return False, f"{c.positions} positions"
        for name in model.params.names():
            w = model.params[name]
            if not (_is_quant(w) or hasattr(w, "dtype")):
                return False, f"{name} is stored as {type(w).__name__}"
            if name.endswith(".bias") and _is_quant(model.params[name[:-5] + ".weight"]):
                return False, f"a bias on quantized {name[:-5]}"
        return True, ""

    def __init__(self, model, cache, graphs: bool = True):
        ok, why = self.supports(model, cache)
        if not ok:
            raise ValueError(f"GraphDecoder: not for this model / cache: {why}")
        xp, c = model.xp, model.config
        self.model, self.cache, self.xp, self.config = model, cache, xp, c
        self.dev = device_for(model.xp.zeros(1, np.float32), "GraphDecoder")
        self.use_graphs = graphs
        self.graph = None
        self.stream = xp.cuda.Stream(non_blocking=True)
        H, Hkv, hd = c.n_head, c.n_kv_head, c.head_dim
        fc_out = 2 * c.mlp_hidden if c.activation == "swiglu" else c.mlp_hidden
        f32 = np.float32
        self.token, self.pos, self.length = (xp.zeros(1, np.int64) for _ in range(3))
        self.x, self.h = xp.zeros((1, c.n_embd), f32), xp.zeros((1, c.n_embd), f32)
        self.qkv = xp.zeros((1, c.qkv_dim), f32)
        self.q, self.y = xp.zeros((1, H, 1, hd), f32), xp.zeros((1, H, 1, hd), f32)
        self.k = xp.zeros((1, Hkv, 1, hd), f32)
        self.fc, self.act = xp.zeros((1, fc_out), f32), xp.zeros((1, c.mlp_hidden), f32)
        self.logits = xp.zeros((1, c.vocab_size), f32)

    # ---- the launches of one step -------------------------------------------------------------

    def _linear(self, x, w, bias, out, accumulate=False):
        """out (+)= x @ W^T (+ bias), x [1, K], W [N, K] (one row: the "coalesced" matmul, a
        thread per output, beats the tiled ones)."""
        lib, s = self.dev.lib, self.dev.stream()
        N, K = w.shape
        if _is_quant(w):
            lib.cuda_quant_matmul(_QUANT_MATMUL, quant.QUANT_TYPES[w.qtype], x.data.ptr, w.raw.data.ptr,
                                  out.data.ptr, 1, N, K, accumulate, s)
        else:
            lib.cuda_matmul(_MATMUL, x.data.ptr, w.data.ptr, 0 if bias is None else bias.data.ptr,
                            out.data.ptr, 1, 1, N, K, 0, 0, 0, False, True, accumulate, s)

    def _norm(self, x, prefix, out):
        c, P, lib, s = self.config, self.model.params, self.dev.lib, self.dev.stream()
        w = P[prefix + ".weight"]
        if c.norm == "layernorm":
            b = P.views.get(prefix + ".bias")
            lib.cuda_layernorm(_NORM, x.data.ptr, w.data.ptr, 0 if b is None else b.data.ptr,
                               out.data.ptr, 0, 0, 1, c.n_embd, c.norm_eps, s)
        else:
            lib.cuda_rmsnorm(_NORM, x.data.ptr, w.data.ptr, out.data.ptr, 0, 1, c.n_embd,
                             c.norm_eps, s)

    def _rope(self, x, out):
        c, hd = self.config, self.config.head_dim
        self.dev.lib.cuda_rope(_ROPE, x.data.ptr, out.data.ptr, self.pos.data.ptr, 0,
                               float(c.rope_base), c.rope_layout == "interleaved", hd, False,
                               x.size // hd, 1, hd, self.dev.stream())

    def _launches(self):
        c, P, lib, s = self.config, self.model.params, self.dev.lib, self.dev.stream()
        H, Hkv, hd, F = c.n_head, c.n_kv_head, c.head_dim, c.mlp_hidden
        cap = self.cache.max_len
        wte = P["wte"]
        if _is_quant(wte):
            lib.cuda_dequantize_rows(quant.QUANT_TYPES[wte.qtype], wte.raw.data.ptr, self.token.data.ptr,
                                     self.x.data.ptr, 1, c.n_embd, s)
        else:
            lib.cuda_embedding(_EMBEDDING, self.token.data.ptr, wte.data.ptr, self.x.data.ptr, 1,
                               c.vocab_size, c.n_embd, s)
        for i in range(c.n_layer):
            L = f"h.{i}."
            self._norm(self.x, L + "ln_1", self.h)
            self._linear(self.h, P[L + "attn.c_attn.weight"], P.views.get(L + "attn.c_attn.bias"),
                         self.qkv)
            q = self.qkv[:, :H * hd].reshape(1, H, 1, hd)  # views: B = T = 1
            k = self.qkv[:, H * hd:(H + Hkv) * hd].reshape(1, Hkv, 1, hd)
            v = self.qkv[:, (H + Hkv) * hd:].reshape(1, Hkv, 1, hd)
            if c.positions == "rope":
                self._rope(q, self.q)
                self._rope(k, self.k)
            else:
                self.q, self.k = q, k
            lib.cuda_kv_write(self.cache.k[i].data.ptr, self.k.data.ptr, self.pos.data.ptr, Hkv,
                              cap, hd, s)
            lib.cuda_kv_write(self.cache.v[i].data.ptr, v.data.ptr, self.pos.data.ptr, Hkv, cap,
                              hd, s)
            lib.cuda_attention(_DECODE, self.q.data.ptr, self.cache.k[i].data.ptr,
                               self.cache.v[i].data.ptr, self.y.data.ptr, 0, 0, 1, H, Hkv, 1,
                               cap, cap, hd, float(hd ** -0.5), True, self.length.data.ptr, s)
            self._linear(self.y.reshape(1, H * hd), P[L + "attn.c_proj.weight"],
                         P.views.get(L + "attn.c_proj.bias"), self.x, accumulate=True)
            self._norm(self.x, L + "ln_2", self.h)
            self._linear(self.h, P[L + "mlp.c_fc.weight"], P.views.get(L + "mlp.c_fc.bias"),
                         self.fc)
            if c.activation == "swiglu":
                lib.cuda_swiglu(_SWIGLU, self.fc[:, :F].data.ptr, self.fc[:, F:].data.ptr,
                                self.act.data.ptr, F, s)
            else:
                lib.cuda_activation(_ACTIVATION, activation.cuda_op(c.activation),
                                    self.fc.data.ptr, self.act.data.ptr, F, s)
            self._linear(self.act, P[L + "mlp.c_proj.weight"], P.views.get(L + "mlp.c_proj.bias"),
                         self.x, accumulate=True)
        self._norm(self.x, "ln_f", self.h)
        self._linear(self.h, self.model.lm_head, None, self.logits)

    def _capture(self):
        """Records the step's launches as a graph (they do not run while captured)."""
        try:
            self.stream.begin_capture()
            try:
                self._launches()
            finally:
                graph = self.stream.end_capture()
            self.graph = graph
        except Exception as err:  # e.g. a CuPy without graph capture: decode still works
            warnings.warn(f"GraphDecoder: CUDA graph capture failed ({err}); decoding launches "
                          f"the kernels one by one instead", RuntimeWarning)
            self.use_graphs = False
            self.stream = self.xp.cuda.Stream(non_blocking=True)

    # ---- one token --------------------------------------------------------------------------------

    def step(self, token: int, pos: int, out: Optional[np.ndarray] = None) -> np.ndarray:
        """Appends `token` at position `pos` of the cache and returns the next-token logits
        (host float32 [V], into out if given). The first call runs the launches, then captures
        them; later calls replay the graph."""
        c = self.config
        if not 0 <= token < c.vocab_size:
            raise ValueError(f"token id {token} out of range [0, {c.vocab_size})")
        if not 0 <= pos < min(self.cache.max_len, c.block_size):
            raise ValueError(f"position {pos} outside the cache / context "
                             f"({min(self.cache.max_len, c.block_size)} positions)")
        with self.stream:
            self.token[...] = token
            self.pos[...] = pos
            self.length[...] = pos + 1
            if self.graph is not None:
                self.graph.launch(self.stream)
            else:
                self._launches()
                if self.use_graphs:
                    self._capture()
            host = self.logits[0].get()
        if out is None:
            return np.asarray(host)
        out[...] = host
        return out
