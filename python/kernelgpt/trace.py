"""What happens when you press Enter: one real forward pass and the generation after it, as data
and as one self-contained HTML page.

    kernelgpt trace "What is gravity?" --html trace.html          # SmolLM2-135M-Instruct
    kernelgpt trace "ROMEO:" --model shipped --html trace.html     # the shipped Shakespeare GPT

``collect(prompt, model)`` runs the model's readable forward pass (GPT.forward_cached, the same
kernels as everywhere) with every kernel call timed and observed, and returns a dict of what
each step did:

- text -> UTF-8 bytes -> pre-tokenized pieces -> the BPE merges that built each piece's tokens
  (tiktoken's rule: merge the adjacent pair of lowest rank, again and again) -> ids, checked
  equal to ``tokenizer.encode``;
- the token embeddings (their norms and a 2-D projection: the two principal directions of the
  prompt's vectors) and the positions (the RoPE angle of each position and frequency, or the
  learned / sinusoidal position vectors' norms);
- per layer: each head's attention weights over the prompt (softmax(q k^T / sqrt(d)) with the
  causal mask, from the very q and k of the pass), the residual stream's norm at each position,
  and a logit lens (the final norm and LM head applied to that layer's residual stream at the
  last position: what the model would predict if it stopped there);
- the last position's logits (all of them) and the distribution the sampler draws from;
- the generated tokens one by one: probability, the runners-up, the KV cache's size, the time;
- where the time went: seconds per kernel family over the whole run.

``render_html(data)`` makes the page: the data inline as JSON, a small script that draws the
heatmaps and bars and recomputes the distribution when the temperature / top-k / top-p / min-p
sliders move (the URL's #temperature=0.7&top_k=40 sets them on load). No server, no network.
"""
from __future__ import annotations

import base64
import html
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Union

import numpy as np

from . import reference
from .device import to_numpy
from .io.atomic import atomic_write_bytes
from .sampling import Sampler, SamplingConfig, filtered_distribution
from .tokenizer.encoding import _bpe_states

__all__ = ["collect", "render_html", "write_html", "bpe_steps"]

_LENS_TOP = 5
_LABELS = 256  # tokens of the final distribution that carry their text (the bars show <= 20)


# ---- tokenization ------------------------------------------------------------------------------

def bpe_steps(piece: bytes, ranks: Dict[bytes, int]) -> List[List[bytes]]:
    """Every state of byte-pair encoding `piece`: its single bytes first, then after each merge
    (the adjacent pair whose concatenation has the lowest rank, leftmost on ties) until no pair
    is a token: the last state is the piece's tokens."""
    return [list(parts) for parts in _bpe_states(piece, ranks)]


def _show(b: bytes) -> str:
    """Bytes as text where they are UTF-8, else as \\xNN escapes (a piece of a character)."""
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return "".join(chr(c) if c < 0x80 else f"\\x{c:02x}" for c in b)


def _bpe_pieces(tokenizer, text: str) -> List[dict]:
    """text's pre-tokenized pieces, each with its bytes, merge states and ids."""
    pieces = []
    if hasattr(tokenizer, "split") and hasattr(tokenizer, "_mergeable_ranks"):  # byte-level BPE
        ranks = tokenizer._mergeable_ranks
        for piece in tokenizer.split(text):
            raw = piece.encode("utf-8", "surrogatepass")
            states = bpe_steps(raw, ranks)
            if raw in ranks and states[-1] != [raw]:
                states.append([raw])  # the encoder looks a whole piece up first
            pieces.append({"text": piece, "bytes": list(raw),
                           "steps": [[_show(p) for p in s] for s in states],
                           "ids": [int(ranks[p]) for p in states[-1]]})
    elif type(tokenizer).__name__ == "CharTokenizer":  # one token per character
        for ch, i in zip(text, tokenizer.encode(text)):
            pieces.append({"text": ch, "bytes": list(ch.encode("utf-8")), "steps": [[ch]],
                           "ids": [int(i)]})
    else:  # another tokenizer (SentencePiece): its tokens, without the merges
        for i in tokenizer.encode(text):
            t = _decode(tokenizer, i)
            pieces.append({"text": t, "bytes": list(t.encode("utf-8", "surrogatepass")),
                           "steps": [[t]], "ids": [int(i)]})
    return pieces


def _tokenize(tm, prompt: str, chat: bool):
    """(pieces, ids): the prompt (in the chat template when chat) cut into pieces; the
    template's special tokens are pieces of their own. The pieces' ids are checked equal to
    the tokenizer's."""
    tok = tm.tokenizer
    if not chat:
        ids = list(tok.encode(prompt))
        pieces = _bpe_pieces(tok, prompt)
    else:
        ids = list(tm.encode_chat([{"role": "user", "content": prompt}]))
        pieces, run = [], []

        def flush():
            if run:
                pieces.extend(_bpe_pieces(tok, tok.decode(run)))
                run.clear()
        for i in ids:
            if tok.is_special_token(i):
                flush()
                t = _decode(tok, i)
                pieces.append({"text": t, "bytes": list(t.encode("utf-8")), "steps": [[t]],
                               "ids": [int(i)], "special": True})
            else:
                run.append(i)
        flush()
    flat = [i for p in pieces for i in p["ids"]]
    if flat != ids:
        raise RuntimeError("trace: the pieces' merges do not give the tokenizer's ids "
                           f"({flat[:12]}... vs {ids[:12]}...)")
    return pieces, ids


# ---- instrumented kernels ----------------------------------------------------------------------

class _Observed:
    """Stands in for a model's ``ops``: times every kernel call (seconds per name) and, while
    ``record`` is on, keeps the attention weights of each attention call, computed from its q
    and k as softmax(q k^T / sqrt(d)) with the causal mask."""

    def __init__(self, inner):
        self.inner = inner
        self.seconds: Dict[str, float] = defaultdict(float)
        self.calls: Dict[str, int] = defaultdict(int)
        self.maps: List[np.ndarray] = []
        self.record = False

    def __getattr__(self, name):
        fn = getattr(self.inner, name)
        if not callable(fn):
            return fn

        def timed(*args, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                self.seconds[name] += time.perf_counter() - t0
                self.calls[name] += 1
        return timed

    def attention(self, q, k, v, *, causal=True, kv_length=None, **kw):
        if self.record:
            S = k.shape[2] if kv_length is None else kv_length
            self.maps.append(reference.attention_weights(
                to_numpy(q).astype(np.float64), to_numpy(k[:, :, :S]).astype(np.float64),
                causal)[0])
        t0 = time.perf_counter()
        try:
            return self.inner.attention(q, k, v, causal=causal, kv_length=kv_length, **kw)
        finally:
            self.seconds["attention"] += time.perf_counter() - t0
            self.calls["attention"] += 1


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, "<f4").tobytes()).decode("ascii")


def _decode(tokenizer, i: int) -> str:
    try:
        return tokenizer.decode([int(i)])
    except Exception:  # a byte of a multi-byte character on its own, a decode-only token
        return "?"


def _top(tokenizer, probs: np.ndarray, n: int) -> List[list]:
    ids = np.argsort(-probs, kind="stable")[:n]
    return [[int(i), _decode(tokenizer, i), float(probs[i])] for i in ids]


# ---- the run -----------------------------------------------------------------------------------

def _load(model):
    from .llama import load_model
    if isinstance(model, str):
        return load_model("shakespeare-char" if model == "shipped" else model)
    return model


def collect(prompt: str, model="smollm2", max_new_tokens: int = 8, *, temperature: float = 0.0,
            top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0,
            seed: Optional[int] = 0, chat: Optional[bool] = None) -> dict:
    """The trace of `prompt` through `model` ('smollm2', 'shipped', a GGUF path, a checkpoint
    directory or a loaded TextModel) and of max_new_tokens generated after it with these
    sampling settings (greedy by default). chat: the prompt as a user message in the model's
    chat template (None: when the model has one). See the module's docstring."""
    if not isinstance(prompt, str) or not prompt:
        raise ValueError("trace: the prompt must be a non-empty string")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"trace: max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    config = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    t_start = time.perf_counter()
    tm = _load(model)
    gpt, tok = tm.gpt, tm.tokenizer
    if gpt.device != "cpu":
        raise ValueError("trace: runs on the CPU (the model is on " + gpt.device + ")")
    c = gpt.config
    if chat is None:
        chat = bool(getattr(tm, "chat_template", None) or getattr(tm, "template", None))
    pieces, ids = _tokenize(tm, prompt, chat)
    T = len(ids)
    if T + max_new_tokens > c.block_size:
        raise ValueError(f"trace: {T} prompt tokens + {max_new_tokens} new ones exceed the "
                         f"model's context of {c.block_size}")
    ids_arr = np.asarray([ids], np.int64)

    # embeddings and positions
    x0 = to_numpy(gpt.ops.embedding(ids_arr.reshape(-1), gpt.params["wte"])).astype(np.float64)
    centred = x0 - x0.mean(0)
    if T > 1:
        u, sv, _ = np.linalg.svd(centred, full_matrices=False)
        proj = u[:, :2] * sv[:2]
        if proj.shape[1] < 2:
            proj = np.pad(proj, ((0, 0), (0, 2 - proj.shape[1])))
    else:
        proj = np.zeros((1, 2))
    positions: dict = {"kind": c.positions}
    if c.positions == "rope":
        hd = c.head_dim
        freqs = c.rope_base ** (-np.arange(0, hd, 2) / hd)
        positions["angles"] = (np.arange(T)[:, None] * freqs[None, :]).round(4).tolist()
        positions["base"] = c.rope_base
    else:
        table = gpt._positions_table(0, T)
        positions["norms"] = np.linalg.norm(to_numpy(table), axis=-1).round(4).tolist()

    # the prompt's pass, every layer observed
    observed = _Observed(gpt.ops)
    residuals: List[np.ndarray] = []
    cache = gpt.new_cache(T + max_new_tokens)
    saved_ops, saved_hook = gpt.ops, gpt.layer_hook
    gpt.ops, gpt.layer_hook = observed, (lambda i, x: residuals.append(to_numpy(x).copy()))
    try:
        observed.record = True
        t0 = time.perf_counter()
        logits = to_numpy(gpt.forward_cached(ids_arr, cache)).astype(np.float32)[0]
        prefill_s = time.perf_counter() - t0
        observed.record = False
        gpt.layer_hook = None

        answer = int(np.argmax(logits))  # the model's own next token

        def lens(x_last):
            xf = gpt._norm(np.ascontiguousarray(x_last[None], np.float32), None, None)
            logits_here = to_numpy(gpt.ops.linear(xf, gpt.lm_head)).astype(np.float64)[0]
            probs = reference.softmax(logits_here)
            return _top(tok, probs, _LENS_TOP), float(probs[answer])

        layers = []
        states = [x0.astype(np.float32)] + [r.reshape(T, -1) for r in residuals]
        for i in range(c.n_layer + 1):
            x = states[i]
            top, p_answer = lens(x[-1])
            layers.append({
                "name": "embeddings" if i == 0 else f"block {i - 1}",
                "residual_norms": np.linalg.norm(x.astype(np.float64), axis=-1).round(4).tolist(),
                "lens": top,
                "lens_p_answer": p_answer,  # p(the final prediction) if it stopped here
                # [heads, T, T] as uint16 (weight x 65535), base64: a 30-layer model's maps
                # stay a few hundred KiB
                "attention_b64": None if i == 0 else base64.b64encode(np.ascontiguousarray(
                    np.round(observed.maps[i - 1] * 65535), "<u2").tobytes()).decode("ascii"),
                "attention_shape": None if i == 0 else list(observed.maps[i - 1].shape),
            })

        # generation with the same cache and kernels
        sampler = Sampler(config, seed=seed)
        steps = []
        next_logits = logits
        stops = set(getattr(tm, "stop_tokens", []) or [])
        for n in range(max_new_tokens):
            probs = filtered_distribution(next_logits, config)
            token = int(sampler(next_logits))
            raw = reference.softmax(next_logits.astype(np.float64))
            t0 = time.perf_counter()
            step = {"token": token, "text": _decode(tok, token), "p": float(probs[token]),
                    "p_model": float(raw[token]), "top": _top(tok, raw, 5),
                    "kv_bytes": int(tm.kv_cache_bytes(T + n + 1))}
            if token in stops:
                step["seconds"] = 0.0
                steps.append(step)
                break
            next_logits = to_numpy(gpt.forward_cached(np.asarray([[token]]), cache)).astype(np.float32)[0]
            step["seconds"] = time.perf_counter() - t0
            steps.append(step)
    finally:
        gpt.ops, gpt.layer_hook = saved_ops, saved_hook
    total = time.perf_counter() - t_start

    order = np.argsort(-logits.astype(np.float64), kind="stable")[:_LABELS]
    kernels = sorted(observed.seconds.items(), key=lambda kv: -kv[1])
    return {
        "version": 1,
        "prompt": prompt,
        "chat": chat,
        "model": {"name": getattr(tm, "name", "") or str(model), "n_layer": c.n_layer,
                  "n_head": c.n_head, "n_kv_head": c.n_kv_head, "n_embd": c.n_embd,
                  "vocab_size": c.vocab_size, "context": c.block_size, "positions": c.positions,
                  "norm": c.norm, "activation": c.activation,
                  "weights": getattr(tm, "weights", "fp32")},
        "tokens": {"utf8": [b for p in pieces for b in p["bytes"]], "pieces": pieces,
                   "ids": ids, "texts": [_decode(tok, i) for i in ids]},
        "embeddings": {"norms": np.linalg.norm(x0, axis=-1).round(4).tolist(),
                       "projection": proj.round(4).tolist()},
        "positions": positions,
        "layers": layers,
        "final": {"logits_b64": _b64(logits), "answer": int(np.argmax(logits)), "labels": {str(int(i)): _decode(tok, i) for i in order},
                  "sampling": {"temperature": temperature, "top_k": top_k, "top_p": top_p,
                               "min_p": min_p, "seed": seed}},
        "generation": {"steps": steps, "text": "".join(s["text"] for s in steps)},
        "timing": {"total_s": total, "prefill_s": prefill_s,
                   "decode_s": sum(s["seconds"] for s in steps),
                   "kernels": [[name, secs, observed.calls[name]] for name, secs in kernels]},
    }


# ---- the page ----------------------------------------------------------------------------------

_TEMPLATE = (Path(__file__).parent / "trace.html").read_text(encoding="utf-8") \
    if (Path(__file__).parent / "trace.html").exists() else None


def render_html(data: dict) -> str:
    """The self-contained page of a collect() result."""
    template = _TEMPLATE or (Path(__file__).parent / "trace.html").read_text(encoding="utf-8")
    payload = json.dumps(data, separators=(",", ":"), ensure_ascii=True).replace("</", "<\\/")
    title = html.escape(f"kernelgpt trace: {data['prompt'][:60]}")
    return template.replace("{{TITLE}}", title).replace("{{DATA}}", payload)


def write_html(data: dict, path: Union[str, Path]) -> Path:
    """render_html(data) written atomically to path."""
    path = Path(path)
    atomic_write_bytes(path, render_html(data).encode("utf-8"))
    return path
